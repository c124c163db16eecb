"""manifests/: every overlay builds with ``kubectl kustomize``, every object validates
offline against the Kubernetes 1.32 schemas (kubernetes-validate, strict), and the
objects agree with the compiled pipeline (service account, PVC, GPU node pool, quota).

kubernetes-validate checks structure and types; the enum-like strings it leaves open
(access modes, verbs, LimitRange types, quota names, taint effects ...) are checked here.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml

from deploy import cluster, pipeline_spec

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
OVERLAYS = sorted(p.parent.name for p in (MANIFESTS / "overlays").glob("*/kustomization.yaml"))
KUBERNETES_VERSION = "1.32"
KUBECTL = shutil.which("kubectl")

CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl is not installed (kubectl kustomize builds the overlays)"
)


@cache
def build(overlay: str) -> tuple[dict, ...]:
    out = subprocess.run(
        [KUBECTL, "kustomize", str(MANIFESTS / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def by_kind(objs, kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def one(objs, kind: str, name: str) -> dict:
    (obj,) = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


@cache
def pipeline() -> tuple[dict, dict]:
    return pipeline_spec.load_pipeline(ROOT / "pipelines" / "defense.yaml")


def defaults() -> dict:
    return pipeline_spec.parameter_values(pipeline()[0], None)


def test_overlays_exist():
    assert {"gke", "gke-own-namespace"} <= set(OVERLAYS)


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_strictly(overlay):
    import kubernetes_validate

    objs = build(overlay)
    assert objs
    for obj in objs:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(
                f"{overlay}: {obj['kind']}/{obj['metadata']['name']}: {path}: {exc.message}"
            )
        except kubernetes_validate.SchemaNotFoundError as exc:
            pytest.fail(f"{overlay}: {exc.message}")


VERBS = {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}
ACCESS_MODES = {"ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"}
TAINT_EFFECTS = {"NoSchedule", "PreferNoSchedule", "NoExecute"}
QUOTA_NAMES = re.compile(
    r"^(pods|persistentvolumeclaims|services|secrets|configmaps|"
    r"(requests\.|limits\.)?(cpu|memory|ephemeral-storage)|requests\.storage|"
    r"requests\.[a-z0-9.-]+/[a-z0-9.-]+)$"
)
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_values_the_schema_leaves_open(overlay):
    objs = build(overlay)
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    assert len(names) == len(objs), "duplicate objects"
    namespaces = {o["metadata"].get("namespace") for o in objs if o["kind"] not in CLUSTER_SCOPED}
    assert len(namespaces) == 1 and None not in namespaces, namespaces  # all in one namespace
    (ns,) = namespaces
    assert DNS_LABEL.match(ns)
    for ns_obj in by_kind(objs, "Namespace"):
        assert ns_obj["metadata"]["name"] == ns
    for role in by_kind(objs, "Role") + by_kind(objs, "ClusterRole"):
        for rule in role["rules"]:
            assert set(rule["verbs"]) <= VERBS, rule  # no '*' either: least rights
            assert "*" not in rule["resources"] and "*" not in rule["apiGroups"]
            assert "secrets" not in rule["resources"]
    for rb in by_kind(objs, "RoleBinding") + by_kind(objs, "ClusterRoleBinding"):
        assert rb["roleRef"]["kind"] == rb["kind"].replace("Binding", "")
        assert (rb["roleRef"]["kind"], rb["roleRef"]["name"]) in names  # built here
        for s in rb["subjects"]:
            assert s["kind"] == "ServiceAccount" and s["namespace"] == ns
            assert ("ServiceAccount", s["name"]) in names
    for pvc in by_kind(objs, "PersistentVolumeClaim"):
        assert set(pvc["spec"]["accessModes"]) <= ACCESS_MODES
        assert pvc["spec"].get("volumeMode", "Filesystem") in {"Filesystem", "Block"}
        assert pvc["spec"].get("storageClassName"), "the overlay sets the storage class"
        pipeline_spec.quantity(pvc["spec"]["resources"]["requests"]["storage"])
    for quota in by_kind(objs, "ResourceQuota"):
        for name, value in quota["spec"]["hard"].items():
            assert QUOTA_NAMES.match(name), name
            pipeline_spec.quantity(value)
    for lr in by_kind(objs, "LimitRange"):
        for limit in lr["spec"]["limits"]:
            assert limit["type"] in {"Container", "Pod", "PersistentVolumeClaim"}
            d_req, d_lim, top = (limit.get(k, {}) for k in ("defaultRequest", "default", "max"))
            for res in set(d_req) | set(d_lim) | set(top):
                chain = [c[res] for c in (d_req, d_lim, top) if res in c]
                values = [pipeline_spec.quantity(v) for v in chain]
                assert values == sorted(values), (res, chain)  # request <= limit <= max


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_objects_match_the_pipeline(overlay):
    """The names the compiled pipeline and `make submit` use are the ones built here."""
    objs = build(overlay)
    spec, platform = pipeline()
    gpu = pipeline_spec.gpu_tasks(spec, platform)
    assert {t.task for t in gpu} == {"classify", "merge-scored", "heal", "dpo-train", "evaluate"}
    sa = one(objs, "ServiceAccount", cluster.SERVICE_ACCOUNT)
    gsa = sa["metadata"]["annotations"][cluster.WI_ANNOTATION]
    assert cluster.GSA_EMAIL.match(gsa), gsa
    pvcs = {p for t in gpu for p in t.pvcs}
    assert pvcs == {defaults()["cache_pvc"]}
    for name in pvcs:
        one(objs, "PersistentVolumeClaim", name)
    # the GPU quota admits at least one GPU task at its default accelerator count
    hard = one(objs, "ResourceQuota", "optimus-gpu")["spec"]["hard"]
    for t in gpu:
        assert pipeline_spec.quantity(hard[f"requests.{t.resource}"]) >= t.count


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gpu_node_pool_matches_what_the_gpu_tasks_request(overlay):
    """The node pool spec in the overlay (node-pool.env, docs/cluster.md) carries the
    labels the GPU tasks select, only taints they tolerate, their accelerator count, and a
    machine with room for their CPU and memory requests."""
    objs = build(overlay)
    pool = one(objs, "ConfigMap", "optimus-gpu-node-pool")["data"]
    labels = json.loads(pool["node_labels"])
    taints = json.loads(pool["node_taints"])
    assert taints and all(t["effect"] in TAINT_EFFECTS for t in taints)
    assert labels.get("cloud.google.com/gke-accelerator") == pool["accelerator"]
    spec, platform = pipeline()
    for task in pipeline_spec.gpu_tasks(spec, platform):
        assert task.resource == "nvidia.com/gpu"
        assert task.node_selector and task.node_selector.items() <= labels.items(), task.task
        for taint in taints:
            assert cluster.tolerates(task.tolerations, taint), (task.task, taint)
        assert int(pool["gpus_per_node"]) >= task.count
    # the defaults in the settings model are the pipeline's (a settings file starts there)
    from optimus_lib.config import Resources

    r = Resources()
    assert r.node_selector == defaults()["gpu_node_selector"]
    assert r.tolerations == defaults()["gpu_tolerations"]
    assert r.pvc_name == defaults()["cache_pvc"]
    assert r.accelerator_type == defaults()["accelerator_type"]


# What GKE leaves allocatable on a node of each machine type documented for the pool: the
# memory reservation (25% of the first 4 GiB, 20% of the next 4, 10% of the next 8, 6% of
# the next 112, plus 100 MiB eviction threshold) and the CPU one (6% of the first core, 1%
# of the next, 0.5% of the next 2, 0.25% above 4).
MACHINES = {"g2-standard-8": (8, 32), "g2-standard-16": (16, 64), "g2-standard-24": (24, 96)}


def _allocatable(cpus: int, gib: int) -> tuple[float, float]:
    mem = gib - (0.25 * 4 + 0.2 * 4 + 0.1 * 8 + 0.06 * min(max(gib - 16, 0), 112)) - 0.1
    cpu = cpus - (0.06 + 0.01 + 0.005 * 2 + 0.0025 * (cpus - 4))
    return cpu, mem * 2**30


@needs_kubectl
def test_documented_machine_type_fits_the_largest_gpu_task():
    pool = one(build("gke"), "ConfigMap", "optimus-gpu-node-pool")["data"]
    cpu, mem = _allocatable(*MACHINES[pool["machine_type"]])
    spec, platform = pipeline()
    for task in pipeline_spec.gpu_tasks(spec, platform):
        assert task.cpu <= cpu and task.memory <= mem, task.task
    small_cpu, small_mem = _allocatable(*MACHINES["g2-standard-8"])
    assert max(t.memory for t in pipeline_spec.gpu_tasks(spec, platform)) > small_mem  # why not -8
    doc = (ROOT / "docs" / "cluster.md").read_text()
    assert f"--machine-type={pool['machine_type']}" in doc
    assert f"type={pool['accelerator']},count={pool['gpus_per_node']}" in doc


@needs_kubectl
def test_own_namespace_overlay_adds_guardrails_and_gke_leaves_kubeflow_alone():
    gke, own = build("gke"), build("gke-own-namespace")
    assert by_kind(gke, "Namespace") == [] and by_kind(gke, "LimitRange") == []
    assert {o["metadata"]["name"] for o in by_kind(gke, "ResourceQuota")} == {"optimus-gpu"}
    assert set(one(gke, "ResourceQuota", "optimus-gpu")["spec"]["hard"]) == {
        "requests.nvidia.com/gpu"
    }  # counts GPU pods only: KFP's own pods in kubeflow are untouched
    assert gke[0]["metadata"]["namespace"] == "kubeflow"
    assert one(own, "Namespace", "optimus")
    limits = one(own, "LimitRange", "optimus-limits")["spec"]["limits"]
    container = next(x for x in limits if x["type"] == "Container")
    from pipelines.shared import PROFILES as RESOURCES

    for _cpu_req, cpu_lim, _mem_req, mem_lim in RESOURCES.values():
        assert pipeline_spec.quantity(cpu_lim) <= pipeline_spec.quantity(container["max"]["cpu"])
        assert pipeline_spec.quantity(mem_lim) <= pipeline_spec.quantity(container["max"]["memory"])
    assert "nvidia.com/gpu" not in container["max"]  # would force a GPU limit on every pod
    hard = one(own, "ResourceQuota", "optimus-compute")["spec"]["hard"]
    biggest = max(RESOURCES.values(), key=lambda r: pipeline_spec.quantity(r[2]))
    assert pipeline_spec.quantity(hard["requests.memory"]) >= pipeline_spec.quantity(biggest[2])
    pvc = one(own, "PersistentVolumeClaim", "optimus-cache")
    assert pipeline_spec.quantity(hard["requests.storage"]) >= pipeline_spec.quantity(
        pvc["spec"]["resources"]["requests"]["storage"]
    )


KEY_MATERIAL = re.compile(
    r"BEGIN [A-Z ]*PRIVATE KEY|private_key|GOOGLE_APPLICATION_CREDENTIALS|"
    r"service_account\.json|key\.json|keys create|serviceAccountKey",
    re.I,
)


def test_no_secret_or_key_file_anywhere():
    """Workload Identity only: no Secret object, no key file, no key-file instructions."""
    files = [p for p in MANIFESTS.rglob("*") if p.is_file()]
    assert files
    assert not [p for p in files if p.suffix in {".json", ".pem", ".key", ".p12"}]
    for path in [*files, ROOT / "docs" / "cluster.md"]:
        text = path.read_text()
        assert not KEY_MATERIAL.search(text), path
    if KUBECTL:
        for overlay in OVERLAYS:
            for obj in build(overlay):
                assert obj["kind"] != "Secret"
                assert "secrets" not in obj and "imagePullSecrets" not in obj
                assert "token" not in json.dumps(obj.get("data", {})).lower()


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rbac_grants_the_trainjob_controller_exactly_what_it_needs(overlay):
    """The trainjob backend's task: TrainJobs create/get/list/watch/delete, runtimes
    get/list (the cluster-scoped ones through a ClusterRole bound to pipeline-runner
    only), its pods and their log, the namespace's events; nothing more of the Trainer."""
    objs = build(overlay)
    (role,) = by_kind(objs, "Role")
    rules = {(g, r): set(rule["verbs"]) for rule in role["rules"]
             for g in rule["apiGroups"] for r in rule["resources"]}  # fmt: skip
    trainer = {k: v for k, v in rules.items() if k[0] == "trainer.kubeflow.org"}
    assert trainer == {
        ("trainer.kubeflow.org", "trainjobs"): {"create", "get", "list", "watch", "delete"},
        ("trainer.kubeflow.org", "trainingruntimes"): {"get", "list"},
    }
    assert {"get", "list"} <= rules[("", "pods")] and rules[("", "pods/log")] == {"get"}
    assert rules[("", "events")] == {"list"}
    (cluster_role,) = by_kind(objs, "ClusterRole")
    assert cluster_role["rules"] == [
        {"apiGroups": ["trainer.kubeflow.org"], "resources": ["clustertrainingruntimes"],
         "verbs": ["get", "list"]}
    ]  # fmt: skip
    (crb,) = by_kind(objs, "ClusterRoleBinding")
    assert crb["roleRef"]["name"] == cluster_role["metadata"]["name"]
    (subject,) = crb["subjects"]
    assert subject == {"kind": "ServiceAccount", "name": "pipeline-runner",
                       "namespace": role["metadata"]["namespace"]}  # fmt: skip
