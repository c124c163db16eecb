"""The training stage as a Kubeflow Trainer ``TrainJob``: many nodes, driven from a light task.

With ``backend: trainjob`` the KFP task does not train. It copies its inputs to the shared
volume, creates a TrainJob with the Kubeflow SDK (``kubeflow.trainer.TrainerClient``) that
runs the training stage's own entry point (``python -m torch.distributed.run -m
optimus_lib.stages.launch ...``, in the torch image) on ``num_nodes`` nodes with their
accelerators, streams the job's logs into the task log, waits for it, and hands on the
adapter that rank 0 wrote to the shared volume. On a cluster the Trainer's torch runtime
sets the ``PET_*`` variables torchrun reads (nodes, processes per node, rank, master), so
the command carries none.

Names and resumption: the job's name and its work folder on the volume are the content
key of the training run (:func:`optimus_lib.stages.train.checkpoint_key`), so a retried
task finds the job it started (a lost controller pod reattaches instead of training
twice), a finished job's adapter is reused, and a failed job is replaced by one that
resumes from the checkpoints on the volume.

The ``kubeflow`` SDK is imported only here, inside the functions that use it: the library
and the light image's other tasks do not need it.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pydantic import Field

from optimus_lib.errors import OptimusError
from optimus_lib.settings import Strict

DEFAULT_RUNTIME = "torch-distributed"
# The container and replicated job the torch runtimes name "node" (the SDK looks for it).
NODE = "node"
VOLUME = "optimus-cache"


class TrainJobSettings(Strict):
    """Where and how a TrainJob runs the training stage.

    ``namespace`` empty: the controller pod's own namespace (in the cluster), else the
    kubeconfig's. ``image`` is the torch image (the component passes the one it was
    compiled with). ``accelerators_per_node`` accelerators of ``accelerator_type`` are
    requested per node, and the runtime starts one process per accelerator; 0 runs one
    CPU process per node. ``pvc`` is mounted at ``mount_path`` in every node (and in the
    controller): the model cache, the checkpoints and the job's inputs and adapter.
    """

    namespace: str = ""
    runtime: str = Field(DEFAULT_RUNTIME, min_length=1)
    image: str = ""
    num_nodes: int = Field(1, ge=1)
    accelerator_type: str = "nvidia.com/gpu"
    accelerators_per_node: int = Field(1, ge=0)
    cpu: str = ""  # per node, e.g. "8"; empty: the runtime's
    memory: str = ""  # per node, e.g. "64Gi"; empty: the runtime's
    node_selector: dict[str, str] = {}
    tolerations: list[dict[str, Any]] = []
    pvc: str = Field("optimus-cache", pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
    mount_path: str = Field("/optimus-cache", pattern=r"^/")
    service_account: str = ""  # empty: the namespace's default
    env: dict[str, str] = {}
    timeout_s: int = Field(24 * 3600, ge=60)
    poll_s: int = Field(10, ge=1)
    log_lines: int = Field(10, ge=1, le=200)  # last log lines in a failure's one line

    def world(self) -> int:
        return self.num_nodes * max(1, self.accelerators_per_node)


def _resources(s: TrainJobSettings) -> dict[str, Any] | None:
    res: dict[str, Any] = {}
    if s.accelerators_per_node:
        res[s.accelerator_type] = s.accelerators_per_node
    if s.cpu:
        res["cpu"] = s.cpu
    if s.memory:
        res["memory"] = s.memory
    return res or None


def job_name(key: str) -> str:
    """A DNS-1035 name from the content key (TrainJob names start with a letter)."""
    return f"optimus-train-{key[:16]}"


def trainjob_request(
    s: TrainJobSettings, name: str, rank_args: list[str], image: str
) -> dict[str, Any]:
    """``TrainerClient.train`` keywords (built lazily from the SDK's types): the command and
    the placement of every node, the shared volume mounted in the trainer container."""
    from kubeflow.trainer import CustomTrainerContainer
    from kubeflow.trainer.options import (
        ContainerPatch,
        JobSetSpecPatch,
        JobSetTemplatePatch,
        JobSpecPatch,
        JobTemplatePatch,
        Labels,
        Name,
        PodSpecPatch,
        PodTemplatePatch,
        ReplicatedJobPatch,
        RuntimePatch,
        TrainerArgs,
        TrainerCommand,
        TrainingRuntimeSpecPatch,
    )

    env = {"OPTIMUS_CACHE": s.mount_path, "HF_HOME": f"{s.mount_path}/huggingface", **s.env}
    bad = sorted(k for k in env if k.startswith("PET_"))
    if bad:  # the Trainer's torch plugin sets them and rejects a job that does
        raise OptimusError(f"trainjob.env: {bad[0]} is set by the Trainer runtime; remove it")
    pod = PodSpecPatch(
        service_account_name=s.service_account or None,
        volumes=[{"name": VOLUME, "persistentVolumeClaim": {"claimName": s.pvc}}],
        containers=[
            ContainerPatch(name=NODE, volume_mounts=[{"name": VOLUME, "mountPath": s.mount_path}])
        ],
        node_selector=dict(s.node_selector) or None,
        tolerations=list(s.tolerations) or None,
    )
    patch = RuntimePatch(
        training_runtime_spec=TrainingRuntimeSpecPatch(
            template=JobSetTemplatePatch(
                spec=JobSetSpecPatch(
                    replicated_jobs=[
                        ReplicatedJobPatch(
                            name=NODE,
                            template=JobTemplatePatch(
                                spec=JobSpecPatch(template=PodTemplatePatch(spec=pod))
                            ),
                        )
                    ]
                )
            )
        )
    )
    trainer = CustomTrainerContainer(
        image=image, num_nodes=s.num_nodes, resources_per_node=_resources(s), env=env
    )
    command = ["python", "-m", "torch.distributed.run", "--max-restarts=0", "-m"]
    command.append("optimus_lib.stages.launch")
    options = [
        Name(name=name),
        Labels(labels={"app.kubernetes.io/part-of": "optimus", "optimus/stage": "train"}),
        TrainerCommand(command=command),
        TrainerArgs(args=rank_args),
        patch,
    ]
    return {"runtime": s.runtime, "trainer": trainer, "options": options}


def _client(s: TrainJobSettings):
    """A TrainerClient on the Kubernetes backend (in-cluster config in a pod, else the
    kubeconfig); the SDK imported here only."""
    try:
        from kubeflow.common.types import KubernetesBackendConfig
        from kubeflow.trainer import TrainerClient
    except ImportError:
        raise OptimusError(
            "backend trainjob needs the Kubeflow SDK: pip install 'optimus-defense[trainjob]'"
        ) from None
    import logging

    # The SDK warns when the Trainer's version ConfigMap is not readable (it needs no RBAC
    # the runner has); the runtime lookup below is the check that matters.
    logging.getLogger("kubeflow.trainer.backends.kubernetes.backend").setLevel(logging.ERROR)
    import os

    # $KUBECONFIG when set (the kubernetes client reads it only once, at import), else
    # the in-cluster config in a pod or ~/.kube/config.
    config_file = os.environ.get("KUBECONFIG") or None
    try:
        return TrainerClient(
            KubernetesBackendConfig(namespace=s.namespace or None, config_file=config_file)
        )
    except Exception as exc:
        why = _why(exc)
        raise OptimusError(f"trainjob: cannot configure the Kubernetes client: {why}") from None


def _why(exc: BaseException) -> str:
    """The innermost cause of an SDK error, in one line (the SDK wraps API errors)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None)
    if status:
        body = getattr(exc, "body", None)
        message = ""
        if body:
            try:
                message = json.loads(body).get("message", "")
            except (ValueError, AttributeError):
                message = ""
        return f"HTTP {status} {reason or ''}".strip() + (f": {message}" if message else "")
    text = " ".join(str(exc).split())
    if "Max retries exceeded" in text or "Connection refused" in text:
        host = getattr(getattr(exc, "pool", None), "host", None)
        return "cannot reach the Kubernetes API" + (f" at {host}" if host else "")
    return f"{type(exc).__name__}: {text[:300]}"


def _status(client, name: str) -> str | None:
    """The job's status, or None when it does not exist (deleted)."""
    try:
        return client.get_job(name).status
    except Exception as exc:
        cause = exc
        while cause.__cause__ is not None:
            cause = cause.__cause__
        if getattr(cause, "status", None) == 404:
            return None
        raise OptimusError(f"TrainJob {name}: {_why(exc)}") from None


def _last_lines(client, name: str, n: int) -> list[str]:
    try:
        lines = list(client.get_job_logs(name, follow=False))
    except Exception:
        return []
    return [ln.rstrip() for ln in lines if ln.strip()][-n:]


def _failure(client, name: str, s: TrainJobSettings, work: Path, what: str) -> OptimusError:
    """One line: what happened, the failing rank's own reason when it wrote one to the
    shared volume, and the job's last log lines."""
    from optimus_lib.stages.launch import _first_error

    reason = _first_error(work / "errors") if (work / "errors").is_dir() else None
    tail = _last_lines(client, name, s.log_lines)
    parts = [f"TrainJob {name} {what}"]
    if reason:
        parts.append(reason)
    if tail:
        parts.append("last log lines: " + " | ".join(tail))
    return OptimusError("; ".join(parts))


def on_volume(settings: Any, job: TrainJobSettings) -> Any:
    """The training settings with their checkpoints on the shared volume."""
    return settings.model_copy(update={"checkpoint_root": f"{job.mount_path}/checkpoints"})


def run_key(settings: Any, job: TrainJobSettings, sft_data: Path, preferences: Path | None) -> str:
    """The content key of the run a TrainJob does (its name and work folder): the key of
    its checkpoints, for the job's number of ranks."""
    from optimus_lib.stages import file_digest
    from optimus_lib.stages.train import USES_DPO, checkpoint_key

    uses_prefs = settings.method in USES_DPO and preferences is not None
    inputs = [file_digest(sft_data), file_digest(preferences) if uses_prefs else None]
    return checkpoint_key(on_volume(settings, job), inputs, job.world())


def check_volume(job: TrainJobSettings) -> None:
    """The controller task must see the volume the nodes mount (``job.pvc`` at
    ``job.mount_path``): without it the inputs this task writes and the adapter the job
    writes never meet, and the job waits on files that never arrive."""
    if not os.path.ismount(job.mount_path):
        raise OptimusError(
            f"trainjob.mount_path {job.mount_path} is not a mounted volume in this task: "
            f"mount the PVC {job.pvc} there (the pipeline mounts its cache PVC at "
            "/optimus-cache)"
        )


def run_trainjob(
    settings: Any,
    job: TrainJobSettings,
    sft_data: Path,
    adapter_out: Path,
    preferences: Path | None = None,
    client: Any = None,
    echo: Callable[[str], None] = print,
):
    """Train on a TrainJob and copy its adapter to ``adapter_out``; returns rank 0's
    :class:`~optimus_lib.stages.train.TrainResult`. ``settings`` is the stage's
    ``TrainSettings``; its ``checkpoint_root`` is put on the shared volume."""
    from optimus_lib.stages.launch import rank_args, result_from_json
    from optimus_lib.stages.train import USES_DPO
    from optimus_lib.train.trainers import split_batch

    if not job.image:
        raise OptimusError("trainjob.image: the torch image the nodes run is not set")
    world = job.world()
    stages = [("sft", settings.sft)] + (
        [("dpo", settings.dpo)] if settings.method in USES_DPO else []
    )
    for stage, cfg in stages:
        split_batch(cfg.batch_size, cfg.grad_accum, world, stage)  # before creating anything
    root = Path(job.mount_path)
    settings = on_volume(settings, job)
    uses_prefs = settings.method in USES_DPO and preferences is not None
    key = run_key(settings, job, sft_data, preferences)
    name = job_name(key)
    work = root / "trainjobs" / key
    sft_copy = work / "inputs" / "sft_data.jsonl"
    prefs_copy = work / "inputs" / "preferences.jsonl" if uses_prefs else None
    adapter = work / "adapter"
    result = work / "result.json"
    client = client or _client(job)

    state = _status(client, name)
    if state == "Failed":  # an earlier attempt's job: replace it, it resumes from checkpoints
        echo(f"TrainJob {name} failed earlier; replacing it (it resumes from its checkpoints)")
        _delete(client, name)
        state = _wait_gone(client, name, job)
    if state is None:
        # inputs are written only for a job about to be created (never under a running
        # one), each to a temporary name and renamed: a rank never reads half a file
        (work / "inputs").mkdir(parents=True, exist_ok=True)
        _copy_atomic(sft_data, sft_copy)
        if prefs_copy is not None:
            _copy_atomic(preferences, prefs_copy)
        shutil.rmtree(work / "errors", ignore_errors=True)
        result.unlink(missing_ok=True)
        args = rank_args(
            settings.model_dump_json(), sft_copy, adapter, prefs_copy, result, work / "errors"
        )
        request = trainjob_request(job, name, args, job.image)
        try:
            client.train(**request)
        except Exception as exc:
            raise OptimusError(f"TrainJob {name}: cannot create it: {_why(exc)}") from None
        echo(f"TrainJob {name} created ({job.num_nodes} node(s), runtime {job.runtime})")
    else:
        echo(f"TrainJob {name} exists ({state}); waiting for it")

    _follow(client, name, job, work, echo)
    if not result.is_file():
        raise _failure(client, name, job, work, "completed but rank 0 wrote no result")
    out = result_from_json(json.loads(result.read_text(encoding="utf-8")))
    _copy_adapter(adapter, Path(adapter_out))
    out.adapter = Path(adapter_out)
    out.metadata = {**out.metadata, "trainjob": name, "trainjob_nodes": job.num_nodes}
    return out


def _copy_atomic(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _delete(client, name: str) -> None:
    try:
        client.delete_job(name)
    except Exception as exc:
        raise OptimusError(f"TrainJob {name}: cannot delete the failed job: {_why(exc)}") from None


def _wait_gone(client, name: str, job: TrainJobSettings) -> None:
    deadline = time.monotonic() + 120
    while _status(client, name) is not None:
        if time.monotonic() > deadline:
            raise OptimusError(f"TrainJob {name}: the failed job was not deleted within 120 s")
        time.sleep(min(job.poll_s, 5))
    return None


def _follow(client, name: str, job: TrainJobSettings, work: Path, echo) -> None:
    """Stream the job's logs (node 0) while it runs, then wait until it is Complete; a
    Failed or vanished job, or the timeout, is one OptimusError line."""
    deadline = time.monotonic() + job.timeout_s
    streamed = False
    seen: collections.deque[str] = collections.deque(maxlen=job.log_lines)
    while True:
        state = _status(client, name)
        if state is None:
            raise OptimusError(
                f"TrainJob {name} was deleted before it finished"
                + (("; last log lines: " + " | ".join(seen)) if seen else "")
            )
        if state == "Complete":
            return
        if state == "Failed":
            raise _failure(client, name, job, work, "failed")
        if state == "Running" and not streamed:
            streamed = True
            try:
                for line in _lines(client.get_job_logs(name, follow=True)):
                    echo(line)
                    if line.strip():
                        seen.append(line.strip())
            except Exception as exc:  # the logs are a courtesy; the status decides
                echo(f"(log stream of TrainJob {name} ended: {_why(exc)})")
            continue
        if time.monotonic() > deadline:
            raise OptimusError(
                f"TrainJob {name} did not finish within {job.timeout_s} s (trainjob.timeout_s); "
                "it is left running: delete it or retry the task to wait again"
            )
        time.sleep(job.poll_s)


def _lines(chunks: Iterable[str]) -> Iterable[str]:
    for chunk in chunks:
        yield from str(chunk).splitlines() or [""]


def _copy_adapter(adapter: Path, out: Path) -> None:
    if not (adapter / "adapter_model.safetensors").is_file():
        raise OptimusError(f"the TrainJob finished but {adapter} holds no adapter weights")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(adapter, tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)


def _local_rank(args):  # runs in the local backend's venv: its source is the job's script
    import sys

    sys.path[:0] = args["front"]  # this checkout of optimus_lib
    sys.path.extend(args["back"])  # the packages torch does not bring (transformers, ...)
    from optimus_lib.stages.launch import main

    code = main(args["argv"])
    if code:
        raise SystemExit(code)


def run_local_trainjob(
    settings: Any,
    sft_data: Path,
    adapter_out: Path,
    preferences: Path | None = None,
    processes: int = 2,
    packages: tuple[str, ...] = ("torch",),
    index_urls: list[str] | None = None,
    env: dict[str, str] | None = None,
    timeout_s: int = 1800,
    echo: Callable[[str], None] = print,
):
    """The training stage as a TrainJob on the Kubeflow SDK's local-process backend: the
    SDK makes a fresh venv, pip-installs ``packages`` (pin torch to the build this machine
    has, e.g. ``torch==2.13.0``, and give ``index_urls``: a bare ``torch`` from the public
    index is the CUDA build), and runs the same rank entry point under its ``torchrun``
    with ``processes`` ranks (``PET_NPROC_PER_NODE``: this backend ignores ``num_nodes``
    and ``resources_per_node``). The rest of the library's dependencies come from this
    interpreter's site-packages. A way to try the TrainJob path without a cluster, and
    what the launch-overhead figure measures; returns rank 0's result.

    The backend's job sees only ``env`` (plus what is set here) as its environment, and
    its ``wait_for_job_status`` does not stop on a failed job, so this polls the status.
    """
    import site
    import sys
    import tempfile

    try:
        from kubeflow.trainer import CustomTrainer, LocalProcessBackendConfig, TrainerClient
    except ImportError:
        raise OptimusError(
            "the local TrainJob backend needs the Kubeflow SDK: pip install "
            "'optimus-defense[trainjob]'"
        ) from None
    import optimus_lib
    from optimus_lib.stages.launch import _first_error, rank_args, result_from_json

    work = Path(tempfile.mkdtemp(prefix="optimus-localjob-"))
    result = work / "result.json"
    args = rank_args(
        settings.model_dump_json(), sft_data, adapter_out, preferences, result, work / "errors"
    )
    front = [str(Path(optimus_lib.__file__).resolve().parents[1])]
    back = [*site.getsitepackages(), site.getusersitepackages()]
    job_env = {
        "PET_NPROC_PER_NODE": str(processes),
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        **(env or {}),
    }
    client = TrainerClient(LocalProcessBackendConfig(cleanup_venv=True))
    trainer = CustomTrainer(
        func=_local_rank,
        func_args={"front": front, "back": back, "argv": args},
        packages_to_install=list(packages),
        env=job_env,
        **({"pip_index_urls": index_urls} if index_urls else {}),
    )
    try:
        name = client.train(runtime=DEFAULT_RUNTIME, trainer=trainer)
        deadline = time.monotonic() + timeout_s
        while (state := client.get_job(name).status) not in ("Complete", "Failed"):
            if time.monotonic() > deadline:
                client.delete_job(name)
                raise OptimusError(f"local TrainJob {name} did not finish within {timeout_s} s")
            time.sleep(1)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    lines = [ln.rstrip() for ln in _lines(client.get_job_logs(name)) if ln.strip()]
    for line in lines:
        echo(line)
    try:
        if state == "Failed" or not result.is_file():
            reason = _first_error(work / "errors") if (work / "errors").is_dir() else None
            tail = " | ".join(lines[-5:])
            raise OptimusError(
                f"local TrainJob {name} failed"
                + (f"; {reason}" if reason else "")
                + (f"; last log lines: {tail}" if tail else "")
            )
        return result_from_json(json.loads(result.read_text(encoding="utf-8")))
    finally:
        shutil.rmtree(work, ignore_errors=True)
