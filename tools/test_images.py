"""``make test-images``: the whole defense pipeline inside the built images, network off.

Runs ``pipelines.defense`` (built for kfp.local) under
``kfp.local.DockerRunner(network_mode="none")``: every
task is a container of the image its component names (``components/images.py``), as the
image's non-root user, with only the pipeline root mounted. The model is a tiny random
Llama built (inside the torch image, from the baked bundled model's tokenizer) under the
pipeline root, so a run takes about a minute on two cores. Two runs: one whose gates pass
(register runs in the light image) and one whose gates fail (record_rejection runs).

kfp.local's DockerRunner can report success for a task that failed (its container is
removed before its exit code is read), so every check here is on the files the tasks
wrote: each task's executor_output.json and outputs, the registry entry and its lineage
(the image and git sha the light image recorded), the rejection record, and that the
files belong to the images' user (uid 1000), not root.

    python tools/test_images.py [--keep] [--compare-subprocess]
        needs a docker daemon (DOCKER_HOST) and the `docker` Python package; exit 0 when
        all pass. --compare-subprocess then runs the same two pipelines, same tiny model,
        under kfp.local's SubprocessRunner in this interpreter and prints the per-task
        overhead of running each task in its image.
"""

# No ``from __future__ import annotations``: kfp reads annotations as types.
import argparse
import json
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

IMAGE_UID = 1000
TINY_TRAIN = {"epochs": 1, "batch_size": 4, "max_length": 64, "gradient_checkpointing": False}
TINY_LORA = {"r": 4, "alpha": 4}
# Run inside the torch image: a 2-layer random Llama with the baked model's tokenizer
# (the same recipe as tests/conftest.py's tiny_model_dir).
TINY_MODEL = """
import sys, torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
from optimus_lib.models.specs import bundled_path
tok = AutoTokenizer.from_pretrained(bundled_path())
cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=1024, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
    tie_word_embeddings=True)
torch.manual_seed(0)
LlamaForCausalLM(cfg).save_pretrained(sys.argv[1], safe_serialization=True)
tok.save_pretrained(sys.argv[1])
"""


class Failed(Exception):
    """A check failed; main() prints every one."""


def check(failures: list[str], ok: bool, what: str) -> None:
    print(("  ok    " if ok else "  FAIL  ") + what)
    if not ok:
        failures.append(what)


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def executor_output(run_dir: Path, task: str) -> dict:
    return read_json(run_dir / task / "executor_output.json")


def meta(run_dir: Path, task: str, output: str) -> dict:
    arts = executor_output(run_dir, task).get("artifacts", {}).get(output, {})
    items = arts.get("artifacts", [])
    return dict(items[0].get("metadata", {})) if items else {}


def writable(path: Path) -> Path:
    """A folder the images' user can write: the tasks create their run folders in it."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)
    return path


def docker_client():
    try:
        import docker
    except ImportError:
        raise Failed("the 'docker' Python package is missing: pip install docker") from None
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any connection error means no daemon
        raise Failed(f"no docker daemon answers ({type(exc).__name__}); set DOCKER_HOST") from None
    return client


def image_labels(client, images: dict[str, str]) -> dict[str, dict]:
    labels = {}
    for family, name in images.items():
        try:
            labels[family] = client.images.get(name).labels or {}
        except Exception:  # noqa: BLE001 - docker.errors.ImageNotFound and friends
            raise Failed(f"{name} is not built here: make build-images first") from None
    return labels


def build_tiny_model(client, image: str, root: Path) -> Path:
    out = root / "tiny-model"
    logs = client.containers.run(
        image,
        ["python", "-c", TINY_MODEL, str(out)],
        volumes={str(root): {"bind": str(root), "mode": "rw"}},
        network_mode="none",
        remove=True,
        stderr=True,
    )
    if not (out / "model.safetensors").is_file():
        raise Failed(f"the tiny model was not written: {logs.decode()[-500:]}")
    return out


def pipeline_args(root: Path, model: Path, registry: dict, **evaluate) -> dict:
    """The defense pipeline's parameters, resolved as ``optimus run`` resolves them."""
    from optimus_lib.config import PipelineSettings

    cfg = PipelineSettings.model_validate(
        {
            "model": str(model),
            "judge_model": str(model),
            "detector": "wordlist",
            "method": "optimus",
            "registry": {"uri": str(root / "registry"), **registry},
            "data": {"n_train": 12, "n_eval_toxic": 4, "n_eval_benign": 4},
            "heal": {"max_new_tokens": 8, "retries": 0},
            "train": {
                "sft": {**TINY_TRAIN, "lora": TINY_LORA},
                "dpo": {**TINY_TRAIN, "lora": TINY_LORA},
                "checkpoint_root": str(root / "checkpoints"),
            },
            "evaluate": {"max_new_tokens": 8, "similarity": False, **evaluate},
        }
    )
    # the pipeline's default cache is the cluster's PVC mount; in a container, the
    # image's own cache folder (under the non-root user's home)
    return {**cfg.pipeline_arguments(), "cache_dir": ""}


def run_pipeline(kfp_root: Path, args: dict) -> tuple[Path | None, str]:
    """Run the defense pipeline; return its new run folder (None if none) and any error."""
    from pipelines.defense import PIPELINE_NAME, build_defense_pipeline

    defense_pipeline = build_defense_pipeline(cluster=False)

    before = set(kfp_root.glob(f"{PIPELINE_NAME}-*"))
    error = ""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*have no effect in the current local")
        try:
            defense_pipeline(**args)
        except RuntimeError as exc:  # a task the runner saw fail
            error = str(exc).splitlines()[0]
    runs = sorted(set(kfp_root.glob(f"{PIPELINE_NAME}-*")) - before)
    return (runs[-1] if runs else None), error


def check_common(failures: list[str], run_dir: Path) -> dict:
    """What both runs share: prepare_data -> classify -> heal -> dpo_train -> evaluate.

    Returns the evaluation JSON, for the run's own gate checks."""
    # classify and heal run sharded (split -> one task per shard -> merge): their
    # merged outputs are the merge tasks'
    for task in ("prepare-data", "merge-scored", "merge-healed", "dpo-train", "evaluate"):
        check(failures, bool(executor_output(run_dir, task)), f"{task}: executor_output.json")
    for task in ("classify", "heal"):
        shards = list(run_dir.glob(f"for-loop-*/{task}/executor_output.json"))
        check(failures, bool(shards), f"{task}: {len(shards)} shard task(s) ran")
    train = read_jsonl(run_dir / "prepare-data" / "train")
    check(failures, len(train) == 12, f"prepare-data: 12 training dialogs (got {len(train)})")
    for name in ("eval_toxic", "eval_benign"):
        rows = read_jsonl(run_dir / "prepare-data" / name)
        check(failures, len(rows) == 4, f"prepare-data: {name} has 4 rows (got {len(rows)})")
    scored = read_jsonl(run_dir / "merge-scored" / "scored")
    check(
        failures,
        [r.get("id") for r in scored] == [r.get("id") for r in train] and bool(scored),
        "classify: every training dialog scored, in order",
    )
    check(
        failures,
        all("toxicity" in r and isinstance(r.get("flagged"), bool) for r in scored),
        "classify: toxicity and flagged on every row",
    )
    sft = read_jsonl(run_dir / "merge-healed" / "sft_data")
    check(failures, len(sft) == len(train), f"heal: sft_data has {len(train)} rows")
    flagged = sum(bool(r.get("flagged")) for r in scored)
    prefs = read_jsonl(run_dir / "merge-healed" / "preferences")
    check(failures, len(prefs) == flagged, f"heal: one preference pair per flagged row ({flagged})")
    adapter = run_dir / "dpo-train" / "adapter"
    check(
        failures,
        (adapter / "adapter_config.json").is_file() and any(adapter.glob("*.safetensors")),
        "dpo-train: adapter_config.json and safetensors weights",
    )
    ev = read_json(run_dir / "evaluate" / "evaluation")
    check(failures, "gate" in ev and "metrics" in ev, "evaluate: evaluation JSON with gate")
    report = run_dir / "evaluate" / "report"
    check(
        failures,
        report.is_file() and report.read_text()[:200].lower().lstrip().startswith("<!doctype"),
        "evaluate: HTML report",
    )
    owners = {p.stat().st_uid for p in (run_dir / "dpo-train").rglob("*")}
    owners |= {p.stat().st_uid for p in (run_dir / "prepare-data").rglob("*")}
    check(failures, owners == {IMAGE_UID}, f"outputs written by uid {IMAGE_UID} (got {owners})")
    return ev


def task_count(run_dir: Path) -> int:
    """How many tasks of a run wrote their executor output."""
    return len(list(run_dir.glob("*/executor_output.json")))


def run_and_check(
    failures: list[str], root: Path, args: dict, label: str, timings: dict | None = None
) -> tuple[Path, dict]:
    """Run the pipeline once, timed, with the checks every run shares (see check_common);
    return its run folder and evaluation JSON."""
    t = time.monotonic()
    run_dir, error = run_pipeline(root, args)
    seconds = time.monotonic() - t
    print(f"==> {label} in {seconds:.0f} s{': ' + error if error else ''}")
    if timings is not None and run_dir is not None:
        timings[label] = (seconds, task_count(run_dir))
    name = label.split(" (")[0]
    check(failures, not error, f"{name}: the runner saw no failed task")
    if run_dir is None:
        raise Failed(f"{name} left no run folder")
    return run_dir, check_common(failures, run_dir)


def compare_subprocess(root: Path, model: Path, docker_timings: dict) -> None:
    """The same two runs under SubprocessRunner (this interpreter, no containers), same
    tiny model; prints each run's wall time and the images' overhead per task."""
    from kfp import local

    sub = writable(root / "subprocess")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(sub))
    runs = {
        "run 1 (gates pass)": pipeline_args(
            sub,
            model,
            {"name": "tiny-chat", "version": "v1"},
            gates={"max_over_refusal": 1.0, "max_rtr_toxic": 1.0},
        ),
        "run 2 (gates fail)": pipeline_args(
            sub,
            model,
            {"name": "tiny-rejected"},
            evaluator="oracle",
            compare_base=False,
            gates={"max_rtr_toxic": 0.5},
        ),
    }
    print("==> the same runs under SubprocessRunner")
    rows = []
    for label, args in runs.items():
        t = time.monotonic()
        run_dir, error = run_pipeline(sub, args)
        seconds = time.monotonic() - t
        if error or run_dir is None:
            raise Failed(f"SubprocessRunner {label}: {error or 'no run folder'}")
        docker_s, n = docker_timings[label]
        rows.append((label, docker_s, seconds, n))
    print(
        f"  {'run':<20} {'DockerRunner':>12} {'Subprocess':>11} {'tasks':>5} {'overhead/task':>14}"
    )
    for label, docker_s, sub_s, n in rows:
        print(
            f"  {label:<20} {docker_s:>10.1f} s {sub_s:>9.1f} s {n:>5} "
            f"{(docker_s - sub_s) / n:>12.1f} s"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/test_images.py", description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep the run folder")
    parser.add_argument(
        "--compare-subprocess",
        action="store_true",
        help="also time the same runs under SubprocessRunner (per-task overhead of the images)",
    )
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    failures: list[str] = []
    timings: dict[str, tuple[float, int]] = {}
    root = Path(tempfile.mkdtemp(prefix="optimus-test-images-")).resolve()
    try:
        from components.images import IMAGES

        client = docker_client()
        labels = image_labels(client, IMAGES)
        # The tasks run as uid 1000 and create their folders under the pipeline root.
        writable(root)
        print(f"==> images: {IMAGES['light']}, {IMAGES['torch']}; work folder {root}")
        t = time.monotonic()
        model = build_tiny_model(client, IMAGES["torch"], root)
        print(f"==> tiny model built in the torch image ({time.monotonic() - t:.0f} s)")

        from kfp import local

        # --- gates pass: register (light image) --------------------------------------
        # DockerRunner mounts only the pipeline root into a task's container: the model,
        # the registry and the checkpoints live under it too.
        local.init(runner=local.DockerRunner(network_mode="none"), pipeline_root=str(root))
        passed = pipeline_args(
            root,
            model,
            {"name": "tiny-chat", "version": "v1"},
            gates={"max_over_refusal": 1.0, "max_rtr_toxic": 1.0},
        )
        run_dir, ev = run_and_check(failures, root, passed, "run 1 (gates pass)", timings)
        check(failures, ev.get("gate", {}).get("passed") is True, "run 1: gates passed")
        check(failures, not (run_dir / "record-rejection").exists(), "run 1: no rejection task")
        entry = root / "registry" / "models" / "tiny-chat" / "v1"
        check(failures, (entry / "MANIFEST.json").is_file(), "register: MANIFEST.json written")
        check(failures, (entry / "adapter").is_dir(), "register: adapter in the registry")
        lineage = read_json(entry / "lineage.json")
        check(
            failures,
            lineage.get("image") == IMAGES["light"],
            f"register: lineage image is the light image ({lineage.get('image')!r})",
        )
        revision = labels["light"].get("org.opencontainers.image.revision")
        check(
            failures,
            bool(revision) and lineage.get("git_sha") == revision,
            f"register: lineage git_sha = the image's revision label ({lineage.get('git_sha')!r})",
        )
        check(
            failures,
            meta(run_dir, "register", "registered").get("version") == "v1",
            "register: registered v1 (executor metadata)",
        )

        # --- gates fail: record_rejection (light image) ------------------------------
        failed = pipeline_args(
            root,
            model,
            {"name": "tiny-rejected"},
            evaluator="oracle",
            compare_base=False,
            gates={"max_rtr_toxic": 0.5},
        )
        run_dir, ev = run_and_check(failures, root, failed, "run 2 (gates fail)", timings)
        check(failures, ev.get("gate", {}).get("passed") is False, "run 2: gates failed")
        check(failures, not (run_dir / "register").exists(), "run 2: register did not run")
        rejected = sorted(
            (root / "registry" / "rejected" / "tiny-rejected").glob("*/rejection.json")
        )
        record = read_json(rejected[0]) if rejected else {}
        check(
            failures,
            record.get("gate", {}).get("passed") is False,
            "record-rejection: rejection.json with the failed gate",
        )
        check(
            failures,
            not (root / "registry" / "models" / "tiny-rejected").exists(),
            "run 2: nothing registered",
        )
        if args.compare_subprocess and not failures:
            compare_subprocess(root, model, timings)
    except Failed as exc:
        failures.append(str(exc))
        print(f"tools/test_images.py: error: {exc}", file=sys.stderr)
    elapsed = time.monotonic() - t0
    if failures:
        print(f"==> test-images FAILED: {len(failures)} check(s) in {elapsed:.0f} s; kept {root}")
        for f in failures:
            print(f"  - {f}")
        return 1
    print(f"==> test-images passed in {elapsed:.0f} s")
    if args.keep:
        print(f"==> kept {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
