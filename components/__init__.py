"""Optimus as Kubeflow Pipelines components: one folder per component.

Each ``<name>/component.py`` defines one lightweight component whose body imports
``optimus_lib`` and calls one stage function; ``<name>/component.yaml`` is the compiled
component, loadable by any pipeline with ``kfp.components.load_component_from_file``.
Image names come from :mod:`components.images`.

Importing this package imports nothing else (``make build-images`` reads
``components.images`` without kfp); :func:`all_components` imports kfp, never optimus_lib.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

# The stage components, in pipeline order; each is the folder, the module's function and
# (dashed) the KFP name.
STAGES = (
    "prepare_data",
    "classify",
    "heal",
    "dpo_train",
    "train_job",
    "evaluate",
    "register",
    "record_rejection",
)
# The experiment pipeline's own fan-in/out steps, under components/experiment/.
EXPERIMENT_ONLY = ("seed_bank", "arm_inputs", "compare_arms")
# The sharding steps around classify and heal, under components/shards/.
SHARDS = ("split", "merge_scored", "merge_healed")
NAMES = STAGES + SHARDS + EXPERIMENT_ONLY


def folder(name: str) -> Path:
    """A component's folder: ``components/<name>``, ``components/shards/<name>`` or
    ``components/experiment/<name>``."""
    if name in EXPERIMENT_ONLY:
        return HERE / "experiment" / name
    return HERE / "shards" / name if name in SHARDS else HERE / name


def module_name(name: str) -> str:
    """The dotted module that defines a component."""
    return ".".join(folder(name).relative_to(HERE.parent).parts) + ".component"


def all_components() -> dict[str, Any]:
    """``{name: component}`` for every component, in pipeline order."""
    return {n: getattr(import_module(module_name(n)), n) for n in NAMES}


def yaml_path(name: str) -> Path:
    """Where a component's compiled YAML is committed."""
    return folder(name) / "component.yaml"


__all__ = [
    "EXPERIMENT_ONLY",
    "NAMES",
    "SHARDS",
    "STAGES",
    "all_components",
    "folder",
    "module_name",
    "yaml_path",
]
