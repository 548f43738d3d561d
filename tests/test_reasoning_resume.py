"""Row schema 2 (reasoning, reasoning_tokens, logprobs, messages' reasoning_content) against an output of
row schema 1: resume refuses it with one line and no request, --new-version starts version 2 beside it,
and --dedup-against still reads its rows (they have no traces)."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import rows_in
from test_reasoning import _prompt

from gen import RunOptions, run
from gen.cli import main

V1_MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
NEW_IN_V2 = ("reasoning", "reasoning_tokens", "logprobs")


def _as_version_1(out: Path) -> None:
    """Rewrite an output as gen wrote it with row schema 1: its shards without version 2's columns, its
    manifest without `row_schema_version` (as version 1 manifests were, before it was recorded)."""
    manifest = json.loads((out / "manifest.json").read_text())
    for shard in manifest["shards"]:
        path = out / shard["path"]
        table = pq.read_table(path)
        table = table.drop_columns([c for c in NEW_IN_V2 if c in table.column_names])
        if "messages" in table.column_names:
            i = table.column_names.index("messages")
            table = table.set_column(i, "messages", table.column("messages").cast(V1_MESSAGES))
        pq.write_table(table, path, compression="zstd")
        data = path.read_bytes()
        shard["sha256"], shard["bytes"] = hashlib.sha256(data).hexdigest(), len(data)
    manifest.pop("row_schema_version")
    manifest["dedup"].pop("reasoning")
    (out / "manifest.json").write_text(json.dumps(manifest))


def test_a_version_1_output_is_refused_then_a_new_version_goes_beside_it(
    tmp_path: Path, sim_server, capsys
) -> None:
    sim = sim_server()
    prompt = _prompt(tmp_path, n=6)
    out = tmp_path / "o"
    run(prompt, RunOptions(base_url=sim.base_url, output=out, progress=False, limit=3))
    _as_version_1(out)
    assert "reasoning" not in pq.read_schema(next((out / "data").glob("*.parquet"))).names
    asked = sim.stats()["requests"]
    argv = ["run", str(prompt), "--base-url", sim.base_url, "--output", str(out), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0], err
    assert "row schema version 1, this gen writes version 2" in err[0] and "--new-version" in err[0]
    assert sim.stats()["requests"] == asked  # refused before any request

    assert main([*argv, "--new-version"]) == 0
    v2 = tmp_path / "o-v2"
    manifest = json.loads((v2 / "manifest.json").read_text())
    assert manifest["row_schema_version"] == 2 and manifest["lineage"]["previous"] == str(out)
    rows = rows_in(v2)
    assert len(rows) == 6 and all("reasoning" in r for r in rows)


def test_dedup_against_a_version_1_output_reads_its_rows(tmp_path: Path, sim_server) -> None:
    sim = sim_server()
    prompt = _prompt(tmp_path, n=5)
    old = tmp_path / "old"
    run(prompt, RunOptions(base_url=sim.base_url, output=old, progress=False))
    _as_version_1(old)
    new = tmp_path / "new"
    result = run(prompt, RunOptions(base_url=sim.base_url, output=new, progress=False, dedup_against=[old]))
    assert result.stats.rows == 0 and result.stats.duplicates == 5  # the same answers, already kept there


def _journaled_traces(out: Path) -> int:
    """Answers in the journal now that hold a trace (one copy: the journal leaves it out of messages)."""
    count = 0
    for segment in (out / "journal").rglob("*.jsonl") if (out / "journal").exists() else []:
        for line in segment.read_bytes().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a torn last line
            row = entry.get("r")
            if row and row.get("reasoning"):
                assert row["messages"][-1].get("reasoning_content") is None  # the trace once, not twice
                assert "<think>" not in row["messages"][-1]["content"]
                count += 1
    return count


@pytest.mark.parametrize("fmt", ["field", "think-tags"])
def test_traces_journaled_before_a_sigkill_come_back_in_their_messages(
    tmp_path: Path, sim_server, fmt: str
) -> None:
    sim = sim_server(reasoning="reasoning_content", reasoning_tokens=300, latency_ms=20)
    prompt = _prompt(tmp_path, n=60, top=f'reasoning_format = "{fmt}"')
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "gen", "run", str(prompt), "--base-url", sim.base_url, "--output", str(out)]
    proc = subprocess.Popen([*cmd, "--no-progress", "--max-concurrency", "4"], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while _journaled_traces(out) < 5 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (out / "data").exists() or not list((out / "data").glob("*.parquet"))
    result = run(prompt, RunOptions(base_url=sim.base_url, output=out, progress=False))
    assert result.status == "complete" and result.stats.replayed >= 5
    rows = rows_in(out)
    assert len(rows) == 60
    for row in rows:
        answer = row["messages"][-1]
        if fmt == "field":
            assert answer["reasoning_content"] == row["reasoning"] and answer["content"] == row["response"]
        else:
            assert answer["content"] == f"<think>\n{row['reasoning']}\n</think>\n\n{row['response']}"
