"""The judge's requests are counted and priced: report.json's `judge.tokens` and `judge.cost_usd`, and
`cost_per_1000_rows_usd.judge`, from the tokens the judge reported for every pair, kept in judge.jsonl
so a resumed evaluation still counts the pairs judged before it stopped."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import gen
from gen import RunOptions, run
from gen.budget import price_for
from gen.evaluation import EvalOptions, prepare_eval, write_report

N = 8


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("free")
    topics = json.dumps([f"topic {i}" for i in range(N)])
    (d / "p.toml").write_text(
        'name = "t"\nversion = "1"\nintended_use = "research"\neval_fraction = 0.3\n'
        '[teacher]\nprovider = "sim"\nmodel = "gen-sim-1"\nlicense = "mit"\n'
        '[sampling]\nmax_tokens = 200\n[messages]\nsystem = "Answer briefly."\nuser = "About {{ topic }}"\n'
        f"[variables]\ntopic = {topics}\n"
    )
    result = run(d / "p.toml", RunOptions(output=d / "out", progress=False))
    assert result.status == "complete" and result.stats.rows == N
    return d / "out"


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
