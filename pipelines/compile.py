"""Compile every component to its ``component.yaml`` and every pipeline to
``pipelines/<name>.yaml``, and regenerate each component's README.md from its docstring
and metadata.yaml (``make compile``; CI recompiles and fails on a difference).

    python -m pipelines.compile              write the committed YAML
    python -m pipelines.compile --out DIR    write into DIR instead (same layout)
    python -m pipelines.compile --check      exit 1 when a committed YAML or README is out of date

The output depends only on the sources, the kfp version and the image names
(``components.images``: $OPTIMUS_REGISTRY, the library version, images.lock.json); the
``sdkVersion`` line names the kfp version and is ignored by ``--check``.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_SDK = re.compile(r"^sdkVersion: .*$", re.M)
# kfp (2.17) prints each parameter's default in the YAML's header comment from a protobuf
# map whose order changes from process to process; the YAML body itself is sorted.
_DEFAULT = re.compile(r"^(#    \w+: (?:dict|list) \[Default: )(.*)(\])$", re.M)


def _sorted(value: object) -> object:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def _stable_header(text: str) -> str:
    """The header comment with dict keys sorted (same text from every compile)."""
    return _DEFAULT.sub(lambda m: m[1] + repr(_sorted(ast.literal_eval(m[2]))) + m[3], text)


def targets() -> dict[str, object]:
    """``{relative path of the YAML: component or pipeline}``."""
    from components import all_components, yaml_path
    from pipelines.defense import defense_pipeline
    from pipelines.experiment import experiment_pipeline

    out: dict[str, object] = {
        yaml_path(name).relative_to(ROOT).as_posix(): comp
        for name, comp in all_components().items()
    }
    out["pipelines/defense.yaml"] = defense_pipeline
    out["pipelines/experiment.yaml"] = experiment_pipeline
    return out


def compile_all(out_dir: Path = ROOT) -> list[Path]:
    """Compile every target under ``out_dir``; returns the written paths."""
    from kfp import compiler

    written = []
    for rel, obj in targets().items():
        path = Path(out_dir) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        compiler.Compiler().compile(obj, str(path))
        path.write_text(_stable_header(path.read_text()))
        written.append(path)
    return written


def normalise(text: str) -> str:
    """YAML text without the line that names the kfp version."""
    return _SDK.sub("sdkVersion: <kfp>", text)


def stale(committed_root: Path = ROOT) -> dict[str, str]:
    """``{path: unified diff}`` of each committed YAML that differs from a fresh compile."""
    diffs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for path in compile_all(Path(tmp)):
            rel = path.relative_to(tmp).as_posix()
            committed = Path(committed_root) / rel
            old = normalise(committed.read_text()) if committed.is_file() else ""
            new = normalise(path.read_text())
            if old != new:
                diffs[rel] = "".join(
                    difflib.unified_diff(
                        old.splitlines(True), new.splitlines(True), f"a/{rel}", f"b/{rel}", n=2
                    )
                )
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.compile", description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT, help="write under this folder")
    parser.add_argument("--check", action="store_true", help="fail if committed YAML is stale")
    args = parser.parse_args(argv)
    from components import readme

    if args.check:
        diffs = stale(args.out)
        for rel, diff in diffs.items():
            print(diff or f"{rel}: missing", file=sys.stderr)
        readmes = readme.stale()
        for name in readmes:
            print(f"components: the README.md of {name} is stale", file=sys.stderr)
        if diffs or readmes:
            print(
                f"{len(diffs)} compiled YAML and {len(readmes)} README out of date: "
                "run `make compile`",
                file=sys.stderr,
            )
            return 1
        print("compiled YAML and component READMEs up to date")
        return 0
    for path in compile_all(args.out):
        print(f"wrote {path.relative_to(args.out) if path.is_relative_to(args.out) else path}")
    if args.out == ROOT:
        for path in readme.write_all():
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
