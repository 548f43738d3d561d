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

Dedup sees the trace through two keys (gen.dedup): an 8-byte hash of its bytes for the exact check,
and `trace_sample`, a bounded sample of its text, for the near check, so the near check costs the same
for a trace of 2,000 tokens or of 30,000.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final, Literal

import orjson
import xxhash

ReasoningFormat = Literal["field", "think-tags", "drop"]
REASONING_FORMATS: Final = ("field", "think-tags", "drop")
"""How the trace enters the assistant message of `messages`:
    field       `reasoning_content` beside `content` (what recent chat templates read);
    think-tags  `content` = "<think>\\n" + trace + "\\n</think>\\n\\n" + answer (R1-style distillation);
    drop        the answer alone (the trace stays in the `reasoning` column)."""

OPEN, CLOSE = "<think>", "</think>"

# The near check's sample of a trace: SAMPLE_WINDOWS windows of SAMPLE_WIDTH characters spread over it
# (the head and the tail among them), ~85 words whatever the trace's length: the near check's cost per
# row then stays within a few times that of a short answer (bench/reasoning.py; recall of near copies
# in bench/trace_recall.py). An edit (a sentence
# changed, added or dropped) moves the text after it; so that windows land on the same text in two
# near-identical traces, each window's nominal offset is a multiple of SAMPLE_REACH counted from the
# head (the first half of the windows) or from the tail (the second half), and the window then starts
# at the whole sentence (else line, else word) of the SAMPLE_REACH characters from that offset whose
# first SAMPLE_HEAD characters have the greatest XXH3, text seldom repeated: text the edit did not move
# gives the same windows, and text it moved by a few dozen characters still does unless that sentence
# is in the moved-out part (probability about shift / SAMPLE_REACH), or the edit made or unmade the
# greatest head of the reach's ~12 sentences (about 2 in 12 of the edits that touch a sentence's head,
# a fifth of those in a reach). The anchor costs a split and a max() over SAMPLE_REACH characters,
# a few microseconds a window.
SAMPLE_WINDOWS = 4
SAMPLE_WIDTH = 128
SAMPLE_REACH = 1024
SAMPLE_HEAD = 16
SAMPLE_WHOLE = 2 * SAMPLE_REACH  # a trace up to this long (~500 tokens) is compared whole


def split_think(text: str) -> tuple[str | None, str]:
    """(the trace, the answer) of a text that may open with an inline `<think> ... </think>` block.

    The opening tag may be missing (R1-style chat templates put `<think>\\n` in the prompt, so the
    model's text starts inside the trace): then a `</think>` with no `<think>` before it ends the trace,
    unless it is inside the JSON document the text holds (one of its strings: `_in_json`). A trace that never
    closes (cut off at max_tokens) is all trace, with an empty answer. A block nested in the trace is
    part of it, and further blocks right after the first are trace too (joined by a blank line), so no
    tag is left at the head of the answer. A text without the tags is all answer (None, text)."""
    head = text.lstrip()
    if head.startswith(OPEN):
        text, traces, at = head, [], 0
    else:
        end = text.find(CLOSE)
        if end < 0 or OPEN in text[:end] or _in_json(text, end):
            return None, text
        traces, at = [text[:end].strip()], end + len(CLOSE)
    at, closed = _blocks(text, at, traces)
    return "\n\n".join(t for t in traces if t), text[at:].strip() if closed else ""


_TAG = re.compile(r"<(/?)think>")
_BLANK = re.compile(r"\s*")


def _blocks(text: str, at: int, traces: list[str]) -> tuple[int, bool]:
    """Take the `<think>` blocks that follow one another from offset `at` of `text` (whitespace between
    them) into `traces`; returns where the answer starts and False when the last block never closes.

    A block ends at the `</think>` that balances it (a nested block is part of its trace), else, when
    none does (a trace that writes the tag as a word), at the first `</think>` after it. Every tag is
    found and matched in one pass (a stack), and the blocks are cut by offset: taking each block off a
    copy of the rest was quadratic, 42 s on 3.2 MB of repeated blocks a hostile teacher may send."""
    tags = [(m.start(), m.end(), bool(m.group(1))) for m in _TAG.finditer(text, at)]
    balancing = [-1] * len(tags)  # for an opening tag, the index of the closing tag that balances it
    opened: list[int] = []
    for i, (_, _, closing) in enumerate(tags):
        if not closing:
            opened.append(i)
        elif opened:
            balancing[opened.pop()] = i
    first_close = [-1] * len(tags)  # for a tag, the index of the first closing tag after it
    after = -1
    for i in range(len(tags) - 1, -1, -1):
        first_close[i] = after
        if tags[i][2]:
            after = i
    i = 0
    while i < len(tags) and not tags[i][2] and _BLANK.match(text, at).end() == tags[i][0]:
        close = balancing[i] if balancing[i] >= 0 else first_close[i]
        if close < 0:  # never closed: the rest is trace
            traces.append(text[tags[i][1] :].strip())
            return len(text), False
        traces.append(text[tags[i][1] : tags[close][0]].strip())
        at, i = tags[close][1], close + 1
    return at, True


_FENCED = re.compile(r"```(?:json|JSON)?[ \t]*\r?\n?(.*?)```", re.DOTALL)  # as gen.validate finds one


def _in_json(text: str, at: int) -> bool:
    """Whether offset `at` of `text` is inside the JSON document the text holds (the whole text, a
    ```json fence, or its outermost {...} / [...], as the validator finds it): a structured answer
    whose string values may hold a `</think>` of their own (a schema about markup), never a trace
    before it."""
    spans: list[tuple[int, int]] = []
    # A fence around `at` opens at the last one before it (a backtick looked for first: one character
    # is found at memchr's speed, "```" some 50 times slower, and most texts have none).
    fence = text.rfind("```", 0, at) if text.find("`", 0, at) >= 0 else -1
    m = _FENCED.match(text, fence) if fence >= 0 else None
    if m is not None:
        spans.append((m.start(1), m.end(1)))
    for open_, close in (("{", "}"), ("[", "]")):
        spans.append((text.find(open_), text.rfind(close) + 1))
    for start, stop in spans:
        if 0 <= start < at < stop:
            try:
                orjson.loads(text[start:stop])
            except orjson.JSONDecodeError:
                continue
            return True
    return False


def assistant_message(answer: str, reasoning: str | None, fmt: str) -> dict[str, Any]:
    """The assistant turn of `messages` in format `fmt` (REASONING_FORMATS). Every message struct of a
    dataset has the same fields: `reasoning_content` is null wherever there is none to carry."""
    if reasoning is not None and fmt == "think-tags":
        return {"role": "assistant", "content": f"{OPEN}\n{reasoning}\n{CLOSE}\n\n{answer}"}
    if reasoning is not None and fmt == "field":
        return {"role": "assistant", "content": answer, "reasoning_content": reasoning}
    return {"role": "assistant", "content": answer}


def journal_form(row: dict[str, Any], fmt: str) -> dict[str, Any]:
    """A data row as the journal keeps it: with the plain answer as its assistant message, since the
    `reasoning` column already holds the trace (the journal is written on the event loop, one answer at
    a time: a trace written twice there costs as much as the rest of the row). `restored` undoes it."""
    if fmt == "drop" or not row.get("reasoning"):
        return row
    answer = row["output"] if row["output"] is not None else row["response"]
    return {**row, "messages": [*row["messages"][:-1], {"role": "assistant", "content": answer}]}


def restored(row: dict[str, Any], fmt: str) -> dict[str, Any]:
    """A data row read back from the journal with its assistant message in format `fmt` again. The
    journal is read as untrusted: a row of the wrong shape is returned as it is, for the row check to
    refuse."""
    reasoning, messages = row.get("reasoning"), row.get("messages")
    answer = row.get("output") if row.get("output") is not None else row.get("response")
    if fmt == "drop" or not reasoning or not isinstance(reasoning, str) or not isinstance(answer, str):
        return row
    if not isinstance(messages, list) or not messages:
        return row
    return {**row, "messages": [*messages[:-1], assistant_message(answer, reasoning, fmt)]}


def trace_digest(reasoning: str | None) -> bytes:
    """8 bytes of a trace for the exact dedup key (empty for none): XXH3 of its bytes, not folded.
    Folding case and whitespace of 100 kB, or blake2b over it (~100 us for 32 kB on a busy core), costs
    more than the rest of a row; XXH3 reads it at memory speed (under 1 us for 32 kB). The key is 8
    bytes either way, as the answer's: a 64-bit digest, not a cryptographic one."""
    if not reasoning:
        return b""
    return xxhash.xxh3_64_digest(reasoning.encode())


def trace_sample(reasoning: str | None) -> str:
    """The part of a trace the near check compares: all of a short one, else SAMPLE_WINDOWS windows of
    SAMPLE_WIDTH characters, spread from its head to its tail, each anchored on its content (see
    SAMPLE_REACH). Bounded: at most SAMPLE_WHOLE characters."""
    if not reasoning:
        return ""
    if len(reasoning) <= SAMPLE_WHOLE:
        return reasoning  # compared whole: sampled, every edit would fall in a window's reach
    parts = []
    for start in _starts(len(reasoning)):
        at = start + _anchor(reasoning[start : start + SAMPLE_REACH])
        parts.append(reasoning[at : at + SAMPLE_WIDTH])
    return " ".join(parts)


def _starts(n: int) -> list[int]:
    """The nominal offsets of the windows of a trace of `n` > SAMPLE_WHOLE characters (their reaches)."""
    last = max(0, n - SAMPLE_WIDTH - SAMPLE_REACH)  # the last nominal offset
    span = last / (SAMPLE_WINDOWS - 1)
    half = (SAMPLE_WINDOWS + 1) // 2
    return [
        int(i * span) // SAMPLE_REACH * SAMPLE_REACH  # from the head
        if i < half
        else last - int((SAMPLE_WINDOWS - 1 - i) * span) // SAMPLE_REACH * SAMPLE_REACH  # from the tail
        for i in range(SAMPLE_WINDOWS)
    ]


def _starts_of(lengths: list[int]) -> list[list[int]]:
    """`_starts` of each length (all > SAMPLE_WHOLE), in numpy: the same float64 operations."""
    import numpy as np  # here, not at the top: `gen run`, `gen eval` and `gen sim` start without numpy

    last = np.maximum(np.array(lengths) - (SAMPLE_WIDTH + SAMPLE_REACH), 0)
    span = last / (SAMPLE_WINDOWS - 1)
    half = (SAMPLE_WINDOWS + 1) // 2
    columns = [
        (i * span).astype(np.int64) // SAMPLE_REACH * SAMPLE_REACH
        if i < half
        else last - ((SAMPLE_WINDOWS - 1 - i) * span).astype(np.int64) // SAMPLE_REACH * SAMPLE_REACH
        for i in range(SAMPLE_WINDOWS)
    ]
    return np.stack(columns, axis=1).tolist()


# Fewer sampled traces than this in one call are sampled one by one: numpy's cost per call is fixed.
_BATCH_MIN = 8
_CHUNK = 64  # traces sampled in numpy at once (their reaches 256 kB)
_DOT, _SPACE = ord("."), ord(" ")


def trace_samples(traces: Sequence[str | None]) -> list[str]:
    """`[trace_sample(t) for t in traces]`, the same strings, for a batch of rows at once (the near
    step's keys): the reaches of all ASCII traces' windows in one array, their sentence heads found
    and hashed in numpy (gen.xxh3_batch: the values xxhash gives), each reach's greatest head picked
    there; only the anchor's `find` and the windows' slices are per window. A reach without two
    sentence ends, and a trace that is not ASCII, are sampled as trace_sample does."""
    out: list[str] = []
    index: list[int] = []
    for i, t in enumerate(traces):
        if not t or len(t) <= SAMPLE_WHOLE or not t.isascii():
            out.append(trace_sample(t))
        else:
            out.append("")
            index.append(i)
    if len(index) < _BATCH_MIN:
        for i in index:
            out[i] = trace_sample(traces[i])
        return out
    sampled = [traces[i] for i in index]
    starts = _starts_of([len(t) for t in sampled])  # type: ignore[arg-type]
    todo = list(zip(index, sampled, starts, strict=True))
    chunks = -(-len(todo) // _CHUNK)  # of equal size: numpy's temporaries stay in cache
    size = -(-len(todo) // chunks)
    for c in range(0, len(todo), size):
        _sample_chunk(todo[c : c + size], out)
    return out


def _sample_chunk(todo: list[tuple[int, str, list[int]]], out: list[str]) -> None:
    """trace_samples for ASCII traces longer than SAMPLE_WHOLE: (index in `out`, trace, starts) each."""
    import numpy as np  # see _starts_of

    from gen.xxh3_batch import xxh3_short

    # Every reach is SAMPLE_REACH characters (a start is at most n - SAMPLE_WIDTH - SAMPLE_REACH), and
    # an ASCII trace's characters are its bytes: reach w is data[w * SAMPLE_REACH :][:SAMPLE_REACH].
    data = b"".join([t[s : s + SAMPLE_REACH].encode() for _, t, starts in todo for s in starts])
    flat = np.frombuffer(data, np.uint8)
    dots = np.flatnonzero(flat == _DOT)  # rare: then the byte after each (". " cannot overlap)
    dots = dots[dots % SAMPLE_REACH != SAMPLE_REACH - 1]  # a reach's last byte ends no sentence in it
    ends = dots[flat[dots + 1] == _SPACE]
    reach = ends // SAMPLE_REACH
    # The whole pieces are those between two sentence ends of one reach (split(". ")[1:-1]); a head is
    # a piece's first SAMPLE_HEAD bytes.
    pair = reach[:-1] == reach[1:]
    owner, head_at = reach[:-1][pair], ends[:-1][pair] + 2
    head_len = np.minimum(ends[1:][pair] - head_at, SAMPLE_HEAD)
    hashes = xxh3_short(flat, head_at, head_len)
    # Each reach's first greatest head (max() keeps the first of equals); heads are in reach order.
    chosen = np.full(len(todo) * SAMPLE_WINDOWS, -1)
    if len(owner):
        first = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
        best = np.maximum.reduceat(hashes, first)
        top = np.flatnonzero(hashes == np.repeat(best, np.diff(np.r_[first, len(owner)])))
        lead = np.r_[True, owner[top][1:] != owner[top][:-1]]
        chosen[owner[top][lead]] = top[lead]
    pick = chosen.tolist()
    at, length = (head_at[chosen].tolist(), head_len[chosen].tolist()) if len(owner) else (pick, pick)
    w = 0
    for i, t, starts in todo:
        parts = []
        for start in starts:
            if pick[w] < 0:  # no whole sentence in the reach: lines, else words
                start += _anchor(t[start : start + SAMPLE_REACH])
            else:
                base = w * SAMPLE_REACH
                start += data.find(data[at[w] : at[w] + length[w]], base, base + SAMPLE_REACH) - base
            parts.append(t[start : start + SAMPLE_WIDTH])
            w += 1
        out[i] = " ".join(parts)


def _anchor(reach: str) -> int:
    """Where in `reach` its window starts: the whole sentence (else line, else word) whose first
    SAMPLE_HEAD characters have the greatest XXH3 (the cut ones at the reach's ends change as it moves);
    0 if none. Byte for byte on an ASCII reach (its byte offsets are its character offsets): no str
    object per head to encode."""
    if reach.isascii():
        data = reach.encode()
        pieces = data.split(b". ")[1:-1] or data.split(b"\n")[1:-1]
        if pieces:
            return data.find(max([p[:SAMPLE_HEAD] for p in pieces], key=xxhash.xxh3_64_intdigest))
    pieces = reach.split(". ")[1:-1] or reach.split("\n")[1:-1] or reach.split()[1:-1]
    if not pieces:
        return 0
    heads = [piece[:SAMPLE_HEAD] for piece in pieces]
    return reach.find(max(heads, key=lambda head: xxhash.xxh3_64_intdigest(head.encode())))


def estimated_tokens(reasoning: str | None) -> int:
    """A trace's tokens where the teacher did not report them (about 4 characters a token)."""
    return len(reasoning) // 4 if reasoning else 0


def blank(trace: str | None) -> bool:
    """Whether a trace is none: missing, empty or whitespace only (an empty `<think></think>`, as Qwen3
    gives with thinking off). isspace, not strip: a trace ending in a newline is not copied to ask."""
    return not trace or trace.isspace()


def answer_logprobs(logprobs: list[dict[str, Any]], answer: str) -> list[dict[str, Any]]:
    """The entries of `logprobs` (compact_logprobs's) that spell `answer`, from the token its last
    occurrence starts in: a teacher that thinks inline (or a server that gives logprobs for every token
    it generated) sends the trace's tokens first. An empty answer has none; tokens that do not spell
    the answer are kept as sent (nothing to align them with)."""
    if not logprobs:
        return logprobs
    joined = "".join(e["token"] for e in logprobs)
    if joined == answer:
        return logprobs
    if not answer:
        return []
    start = joined.rfind(answer)
    if start < 0:
        return logprobs
    end = 0
    for i, e in enumerate(logprobs):
        end += len(e["token"])
        if end > start:
            return logprobs[i:]
    return logprobs


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
    "answer_logprobs",
    "assistant_message",
    "blank",
    "compact_logprobs",
    "estimated_tokens",
    "split_think",
    "trace_digest",
    "trace_sample",
    "trace_samples",
]
