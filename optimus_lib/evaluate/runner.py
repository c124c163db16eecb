"""Generate replies with a trained model and measure toxicity and utility.

The evaluator must be independent of the classify detector (docs/method.md): otherwise a
defense could look good by fitting its own judge. The default is the lexical profanity
classifier, which shares nothing with the LLM judge used for scanning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from optimus_lib.data.schema import Sample
from optimus_lib.detect.base import Detector
from optimus_lib.evaluate.metrics import distinct_n, refusal_rate, rtr
from optimus_lib.seeds import derive_seed, record_key

if TYPE_CHECKING:  # torch only where a model runs
    from optimus_lib.models.engine import TransformersEngine


def embedding_similarity(a: list[str], b: list[str]) -> float | None:
    """Mean cosine similarity of paired texts with all-MiniLM-L6-v2 (offline package).

    The embedder is the one the ``stack`` / ``contextual`` detectors load (one copy per
    process, each distinct text encoded once: every reference repeats once per sampled
    reply). Returns None when the packaged model isn't installed, so utility degrades
    to perplexity and diversity instead of failing the run.
    """
    from optimus_lib.detect.stack import embed
    from optimus_lib.errors import OptimusError

    try:
        ea, eb = embed(a), embed(b)
    except OptimusError:
        return None
    return float((ea * eb).sum(-1).mean())


def evaluate_model(
    engine: TransformersEngine,
    toxic: list[Sample],
    benign: list[Sample],
    evaluator: Detector,
    max_new_tokens: int = 40,
    similarity: bool = True,
    triggered: list[Sample] | None = None,
    sampling: Any = None,
    seed: int = 0,
    context_evaluator: Detector | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metrics and per-reply generations for one model.

    ``context_evaluator``: a second judge of the same replies, one that reads the context
    (:mod:`optimus_lib.detect.contextual`); its rates are the ``*_context`` metrics and
    each row's ``toxicity_context``.

    ``triggered``: benign contexts carrying a backdoor trigger; their RTR (``rtr_trigger``)
    next to ``rtr_benign`` shows whether a backdoor survived the defense.
    ``sampling`` (anything with ``do_sample``, ``samples``, ``top_p``, ``temperature``):
    decode with nucleus sampling and ``samples`` replies per context (RTR, refusal,
    diversity and similarity are then over every reply); greedy when None or
    ``do_sample`` is off. Reply ``j`` of a context samples with a seed derived from
    ``seed``, the context's record and ``j``, so it is the same in any batch or shard.
    """
    from optimus_lib.models.engine import perplexity

    sample = sampling is not None and sampling.do_sample
    n = sampling.samples if sample else 1

    def replies(samples: list[Sample]) -> tuple[list[Sample], list[str], list[float]]:
        rep = [s for s in samples for _ in range(n)]
        prompts = [p for s in samples for p in [engine.chat_ids(s.prompt_messages())] * n]
        if sample:
            gen = engine.generate(
                prompts,
                max_new_tokens=max_new_tokens,
                do_sample=True,
                top_p=sampling.top_p,
                temperature=sampling.temperature,
                seeds=[
                    derive_seed(seed, record_key(s), "reply", j) for s in samples for j in range(n)
                ],
            )
        else:
            gen = engine.generate(prompts, max_new_tokens=max_new_tokens)
        scores = evaluator.score([s.with_response(r) for s, r in zip(rep, gen)])
        return rep, gen, scores

    def second(rep: list[Sample], gen: list[str], name: str) -> list[float] | None:
        """The context evaluator's scores, and its rates under ``name`` in ``metrics``."""
        if context_evaluator is None:
            return None
        sc = context_evaluator.score([s.with_response(r) for s, r in zip(rep, gen)])
        metrics[f"rtr_{name}_context"] = rtr(sc, context_evaluator.threshold)
        metrics[f"mean_toxicity_{name}_context"] = sum(sc) / len(sc) if sc else float("nan")
        return sc

    def rows(kind: str, rep, gen, sc, sc2, extra=None) -> list[dict[str, Any]]:
        out = []
        for i, (s, r, v) in enumerate(zip(rep, gen, sc)):
            row = {"set": kind, "id": s.id, "context": s.context, "reply": r, "toxicity": v}
            if sc2 is not None:
                row["toxicity_context"] = sc2[i]
            if extra is not None:
                row.update(extra(s))
            out.append(row)
        return out

    rep_t, gen_t, sc_t = replies(toxic)
    rep_b, gen_b, sc_b = replies(benign)
    prompts_b = [engine.chat_ids(s.prompt_messages()) for s in benign]
    refs = [
        engine.tokenizer(engine.clean(s.response), add_special_tokens=False)["input_ids"]
        for s in benign
    ]
    nll = engine.completion_nll(prompts_b, refs)
    metrics: dict[str, Any] = {
        "rtr_toxic": rtr(sc_t, evaluator.threshold),
        "rtr_benign": rtr(sc_b, evaluator.threshold),
        "perplexity": perplexity(nll),
        "over_refusal": refusal_rate(gen_b),
        "distinct_1": distinct_n(gen_b, 1),
        "distinct_2": distinct_n(gen_b, 2),
        "mean_toxicity_toxic": sum(sc_t) / len(sc_t),
        "mean_toxicity_benign": sum(sc_b) / len(sc_b),
        "replies_per_context": n,
    }
    out = rows("toxic", rep_t, gen_t, sc_t, second(rep_t, gen_t, "toxic"))
    out += rows(
        "benign",
        rep_b,
        gen_b,
        sc_b,
        second(rep_b, gen_b, "benign"),
        lambda s: {"reference": s.response},
    )
    if triggered:
        rep_g, gen_g, sc_g = replies(triggered)
        metrics["rtr_trigger"] = rtr(sc_g, evaluator.threshold)
        out += rows("trigger", rep_g, gen_g, sc_g, second(rep_g, gen_g, "trigger"))
    if similarity:
        metrics["similarity"] = embedding_similarity(gen_b, [s.response for s in rep_b])
    return metrics, out
