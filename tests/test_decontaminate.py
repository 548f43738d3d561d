"""Decontamination ([decontaminate], --decontaminate-against): train rows sharing a word 13-gram with an
eval set or benchmark file (JSONL, CSV, Parquet) go to duplicates/ as `contaminated` (simulated teacher)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import all_task_ids, ids_in, rows_in

from gen import RunOptions, run
from gen.audit import audit
from gen.decontaminate import words
from gen.errors import ConfigError

# Benchmark questions (more than 13 words each) and the seed inputs that quote them.
Q_JSONL = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May."
Q_CSV = "A lady walks to a barbell. She bends down and grabs the pole with both of her hands firmly."
Q_PARQUET = "He is using commercial lawn mowing equipment and walks back and forth as he mows the grass."
ANSWER_JSONL = (
    "She sold 72 clips altogether in April and May, which is the final answer to the question here."
)

CLEAN = [
    "my invoice was charged twice this month",
    "the app crashes when I open settings",
    "how do I reset my password on the website",
    "the delivery arrived late and the box was damaged",
]
# 13 words of each question, re-cased and re-punctuated: the same 13-gram once folded.
HIT_JSONL = "customer asks: NATALIA sold clips to 48 of her friends in april -- and then she sold (urgent)"
HIT_CSV = "forum post says a lady walks to a barbell; she bends down and grabs the pole"
HIT_PARQUET = "ticket: he is using commercial lawn mowing equipment and walks back and forth as he mows"
# 12 words of the JSONL question only: below the n-gram, not contaminated.
NEAR_MISS = "natalia sold clips to 48 of her friends in april and then"


def _write_benchmarks(d: Path) -> None:
    d.mkdir(exist_ok=True)
    (d / "gsm.jsonl").write_text(
        json.dumps({"question": Q_JSONL, "answer": ANSWER_JSONL, "idx": 0})
        + "\n"
        + json.dumps({"question": "What is two plus two?", "answer": "four", "idx": 1})
        + "\n"
    )
    with (d / "hella.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ctx", "label"])
        w.writerow(["Unrelated short context here.", "0"])
        w.writerow([Q_CSV, "1"])
    pq.write_table(pa.table({"text": ["nothing to see", Q_PARQUET], "n": [1, 2]}), d / "lawn.parquet")


def _recipe(
    tmp: Path, inputs: list[str], decont: str, *, eval_fraction: float = 0.0, extra: str = ""
) -> Path:
    (tmp / "s.json").write_text(json.dumps({
        "type": "object", "properties": {"label": {"enum": ["billing", "bug", "other"]}},
        "required": ["label"], "additionalProperties": False,
    }))  # fmt: skip
    (tmp / "p.toml").write_text(
        'name = "dc"\nversion = "1"\nintended_use = "research"\nschema = "s.json"\n'
        f"eval_fraction = {eval_fraction}\n{extra}"
        '[teacher]\nlicense = "mit"\n'
        '[messages]\nsystem = "You label support tickets. ' + Q_JSONL + '"\nuser = "Ticket: {{ text }}"\n'
        f"[variables]\ntext = {json.dumps(inputs)}\n"
        "[dedup]\nnear = false\n" + decont
    )
    return tmp / "p.toml"


def _removed(out: Path) -> dict[str, dict]:
    return {
        json.loads(d["vars"])["text"]: d for d in rows_in(out, "duplicates") if d["kind"] == "contaminated"
    }


def _kept_texts(out: Path) -> set[str]:
    return {json.loads(r["vars"])["text"] for r in rows_in(out)}


def test_rows_sharing_a_13_gram_with_jsonl_csv_parquet_are_removed(tmp_path: Path) -> None:
    _write_benchmarks(tmp_path / "bench")
    inputs = [*CLEAN, HIT_JSONL, HIT_CSV, HIT_PARQUET, NEAR_MISS]
    prompt = _recipe(
        tmp_path,
        inputs,
        '[decontaminate]\nagainst = ["bench/*.jsonl", "bench/hella.csv", {path = "bench/lawn.parquet", '
        'columns = ["text"]}]\n',
    )
    out = tmp_path / "o"
    result = run(prompt, RunOptions(output=out, progress=False))
    removed = _removed(out)
    # The system prompt quotes the JSONL question in every row: the template's text is not compared.
    assert set(removed) == {HIT_JSONL, HIT_CSV, HIT_PARQUET}
    assert _kept_texts(out) == {*CLEAN, NEAR_MISS}
    assert removed[HIT_JSONL]["duplicate_of"] == (
        "bench/gsm.jsonl#1: natalia sold clips to 48 of her friends in april and then she"
    )
    assert removed[HIT_CSV]["duplicate_of"].startswith("bench/hella.csv#2: a lady walks to a barbell")
    assert removed[HIT_PARQUET]["duplicate_of"].startswith("bench/lawn.parquet#2: he is using commercial")
    m = json.loads((out / "manifest.json").read_text())
    assert m["dedup"]["contaminated_removed"] == 3 == result.stats.duplicates
    assert m["totals"]["duplicates"] == 3
    against = {a["path"]: a for a in m["dedup"]["contaminated"]["against"]}
    assert set(against) == {"bench/gsm.jsonl", "bench/hella.csv", "bench/lawn.parquet"}
    assert against["bench/lawn.parquet"]["columns"] == ["text"] and against["bench/hella.csv"]["rows"] == 2
    assert m["dedup"]["contaminated"]["ngram"] == 13
    # Every task is decided: rows + duplicates account for the whole recipe; the output audits clean.
    assert set(ids_in(out, "data")) | set(ids_in(out, "duplicates")) == all_task_ids(prompt)
    report = audit(out)
    assert report.clean, [str(f) for f in report.findings]


def test_named_columns_limit_what_is_indexed_and_ngram_is_configurable(tmp_path: Path) -> None:
    _write_benchmarks(tmp_path / "bench")
    # Only the answers of gsm.jsonl are indexed: its question no longer contaminates anything.
    answer_hit = "reply draft: she sold 72 clips altogether in april and may which is the final answer"
    prompt = _recipe(
        tmp_path,
        [*CLEAN, HIT_JSONL, answer_hit],
        '[decontaminate]\nagainst = ["bench/gsm.jsonl"]\ncolumns = ["answer"]\n',
    )
    run(prompt, RunOptions(output=tmp_path / "o", progress=False))
    assert set(_removed(tmp_path / "o")) == {answer_hit}
    # With 5-grams, "what is two plus two" (the second row's question) is long enough to match.
    (tmp_path / "p2").mkdir()
    _write_benchmarks(tmp_path / "p2" / "bench")
    short = "customer asks what is two plus two please"
    prompt = _recipe(
        tmp_path / "p2", [*CLEAN, short], '[decontaminate]\nagainst = ["bench/gsm.jsonl"]\nngram = 5\n'
    )
    run(prompt, RunOptions(output=tmp_path / "o2", progress=False))
    assert set(_removed(tmp_path / "o2")) == {short}
    assert _removed(tmp_path / "o2")[short]["duplicate_of"] == "bench/gsm.jsonl#2: what is two plus two"


def test_the_answer_is_compared_too(tmp_path: Path) -> None:
    """A row whose answer (not its input) quotes the benchmark is contaminated: exactly those rows go."""
    (tmp_path / "b.jsonl").write_text(json.dumps({"q": Q_CSV}) + "\n")
    (tmp_path / "s.json").write_text(json.dumps({
        "type": "object", "properties": {"reply": {"enum": [Q_CSV, "We will look into it."]}},
        "required": ["reply"], "additionalProperties": False,
    }))  # fmt: skip
    (tmp_path / "p.toml").write_text(
        'name = "ans"\nversion = "1"\nintended_use = "research"\nschema = "s.json"\neval_fraction = 0.0\n'
        '[teacher]\nlicense = "mit"\n[messages]\nuser = "Answer ticket {{ n }}"\n'
        f"[variables]\nn = {list(range(30))}\n[dedup]\nnear = false\n"
        '[decontaminate]\nagainst = ["b.jsonl"]\n'
    )
    out = tmp_path / "o"
    run(tmp_path / "p.toml", RunOptions(output=out, progress=False))
    quoting = {d["id"] for d in rows_in(out, "duplicates") if json.loads(d["output"])["reply"] == Q_CSV}
    contaminated = {d["id"] for d in rows_in(out, "duplicates") if d["kind"] == "contaminated"}
    assert contaminated == quoting and len(quoting) > 0
    assert all(json.loads(r["output"])["reply"] != Q_CSV for r in rows_in(out))
    assert len(rows_in(out)) + len(contaminated) == 30


def test_cli_flag_is_repeatable_and_bad_input_is_one_line_exit_2(tmp_path: Path) -> None:
    _write_benchmarks(tmp_path / "bench")
    prompt = _recipe(tmp_path, [*CLEAN, HIT_CSV, HIT_PARQUET], "")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    def gen(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gen", "run", str(prompt), "--no-progress", *args],
            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60,
        )  # fmt: skip

    ok = gen(
        "--output",
        "o",
        "--decontaminate-against",
        "bench/hella.csv",
        "--decontaminate-against",
        "bench/*.parquet",
    )
    assert ok.returncode == 0, ok.stderr
    assert set(_removed(tmp_path / "o")) == {HIT_CSV, HIT_PARQUET}

    (tmp_path / "bench" / "broken.parquet").write_bytes(b"PAR1 not parquet at all")
    (tmp_path / "bench" / "bad.jsonl").write_text('{"question": "x"}\nnot json\n')
    (tmp_path / "bench" / "notes.txt").write_text("hello")
    cases = [
        (["bench/missing.jsonl"], "missing.jsonl: no such file"),
        (["bench/*.arrow"], "'bench/*.arrow': no file matches"),
        (["bench/broken.parquet"], "broken.parquet: cannot be read as PARQUET"),
        (["bench/bad.jsonl"], "bad.jsonl: cannot be read as JSONL: line 2 is not JSON"),
        (["bench/notes.txt"], "notes.txt: is not a JSONL, CSV or Parquet file"),
    ]
    for flags, expected in cases:
        r = gen("--output", "bad", *[x for f in flags for x in ("--decontaminate-against", f)])
        assert r.returncode == 2, (flags, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (flags, r.stderr)
        assert "Traceback" not in r.stderr
        assert not (tmp_path / "bad" / "data").exists()  # nothing was asked or written


def test_unknown_column_is_named_before_any_request(tmp_path: Path, sim_server) -> None:
    _write_benchmarks(tmp_path / "bench")
    server = sim_server()
    for against, expected in [
        (
            '{path = "bench/hella.csv", columns = ["question"]}',
            "hella.csv: has no column 'question' (its columns: ctx, label)",
        ),
        (
            '{path = "bench/lawn.parquet", columns = ["body"]}',
            "lawn.parquet: has no column 'body' (its columns: text, n)",
        ),
        (
            '{path = "bench/gsm.jsonl", columns = ["prompt"]}',
            "gsm.jsonl: has no column 'prompt' in any of its 2 rows",
        ),
    ]:
        prompt = _recipe(tmp_path, CLEAN, f"[decontaminate]\nagainst = [{against}]\n")
        opts = RunOptions(output=tmp_path / "o", progress=False, provider="openai", base_url=server.base_url,
                          model="gen-sim-1")  # fmt: skip
        with pytest.raises(ConfigError) as e:
            run(prompt, opts)
        assert expected in str(e.value)
    assert server.stats()["requests"] == 0


def test_splits_removes_train_rows_sharing_an_ngram_with_eval_rows(tmp_path: Path) -> None:
    """`splits = true`: a train input quoting an eval input loses; eval rows are never removed."""
    long = [f"{w} the quarterly invoice for the team workspace was charged twice to the same company card"
            for w in ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")]  # fmt: skip
    inputs = [*CLEAN, *long]
    prompt = _recipe(tmp_path, inputs, "[decontaminate]\nsplits = true\n", eval_fraction=0.3)
    out = tmp_path / "o"
    run(prompt, RunOptions(output=out, progress=False))
    from gen.templates import canonical_json, split_of

    split = {t: split_of(canonical_json({"text": t}), 0.3) for t in inputs}
    eval_long = [t for t in long if split[t] == "eval"]
    train_long = [t for t in long if split[t] == "train"]
    assert eval_long and train_long, "the fixture needs long inputs on both sides"
    assert set(_removed(out)) == set(train_long)
    assert all(d["duplicate_of"].startswith("eval ") for d in _removed(out).values())
    kept = {json.loads(r["vars"])["text"]: r["split"] for r in rows_in(out)}
    assert set(kept) == {*CLEAN, *eval_long}
    m = json.loads((out / "manifest.json").read_text())
    assert m["dedup"]["contaminated_removed"] == len(train_long)
    assert m["dedup"]["contaminated"]["splits"] is True


def test_resume_keeps_the_decision(tmp_path: Path) -> None:
    """A resumed run neither re-asks nor re-decides: removed rows stay removed, kept rows stay kept, and
    the manifest's count carries over; a row first seen on resume is decided against the same index."""
    _write_benchmarks(tmp_path / "bench")
    inputs = [*CLEAN, HIT_JSONL, HIT_CSV, HIT_PARQUET, NEAR_MISS]
    prompt = _recipe(tmp_path, inputs, '[decontaminate]\nagainst = ["bench/*"]\n')
    out = tmp_path / "o"
    run(prompt, RunOptions(output=out, progress=False, limit=4))
    first = {d["id"]: d["duplicate_of"] for d in rows_in(out, "duplicates")}
    kept_first = set(ids_in(out, "data"))
    second = run(prompt, RunOptions(output=out, progress=False))
    assert second.stats.requests == len(inputs) - 4  # nothing answered is asked again
    after = {d["id"]: d["duplicate_of"] for d in rows_in(out, "duplicates")}
    assert first.items() <= after.items() and kept_first <= set(ids_in(out, "data"))
    assert set(_removed(out)) == {HIT_JSONL, HIT_CSV, HIT_PARQUET}
    m = json.loads((out / "manifest.json").read_text())
    assert m["dedup"]["contaminated_removed"] == 3
    # A third run finds everything done and changes nothing.
    third = run(prompt, RunOptions(output=out, progress=False))
    assert third.stats.requests == 0 and set(_removed(out)) == {HIT_JSONL, HIT_CSV, HIT_PARQUET}


def test_words_fold_case_and_punctuation() -> None:
    assert words("Hello, WORLD -- it's 4:30!") == ["hello", "world", "it", "s", "4", "30"]


def _journaled(out: Path) -> int:
    n = 0
    for segment in (out / "journal").glob("*.jsonl"):
        try:
            n += segment.read_bytes().count(b'"r":{')
        except FileNotFoundError:
            pass
    return n


def test_sigkill_then_resume_decides_each_row_once(tmp_path: Path, sim_server) -> None:
    """Answers only in the journal at a SIGKILL are replayed through the same check: every quoting row
    ends in duplicates/ as contaminated exactly once, no other row does, and nothing answered is paid
    for twice."""
    _write_benchmarks(tmp_path / "bench")
    inputs = [f"ticket {i}: " + (HIT_CSV if i % 5 == 0 else CLEAN[i % 4]) for i in range(200)]
    prompt = _recipe(tmp_path, inputs, '[decontaminate]\nagainst = ["bench/hella.csv"]\n')
    sim = sim_server(latency_ms=5)
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "gen", "run", str(prompt), "--provider", "openai", "--model", "gen-sim-1",
           "--base-url", sim.base_url, "--output", str(out), "--no-progress", "--shard-rows", "100000",
           "--max-concurrency", "8"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    while _journaled(out) < 60 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert not ids_in(out, "data") and not ids_in(out, "duplicates"), "no checkpoint should have happened"
    killed_at = _journaled(out)
    assert killed_at >= 60
    asked_before = sim.stats()["requests"]
    result = run(prompt, RunOptions(provider="openai", model="gen-sim-1", base_url=sim.base_url, output=out,
                                    progress=False))  # fmt: skip
    assert result.status == "complete" and result.stats.replayed >= 60
    assert sim.stats()["requests"] - asked_before <= 200 - killed_at  # replayed answers are not asked again
    removed = _removed(out)
    assert set(removed) == {t for t in inputs if HIT_CSV in t}  # 40 rows
    assert all(d["duplicate_of"].startswith("bench/hella.csv#2: ") for d in removed.values())
    everything = ids_in(out, "data") + ids_in(out, "duplicates") + ids_in(out, "rejects")
    assert len(everything) == len(set(everything)) == 200
    m = json.loads((out / "manifest.json").read_text())
    assert m["dedup"]["contaminated_removed"] == 40
    report = audit(out)
    assert report.clean, [str(f) for f in report.findings]


def test_a_json_array_with_lists_of_strings_is_read_by_default_columns(tmp_path: Path) -> None:
    """Default columns: every string and list-of-strings value (a multiple-choice benchmark's
    `choices`), not numbers; a JSON array of objects reads like JSONL."""
    from gen.decontaminate import Source, build

    choice = "the mitochondria is the powerhouse of the cell and makes most of its chemical energy supply"
    path = tmp_path / "mc.json"
    path.write_text(json.dumps([{"q": "Which organelle?", "choices": ["nucleus", choice], "label": 1}]))
    d = build([Source(path, "mc.json", None)], ngram=13, splits=False)
    text = words("Which organelle? nucleus " + choice)  # `label` (a number) is not text
    assert d.sources[0].rows == 1 and d.sources[0].ngrams == len(text) - 12
    assert d.find(words("as we know " + choice)) == (
        "mc.json#1: the mitochondria is the powerhouse of the cell and makes most of its"
    )
    assert d.find(words("the mitochondria is the powerhouse of the cell and makes most of")) is None  # 12
