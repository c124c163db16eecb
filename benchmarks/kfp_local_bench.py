"""Per-task overhead of the KFP local runner (what `optimus run` and the tests pay).

Three figures, each the median of ``--repeats`` runs on this machine:

1. a pipeline of ``--tasks`` chained trivial components (stdlib only) under
   ``kfp.local.SubprocessRunner(use_venv=False)``: wall time / tasks = the runner's own
   cost per task (executor start, artifact bookkeeping);
2. ``python -c "import optimus_lib.stages.<x>"`` in a fresh interpreter: what a light
   component body adds (settings models, no torch);
3. the same for torch + transformers + peft + trl: what a model-running component adds.

    .venv/bin/python benchmarks/kfp_local_bench.py [--tasks 8] [--repeats 3]
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kfp import dsl, local


@dsl.component(base_image="python:3.11-slim", packages_to_install=[], install_kfp_package=False)
def step(x: int) -> int:
    """A task that does nothing but pass a number on."""
    return x + 1


def chain(n: int):
    @dsl.pipeline(name="overhead")
    def pipeline(x: int = 0):
        t = step(x=x)
        for _ in range(n - 1):
            t = step(x=t.output)

    return pipeline


def _import_seconds(code: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    pipe = chain(a.tasks)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(Path(tmp)))
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            pipe(x=0)
            runs.append(time.perf_counter() - t0)
    bare = _import_seconds("pass")
    light = _import_seconds("import optimus_lib.stages.register, optimus_lib.stages.classify")
    heavy = _import_seconds("import torch, transformers, peft, trl")
    per_task = statistics.median(runs) / a.tasks
    print(
        f"kfp.local, {a.tasks} chained trivial tasks: {statistics.median(runs):.2f} s "
        f"median of {a.repeats} -> {per_task:.3f} s per task"
    )
    print(
        f"fresh interpreter: {bare:.2f} s; + optimus_lib stages (no torch): "
        f"{light - bare:.2f} s; + torch/transformers/peft/trl: {heavy - bare:.2f} s"
    )


if __name__ == "__main__":
    main()
