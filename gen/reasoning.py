"""Reasoning traces: what a reasoning teacher thought before it answered, apart from the answer.

A trace arrives in one of three ways (the teacher clients read the first and the third; `split_think`
finds the second in any answer's text):
    - a field beside the answer: `message.reasoning_content` (DeepSeek's API, vLLM's reasoning parsers)
      or `message.reasoning` (newer vLLM, other gateways);
    - inline: `<think> ... </think>` at the start of the text (a reasoning model served without a
      parser); the tags and the trace are taken out of the answer;
    - Anthropic's extended thinking: `thinking` content blocks.
Validation, verification and the `messages` answer see the answer only; the trace is kept in the row's
`reasoning` column and, as `reasoning_format` asks, in the assistant message (REASONING_FORMATS).

Dedup sees the trace through two bounded keys (gen.dedup): an 8-byte hash of its bytes for the exact
check, and `trace_sample`, a fixed-size sample of its text, for the near check, so the near check costs
the same for a trace of 300 tokens or of 30,000.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final, Literal

ReasoningFormat = Literal["field", "think-tags", "drop"]
REASONING_FORMATS: Final = ("field", "think-tags", "drop")
"""How the trace enters the assistant message of `messages`:
    field       `reasoning_content` beside `content` (what recent chat templates read);
    think-tags  `content` = "<think>\\n" + trace + "\\n</think>\\n\\n" + answer (R1-style distillation);
    drop        the answer alone (the trace stays in the `reasoning` column)."""

OPEN, CLOSE = "<think>", "</think>"

# The near check's sample of a trace: SAMPLE_WINDOWS windows of SAMPLE_WIDTH characters at evenly spaced
# offsets (the head and the tail among them). Two near-identical traces (a few words changed, inserted
# or removed) have windows at almost the same offsets, so the samples share almost every shingle; a
# trace that differs throughout differs in every window. 8 x 256 characters is ~350 words, a few times
# a short answer, whatever the trace's length.
SAMPLE_WINDOWS = 8
SAMPLE_WIDTH = 256


def split_think(text: str) -> tuple[str | None, str]:
    """(the trace, the answer) of a text that may open with an inline `<think> ... </think>` block.

    The opening tag may be missing (R1-style chat templates put `<think>\\n` in the prompt, so the
    model's text starts inside the trace): then a `</think>` with no `<think>` before it ends the trace.
    A trace that never closes (cut off at max_tokens) is all trace, with an empty answer. A text without
    the tags is all answer (None, text)."""
    head = text.lstrip()
    if head.startswith(OPEN):
        body = head[len(OPEN) :]
        trace, closed, answer = body.partition(CLOSE)
        if not closed:
            return trace.strip(), ""
        return trace.strip(), answer.strip()
    end = text.find(CLOSE)
    if end < 0 or OPEN in text[:end]:
        return None, text
    return text[:end].strip(), text[end + len(CLOSE) :].strip()


def assistant_message(answer: str, reasoning: str | None, fmt: str) -> dict[str, Any]:
    """The assistant turn of `messages` in format `fmt` (REASONING_FORMATS). Every message struct of a
    dataset has the same fields: `reasoning_content` is null wherever there is none to carry."""
    if reasoning is not None and fmt == "think-tags":
        return {"role": "assistant", "content": f"{OPEN}\n{reasoning}\n{CLOSE}\n\n{answer}"}
    if reasoning is not None and fmt == "field":
        return {"role": "assistant", "content": answer, "reasoning_content": reasoning}
    return {"role": "assistant", "content": answer}


def trace_digest(reasoning: str | None) -> bytes:
    """8 bytes of a trace for the exact dedup key (empty for none): a hash of its bytes, not folded
    (folding case and whitespace of 100 kB costs more than everything else a row costs)."""
    if not reasoning:
        return b""
    return hashlib.blake2b(reasoning.encode(), digest_size=8).digest()


def trace_sample(reasoning: str | None) -> str:
    """The part of a trace the near check compares: all of a short one, else SAMPLE_WINDOWS windows of
    SAMPLE_WIDTH characters at evenly spaced offsets, from the first character to the last."""
    if not reasoning:
        return ""
    n = len(reasoning)
    budget = SAMPLE_WINDOWS * SAMPLE_WIDTH
    if n <= budget:
        return reasoning
    step = (n - SAMPLE_WIDTH) / (SAMPLE_WINDOWS - 1)
    return " ".join(
        reasoning[round(i * step) : round(i * step) + SAMPLE_WIDTH] for i in range(SAMPLE_WINDOWS)
    )


def estimated_tokens(reasoning: str | None) -> int:
    """A trace's tokens where the teacher did not report them (about 4 characters a token)."""
    return len(reasoning) // 4 if reasoning else 0


def compact_logprobs(content: list[dict[str, Any]] | None, k: int) -> list[dict[str, Any]] | None:
    """The `logprobs` column's value from an OpenAI `choices[0].logprobs.content` list: per token its
    text, its log-probability and its top-`k` alternatives (token, logprob), nothing else (`bytes`
    repeats the text and costs more than it)."""
    if content is None:
        return None
    return [
        {
            "token": e["token"],
            "logprob": float(e["logprob"]),
            "top": [
                {"token": t["token"], "logprob": float(t["logprob"])}
                for t in (e.get("top_logprobs") or [])[:k]
            ],
        }
        for e in content
    ]


__all__ = [
    "REASONING_FORMATS",
    "ReasoningFormat",
    "assistant_message",
    "compact_logprobs",
    "estimated_tokens",
    "split_think",
    "trace_digest",
    "trace_sample",
]
