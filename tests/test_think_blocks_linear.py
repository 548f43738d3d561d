"""A reply made of many `<think>` blocks is split in time linear in its length: split_think runs on the
event loop, and a hostile teacher may send megabytes of tags within the reply cap (a 40,000-token
thinking budget allows ~5 MB). Taking each block off a copy of the rest made it quadratic: 3.2 MB of
repeated blocks took 42 s on the development VM, and unbalanced nested ones longer."""

from __future__ import annotations

import time

import pytest

from gen.reasoning import split_think

# Generous: the linear split takes ~0.2 s here for the largest case; the quadratic one took 42 s.
BOUND_S = 8.0


@pytest.mark.parametrize(
    ("text", "first", "pieces"),
    [
        ("<think>a</think>\n" * 200_000, "a", 200_000),  # repeated blocks
        ("<think><think>a</think>" * 100_000, "<think>a", 100_000),  # none balances
        ("first</think>" + "<think>a</think>" * 100_000, "first", 100_000),  # R1 style, then blocks
    ],
)
def test_many_blocks_split_fast(text: str, first: str, pieces: int) -> None:
    started = time.perf_counter()
    trace, answer = split_think(text + " the answer")
    assert time.perf_counter() - started < BOUND_S
    assert answer == "the answer"
    assert trace is not None and trace.startswith(first) and trace.count("a") == pieces
