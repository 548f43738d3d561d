"""Hostile-input review of `gen eval`, reasoning traces and verification, and `gen report`.

Each test here failed on the code as merged: a hostile teacher or student, a tampered output, and what
gen must do about it. Real simulator on loopback, real runs, real subprocesses.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from helpers import rows_in

from gen import RunOptions, run

ROOT = Path(__file__).resolve().parents[1]


def _verify_prompt(tmp_path: Path, verify: str, answer_text: str, n: int = 3) -> Path:
    with (tmp_path / "problems.jsonl").open("w") as f:
        for i in range(n):
            f.write(
                json.dumps({"pid": f"P{i}", "problem": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n"
            )
    path = tmp_path / "p.toml"
    path.write_text(
        'name = "vnum"\nversion = "1"\nintended_use = "research"\nmax_attempts = 1\n'
        '[teacher]\nprovider = "sim"\nmodel = "gen-sim-1"\nlicense = "apache-2.0"\n'
        '[messages]\nuser = "{{ pid }}: {{ problem }}"\n[seed]\npath = "problems.jsonl"\n'
        f"[verify]\n{verify}\n[sim]\nanswer_text = {json.dumps(answer_text)}\n"
    )
    return path


def test_a_numeric_answer_with_a_huge_exponent_fails_at_once_not_after_hours(tmp_path: Path) -> None:
    """`1e999999999/2` is 15 characters; Fraction() of its numerator builds a billion-digit integer
    (10**7 already takes 15 s): a hostile teacher stalled the numeric verifier for hours per answer."""
    prompt = _verify_prompt(
        tmp_path, 'reference = "{{ answer }}"\nmethod = "numeric"', "\\boxed{1e999999999/2}"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "gen", "run", str(prompt), "--output", str(tmp_path / "o"), "--no-progress"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert "3 failed verification" in proc.stderr, proc.stderr  # finished, every answer decided
    rejects = rows_in(tmp_path / "o", "rejects")
    assert len(rejects) == 3 and {r["reason"] for r in rejects} == {"verification_failed"}
    assert all("holds no number" in r["error"] for r in rejects), rejects[0]["error"]


def test_a_json_answer_whose_string_holds_a_closing_think_tag_is_all_answer(tmp_path: Path) -> None:
    """A schema about markup (`"tag": "</think>"`): the valid JSON answer was cut at the tag as if it
    ended an untagged trace, and every row became an invalid_json reject whose raw answer was `"}`."""
    schema = {
        "type": "object",
        "properties": {"word": {"type": "string", "maxLength": 20}, "tag": {"const": "</think>"}},
        "required": ["word", "tag"],
        "additionalProperties": False,
    }
    (tmp_path / "s.json").write_text(json.dumps(schema))
    prompt = tmp_path / "p.toml"
    prompt.write_text(
        'name = "tags"\nversion = "1"\nintended_use = "research"\nschema = "s.json"\n'
        '[teacher]\nprovider = "sim"\nmodel = "gen-sim-1"\nlicense = "mit"\n'
        '[messages]\nuser = "Which closing tag fits {{ t }}?"\n[variables]\nt = ["a", "b", "c", "d"]\n'
    )
    run(prompt, RunOptions(output=tmp_path / "o", progress=False))
    rows = rows_in(tmp_path / "o")
    assert len(rows) == 4, [r["error"] for r in rows_in(tmp_path / "o", "rejects")]
    assert all(json.loads(r["output"])["tag"] == "</think>" and r["reasoning"] is None for r in rows)


def test_a_batch_reject_of_a_truncated_trace_keeps_the_trace(tmp_path: Path, sim_server) -> None:
    """Online, a reasoning teacher's truncated answer is rejected with its trace; through a batch the
    trace was dropped (the batch path's reject took no `reasoning`), so what the teacher wrote vanished."""
    sim = sim_server(reasoning="think-tags", reasoning_tokens=400)
    prompt = tmp_path / "p.toml"
    prompt.write_text(
        'name = "r"\nversion = "1"\nintended_use = "research"\nmax_attempts = 1\n'
        '[teacher]\nprovider = "openai"\nmodel = "gen-sim-1"\nlicense = "mit"\n'
        '[sampling]\nmax_tokens = 100\n[messages]\nuser = "Think about {{ t }}"\n'
        '[variables]\nt = ["a", "b"]\n'
    )
    opts = RunOptions(
        base_url=sim.base_url, output=tmp_path / "o", progress=False, batch=True, batch_poll_s=0.05
    )
    result = run(prompt, opts)
    assert result.stats.reject_reasons == {"truncated": 2}
    rejects = rows_in(tmp_path / "o", "rejects")
    assert all(r["reasoning"] and not r["response"] and r["reference"] is None for r in rejects)


def test_a_benchmark_csv_with_a_long_passage_is_indexed_not_refused(tmp_path: Path) -> None:
    """Reading-comprehension benchmarks carry passages of hundreds of kB in one cell: the csv module's
    default field limit (131,072 characters) refused such a file as unreadable, so it could not be
    decontaminated against."""
    import csv

    passage = " ".join(f"word{i}" for i in range(30_000))  # ~240 kB in one cell
    with (tmp_path / "bench.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["question", "passage"], ["what is up", passage]])
    prompt = tmp_path / "p.toml"
    prompt.write_text(
        'name = "d"\nversion = "1"\nintended_use = "research"\n'
        '[teacher]\nprovider = "sim"\nmodel = "gen-sim-1"\nlicense = "mit"\n'
        '[messages]\nuser = "Recite {{ t }}"\n[variables]\nt = ["word100 word101 word102 word103 word104 '
        'word105 word106 word107 word108 word109 word110 word111 word112", "something else entirely"]\n'
        '[decontaminate]\nagainst = ["bench.csv"]\n'
    )
    run(prompt, RunOptions(output=tmp_path / "o", progress=False))
    removed = rows_in(tmp_path / "o", "duplicates")
    assert [r["kind"] for r in removed] == ["contaminated"] and len(rows_in(tmp_path / "o")) == 1


def _seed_recipe(d: Path, name: str, records: list[dict]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    (d / f"{name}.toml").write_text(
        'name = "f"\nversion = "1"\nintended_use = "research"\neval_fraction = 0.3\n'
        '[teacher]\nprovider = "sim"\nmodel = "gen-sim-1"\nlicense = "mit"\n'
        f'[messages]\nuser = "Answer: {{{{ q }}}}"\n[seed]\npath = "{name}"\n'
    )
    return d / f"{name}.toml"


def test_fresh_inputs_that_render_a_dataset_prompt_are_refused_whatever_their_unused_columns(
    tmp_path: Path, sim_server
) -> None:
    """A fresh seed table that adds a column the template does not use (a batch tag, a source) asks the
    teacher and the student exactly the dataset's prompts: those inputs were let through as fresh, so a
    "fresh" evaluation scored the student on rows it may have trained on."""
    import gen

    recipe = _seed_recipe(tmp_path / "r", "seed.jsonl", [{"q": f"question number {i}"} for i in range(10)])
    out = tmp_path / "out"
    run(recipe, RunOptions(output=out, progress=False))
    fresh = _seed_recipe(
        tmp_path / "r", "fresh.jsonl", [{"q": f"question number {i}", "batch": "dec"} for i in range(8, 14)]
    )
    server = sim_server(model="student-1")
    report = gen.evaluate(
        out, student="student-1", student_base_url=server.base_url, inputs=fresh, no_judge=True
    )
    assert report.data["refused_inputs"] == 2 and report.rows == 4
    asked = sorted(json.loads(r["vars"])["q"] for r in rows_in(report.eval_dir / "teacher"))
    assert asked == [f"question number {i}" for i in range(10, 14)]


HANGING_VERIFIER = """
import pathlib, time
def check(output, reference, row):
    if row["pid"] == "P1":
        pathlib.Path("hung").write_text("")
        time.sleep(3600)  # a checker that never answers (a stuck external tool)
    return True
"""


def test_ctrl_c_exits_even_while_a_python_verifier_hangs(tmp_path: Path) -> None:
    """Ctrl-C committed what had arrived and said so, then the process never exited: the exit waited for
    the verification thread, stuck in the user's function for good."""
    import signal
    import time

    (tmp_path / "v.py").write_text(HANGING_VERIFIER)
    prompt = _verify_prompt(tmp_path, 'reference = "{{ answer }}"\npython = "v.py:check"', "\\boxed{0}", n=4)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gen", "run", str(prompt), "--output", str(tmp_path / "o"), "--no-progress",
         "--grace-period", "1"],
        cwd=tmp_path, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not (tmp_path / "hung").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)  # a hang, not a slow exit: it never comes back
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("gen run did not exit after Ctrl-C while the verifier hung") from None
    assert proc.returncode == 130 and "Committed" in err, err


def test_a_benchmark_jsonl_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    """Windows tools write a UTF-8 BOM before the first line; seed tables and decontamination CSVs skip
    it, but a decontamination JSONL or JSON file was refused: `line 1 is not JSON`."""
    text = "the quick brown fox jumps over the lazy dog near the old river bank today"
    for name, body in (
        ("bench.jsonl", json.dumps({"q": text}) + "\n"),
        ("bench.json", json.dumps([{"q": text}])),
    ):
        (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + body.encode())
        prompt = tmp_path / "p.toml"
        prompt.write_text(
            'name = "d"\nversion = "1"\nintended_use = "research"\n'
            '[teacher]\nprovider = "sim"\nmodel = "gen-sim-1"\nlicense = "mit"\n'
            f'[messages]\nuser = "Recite {{{{ t }}}}"\n[variables]\nt = ["{text}", "something else"]\n'
            f'[decontaminate]\nagainst = ["{name}"]\n'
        )
        out = tmp_path / f"o-{name}"
        run(prompt, RunOptions(output=out, progress=False))
        assert [r["kind"] for r in rows_in(out, "duplicates")] == ["contaminated"], name


def test_compare_names_a_malformed_report_in_one_line(tmp_path: Path, sim_server) -> None:
    """`gen eval --compare` read report.json as trusted: a hand-edited or truncated-by-a-tool report
    (a field of the wrong type) ended in a traceback instead of one line naming the file."""
    import shutil

    import gen

    recipe = _seed_recipe(tmp_path / "r", "seed.jsonl", [{"q": f"question {i}"} for i in range(6)])
    out = tmp_path / "out"
    run(recipe, RunOptions(output=out, progress=False))
    server = sim_server(model="student-1")
    good = gen.evaluate(
        out, student="student-1", student_base_url=server.base_url, split="all", no_judge=True
    )
    bad = out / "evals" / "edited"
    shutil.copytree(good.eval_dir, bad)
    data = json.loads((bad / "report.json").read_text())
    data["dataset"] = None
    (bad / "report.json").write_text(json.dumps(data))
    proc = subprocess.run(
        [sys.executable, "-m", "gen", "eval", "--compare", str(good.eval_dir), str(bad)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and str(bad / "report.json") in proc.stderr


def test_audit_flags_an_evaluation_that_counts_a_row_twice(tmp_path: Path, sim_server) -> None:
    """An evaluation whose results name one dataset row twice (a tampered or badly merged results file,
    its report's row count edited to match) weighs that row double in every figure: audit said clean."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    import gen
    from gen.audit import audit

    recipe = _seed_recipe(tmp_path / "r", "seed.jsonl", [{"q": f"question {i}"} for i in range(6)])
    out = tmp_path / "out"
    run(recipe, RunOptions(output=out, progress=False))
    server = sim_server(model="student-1")
    report = gen.evaluate(
        out, student="student-1", student_base_url=server.base_url, split="all", no_judge=True
    )
    assert audit(out).clean
    results = pq.read_table(report.eval_dir / "results.parquet")
    pq.write_table(pa.concat_tables([results, results.slice(0, 1)]), report.eval_dir / "results.parquet")
    data = json.loads((report.eval_dir / "report.json").read_text())
    data["rows"] += 1
    (report.eval_dir / "report.json").write_text(json.dumps(data))
    found = audit(out)
    assert not found.clean
    assert any("twice" in str(f) and results.column("id")[0].as_py() in str(f) for f in found.findings), found


def test_a_student_that_cannot_be_reached_is_called_the_student(tmp_path: Path) -> None:
    """`gen eval` with a wrong --student-base-url said "cannot reach the teacher": the user went to check
    the teacher, which was fine. And a student that does not list its model was told to pass --model,
    a flag gen eval does not have."""
    import socket

    recipe = _seed_recipe(tmp_path / "r", "seed.jsonl", [{"q": f"question {i}"} for i in range(6)])
    out = tmp_path / "out"
    run(recipe, RunOptions(output=out, progress=False))
    with socket.socket() as s:  # a free port: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run(
        [sys.executable, "-m", "gen", "eval", str(out), "--student-model", "student-1", "--split", "all",
         "--student-base-url", f"http://127.0.0.1:{port}/v1", "--no-judge", "--no-progress"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "student" in proc.stderr and "teacher" not in proc.stderr, proc.stderr


def test_a_student_that_does_not_list_its_model_is_told_the_eval_flag(tmp_path: Path, sim_server) -> None:
    recipe = _seed_recipe(tmp_path / "r", "seed.jsonl", [{"q": f"question {i}"} for i in range(6)])
    out = tmp_path / "out"
    run(recipe, RunOptions(output=out, progress=False))
    server = sim_server(model="student-1")
    proc = subprocess.run(
        [sys.executable, "-m", "gen", "eval", str(out), "--student-model", "student-9", "--split", "all",
         "--student-base-url", server.base_url, "--no-judge", "--no-progress"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "--student-model" in proc.stderr and "--model " not in proc.stderr, proc.stderr
