"""`gen eval` journals a student's answer before the request that follows it leaves, as `gen run` does.

The student's first requests are not reserved in the journal (gen.eval_run: no budget, nothing to
count), and answers used to be written at the end of the event-loop tick: the next request could leave
first, and a SIGKILL between the two lost an answer already paid for, which the resume then asked (and
paid for) again. The window is microseconds; the child here gets a sitecustomize that makes the end of
a tick slow whenever an answer is still waiting there, so that a kill lands in it every time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from helpers import settled_requests

from gen import RunOptions, run

ROOT = Path(__file__).resolve().parents[1]
N = 24

SLOW_TICK_END = """
import time
import gen.ledger as ledger

_flush_soon = ledger.Journal._flush_soon


def _slow(self):
    if self._pending:  # an answer still only in memory at the end of the tick: make the window wide
        time.sleep(0.4)
    _flush_soon(self)


ledger.Journal._flush_soon = _slow
"""


def _dataset(d: Path) -> Path:
    d.mkdir(parents=True)
    topics = json.dumps([f"topic {i}" for i in range(N)])
    (d / "p.toml").write_text(
        'name = "t"\nversion = "1"\nintended_use = "research"\neval_fraction = 0.5\n'
        '[teacher]\nprovider = "sim"\nmodel = "gen-sim-1"\nlicense = "mit"\n'
        '[sampling]\nmax_tokens = 1000\n[messages]\nuser = "About {{ topic }}"\n'
        f"[variables]\ntopic = {topics}\n"
    )
    result = run(d / "p.toml", RunOptions(output=d / "out", progress=False))
    assert result.status == "complete" and result.stats.rows == N
    return d / "out"


def student_eval(tmp_path: Path, server, sitecustomize: str) -> tuple[Path, list[str], dict[str, str]]:
    """A finished dataset of N rows, and the command and environment of `gen eval` on it against
    `server` as the student, one request at a time, in a child that loads `sitecustomize` first."""
    out = _dataset(tmp_path / "ds")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(sitecustomize)
    args = [sys.executable, "-m", "gen", "eval", str(out), "--student-base-url", server.base_url,
            "--student-model", "student-1", "--no-progress", "--split", "all",
            "--max-concurrency", "1"]  # fmt: skip
    return out, args, {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}


def test_a_killed_evaluation_never_asks_an_answered_request_again(tmp_path: Path, sim_server) -> None:
    server = sim_server(model="student-1", latency_ms=50)
    out, args, env = student_eval(tmp_path, server, SLOW_TICK_END)
    proc = subprocess.Popen(args, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 60
    while server.stats()["ok"] < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.15)  # the fourth answer has arrived; the old code sent the fifth request before writing it
    proc.kill()
    proc.wait(timeout=30)
    asked = settled_requests(server)
    assert 4 <= asked < N
    resumed = subprocess.run(
        [*args, "--resume", str(next((out / "evals").iterdir()))], env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    # One request at a time: at most the one in flight at the kill is asked twice; every answer is kept.
    assert server.stats()["requests"] <= N + 1
