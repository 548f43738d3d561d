"""The band table's large runs keep 6 bytes an entry (issue 16): the bucket gives a fingerprint's top
bits, a uint16 its rest, a uint32 the row. Lookups must find exactly the equal fingerprints, through
merges (a run turned back into entries) and runs loaded sorted, as with 8-byte entries."""

from __future__ import annotations

import numpy as np
import pytest

from gen import near_dedup
from gen.near_dedup import BandRuns


@pytest.fixture(autouse=True)
def compact_from_131072(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs of 131,072 entries and more are compact here (gen's own bound is ~1M), so the tests stay
    small; smaller runs keep 8-byte entries either way."""
    monkeypatch.setattr(near_dedup, "_COMPACT_MIN", 1 << 17)


def test_large_compact_runs_find_every_equal_fingerprint_and_nothing_else() -> None:
    rng = np.random.default_rng(3)
    runs = BandRuns()
    stored, row = [], 0
    for i, size in enumerate([200_000, 60_000, 9, 150_000, 40_000, 300_000]):
        # Fingerprints that share their top 16 bits and differ below, or the reverse: the stored rest
        # and the bucket must both count. Some equal across runs.
        fps = rng.integers(0, 2**32, size, dtype=np.uint64)
        fps[: size // 4] = (fps[: size // 4] & np.uint64(0xFFFF)) | np.uint64(0xABCD0000)
        fps[size // 4 : size // 2] = (fps[size // 4 : size // 2] & np.uint64(0xFFFF0000)) | np.uint64(0x1234)
        fps[size // 2 : size // 2 + 50] = np.uint64(0xDEADBEEF)
        entries = (fps << np.uint64(32)) | np.arange(row, row + size, dtype=np.uint64)
        if i in (3, 4):
            runs.add(np.sort(entries), presorted=True)
        else:
            runs.add(entries)
        stored.append(entries)
        row += size
    assert any(r.rest.dtype == np.uint16 for r in runs.runs)  # the 6-byte layout is what is tested
    # So many fingerprints in a few buckets that a block's offsets overflow uint16: the plain table.
    assert any(r.base is None and r.bits > 12 for r in runs.runs)
    assert runs.size == row
    everything = np.sort(np.concatenate(stored))
    fp_all = everything >> np.uint64(32)
    queries = np.concatenate(
        [
            fp_all[rng.integers(0, row, 3000)],  # present
            rng.integers(0, 2**32, 3000, dtype=np.uint64),  # mostly absent
            np.array([0xDEADBEEF, 0xABCD0000, 0x1234, 0, 2**32 - 1], np.uint64),
        ]
    )
    q, rows = runs.lookup(queries.astype(np.uint32))
    got = sorted(zip(q.tolist(), rows.tolist(), strict=True))
    lo = np.searchsorted(fp_all, queries, "left")
    hi = np.searchsorted(fp_all, queries, "right")
    want = sorted(
        (i, int(e) & 0xFFFFFFFF) for i in range(queries.size) for e in everything[lo[i] : hi[i]].tolist()
    )
    assert got == want and len(want) > 3000
    # The merged runs hold the entries they were given, in order.
    merged = np.sort(np.concatenate([r.entries() for r in runs.runs]))
    assert np.array_equal(merged, everything)


def test_uniform_fingerprints_get_the_two_byte_bucket_table_and_find_the_same() -> None:
    rng = np.random.default_rng(4)
    runs = BandRuns()
    stored, row = [], 0
    for size in [300_000, 80_000, 20_000, 5]:
        fps = rng.integers(0, 2**32, size, dtype=np.uint64)
        fps[:20] = np.uint64(0x0BADF00D)  # a few equal across runs
        entries = (fps << np.uint64(32)) | np.arange(row, row + size, dtype=np.uint64)
        runs.add(entries)
        stored.append(entries)
        row += size
    assert any(r.base is not None and r.starts.dtype == np.uint16 for r in runs.runs)
    everything = np.sort(np.concatenate(stored))
    fp_all = everything >> np.uint64(32)
    queries = np.concatenate(
        [fp_all[rng.integers(0, row, 5000)], rng.integers(0, 2**32, 5000, dtype=np.uint64)]
        + [np.array([0x0BADF00D, 0, 2**32 - 1], np.uint64)]
    )
    q, rows = runs.lookup(queries.astype(np.uint32))
    lo = np.searchsorted(fp_all, queries, "left")
    hi = np.searchsorted(fp_all, queries, "right")
    want = sorted(
        (i, int(e) & 0xFFFFFFFF) for i in range(queries.size) for e in everything[lo[i] : hi[i]].tolist()
    )
    assert sorted(zip(q.tolist(), rows.tolist(), strict=True)) == want
    assert np.array_equal(np.sort(np.concatenate([r.entries() for r in runs.runs])), everything)
