"""`gen audit` checks a judged evaluation's judge.jsonl: every line an intact verdict of a row the
evaluation holds, and the verdicts the report counted (results.parquet's `judge` column and report.json's
counts) are the ones the file holds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_eval_judge import free_text_dataset

import gen
from gen.audit import audit

N = 10


@pytest.fixture(scope="module")
def judged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A free-text dataset and one evaluation of it judged by a `longer` judge (a master copy)."""
    return free_text_dataset(tmp_path_factory.mktemp("judged"), n=N)


def _evaluated(judged: Path, tmp_path: Path, sim_server) -> tuple[Path, Path]:
    out = tmp_path / "out"
    shutil.copytree(judged, out)
    student = sim_server(model="student-1", perturb_share=0.5)
    judge = sim_server(model="judge-1", judge="longer")
    report = gen.evaluate(
        out,
        student="student-1",
        student_base_url=student.base_url,
        split="all",
        judge_model="judge-1",
        judge_base_url=judge.base_url,
    )
    assert report.judge is not None and report.judge.counts["win"] > 0
    return out, report.eval_dir


def _lines(eval_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (eval_dir / "judge.jsonl").read_text().splitlines()]


def _write(eval_dir: Path, entries: list[dict], extra: str = "") -> None:
    (eval_dir / "judge.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries) + extra)


def _problems(out: Path) -> list[str]:
    return [f"{f.shard}: {f.problem}" for f in audit(out).findings]


def test_a_judged_evaluation_audits_clean(judged: Path, tmp_path: Path, sim_server) -> None:
    out, d = _evaluated(judged, tmp_path, sim_server)
    assert len(_lines(d)) == N
    assert audit(out).clean, _problems(out)


def test_a_changed_verdict_is_found(judged: Path, tmp_path: Path, sim_server) -> None:
    out, d = _evaluated(judged, tmp_path, sim_server)
    entries = _lines(d)
    won = next(e for e in entries if e["verdict"] == "win")
    won["verdict"] = "loss"
    _write(d, entries)
    problems = _problems(out)
    assert any("judge.jsonl" in p and won["id"] in p and "results.parquet says win" in p for p in problems), (
        problems
    )


def test_a_verdict_of_a_row_not_evaluated_and_a_broken_line_are_found(
    judged: Path, tmp_path: Path, sim_server
) -> None:
    out, d = _evaluated(judged, tmp_path, sim_server)
    entries = _lines(d)
    stranger = {**entries[0], "id": "f" * 32}
    _write(d, [*entries, stranger, {"id": entries[1]["id"], "verdict": "great", "judge": "x"}])
    problems = _problems(out)
    assert any(f"id {'f' * 32} is not a row of this evaluation" in p for p in problems), problems
    assert any("not a verdict" in p for p in problems), problems
    # A line a crash cut short is skipped, as gen eval skips it: a note, not a finding.
    _write(d, entries, extra='{"id": "abc", "verd')
    result = audit(out)
    assert result.clean, _problems(out)
    assert any("judge.jsonl" in n and "cut short" in n for n in result.notes), result.notes


def test_missing_verdicts_and_counts_that_differ_are_found(judged: Path, tmp_path: Path, sim_server) -> None:
    out, d = _evaluated(judged, tmp_path, sim_server)
    (d / "judge.jsonl").unlink()
    assert any("judge.jsonl" in p and "missing" in p for p in _problems(out))
    # The verdicts intact, but the report counts another number of wins than results.parquet holds.
    entries = [
        {"id": r["id"], "verdict": r["judge"], "judge": None}
        for r in pq.read_table(d / "results.parquet").to_pylist()
    ]
    data = json.loads((d / "report.json").read_text())
    key = f"{data['judge']['provider']}:{data['judge']['model']}:{data['judge']['prompt_sha256']}"
    _write(d, [{**e, "judge": key} for e in entries])
    assert audit(out).clean, _problems(out)
    data["judge"]["counts"]["win"] += 1
    (d / "report.json").write_text(json.dumps(data))
    assert any("report.json counts" in p and "win" in p for p in _problems(out)), _problems(out)
