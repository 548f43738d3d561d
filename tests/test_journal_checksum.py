"""The journal's checksum (issue 14, Numbers): entries are sealed with XXH3-64 of their bytes, which reads
a 40 kB entry holding a trace several times faster than CRC-32 did. Journals an older gen sealed with
CRC-32 still replay: a resume by this gen of an output whose journal the older gen wrote asks only for
what the journal lacks, and a corrupted old entry is still caught."""

from __future__ import annotations

import json
import subprocess
import sys
import zlib
from pathlib import Path

import orjson
import xxhash
from helpers import all_task_ids, ids_in, killed_with_answers, rows_in, settled_requests

from gen.ledger import BadEntry, BatchLog, Entry, LoggedBatch, journal_entries, seal


def _crc_sealed(line: bytes) -> bytes:
    """A journal line as gen sealed it before XXH3: its `"c"` the CRC-32 of the bytes before it."""
    head = orjson.dumps({k: v for k, v in orjson.loads(line).items() if k != "c"})[:-1]
    return b'%s,"c":%d}' % (head, zlib.crc32(head))


def test_an_entry_is_sealed_with_xxh3_of_its_bytes() -> None:
    line = seal({"s": "train", "r": {"id": "ab" * 16, "reasoning": "we check. " * 4_000}, "u": (1, 2)})
    at = line.rfind(b',"c":')
    assert orjson.loads(line)["c"] == xxhash.xxh3_64_intdigest(line[:at])
    assert line.endswith(b"}\n")


def _recipe(tmp_path: Path, n: int) -> Path:
    (tmp_path / "p.toml").write_text(
        'name = "old-journal"\nversion = "1"\nintended_use = "research"\neval_fraction = 0.0\n'
        '[teacher]\nprovider = "openai"\nmodel = "gen-sim-1"\nlicense = "apache-2.0"\n'
        '[messages]\nuser = "Solve problem {{ n }}."\n'
        f"[variables]\nn = {list(range(n))}\n"
    )
    return tmp_path / "p.toml"


def test_a_journal_sealed_with_crc32_replays_and_its_corruption_is_caught(tmp_path: Path, sim_server) -> None:
    n = 120
    prompt = _recipe(tmp_path, n)
    sim = sim_server(latency_ms=5, reasoning="reasoning_content", reasoning_tokens=2_000)
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "gen", "run", str(prompt), "--base-url", sim.base_url, "--output", str(out)]
    cmd += ["--no-progress", "--max-concurrency", "4", "--shard-rows", "100000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    segment = killed_with_answers(proc, out, 30)

    # The journal as the older gen wrote it: every whole line sealed with CRC-32 (a torn last one stays).
    *whole, last = segment.read_bytes().split(b"\n")
    old = [_crc_sealed(line) for line in whole]
    assert all(orjson.loads(line)["c"] < 1 << 32 for line in old)
    answers = [i for i, line in enumerate(old) if b'"r":{' in line]
    # One old answer corrupted, its checksum left as it was: it must be caught and its task asked again.
    corrupted = answers[3]
    bad_id = orjson.loads(old[corrupted])["r"]["id"]
    old[corrupted] = old[corrupted].replace(b'"reasoning":"', b'"reasoning":"EDITED ', 1)
    segment.write_bytes(b"\n".join([*old, last]))
    entries = list(journal_entries(out))
    bad = [e for e in entries if isinstance(e, BadEntry)]
    assert [e.line for e in bad if e.line != len(old) + 1] == [corrupted + 1]  # not counting a torn tail
    kept = {e.row["id"]: e.row for e in entries if isinstance(e, Entry) and e.split is not None}
    assert len(kept) == len(answers) - 1 and bad_id not in kept
    asked = settled_requests(sim)

    final = subprocess.run(cmd[:-2], capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    assert "Traceback" not in final.stderr
    assert sim.stats()["requests"] - asked == n - len(kept)  # the old journal's answers were not bought again
    rows = {r["id"]: r for r in rows_in(out)}
    ids = ids_in(out, "data") + ids_in(out, "rejects") + ids_in(out, "duplicates")
    assert len(ids) == len(set(ids)) == n and set(ids) == all_task_ids(prompt)
    for task_id, row in kept.items():  # replayed as the old gen journaled them, trace included
        assert rows[task_id]["reasoning"] == row["reasoning"] and row["reasoning"]
    assert "EDITED" not in (rows[bad_id]["reasoning"] or "")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["runs"][-1]["journal_skipped"] >= 1


def test_a_batch_log_sealed_with_crc32_still_reads(tmp_path: Path) -> None:
    log = BatchLog(tmp_path / "batches.jsonl")
    log.intent(LoggedBatch("b1", {"recipe": "x"}, "openai", [("ab" * 16, 1, 0)], (10, 20), 1.5))
    log.created("b1", "batch_abc")
    log.close()
    lines = (tmp_path / "batches.jsonl").read_bytes().splitlines()
    assert all(
        orjson.loads(line)["c"] == xxhash.xxh3_64_intdigest(line[: line.rfind(b',"c":')]) for line in lines
    )
    old = [_crc_sealed(line) for line in lines]  # as an older gen wrote them
    (tmp_path / "batches.jsonl").write_bytes(b"\n".join(old) + b"\n")
    batches, _, problems = BatchLog(tmp_path / "batches.jsonl").read()
    assert not problems and batches["b1"].id == "batch_abc" and batches["b1"].requests == [("ab" * 16, 1, 0)]
    corrupted = old[1].replace(b"batch_abc", b"batch_abd")
    (tmp_path / "batches.jsonl").write_bytes(b"\n".join([old[0], corrupted, old[0]]) + b"\n")
    batches, _, problems = BatchLog(tmp_path / "batches.jsonl").read()
    assert problems and batches["b1"].id is None
