"""The ``trainjob`` training backend against a stand-in Kubernetes API on 127.0.0.1.

The real Kubeflow SDK (``kubeflow.trainer.TrainerClient`` on its Kubernetes backend), a
generated kubeconfig and real HTTP. The stand-in serves the torch-distributed
ClusterTrainingRuntime, records the POSTed TrainJob, and plays the Trainer's part: it
runs the job's own command with the ``PET_*`` variables the torch plugin sets (one node,
2 processes, gloo on CPU), so the training stage really trains from the command the body
carries; the job's status, its node-0 pod and that pod's log follow the process. The body
is validated offline with the Trainer API models.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from helpers import write_dialogs_and_pairs
from standins import Request, k8s_object, kubeconfig, serve

pytestmark = pytest.mark.integration
pytest.importorskip("kubeflow.trainer")

ROOT = Path(__file__).resolve().parents[2]
NS = "kubeflow"
API = "/apis/trainer.kubeflow.org/v1alpha1"
IMAGE = "ghcr.io/optimus-defense/optimus-torch:0.1.0"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Trainer:
    """The stand-in's Trainer: TrainJobs by name, each run as a local process group."""

    def __init__(self, run: bool = True, vanish: bool = False) -> None:
        self.run, self.vanish = run, vanish
        self.jobs: dict[str, dict[str, Any]] = {}
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, str] = {}
        self.bodies: list[dict[str, Any]] = []

    def create(self, req: Request) -> tuple[int, Any]:
        body = req.body
        self.bodies.append(body)
        name = body["metadata"]["name"]
        job = {
            **body,
            "metadata": {
                **body["metadata"],
                "namespace": NS,
                "creationTimestamp": "2026-12-03T10:00:00Z",
                "uid": "0f5b1c1e-0000-4000-8000-000000000001",
            },
        }
        self.jobs[name] = job
        if self.run:
            self._start(name, body)
        return 201, job

    def _start(self, name: str, body: dict[str, Any]) -> None:
        trainer = body["spec"]["trainer"]
        env = {e["name"]: e["value"] for e in trainer.get("env", [])}
        env.update(  # what the torch plugin sets on every node
            PET_NNODES="1",
            PET_NPROC_PER_NODE="2",
            PET_NODE_RANK="0",
            PET_MASTER_ADDR="127.0.0.1",
            PET_MASTER_PORT=str(_free_port()),
        )
        keep = (
            "HOME",
            "HF_HUB_OFFLINE",
            "TRANSFORMERS_OFFLINE",
            "HF_DATASETS_OFFLINE",
            "TOKENIZERS_PARALLELISM",
        )
        base = {k: os.environ[k] for k in keep if k in os.environ}
        base.update(
            PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            PYTHONPATH=str(ROOT),
            OMP_NUM_THREADS="1",
            CUDA_VISIBLE_DEVICES="",
        )
        self.logs[name] = ""
        proc = subprocess.Popen(
            [*trainer["command"], *trainer["args"]],
            env={**base, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.procs[name] = proc

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                self.logs[name] += line

        threading.Thread(target=pump, daemon=True).start()

    def state(self, name: str) -> str:
        proc = self.procs.get(name)
        if proc is None:
            return "Running"
        code = proc.poll()
        return "Running" if code is None else ("Complete" if code == 0 else "Failed")

    def get(self, req: Request) -> tuple[int, Any]:
        name = req.path.rsplit("/", 1)[-1]
        if name not in self.jobs:
            return 404, _not_found(name)
        if self.vanish and len([r for r in self.requests if r.path == req.path]) > 2:
            del self.jobs[name]  # someone deleted it while it ran
            return 404, _not_found(name)
        job = self.jobs[name]
        state = self.state(name)
        if state != "Running":
            cond = {
                "type": state,
                "status": "True",
                "reason": f"Jobs{state}",
                "message": f"jobset {state.lower()}",
                "lastTransitionTime": "2026-12-03T10:05:00Z",
            }
            job = {**job, "status": {"conditions": [cond]}}
        return 200, job

    def delete(self, req: Request) -> tuple[int, Any]:
        name = req.path.rsplit("/", 1)[-1]
        self.jobs.pop(name, None)
        return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}

    def pods(self, req: Request) -> tuple[int, Any]:
        selector = req.query.get("labelSelector", [""])[0]
        items = []
        for name in self.jobs:
            if f"jobset.sigs.k8s.io/jobset-name={name}" not in selector:
                continue
            phase = {"Running": "Running", "Complete": "Succeeded", "Failed": "Failed"}[
                self.state(name)
            ]
            items.append(
                {
                    "metadata": {
                        "name": f"{name}-node-0-0-abcde",
                        "namespace": NS,
                        "creationTimestamp": "2026-12-03T10:00:05Z",
                        "labels": {
                            "jobset.sigs.k8s.io/jobset-name": name,
                            "jobset.sigs.k8s.io/replicatedjob-name": "node",
                            "batch.kubernetes.io/job-completion-index": "0",
                        },
                    },
                    "spec": {"containers": [{"name": "node", "image": IMAGE}]},
                    "status": {"phase": phase},
                }
            )
        return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}

    def log(self, req: Request) -> tuple[int, Any]:
        name = req.path.split("/pods/", 1)[1].split("-node-0-0")[0]
        proc = self.procs.get(name)
        if proc is not None and req.query.get("follow", [""])[0].lower() == "true":
            proc.wait(timeout=600)  # a followed log ends when the container does
            for _ in range(50):
                if not proc.stdout or proc.stdout.closed or self.logs[name].endswith("\n"):
                    break
        return 200, self.logs.get(name, "").encode()

    def routes(self) -> dict:
        runtime = k8s_object("clustertrainingruntime-torch-distributed")
        return {
            ("GET", f"{API}/clustertrainingruntimes/torch-distributed"): (200, runtime),
            ("POST", f"{API}/namespaces/{NS}/trainjobs"): self.create,
            ("GET", f"{API}/namespaces/{NS}/trainjobs/*"): self.get,
            ("DELETE", f"{API}/namespaces/{NS}/trainjobs/*"): self.delete,
            ("GET", f"/api/v1/namespaces/{NS}/pods"): self.pods,
            ("GET", f"/api/v1/namespaces/{NS}/pods/*"): self.log,
        }


def _not_found(name: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "reason": "NotFound",
        "message": f'trainjobs.trainer.kubeflow.org "{name}" not found',
        "code": 404,
    }


def _data(folder: Path) -> tuple[Path, Path]:
    turns = [
        ("hi, how are you?", "great thanks", "you idiot"),
        ("any plans?", "a book", "shut up"),
        ("I like dogs", "dogs are great", "dogs are dumb"),
        ("what's up", "not much", "go away"),
    ]
    return write_dialogs_and_pairs(folder, turns)


def _settings(model: str):
    from optimus_lib.stages.train import TrainSettings

    tiny = {
        "batch_size": 2,
        "max_length": 48,
        "gradient_checkpointing": False,
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
    }
    return TrainSettings.model_validate({"model": model, "sft": tiny, "dpo": tiny})


def _job(tmp_path: Path, **extra):
    from optimus_lib.stages.trainjob import TrainJobSettings

    return TrainJobSettings.model_validate(
        {
            "namespace": NS,
            "image": IMAGE,
            "num_nodes": 1,
            "accelerators_per_node": 2,
            "cpu": "8",
            "memory": "64Gi",
            "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
            "pvc": "optimus-cache",
            "mount_path": str(tmp_path / "pvc"),
            "poll_s": 1,
            **extra,
        }
    )


def _run(tmp_path, trainer: Trainer, settings, job, lines: list[str]):
    from optimus_lib.stages.trainjob import run_trainjob

    sft, prefs = _data(tmp_path)
    with serve(trainer.routes()) as api:
        trainer.requests = api.requests
        os.environ["KUBECONFIG"] = str(kubeconfig(tmp_path / "kubeconfig", api.url))
        try:
            return run_trainjob(settings, job, sft, tmp_path / "adapter", prefs, echo=lines.append)
        finally:
            del os.environ["KUBECONFIG"]
            for proc in trainer.procs.values():
                if proc.poll() is None:
                    proc.kill()


@pytest.mark.slow  # the stand-in runs the job: 2 ranks training (~40 s)
def test_trainjob_body_and_a_real_two_rank_run(tmp_path, tiny_model_dir):
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

    trainer, lines = Trainer(), []
    result = _run(tmp_path, trainer, _settings(str(tiny_model_dir)), _job(tmp_path), lines)

    (body,) = trainer.bodies
    job = TrainerV1alpha1TrainJob.from_dict(body)  # the Trainer API's own model
    assert job.api_version == "trainer.kubeflow.org/v1alpha1" and job.kind == "TrainJob"
    assert job.metadata.name == f"optimus-train-{result.key[:16]}"
    assert job.spec.runtime_ref.name == "torch-distributed"
    assert job.spec.runtime_ref.kind == "ClusterTrainingRuntime"
    t = job.spec.trainer
    assert t.image == IMAGE and t.num_nodes == 1
    assert t.command == [
        "python",
        "-m",
        "torch.distributed.run",
        "--max-restarts=0",
        "-m",
        "optimus_lib.stages.launch",
    ]
    assert t.args[:2] == ["--settings-json", t.args[1]] and "--adapter-out" in t.args
    settings = json.loads(t.args[1])
    assert settings["checkpoint_root"] == str(tmp_path / "pvc" / "checkpoints")
    raw = body["spec"]["trainer"]["resourcesPerNode"]
    assert raw["limits"] == raw["requests"] == {"nvidia.com/gpu": 2, "cpu": "8", "memory": "64Gi"}
    env = {e.name: e.value for e in t.env}
    assert env["OPTIMUS_CACHE"] == str(tmp_path / "pvc")
    assert not [k for k in env if k.startswith("PET_")]  # the runtime's to set
    (patch,) = body["spec"]["runtimePatches"]
    assert patch["manager"] == "trainer.kubeflow.org/kubeflow-sdk"
    (rjob,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert rjob["name"] == "node"
    pod = rjob["template"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    assert pod["volumes"] == [
        {"name": "optimus-cache", "persistentVolumeClaim": {"claimName": "optimus-cache"}}
    ]
    (container,) = pod["containers"]
    assert container == {
        "name": "node",
        "volumeMounts": [{"name": "optimus-cache", "mountPath": str(tmp_path / "pvc")}],
    }
    assert body["metadata"]["labels"]["app.kubernetes.io/part-of"] == "optimus"

    # What the 2 ranks trained, handed on as the task's adapter.
    assert result.metrics["train_processes"] == 2 and result.metrics["dpo_global_batch"] == 2
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert result.metadata["trainjob"] == job.metadata.name
    assert any("created" in ln for ln in lines)
    # the ranks' own log lines were streamed, not only the controller's notes about the job
    ranks = [ln for ln in lines if not ln.startswith(("TrainJob", "(log stream"))]
    assert any("dpo" in ln.lower() or "train" in ln.lower() for ln in ranks), lines

    # A retried task finds the finished job and reuses it: nothing is created again.
    again = _run(tmp_path, trainer, _settings(str(tiny_model_dir)), _job(tmp_path), lines)
    assert len(trainer.bodies) == 1 and again.key == result.key


def test_failed_trainjob_is_one_line_with_its_rank_and_last_log_lines(tmp_path):
    """A model that does not exist: rank 0 fails at once; the task's line names the job,
    the rank's own reason (from the shared volume) and the job's last log lines."""
    from optimus_lib.errors import OptimusError

    trainer = Trainer()
    with pytest.raises(OptimusError) as err:
        _run(tmp_path, trainer, _settings(str(tmp_path / "no-such-model")), _job(tmp_path), [])
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("TrainJob optimus-train-") and " failed; rank " in msg
    assert "no-such-model" in msg and "last log lines: " in msg


def test_deleted_trainjob_and_unreachable_api_are_one_line_each(tmp_path):
    from optimus_lib.errors import OptimusError
    from optimus_lib.stages.trainjob import run_trainjob

    # Deleted while it ran (the stand-in does not run it; it answers 404 after a while).
    gone = Trainer(run=False, vanish=True)
    with pytest.raises(OptimusError, match=r"^TrainJob optimus-train-\w+ was deleted before it"):
        _run(tmp_path, gone, _settings(str(tmp_path)), _job(tmp_path), [])

    sft, prefs = _data(tmp_path)
    os.environ["KUBECONFIG"] = str(kubeconfig(tmp_path / "kc", f"http://127.0.0.1:{_free_port()}"))
    try:
        with pytest.raises(OptimusError) as err:
            run_trainjob(_settings(str(tmp_path)), _job(tmp_path), sft, tmp_path / "a", prefs)
    finally:
        del os.environ["KUBECONFIG"]
    assert "\n" not in str(err.value)
    assert "cannot reach the Kubernetes API" in str(err.value), err.value


def test_trainjob_settings_refuse_pet_env_and_an_unsplittable_batch(tmp_path):
    from optimus_lib.errors import OptimusError
    from optimus_lib.stages.trainjob import trainjob_request

    with pytest.raises(OptimusError, match="trainjob.env: PET_NNODES is set by the Trainer"):
        trainjob_request(_job(tmp_path, env={"PET_NNODES": "4"}), "n", [], IMAGE)
    from optimus_lib.stages.trainjob import run_trainjob

    sft, prefs = _data(tmp_path)
    base = _settings(str(tmp_path))
    s = base.model_copy(update={"sft": base.sft.model_copy(update={"batch_size": 3})})
    with pytest.raises(OptimusError, match=r"train.sft: the global batch .* over 2 processes"):
        run_trainjob(s, _job(tmp_path), sft, tmp_path / "a", prefs, client=object())


@pytest.mark.slow  # a fresh venv with torch (~1 min) and 2 ranks training (~40 s)
def test_local_process_backend_runs_the_training_stage_on_two_ranks(tmp_path, tiny_model_dir):
    """The SDK's LocalProcessBackend: a fresh venv, torch pinned to this machine's CPU
    build, the rank entry point under its torchrun with 2 gloo ranks."""
    from safetensors.torch import load_file

    from optimus_lib.stages.trainjob import run_local_trainjob

    sft, prefs = _data(tmp_path)
    s = _settings(str(tiny_model_dir)).model_copy(
        update={"checkpoint_root": str(tmp_path / "ckpt")}
    )
    keep = ("PIP_FIND_LINKS", "PIP_CERT", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL",
            "PIP_CONSTRAINT", "PIP_DEFAULT_TIMEOUT", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
            "HF_DATASETS_OFFLINE", "TOKENIZERS_PARALLELISM", "OPTIMUS_CACHE")  # fmt: skip
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update(HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    lines: list[str] = []
    result = run_local_trainjob(
        s, sft, tmp_path / "adapter", prefs, processes=2, packages=("torch==2.13.0",),
        env=env, echo=lines.append,
    )  # fmt: skip
    assert result.metrics["train_processes"] == 2
    assert result.metrics["sft_per_device_batch"] == 1 and result.metrics["sft_global_batch"] == 2
    weights = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())


def test_a_retry_replaces_the_failed_job_and_reuses_its_name(tmp_path):
    """The job of an earlier attempt failed: the retry deletes it and creates it again
    under the same name (the ranks resume from the checkpoints on the volume). This
    stand-in finishes the new job at once, writing what rank 0 writes."""
    from optimus_lib.stages.launch import result_to_json
    from optimus_lib.stages.train import TrainResult
    from optimus_lib.stages.trainjob import job_name, run_key

    class Retry(Trainer):
        def __init__(self) -> None:
            super().__init__(run=False)
            self.failed: set[str] = set()

        def state(self, name: str) -> str:
            return "Failed" if name in self.failed else "Complete"

        def create(self, req):
            status, job = super().create(req)
            args = req.body["spec"]["trainer"]["args"]
            adapter = Path(args[args.index("--adapter-out") + 1])
            adapter.mkdir(parents=True)
            (adapter / "adapter_model.safetensors").write_bytes(b"weights")
            res = TrainResult(adapter, "optimus", 4, 4, "k", {"train_processes": 2.0}, {})
            result = Path(args[args.index("--result") + 1])
            result.write_text(json.dumps(result_to_json(res)))
            return status, job

    retry = Retry()
    settings, job = _settings(str(tmp_path)), _job(tmp_path)
    sft, prefs = _data(tmp_path)
    name = job_name(run_key(settings, job, sft, prefs))
    # the first attempt's job, as the cluster still has it: Failed
    retry.jobs[name] = {
        "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
        "metadata": {"name": name, "namespace": NS, "creationTimestamp": "2026-12-03T09:00:00Z"},
        "spec": {"runtimeRef": {"name": "torch-distributed", "kind": "ClusterTrainingRuntime"},
                 "trainer": {"numNodes": 1}},
    }  # fmt: skip
    retry.failed.add(name)
    original_delete = retry.delete

    def delete(req):
        retry.failed.discard(name)
        return original_delete(req)

    retry.delete = delete
    lines: list[str] = []
    result = _run(tmp_path, retry, settings, job, lines)
    methods = [(r.method, r.path.rsplit("/", 1)[-1]) for r in retry.requests]
    assert ("DELETE", name) in methods
    assert methods.index(("DELETE", name)) < methods.index(("POST", "trainjobs"))
    assert [b["metadata"]["name"] for b in retry.bodies] == [name]
    assert any("failed earlier; replacing it" in ln for ln in lines)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").read_bytes() == b"weights"
    assert result.metadata["trainjob"] == name
