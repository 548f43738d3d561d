"""The journal writes a tick's entries in pieces of whole entries of at most 1 MiB (one entry larger than
that alone): Linux caches a write in folios as large as the write, up to 2 MB, and on a VM whose host
takes back freed memory a tick of 64 answers with 40 kB traces cost twice as much in one writev
(bench/README.md, `reasoning.py`). Every entry is still on disk, whole, when the tick's write returns."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from gen import ledger
from gen.ledger import Entry, Journal, journal_entries


@pytest.fixture
def writevs(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """The buffer sizes of every os.writev the journal makes (each still written: this only watches)."""
    calls: list[list[int]] = []
    real = os.writev

    def watch(fd: int, buffers: list[bytes]) -> int:
        calls.append([len(b) for b in buffers])
        return real(fd, buffers)

    monkeypatch.setattr(ledger.os, "writev", watch)
    return calls


def _row(i: int, size: int) -> dict[str, object]:
    return {"id": f"{i:032x}", "response": "42", "reasoning": f"step {i} " + "x" * size}


def test_a_tick_of_long_answers_is_written_in_pieces(tmp_path: Path, writevs: list[list[int]]) -> None:
    rows = [_row(i, 40_000) for i in range(64)] + [_row(64, 1_500_000)] + [_row(65, 10)]

    async def tick() -> int:
        journal = Journal(tmp_path, "run")
        for row in rows:  # one tick: no await between them
            journal.append("train", row, (10, 20))
        journal.reserve("f" * 32, (10, 100))  # writes the tick's entries with it, before it returns
        on_disk = journal.path.stat().st_size
        journal.close()
        return on_disk

    on_disk = asyncio.run(tick())
    sizes = [sum(call) for call in writevs]
    assert sum(sizes) == on_disk, "an entry was not on disk when reserve() returned"
    assert len(writevs) > 2 and all(len(call) % 2 == 0 for call in writevs)  # whole entries in each
    assert all(size <= 1 << 20 or len(call) == 2 for size, call in zip(sizes, writevs, strict=True)), sizes
    entries = list(journal_entries(tmp_path))
    assert all(isinstance(e, Entry) for e in entries)
    assert [e.row for e in entries if e.row is not None] == rows
    assert entries[-1].task_id == "f" * 32


def test_a_tick_of_short_answers_is_one_write(tmp_path: Path, writevs: list[list[int]]) -> None:
    async def tick() -> None:
        journal = Journal(tmp_path, "run")
        for i in range(100):
            journal.append("train", _row(i, 100), (10, 20))
        journal.close()

    asyncio.run(tick())
    assert len(writevs) == 1 and len(writevs[0]) == 200
    assert len(list(journal_entries(tmp_path))) == 100
