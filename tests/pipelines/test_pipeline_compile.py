"""Compiled YAML: golden files, Kubernetes settings of the defense pipeline, reuse of the
committed components, image names, the import guard. No model, no kfp.local: seconds."""

# No ``from __future__ import annotations``: kfp reads the pipeline's annotations as types.
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # components/ and pipelines/ are not installed packages
    sys.path.insert(0, str(ROOT))

kfp = pytest.importorskip("kfp")

from components import EXPERIMENT_ONLY, NAMES, all_components, yaml_path  # noqa: E402

GPU_TASKS = ("classify", "merge-scored", "heal", "dpo-train", "evaluate")
FAMILY = {
    "prepare_data": "light",
    "classify": "torch",
    "heal": "torch",
    "dpo_train": "torch",
    "train_job": "light",
    "evaluate": "torch",
    "register": "light",
    "record_rejection": "light",
    "split": "light",
    "merge_scored": "torch",
    "merge_healed": "light",
    "seed_bank": "light",
    "arm_inputs": "torch",
    "compare_arms": "torch",
}


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OPTIMUS_REGISTRY"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def all_tasks(spec: dict) -> dict[str, dict]:
    """Every task of a compiled pipeline by name, in its root DAG or any sub-DAG (loops,
    conditions, the curation sub-pipeline); the names the tests use are unique."""
    dags = [spec["root"], *spec["components"].values()]
    return {name: t for d in dags for name, t in d.get("dag", {}).get("tasks", {}).items()}


@pytest.fixture(scope="module")
def defense() -> tuple[dict, dict]:
    """(pipeline spec, Kubernetes platform spec) of the committed defense.yaml."""
    spec, platform = yaml.safe_load_all((ROOT / "pipelines" / "defense.yaml").read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_committed_yaml_matches_a_fresh_compile():
    """Golden: every component.yaml and pipeline YAML equals a fresh compile (the sdkVersion
    line aside). On failure: `make compile` and commit the YAML."""
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.compile", "--check"],
        cwd=ROOT,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_compile_is_deterministic(tmp_path):
    from pipelines.compile import compile_all, normalise

    first = {p.relative_to(tmp_path / "a"): p.read_text() for p in compile_all(tmp_path / "a")}
    second = {p.relative_to(tmp_path / "b"): p.read_text() for p in compile_all(tmp_path / "b")}
    assert first.keys() == second.keys()
    assert all(normalise(first[k]) == normalise(second[k]) for k in first)


def param(ref: dict) -> str:
    """The pipeline parameter a task input refers to (``pipelinechannel--`` inside a branch)."""
    return ref["componentInputParameter"].removeprefix("pipelinechannel--")


def test_gpu_tasks_get_accelerator_node_selector_toleration_pvc(defense):
    spec, k8s = defense
    executors = spec["deploymentSpec"]["executors"]
    for task in GPU_TASKS:
        res = executors[f"exec-{task}"]["container"]["resources"]
        assert "accelerator_type" in res["accelerator"]["resourceType"], task
        assert "accelerator_count" in res["accelerator"]["resourceCount"], task
        conf = k8s[f"exec-{task}"]
        # in a branch, a loop or the curation sub-pipeline a parameter is a channel to it
        assert param(conf["nodeSelector"]["nodeSelectorJson"]).endswith("gpu_node_selector")
        assert [param(t["tolerationJson"]) for t in conf["tolerations"]] == ["gpu_tolerations"]
        (pvc,) = conf["pvcMount"]
        assert pvc["mountPath"] == "/optimus-cache"
        assert param(pvc["pvcNameParameter"]).endswith("cache_pvc")
        (secret,) = conf["secretAsEnv"]
        assert secret["optional"] is True
        assert secret["keyToEnv"] == [{"envVar": "HF_TOKEN", "secretKey": "token"}]
    # CPU tasks get no accelerator and no GPU scheduling.
    for task in ("prepare-data", "split", "merge-healed", "register", "record-rejection"):
        assert "accelerator" not in executors[f"exec-{task}"]["container"]["resources"]
        assert f"exec-{task}" not in k8s
    # The GPU settings are pipeline parameters with usable defaults.
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["accelerator_type"]["defaultValue"] == "nvidia.com/gpu"
    assert params["gpu_tolerations"]["defaultValue"][0]["key"] == "nvidia.com/gpu"
    assert params["gpu_node_selector"]["parameterType"] == "STRUCT"


def test_every_task_has_cpu_and_memory_requests_and_limits(defense):
    spec, _ = defense
    executors = spec["deploymentSpec"]["executors"]
    # every component but the experiment's own; split runs twice (records, flagged)
    assert len(executors) == len(NAMES) - len(EXPERIMENT_ONLY) + 1
    for name, ex in executors.items():
        res = ex["container"]["resources"]
        for key in ("CpuRequest", "CpuLimit", "MemoryRequest", "MemoryLimit"):
            assert res.get(f"resource{key}"), (name, key)


def test_retries_caching_and_the_gate(defense):
    spec, _ = defense
    tasks = all_tasks(spec)
    for train in ("dpo-train", "train-job"):  # both resume from their checkpoints
        assert tasks[train]["retryPolicy"]["maxRetryCount"] >= 1
    assert tasks["evaluate"]["cachingOptions"] == {}  # caching off
    assert tasks["classify"]["cachingOptions"] == {"enableCache": True}
    (gates,) = [
        c["dag"]["tasks"]
        for c in spec["components"].values()
        if "dag" in c and any("gates" in t["taskInfo"]["name"] for t in c["dag"]["tasks"].values())
    ]
    branches = gates
    conds = {
        name: spec["components"][t["componentRef"]["name"]]["dag"]["tasks"]
        for name, t in branches.items()
    }
    by_task = {task: cond for cond, tasks in conds.items() for task in tasks}
    assert set(by_task) == {"register", "record-rejection"}
    assert by_task["register"] != by_task["record-rejection"]  # If and Else
    for task in ("register", "record-rejection"):
        assert conds[by_task[task]][task]["cachingOptions"] == {}
    gate = branches[by_task["register"]]["triggerPolicy"]["condition"]
    assert "evaluate" in gate and "Output" in gate and "true" in gate
    # Pipeline outputs: what pipelines.local.run_local reads back.
    assert set(spec["root"]["outputDefinitions"]["artifacts"]) == {"evaluation", "report"}


def test_each_stage_gets_its_resolved_settings(defense):
    """Settings are resolved on the client: each stage task receives its own settings
    parameter and nothing else of the run (no shared model, seed or detector parameter)."""
    spec, _ = defense
    tasks = all_tasks(spec)
    params = set(spec["root"]["inputDefinitions"]["parameters"])
    for shared in ("model", "judge_model", "seed", "detector", "rescore_detector", "method"):
        assert shared not in params
    for task, section in (
        ("prepare-data", "data"),
        ("classify", "classify"),
        ("merge-scored", "classify"),
        ("heal", "heal"),
        ("dpo-train", "train"),
        ("evaluate", "evaluate"),
    ):
        args = tasks[task]["inputs"]["parameters"]
        assert param(args["settings"]).endswith(f"{section}_settings"), task
        assert not {"model", "detector", "revision"} & set(args), task
    # the curation sub-pipeline gets the resolved settings, the seed and the shard count
    curation = tasks["curation"]["inputs"]["parameters"]
    for section in ("data", "classify", "heal"):
        assert curation[f"{section}_settings"] == {"componentInputParameter": f"{section}_settings"}
    assert curation["shards"] == {"componentInputParameter": "shards"}
    assert spec["root"]["inputDefinitions"]["parameters"]["shards"]["defaultValue"] == 1
    # heal's threshold is merge_scored's output, recorded with heal's shards by split.
    assert tasks["split-2"]["inputs"]["parameters"]["threshold"]["taskOutputParameter"] == {
        "outputParameterKey": "Output",
        "producerTask": "merge-scored",
    }
    assert "threshold" not in tasks["heal"]["inputs"]["parameters"]


def test_shard_loops_and_their_fan_in(defense):
    """split -> classify per shard -> merge_scored; split (flagged) -> heal per shard ->
    merge_healed: each loop iterates over its split's list of shard indexes."""
    spec, _ = defense
    tasks = all_tasks(spec)
    loops = {n: t for n, t in tasks.items() if "parameterIterator" in t}
    by_body = {}
    for loop in loops.values():
        body = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
        by_body[frozenset(body)] = loop
    classify_loop, heal_loop = by_body[frozenset({"classify"})], by_body[frozenset({"heal"})]
    for loop, producer in ((classify_loop, "split"), (heal_loop, "split-2")):
        items = loop["parameterIterator"]["items"]["inputParameter"]
        assert items == f"pipelinechannel--{producer}-Output"
        assert loop["inputs"]["parameters"][items]["taskOutputParameter"]["producerTask"] == (
            producer
        )
        assert loop.get("iteratorPolicy", {}).get("parallelismLimit", 0) == 0  # all at once
    loop_name = {id(loop): name for name, loop in loops.items()}
    scored = tasks["merge-scored"]["inputs"]["artifacts"]["parts"]
    assert scored["taskOutputArtifact"]["producerTask"] == loop_name[id(classify_loop)]
    healed = tasks["merge-healed"]["inputs"]["artifacts"]
    assert set(healed) == {"sft_parts", "preference_parts"}
    assert tasks["split-2"]["inputs"]["parameters"]["balance"]["runtimeValue"] == {
        "constant": "flagged"
    }


def test_committed_components_load_and_compose(tmp_path):
    """Reuse: the committed component.yaml files build a new pipeline that compiles."""
    from kfp import compiler, dsl
    from kfp.components import load_component_from_file

    loaded = {name: load_component_from_file(str(yaml_path(name))) for name in NAMES}
    assert len({c.name for c in loaded.values()}) == len(NAMES)  # unique component names

    @dsl.pipeline(name="reuse-check")
    def reuse(uri: str = "gs://bucket/dialogs.jsonl"):
        data = dsl.importer(artifact_uri=uri, artifact_class=dsl.Dataset, reimport=False)
        scan = loaded["classify"](dialogs=data.output, settings={"detector": "wordlist"})
        healed = loaded["heal"](scored=scan.outputs["scored"], threshold=scan.outputs["Output"])
        loaded["dpo_train"](
            sft_data=healed.outputs["sft_data"], preferences=healed.outputs["preferences"]
        )

    out = tmp_path / "reuse.yaml"
    compiler.Compiler().compile(reuse, str(out))
    spec = yaml.safe_load(out.read_text())
    assert {"classify", "heal", "dpo-train"} <= set(spec["root"]["dag"]["tasks"])


def test_component_yaml_describes_the_component_and_every_input():
    """The docstring is the description users see (kfp 2.17 keeps no output descriptions:
    the README lists the outputs)."""
    from kfp.components import load_component_from_file

    for name, comp in all_components().items():
        spec = yaml.safe_load(yaml_path(name).read_text())
        (component,) = spec["components"].values()
        assert load_component_from_file(str(yaml_path(name))).description, name
        for group in component["inputDefinitions"].values():
            for io_name, io in group.items():
                assert io.get("description"), f"{name}: input {io_name} has no description"
        assert (
            comp.component_spec.implementation.container.image
            == (spec["deploymentSpec"]["executors"][f"exec-{comp.name}"]["container"]["image"])
        )


def test_images_by_family_from_one_place():
    from components import images

    version = images.library_version()
    import optimus_lib

    assert version == optimus_lib.__version__
    for name, comp in all_components().items():
        image = comp.component_spec.implementation.container.image
        assert image == images.IMAGES[FAMILY[name]], name
    assert images.IMAGES["torch"].endswith(f"/optimus-torch:{version}")


def test_image_registry_from_env_and_digest_lock(monkeypatch, tmp_path):
    from components import images

    monkeypatch.setenv("OPTIMUS_REGISTRY", "europe-docker.pkg.dev/proj/repo/")
    assert images.image_name("light") == (
        f"europe-docker.pkg.dev/proj/repo/optimus-light:{images.library_version()}"
    )
    lock = tmp_path / "images.lock.json"
    pinned = "europe-docker.pkg.dev/proj/repo/optimus-torch@sha256:" + "a" * 64
    lock.write_text(json.dumps({"torch": pinned}))
    monkeypatch.setattr(images, "LOCK_FILE", lock)
    resolved = images.resolve()
    assert resolved["torch"] == pinned
    assert resolved["light"].endswith(f"optimus-light:{images.library_version()}")
    lock.write_text(json.dumps({"torch": "no-digest:latest"}))
    with pytest.raises(ValueError, match="sha256"):
        images.resolve()
    with pytest.raises(KeyError):
        images.image_name("gpu")
    lock.unlink()
    # the optional vLLM family has a name (make build-images VLLM=1) but no component uses it
    assert images.image_name("vllm").endswith(f"/optimus-vllm:{images.library_version()}")
    assert "vllm" not in images.resolve()


def test_import_guard_is_clean():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import import_guard
    finally:
        sys.path.remove(str(ROOT / "tools"))
    assert import_guard.check() == []


def test_import_guard_catches_violations(tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import import_guard
    finally:
        sys.path.remove(str(ROOT / "tools"))
    bad = tmp_path / "component.py"
    bad.write_text(
        "import torch\n"
        "from kfp import dsl\n\n"
        "@dsl.component(base_image='x')\n"
        "def c():\n"
        "    from components.images import IMAGES\n"
        "    from optimus_lib.stages import one_line_errors\n"
    )
    found = import_guard.check_file(bad, import_guard.TOP_OK, import_guard.BODY_OK)
    assert any(":1: imports 'torch'" in f for f in found)
    assert any(":6: component 'c' imports 'components'" in f for f in found)
    assert len(found) == 2


def test_import_guard_keeps_the_library_below_the_layers_above_it(tmp_path):
    """optimus_lib may not reach pipelines/deploy/cli/components/kfp, not even by name
    through importlib (what `optimus run` once did to load the local runner)."""
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import import_guard
    finally:
        sys.path.remove(str(ROOT / "tools"))
    lib = tmp_path / "optimus_lib" / "x.py"
    lib.parent.mkdir()
    lib.write_text(
        "import importlib\n"
        "from deploy.local import run_defense\n"
        "def run():\n"
        "    return importlib.import_module('pipelines.local')\n"
        "RUNNERS = {'local': 'deploy.local'}\n"
        "def any_runner(kind):\n"
        "    return importlib.import_module(RUNNERS[kind])\n"
    )
    found = import_guard.check_library_file(lib, tmp_path)
    assert any(":2: optimus_lib imports 'deploy'" in f for f in found), found
    assert any(":4: optimus_lib imports 'pipelines.local' by name" in f for f in found), found
    assert any(":5: optimus_lib names module 'deploy.local'" in f for f in found), found
    ok = tmp_path / "optimus_lib" / "ok.py"
    ok.write_text("import importlib\nM = {'a': 'optimus_lib.detect.stack'}\n"
                  "def f(k):\n    return importlib.import_module(M[k])\n")  # fmt: skip
    assert import_guard.check_library_file(ok, tmp_path) == []


def test_component_readmes_are_generated_and_current():
    """Each README.md is rendered from the component's docstring and metadata.yaml; a
    README that differs from a fresh render (a parameter added, a docstring changed)
    fails here until `make compile` rewrites it."""
    from components import folder, readme

    assert readme.stale() == []
    for name in NAMES:
        text = (folder(name) / "README.md").read_text()
        assert text.startswith(readme.HEADER)
        for section in ("## Inputs", "## Outputs", "## Parameters", "## Resources", "## Example"):
            assert section in text, f"{name}/README.md: no {section!r}"


def test_component_metadata_matches_the_code():
    """metadata.yaml names a stage function that exists and the image the component uses."""
    import importlib

    from components import folder, images

    for name, comp in all_components().items():
        meta = yaml.safe_load((folder(name) / "metadata.yaml").read_text())
        module, _, fn = meta["stage"].rpartition(".")
        assert callable(getattr(importlib.import_module(module), fn)), meta["stage"]
        image = comp.component_spec.implementation.container.image
        assert image == images.IMAGES[meta["image"]], name


def test_a_stale_readme_is_detected(monkeypatch):
    from components import readme

    monkeypatch.setattr(readme, "TEMPLATE", readme.TEMPLATE + "\nextra line\n")
    assert set(readme.stale()) == set(NAMES)


@pytest.fixture(scope="module")
def experiment() -> tuple[dict, dict]:
    """(pipeline spec, Kubernetes platform spec) of the committed experiment.yaml."""
    spec, platform = yaml.safe_load_all((ROOT / "pipelines" / "experiment.yaml").read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_experiment_loops_fan_in_and_promotion(experiment):
    """Seeds loop (the curation sub-pipeline once per seed) -> seed_bank -> arms loop
    (train and evaluate per arm, on GPU nodes) -> compare_arms -> register /
    record_rejection."""
    spec, k8s = experiment
    comps = spec["components"]
    root = spec["root"]["dag"]["tasks"]

    def loop_tasks(name: str) -> dict:
        return comps[root[name]["componentRef"]["name"]]["dag"]["tasks"]

    loops = {n: t for n, t in root.items() if "parameterIterator" in t}
    assert len(loops) == 2
    by_items = {t["parameterIterator"]["items"]["inputParameter"]: n for n, t in loops.items()}
    seeds_loop, arms_loop = by_items["pipelinechannel--seeds"], by_items["pipelinechannel--arms"]
    # the same sub-pipeline as the defense's, its seed the loop's item
    (curation,) = loop_tasks(seeds_loop).values()
    seed = curation["inputs"]["parameters"]["seed"]["componentInputParameter"]
    assert seed == "pipelinechannel--seeds-loop-item"
    assert curation["inputs"]["parameters"]["shards"]["componentInputParameter"].endswith("shards")
    inner = all_tasks(spec)
    assert {"prepare-data", "split", "classify", "merge-scored", "heal", "merge-healed"} <= set(
        inner
    )
    assert set(loop_tasks(arms_loop)) == {"arm-inputs", "dpo-train", "evaluate"}
    assert loops[arms_loop]["iteratorPolicy"]["parallelismLimit"] >= 1
    bank = root["seed-bank"]["inputs"]["artifacts"]
    assert set(bank) == {"train", "eval_toxic", "eval_benign", "scored", "sft_data", "preferences"}
    compare = root["compare-arms"]["inputs"]["artifacts"]
    assert set(compare) == {"evaluations", "adapters"}
    assert loop_tasks(arms_loop)["dpo-train"]["retryPolicy"]["maxRetryCount"] >= 1
    for task in ("classify", "heal", "dpo-train", "evaluate"):
        conf = k8s[f"exec-{task}"]
        toleration = conf["tolerations"][0]["tolerationJson"]["componentInputParameter"]
        assert toleration.endswith("gpu_tolerations")  # inside a loop: a pipeline channel
    assert "exec-compare-arms" not in k8s and "exec-seed-bank" not in k8s
    # a loop hands its GPU tasks the accelerator parameters (kfp 2.17 does not track them)
    for loop in (loops[arms_loop], *(t for t in inner.values() if "parameterIterator" in t)):
        for name in ("accelerator_type", "accelerator_count"):
            assert f"pipelinechannel--{name}" in loop["inputs"]["parameters"]
    conditions = json.dumps(spec["components"])
    assert "'promote'" in conditions and "'reject'" in conditions


@pytest.mark.parametrize("name", ["defense", "experiment"])
def test_training_has_its_own_accelerator_count_and_processes(name):
    """dpo_train reserves ``train_accelerator_count`` (all of its node's, say) and runs
    ``train_processes`` ranks; classify, heal and evaluate keep ``accelerator_count``."""
    spec, _ = yaml.safe_load_all((ROOT / "pipelines" / f"{name}.yaml").read_text())
    executors = spec["deploymentSpec"]["executors"]
    counts = {
        task: executors[f"exec-{task}"]["container"]["resources"]["accelerator"]["resourceCount"]
        for task in GPU_TASKS
    }
    assert counts.pop("dpo-train").endswith("--train_accelerator_count']}}")
    assert all(c.endswith("--accelerator_count']}}") for c in counts.values()), counts
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["train_accelerator_count"]["defaultValue"] == 1
    assert params["train_processes"]["defaultValue"] == 0
    assert params["train_processes"]["parameterType"] == "NUMBER_INTEGER"

    task = all_tasks(spec)["dpo-train"]  # in a branch (defense) or the arms loop
    assert param(task["inputs"]["parameters"]["processes"]) == "train_processes"


def test_resources_settings_give_the_per_stage_counts():
    from optimus_lib.config import Resources

    args = Resources(accelerator_count=1, train_accelerator_count=8).pipeline_arguments()
    assert args["accelerator_count"] == 1 and args["train_accelerator_count"] == 8
    assert args["train_processes"] == 0


def test_training_backend_is_a_parameter_and_trainjob_is_a_light_controller(defense):
    """``train_backend`` picks the branch: ``trainjob`` runs train_job (light image, no
    accelerator, the cache PVC, retried), anything else dpo_train on the GPU pool; the
    adapter evaluate and register get is whichever ran (dsl.OneOf)."""
    spec, k8s = defense
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["train_backend"]["defaultValue"] == "local"
    assert params["train_backend"]["parameterType"] == "STRING"
    assert params["trainjob_settings"]["parameterType"] == "STRUCT"
    tasks = all_tasks(spec)
    conditions = {
        t["taskInfo"]["name"]: t["triggerPolicy"]["condition"]
        for t in tasks.values()
        if t["taskInfo"]["name"] in ("train-on-trainjob", "train-in-task")
    }
    assert conditions == {
        "train-on-trainjob": "inputs.parameter_values['pipelinechannel--train_backend'] == "
        "'trainjob'",
        "train-in-task": "!(inputs.parameter_values['pipelinechannel--train_backend'] == "
        "'trainjob')",
    }
    job = tasks["train-job"]["inputs"]["parameters"]
    assert param(job["trainjob"]) == "trainjob_settings"
    assert param(job["settings"]) == "train_settings"
    container = spec["deploymentSpec"]["executors"]["exec-train-job"]["container"]
    assert "accelerator" not in container["resources"]
    from components.images import IMAGES

    assert container["image"] == IMAGES["light"]
    (pvc,) = k8s["exec-train-job"]["pvcMount"]
    assert pvc["mountPath"] == "/optimus-cache" and param(pvc["pvcNameParameter"]) == "cache_pvc"
    assert "nodeSelector" not in k8s["exec-train-job"]  # it runs anywhere
    evaluate = tasks["evaluate"]["inputs"]["artifacts"]["adapter"]
    assert "oneof" in json.dumps(evaluate)


def test_trainjob_settings_come_from_the_gpu_placement():
    from optimus_lib.config import PipelineSettings
    from optimus_lib.errors import OptimusError
    from optimus_lib.experiment import ExperimentConfig

    res = {"train_accelerator_count": 8, "train_backend": "trainjob",
           "node_selector": {"pool": "h100"}, "trainjob": {"num_nodes": 4}}  # fmt: skip
    batch = {"sft": {"batch_size": 32}, "dpo": {"batch_size": 32}}  # splits over 4 x 8 ranks
    args = PipelineSettings.model_validate({"resources": res, "train": batch}).pipeline_arguments()
    assert args["train_backend"] == "trainjob"
    job = args["trainjob_settings"]
    assert job["num_nodes"] == 4 and job["accelerators_per_node"] == 8
    assert job["node_selector"] == {"pool": "h100"}
    with pytest.raises(OptimusError, match="TrainJobSettings: num_nodes"):
        bad = {**res, "trainjob": {"num_nodes": 0}}
        PipelineSettings.model_validate({"resources": bad, "train": batch}).pipeline_arguments()
    # the defaults (4 x 1) do not split over 32 ranks: refused with the settings, not later
    with pytest.raises(ValueError, match="does not split over 32 processes"):
        PipelineSettings.model_validate({"resources": res})
    exp = ExperimentConfig.model_validate({"base": {"resources": res, "train": batch}})
    with pytest.raises(OptimusError, match="trainjob is the defense pipeline's"):
        exp.pipeline_arguments()
