"""`gen eval` on free text: the LLM judge, with the simulator as teacher, student and judge.

The simulated student answers exactly as the teacher did, except on the requests `gen.sim.perturbed()`
picks, where its text answer gains a word. A judge in `longer` mode prefers the answer with more words
and ties equal ones: so the perturbed rows win (both orders), the others tie, and every count is known
in advance, row by row. A prompt that shows the answers the other way round turns the wins into losses.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import rows_in

import gen
from gen import RunOptions, run
from gen.cli import main
from gen.eval_compare import wilson
from gen.evaluation import compare_evals
from gen.sim import perturbed

N = 12
SHARE = 0.5


def _recipe(
    d: Path, *, sim: str = "", schema: bool = False, n: int = N, topics: list[str] | None = None
) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "s.json").write_text(json.dumps({"type": "object", "properties": {"a": {"type": "string"}}}))
    listed = json.dumps(topics if topics is not None else [f"topic {i}" for i in range(n)])
    (d / "p.toml").write_text(
        'name = "t"\nversion = "1"\nintended_use = "research"\neval_fraction = 0.3\n'
        + ('schema = "s.json"\n' if schema else "")
        + '[teacher]\nprovider = "sim"\nmodel = "gen-sim-1"\nlicense = "mit"\n'
        + (f"[sim]\n{sim}\n" if sim else "")
        + '[sampling]\nmax_tokens = 200\n[messages]\nsystem = "Answer briefly."\nuser = "About {{ topic }}"\n'
        + f"[variables]\ntopic = {listed}\n"
    )
    return d / "p.toml"


def free_text_dataset(d: Path, *, n: int = N, sim: str = "") -> Path:
    """A free-text dataset of `n` rows (`_recipe`) made in `d` by the launched simulator: its output."""
    result = run(_recipe(d / "r", sim=sim, n=n), RunOptions(output=d / "out", progress=False))
    assert result.status == "complete" and result.stats.rows == n
    return d / "out"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A free-text dataset of 12 rows made by the launched simulator, whose [sim] table makes it a
    `longer` judge too (the default judge: the dataset's teacher)."""
    return free_text_dataset(tmp_path_factory.mktemp("free"), sim='judge = "longer"')


def _copy(dataset: Path, tmp_path: Path) -> Path:
    shutil.copytree(dataset, tmp_path / "out")
    return tmp_path / "out"


def _perturbed_ids(rows: list[dict], share: float) -> set[str]:
    """The rows the simulated student answers differently: gen sends the seed int(id[:8], 16) & 0x7FFFFFFF."""
    return {r["id"] for r in rows if perturbed(str(int(r["id"][:8], 16) & 0x7FFFFFFF).encode(), share)}


def _eval(out: Path, student, *args: str, env: dict | None = None) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "gen", "eval", str(out), "--student-base-url", student.base_url,
         "--student-model", "student-1", "--no-progress", "--split", "all", *args],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    return proc.returncode, proc.stderr


def _swapped_prompt(tmp_path: Path) -> Path:
    """A judge prompt that shows answer B where A belongs and A where B does: the judge's preference
    for the longer answer becomes a preference for the shorter."""
    p = tmp_path / "judge.md"
    p.write_text(
        "{{ conversation }}\n<answer_a>{{ answer_b }}</answer_a>\n<answer_b>{{ answer_a }}</answer_b>\n"
        "End with VERDICT: A, VERDICT: B or VERDICT: TIE.\n"
    )
    return p


def test_win_tie_loss_counts_are_exact(dataset: Path, tmp_path: Path, sim_server) -> None:
    out = _copy(dataset, tmp_path)
    student = sim_server(model="student-1", perturb_share=SHARE)
    judge = sim_server(model="judge-1", judge="longer")
    rows = rows_in(out)
    won = _perturbed_ids(rows, SHARE)
    assert 0 < len(won) < N  # a mix, or the test proves nothing
    report = gen.evaluate(
        out,
        student="student-1",
        student_base_url=student.base_url,
        split="all",
        judge_model="judge-1",
        judge_base_url=judge.base_url,
    )
    assert report.judge is not None and report.judge.model == "judge-1"
    assert report.judge.counts == {
        "win": len(won), "tie": N - len(won), "loss": 0, "unparseable": 0, "error": 0, "no_answer": 0,
    }  # fmt: skip
    for name, k in (("win", len(won)), ("tie", N - len(won)), ("loss", 0), ("non_loss", N)):
        figure = getattr(report.judge, name)
        assert (figure.k, figure.n) == (k, N), name
        assert figure.ci95 == pytest.approx(wilson(k, N)), name
    assert student.stats()["requests"] == N  # the student asked once per row
    assert judge.stats()["requests"] == 2 * N  # each pair asked in both orders
    data = json.loads((report.eval_dir / "report.json").read_text())
    assert data["judge"]["provider"] == "openai" and data["judge"]["base_url"] == judge.base_url
    assert data["judge"]["prompt"].endswith("judge.md") and len(data["judge"]["prompt_sha256"]) == 64
    results = pq.read_table(report.eval_dir / "results.parquet").to_pylist()
    assert {r["id"]: r["judge"] for r in results} == {
        r["id"]: "win" if r["id"] in won else "tie" for r in rows
    }
    md = (report.eval_dir / "report.md").read_text()
    assert "## Judge" in md and f"| win | {len(won)}/{N} = " in md
    card = (out / "README.md").read_text()
    assert f"win/tie/loss {len(won)}/{N - len(won)}/0" in card


def test_the_default_judge_is_the_dataset_s_teacher(dataset: Path, tmp_path: Path, sim_server) -> None:
    """No judge flag: the teacher the manifest records (provider sim: gen starts it from the recipe,
    whose [sim] table makes it a `longer` judge)."""
    out = _copy(dataset, tmp_path)
    student = sim_server(model="student-1", perturb_share=SHARE)
    won = _perturbed_ids(rows_in(out), SHARE)
    code, err = _eval(out, student, "--min-agreement", "1")
    assert code == 0, err
    last = err.strip().splitlines()[-1]
    assert f"judge win/tie/loss {len(won)}/{N - len(won)}/0" in last and "verdict: PASS" in last
    d = next((out / "evals").iterdir())
    j = json.loads((d / "report.json").read_text())["judge"]
    assert (j["provider"], j["model"], j["base_url"]) == ("sim", "gen-sim-1", None)


def test_replaced_prompt_and_the_gate(dataset: Path, tmp_path: Path, sim_server) -> None:
    """--judge-prompt is the prompt sent: shown swapped, the longer answers now lose. --min-agreement on
    free text gates on the judge's non-loss rate."""
    out = _copy(dataset, tmp_path)
    student = sim_server(model="student-1", perturb_share=SHARE)
    judge = sim_server(model="judge-1", judge="longer")
    lost = _perturbed_ids(rows_in(out), SHARE)
    flags = ["--judge-model", "judge-1", "--judge-base-url", judge.base_url,
             "--judge-prompt", str(_swapped_prompt(tmp_path))]  # fmt: skip
    non_loss = (N - len(lost)) / N
    code, err = _eval(out, student, *flags, "--min-agreement", f"{non_loss + 0.01:.4f}")
    assert code == 4, err
    last = err.strip().splitlines()[-1]
    assert f"judge win/tie/loss 0/{N - len(lost)}/{len(lost)}" in last
    assert f"judge non-loss {non_loss:.1%} < --min-agreement" in last and "verdict: FAIL" in last
    code, err = _eval(out, student, *flags, "--min-agreement", f"{non_loss - 0.01:.4f}")
    assert code == 0 and "verdict: PASS" in err.strip().splitlines()[-1], err


def test_undecided_rows_and_a_student_without_answers(dataset: Path, tmp_path: Path, sim_server) -> None:
    out = _copy(dataset, tmp_path)
    garbage = sim_server(model="judge-1", judge="garbage")
    student = sim_server(model="student-1")
    report = gen.evaluate(
        out, student="student-1", student_base_url=student.base_url, split="all", limit=3,
        judge_model="judge-1", judge_base_url=garbage.base_url,
    )  # fmt: skip
    assert report.judge is not None and report.judge.counts["unparseable"] == 3
    assert report.judge.non_loss.n == 0 and report.judge.non_loss.rate is None  # nothing decided
    assert garbage.stats()["requests"] == 3 * 3  # three asks of the first order, the second never asked
    # A student whose every answer is cut short (rejected): each row is a loss, the judge never asked.
    judge = sim_server(model="judge-1", judge="longer")
    broken = sim_server(model="student-1", rate_truncated=1.0)
    report = gen.evaluate(
        out, student="student-1", student_base_url=broken.base_url, split="all", limit=3, max_retries=0,
        judge_model="judge-1", judge_base_url=judge.base_url,
    )  # fmt: skip
    assert report.valid.k == 0
    assert report.judge is not None and report.judge.counts["no_answer"] == 3
    assert (report.judge.loss.k, report.judge.loss.n) == (3, 3)
    assert judge.stats()["requests"] == 0
    # A judge that keeps failing: `error` rows, left out of the rates and not kept for a resume.
    failing = sim_server(model="judge-1", rate_500=1.0)
    report = gen.evaluate(
        out, student="student-1", student_base_url=student.base_url, split="all", limit=2, max_retries=0,
        judge_model="judge-1", judge_base_url=failing.base_url,
    )  # fmt: skip
    assert report.judge is not None and report.judge.counts["error"] == 2 and report.judge.win.n == 0
    assert (report.eval_dir / "judge.jsonl").read_text() == ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_judge_stops_before_the_student(dataset: Path, tmp_path: Path, sim_server) -> None:
    out = _copy(dataset, tmp_path)
    student = sim_server(model="student-1")
    locked = sim_server(model="judge-1", judge="longer", api_key="right-key")
    env = {**os.environ, "JUDGE_KEY": "wrong-key"}
    for flags, needle in (
        (["--judge-base-url", f"http://127.0.0.1:{_free_port()}/v1", "--judge-model", "m"], "judge http://"),
        (["--judge-base-url", sim_server(judge="longer").base_url, "--judge-model", "gpt-j"], "'gpt-j'"),
        (["--judge-base-url", locked.base_url, "--judge-model", "judge-1", "--judge-api-key-env",
          "JUDGE_KEY"], "refused"),
    ):  # fmt: skip
        code, err = _eval(out, student, *flags, env=env)
        assert code == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "judge" in lines[0] and needle in lines[0], err
        assert "wrong-key" not in err
    assert student.stats()["requests"] == 0  # not one request to the student
    assert not (out / "evals").exists() or not any((out / "evals").iterdir())


def test_judge_flags_are_checked(dataset: Path, tmp_path: Path, sim_server, capsys, monkeypatch) -> None:
    student = sim_server(model="student-1")
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    base = ["eval", str(dataset), "--student-model", "student-1", "--student-base-url", student.base_url]
    for args, needle in (
        (["--judge-base-url", "localhost:1"], "--judge-base-url"),
        (["--judge-provider", "nope"], "--judge-provider"),
        (["--judge-api-key-env", "NO_SUCH_KEY"], "NO_SUCH_KEY"),
        (["--judge-prompt", str(tmp_path / "missing.md")], "missing.md"),
        (["--no-judge", "--min-agreement", "0.5"], "--min-agreement"),
        (["--no-judge", "--judge-model", "x"], "--judge-model"),
    ):
        assert main(base + args) == 2, args
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and needle in err, err
    # A dataset with a schema is compared field by field: a judge flag there is a mistake.
    d = tmp_path / "s"
    assert run(_recipe(d, schema=True, n=3), RunOptions(output=d / "o", progress=False)).status == "complete"
    assert main(["eval", str(d / "o"), "--student-model", "student-1", "--student-base-url",
                 student.base_url, "--split", "all", "--judge-model", "x"]) == 2  # fmt: skip
    assert "has a schema" in capsys.readouterr().err
    assert student.stats()["requests"] == 0


def test_no_judge(dataset: Path, tmp_path: Path, sim_server) -> None:
    out = _copy(dataset, tmp_path)
    student = sim_server(model="student-1", perturb_share=SHARE)
    report = gen.evaluate(
        out, student="student-1", student_base_url=student.base_url, split="all", no_judge=True
    )
    assert report.judge is None and report.data["judge"] == "not judged (--no-judge)"
    assert report.agreement.k == N - len(_perturbed_ids(rows_in(out), SHARE))  # exact match still


def test_resume_reuses_the_verdicts_and_does_not_ask_the_student_again(
    dataset: Path, tmp_path: Path, sim_server
) -> None:
    out = _copy(dataset, tmp_path)
    student = sim_server(model="student-1", perturb_share=SHARE)
    judge = sim_server(model="judge-1", judge="longer", latency_ms=150)
    flags = ["--judge-model", "judge-1", "--judge-base-url", judge.base_url, "--max-concurrency", "2"]
    args = [sys.executable, "-m", "gen", "eval", str(out), "--student-base-url", student.base_url,
            "--student-model", "student-1", "--no-progress", "--split", "all", *flags]  # fmt: skip
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while judge.stats()["ok"] < 8 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "--resume" in err and "judging" in err
    d = next((out / "evals").iterdir())
    assert not (d / "report.json").exists()
    lines = [json.loads(line) for line in (d / "judge.jsonl").read_text().splitlines()]
    # The verdicts: a pair interrupted after its first order was answered keeps an `error` line (what it
    # cost), no verdict, and is asked again in full (counting it as kept made this test fail at times).
    kept = [e for e in lines if e["verdict"] != "error"]
    assert 0 < len(kept) < N
    asked_before = judge.stats()["requests"]
    assert student.stats()["requests"] == N
    code, err = _eval(out, student, *flags, "--resume", str(d))
    assert code == 0, err
    assert student.stats()["requests"] == N  # the student's answers were not asked again
    # The pairs with a verdict were not judged again: only the others, both orders each (the two in
    # flight at Ctrl-C, at most 2 requests each, are asked again in full).
    assert asked_before - 2 * len(kept) <= 4
    assert judge.stats()["requests"] == asked_before + 2 * (N - len(kept))
    report = json.loads((d / "report.json").read_text())
    won = _perturbed_ids(rows_in(out), SHARE)
    assert report["judge"]["counts"]["win"] == len(won) and report["judge"]["counts"]["tie"] == N - len(won)


def test_compare_shows_the_judge(dataset: Path, tmp_path: Path, sim_server, capsys) -> None:
    out = _copy(dataset, tmp_path)
    judge = sim_server(model="judge-1", judge="longer")
    same = sim_server(model="student-1")
    better = sim_server(model="student-1", perturb_share=SHARE)
    kw = {"split": "all", "judge_model": "judge-1", "judge_base_url": judge.base_url}
    a = gen.evaluate(out, student="student-1", student_base_url=same.base_url, **kw)
    b = gen.evaluate(out, student="student-1", student_base_url=better.base_url, **kw)
    assert a.judge is not None and a.judge.counts["tie"] == N
    c = compare_evals(a.eval_dir, b.eval_dir)
    won = len(_perturbed_ids(rows_in(out), SHARE))
    assert c["judge"]["win"]["change"] == pytest.approx(won / N)
    assert main(["eval", "--compare", str(a.eval_dir), str(b.eval_dir)]) == 0
    printed = capsys.readouterr().out
    assert "judge win" in printed and "judge non-loss" in printed and "judge: judge-1" in printed


def test_fresh_inputs_are_judged_too(dataset: Path, tmp_path: Path, sim_server) -> None:
    """--inputs on free text: the teacher answers the new inputs first, then the student, then the judge
    compares the two, with the conversation of the fresh rows."""
    out = _copy(dataset, tmp_path)
    fresh = _recipe(tmp_path / "fresh", topics=[f"new topic {i}" for i in range(8)])
    student = sim_server(model="student-1", perturb_share=SHARE)
    judge = sim_server(model="judge-1", judge="longer")
    report = gen.evaluate(
        out, student="student-1", student_base_url=student.base_url, inputs=fresh,
        judge_model="judge-1", judge_base_url=judge.base_url,
    )  # fmt: skip
    won = _perturbed_ids(rows_in(report.eval_dir / "teacher"), SHARE)
    assert report.split == "fresh" and report.rows == 8 and 0 < len(won) < 8
    assert report.judge is not None
    assert (report.judge.counts["win"], report.judge.counts["tie"]) == (len(won), 8 - len(won))
    assert judge.stats()["requests"] == 16


def test_gen_sim_plays_the_judge_from_the_command_line(dataset: Path, tmp_path: Path, sim_server) -> None:
    out = _copy(dataset, tmp_path)
    port = _free_port()
    judge = subprocess.Popen(
        [sys.executable, "-m", "gen", "sim", "--port", str(port), "--model", "judge-1", "--judge", "longer"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert judge.stderr is not None and f":{port}/v1" in judge.stderr.readline()  # serving
        student = sim_server(model="student-1", perturb_share=SHARE)
        won = _perturbed_ids(rows_in(out), SHARE)
        code, err = _eval(
            out, student, "--judge-model", "judge-1", "--judge-base-url", f"http://127.0.0.1:{port}/v1"
        )
        assert code == 0, err
        assert f"judge win/tie/loss {len(won)}/{N - len(won)}/0" in err.strip().splitlines()[-1]
    finally:
        judge.terminate()
        judge.communicate(timeout=30)
