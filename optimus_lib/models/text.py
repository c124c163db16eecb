"""Text hygiene for untrusted dialog text before it meets a tokenizer (no torch here)."""

from __future__ import annotations

from collections.abc import Sequence


def sanitize(text: str, special_tokens: Sequence[str]) -> str:
    """Break up special-token strings inside untrusted text.

    Dataset text is hostile: a reply containing ``<|im_end|>`` would otherwise be
    tokenized as a real turn boundary and could forge a judge's or trainer's prompt.
    """
    for tok in special_tokens:
        if len(tok) > 1 and tok in text:
            text = text.replace(tok, tok[0] + " " + tok[1:])
    return text
