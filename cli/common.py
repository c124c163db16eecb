"""What every command group shares: the console, tables, and reading settings.

Every command reads one kind of settings file, the pipeline settings that ``optimus run``
and ``optimus submit`` take (``examples/*.yaml``), plus ``--set KEY=VALUE`` overrides,
validated once by the same pydantic models the components use. A stage command uses its
resolved section (the shared top-level values filled in); its ``--set`` keys are relative
to that section and its few flags override fields of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from optimus_lib.errors import OptimusError

out = Console(width=max(110, Console().width))

SettingsOpt = Annotated[
    Path | None,
    typer.Option(
        "--settings",
        "-s",
        help="Pipeline settings YAML (as `optimus run` reads, e.g. examples/defense.yaml); "
        "a stage command uses its section with the shared top-level values filled in.",
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="KEY=VALUE override of any setting (repeatable), VALUE read as YAML; for a "
        "stage command KEY is relative to its section (e.g. threshold=0.3, dpo.max_steps=9), "
        "for run/experiment/submit it is the file's path (e.g. train.dpo.max_steps=9).",
    ),
]


def apply_sets(raw: dict[str, Any], sets: list[str] | None) -> dict[str, Any]:
    """``raw`` with each ``KEY=VALUE`` of ``sets`` laid over it (dotted keys nest)."""
    import yaml

    out_ = dict(raw)
    for item in sets or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise OptimusError(f"--set {item!r}: expected KEY=VALUE")
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            raise OptimusError(f"--set {item!r}: VALUE is not valid YAML") from None
        node = out_
        *parents, leaf = key.strip().split(".")
        for p in parents:
            child = node.get(p)
            node[p] = dict(child) if isinstance(child, dict) else {}
            node = node[p]
        node[leaf] = parsed
    return out_


def run_settings(path: Path | None, sets: list[str] | None = None):
    """A validated PipelineSettings from an optional file plus ``--set`` overrides."""
    from pydantic import ValidationError

    from optimus_lib.config import PipelineSettings
    from optimus_lib.settings import load_yaml, one_line

    raw = apply_sets(load_yaml(path) if path else {}, sets)
    try:
        return PipelineSettings.model_validate(raw)
    except ValidationError as exc:
        raise OptimusError(f"{path or 'settings'}: {one_line(exc)}") from None


def stage_settings(
    section: str, path: Path | None, sets: list[str] | None = None, **flags: Any
) -> Any:
    """One stage's settings: the file's resolved ``section``, then ``--set`` overrides
    relative to it, then the command's flags (those given: not None)."""
    from optimus_lib.settings import load_settings

    resolved = run_settings(path).stage(section)
    raw = apply_sets(resolved.model_dump(), sets)
    return load_settings(type(resolved), raw, **flags)


def print_table(rows: list[list[str]], title: str = "") -> None:
    table = Table(title=title or None)
    for c in rows[0]:
        table.add_column(c, justify="left" if c == rows[0][0] else "right")
    for r in rows[1:]:
        table.add_row(*r)
    out.print(table)
