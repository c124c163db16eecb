"""``optimus cluster check``: is this Kubernetes namespace ready for a defense run?

Reads what the compiled pipeline asks of the cluster (``pipelines/defense.yaml``: the GPU
tasks' accelerator, node selector, tolerations, CPU and memory requests, the cache PVC,
the images), resolved with the run's parameter values (the pipeline's defaults, then the
settings file), and compares it with the cluster the current kube context points at:

* the namespace exists;
* the ``pipeline-runner`` service account exists and carries the Workload Identity
  annotation (``iam.gke.io/gcp-service-account``), and not the manifests' placeholder;
* the cache PVC is Bound (or Pending on a WaitForFirstConsumer class: it binds when the
  first GPU task mounts it);
* nodes exist that carry the GPU tasks' node-selector labels, have allocatable
  accelerators, CPU and memory for each GPU task, and only taints those tasks tolerate;
* every image is pinned by digest (``@sha256:``);
* with ``train_backend: trainjob``: Kubeflow Trainer's TrainJob API is served, the named
  training runtime exists (torch framework), and ``pipeline-runner`` may create TrainJobs.

One line per check, ``OK`` or ``PROBLEM``; :func:`check_cluster` returns the number of
problems. An unreachable API or an unusable kubeconfig is one ``OptimusError`` line.

The ``kubernetes`` client (installed with kfp) is imported only when a cluster is
contacted; reading the pipeline needs PyYAML only.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.pipeline_spec import (
    DEFAULT_PIPELINE,
    GpuTask,
    gpu_tasks,
    images,
    load_pipeline,
    parameter_values,
    quantity,
)

SERVICE_ACCOUNT = "pipeline-runner"
WI_ANNOTATION = "iam.gke.io/gcp-service-account"
# The Google service account in manifests/overlays/gke/settings.env until someone edits it.
PLACEHOLDER_GSA = "optimus-pipelines@my-gcp-project.iam.gserviceaccount.com"
GSA_EMAIL = re.compile(
    r"^[a-z][a-z0-9-]{4,28}[a-z0-9]@[a-z][a-z0-9-]{4,28}[a-z0-9]\.iam\.gserviceaccount\.com$"
)
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
# Taint effects that keep a pod off a node (PreferNoSchedule only discourages).
BLOCKING_EFFECTS = ("NoSchedule", "NoExecute")


def tolerates(tolerations: Iterable[dict[str, Any]], taint: dict[str, Any]) -> bool:
    """Whether one of ``tolerations`` tolerates ``taint`` (Kubernetes' matching rules)."""
    for t in tolerations:
        effect = t.get("effect") or ""
        if effect and effect != taint.get("effect"):
            continue
        op = t.get("operator") or "Equal"
        key = t.get("key") or ""
        if not key:
            if op == "Exists":
                return True
            continue
        if key != taint.get("key"):
            continue
        if op == "Exists" or (
            op == "Equal" and (t.get("value") or "") == (taint.get("value") or "")
        ):
            return True
    return False


# ---------------------------------------------------------------- the cluster


@dataclass
class Check:
    """One line of the report."""

    ok: bool
    text: str

    def line(self) -> str:
        return f"{'OK     ' if self.ok else 'PROBLEM'}  {self.text}"


class _Api:
    """GETs through the official client (its auth, TLS and kubeconfig handling), parsed as
    plain JSON: the checks read a few fields and need no typed models."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self.core = client.CoreV1Api(api_client)
        self.storage = client.StorageV1Api(api_client)
        self.host = api_client.configuration.host
        self.client = api_client

    def get(self, call: Callable[..., Any], *args: Any) -> dict[str, Any]:
        resp = call(*args, _preload_content=False, _request_timeout=15)
        return json.loads(resp.data or b"{}")

    def raw(
        self, path: str, method: str = "GET", body: Any = None, headers: dict | None = None
    ) -> dict[str, Any]:
        """A request by path (custom resources, discovery, access reviews) as JSON."""
        head = {"Accept": "application/json", "Content-Type": "application/json"}
        resp = self.client.call_api(
            path, method, header_params={**head, **(headers or {})}, body=body,
            auth_settings=["BearerToken"], _preload_content=False, _request_timeout=15,
        )  # fmt: skip
        return json.loads(resp[0].data or b"{}")


def _status(exc: Exception) -> int | None:
    return getattr(exc, "status", None) if type(exc).__name__ == "ApiException" else None


def _reason(exc: Exception) -> str:
    """The API server's own message (a Status object's ``message``) or the HTTP reason."""
    body = getattr(exc, "body", None)
    try:
        msg = json.loads(body).get("message") if body else None
    except (TypeError, ValueError):
        msg = None
    return msg or f"HTTP {getattr(exc, 'status', '?')} {getattr(exc, 'reason', '')}".strip()


def _unreachable(exc: BaseException, host: str) -> str | None:
    """A one-line reason when ``exc`` means the API server could not be reached."""
    import urllib3

    if not isinstance(exc, urllib3.exceptions.HTTPError | OSError):
        return None
    cause = getattr(exc, "reason", None) or exc
    text = str(cause)
    m = re.search(r"\[Errno -?\d+\] ([^')\]]+)", text)
    detail = m.group(1) if m else text.split(": ")[-1]
    return f"cannot reach the Kubernetes API at {host}: {detail.strip()}"


def api_client(kubeconfig: str | None = None, context: str | None = None) -> Any:
    """A client for the current kube context (``$KUBECONFIG`` or ~/.kube/config), or the
    in-cluster service account when there is no kubeconfig and we run in a pod."""
    from kubernetes import client, config

    from optimus_lib.errors import OptimusError

    path = kubeconfig or os.environ.get("KUBECONFIG") or str(Path("~/.kube/config").expanduser())
    exists = any(Path(p).expanduser().is_file() for p in path.split(os.pathsep) if p)
    if not exists and os.environ.get("KUBERNETES_SERVICE_HOST") and not kubeconfig:
        config.load_incluster_config()
        return client.ApiClient()
    if not exists:
        raise OptimusError(
            f"no kubeconfig at {path}: run `gcloud container clusters get-credentials ...` "
            "or set KUBECONFIG"
        )
    try:
        return config.new_client_from_config(config_file=path, context=context)
    except Exception as exc:  # ConfigException; an exec credential plugin that fails or is absent
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise OptimusError(f"kubeconfig {path}: {first}") from None


def _check_namespace(api: _Api, ns: str) -> Check:
    try:
        api.get(api.core.read_namespace, ns)
    except Exception as exc:
        if _status(exc) == 404:
            return Check(
                False, f"namespace {ns} does not exist (kubectl apply -k manifests/overlays/...)"
            )
        if _status(exc) is not None:
            return Check(False, f"namespace {ns}: cannot read it: {_reason(exc)}")
        raise
    return Check(True, f"namespace {ns} exists")


def _check_service_account(api: _Api, ns: str) -> Check:
    try:
        sa = api.get(api.core.read_namespaced_service_account, SERVICE_ACCOUNT, ns)
    except Exception as exc:
        if _status(exc) == 404:
            return Check(
                False,
                f"service account {SERVICE_ACCOUNT} is missing in {ns} "
                "(kubectl apply -k manifests/overlays/gke)",
            )
        if _status(exc) is not None:
            return Check(False, f"service account {SERVICE_ACCOUNT}: {_reason(exc)}")
        raise
    gsa = (sa.get("metadata", {}).get("annotations") or {}).get(WI_ANNOTATION, "")
    if not gsa:
        return Check(
            False,
            f"service account {SERVICE_ACCOUNT} has no {WI_ANNOTATION} annotation (Workload "
            "Identity: tasks get no Google credentials; set GCP_SERVICE_ACCOUNT in "
            "manifests/overlays/gke/settings.env and apply)",
        )
    if gsa == PLACEHOLDER_GSA:
        return Check(
            False,
            f"service account {SERVICE_ACCOUNT}: {WI_ANNOTATION} is still the placeholder "
            f"{gsa} (edit manifests/overlays/gke/settings.env)",
        )
    if not GSA_EMAIL.match(gsa):
        return Check(
            False,
            f"service account {SERVICE_ACCOUNT}: {WI_ANNOTATION}={gsa!r} is not a Google "
            "service account email (NAME@PROJECT.iam.gserviceaccount.com)",
        )
    return Check(True, f"service account {SERVICE_ACCOUNT} acts as {gsa} (Workload Identity)")


def _check_pvc(api: _Api, ns: str, name: str) -> Check:
    try:
        pvc = api.get(api.core.read_namespaced_persistent_volume_claim, name, ns)
    except Exception as exc:
        if _status(exc) == 404:
            return Check(False, f"PVC {name} is missing in {ns} (the GPU tasks mount it)")
        if _status(exc) is not None:
            return Check(False, f"PVC {name}: {_reason(exc)}")
        raise
    phase = pvc.get("status", {}).get("phase", "")
    if phase == "Bound":
        return Check(True, f"PVC {name} is Bound")
    sc = pvc.get("spec", {}).get("storageClassName") or ""
    if phase == "Pending" and sc:
        try:
            cls = api.get(api.storage.read_storage_class, sc)
        except Exception as exc:
            if _status(exc) is None:
                raise
            cls = {}
        if cls.get("volumeBindingMode") == "WaitForFirstConsumer":
            return Check(
                True,
                f"PVC {name} is Pending: storage class {sc} binds it when the first GPU task "
                "mounts it (WaitForFirstConsumer)",
            )
        if not cls:
            return Check(False, f"PVC {name} is Pending: storage class {sc} does not exist")
    return Check(
        False,
        f"PVC {name} is {phase or 'in no phase'}, not Bound (kubectl describe pvc {name} -n {ns})",
    )


def _has_labels(node: dict[str, Any], selector: dict[str, str]) -> bool:
    labels = node.get("metadata", {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in selector.items())


def _node_line(node: dict[str, Any]) -> str:
    return node.get("metadata", {}).get("name", "?")


def _fits(node: dict[str, Any], need: GpuTask) -> str | None:
    """Why ``need`` cannot run on ``node``; None when it can."""
    alloc = node.get("status", {}).get("allocatable", {})
    have = quantity(alloc.get(need.resource, 0))
    if have < need.count:
        return f"allocatable {need.resource} {have} < {need.count}"
    for taint in node.get("spec", {}).get("taints") or []:
        if taint.get("effect") in BLOCKING_EFFECTS and not tolerates(need.tolerations, taint):
            t = f"{taint.get('key')}={taint.get('value', '')}:{taint.get('effect')}"
            return f"taint {t} not tolerated"
    if quantity(alloc.get("cpu", 0)) < need.cpu:
        return f"allocatable cpu {alloc.get('cpu')} < request {need.cpu}"
    if quantity(alloc.get("memory", 0)) < need.memory:
        gib = quantity(alloc.get("memory", 0)) / 2**30
        return f"allocatable memory {gib:.1f}Gi < request {need.memory / 2**30:.1f}Gi"
    return None


def _check_gpu_nodes(api: _Api, needs: list[GpuTask]) -> list[Check]:
    if not needs:
        return [Check(True, "the pipeline has no GPU tasks")]
    try:
        nodes = api.get(api.core.list_node).get("items", [])
    except Exception as exc:
        if _status(exc) is not None:
            return [Check(False, f"cannot list nodes: {_reason(exc)}")]
        raise
    groups: dict[str, list[GpuTask]] = {}
    for need in needs:
        key = json.dumps(
            [need.resource, need.count, need.node_selector, need.tolerations], sort_keys=True
        )
        groups.setdefault(key, []).append(need)
    out = []
    for group in groups.values():
        first = group[0]
        names = ", ".join(sorted(n.task for n in group))
        sel = ",".join(f"{k}={v}" for k, v in sorted(first.node_selector.items())) or "(any node)"
        if not first.resource:
            out.append(
                Check(
                    False,
                    f"GPU tasks {names}: the accelerator type is set at run time; cannot check",
                )
            )
            continue
        labelled = [n for n in nodes if _has_labels(n, first.node_selector)]
        if not labelled:
            out.append(
                Check(
                    False,
                    f"GPU tasks {names}: no node has the labels {sel} "
                    f"({len(nodes)} nodes; create the GPU node pool, docs/cluster.md; a pool "
                    "autoscaled to zero shows no nodes until a task waits for one)",
                )
            )
            continue
        bad = []
        for need in group:
            reasons = {_node_line(n): _fits(n, need) for n in labelled}
            fit = [n for n, r in reasons.items() if r is None]
            if not fit:
                why = "; ".join(f"{n}: {r}" for n, r in reasons.items())
                bad.append(f"{need.task} ({why})")
        if bad:
            out.append(
                Check(
                    False,
                    f"GPU tasks: no node labelled {sel} can run " + ", ".join(bad),
                )
            )
        else:
            out.append(
                Check(
                    True,
                    f"GPU tasks {names}: {len(labelled)} node(s) labelled {sel} with "
                    f"{first.resource} >= {first.count}, taints tolerated, CPU and memory enough",
                )
            )
    return out


TRAINER_API = "/apis/trainer.kubeflow.org/v1alpha1"


def _check_trainjob(api: _Api, ns: str, runtime: str) -> list[Check]:
    """The trainjob backend's needs: Kubeflow Trainer's TrainJob API, the named runtime
    (namespaced first, then cluster-scoped, as the SDK looks) with the torch framework
    label the SDK requires, and whether pipeline-runner may create TrainJobs (a
    SelfSubjectAccessReview made as that service account, by impersonation)."""
    out = []
    try:
        served = {r.get("name") for r in api.raw(TRAINER_API).get("resources", [])}
    except Exception as exc:
        if _status(exc) is None:
            raise
        served = set()
    if "trainjobs" in served:
        out.append(Check(True, "TrainJob API trainer.kubeflow.org/v1alpha1 is served"))
    else:
        out.append(
            Check(
                False,
                "the TrainJob CRD (trainjobs.trainer.kubeflow.org/v1alpha1) is not installed: "
                "install Kubeflow Trainer (docs/cluster.md) or set train_backend: local",
            )
        )
    found = None
    for kind, path in (
        ("TrainingRuntime", f"{TRAINER_API}/namespaces/{ns}/trainingruntimes/{runtime}"),
        ("ClusterTrainingRuntime", f"{TRAINER_API}/clustertrainingruntimes/{runtime}"),
    ):
        try:
            found = (kind, api.raw(path))
            break
        except Exception as exc:
            if _status(exc) not in (403, 404):
                raise
    if found is None:
        out.append(
            Check(
                False,
                f"training runtime {runtime} not found (neither a TrainingRuntime in {ns} nor "
                "a ClusterTrainingRuntime; docs/cluster.md installs torch-distributed)",
            )
        )
    else:
        kind, obj = found
        labels = obj.get("metadata", {}).get("labels") or {}
        framework = labels.get("trainer.kubeflow.org/framework")
        if framework != "torch":
            out.append(
                Check(
                    False,
                    f"training runtime {runtime} ({kind}) has trainer.kubeflow.org/framework="
                    f"{framework or '(none)'}: the trainjob backend runs torchrun and needs torch",
                )
            )
        else:
            out.append(Check(True, f"training runtime {runtime} exists ({kind}, framework torch)"))
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {
            "resourceAttributes": {
                "namespace": ns, "verb": "create",
                "group": "trainer.kubeflow.org", "resource": "trainjobs",
            }
        },
    }  # fmt: skip
    who = f"system:serviceaccount:{ns}:{SERVICE_ACCOUNT}"
    try:
        got = api.raw(
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", "POST", review,
            {"Impersonate-User": who},
        )  # fmt: skip
    except Exception as exc:
        if _status(exc) is None:
            raise
        out.append(
            Check(
                False,
                f"cannot check whether {SERVICE_ACCOUNT} may create TrainJobs: {_reason(exc)} "
                "(the check impersonates it: needs impersonate on serviceaccounts)",
            )
        )
        return out
    status = got.get("status", {})
    if status.get("allowed"):
        out.append(Check(True, f"{SERVICE_ACCOUNT} may create TrainJobs in {ns}"))
    else:
        why = status.get("reason") or status.get("evaluationError") or "denied"
        out.append(
            Check(
                False,
                f"{SERVICE_ACCOUNT} may not create TrainJobs in {ns} ({why}; apply "
                "manifests/overlays/...: role.yaml grants it)",
            )
        )
    return out


def _check_images(spec: dict[str, Any]) -> Check:
    imgs = sorted(set(images(spec).values()))
    loose = [i for i in imgs if not DIGEST.search(i)]
    if loose:
        return Check(
            False,
            f"{len(loose)} of {len(imgs)} images not pinned by digest: {', '.join(loose)} "
            "(make push-images pins them in components/images.lock.json; then make compile)",
        )
    return Check(True, f"all {len(imgs)} images pinned by digest")


def run_checks(
    api_client_: Any,
    namespace: str,
    pipeline: str | Path = DEFAULT_PIPELINE,
    arguments: dict[str, Any] | None = None,
) -> list[Check]:
    """Every check against the cluster behind ``api_client_`` (a kubernetes ApiClient).

    Raises ``OptimusError`` (one line) when the API server cannot be reached.
    """
    from optimus_lib.errors import OptimusError

    spec, platform = load_pipeline(pipeline)
    needs = gpu_tasks(spec, platform, arguments)
    pvcs = sorted({p for n in needs for p in n.pvcs})
    api = _Api(api_client_)
    try:
        checks = [_check_namespace(api, namespace)]
        if checks[0].ok:
            checks.append(_check_service_account(api, namespace))
            checks += [_check_pvc(api, namespace, p) for p in pvcs]
        checks += _check_gpu_nodes(api, needs)
        values = parameter_values(spec, arguments)
        if values.get("train_backend") == "trainjob" and checks[0].ok:
            runtime = (values.get("trainjob_settings") or {}).get("runtime") or "torch-distributed"
            checks += _check_trainjob(api, namespace, runtime)
    except Exception as exc:
        why = _unreachable(exc, api.host)
        if why is None:
            raise
        raise OptimusError(why) from None
    checks.append(_check_images(spec))
    return checks


def check_cluster(
    namespace: str,
    pipeline: str | Path | None = None,
    arguments: dict[str, Any] | None = None,
    kubeconfig: str | None = None,
    context: str | None = None,
    echo: Callable[[str], Any] = print,
) -> int:
    """``optimus cluster check``: print one line per check; return the number of problems."""
    client = api_client(kubeconfig, context)
    try:
        checks = run_checks(client, namespace, pipeline or DEFAULT_PIPELINE, arguments)
    finally:
        client.close()
    for c in checks:
        echo(c.line())
    return sum(not c.ok for c in checks)
