"""``optimus submit`` against a stand-in KFP v2beta1 API on 127.0.0.1 that records requests.

The real kfp.Client over real HTTP: health check, experiment lookup and creation, run
creation with the pipeline spec inline. The cluster check before it goes to the
Kubernetes stand-in (tests/standins.py).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from helpers import OPTIMUS_CLI
from standins import kfp_routes, kube_routes, kubeconfig, serve

from deploy import pipeline_spec, submit
from optimus_lib.config import load_pipeline_settings
from optimus_lib.errors import OptimusError

pytestmark = pytest.mark.integration  # real clients against stand-in servers on 127.0.0.1

ROOT = Path(__file__).resolve().parents[2]
DEFENSE = ROOT / "pipelines" / "defense.yaml"
ROOT_URI = "gs://optimus-runs/pipeline-root"
SETTINGS = f"""\
name: cluster-run
detector: wordlist
seed: 3
pipeline_root: {ROOT_URI}
train: {{sft: {{epochs: 2}}}}
registry: {{uri: gs://optimus-runs/registry, name: chat}}
resources: {{accelerator_count: 1, pvc_name: optimus-cache}}
"""


@pytest.fixture(autouse=True)
def _no_kfp_context(tmp_path, monkeypatch):
    """kfp.Client reads ~/.config/kfp/context.json; keep the user's out of the tests."""
    import kfp.client.client as kfp_client

    monkeypatch.setattr(kfp_client.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp.json"))


@pytest.fixture
def settings(tmp_path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(SETTINGS)
    return path


@pytest.fixture
def arguments(settings) -> dict:
    return load_pipeline_settings(settings).pipeline_arguments()


@pytest.fixture
def pinned(tmp_path) -> Path:
    text = DEFENSE.read_text()
    for image in set(pipeline_spec.images(pipeline_spec.load_pipeline(DEFENSE)[0]).values()):
        repo = image.split("@")[0].rsplit(":", 1)[0]
        text = text.replace(f"image: {image}\n", f"image: {repo}@sha256:{'ab' * 32}\n")
    path = tmp_path / "pinned.yaml"
    path.write_text(text)
    return path


def _runs(requests) -> list[dict]:
    return [r.body for r in requests if (r.method, r.path) == ("POST", "/apis/v2beta1/runs")]


def test_run_request_carries_parameters_service_account_and_root(arguments):
    with serve(kfp_routes()) as kfp:
        res = submit.submit(
            arguments, host=kfp.url, pipeline_root=ROOT_URI, experiment="optimus-e", check=False
        )
    (run,) = _runs(kfp.requests)
    assert run["service_account"] == "pipeline-runner"
    assert run["runtime_config"]["pipeline_root"] == ROOT_URI
    params = run["runtime_config"]["parameters"]
    assert params == json.loads(json.dumps(arguments))
    # every stage's settings, resolved on the client: the shared seed and detector in each
    assert params["train_settings"]["seed"] == 3 and params["data_settings"]["seed"] == 3
    assert params["classify_settings"]["detector"] == "wordlist"
    assert params["heal_settings"]["rescore_detector"] == "wordlist"
    assert params["train_settings"]["sft"]["epochs"] == 2
    assert params["register_settings"]["uri"] == "gs://optimus-runs/registry"
    assert params["cache_pvc"] == "optimus-cache"
    # the compiled pipeline goes inline, with its Kubernetes platform spec
    assert run["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "optimus-defense"
    k8s = run["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]
    assert "exec-dpo-train" in k8s["deploymentSpec"]["executors"]
    # the experiment was looked up by name, then created, and the run filed under it
    (created,) = [
        r.body for r in kfp.requests if (r.method, r.path) == ("POST", "/apis/v2beta1/experiments")
    ]
    assert created["display_name"] == "optimus-e"
    assert run["experiment_id"] and res["run_id"]
    assert res["url"].endswith(f"/#/runs/details/{res['run_id']}")


def test_cluster_check_runs_first_and_blocks(arguments, pinned, tmp_path):
    """With the check on, a cluster without the service account gets no run; a healthy
    one gets it."""
    with serve(kube_routes(service_account=None)) as kube, serve(kfp_routes()) as kfp:
        config = kubeconfig(tmp_path / "kc", kube.url)
        lines: list[str] = []
        with pytest.raises(OptimusError, match="cluster check: 1 problem"):
            submit.submit(
                arguments, host=kfp.url, pipeline_root=ROOT_URI, pipeline=pinned,
                kubeconfig=str(config), echo=lines.append,
            )  # fmt: skip
    assert any("pipeline-runner is missing" in ln for ln in lines)
    assert kfp.requests == []  # KFP was not even asked

    with serve(kube_routes()) as kube, serve(kfp_routes()) as kfp:
        config = kubeconfig(tmp_path / "kc", kube.url)
        submit.submit(
            arguments, host=kfp.url, pipeline_root=ROOT_URI, pipeline=pinned,
            kubeconfig=str(config), echo=lambda _: None,
        )  # fmt: skip
    assert kube.requests and len(_runs(kfp.requests)) == 1


def test_dry_run_prints_the_request_and_contacts_nothing(arguments, capsys):
    req = submit.submit(arguments, pipeline_root=ROOT_URI, dry_run=True)  # no host at all
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(req))
    assert printed["service_account"] == "pipeline-runner"
    assert printed["runtime_config"] == {
        "pipeline_root": ROOT_URI,
        "parameters": json.loads(json.dumps(arguments)),
    }
    assert printed["pipeline_spec"]["name"] == "optimus-defense"
    assert len(printed["pipeline_spec"]["sha256"]) == 64


@pytest.mark.parametrize(
    ("root", "message"),
    [
        ("", "give --pipeline-root gs://"),
        ("/tmp/runs", "needs a gs://BUCKET"),
        ("s3://bucket/x", "needs a gs://BUCKET"),
        ("gs://", "needs a gs://BUCKET"),
    ],
)
def test_pipeline_root_must_be_gs(arguments, root, message):
    with pytest.raises(OptimusError, match=message):
        submit.submit(arguments, pipeline_root=root, dry_run=True)


def test_unknown_missing_and_mistyped_parameters(arguments, tmp_path):
    with pytest.raises(OptimusError, match="unknown pipeline parameter.*n_gpus"):
        submit.submit({**arguments, "n_gpus": 2}, pipeline_root=ROOT_URI, dry_run=True)
    with pytest.raises(OptimusError, match="pipeline parameter accelerator_count: expected an"):
        submit.submit(
            {**arguments, "accelerator_count": "three"}, pipeline_root=ROOT_URI, dry_run=True
        )
    # a pipeline whose hf_token_secret has no default: the settings never set it
    import yaml

    docs = list(yaml.safe_load_all(DEFENSE.read_text()))
    param = docs[0]["root"]["inputDefinitions"]["parameters"]["hf_token_secret"]
    del param["defaultValue"], param["isOptional"]
    strict = tmp_path / "strict.yaml"
    strict.write_text(yaml.safe_dump_all(docs))
    with pytest.raises(OptimusError, match="missing pipeline parameter.*hf_token_secret"):
        submit.submit(arguments, pipeline_root=ROOT_URI, pipeline=strict, dry_run=True)


def test_unreachable_host_is_one_line(arguments):
    with serve({}) as kfp:  # a free port, closed again
        url = kfp.url
    with pytest.raises(
        OptimusError, match=f"cannot reach Kubeflow Pipelines at {url}: Connection refused"
    ):
        submit.submit(arguments, host=url, pipeline_root=ROOT_URI, check=False)


def test_multi_user_needs_a_namespace(arguments):
    with serve(kfp_routes(multi_user=True)) as kfp:
        with pytest.raises(OptimusError, match="multi-user: give --namespace"):
            submit.submit(arguments, host=kfp.url, pipeline_root=ROOT_URI, check=False)
        submit.submit(
            arguments, host=kfp.url, pipeline_root=ROOT_URI, namespace="team-a", check=False
        )
    (created,) = [
        r.body for r in kfp.requests if (r.method, r.path) == ("POST", "/apis/v2beta1/experiments")
    ]
    assert created["namespace"] == "team-a"
    assert len(_runs(kfp.requests)) == 1


def test_server_refusal_is_one_line(arguments):
    routes = kfp_routes()
    routes[("POST", "/apis/v2beta1/runs")] = (
        400,
        {"error": "Invalid input", "code": 3, "message": "Invalid input error: bad pipeline spec"},
    )
    with (
        serve(routes) as kfp,
        pytest.raises(OptimusError, match="HTTP 400: Invalid input error: bad pipeline spec"),
    ):
        submit.submit(arguments, host=kfp.url, pipeline_root=ROOT_URI, check=False)


def _cli(args: list[str], home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(home), "NO_COLOR": "1", "COLUMNS": "200"}
    env.pop("KFP_HOST", None)
    return subprocess.run(
        [*OPTIMUS_CLI, "submit", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_cli_submit_dry_run_and_errors(settings, tmp_path):
    """Through the console: a run is created (exit 0, one line with its URL); a bad
    settings value, a non-gs:// root and no host are one line each with exit 2."""
    with serve(kfp_routes()) as kfp:
        ok = _cli(
            [str(settings), "--host", kfp.url, "--skip-check", "--experiment", "e1"], tmp_path
        )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("submitted run ") and "in experiment e1" in ok.stdout
    assert len(ok.stdout.splitlines()) == 1
    (run,) = _runs(kfp.requests)
    assert (
        run["display_name"].startswith("cluster-run ")
        and run["service_account"] == "pipeline-runner"
    )

    bad = tmp_path / "bad.yaml"
    bad.write_text(SETTINGS.replace("seed: 3", "seed: many"))
    for args, needle in [
        ([str(bad), "--dry-run"], "seed"),
        ([str(settings), "--dry-run", "--pipeline-root", "/data/runs"], "gs://BUCKET"),
        ([str(settings), "--skip-check"], "no Kubeflow Pipelines host"),
    ]:
        r = _cli(args, tmp_path)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("optimus: error: "), r.stderr
        assert needle in lines[0]
        assert "Traceback" not in r.stdout + r.stderr


def test_compile_fresh_sends_a_freshly_compiled_spec(arguments):
    """--compile: the run carries a pipeline compiled now, same name and parameters."""
    with serve(kfp_routes()) as kfp:
        submit.submit(
            arguments, host=kfp.url, pipeline_root=ROOT_URI, compile_fresh=True, check=False
        )
    (run,) = _runs(kfp.requests)
    spec = run["pipeline_spec"]["pipeline_spec"]
    assert spec["pipelineInfo"]["name"] == "optimus-defense"
    committed = pipeline_spec.parameter_specs(pipeline_spec.load_pipeline(DEFENSE)[0])
    assert set(spec["root"]["inputDefinitions"]["parameters"]) == set(committed)
