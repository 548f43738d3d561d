"""A dedup index segment (`index/<shard>.gidx`) reaches the kernel in writes of at most 1 MiB, as shards
do (tests/test_shard_write_pieces.py): a 50,000-row shard's MinHash signatures alone are ~6 MB, and a
write of 2 MB or more is cached in 2 MB folios, which a VM whose host takes back freed memory faults in
from the host. The segment reads back the same."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gen import dedup_index

SETTINGS = {"on": "example", "near": {"bands": 16, "rows": 8, "seed": 1}}


class _Watched:
    """A file whose write() sizes are recorded (each still written)."""

    def __init__(self, f: Any, sizes: list[int]) -> None:
        self._f, self._sizes = f, sizes

    def write(self, data: Any) -> int:
        self._sizes.append(len(memoryview(data).cast("B")))
        return self._f.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> _Watched:
        self._f.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._f.__exit__(*exc)


def test_a_large_segment_is_written_in_pieces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []
    monkeypatch.setattr(dedup_index, "open", lambda *a, **k: _Watched(open(*a, **k), sizes), raising=False)
    rng = np.random.default_rng(7)
    rows = 50_000
    ids = rng.integers(0, 2**63, rows, dtype=np.uint64)
    exact = rng.integers(0, 2**63, rows, dtype=np.uint64)
    sig = rng.integers(0, 256, (rows, 128), dtype=np.uint8)  # 6.4 MB
    bands = np.sort(rng.integers(0, 2**63, rows * 16, dtype=np.uint64))  # 6.4 MB
    seg = dedup_index.Segment(ids, exact, sig, bands)
    dedup_index.write(tmp_path, "data/train-00000.parquet", "ab" * 32, SETTINGS, seg)
    (path,) = (tmp_path / "index").glob("*.gidx")
    assert sum(sizes) == path.stat().st_size
    assert max(sizes) <= 1 << 20, f"a write of {max(sizes):,} bytes"
    monkeypatch.undo()  # read through the real open()
    back, why = dedup_index.read(tmp_path, "data/train-00000.parquet", "ab" * 32, SETTINGS)
    assert why is None and back is not None
    for name in ("ids", "exact", "sig", "bands"):
        assert np.array_equal(getattr(back, name), getattr(seg, name)), name
