"""A reply made of many `<think>` blocks is split in time linear in its length: split_think runs on the
event loop, and a hostile teacher may send megabytes of tags within the reply cap (a 40,000-token
thinking budget allows ~5 MB). Taking each block off a copy of the rest made it quadratic: 3.2 MB of
repeated blocks took 42 s on the development VM, and unbalanced nested ones longer."""

from __future__ import annotations

import time

from gen.reasoning import split_think

# Generous: the linear split takes ~0.2 s here for the largest case; the quadratic one took 42 s.
BOUND_S = 8.0


def test_two_hundred_thousand_repeated_blocks_split_fast() -> None:
    text = "<think>a</think>\n" * 200_000 + "the answer"
    started = time.perf_counter()
    trace, answer = split_think(text)
    assert time.perf_counter() - started < BOUND_S
    assert answer == "the answer"
    assert trace == "\n\n".join(["a"] * 200_000)


def test_unbalanced_nested_blocks_split_fast() -> None:
    # every block opens twice and closes once: none balances, each ends at its first </think>
    text = "<think><think>a</think>" * 100_000 + "the answer"
    started = time.perf_counter()
    trace, answer = split_think(text)
    assert time.perf_counter() - started < BOUND_S
    assert answer == "the answer"
    assert trace is not None and trace.count("a") == 100_000


def test_r1_style_head_then_many_blocks_split_fast() -> None:
    text = "first</think>" + "<think>b</think>" * 100_000 + " the answer"
    started = time.perf_counter()
    trace, answer = split_think(text)
    assert time.perf_counter() - started < BOUND_S
    assert answer == "the answer"
    assert trace is not None and trace.startswith("first\n\nb") and trace.count("b") == 100_000
