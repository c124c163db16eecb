"""The vLLM engine agrees with the transformers engine (only where vLLM and a GPU exist)."""

from __future__ import annotations

import numpy as np
import pytest

from optimus_lib.models.engine import vllm_available

pytestmark = pytest.mark.skipif(not vllm_available(), reason="needs vllm and a CUDA GPU")


def test_vllm_matches_transformers_on_judge_ratios(tiny_model_dir, tiny_tokenizer):
    from optimus_lib.models.engine import build_engine

    hf = build_engine(str(tiny_model_dir), "transformers", "cuda")
    vl = build_engine(str(tiny_model_dir), "vllm")
    prompts = [hf.chat_ids([{"role": "user", "content": t}]) for t in ("hi", "is it safe?")]
    sets = [[10539, 9230], [5230, 2838]]
    a, b = hf.next_token_probs(prompts, sets), vl.next_token_probs(prompts, sets)
    np.testing.assert_allclose(a[:, 1] / a.sum(1), b[:, 1] / b.sum(1), atol=2e-2)
    assert len(vl.generate(prompts, max_new_tokens=4)) == 2
