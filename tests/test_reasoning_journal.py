"""The journal's vectored write (issue 14, Numbers): an entry holding a long trace leaves as its JSON and
its checksum's tail, without being copied into one line first. The bytes on disk stay exactly the sealed
lines, in order, however many entries one event-loop tick queues."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gen.ledger import Journal, journal_entries, journal_segments, read_journal, seal


def test_a_tick_of_entries_is_written_as_sealed_lines(tmp_path: Path) -> None:
    trace = "we check each step. " * 2_000  # a 40 kB trace
    rows = [{"id": f"{i:032x}", "reasoning": trace if i % 3 else None, "n": i} for i in range(1_500)]

    async def go() -> None:
        journal = Journal(tmp_path, "run")
        for i, row in enumerate(rows):  # more entries in one tick than one writev takes
            journal.append("train", row, (i, 2 * i))
            if i % 500 == 7:
                journal.reserve(row["id"], (10, 20), write=False)
        await asyncio.sleep(0)  # the tick ends: its entries are written
        journal.close()

    asyncio.run(go())
    want = []
    for i, row in enumerate(rows):
        want.append(seal({"s": "train", "r": row, "u": (i, 2 * i)}))
        if i % 500 == 7:
            want.append(seal({"q": row["id"], "e": (10, 20)}))
    (segment,) = journal_segments(tmp_path)
    assert segment.read_bytes() == b"".join(want)
    assert [row for _, row in read_journal(tmp_path)] == rows
    assert sum(1 for e in journal_entries(tmp_path) if getattr(e, "estimate", None)) == 3  # reservations
