"""Review of judge.jsonl's `u` (gen.eval_judge.VerdictLog, gen.audit): lines whose `u` is not two
non-negative integers (negative, float, bool, a third count, huge past 64 bits) are no line gen writes;
gen eval reads them without a crash (as tokens it cannot count), and `gen audit` names each one, since
a report may then state fewer tokens than the judge was paid for without any other check seeing it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from test_judge_error_spend import N, _eval, _lines, dataset  # noqa: F401  (the fixture)

from gen.audit import audit

GARBLED = [[-1, 5], [1.0, 2], [True, 3], [1, 2, 3], "12", {"p": 1}, None, [1 << 64, 1]]


def test_garbled_judge_usage_is_read_without_a_crash_and_audited(dataset: Path, tmp_path: Path, sim_server):  # noqa: F811
    out = tmp_path / "out"
    shutil.copytree(dataset, out)
    student = sim_server(model="student-1", perturb_share=0.5)
    judge = sim_server(model="gpt-4o-mini", judge="longer")
    proc = _eval(out, student, judge)
    assert proc.returncode == 0, proc.stderr
    d = next((out / "evals").iterdir())
    assert audit(out).clean
    lines = _lines(d)
    assert len(lines) == N
    # Each garbled `u` on an `error` line of a judged row (the report's sums are unchanged by them).
    extra = [{**lines[0], "verdict": "error", "u": u} for u in GARBLED]
    with (d / "judge.jsonl").open("a") as f:
        for e in extra:
            f.write(json.dumps(e) + "\n")
    found = [f.problem for f in audit(out).findings if f.shard.endswith("judge.jsonl")]
    assert len(found) == len(GARBLED), found

    from gen.eval_judge import VerdictLog

    class _Judge:
        key = lines[0]["judge"]

    log = VerdictLog(d / "judge.jsonl", _Judge())  # type: ignore[arg-type]
    assert len(log.load()) == N
    assert sum(p + c for p, c in log.usage.values()) == sum(sum(e["u"]) for e in lines)
