"""The journal can never block or poison a resume: every entry carries a checksum, and an entry that is
not intact, or holds a row the shards cannot take, is skipped with one line on stderr and its task is
asked again (issue 11, items 4 and 12)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import orjson
import pyarrow.parquet as pq
from helpers import all_task_ids, ids_in, killed_with_answers, settled_requests

from gen.ledger import BadEntry, Entry, Journal, journal_entries, seal

SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "minLength": 40}, "score": {"type": "integer"}},
    "required": ["answer", "score"],
    "additionalProperties": False,
}


def _recipe(tmp_path: Path, n: int) -> Path:
    (tmp_path / "answer.json").write_text(json.dumps(SCHEMA))
    (tmp_path / "p.toml").write_text(
        'name = "journal"\nversion = "1"\nintended_use = "research"\nschema = "answer.json"\n'
        "eval_fraction = 0.1\n"
        '[teacher]\nprovider = "openai"\nmodel = "gen-sim-1"\nlicense = "apache-2.0"\n'
        '[messages]\nuser = "Explain item {{ n }} in detail."\n'
        f"[variables]\nn = {list(range(n))}\n"
    )
    return tmp_path / "p.toml"


def _gen(prompt: Path, out: Path, base_url: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "gen", "run", str(prompt), "--base-url", base_url, "--output", str(out)]
    cmd += ["--no-progress", "--max-concurrency", "8", "--shard-rows", "100000"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _answer_lines(segment: Path) -> list[int]:
    return [i for i, line in enumerate(segment.read_bytes().splitlines()) if b'"r":{' in line]


def test_malformed_and_edited_entries_are_skipped_and_asked_again(tmp_path: Path, sim_server) -> None:
    prompt = _recipe(tmp_path, n=200)
    sim = sim_server(latency_ms=5)
    out = tmp_path / "o"
    segment = killed_with_answers(_gen(prompt, out, sim.base_url), out, 40)

    lines = segment.read_bytes().splitlines()
    answers = _answer_lines(segment)[:-1]  # not the last: it may be torn
    bad_ids = []

    def reseal(index: int, **changes: object) -> None:
        """A well-sealed entry whose row the shards cannot take (what a malformed reply once gave)."""
        entry = orjson.loads(lines[index])
        del entry["c"]
        entry["r"].update(changes)
        bad_ids.append(entry["r"]["id"])
        lines[index] = seal(entry).rstrip(b"\n")

    shapes = [  # the malformed replies of issue 11, as rows: each once failed every resume's Parquet write
        {"teacher_model": 123},
        {"finish_reason": {}},
        {"response": {"content": "an object"}},
        {"prompt_tokens": "12"},
        {"completion_tokens": 1 << 63},  # out of int64's range
        {"messages": "not a list"},
    ]
    for index, changes in zip(answers, shapes, strict=False):
        reseal(index, **changes)
    answers = answers[len(shapes) :]
    # An edited answer, its checksum left as it was: it must not reach the dataset.
    edited = orjson.loads(lines[answers[0]])
    bad_ids.append(edited["r"]["id"])
    lines[answers[0]] = lines[answers[0]].replace(b'"response":"', b'"response":"EDITED ', 1)
    assert b"EDITED" in lines[answers[0]]
    # Valid JSON that is no entry gen writes, mid-file (not a torn tail).
    lines[answers[1] : answers[1]] = [
        b"[1, 2, 3]",
        b'{"s": "train"}',
        b'{"s": "train", "r": {"id": 1}, "c": 0}',
    ]
    segment.write_bytes(b"\n".join(lines) + b"\n")
    # Intact answers now: the resealed ones are intact entries whose rows the shards cannot take.
    intact = sum(1 for e in journal_entries(out) if isinstance(e, Entry) and e.split is not None)
    usable = intact - len(shapes)
    asked_before = settled_requests(sim)

    final = subprocess.run(
        [sys.executable, "-m", "gen", "run", str(prompt), "--base-url", sim.base_url, "--output", str(out)]
        + ["--no-progress", "--max-concurrency", "8"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert final.returncode == 0, final.stderr
    skipped = [line for line in final.stderr.splitlines() if "skipped journal entry" in line]
    assert len(skipped) == len(shapes) + 4, final.stderr  # a line for each bad entry, naming file and line
    assert all(str(segment) in line and "asked again" in line for line in skipped)
    assert "Traceback" not in final.stderr
    # The bad answers, and only they, were asked again, with everything the kill left unanswered.
    assert sim.stats()["requests"] - asked_before == 200 - usable

    data, rejects, dups = ids_in(out, "data"), ids_in(out, "rejects"), ids_in(out, "duplicates")
    assert len(data + rejects + dups) == len(set(data + rejects + dups)) == 200
    assert set(data + rejects + dups) == all_task_ids(prompt)
    rows = {r["id"]: r for f in (out / "data").glob("*.parquet") for r in pq.read_table(f).to_pylist()}
    assert not any("EDITED" in (r["response"] or "") for r in rows.values())
    for tid in bad_ids:
        if tid in rows:
            assert rows[tid]["teacher_model"] == "gen-sim-1" and isinstance(rows[tid]["messages"], list)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["runs"][-1]["journal_skipped"] == len(shapes) + 4


def test_every_entry_is_sealed_and_any_changed_byte_is_caught(tmp_path: Path) -> None:
    row = {"id": "0123456789abcdef" * 2, "response": "an answer", "output": None, "n": 7}

    async def write() -> None:
        journal = Journal(tmp_path, "run")
        journal.reserve(row["id"], (12, 120))
        journal.append("train", row, (12, 80))
        journal.close()

    asyncio.run(write())
    segment = next((tmp_path / "journal").glob("*.jsonl"))
    reservation, answer = segment.read_bytes().splitlines()
    assert orjson.loads(reservation) == {"q": row["id"], "e": [12, 120], "c": orjson.loads(reservation)["c"]}
    assert orjson.loads(answer)["u"] == [12, 80] and orjson.loads(answer)["r"] == row
    entries = list(journal_entries(tmp_path))
    assert [type(e) for e in entries] == [Entry, Entry]
    assert entries[0].estimate == (12, 120) and entries[1].usage == (12, 80) and entries[1].row == row

    for i in range(len(answer)):  # every single changed byte, anywhere in the line
        for flip in (0x01, 0x20):
            changed = bytearray(answer)
            changed[i] ^= flip
            segment.write_bytes(bytes(changed) + b"\n" + answer + b"\n")  # not last: never "torn"
            first = next(journal_entries(tmp_path))
            assert isinstance(first, BadEntry) and first.line == 1, (i, bytes(changed))
