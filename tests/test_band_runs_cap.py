"""No merge of the band table makes a run larger than `_RUN_MAX` (issue 16's 1 GB at 1,000,000 tasks):
a merge holds the runs it merges several times over, so merging everything into one run was a spike of
~470 MB over the steady RSS at a million rows. Past the cap the table is a list of capped runs, and a
lookup must still find every equal fingerprint in all of them."""

from __future__ import annotations

import numpy as np
import pytest

from gen import near_dedup
from gen.near_dedup import BandRuns

CAP = 1 << 15


@pytest.fixture(autouse=True)
def small_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    # raising=False: on a gen without the cap the attribute is new, and the test shows the merge growing.
    monkeypatch.setattr(near_dedup, "_RUN_MAX", CAP, raising=False)


def test_merges_stop_at_the_cap_and_lookups_still_see_every_run() -> None:
    rng = np.random.default_rng(7)
    runs = BandRuns()
    stored, row = [], 0
    for _ in range(60):  # 60 batches of 4,000 entries: 240,000, over 7 times the cap
        fps = rng.integers(0, 2**20, 4000, dtype=np.uint64)  # few distinct values: many equal across runs
        entries = (fps << np.uint64(32)) | np.arange(row, row + fps.size, dtype=np.uint64)
        runs.add(entries)
        stored.append(entries)
        row += fps.size
    sizes = [r.size for r in runs.runs]
    assert max(sizes) <= CAP, sizes
    assert sum(sizes) == row
    allfp = np.concatenate(stored) >> np.uint64(32)
    allrow = np.concatenate(stored) & np.uint64(0xFFFFFFFF)
    needles = np.concatenate([allfp[rng.integers(0, row, 300)], rng.integers(0, 2**20, 50, dtype=np.uint64)])
    q, rows = runs.lookup(needles)
    for i, fp in enumerate(needles):
        want = set(allrow[allfp == fp].tolist())
        assert set(rows[q == i].tolist()) == want
