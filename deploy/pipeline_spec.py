"""What a compiled pipeline asks of a cluster, read from its YAML (no cluster needed).

The pipeline spec and its Kubernetes platform spec (kfp-kubernetes settings) of a
compiled pipeline (``pipelines/defense.yaml`` by default), its parameters, and each GPU
task's accelerator, node selector, tolerations, CPU and memory requests and PVCs,
resolved for a run's parameter values. ``optimus cluster check`` compares them with the
cluster (:mod:`deploy.cluster`); ``optimus submit`` checks a run's parameters against
them (:mod:`deploy.submit`). Reading a pipeline needs PyYAML only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PIPELINE = ROOT / "pipelines" / "defense.yaml"
_PLACEHOLDER = re.compile(r"^\{\{\$\.inputs\.parameters\['([^']+)'\]\}\}$")


def load_pipeline(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pipeline spec, Kubernetes platform spec) of a compiled pipeline YAML."""
    import yaml

    from optimus_lib.errors import OptimusError

    path = Path(path)
    try:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 7x faster here
        docs = [d for d in yaml.load_all(path.read_text(encoding="utf-8"), Loader=loader) if d]
    except OSError as exc:
        raise OptimusError(f"{path}: cannot read the pipeline ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise OptimusError(f"{path}: not YAML ({str(exc).splitlines()[0]})") from None
    if not docs or not isinstance(docs[0], dict) or "root" not in docs[0]:
        raise OptimusError(f"{path}: not a compiled KFP pipeline (no 'root')")
    platform = docs[1] if len(docs) > 1 and isinstance(docs[1], dict) else {}
    return docs[0], platform.get("platforms", {}).get("kubernetes", {})


def parameter_specs(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The pipeline's parameters: ``{name: {parameterType, defaultValue?, isOptional?}}``."""
    return dict(spec["root"].get("inputDefinitions", {}).get("parameters", {}))


def parameter_values(spec: dict[str, Any], arguments: dict[str, Any] | None) -> dict[str, Any]:
    """Every parameter's value for a run: its default, replaced by ``arguments``."""
    values = {n: p["defaultValue"] for n, p in parameter_specs(spec).items() if "defaultValue" in p}
    values.update({k: v for k, v in (arguments or {}).items() if v is not None})
    return values


@dataclass
class GpuTask:
    """What one GPU task asks of a node."""

    task: str
    resource: str  # e.g. nvidia.com/gpu
    count: int
    node_selector: dict[str, str]
    tolerations: list[dict[str, Any]]
    cpu: Decimal  # request, cores
    memory: Decimal  # request, bytes
    pvcs: list[str] = field(default_factory=list)


_UNKNOWN = object()  # a value set at run time (another task's output)


def _resolve_input(binding: dict[str, Any], scope: dict[str, Any]) -> Any:
    if "componentInputParameter" in binding:
        return scope.get(binding["componentInputParameter"], _UNKNOWN)
    if "runtimeValue" in binding:
        const = binding["runtimeValue"].get("constant")
        m = _PLACEHOLDER.match(const) if isinstance(const, str) else None
        return scope.get(m.group(1), _UNKNOWN) if m else const
    return _UNKNOWN  # taskOutputParameter and the like


def _fill(value: Any, task_inputs: dict[str, Any]) -> Any:
    """A container field that may be ``{{$.inputs.parameters['x']}}``."""
    m = _PLACEHOLDER.match(value) if isinstance(value, str) else None
    return task_inputs.get(m.group(1), _UNKNOWN) if m else value


def _from_param(ref: Any, scope: dict[str, Any]) -> Any:
    """A platform-spec value: ``{componentInputParameter: name}`` (a parameter of the
    enclosing DAG), ``{runtimeValue: {constant: ...}}``, or the value itself."""
    if isinstance(ref, dict) and "componentInputParameter" in ref:
        return scope.get(ref["componentInputParameter"], _UNKNOWN)
    if isinstance(ref, dict) and "runtimeValue" in ref:
        return ref["runtimeValue"].get("constant", _UNKNOWN)
    return ref


def _walk(spec: dict[str, Any], dag: dict[str, Any], scope: dict[str, Any], out: list) -> None:
    """Every container task under ``dag`` with its inputs resolved: (task, executor label,
    the task's inputs, the enclosing DAG's inputs)."""
    for name, task in dag.get("tasks", {}).items():
        comp = spec["components"][task["componentRef"]["name"]]
        params = task.get("inputs", {}).get("parameters", {})
        # pipelinechannel-- inputs first: runtimeValue constants refer to them
        inputs = {k: _resolve_input(b, scope) for k, b in params.items() if "runtimeValue" not in b}
        for k, b in params.items():
            if "runtimeValue" in b:
                inputs[k] = _resolve_input(b, {**scope, **inputs})
        if "dag" in comp:
            _walk(spec, comp["dag"], inputs, out)
        elif "executorLabel" in comp:
            out.append((name, comp["executorLabel"], inputs, scope))


def executors(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{executor label: container spec}``."""
    return {
        label: e["container"]
        for label, e in spec.get("deploymentSpec", {}).get("executors", {}).items()
        if "container" in e
    }


def images(spec: dict[str, Any]) -> dict[str, str]:
    """``{executor label: image}`` of every container executor."""
    return {label: c.get("image", "") for label, c in executors(spec).items()}


def quantity(text: Any) -> Decimal:
    """A Kubernetes quantity (``500m``, ``32G``, ``28Gi``, ``1e3``) as a number."""
    s = str(text).strip()
    suffixes = {
        "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
        "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
        "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    }  # fmt: skip
    for suffix in sorted(suffixes, key=len, reverse=True):
        if s.endswith(suffix) and s[: -len(suffix)]:
            return Decimal(s[: -len(suffix)]) * Decimal(suffixes[suffix])
    return Decimal(s)


def _as_list(value: Any) -> list[Any]:
    if value is _UNKNOWN or value is None:
        return []
    return value if isinstance(value, list) else [value]


def gpu_tasks(
    spec: dict[str, Any], platform: dict[str, Any], arguments: dict[str, Any] | None = None
) -> list[GpuTask]:
    """The tasks that request an accelerator, with their node selector, tolerations and
    CPU / memory requests resolved for a run with ``arguments``."""
    found: list = []
    _walk(spec, spec["root"]["dag"], parameter_values(spec, arguments), found)
    containers = executors(spec)
    k8s = platform.get("deploymentSpec", {}).get("executors", {})
    out = []
    for task, label, inputs, scope in found:
        res = containers.get(label, {}).get("resources", {})
        acc = res.get("accelerator")
        if not acc:
            continue
        resource = _fill(acc.get("resourceType", acc.get("type", "")), inputs)
        count = _fill(acc.get("resourceCount", acc.get("count", 1)), inputs)
        conf = k8s.get(label, {})
        selector: dict[str, str] = {}
        ns = conf.get("nodeSelector", {})
        if "nodeSelectorJson" in ns:
            got = _from_param(ns["nodeSelectorJson"], scope)
            selector.update(got if isinstance(got, dict) else {})
        selector.update(ns.get("labels", {}))
        tolerations: list[dict[str, Any]] = []
        for t in conf.get("tolerations", []):
            if "tolerationJson" in t:
                tolerations += _as_list(_from_param(t["tolerationJson"], scope))
            else:
                tolerations.append({k: v for k, v in t.items() if k != "tolerationJson"})
        pvcs = []
        for mount in conf.get("pvcMount", []):
            if "pvcNameParameter" in mount:
                name = _from_param(mount["pvcNameParameter"], scope)
            else:  # older compilers: constant, or componentInputParameter on the mount
                name = mount.get("constant") or _from_param(mount, scope)
            if isinstance(name, str) and name:
                pvcs.append(name)
        out.append(
            GpuTask(
                task=task,
                resource=str(resource) if resource is not _UNKNOWN else "",
                count=int(float(count)) if count is not _UNKNOWN else 1,
                node_selector={str(k): str(v) for k, v in selector.items()},
                tolerations=[t for t in tolerations if isinstance(t, dict)],
                cpu=quantity(res.get("resourceCpuRequest") or res.get("cpuRequest") or 0),
                memory=quantity(
                    res.get("resourceMemoryRequest")
                    or (f"{res['memoryRequest']}G" if "memoryRequest" in res else 0)
                ),
                pvcs=pvcs,
            )
        )
    return out
