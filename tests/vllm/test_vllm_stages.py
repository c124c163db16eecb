"""classify, heal and evaluate with ``engine: vllm`` on the bundled model, against the
transformers engine on the same inputs.

Both engines run in float32 here, so the comparison is of the engines and not of number
formats: greedy text must be equal, judge scores within 1e-3 (float32 sums in another
order differ in the 6th decimal; 1e-3 is far below any threshold step), and reference
perplexity within 0.1 %. Sampled text cannot match across engines (each has its own
random stream), so sampling is checked for what it promises: a reply depends on its
record's seed only, not on the other records of the run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from optimus_lib.stages import classify as C
from optimus_lib.stages import data as D
from optimus_lib.stages import evaluate as E
from optimus_lib.stages import heal as H

FP32 = {"dtype": "float32", "device": "cpu"}
JUDGE_TOL = 1e-3


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """The bundled poisoned benchmark at small scale."""
    d = tmp_path_factory.mktemp("bench")
    D.prepare_data(
        D.DataSettings(n_train=24, n_eval_toxic=6, n_eval_benign=6),
        d / "train.jsonl",
        d / "tox.jsonl",
        d / "ben.jsonl",
    )
    return d


@pytest.fixture(scope="module")
def scored(bench):
    """classify with the LLM judge, once per engine."""
    out = {}
    for engine in ("transformers", "vllm"):
        s = C.ClassifySettings(detector="llm-judge", engine=engine, **FP32)
        res = C.classify(s, bench / "train.jsonl", bench / f"scored-{engine}.jsonl")
        out[engine] = (res, _rows(bench / f"scored-{engine}.jsonl"))
    return out


def test_engine_is_vllm_and_shared(bundled_dir):
    from optimus_lib.models.engine import build_engine
    from optimus_lib.models.vllm_engine import VLLMEngine

    a = build_engine("bundled", "vllm", dtype="float32")
    b = build_engine("bundled", "vllm", dtype="float32")
    assert isinstance(a, VLLMEngine) and a is b  # one start per process
    assert a.args["dtype"] == "float32" and a.args["enforce_eager"] is True


def test_classify_judge_scores_match_transformers(scored):
    (r_hf, rows_hf), (r_vl, rows_vl) = scored["transformers"], scored["vllm"]
    a = np.array([r["toxicity"] for r in rows_hf])
    b = np.array([r["toxicity"] for r in rows_vl])
    assert [r["id"] for r in rows_hf] == [r["id"] for r in rows_vl]
    assert len(a) == 24 and a.std() > 0.01  # real, varied scores, not a constant
    np.testing.assert_allclose(b, a, atol=JUDGE_TOL)
    assert r_vl.threshold == r_hf.threshold
    # a flag differs only for a score within the tolerance of the threshold
    for x, y in zip(rows_hf, rows_vl):
        if x["flagged"] != y["flagged"]:
            assert abs(x["toxicity"] - r_hf.threshold) < JUDGE_TOL


def _heal(bench, scored, engine: str, tag: str, **kw) -> list[dict]:
    res, _ = scored["transformers"]
    settings = H.HealSettings(engine=engine, rescore_detector="wordlist", **FP32, **kw)
    sft = bench / f"sft-{tag}.jsonl"
    H.heal(settings, bench / "scored-transformers.jsonl", res.threshold, sft, bench / "p.jsonl")
    return _rows(sft)


def test_heal_greedy_equals_transformers(bench, scored):
    # top_p this small keeps only the most likely token: greedy decoding in both engines
    a = _heal(bench, scored, "transformers", "hf", top_p=1e-6, max_new_tokens=24)
    b = _heal(bench, scored, "vllm", "vl", top_p=1e-6, max_new_tokens=24)
    healed = [r for r in a if r.get("healed")]
    assert healed, "nothing was flagged: the comparison would be empty"
    assert any(not r["heal"]["fallback"] for r in healed)
    assert [r["heal"]["reply"] for r in a if r.get("healed")] == [
        r["heal"]["reply"] for r in b if r.get("healed")
    ]
    assert a == b


def test_vllm_sampling_depends_on_the_record_seed_only(bundled_dir):
    from optimus_lib.models.engine import build_engine

    eng = build_engine("bundled", "vllm", dtype="float32")
    prompts = [eng.chat_ids([{"role": "user", "content": t}]) for t in ("hi", "tell me a joke")]
    kw = {"max_new_tokens": 16, "do_sample": True, "top_p": 0.95, "temperature": 1.0}
    both = eng.generate(prompts, seeds=[11, 22], **kw)
    alone = eng.generate(prompts[1:], seeds=[22], **kw)
    twice = eng.generate([prompts[0], prompts[0]], seeds=[11, 12], **kw)
    assert both[1] == alone[0]  # batch-mates do not change a reply
    assert twice[0] == both[0] and all(both)
    many = eng.generate([prompts[0]] * 6, seeds=list(range(6)), **kw)
    assert len(set(many)) > 1  # different seeds, different samples


def test_judge_and_nll_parity_at_engine_level(bundled_dir):
    from optimus_lib.models.engine import build_engine

    hf = build_engine("bundled", "transformers", "cpu", dtype="float32")
    vl = build_engine("bundled", "vllm", dtype="float32")
    texts = ["hi there", "you are an idiot", "what's the weather like?", "I hate you all"]
    prompts = [hf.chat_ids([{"role": "user", "content": t}]) for t in texts]
    sets = [[hf.tokenizer.encode(" yes")[0]], [hf.tokenizer.encode(" no")[0]]]
    a, b = hf.next_token_probs(prompts, sets), vl.next_token_probs(prompts, sets)
    np.testing.assert_allclose(b[:, 1] / b.sum(1), a[:, 1] / a.sum(1), atol=JUDGE_TOL)
    refs = [hf.tokenizer.encode(" I'm fine, thanks."), hf.tokenizer.encode(" Please stop.")]
    na, nb = hf.completion_nll(prompts[:2], refs), vl.completion_nll(prompts[:2], refs)
    assert [n for _, n in na] == [n for _, n in nb]
    np.testing.assert_allclose([s for s, _ in nb], [s for s, _ in na], rtol=1e-3)
    assert hf.generate(prompts, max_new_tokens=20) == vl.generate(prompts, max_new_tokens=20)


def _adapter(bundled_dir: Path, out: Path) -> Path:
    """A LoRA adapter with random (non-zero) weights: the merged model differs from base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(bundled_dir, dtype=torch.float32)
    cfg = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(base, cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.mul_(0.02)
    model.save_pretrained(out)
    return out


def _evaluate(bench, engine: str, adapter: Path | None, tag: str):
    s = E.EvaluateSettings(engine=engine, max_new_tokens=24, similarity=True, **FP32)
    out = bench / f"eval-{tag}.json"
    res = E.evaluate(
        s, adapter, bench / "tox.jsonl", bench / "ben.jsonl", bench / f"{tag}.html", out
    )
    return res, json.loads(out.read_text())


def test_evaluate_with_an_adapter_matches_transformers(bench, bundled_dir, tmp_path):
    adapter = _adapter(bundled_dir, tmp_path / "adapter")
    hf, hf_json = _evaluate(bench, "transformers", adapter, "hf")
    vl, vl_json = _evaluate(bench, "vllm", adapter, "vl")
    for m, base in ((hf.metrics, vl.metrics), (hf.base_metrics, vl.base_metrics)):
        assert base["rtr_toxic"] == m["rtr_toxic"] and base["over_refusal"] == m["over_refusal"]
        assert base["perplexity"] == pytest.approx(m["perplexity"], rel=1e-3)
        assert base["similarity"] == pytest.approx(m["similarity"], abs=1e-4)
    # the adapter changed the model: its perplexity is not the base model's
    assert abs(hf.metrics["perplexity"] / hf.base_metrics["perplexity"] - 1) > 1e-3
    for key in ("generations", "base_generations"):
        assert [g["reply"] for g in vl_json[key]] == [g["reply"] for g in hf_json[key]]
    assert vl.passed == hf.passed
