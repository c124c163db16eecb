"""Sampling step alone at two checkouts: 24 steps x 60 rows x 49,152 tokens, top-p 0.9.

.venv/bin/python benchmarks/sampling_micro.py OLD_CHECKOUT NEW_CHECKOUT
"""

import importlib
import sys
import time

import torch

torch.manual_seed(0)
logits = torch.randn(60, 49152) * 4


def run(path):
    sys.path.insert(0, path)
    for m in [k for k in sys.modules if k.startswith("optimus_lib")]:
        del sys.modules[m]
    E = importlib.import_module("optimus_lib.models.engine")
    gens = [torch.Generator().manual_seed(i) for i in range(60)]
    t = time.process_time()
    w = time.perf_counter()
    for _ in range(24):
        if hasattr(E, "_nucleus_candidates"):
            p, c = E._nucleus_candidates(logits, 0.9, 1.0)
            pick = torch.stack(
                [torch.multinomial(p[r], 1, generator=g)[0] for r, g in enumerate(gens)]
            )
            c.gather(1, pick[:, None])[:, 0]
        else:
            probs = E._nucleus(logits, 0.9, 1.0)
            torch.stack(
                [torch.multinomial(probs[r], 1, generator=g)[0] for r, g in enumerate(gens)]
            )
    sys.path.pop(0)
    return time.process_time() - t, time.perf_counter() - w


print("before (cpu s, wall s) for 24 steps x 60 rows:", run(sys.argv[1]))
print("after  (cpu s, wall s) for 24 steps x 60 rows:", run(sys.argv[2]))
