"""Exact dedup's lookup of one digest in its sorted runs does not copy the runs: numpy compares a
uint64 array with a Python int below 2**63 by converting the whole array first (O(rows) time and a
temporary of its size per lookup, ~1 ms a row at a million rows), so the digest is given as uint64."""

from __future__ import annotations

import tracemalloc

import numpy as np

from gen.dedup import ExactDedup


def test_a_lookup_in_the_runs_allocates_nothing_of_the_runs_size() -> None:
    exact = ExactDedup()
    rng = np.random.default_rng(5)
    digests = rng.integers(1, 2**63, 400_000, dtype=np.uint64) * np.uint64(2)  # even: an odd one is new
    exact.load(digests, np.arange(digests.size, dtype=np.uint64))
    small, big = 2**40 + 1, 2**63 + 3  # below and above 2**63, neither present
    known = int(digests[123])
    tracemalloc.start()
    try:
        for d in (small, big, known):
            tracemalloc.reset_peak()
            found = exact.add_digest(d, 7)
            assert found == (123 if d == known else None)
            _, peak = tracemalloc.get_traced_memory()
            assert peak < 400_000, (d, peak)  # the runs are 3.2 MB; one lookup needs a few hundred bytes
    finally:
        tracemalloc.stop()
