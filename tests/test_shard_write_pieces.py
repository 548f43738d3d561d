"""A shard (or any file gen commits atomically) reaches the kernel in writes of at most 1 MiB: Linux
caches a write's bytes in folios as large as the write, up to 2 MB, and on a VM whose host takes back
freed memory those were faulted in from the host, ~50x slower than 1 MiB writes (a 20 MB shard: ~250 ms
of system time against 5; bench/README.md, `reasoning.py`). The file's bytes are the same."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from gen import shards


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every os.write gen.shards makes (each still written: this only watches)."""
    sizes: list[int] = []
    real = os.write

    def watch(fd: int, data: bytes) -> int:
        sizes.append(len(memoryview(data)))
        return real(fd, data)

    monkeypatch.setattr(shards.os, "write", watch)
    return sizes


def test_a_large_shard_is_written_in_pieces(tmp_path: Path, writes: list[int]) -> None:
    pa = shards._pyarrow()
    rng = random.Random(3)
    data = pa.py_buffer(rng.randbytes(5 * (1 << 20) + 123))  # what write_table hands over: an Arrow buffer
    target = tmp_path / "data" / "train-00000.parquet"
    target.parent.mkdir()
    shards.atomic_write_bytes(target, data)
    assert target.read_bytes() == data.to_pybytes()
    assert sum(writes) == data.size, "the shard's bytes did not go through os.write"
    assert max(writes) <= 1 << 20, f"a write of {max(writes):,} bytes"
    assert not [p for p in target.parent.iterdir() if p != target], "a temporary file was left behind"


def test_a_shard_from_write_table_is_the_same_in_pieces(tmp_path: Path, writes: list[int]) -> None:
    """The real path: a table of 8,000-token traces through write_table, then read back."""
    pa = shards._pyarrow()
    rng = random.Random(5)
    words = ["so", "the", "answer", "is", "we", "compute", "x", "=", "3", "then", "because", "hence"]
    traces = ["".join(rng.choice(words) + " " for _ in range(4000)) + str(i) for i in range(300)]
    (tmp_path / "data").mkdir()
    info = shards.write_table(tmp_path, "data/t.parquet", pa.table({"reasoning": traces}))
    assert sum(writes) == (tmp_path / "data" / "t.parquet").stat().st_size == info.bytes
    assert max(writes) <= 1 << 20
    assert pa.parquet.read_table(tmp_path / "data" / "t.parquet").column("reasoning").to_pylist() == traces


def test_an_empty_file_is_written(tmp_path: Path, writes: list[int]) -> None:
    shards.atomic_write_bytes(tmp_path / "empty", b"")
    assert (tmp_path / "empty").read_bytes() == b""
    assert writes == []
