"""The base of every settings model, and one-line validation errors.

Each stage owns a pydantic settings model (``optimus_lib.stages.*``). Settings cross the
KFP boundary as primitives or a JSON dict and are validated by the same model inside the
component, so a typo or a bad value fails the task with one line naming the field,
exactly as it fails ``optimus`` on the command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from optimus_lib.errors import OptimusError

BUNDLED_MODEL = "smollm2-135m-instruct"


def _model_spec(spec: str) -> str:
    from optimus_lib.models.specs import check_model_spec

    try:
        return check_model_spec(spec)
    except OptimusError as exc:
        raise ValueError(str(exc)) from None


def _detector(name: str) -> str:
    from optimus_lib.detect.base import check_detector_name

    try:
        return check_detector_name(name)
    except OptimusError as exc:
        raise ValueError(str(exc)) from None


# A detector expression (``stack``, ``a+b``, ``max(a,b)``), its names checked when the
# settings are read: a typo fails before any task runs.
DetectorName = Annotated[str, AfterValidator(_detector)]

# A model spec, checked for its form when the settings are read (no loading): the
# bundled name, a folder, or a hub id pinned to a revision. An unpinned hub id is refused
# here, before any pipeline task runs, not when the stage that loads it starts.
ModelSpec = Annotated[str, AfterValidator(_model_spec)]

T = TypeVar("T", bound=BaseModel)


class Strict(BaseModel):
    """Unknown keys are errors (``extra="forbid"``): a misspelt setting must not be ignored."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def one_line(exc: ValidationError, prefix: str = "") -> str:
    """The first validation error as ``field.path: message (and N more)``.

    A model-level check (no field location) already names its field in its message.
    """
    err = exc.errors()[0]
    msg = str(err["msg"]).removeprefix("Value error, ")
    where = ".".join(str(p) for p in err["loc"])
    where = ".".join(p for p in (prefix, where) if p)
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{where}: {msg}{more}" if where else f"{msg}{more}"


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


# kfp.local (2.17) cannot leave an ``Optional`` component parameter unset (its executor
# calls ``int(None)``), so a parameter that only a pipeline loop sets has a sentinel
# default instead: -1 for an int, "" for a string. This is the one place that reads it.
LOOP_UNSET: tuple[Any, ...] = (-1, "")


def loop_values(**values: Any) -> dict[str, Any]:
    """The component parameters a loop set (sentinels and None left out), to lay over the
    resolved stage settings: ``load_settings(Cls, settings, **loop_values(seed=seed))``."""
    return {
        k: v
        for k, v in values.items()
        if v is not None and not any(type(v) is type(u) and v == u for u in LOOP_UNSET)
    }


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
