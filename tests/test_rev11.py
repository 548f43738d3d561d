"""Hostile review of verification and rejection sampling across crashes (rev11): each test here failed on
the code before its fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import rows_in
from test_verify import PROBLEMS, _counts, _plan, _prompt, _refused, _run

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}  # this checkout's gen


@pytest.mark.parametrize("before", [None, 4])
def test_tries_in_shards_the_manifest_missed_are_counted_on_resume(
    tmp_path: Path, before: int | None
) -> None:
    # A kill between a checkpoint's shard renames and its manifest write leaves shards no manifest
    # lists (and, at the first checkpoint, no manifest at all). The resume indexed their ids (not asked
    # again) but its verification counters started from the old manifest's: those tries were lost from
    # tries / failed / pass@1 for good.
    prompt = _prompt(tmp_path, 'reference = "{{ answer }}"\nmax_samples = 3', wrong_share=0.5)
    whole = _run(prompt, tmp_path / "whole")
    assert whole.status == "complete"
    out = tmp_path / "o"
    old = None
    if before is not None:  # the manifest of the checkpoint before
        assert _run(prompt, out, limit=before).status == "complete"
        old = (out / "manifest.json").read_bytes(), (out / "README.md").read_bytes()
    assert _run(prompt, out, limit=10).status == "complete"
    # as if killed between the last checkpoint's shard renames and its manifest write
    (out / "manifest.json").unlink()
    (out / "README.md").unlink()
    if old is not None:
        (out / "manifest.json").write_bytes(old[0])
        (out / "README.md").write_bytes(old[1])
    assert _run(prompt, out).status == "complete"
    assert _counts(out) == _counts(tmp_path / "whole")
    assert "pass@1" in (out / "README.md").read_text()
    manifest = json.loads((out / "manifest.json").read_text())  # the runs' counters add up too
    assert sum(r.get("rejects", 0) for r in manifest["runs"]) == manifest["totals"]["rejects"]
    assert sum(r.get("rows", 0) for r in manifest["runs"]) == manifest["totals"]["rows"]


HOSTILE = """
import sys

class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no text")

def check(output, reference, row):
    pid = row["pid"]
    if pid == "P000":
        raise SystemExit(3)
    if pid == "P001":
        raise KeyboardInterrupt("from the verifier")
    if pid == "P002":
        raise Unprintable()
    if pid == "P003":
        sys.exit()
    return output.rstrip(".").endswith("\\\\boxed{" + reference + "}")
"""


def test_a_verifier_that_raises_a_base_exception_is_a_reject_saying_so(tmp_path: Path) -> None:
    # SystemExit, KeyboardInterrupt (the user's, not Ctrl-C: the child ignores SIGINT) and an exception
    # whose str() raises ended the verifier's process: the reject said "ProcessDied: its process ended:
    # EOFError", not what the function raised, and the process printed a traceback on the run's stderr.
    (tmp_path / "verify.py").write_text(HOSTILE)
    prompt = _prompt(tmp_path, 'reference = "{{ answer }}"\npython = "verify.py:check"', wrong_share=0.0)
    proc = subprocess.run(
        [sys.executable, "-m", "gen", "run", str(prompt), "--output", str(tmp_path / "o"), "--no-progress"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120, env=ENV,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = {json.loads(r["vars"])["pid"]: r["error"] for r in rows_in(tmp_path / "o", "rejects")}
    assert errors == {
        "P000": "the verifier raised SystemExit: 3",
        "P001": "the verifier raised KeyboardInterrupt: from the verifier",
        "P002": "the verifier raised Unprintable: (its message could not be read: RuntimeError)",
        "P003": "the verifier raised SystemExit",
    }
    assert len(rows_in(tmp_path / "o")) == len(PROBLEMS) - 4


NOT_A_VERDICT = """
import numpy
import sympy

def check(output, reference, row):
    right = output.rstrip(".").endswith("\\\\boxed{" + reference + "}")
    return {
        "P000": "no", "P001": None, "P002": 1, "P003": "yes", "P004": numpy.bool_(right),
        "P005": sympy.Eq(sympy.Integer(1), sympy.Integer(1 if right else 2)),
    }.get(row["pid"], right)
"""


def test_a_verdict_that_is_not_true_or_false_is_a_reject_saying_so(tmp_path: Path) -> None:
    # The function's return value was taken for its truth: "no" (or "False", "incorrect": a judge's or a
    # tool's answer) kept the answer as verified, a forgotten `return` (None) or a count of errors
    # (1) rejected it as the function saying no.
    pytest.importorskip("numpy")
    pytest.importorskip("sympy")
    (tmp_path / "verify.py").write_text(NOT_A_VERDICT)
    prompt = _prompt(tmp_path, 'reference = "{{ answer }}"\npython = "verify.py:check"', wrong_share=0.0)
    assert _run(prompt, tmp_path / "o").status == "complete"
    errors = {json.loads(r["vars"])["pid"]: r["error"] for r in rows_in(tmp_path / "o", "rejects")}
    assert errors == {
        "P000": "the verifier verify.py:check returned 'no' (str), not True or False",
        "P001": "the verifier verify.py:check returned None (NoneType), not True or False",
        "P002": "the verifier verify.py:check returned 1 (int), not True or False",
        "P003": "the verifier verify.py:check returned 'yes' (str), not True or False",
    }
    kept = {json.loads(r["vars"])["pid"] for r in rows_in(tmp_path / "o")}
    assert {"P004", "P005"} <= kept and len(kept) == len(PROBLEMS) - 4  # numpy's and sympy's are verdicts


@pytest.mark.parametrize("timeout_s", ["inf", "1e300", "1e12"])
def test_a_timeout_no_wait_can_take_is_refused_before_any_request(
    tmp_path: Path, sim_server, timeout_s: str
) -> None:
    # The pipe's poll() raised OverflowError on each call: every answer was paid for, then rejected
    # ("the verifier raised OverflowError"), and the pipe went out of step with the child's verdicts.
    (tmp_path / "verify.py").write_text("def check(output, reference, row):\n    return True\n")
    verify = f'reference = "{{{{ answer }}}}"\npython = "verify.py:check"\ntimeout_s = {timeout_s}'
    _refused(tmp_path, _prompt(tmp_path, verify), sim_server, "timeout_s")


@pytest.mark.parametrize(
    ("line", "extra"),
    [("max_samples = true", ""), ('max_samples = "3"', ""), ("max_samples = 3", "samples = true")],
)
def test_sample_counts_are_integers_not_bools_or_text(
    tmp_path: Path, sim_server, line: str, extra: str
) -> None:
    # `max_samples = true` read as 1 (no further try: rejection sampling silently off), "3" as 3.
    prompt = _prompt(tmp_path, f'reference = "{{{{ answer }}}}"\n{line}')
    if extra:
        prompt.write_text(prompt.read_text().replace("samples = 1\n", f"{extra}\n", 1))
    _refused(tmp_path, prompt, sim_server, "samples")


def test_a_numeric_reference_that_holds_no_number_is_a_reject_before_any_request(
    tmp_path: Path, sim_server
) -> None:
    # No answer can pass `numeric` against a reference without a (finite) number: each of the input's
    # max_samples tries was asked, paid for, then rejected "the reference ... is not a number".
    from gen.config import load_prompt_file
    from gen.templates import Expansion
    from gen.verify import sim_answers

    problems = [("What is 6 x 7?", "42"), ("What is 10^400?", "1e400"), ("Name a colour", "blue")]
    prompt = _prompt(
        tmp_path,
        'reference = "{{ answer }}"\nmethod = "numeric"\nmax_samples = 3',
        wrong_share=0.0,
        provider='provider = "openai"',
        problems=problems,
    )
    sim = sim_server(answers=sim_answers(Expansion(load_prompt_file(prompt), None), "answer"))
    assert _run(prompt, tmp_path / "o", base_url=sim.base_url).status == "complete"
    assert sim.stats()["requests"] == 1
    rejects = rows_in(tmp_path / "o", "rejects")
    assert sorted(r["reference"] for r in rejects) == ["1e400", "blue"]
    assert all(r["attempts"] == 0 and "is not a number" in r["error"] for r in rejects)
    assert _counts(tmp_path / "o")["tries"] == 3


def test_the_simulator_answers_batch_requests_with_the_reference_too(tmp_path: Path, sim_server) -> None:
    # `[sim] answer_from` set the answers of chat requests only: every answer of a --batch run was
    # random text, so a verified batch run kept nothing and could not be tested.
    from gen.cli import main
    from gen.config import load_prompt_file
    from gen.templates import Expansion
    from gen.verify import sim_answers

    prompt = _prompt(tmp_path, 'reference = "{{ answer }}"', provider='provider = "openai"')
    sim = sim_server(
        answers=sim_answers(Expansion(load_prompt_file(prompt), None), "answer"),
        wrong_share=0.3,
        batch_delay_s=0.05,
    )
    argv = ["run", str(prompt), "--base-url", sim.base_url, "--output", str(tmp_path / "o"), "--no-progress"]
    assert main([*argv, "--batch", "--batch-poll", "0.05"]) == 0
    plan = _plan(prompt, 0.3)
    assert {r["id"] for r in rows_in(tmp_path / "o")} == {t for t, ok in plan.items() if ok}
    assert sim.stats()["requests"] == 0 and sim.stats()["batch_requests"] == len(plan)


@pytest.mark.parametrize(
    ("field", "needle"),
    [("steps.0.v", "'steps' is array"), ("steps.v", "'steps' is array"), ("result.x", "'result' is integer")],
)
def test_a_field_inside_an_array_or_a_number_is_refused_before_any_request(
    tmp_path: Path, sim_server, field: str, needle: str
) -> None:
    # The schema lists `steps` as an array and `result` as an integer: no output has field `steps.0.v`
    # or `result.x` (field is dotted object keys), yet every answer was paid for, then rejected "the
    # output has no field", as a typo was before the schema was checked.
    schema = {
        "type": "object",
        "properties": {
            "steps": {"type": "array", "items": {"type": "object", "properties": {"v": {"type": "integer"}}}},
            "result": {"type": "integer"},
        },
        "required": ["steps", "result"],
        "additionalProperties": False,
    }
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    verify = f'reference = "{{{{ answer }}}}"\nmethod = "json-field"\nfield = "{field}"'
    prompt = _prompt(tmp_path, verify, extra='schema = "schema.json"')
    _refused(tmp_path, prompt, sim_server, f"[verify] field {field!r}", needle)


PRINTING = """
print("verifier imported")
def check(output, reference, row):
    print("checking", row["pid"])
    return output.rstrip(".").endswith("\\\\boxed{" + reference + "}")
"""


def test_a_verifier_that_prints_leaves_gen_plan_json_alone(tmp_path: Path) -> None:
    # The verifier's module is imported in gen's own process (to refuse a broken one before any
    # request), and its calls run in a child that shares gen's stdout: their prints went into the JSON
    # `gen plan --json` writes there, and `gen plan --json | jq` failed.
    (tmp_path / "verify.py").write_text(PRINTING)
    prompt = _prompt(tmp_path, 'reference = "{{ answer }}"\npython = "verify.py:check"')
    proc = subprocess.run(
        [sys.executable, "-m", "gen", "plan", str(prompt), "--json", "--pilot", "3",
         "--output", str(tmp_path / "o")],
        capture_output=True, text=True, cwd=tmp_path, timeout=120, env=ENV,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["tasks"]["total"] == len(PROBLEMS)
    assert "verifier imported" in proc.stderr and "checking P000" in proc.stderr


# gen run, with each checkpoint's write held back a while: the answers decided meanwhile reach the
# journal (and the run's counters) before the manifest that the checkpoint writes.
SLOW_CHECKPOINTS = """
import sys, time
import gen.shards
commit = gen.shards.ShardWriter._commit
def slow(self, *args):
    time.sleep(0.5)
    return commit(self, *args)
gen.shards.ShardWriter._commit = slow
from gen.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_killed_run_s_rejects_are_not_counted_again_by_the_resume(tmp_path: Path, sim_server) -> None:
    # A run's entry in the manifest counted its rows and rejects as the manifest was written, past the
    # checkpoint whose shards that manifest lists: the answers decided in between were counted there
    # and again by the resume that replayed them from the journal. The card sums the runs' reasons:
    # "87 rejected (verification_failed: 94)".
    import signal
    import time

    from gen.config import load_prompt_file
    from gen.templates import Expansion
    from gen.verify import sim_answers

    problems = [(f"What is {n} + {n}?", str(2 * n)) for n in range(60)]
    prompt = _prompt(
        tmp_path,
        'reference = "{{ answer }}"\nmax_samples = 3',
        wrong_share=0.5,
        provider='provider = "openai"',
        problems=problems,
    )
    sim = sim_server(
        answers=sim_answers(Expansion(load_prompt_file(prompt), None), "answer"),
        wrong_share=0.5,
        latency_ms=10,
    )
    out = tmp_path / "o"
    argv = ["run", str(prompt), "--base-url", sim.base_url, "--output", str(out), "--no-progress"]
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_CHECKPOINTS, *argv, "--shard-rows", "10"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not (out / "manifest.json").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    killed = json.loads((out / "manifest.json").read_text())
    assert killed["status"] == "running"  # killed mid-run, after its first manifest
    assert _run(prompt, out, base_url=sim.base_url).status == "complete"
    manifest = json.loads((out / "manifest.json").read_text())
    totals, runs = manifest["totals"], manifest["runs"]
    assert sum(r["rejects"] for r in runs) == totals["rejects"]
    assert sum(r["rows"] for r in runs) == totals["rows"]
    assert sum(sum(r["reject_reasons"].values()) for r in runs) == totals["rejects"]
    card = (out / "README.md").read_text()
    assert f"{totals['rejects']:,} rejected (verification_failed: {totals['rejects']:,})" in card
