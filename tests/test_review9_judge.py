"""Review of `gen eval --max-usd`'s judge reservations (session 9): what it still let the judge pay.

A judge request that fails after the judge may have billed it (it timed out, or answered a 2xx gen could
not keep: malformed, over the size cap; gen.errors.TeacherError.billed) or that is given up in flight
(Ctrl-C) counts at its reservation, as `gen run` counts the teacher's (README, Budgets): the judge
counted it at nothing, so a judge whose replies could not be read was asked pair after pair, each
request paid and none counted, far past --max-usd. The simulator counts a malformed reply's tokens as
served (it generated them): what it served, priced, is what gen paid.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_eval_judge import free_text_dataset
from test_judge_budget_reserved import _eval, _lines, _paid

from gen.budget import price_for

N = 40
JUDGE = "gpt-4o-mini"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return free_text_dataset(tmp_path_factory.mktemp("free"), n=N)


def _counted(d: Path) -> float:
    """What judge.jsonl makes --max-usd count: each line's answered tokens and unanswered reservations."""
    price = price_for(JUDGE)
    assert price is not None
    return sum(price.cost(*e["u"]) + price.cost(*e.get("r", (0, 0))) for e in _lines(d))


def test_billed_replies_gen_cannot_read_count_against_max_usd(
    dataset: Path, tmp_path: Path, sim_server
) -> None:
    out = tmp_path / "out"
    shutil.copytree(dataset, out)
    student = sim_server(model="student-1")
    judge = sim_server(model=JUDGE, judge="longer", rate_malformed=1.0, malformed="usage_string")
    limit = 0.001  # a pair reserves ~$0.0007; 40 pairs x 2 malformed replies cost the judge ~$0.004
    proc = _eval(out, student, judge, "--max-usd", repr(limit), "--max-retries", "1")
    paid = _paid(judge)
    assert paid <= limit, (paid, limit, judge.stats())
    assert proc.returncode == 3, proc.stderr  # the budget stopped it, not the end of the rows
    assert "--max-usd" in proc.stderr
    d = next((out / "evals").iterdir())
    assert _counted(d) >= paid  # at their reservations: what a resume's --max-usd counts
    # Resumed under the same limit: what the failed requests reserved stays spent. The rule lets one
    # pair out while the spend is below the limit (as gen run lets one request out), then none.
    asked = judge.stats()["requests"]
    again = ("--max-usd", repr(limit), "--resume", str(d), "--max-retries", "1")
    proc = _eval(out, student, judge, *again)
    assert proc.returncode == 3, proc.stderr
    assert judge.stats()["requests"] <= asked + 2
    asked = judge.stats()["requests"]
    assert _eval(out, student, judge, *again).returncode == 3
    assert judge.stats()["requests"] == asked  # the reservations counted: past the limit, none asked


def test_a_request_given_up_in_flight_counts_at_its_reservation(
    dataset: Path, tmp_path: Path, sim_server
) -> None:
    """Ctrl-C while a pair's first request is in flight: the judge may bill it (the simulator answers it
    all the same). Nothing of the pair was answered, so nothing was kept and the resume, under a budget
    smaller than one pair, let one more pair out (on every Ctrl-C and resume); its reservation stays
    open in judge_reserved.jsonl and every later run counts it."""
    out = tmp_path / "out"
    shutil.copytree(dataset, out)
    student = sim_server(model="student-1")
    judge = sim_server(model=JUDGE, judge="longer", latency_ms=1500)
    cmd = [sys.executable, "-m", "gen", "eval", str(out), "--student-base-url", student.base_url,
           "--student-model", "student-1", "--no-progress", "--split", "all", "--max-concurrency", "4",
           "--judge-model", JUDGE, "--judge-base-url", judge.base_url, "--max-usd", "0.00005"]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while judge.stats()["requests"] < 1 and time.monotonic() < deadline:  # the first request in flight
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    while judge.stats()["ok"] < 1 and time.monotonic() < deadline:  # the simulator answers it regardless
        time.sleep(0.05)
    assert judge.stats()["requests"] == 1 and _paid(judge) > 0
    d = next((out / "evals").iterdir())
    assert not (d / "judge.jsonl").exists() or not _lines(d)  # no answer: no line, as before
    done = subprocess.run([*cmd, "--resume", str(d)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert judge.stats()["requests"] == 1  # the abandoned request's reservation spent the budget


def test_a_resume_with_another_judge_prompt_counts_what_the_first_cost(
    dataset: Path, tmp_path: Path, sim_server
) -> None:
    """--max-usd bounds what the evaluation pays across its runs. A resume with another judge prompt (or
    model) asks the pairs again for that judge, and counted only that judge's judge.jsonl lines: what the
    first judge was paid was forgotten, and the two runs together paid past the limit."""
    from gen.judge import default_prompt_path

    out = tmp_path / "out"
    shutil.copytree(dataset, out)
    student = sim_server(model="student-1")
    judge = sim_server(model=JUDGE, judge="longer")
    limit = 0.002  # a pair costs ~$0.0001 and reserves ~$0.0007: ~13 of the 40 pairs, one at a time
    proc = _eval(out, student, judge, "--max-usd", repr(limit), concurrency=1)
    assert proc.returncode == 3, proc.stderr
    d = next((out / "evals").iterdir())
    first = _paid(judge)
    assert limit / 2 < first <= limit
    other = tmp_path / "judge-b.md"
    other.write_text(default_prompt_path().read_text() + "\nBe brief.\n")
    proc = _eval(
        out, student, judge, "--max-usd", repr(limit), "--resume", str(d), "--judge-prompt", str(other),
        concurrency=1,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    assert _paid(judge) <= limit, (first, _paid(judge), limit)


def test_a_sigkill_mid_pair_is_counted_by_the_resume(dataset: Path, tmp_path: Path, sim_server) -> None:
    """gen eval SIGKILLed while a judge request is in flight: the judge may bill it (the simulator
    answers it all the same), but judge.jsonl gets a pair's line only when the pair ends, so the resume
    counted nothing of it and, under a budget smaller than one pair, let one more pair out on every
    kill and resume. Each request is reserved on disk before it leaves, as gen run journals the
    teacher's, and a resume counts a reservation its pair never settled."""
    out = tmp_path / "out"
    shutil.copytree(dataset, out)
    student = sim_server(model="student-1")
    judge = sim_server(model=JUDGE, judge="longer", latency_ms=1500)
    limit = "0.00005"  # below one pair's reservation (~$0.0007): exactly one pair is let out
    cmd = [sys.executable, "-m", "gen", "eval", str(out), "--student-base-url", student.base_url,
           "--student-model", "student-1", "--no-progress", "--split", "all", "--max-concurrency", "4",
           "--judge-model", JUDGE, "--judge-base-url", judge.base_url, "--max-usd", limit]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while judge.stats()["requests"] < 1 and time.monotonic() < deadline:  # the first request in flight
        time.sleep(0.01)
    proc.kill()
    proc.communicate(timeout=60)
    while judge.stats()["ok"] < 1 and time.monotonic() < deadline:  # the simulator answers it regardless
        time.sleep(0.05)
    assert judge.stats()["requests"] == 1 and _paid(judge) > 0
    d = next((out / "evals").iterdir())
    done = subprocess.run([*cmd, "--resume", str(d)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert judge.stats()["requests"] == 1  # the killed request's reservation spent the budget: none asked
