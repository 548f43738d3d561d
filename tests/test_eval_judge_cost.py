"""The judge's requests are counted and priced: report.json's `judge.tokens` and `judge.cost_usd`, and
`cost_per_1000_rows_usd.judge`, from the tokens the judge reported for every pair, kept in judge.jsonl
so a resumed evaluation still counts the pairs judged before it stopped."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_eval_judge import free_text_dataset

import gen
from gen.budget import price_for
from gen.evaluation import EvalOptions, prepare_eval, write_report

N = 8


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return free_text_dataset(tmp_path_factory.mktemp("free"), n=N)


def test_judge_tokens_and_cost_are_reported(dataset: Path, tmp_path: Path, sim_server) -> None:
    out = tmp_path / "out"
    shutil.copytree(dataset, out)
    student = sim_server(model="student-1", perturb_share=0.5)
    judge = sim_server(model="gpt-4o-mini", judge="longer")  # a model the price table prices
    report = gen.evaluate(
        out,
        student="student-1",
        student_base_url=student.base_url,
        split="all",
        judge_model="gpt-4o-mini",
        judge_base_url=judge.base_url,
    )
    data = report.data
    lines = [json.loads(line) for line in (report.eval_dir / "judge.jsonl").read_text().splitlines()]
    assert len(lines) == N and judge.stats()["requests"] == 2 * N
    prompt = sum(e["u"][0] for e in lines)
    completion = sum(e["u"][1] for e in lines)
    assert prompt > 0 and completion > 0  # each pair's two requests, as the judge reported them
    assert data["judge"]["tokens"] == {"prompt": prompt, "completion": completion}
    price = price_for("gpt-4o-mini")
    assert price is not None and price.input > 0
    assert data["judge"]["cost_usd"] == pytest.approx(price.cost(prompt, completion))
    cost = data["cost_per_1000_rows_usd"]
    assert cost["judge"] == pytest.approx(price.cost(prompt, completion) / N * 1000)
    assert cost["judge_basis"] == "price table"
    assert "| judge cost per 1,000 rows |" in (report.eval_dir / "report.md").read_text()

    # The report of a resumed evaluation reads the judge's tokens back from judge.jsonl (no request).
    again = report.eval_dir.with_name(report.eval_dir.name + "-again")
    shutil.copytree(report.eval_dir, again)
    (again / "report.json").unlink()
    plan = prepare_eval(
        out,
        EvalOptions(
            student_model="student-1",
            student_base_url=student.base_url,
            judge_model="gpt-4o-mini",
            judge_base_url=judge.base_url,
            resume=again,
        ),
    )
    resumed = write_report(plan, served=["student-1"], wall_s=1.0).data
    assert judge.stats()["requests"] == 2 * N  # every verdict reused
    assert resumed["judge"]["tokens"] == data["judge"]["tokens"]
    assert resumed["cost_per_1000_rows_usd"]["judge"] == pytest.approx(cost["judge"])


def test_an_unpriced_judge_says_so(dataset: Path, tmp_path: Path, sim_server) -> None:
    out = tmp_path / "out"
    shutil.copytree(dataset, out)
    student = sim_server(model="student-1")
    judge = sim_server(model="judge-unlisted-1", judge="longer")
    report = gen.evaluate(
        out,
        student="student-1",
        student_base_url=student.base_url,
        split="all",
        judge_model="judge-unlisted-1",
        judge_base_url=judge.base_url,
    )
    assert report.data["judge"]["tokens"]["prompt"] > 0
    assert report.data["judge"]["cost_usd"] is None
    cost = report.data["cost_per_1000_rows_usd"]
    assert cost["judge"] is None and cost["judge_basis"] == "unpriced"


def test_max_usd_stops_the_judge_and_a_resume_finishes(dataset: Path, tmp_path: Path, sim_server) -> None:
    """--max-usd bounds the judge: judging stops once the judged pairs cost it (nothing written but the
    verdicts, exit 3 as for gen run's budget), and a resume with a higher limit judges only the rest."""
    import subprocess
    import sys

    out = tmp_path / "out"
    shutil.copytree(dataset, out)
    student = sim_server(model="student-1", perturb_share=0.5)
    judge = sim_server(model="gpt-4o-mini", judge="longer")
    price = price_for("gpt-4o-mini")
    assert price is not None
    args = [sys.executable, "-m", "gen", "eval", str(out), "--student-base-url", student.base_url,
            "--student-model", "student-1", "--no-progress", "--split", "all", "--max-concurrency", "1",
            "--judge-model", "gpt-4o-mini", "--judge-base-url", judge.base_url]  # fmt: skip
    # A first evaluation gives what a pair costs (each pair's requests are alike in size).
    first = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    d1 = next((out / "evals").iterdir())
    per_pair = json.loads((d1 / "report.json").read_text())["judge"]["cost_usd"] / N
    assert per_pair > 0
    requests_before = judge.stats()["requests"]

    limit = 2.5 * per_pair
    proc = subprocess.run([*args, "--max-usd", f"{limit!r}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert "--max-usd" in proc.stderr and "judge.jsonl" in proc.stderr and "--resume" in proc.stderr
    d2 = next(p for p in (out / "evals").iterdir() if p != d1)
    assert not (d2 / "report.json").exists() and not (d2 / "results.parquet").exists()
    lines = [json.loads(line) for line in (d2 / "judge.jsonl").read_text().splitlines()]
    spent = sum(price.cost(*e["u"]) for e in lines)
    assert 1 <= len(lines) < N
    assert spent < limit + 1.5 * per_pair  # one pair begun below the limit may end above it

    proc = subprocess.run(
        [*args, "--max-usd", "1000", "--resume", str(d2)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads((d2 / "report.json").read_text())
    assert sum(data["judge"]["counts"][v] for v in ("win", "tie", "loss")) == N
    assert judge.stats()["requests"] - requests_before == 2 * N  # no pair asked twice
    assert data["judge"]["cost_usd"] == pytest.approx(per_pair * N, rel=0.2)


def test_max_usd_with_an_unpriced_judge_is_refused(dataset: Path, tmp_path: Path, sim_server) -> None:
    out = tmp_path / "out"
    shutil.copytree(dataset, out)
    student = sim_server(model="student-1")
    judge = sim_server(model="judge-unlisted-1", judge="longer")
    with pytest.raises(gen.errors.ConfigError, match="--max-usd.*no price"):
        gen.evaluate(
            out,
            student="student-1",
            student_base_url=student.base_url,
            judge_model="judge-unlisted-1",
            judge_base_url=judge.base_url,
            max_usd=1.0,
        )
    assert student.stats()["requests"] == 0 and judge.stats()["requests"] == 0
