"""gen.xxh3_batch: numpy's XXH3-64 of short byte strings is xxhash's, value for value (the trace
sample's anchors, and so the near check's decisions, rest on it)."""

from __future__ import annotations

import random

import numpy as np
import xxhash

from gen.xxh3_batch import MAX_LEN, xxh3_short


def _expected(data: bytes, starts: list[int], lengths: list[int]) -> list[int]:
    return [xxhash.xxh3_64_intdigest(data[s : s + n]) for s, n in zip(starts, lengths, strict=True)]


def test_every_length_at_every_kind_of_offset_matches_xxhash() -> None:
    rng = random.Random(14)
    data = rng.randbytes(4096)
    buf = np.frombuffer(data, np.uint8)
    starts, lengths = [], []
    for n in range(MAX_LEN + 1):
        edges = [0, 1, 7, 8, len(data) - n, len(data) - n - 1]
        for s in edges + [rng.randrange(len(data) - n) for _ in range(300)]:
            starts.append(s)
            lengths.append(n)
    got = xxh3_short(buf, np.array(starts), np.array(lengths))
    assert got.dtype == np.uint64
    assert got.tolist() == _expected(data, starts, lengths)


def test_one_length_class_alone_and_a_tiny_buffer() -> None:
    rng = random.Random(15)
    data = rng.randbytes(512)
    buf = np.frombuffer(data, np.uint8)
    for lengths in ([16] * 50, [9, 12, 16] * 20, [0] * 5, [3, 1, 2], [4, 8, 5]):
        starts = [rng.randrange(len(data) - n) for n in lengths]
        got = xxh3_short(buf, np.array(starts), np.array(lengths))
        assert got.tolist() == _expected(data, starts, lengths)
    for size in range(0, 17):
        small = rng.randbytes(size)
        lengths = list(range(size + 1))
        starts = [0] * len(lengths)
        got = xxh3_short(np.frombuffer(small, np.uint8), np.array(starts), np.array(lengths))
        assert got.tolist() == _expected(small, starts, lengths)
    assert xxh3_short(buf, np.array([], np.int64), np.array([], np.int64)).tolist() == []


def test_text_heads_match_xxhash() -> None:
    """Sentence heads as the trace sample hashes them: ASCII text, and UTF-8 bytes of other scripts."""
    rng = random.Random(16)
    words = ["Wait.", "so x = 3", "émigré", "数学", "\\boxed{42}", "ok"]
    text = " ".join(rng.choice(words) for _ in range(2000))
    data = text.encode()
    starts = [rng.randrange(len(data) - MAX_LEN) for _ in range(5000)]
    lengths = [rng.randrange(MAX_LEN + 1) for _ in starts]
    got = xxh3_short(np.frombuffer(data, np.uint8), np.array(starts), np.array(lengths))
    assert got.tolist() == _expected(data, starts, lengths)
