"""The base of every settings model, and one-line validation errors.

Each stage owns a pydantic settings model (``optimus_lib.stages.*``). Settings cross the
KFP boundary as primitives or a JSON dict and are validated by the same model inside the
component, so a typo or a bad value fails the task with one line naming the field,
exactly as it fails ``optimus`` on the command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from optimus_lib.errors import OptimusError

BUNDLED_MODEL = "smollm2-135m-instruct"

T = TypeVar("T", bound=BaseModel)


class Strict(BaseModel):
    """Unknown keys are errors (``extra="forbid"``): a misspelt setting must not be ignored."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def one_line(exc: ValidationError, prefix: str = "") -> str:
    """The first validation error as ``field.path: message (and N more)``."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "settings"
    if prefix:
        where = f"{prefix}.{where}"
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{where}: {err['msg']}{more}"


def load_settings(cls: type[T], data: dict[str, Any] | None = None, **explicit: Any) -> T:
    """Validate ``data`` with ``explicit`` values on top; a problem is one OptimusError line.

    ``explicit`` values that are ``None`` are left out, so a component parameter that was
    not set does not override the dict.
    """
    raw = dict(data or {})
    raw.update({k: v for k, v in explicit.items() if v is not None})
    try:
        return cls.model_validate(raw)
    except ValidationError as exc:
        raise OptimusError(f"{cls.__name__}: {one_line(exc)}") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a file; a missing file or bad YAML is one OptimusError line."""
    p = Path(path)
    if not p.is_file():
        raise OptimusError(f"{p}: no such settings file")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise OptimusError(f"{p}{line}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise OptimusError(f"{p}: the settings must be a YAML mapping")
    return raw
