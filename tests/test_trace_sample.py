"""The near check's sample of a long trace (issue 14, Numbers: its cost must not depend on the trace's
length): narrower windows and an anchor found on bytes must still catch near-identical traces whatever
their final answers, and never take two different traces for one because they share `\\boxed{42}`."""

from __future__ import annotations

import json
import random

import xxhash

from gen.dedup import Deduplicator
from gen.reasoning import SAMPLE_HEAD, SAMPLE_REACH, SAMPLE_WHOLE, _anchor, trace_sample
from gen.sim.instances import VOCAB
from gen.sim.reasoning import _pool


def _trace(rng: random.Random, tokens: int = 8_000) -> str:
    return " ".join(rng.choices(_pool(), k=tokens * 4 // 80))


def _near_copy(rng: random.Random, trace: str) -> str:
    words = trace.split(" ")
    for i in rng.sample(range(len(words)), 2):
        words[i] = rng.choice(VOCAB)
    return " ".join(words)


def _row(i: int, trace: str, answer: str) -> dict:
    problem = "What is six times seven?"
    return {
        "id": f"{i:064x}",
        "messages": [{"role": "user", "content": problem}, {"role": "assistant", "content": answer}],
        "output": None,
        "response": answer,
        "vars": json.dumps({"problem": problem}),
        "reasoning": trace,
    }


def _second_is_near(a: dict, b: dict, on: str) -> bool:
    decisions = Deduplicator(on=on).check_batch([a, b])
    return decisions[1] is not None and decisions[1].kind == "near"


def test_near_identical_traces_with_different_short_answers_are_duplicates() -> None:
    """MinHash estimates: a few pairs in a hundred fall under the threshold (bench/trace_recall.py), so
    this asks for nine in ten of 40 fixed pairs; with the answers alone none would be."""
    rng = random.Random(14)
    for on in ("example", "output"):
        caught = 0
        for i in range(40):
            trace = _trace(rng)
            a, b = _row(2 * i, trace, "\\boxed{41}"), _row(2 * i + 1, _near_copy(rng, trace), "\\boxed{42}")
            caught += _second_is_near(a, b, on)
        assert caught >= 36, (on, caught)


def test_different_traces_sharing_a_boxed_answer_are_not_duplicates() -> None:
    rng = random.Random(15)
    for on in ("example", "output"):
        for i in range(20):
            a, b = _row(2 * i, _trace(rng), "\\boxed{42}"), _row(2 * i + 1, _trace(rng), "\\boxed{42}")
            assert Deduplicator(on=on).check_batch([a, b]) == [None, None], (on, i)


def _anchor_of_text(reach: str) -> int:
    """The anchor as the str path finds it: the sentence (else line, else word) whose head hashes highest."""
    pieces = reach.split(". ")[1:-1] or reach.split("\n")[1:-1] or reach.split()[1:-1]
    if not pieces:
        return 0
    heads = [p[:SAMPLE_HEAD] for p in pieces]
    _, head = max(zip((xxhash.xxh3_64_intdigest(h.encode()) for h in heads), heads, strict=True))
    return reach.find(head)


def test_the_anchor_found_on_bytes_is_the_one_found_on_text() -> None:
    rng = random.Random(16)
    for _ in range(200):
        text = _trace(rng, 600)
        start = rng.randrange(len(text) - SAMPLE_REACH)
        reach = text[start : start + SAMPLE_REACH]
        for variant in (reach, reach.replace(". ", "\n"), reach.replace(". ", " "), reach[:40]):
            assert variant.isascii()
            assert _anchor(variant) == _anchor_of_text(variant)
    accented = "Où est-il. Là-bas. " * 60  # not ASCII: found on the text itself
    assert _anchor(accented[:SAMPLE_REACH]) == _anchor_of_text(accented[:SAMPLE_REACH])


def test_the_sample_is_bounded_and_taken_from_the_trace() -> None:
    rng = random.Random(17)
    for tokens in (600, 8_000, 30_000):
        trace = _trace(rng, tokens)
        sample = trace_sample(trace)
        assert len(sample) <= SAMPLE_WHOLE
        assert all(part in trace for part in sample.split(" ") if part)
