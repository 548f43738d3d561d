"""What the judge was paid for in pairs that ended as `error` is kept in judge.jsonl: a resumed `gen eval`
asks those pairs again (an error is not a verdict) and still counts what they cost, against --max-usd
and in the report's judge tokens, every run's included.

The faulty judge is the simulator with `rate_500 = 0.5` and a seed whose first four judge requests go
ok, 500, ok, 500: with --max-retries 0 a pair's first order is answered (and billed) and its second
fails, so the pair ends as `error` having cost one request, twice over.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_eval_judge import free_text_dataset

from gen.audit import audit
from gen.budget import price_for

N = 4
SEED = 15  # random.Random(15): 0.97, 0.01, 0.74, 0.16 -> ok, 500, ok, 500 at rate_500 = 0.5


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return free_text_dataset(tmp_path_factory.mktemp("free"), n=N)


def _eval(out: Path, student, judge, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gen", "eval", str(out), "--student-base-url", student.base_url,
         "--student-model", "student-1", "--no-progress", "--split", "all", "--max-concurrency", "1",
         "--max-retries", "0", "--judge-model", "gpt-4o-mini", "--judge-base-url", judge.base_url, *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _tokens(server) -> tuple[int, int]:
    s = server.stats()
    return s["prompt_tokens"], s["completion_tokens"]


def _lines(d: Path) -> list[dict]:
    return [json.loads(line) for line in (d / "judge.jsonl").read_text().splitlines() if line.strip()]


def test_erred_pairs_spend_counts_across_resumes(dataset: Path, tmp_path: Path, sim_server) -> None:
    out = tmp_path / "out"
    shutil.copytree(dataset, out)
    price = price_for("gpt-4o-mini")
    assert price is not None and price.input > 0
    student = sim_server(model="student-1", perturb_share=0.5)
    faulty = sim_server(model="gpt-4o-mini", judge="longer", rate_500=0.5, seed=SEED)

    # Run 1: a limit so small that one pair is begun; it ends as `error` after one answered request.
    proc = _eval(out, student, faulty, "--max-usd", "1e-9")
    assert proc.returncode == 3, proc.stderr
    d = next((out / "evals").iterdir())
    s = faulty.stats()
    assert (s["requests"], s["ok"], s["status_500"]) == (2, 1, 1)  # the pair erred, one request paid for
    paid_once = price.cost(*_tokens(faulty))
    assert paid_once > 0

    # Run 2, resumed: what run 1 paid counts, so a limit of 1.5 times it lets one pair begin (the same
    # erred pair, asked again: ok then 500 again) and stops once that pair has cost as much again.
    proc = _eval(out, student, faulty, "--max-usd", repr(1.5 * paid_once), "--resume", str(d))
    assert proc.returncode == 3, proc.stderr
    s = faulty.stats()
    assert (s["requests"], s["ok"], s["status_500"]) == (4, 2, 2), s
    erred = [e for e in _lines(d) if e["verdict"] == "error"]
    assert len(erred) == 2 and erred[0]["id"] == erred[1]["id"]
    assert [sum(e["u"]) > 0 for e in erred] == [True, True]
    t1 = _tokens(faulty)
    paid = price.cost(*t1)

    # Run 3: a limit below what the erred pairs already cost: no pair is begun, nothing asked.
    judge = sim_server(model="gpt-4o-mini", judge="longer")
    proc = _eval(out, student, judge, "--max-usd", repr(0.9 * paid), "--resume", str(d))
    assert proc.returncode == 3, proc.stderr
    assert "--max-usd" in proc.stderr
    assert judge.stats()["requests"] == 0

    # Run 4: every pair judged once by a judge that answers; the erred pair is asked again and now
    # decided. The report's judge tokens are every token either judge was paid for.
    proc = _eval(out, student, judge, "--max-usd", "1000", "--resume", str(d))
    assert proc.returncode == 0, proc.stderr
    assert judge.stats()["requests"] == 2 * N  # each pair asked once, both orders
    t2 = _tokens(judge)
    data = json.loads((d / "report.json").read_text())
    assert data["judge"]["counts"]["error"] == 0
    assert sum(data["judge"]["counts"][v] for v in ("win", "tie", "loss")) == N
    assert data["judge"]["tokens"] == {"prompt": t1[0] + t2[0], "completion": t1[1] + t2[1]}
    assert data["judge"]["cost_usd"] == pytest.approx(price.cost(t1[0] + t2[0], t1[1] + t2[1]))
    decided = [e for e in _lines(d) if e["verdict"] != "error"]
    assert len(decided) == N and erred[0]["id"] in {e["id"] for e in decided}
    # gen audit reads the error lines as gen's own, and the stated totals match the file.
    result = audit(out)
    assert result.clean, [f"{f.shard}: {f.problem}" for f in result.findings]


def test_audit_checks_the_judge_tokens_the_report_states(dataset: Path, tmp_path: Path, sim_server) -> None:
    out = tmp_path / "out"
    shutil.copytree(dataset, out)
    student = sim_server(model="student-1", perturb_share=0.5)
    faulty = sim_server(model="gpt-4o-mini", judge="longer", rate_500=0.5, seed=SEED)
    proc = _eval(out, student, faulty)
    assert proc.returncode == 0, proc.stderr
    d = next((out / "evals").iterdir())
    data = json.loads((d / "report.json").read_text())
    assert data["judge"]["counts"]["error"] >= 1  # the first pair at least (ok, then 500)
    assert data["judge"]["tokens"] == dict(zip(("prompt", "completion"), _tokens(faulty), strict=True))
    assert any(e["verdict"] == "error" and sum(e["u"]) > 0 for e in _lines(d))
    assert audit(out).clean, [f"{f.shard}: {f.problem}" for f in audit(out).findings]

    def problems() -> list[str]:
        return [f"{f.shard}: {f.problem}" for f in audit(out).findings]

    # A stated total that is not what judge.jsonl holds: one finding, naming report.json and both sums.
    original = (d / "report.json").read_text()
    tampered = json.loads(original)
    tampered["judge"]["tokens"]["prompt"] += 1
    (d / "report.json").write_text(json.dumps(tampered))
    found = problems()
    assert len(found) == 1 and "report.json" in found[0] and "judge's tokens" in found[0], found

    # A judge.jsonl of a gen that kept no `error` lines (its report counted their tokens all the same)
    # still audits clean; its report may state more than the file holds, never less.
    (d / "report.json").write_text(original)
    lines = (d / "judge.jsonl").read_text().splitlines(keepends=True)
    (d / "judge.jsonl").write_text("".join(line for line in lines if '"verdict":"error"' not in line))
    assert len(_lines(d)) < len(lines)
    assert audit(out).clean, problems()
    tampered = json.loads(original)
    tampered["judge"]["tokens"]["completion"] = 0
    (d / "report.json").write_text(json.dumps(tampered))
    found = problems()
    assert len(found) == 1 and "judge's tokens" in found[0], found
