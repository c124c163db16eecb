"""``optimus cluster check`` against a stand-in Kubernetes API on 127.0.0.1.

The real ``kubernetes`` client, a generated kubeconfig and real HTTP; the stand-in serves
Kubernetes objects in the API's wire format from tests/data/k8s/ (a GKE-like cluster:
a default pool node, L4 nodes of two machine sizes) and 404 for anything absent.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from helpers import OPTIMUS_CLI
from standins import kube_routes, kubeconfig, serve

from deploy import cluster, pipeline_spec
from optimus_lib.errors import OptimusError

pytestmark = pytest.mark.integration  # real clients against stand-in servers on 127.0.0.1

ROOT = Path(__file__).resolve().parents[2]
DIGEST = "@sha256:" + "0123456789abcdef" * 4


@pytest.fixture
def pinned(tmp_path) -> Path:
    """The compiled pipeline with its images pinned by digest (what push-images yields)."""
    text = (ROOT / "pipelines" / "defense.yaml").read_text()
    for image in set(
        pipeline_spec.images(
            pipeline_spec.load_pipeline(ROOT / "pipelines/defense.yaml")[0]
        ).values()
    ):
        text = text.replace(
            f"image: {image}\n", f"image: {image.split('@')[0].rsplit(':', 1)[0]}{DIGEST}\n"
        )
    path = tmp_path / "pinned.yaml"
    path.write_text(text)
    return path


def _check(tmp_path: Path, routes, pipeline: Path, namespace: str = "kubeflow", arguments=None):
    lines: list[str] = []
    with serve(routes) as api:
        config = kubeconfig(tmp_path / "kubeconfig", api.url)
        problems = cluster.check_cluster(
            namespace, pipeline, arguments, kubeconfig=str(config), echo=lines.append
        )
    return problems, lines, api.requests


def _problems(lines: list[str]) -> list[str]:
    return [ln for ln in lines if ln.startswith("PROBLEM")]


def test_healthy_cluster_passes_every_check(tmp_path, pinned):
    problems, lines, requests = _check(tmp_path, kube_routes(), pinned)
    assert problems == 0, lines
    assert all(ln.startswith("OK") for ln in lines)
    text = "\n".join(lines)
    assert "namespace kubeflow exists" in text
    assert "optimus-pipelines@optimus-prod-4821.iam.gserviceaccount.com" in text
    assert "PVC optimus-cache is Bound" in text
    (gpu,) = [ln for ln in lines if "GPU tasks" in ln]
    names = gpu.split("GPU tasks ")[1].split(":")[0].split(", ")
    assert sorted(names) == ["classify", "dpo-train", "evaluate", "heal", "merge-scored"]
    assert "all 2 images pinned by digest" in text
    paths = {r.path for r in requests}
    assert "/api/v1/namespaces/kubeflow/serviceaccounts/pipeline-runner" in paths
    assert "/api/v1/nodes" in paths
    assert all(r.method == "GET" for r in requests)  # a check never changes the cluster


def test_cluster_without_gpu_nodes(tmp_path, pinned):
    routes = kube_routes(nodes=("node-default-pool-e2-standard-4",))
    problems, lines, _ = _check(tmp_path, routes, pinned)
    assert problems == 1
    (line,) = _problems(lines)
    assert "no node has the labels cloud.google.com/gke-accelerator=nvidia-l4" in line


def test_gpu_node_too_small_for_dpo_train(tmp_path, pinned):
    """g2-standard-8 (28 GiB allocatable) cannot hold dpo_train's 32G memory request."""
    routes = kube_routes(nodes=("node-default-pool-e2-standard-4", "node-l4-g2-standard-8"))
    problems, lines, _ = _check(tmp_path, routes, pinned)
    assert problems == 1
    (line,) = _problems(lines)
    assert "dpo-train" in line and "memory" in line
    assert "classify" not in line  # 16G fits


def test_settings_change_what_is_checked(tmp_path, pinned):
    """Two GPUs per task (a settings file's resources.accelerator_count) fit no L4 node;
    a different node selector finds no node; an untolerated taint is named."""
    problems, lines, _ = _check(tmp_path, kube_routes(), pinned, arguments={"accelerator_count": 2})
    assert problems == 1 and "allocatable nvidia.com/gpu 1 < 2" in _problems(lines)[0]
    problems, lines, _ = _check(
        tmp_path,
        kube_routes(),
        pinned,
        arguments={"gpu_node_selector": {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}},
    )
    assert problems == 1 and "nvidia-h100-80gb" in _problems(lines)[0]
    problems, lines, _ = _check(tmp_path, kube_routes(), pinned, arguments={"gpu_tolerations": []})
    assert problems == 1 and "taint nvidia.com/gpu=present:NoSchedule not tolerated" in lines[3]


def test_namespace_without_the_service_account(tmp_path, pinned):
    problems, lines, _ = _check(tmp_path, kube_routes(service_account=None), pinned)
    assert problems == 1
    (line,) = _problems(lines)
    assert "service account pipeline-runner is missing in kubeflow" in line


def test_service_account_without_workload_identity(tmp_path, pinned):
    routes = kube_routes()
    key = ("GET", "/api/v1/namespaces/kubeflow/serviceaccounts/pipeline-runner")
    sa = routes[key][1]
    routes[key] = (200, {**sa, "metadata": {**sa["metadata"], "annotations": {}}})
    problems, lines, _ = _check(tmp_path, routes, pinned)
    assert problems == 1 and "no iam.gke.io/gcp-service-account annotation" in _problems(lines)[0]
    routes[key] = (
        200,
        {
            **sa,
            "metadata": {
                **sa["metadata"],
                "annotations": {cluster.WI_ANNOTATION: cluster.PLACEHOLDER_GSA},
            },
        },
    )
    problems, lines, _ = _check(tmp_path, routes, pinned)
    assert problems == 1 and "still the placeholder" in _problems(lines)[0]


def test_pvc_pending(tmp_path, pinned):
    """Pending on an Immediate class is a problem; Pending on a WaitForFirstConsumer class
    (GKE's standard-rwo) is what a claim looks like before its first pod."""
    problems, lines, _ = _check(tmp_path, kube_routes(pvc="pvc-optimus-cache-pending"), pinned)
    assert problems == 1
    (line,) = _problems(lines)
    assert "PVC optimus-cache is Pending, not Bound" in line

    routes = kube_routes(pvc="pvc-optimus-cache-pending")
    key = ("GET", "/api/v1/namespaces/kubeflow/persistentvolumeclaims/optimus-cache")
    pvc = routes[key][1]
    routes[key] = (200, {**pvc, "spec": {**pvc["spec"], "storageClassName": "standard-rwo"}})
    problems, lines, _ = _check(tmp_path, routes, pinned)
    assert problems == 0, lines
    assert any("WaitForFirstConsumer" in ln for ln in lines)


def test_pvc_missing_and_namespace_missing(tmp_path, pinned):
    problems, lines, _ = _check(tmp_path, kube_routes(pvc=None), pinned)
    assert problems == 1 and "PVC optimus-cache is missing in kubeflow" in _problems(lines)[0]
    problems, lines, requests = _check(tmp_path, kube_routes(), pinned, namespace="optimus")
    assert problems == 1 and "namespace optimus does not exist" in _problems(lines)[0]
    assert not any("/namespaces/optimus/" in r.path for r in requests)  # nothing inside it


def test_unpinned_images_are_a_problem(tmp_path):
    text = (ROOT / "pipelines" / "defense.yaml").read_text()
    spec = pipeline_spec.load_pipeline(ROOT / "pipelines" / "defense.yaml")[0]
    for image in set(pipeline_spec.images(spec).values()):
        text = text.replace(f"image: {image}\n", f"image: {image.split('@')[0]}:0.1.0\n")
    path = tmp_path / "tagged.yaml"
    path.write_text(text)
    problems, lines, _ = _check(tmp_path, kube_routes(), path)
    assert problems == 1
    assert "2 of 2 images not pinned by digest" in _problems(lines)[0]


def test_unreachable_api_is_one_line(tmp_path, pinned):
    with serve({}) as api:  # take a free port, then close it
        url = api.url
    config = kubeconfig(tmp_path / "kubeconfig", url)
    with pytest.raises(OptimusError, match=f"cannot reach the Kubernetes API at {url}"):
        cluster.check_cluster("kubeflow", pinned, kubeconfig=str(config))


def test_tolerates_follows_kubernetes_rules():
    taint = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    assert cluster.tolerates([{"key": "nvidia.com/gpu", "operator": "Exists"}], taint)
    assert cluster.tolerates([{"operator": "Exists"}], taint)  # empty key + Exists: all
    assert cluster.tolerates([{"key": "nvidia.com/gpu", "value": "present"}], taint)  # Equal
    assert not cluster.tolerates([{"key": "nvidia.com/gpu", "value": "absent"}], taint)
    assert not cluster.tolerates(
        [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoExecute"}], taint
    )
    assert not cluster.tolerates([{"key": "other", "operator": "Exists"}], taint)
    assert not cluster.tolerates([], taint)


def test_quantities():
    assert pipeline_spec.quantity("500m") == pytest.approx(0.5)
    assert pipeline_spec.quantity("32G") == 32 * 10**9
    assert pipeline_spec.quantity("60924352Ki") == 60924352 * 1024
    assert pipeline_spec.quantity("2") == 2


def _cli(args: list[str], kubeconfig_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig_path), "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run(
        [*OPTIMUS_CLI, "cluster", "check", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_cli_reads_kubeconfig_and_settings(tmp_path, pinned):
    """The command reads $KUBECONFIG; --settings changes the GPU request; exit 1 on a
    problem, 0 when none; an unreachable API is one line and exit 2."""
    settings = tmp_path / "s.yaml"
    settings.write_text("resources: {accelerator_count: 2}\n")
    with serve(kube_routes()) as api:
        config = kubeconfig(tmp_path / "kubeconfig", api.url)
        ok = _cli(["--namespace", "kubeflow", "--pipeline", str(pinned)], config)
        two = _cli(
            ["-n", "kubeflow", "--pipeline", str(pinned), "--settings", str(settings)], config
        )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert len(ok.stdout.splitlines()) == 5 and "Traceback" not in ok.stderr
    assert two.returncode == 1
    assert "allocatable nvidia.com/gpu 1 < 2" in two.stdout
    assert two.stderr.strip() == "optimus: 1 problem(s)"

    down = _cli(["-n", "kubeflow"], kubeconfig(tmp_path / "down", api.url))
    assert down.returncode == 2
    assert down.stdout == ""
    assert down.stderr.strip().splitlines() == [
        f"optimus: error: cannot reach the Kubernetes API at {api.url}: Connection refused"
    ]


def test_unusable_kubeconfig_is_one_line(tmp_path, pinned):
    config = kubeconfig(tmp_path / "kubeconfig", "http://127.0.0.1:1")
    with pytest.raises(OptimusError, match="kubeconfig .*nope"):
        cluster.check_cluster("kubeflow", pinned, kubeconfig=str(config), context="nope")
    with pytest.raises(OptimusError, match="no kubeconfig at .*missing"):
        cluster.check_cluster("kubeflow", pinned, kubeconfig=str(tmp_path / "missing"))


# ---- the trainjob backend -----------------------------------------------------------------
TRAINER = "/apis/trainer.kubeflow.org/v1alpha1"
TRAINER_DISCOVERY = {
    "kind": "APIResourceList",
    "apiVersion": "v1",
    "groupVersion": "trainer.kubeflow.org/v1alpha1",
    "resources": [
        {"name": "trainjobs", "singularName": "trainjob", "namespaced": True, "kind": "TrainJob",
         "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]},
        {"name": "clustertrainingruntimes", "singularName": "clustertrainingruntime",
         "namespaced": False, "kind": "ClusterTrainingRuntime", "verbs": ["get", "list"]},
    ],
}  # fmt: skip


def _trainer_routes(allowed: bool = True, installed: bool = True, label: str = "torch"):
    from standins import k8s_object

    runtime = k8s_object("clustertrainingruntime-torch-distributed")
    runtime["metadata"]["labels"] = {"trainer.kubeflow.org/framework": label}

    def review(req):
        who = req.headers.get("Impersonate-User")
        ok = allowed and who == "system:serviceaccount:kubeflow:pipeline-runner"
        attrs = req.body["spec"]["resourceAttributes"]
        return 201, {**req.body, "status": {
            "allowed": ok and attrs == {"namespace": "kubeflow", "verb": "create",
                                        "group": "trainer.kubeflow.org", "resource": "trainjobs"},
            **({} if ok else {"reason": "no RBAC policy matched"})}}  # fmt: skip

    routes = {
        **kube_routes(),
        ("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"): review,
    }
    if installed:
        routes[("GET", TRAINER)] = (200, TRAINER_DISCOVERY)
        routes[("GET", f"{TRAINER}/clustertrainingruntimes/torch-distributed")] = (200, runtime)
    return routes


def test_trainjob_backend_checks_api_runtime_and_permission(tmp_path, pinned):
    args = {"train_backend": "trainjob"}
    problems, lines, requests = _check(tmp_path, _trainer_routes(), pinned, arguments=args)
    assert problems == 0, lines
    assert "OK       TrainJob API trainer.kubeflow.org/v1alpha1 is served" in lines
    assert (
        "OK       training runtime torch-distributed exists (ClusterTrainingRuntime, "
        "framework torch)" in lines
    )
    assert "OK       pipeline-runner may create TrainJobs in kubeflow" in lines
    posts = [r for r in requests if r.method == "POST"]  # an access review creates nothing
    assert [r.path for r in posts] == ["/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"]

    # Not installed, no runtime; then a runtime of another framework and no permission.
    _, lines, _ = _check(tmp_path, _trainer_routes(installed=False), pinned, arguments=args)
    bad = _problems(lines)
    assert len(bad) == 2 and "TrainJob CRD" in bad[0] and "install Kubeflow Trainer" in bad[0]
    assert "training runtime torch-distributed not found" in bad[1]
    routes = _trainer_routes(allowed=False, label="deepspeed")
    _, lines, _ = _check(tmp_path, routes, pinned, arguments=args)
    bad = _problems(lines)
    assert len(bad) == 2 and "framework=deepspeed" in bad[0]
    assert "pipeline-runner may not create TrainJobs in kubeflow (no RBAC policy matched" in bad[1]


def test_local_backend_does_not_check_the_trainer(tmp_path, pinned):
    problems, lines, requests = _check(tmp_path, _trainer_routes(installed=False), pinned)
    assert problems == 0 and not any("TrainJob" in ln for ln in lines)
    assert all(r.method == "GET" for r in requests)
