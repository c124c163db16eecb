"""The ``contextual`` evaluator: a second RTR judge that reads the previous turn.

The default evaluator (``lexical``) sees the reply only, so a model that answers a
hateful turn with "Yes, exactly." or "Agreed, do it." counts as clean. ``contextual``
is the :mod:`stack <optimus_lib.detect.stack>` model (MiniLM heads for "toxic on its own"
and "agrees", the previous turn's toxicity, agreement x previous-turn toxicity, scored
over the reply and its windows) built to stay independent of what classify used:

* it is fitted on the *other* labelled set: the ``stack`` detector on
  ``detect/data/dev.jsonl``, this evaluator on ``detect/data/test.jsonl``
  (``tools/train_stack_detector.py --data test``), so no fitted number and no training
  dialog is shared;
* it leaves out the two word-based features (its stack coefficients for ``lexical`` and
  ``wordlist`` are 0), so it shares no part with the ``lexical`` / ``wordlist``
  detectors that the experiments weaken and heal re-scores with;
* settings refuse it as an evaluator when classify or heal's re-scoring uses it
  (:func:`optimus_lib.detect.base.check_evaluator_independent`), as they refuse any
  evaluator that shares a detector with them.

What it still shares with ``stack`` is the embedder (all-MiniLM-L6-v2) and the design,
so when classify runs ``stack`` the two are correlated; report ``lexical`` beside it.
Its quality is measured on the dev set, which it has not seen (BENCHMARKS.md).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from optimus_lib.detect.base import Detector, DetectorOptions, register
from optimus_lib.detect.stack import StackDetector, load_params
from optimus_lib.errors import OptimusError

NAME = "contextual"


def params_path() -> Path:
    """The shipped evaluator file (JSON numbers only)."""
    return Path(str(files("optimus_lib") / "detect" / "data" / "contextual.json"))


class ContextualEvaluator(StackDetector):
    """The stack model fitted on the held-out set without word features."""

    name = NAME


@register(NAME)
def _build(opts: DetectorOptions) -> Detector:
    if not params_path().is_file():
        raise OptimusError(f"{params_path()}: the contextual evaluator's file is missing")
    device = "cpu" if opts.device == "auto" else opts.device
    return ContextualEvaluator(
        load_params(params_path()), device=device, batch_size=max(16, opts.batch_size)
    )
