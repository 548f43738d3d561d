"""Property tests for the invariants resume and dedup rest on: shards, the journal, the indexes."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gen.dedup import ExactDedup
from gen.ledger import Journal, read_journal
from gen.shards import ShardWriter, committed_shards

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
REJECT = st.fixed_dictionaries(
    {
        "id": st.text("0123456789abcdef", min_size=32, max_size=32),
        "reason": st.sampled_from(["invalid_json", "schema_validation", "teacher_error"]),
        "error": TEXT,
        "response": st.none() | TEXT,
        "reasoning": st.none() | TEXT,
        "vars": TEXT,
        "sample": st.integers(0, 5),
        "template": TEXT,
        "teacher_model": TEXT,
        "attempts": st.integers(0, 3),
        "created_at": st.integers(0, 2**40),
        "run_id": TEXT,
    }
)
FAST = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(st.lists(REJECT, max_size=40), st.integers(5, 25))
def test_shards_round_trip_every_row_once_in_order(tmp_path_factory, rows, per_shard) -> None:
    out = tmp_path_factory.mktemp("shards")
    committed: list[list] = []

    async def write() -> None:
        writer = ShardWriter(out, rows_per_shard=per_shard, batch_rows=7,
                             on_checkpoint=lambda shards, token: committed.append(shards))  # fmt: skip
        for i, row in enumerate(rows):
            if writer.add("rejects", row) or i % 17 == 16:
                await writer.checkpoint()
        await writer.close([])

    asyncio.run(write())
    read = [r for rel in committed_shards(out) for r in pq.read_table(out / rel).to_pylist()]
    for r in read:
        r["created_at"] = round(r["created_at"].timestamp() * 1000)
    assert read == rows
    assert all(pq.ParquetFile(out / rel).metadata.num_rows <= per_shard for rel in committed_shards(out))
    assert sum(s.rows for s in committed[-1]) == len(rows)


@FAST
@given(st.lists(st.dictionaries(st.sampled_from("abc"), TEXT), min_size=1, max_size=30), st.integers(0, 200))
def test_journal_replays_every_whole_entry_even_when_torn(tmp_path_factory, entries, cut) -> None:
    out = tmp_path_factory.mktemp("journal")
    rows = [{"id": f"{i:032x}", **e} for i, e in enumerate(entries)]

    async def write() -> None:
        journal = Journal(out, "run")
        for i, row in enumerate(rows):
            journal.append("train", row)
            if i % 5 == 4:
                await asyncio.sleep(0)  # a tick: the queued entries are written
        journal.close()

    asyncio.run(write())
    segment = next((out / "journal").glob("*.jsonl"))
    data = segment.read_bytes()
    torn = data[: max(0, len(data) - cut)]  # killed mid-write: the tail of the last entry is missing
    segment.write_bytes(torn)
    replayed = [row for _, row in read_journal(out)]
    whole = torn.count(b"\n")
    tail = torn[torn.rfind(b"\n") + 1 :]
    if tail and tail == data.splitlines()[whole]:
        whole += 1  # only the newline was lost: the entry itself is whole, and replayed
    assert replayed == rows[:whole]


@given(st.lists(TEXT, max_size=50), st.randoms())
def test_exact_dedup_keeps_one_of_each_normalised_text_in_any_order(texts, rnd) -> None:
    def kept(order: list[str]) -> set[str]:
        d = ExactDedup()
        return {" ".join(t.casefold().split()) for t in order if d.add(t) is None}

    shuffled = texts[:]
    rnd.shuffle(shuffled)
    assert kept(texts) == kept(shuffled) == {" ".join(t.casefold().split()) for t in texts}
    again = ExactDedup()
    for t in texts:
        again.add(t)
    assert all(again.add(t) is not None for t in texts)  # idempotent: the second pass keeps nothing


def test_a_finished_output_has_no_temporary_files(tmp_path: Path) -> None:
    from gen import RunOptions, run

    out = tmp_path / "o"
    run(
        Path(__file__).parents[1] / "prompts" / "quickstart.toml",
        RunOptions(output=out, progress=False, limit=30),
    )
    leftovers = [p for p in out.rglob("*") if ".tmp-" in p.name or p.suffix == ".jsonl"]
    assert leftovers == []
    manifest = json.loads((out / "manifest.json").read_text())
    assert {s["path"] for s in manifest["shards"]} == set(committed_shards(out))
    assert os.access(out / "manifest.json", os.R_OK)


@pytest.mark.parametrize("fault", ["rate_429", "rate_500", "rate_503", "rate_drop", "rate_invalid_json",
                                   "rate_fenced_json"])  # fmt: skip
def test_each_fault_alone_loses_nothing(tmp_path: Path, sim_server, fault: str) -> None:
    from gen import RunOptions, run

    sim = sim_server(**{fault: 0.2}, retry_after_s=0.01, seed=11)
    result = run(Path(__file__).parents[1] / "prompts" / "quickstart.toml",
                 RunOptions(provider="openai", base_url=sim.base_url, output=tmp_path / "o", progress=False,
                            limit=40, max_retries=10))  # fmt: skip
    s = result.stats
    assert s.rows + s.rejects + s.duplicates == 40
    assert s.rejects <= 4  # 0.2 ** 3 * 40 = 0.3 expected: a task fails only if all three asks fail validation
    transport = fault in ("rate_429", "rate_500", "rate_503", "rate_drop")
    assert (s.retries > 0) == transport and (s.repairs > 0) == (fault == "rate_invalid_json")
