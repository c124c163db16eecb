"""vLLM inference engine: the same three operations as :class:`TransformersEngine`.

Used when vLLM is installed and a GPU is present (``engine: auto``), or when a config
asks for it (``engine: vllm``). vLLM brings continuous batching, paged attention and
automatic prefix caching (the judge's shared system prompt is computed once), which is
what a large scan or healing job on many GPUs wants; nothing here re-implements those.

Status: written against vLLM's public ``LLM`` / ``SamplingParams`` / ``TokensPrompt`` API
but not exercised in this project's CI or on its benchmark device (the vLLM wheel is
larger than what reaches the device); its tests skip unless ``import vllm`` works.
"""

from __future__ import annotations

import math

import numpy as np

from optimus_lib.models.engine import PromptMixin


class VLLMEngine(PromptMixin):
    """Batched scoring and generation through ``vllm.LLM`` (prompts as token ids)."""

    def __init__(
        self,
        model_path: str,
        tokenizer,
        trust_remote_code: bool = False,
        max_length: int = 4096,
        gpu_memory_utilization: float = 0.85,
        progress: bool = False,
        tensor_parallel_size: int = 1,
        revision: str | None = None,
    ) -> None:
        from vllm import LLM

        self.llm = LLM(
            model=model_path,
            tokenizer=model_path,
            revision=revision,
            tokenizer_revision=revision,
            trust_remote_code=trust_remote_code,
            dtype="bfloat16",
            max_model_len=max_length,
            enable_prefix_caching=True,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            # logprobs after the allowed-token mask: the judge's yes/no renormalisation
            logprobs_mode="processed_logprobs",
        )
        self._init_prompts(tokenizer, max_length)
        self.progress = progress

    def _prompts(self, prompts: list[list[int]]):
        from vllm.inputs import TokensPrompt

        return [TokensPrompt(prompt_token_ids=self._fit(p)) for p in prompts]

    def next_token_probs(
        self, prompts: list[list[int]], token_sets: list[list[int]], prefix_cache: bool = True
    ) -> np.ndarray:
        """P(next token in each set), renormalised over the union of the sets.

        vLLM returns only the top logprobs, so the next token is restricted to the
        union of the sets (``allowed_token_ids``); the judge only uses the ratio
        P(no) / (P(yes) + P(no)), which this preserves exactly.
        """
        from vllm import SamplingParams

        allowed = sorted({t for s in token_sets for t in s})
        params = SamplingParams(
            max_tokens=1, temperature=1.0, logprobs=len(allowed), allowed_token_ids=allowed
        )
        outs = self.llm.generate(self._prompts(prompts), params, use_tqdm=self.progress)
        res = np.zeros((len(prompts), len(token_sets)), dtype=np.float64)
        for i, out in enumerate(outs):
            lp = out.outputs[0].logprobs[0]
            probs = {tid: math.exp(v.logprob) for tid, v in lp.items()}
            for k, tset in enumerate(token_sets):
                res[i, k] = sum(probs.get(t, 0.0) for t in tset)
        return res

    def completion_nll(
        self, prompts: list[list[int]], completions: list[list[int]]
    ) -> list[tuple[float, int]]:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, prompt_logprobs=0)
        full = [p + c for p, c in zip(prompts, completions)]
        outs = self.llm.generate(self._prompts(full), params, use_tqdm=self.progress)
        res = []
        for out, seq, c in zip(outs, full, completions):
            seq = self._fit(seq)
            n = min(len(c), len(seq) - 1)
            lps = out.prompt_logprobs or []
            total = 0.0
            for pos in range(len(seq) - n, len(seq)):
                entry = lps[pos] or {}
                total -= entry[seq[pos]].logprob if seq[pos] in entry else 0.0
            res.append((total, n))
        return res

    def generate(
        self,
        prompts: list[list[int]],
        max_new_tokens: int = 48,
        do_sample: bool = False,
        top_p: float = 1.0,
        temperature: float = 1.0,
        seed: int = 0,
    ) -> list[str]:
        from vllm import SamplingParams

        params = SamplingParams(
            max_tokens=max_new_tokens,
            temperature=temperature if do_sample else 0.0,
            top_p=top_p if do_sample else 1.0,
            seed=seed,
            skip_special_tokens=True,
        )
        outs = self.llm.generate(self._prompts(prompts), params, use_tqdm=self.progress)
        return [o.outputs[0].text.strip() for o in outs]
