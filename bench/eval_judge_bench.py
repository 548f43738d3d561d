#!/usr/bin/env python3
"""CPU per row of `gen eval` on free text with the LLM judge, against the same evaluation without it.

Three `gen sim` processes: the teacher, a student that adds a word to a share of its answers
(`--perturb-share`, 0.3), and a judge (`--judge longer`: the perturbed rows win, the others tie). A
free-text dataset of N rows is made with `gen run`, then evaluated on every row twice, `--no-judge` and
with the judge (two requests per row more). Each command is its own process; its CPU seconds (user +
sys, from os.wait4) over the rows give CPU ms per row; the simulators' CPU is not counted.

    python bench/eval_judge_bench.py              # 2,000 rows
    python bench/eval_judge_bench.py -n 500

A benchmark, not a test: it asserts only that every row was judged.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _timed(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run a child; its CPU seconds (user + sys) and wall seconds."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, env=env, cwd=tempfile.gettempdir(), stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode() if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{' '.join(args[:4])} ... exited {code}: {err[-2000:]}")
    return usage.ru_utime + usage.ru_stime, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=2000, help="rows (default 2,000)")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--perturb-share", type=float, default=0.3)
    a = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ports = [_free_port() for _ in range(3)]
    extras = ([], ["--perturb-share", str(a.perturb_share)], ["--judge", "longer"])
    sims = [
        subprocess.Popen(
            [sys.executable, "-m", "gen", "sim", "--port", str(p), *extra],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for p, extra in zip(ports, extras, strict=True)
    ]
    teacher, student, judge = (f"http://127.0.0.1:{p}/v1" for p in ports)
    work = Path(tempfile.mkdtemp(prefix="gen-judge-bench-"))
    try:
        for p in ports:
            for _ in range(100):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{p}/health", timeout=1)
                    break
                except OSError:
                    time.sleep(0.1)
        recipe = work / "free.toml"
        recipe.write_text(
            'name = "free"\nversion = "1"\nintended_use = "research"\neval_fraction = 0.1\n'
            '[teacher]\nprovider = "openai"\nmodel = "gen-sim-1"\nlicense = "mit"\n'
            '[sampling]\nmax_tokens = 200\n[messages]\nsystem = "Answer briefly."\n'
            'user = "Tell me about item {{ i }}."\n'
            f"[variables]\ni = {json.dumps([str(i) for i in range(a.n)])}\n"
        )
        out = work / "ds"
        common = ["--no-progress", "--max-concurrency", str(a.concurrency)]
        _timed(
            [sys.executable, "-m", "gen", "run", str(recipe), "--base-url", teacher, "--output", str(out),
             "--no-near-dedup", *common],
            env,
        )  # fmt: skip
        base = [sys.executable, "-m", "gen", "eval", str(out), "--student-base-url", student,
                "--student-model", "gen-sim-1", "--split", "all", *common]  # fmt: skip
        plain_cpu, plain_wall = _timed([*base, "--no-judge"], env)
        judged_cpu, judged_wall = _timed(
            [*base, "--judge-base-url", judge, "--judge-model", "gen-sim-1"], env
        )
        reports = sorted((out / "evals").glob("*/report.json"))
        data = json.loads(reports[-1].read_text())
        counts = data["judge"]["counts"]
        rows = data["rows"]
        assert counts["win"] + counts["tie"] == rows, counts
        print(f"{rows:,} free-text rows, 0 ms simulators, {a.concurrency} in flight")
        print("| gen eval | CPU s | CPU ms/row | wall s |")
        print("| --- | --- | --- | --- |")
        print(f"| --no-judge | {plain_cpu:.2f} | {plain_cpu / rows * 1000:.3f} | {plain_wall:.2f} |")
        print(f"| with the judge | {judged_cpu:.2f} | {judged_cpu / rows * 1000:.3f} | {judged_wall:.2f} |")
        print(f"judge: win {counts['win']:,}, tie {counts['tie']:,} ({2 * rows:,} judge requests)")
    finally:
        for sim in sims:
            sim.terminate()
            sim.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
