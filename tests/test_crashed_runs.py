"""Rows of a run that died before it wrote its first manifest still audit clean once a later run resumes.

The first manifest is written by the writer thread while the first requests are already out, so a kill
can leave committed shards (a crash between rename and manifest write) or journaled answers whose
run_id no manifest names. The resuming run records those runs in `runs`; audit must not call them foreign.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import orjson
import pyarrow.parquet as pq
from test_resume import _recipe

from gen import RunOptions, run
from gen.audit import audit
from gen.ledger import Journal
from gen.shards import committed_shards, split_of_path


def test_shards_of_a_run_without_a_manifest_audit_clean_after_resume(tmp_path: Path, sim_server) -> None:
    prompt = _recipe(tmp_path, n=40)
    sim = sim_server()
    out = tmp_path / "o"
    first = run(prompt, RunOptions(base_url=sim.base_url, output=out, progress=False, limit=20))
    assert first.status == "complete"
    (out / "manifest.json").unlink()  # as if killed between the shard's rename and the manifest write
    (out / "README.md").unlink()
    second = run(prompt, RunOptions(base_url=sim.base_url, output=out, progress=False))
    assert second.status == "complete" and second.stats.skipped == 20
    manifest = json.loads((out / "manifest.json").read_text())
    crashed = [r for r in manifest["runs"] if r["run_id"] == first.run_id]
    assert crashed and crashed[0]["status"] == "crashed"
    report = audit(out)
    assert report.clean, [str(f) for f in report.findings]


def test_journaled_answers_of_a_run_without_a_manifest_audit_clean(tmp_path: Path, sim_server) -> None:
    prompt = _recipe(tmp_path, n=30)
    sim = sim_server()
    done = tmp_path / "done"
    first = run(prompt, RunOptions(base_url=sim.base_url, output=done, progress=False, limit=10))
    # The first run's answers, journaled under its run id in a fresh output that has no manifest yet.
    out = tmp_path / "o"

    async def write() -> None:  # the journal queues entries for the event loop's next tick
        journal = Journal(out, first.run_id)
        for rel in committed_shards(done):
            if split_of_path(rel) in ("train", "eval"):
                for row in pq.read_table(done / rel).to_pylist():
                    row["created_at"] = int(row["created_at"].timestamp() * 1000)  # as journaled: ms
                    journal.append(split_of_path(rel), row, (row["prompt_tokens"], row["completion_tokens"]))
        journal.close()

    asyncio.run(write())
    assert not (out / "manifest.json").exists()
    second = run(prompt, RunOptions(base_url=sim.base_url, output=out, progress=False))
    assert second.status == "complete" and second.stats.replayed == 10
    report = audit(out)
    assert report.clean, [str(f) for f in report.findings]


def test_a_journal_written_before_entries_were_sealed_is_replayed_not_paid_again(
    tmp_path: Path, sim_server
) -> None:
    """An output left unfinished by the previous gen (journal lines `{"s", "r"}`, no checksum, no
    `journal_committed` in its manifest) resumes from its journal: those answers were paid for."""
    prompt = _recipe(tmp_path, n=30)
    sim = sim_server()
    whole = tmp_path / "whole"
    run(prompt, RunOptions(base_url=sim.base_url, output=whole, progress=False))
    out = tmp_path / "o"
    run(prompt, RunOptions(base_url=sim.base_url, output=out, progress=False, limit=10))
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["journal_committed"]  # as the previous version wrote it
    (out / "manifest.json").write_text(json.dumps(manifest))
    done = {r["id"] for r in pq.read_table(out / "data").to_pylist()}
    old = []
    for rel in committed_shards(whole):
        if split_of_path(rel) in ("train", "eval"):
            for row in pq.read_table(whole / rel).to_pylist():
                if row["id"] not in done and len(old) < 12:
                    row["created_at"] = int(row["created_at"].timestamp() * 1000)
                    old.append(orjson.dumps({"s": split_of_path(rel), "r": row}) + b"\n")
    (out / "journal").mkdir(exist_ok=True)
    (out / "journal" / "20261101T000000Z-abcdef-00000.jsonl").write_bytes(b"".join(old))
    before = sim.stats()["requests"]
    result = run(prompt, RunOptions(base_url=sim.base_url, output=out, progress=False))
    assert result.status == "complete" and result.stats.replayed == 12 and result.stats.journal_skipped == 0
    assert sim.stats()["requests"] - before == 30 - 10 - 12
    assert audit(out).clean
