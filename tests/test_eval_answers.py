"""What `gen eval` keeps of the student's answers, and the report read from memory or from disk.

The student's run (gen.eval_run.StudentRun) keeps only the answer turn in `messages` (the input turns
are the dataset's, by id) and writes no dedup index; the report of an evaluation that was not resumed
reads the outcomes and request log kept in memory, and must say exactly what it says when they are read
back from answers/ and requests.jsonl (as a resumed evaluation's report is).
"""

from __future__ import annotations

import json
import random
import shutil
import string
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import gen
from gen import RunOptions, run
from gen.eval_compare import _f1, _tokens
from gen.evaluation import EvalOptions, prepare_eval, write_report

SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"enum": ["a", "b", "c"]},
        "note": {"type": "string", "maxLength": 60},
    },
    "required": ["label", "note"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ds")
    (d / "s.json").write_text(json.dumps(SCHEMA))
    topics = json.dumps([f"topic {i}" for i in range(30)])
    (d / "p.toml").write_text(
        'name = "t"\nversion = "1"\nintended_use = "research"\neval_fraction = 0.3\nschema = "s.json"\n'
        '[teacher]\nprovider = "sim"\nmodel = "gen-sim-1"\nlicense = "mit"\n'
        '[sampling]\nmax_tokens = 200\n[messages]\nsystem = "Label it."\nuser = "About {{ topic }}"\n'
        f"[variables]\ntopic = {topics}\n"
    )
    result = run(d / "p.toml", RunOptions(output=d / "out", progress=False))
    assert result.status == "complete" and result.stats.rows == 30
    return d / "out"


def _evaluate(dataset: Path, tmp_path: Path, sim_server) -> tuple[Path, gen.evaluation.EvalReport]:
    out = tmp_path / "out"
    shutil.copytree(dataset, out)
    server = sim_server(model="student-1", perturb_share=0.4, perturb_field="*")
    report = gen.evaluate(out, student="student-1", student_base_url=server.base_url, split="all")
    return out, report


def test_answers_hold_the_answer_turn_and_no_dedup_index(dataset: Path, tmp_path: Path, sim_server) -> None:
    out, report = _evaluate(dataset, tmp_path, sim_server)
    answers = report.eval_dir / "answers"
    assert not (answers / "index").exists()  # deduplication is off: no index is written or read
    rows = [r for p in sorted((answers / "data").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert len(rows) == 30
    for r in rows:  # the input turns are the dataset's: only the student's answer is kept
        assert r["messages"] == [{"role": "assistant", "content": r["output"], "reasoning_content": None}]
    teacher = {r["id"] for p in (out / "data").glob("*.parquet") for r in pq.read_table(p).to_pylist()}
    assert {r["id"] for r in rows} == teacher


def test_report_from_memory_equals_the_report_read_back(dataset: Path, tmp_path: Path, sim_server) -> None:
    out, report = _evaluate(dataset, tmp_path, sim_server)
    first = report.eval_dir
    again = first.with_name(first.name + "-read-back")
    shutil.copytree(first, again)
    (again / "report.json").unlink()
    plan = prepare_eval(
        out,
        EvalOptions(student_model="student-1", student_base_url="http://127.0.0.1:9/v1", resume=again),
    )
    assert plan.resumed
    write_report(plan, served=["student-1"], wall_s=report.data["wall_s"])  # reads answers/ and requests
    mem, disk = (json.loads((d / "report.json").read_text()) for d in (first, again))
    for key in ("eval_id", "finished_at"):
        mem.pop(key), disk.pop(key)
    assert mem == disk
    assert 0 < mem["agreement"]["k"] < mem["agreement"]["n"] == 30  # the student differs on some rows
    assert pq.read_table(first / "results.parquet").equals(pq.read_table(again / "results.parquet"))


_WORDS = ["The", "cat", "an", "A", "owl", "sat", "sat.", "x-y", "don't", "Zed", "the", "ü", "Straße"]


@pytest.mark.parametrize("seed", range(5))
def test_tokens_and_f1_equal_their_plain_definitions(seed: int) -> None:
    """_tokens' ASCII path and _f1's counting equal the plain definitions (SQuAD's normalisation, and
    common tokens as a multiset intersection), on ASCII and non-ASCII text with odd whitespace."""
    from collections import Counter

    rng = random.Random(seed)
    spaces = [" ", "  ", "\t", "\n", "\x1c", "\x1f", "\x0b", "\u00a0"]
    punct = list(string.punctuation)
    for _ in range(300):
        ascii_only = rng.random() < 0.7
        words = [w for w in _WORDS if w.isascii() or not ascii_only]
        texts = []
        for _ in range(2):
            parts = []
            for _ in range(rng.randrange(0, 12)):
                w = rng.choice(words) + (rng.choice(punct) if rng.random() < 0.2 else "")
                parts.append(w + rng.choice([s for s in spaces if s.isascii() or not ascii_only]))
            texts.append("".join(parts))
        for text in texts:
            plain = text.casefold().translate(str.maketrans("", "", string.punctuation)).split()
            assert _tokens(text) == [w for w in plain if w not in ("a", "an", "the")], repr(text)
        a, b = (_tokens(t) for t in texts)
        common = sum((Counter(a) & Counter(b)).values())
        if not a or not b:
            want = float(a == b)
        elif a == b:
            want = 1.0
        elif common == 0:
            want = 0.0
        else:
            p, r = common / len(a), common / len(b)
            want = 2 * p * r / (p + r)
        assert _f1(a, b) == want, texts


def _journal_entries(answers: Path) -> list[dict]:
    """The journal's whole lines: one being written (or cut by a SIGKILL) has no newline yet."""
    return [
        json.loads(line)
        for path in sorted((answers / "journal").rglob("*.jsonl"))
        for line in path.read_text().split("\n")[:-1]
        if line.strip()
    ]


def test_first_requests_are_not_journaled_reasks_and_answers_are(
    dataset: Path, tmp_path: Path, sim_server
) -> None:
    """Without a budget the student's run journals no reservation for a first request; a re-ask's, which
    carries what the invalid answer before it cost, and every answer are journaled. Killed with
    SIGKILL mid-run, the evaluation resumes with every journaled answer kept."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    shutil.copytree(dataset, out)
    server = sim_server(model="student-1", latency_ms=100, rate_invalid_json=0.4)
    args = [sys.executable, "-m", "gen", "eval", str(out), "--student-base-url", server.base_url,
            "--student-model", "student-1", "--no-progress", "--split", "all",
            "--max-concurrency", "2"]  # fmt: skip
    proc = subprocess.Popen(args, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        entries: list[dict] = []
        while time.monotonic() < deadline:
            d = next((out / "evals").glob("*"), None)
            entries = _journal_entries(d / "answers") if d is not None and (d / "answers").exists() else []
            if sum("s" in e for e in entries) >= 6 and sum("q" in e for e in entries) >= 1:
                break
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    d = next((out / "evals").glob("*"))
    entries = _journal_entries(d / "answers")
    reservations = [e for e in entries if "q" in e]
    assert sum("s" in e for e in entries) >= 6 and reservations  # answers, and re-asks' reservations
    assert all("u" in e for e in reservations)  # each a re-ask's, carrying its invalid answer's usage
    journaled = {e["r"]["id"] for e in entries if "s" in e}

    code = subprocess.run([*args, "--resume", str(d)], capture_output=True, timeout=120).returncode
    assert code == 0
    results = pq.read_table(d / "results.parquet").to_pylist()
    assert len(results) == len({r["id"] for r in results}) == 30
    resumed = json.loads((d / "answers" / "manifest.json").read_text())["runs"][-1]
    # Every journaled answer was recovered, and only the other rows were asked.
    assert resumed["replayed"] == len(journaled)
    assert resumed["tasks"] == 30 - len(journaled)
