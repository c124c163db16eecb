"""Import guard: keep the light paths light and the layers pointing down.

The layers, top to bottom: ``cli`` -> ``deploy`` -> ``pipelines`` -> ``components`` ->
``optimus_lib``. Checked:

* ``components/**/*.py`` and ``pipelines/*.py``: at module top only the standard library,
  ``kfp`` and this repo's ``components`` / ``pipelines`` packages (defining and compiling
  components must not need optimus_lib, torch or anything else);
* a component function's body (the code that runs in the image): the standard library,
  ``kfp`` and ``optimus_lib`` only; ``components`` and ``pipelines`` are not in the images;
* ``components/images.py``: the standard library only (``make build-images`` reads it);
* ``deploy/**``: never ``cli`` (the runners serve the CLI, not the other way round);
* ``optimus_lib/**``: never ``kfp`` (the library runs without Kubeflow) and never a layer
  above it (``components``, ``pipelines``, ``deploy``, ``cli``), neither by an import
  statement nor by name through ``importlib.import_module`` / ``__import__``.

    python tools/import_guard.py        prints each violation as file:line; exit 1 if any
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STDLIB = set(sys.stdlib_module_names) | {"__future__"}
TOP_OK = STDLIB | {"kfp", "components", "pipelines"}
BODY_OK = STDLIB | {"kfp", "optimus_lib"}


FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
# What the library must never reach, directly or by name.
ABOVE_LIBRARY = {"kfp", "components", "pipelines", "deploy", "cli"}
DYNAMIC = {"import_module", "__import__"}


def _imports(nodes: list[ast.stmt] | ast.AST, into_functions: bool = True):
    """(line, top-level package) of every absolute import in ``nodes``; with
    ``into_functions`` False, imports inside functions (run lazily) are skipped."""
    todo = list(nodes) if isinstance(nodes, list) else [nodes]
    while todo:
        node = todo.pop(0)
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module.split(".")[0]
        if into_functions or not isinstance(node, FUNCTIONS):
            todo.extend(ast.iter_child_nodes(node))


def _is_component(fn: ast.AST) -> bool:
    if not isinstance(fn, ast.FunctionDef):
        return False
    for dec in fn.decorator_list:
        target = dec.func if isinstance(dec, ast.Call) else dec
        if isinstance(target, ast.Attribute) and target.attr == "component":
            return True
    return False


def check_file(path: Path, top_ok: set[str] | None, body_ok: set[str] | None) -> list[str]:
    """Violations in one file: ``top_ok`` for module-level imports (outside component
    bodies), ``body_ok`` for imports inside component functions; None: not checked."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    bad = []
    components = [n for n in tree.body if _is_component(n)]
    outside = [n for n in tree.body if n not in components]
    if top_ok is not None:
        for line, mod in _imports(outside, into_functions=False):
            if mod not in top_ok:
                bad.append(f"{rel}:{line}: imports {mod!r} at module level")
    if body_ok is not None:
        for fn in components:
            for line, mod in _imports(fn.body):
                if mod not in body_ok:
                    bad.append(f"{rel}:{line}: component {fn.name!r} imports {mod!r}")
    return bad


def _top(name: str) -> str:
    return name.split(".")[0]


def check_library_file(path: Path, root: Path = ROOT) -> list[str]:
    """Violations in one optimus_lib file: an import of a layer above the library, or a
    dynamic import that names one (a literal argument, or any module-like string in a
    file whose dynamic import takes a computed name)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    rel = path.relative_to(root) if path.is_relative_to(root) else path
    bad = [
        f"{rel}:{line}: optimus_lib imports {mod!r}"
        for line, mod in _imports(tree)
        if mod in ABOVE_LIBRARY
    ]
    computed = False
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        fn = node.func
        name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
        if name not in DYNAMIC or not node.args:
            continue
        arg = node.args[0]
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            if _top(arg.value) in ABOVE_LIBRARY:
                bad.append(f"{rel}:{node.lineno}: optimus_lib imports {arg.value!r} by name")
        else:
            computed = True
    if computed:
        for node in ast.walk(tree):
            v = getattr(node, "value", None)
            dotted = isinstance(v, str) and "." in v and v.replace(".", "_").isidentifier()
            if isinstance(node, ast.Constant) and dotted and _top(v) in ABOVE_LIBRARY:
                bad.append(f"{rel}:{node.lineno}: optimus_lib names module {v!r}")
    return bad


def check(root: Path = ROOT) -> list[str]:
    """Every violation in the repository."""
    bad: list[str] = []
    for path in sorted((root / "components").rglob("*.py")):
        top = STDLIB if path.name == "images.py" else TOP_OK
        bad += check_file(path, top, BODY_OK)
    for path in sorted((root / "pipelines").glob("*.py")):
        bad += check_file(path, TOP_OK, BODY_OK)
    for path in sorted((root / "deploy").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        bad += [
            f"{path.relative_to(root)}:{line}: deploy imports 'cli' (a layer above it)"
            for line, mod in _imports(tree)
            if mod == "cli"
        ]
    for path in sorted((root / "optimus_lib").rglob("*.py")):
        bad += check_library_file(path, root)
    return bad


def main() -> int:
    bad = check()
    for line in bad:
        print(line, file=sys.stderr)
    if bad:
        print(f"import guard: {len(bad)} violation(s)", file=sys.stderr)
        return 1
    print("import guard: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
