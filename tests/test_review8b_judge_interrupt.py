"""Review: a judge pair interrupted (Ctrl-C) after its first order was answered. That request was paid
for; as a pair that ended as `error` keeps a judge.jsonl line with its tokens (so a resume, which asks
the pair again, and its --max-usd and report count them), an interrupted pair must keep one too.

Real HTTP against the simulator as student and judge, a real `gen eval` subprocess sent SIGINT."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from test_judge_error_spend import dataset  # noqa: F401  (the fixture)


def test_an_interrupted_pair_keeps_what_its_answered_order_cost(dataset: Path, tmp_path: Path, sim_server):  # noqa: F811
    out = tmp_path / "out"
    shutil.copytree(dataset, out)
    student = sim_server(model="student-1", perturb_share=0.5)
    judge = sim_server(model="gpt-4o-mini", judge="longer", latency_ms=1500)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gen", "eval", str(out), "--student-base-url", student.base_url,
         "--student-model", "student-1", "--no-progress", "--split", "all", "--max-concurrency", "1",
         "--judge-model", "gpt-4o-mini", "--judge-base-url", judge.base_url],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while judge.stats()["ok"] < 1 and time.monotonic() < deadline:  # the first pair's first order answered
        time.sleep(0.01)
    time.sleep(0.3)  # its second order in flight
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    d = next((out / "evals").iterdir())
    log = d / "judge.jsonl"
    lines = (
        [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
    )
    assert lines and lines[0]["verdict"] == "error" and sum(lines[0]["u"]) > 0, (lines, err)
