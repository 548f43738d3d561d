#!/usr/bin/env python3
"""CPU per row of `gen eval` against `gen run`, on the same rows, against the simulator at 0 ms.

It starts two `gen sim` processes, the teacher and a student that changes every field of a share
of its answers (`--perturb-share`, 0.3: the comparison then does real work), makes a dataset of N rows with
`gen run prompts/quickstart.toml --samples 42 --limit N` (5,000 by default), then evaluates a student
on every row of it with `gen eval OUTPUT --split all`. Each is its own process; its CPU seconds
(user + sys, from os.wait4) over the rows it handled give CPU ms per row. The simulator's CPU is not
counted. `--repeats` runs each that many times (each eval a fresh evaluation directory) and prints
the medians.

    python bench/eval_overhead.py                 # 5,000 rows, 3 repeats
    python bench/eval_overhead.py -n 2000 --repeats 1

A benchmark, not a test: it asserts only that every run handled N rows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPT = ROOT / "prompts" / "quickstart.toml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _timed(args: list[str], env: dict[str, str]) -> float:
    """Run a child; its CPU seconds (user + sys)."""
    proc = subprocess.Popen(args, env=env, cwd=tempfile.gettempdir(), stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode() if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{' '.join(args[:4])} ... exited {code}: {err[-2000:]}")
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=5000, help="rows (default 5,000)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument(
        "--perturb-share", type=float, default=0.3, help="share of rows the student answers differently"
    )
    a = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    port = _free_port()
    student_port = _free_port()
    sims = [
        subprocess.Popen(
            [sys.executable, "-m", "gen", "sim", "--port", str(p), *extra],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for p, extra in (
            (port, []),
            (student_port, ["--perturb-share", str(a.perturb_share), "--perturb-field", "*"]),
        )
    ]
    url = f"http://127.0.0.1:{port}/v1"
    student_url = f"http://127.0.0.1:{student_port}/v1"
    work = Path(tempfile.mkdtemp(prefix="gen-eval-bench-"))
    try:
        for p in (port, student_port):
            for _ in range(100):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{p}/health", timeout=1)
                    break
                except OSError:
                    time.sleep(0.1)
        common = ["--no-progress", "--max-concurrency", str(a.concurrency)]
        run_cpu, eval_cpu, eval_rows = [], [], []
        for i in range(a.repeats):
            out = work / f"ds{i}"
            run_cpu.append(
                _timed(
                    [sys.executable, "-m", "gen", "run", str(PROMPT), "--provider", "openai",
                     "--base-url", url, "--output", str(out), "--samples", "42", "--limit", str(a.n),
                     "--no-near-dedup", *common],
                    env,
                )
            )  # fmt: skip
            eval_cpu.append(
                _timed(
                    [sys.executable, "-m", "gen", "eval", str(out), "--student-base-url", student_url,
                     "--student-model", "gen-sim-1", "--split", "all", *common],
                    env,
                )
            )  # fmt: skip
            report = next((out / "evals").glob("*/report.json"))
            eval_rows.append(json.loads(report.read_text())["rows"])
        r, e = statistics.median(run_cpu), statistics.median(eval_cpu)
        n_eval = statistics.median(eval_rows)
        print(
            f"{a.n:,} tasks run, {n_eval:,} rows evaluated, 0 ms, {a.concurrency} in flight, "
            f"median of {a.repeats}"
        )
        print("| command | CPU s | CPU ms/row |")
        print("| --- | --- | --- |")
        print(f"| gen run  | {r:.2f} | {r / a.n * 1000:.3f} |")
        print(f"| gen eval | {e:.2f} | {e / n_eval * 1000:.3f} |")
        print(f"eval / run, per row: {(e / n_eval) / (r / a.n):.2f}")
    finally:
        for sim in sims:
            sim.terminate()
            sim.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
