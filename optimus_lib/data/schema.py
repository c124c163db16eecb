"""The one data unit: a dialog context plus the response under judgement.

Two input shapes are accepted (the input contract, docs/data.md) and both are normalised into
:class:`Sample`. The original record is kept verbatim so unknown keys survive every
stage untouched: other tools downstream rely on that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROLES = ("user", "assistant", "system")


@dataclass
class Sample:
    """A dialog sample.

    ``context`` holds the turns before the response, oldest first, with roles that
    alternate and end on ``"user"`` (the turn the response answers). ``record`` is the
    untouched input dict, so writers can add fields without dropping unknown keys.
    """

    context: list[str]
    response: str
    id: str = ""
    label: int | None = None
    category: str | None = None
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def roles(self) -> list[str]:
        """Speaker role of each context turn: the last one is always the user."""
        n = len(self.context)
        return ["user" if (n - 1 - i) % 2 == 0 else "assistant" for i in range(n)]

    def prompt_messages(self) -> list[dict[str, str]]:
        """The context as chat messages (what the chatbot sees before replying)."""
        return [{"role": r, "content": c} for r, c in zip(self.roles, self.context)]

    def messages(self, response: str | None = None) -> list[dict[str, str]]:
        """Context plus a response (the original one unless another is given)."""
        reply = self.response if response is None else response
        return [*self.prompt_messages(), {"role": "assistant", "content": reply}]

    def with_response(self, response: str) -> Sample:
        """A copy whose response is replaced (used by healing)."""
        return Sample(
            context=list(self.context),
            response=response,
            id=self.id,
            label=self.label,
            category=self.category,
            record=dict(self.record),
        )


def _parse_label(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    if isinstance(value, str) and value.strip().lower() in ("toxic", "unsafe", "1"):
        return 1
    if isinstance(value, str) and value.strip().lower() in ("safe", "benign", "0"):
        return 0
    raise ValueError(f'\'label\' must be "toxic"/"safe" or 1/0, got {value!r}')


def _check_text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    return value


def parse_record(record: Any, index: int = 0) -> Sample:
    """Validate one input record and normalise it into a :class:`Sample`.

    Raises ``ValueError`` with a short reason; readers prefix it with ``file:line``.
    """
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        msgs = record["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise ValueError("'messages' must be a non-empty list")
        turns: list[tuple[str, str]] = []
        for j, m in enumerate(msgs):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ValueError(f"messages[{j}] must be an object with 'role' and 'content'")
            if m["role"] not in ROLES:
                raise ValueError(f"messages[{j}].role must be one of {ROLES}, got {m['role']!r}")
            turns.append((m["role"], _check_text(m["content"], f"messages[{j}].content")))
        dialog = [t for t in turns if t[0] != "system"]
        if not dialog or dialog[-1][0] != "assistant":
            raise ValueError("the last message must have role 'assistant' (the response)")
        if len(dialog) < 2:
            raise ValueError("'messages' needs at least one turn before the assistant response")
        context = [c for _, c in dialog[:-1]]
        response = dialog[-1][1]
    elif "context" in record or "response" in record:
        if "context" not in record or "response" not in record:
            raise ValueError("records with 'context' need 'response' too (and vice versa)")
        ctx = record["context"]
        if isinstance(ctx, str):
            ctx = [ctx]
        if not isinstance(ctx, list) or not ctx:
            raise ValueError("'context' must be a non-empty list of strings")
        context = [_check_text(c, f"context[{j}]") for j, c in enumerate(ctx)]
        response = _check_text(record["response"], "'response'")
    else:
        raise ValueError("record needs 'messages' or 'context' + 'response'")
    sid = record.get("id", index)
    category = record.get("category")
    if category is not None and not isinstance(category, str):
        raise ValueError("'category' must be a string")
    return Sample(
        context=context,
        response=response,
        id=str(sid),
        label=_parse_label(record.get("label")),
        category=category,
        record=record,
    )


def sample_to_record(sample: Sample) -> dict[str, Any]:
    """A record in the ``context``/``response`` shape for samples built in code."""
    rec: dict[str, Any] = {"id": sample.id, "context": sample.context, "response": sample.response}
    if sample.label is not None:
        rec["label"] = "toxic" if sample.label else "safe"
    if sample.category is not None:
        rec["category"] = sample.category
    return {**rec, **{k: v for k, v in sample.record.items() if k not in rec and k != "messages"}}
