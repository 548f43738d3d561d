#!/usr/bin/env python3
"""CPU per row of `gen eval` against `gen run`, on the same rows, against the simulator at 0 ms.

It starts two `gen sim` processes, the teacher and a student that changes every field of a share
of its answers (`--perturb-share`, 0.3: the comparison then does real work). In each repeat it makes a
dataset of N rows with `gen run prompts/quickstart.toml --samples 42 --limit N` (5,000 by default) for
each of two `gen run` baselines: as shipped (its defaults, near dedup on: what a user runs) and with
`--no-near-dedup` (stricter: the evaluation dedups nothing). Then it evaluates a student on every row
of that dataset with `gen eval OUTPUT --split all`. Each is its own process; its CPU seconds (user +
sys, from os.wait4) give CPU ms per row: `gen run`'s over the N tasks it ran, `gen eval`'s over the
rows it evaluated (the rows that run kept: near dedup may drop a few, the table prints how many). The
simulator's CPU is not counted. It prints, per baseline, the medians and ranges over `--repeats`.

    python bench/eval_overhead.py                 # 5,000 rows, 3 repeats of both baselines
    python bench/eval_overhead.py -n 2000 --repeats 1
    python bench/eval_overhead.py --baseline becc154   # also `gen eval` as of that commit, same datasets

`--baseline REF` exports REF's gen/ (git archive) and, in each repeat, evaluates the same dataset with it
as well (a fresh evaluation directory each, the two evals in alternating order): before and after,
measured in the same run.

A benchmark, not a test: it asserts only that every run handled N rows.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
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


def _export(ref: str, dest: Path) -> Path:
    """`git archive REF gen` unpacked under dest: a frozen copy of the package."""
    blob = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "gen"], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(dest, filter="data")
    return dest


# What differs between two evaluations of the same answers by nature: names, clocks and timings.
_VOLATILE_REPORT = {"eval_id", "created_at", "finished_at", "wall_s", "latency_ms"}
_VOLATILE_RESULTS = {"latency_ms"}


def _differences(new: Path, old: Path) -> list[str]:
    """Where two evaluations' report.json and results.parquet differ (figures, cells), timings aside."""
    import pyarrow.parquet as pq

    found = []
    reports = [json.loads((d / "report.json").read_text()) for d in (new, old)]
    for key in sorted(set(reports[0]) | set(reports[1])):
        if key not in _VOLATILE_REPORT and reports[0].get(key) != reports[1].get(key):
            found.append(f"report.json {key}: {reports[0].get(key)!r:.200} != {reports[1].get(key)!r:.200}")
    if reports[0]["latency_ms"]["requests"] != reports[1]["latency_ms"]["requests"]:
        found.append("report.json latency_ms.requests differs")
    tables = [pq.read_table(d / "results.parquet") for d in (new, old)]
    if tables[0].schema != tables[1].schema:
        found.append(f"results.parquet schema: {tables[0].schema} != {tables[1].schema}")
    else:
        for name in tables[0].column_names:
            if name not in _VOLATILE_RESULTS and not tables[0].column(name).equals(tables[1].column(name)):
                found.append(f"results.parquet column {name} differs")
        nulls = [t.column("latency_ms").null_count for t in tables]
        if nulls[0] != nulls[1]:
            found.append(f"results.parquet latency_ms nulls: {nulls[0]} != {nulls[1]}")
    return found


# The two `gen run` baselines: as shipped (its defaults: exact and near dedup, what a user runs) and
# without near dedup (the stricter one: the evaluation does no dedup at all).
BASELINES = (("gen run", []), ("gen run --no-near-dedup", ["--no-near-dedup"]))


def _range(values: list[float], fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=5000, help="rows (default 5,000)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument(
        "--perturb-share", type=float, default=0.3, help="share of rows the student answers differently"
    )
    ap.add_argument("--baseline", metavar="REF", help="also time `gen eval` as of this git ref")
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
        base_env = None
        if a.baseline:
            base_env = {**os.environ, "PYTHONPATH": str(_export(a.baseline, work / "baseline"))}
        # Per baseline, per repeat: the run's CPU s, the eval's (and the --baseline eval's) CPU s, and
        # the rows the eval evaluated (the rows the run kept: near dedup may drop some of the N tasks).
        run_cpu: dict[str, list[float]] = {name: [] for name, _ in BASELINES}
        eval_cpu: dict[str, list[float]] = {name: [] for name, _ in BASELINES}
        base_cpu: dict[str, list[float]] = {name: [] for name, _ in BASELINES}
        eval_rows: dict[str, list[int]] = {name: [] for name, _ in BASELINES}
        same_figures: list[bool] = []
        for i in range(a.repeats):
            kinds = BASELINES if i % 2 == 0 else tuple(reversed(BASELINES))
            for k, (name, flags) in enumerate(kinds):
                out = work / f"ds{i}-{k}"  # each repeat makes its own dataset for each baseline
                run_cpu[name].append(
                    _timed(
                        [sys.executable, "-m", "gen", "run", str(PROMPT), "--provider", "openai",
                         "--base-url", url, "--output", str(out), "--samples", "42", "--limit", str(a.n),
                         *flags, *common],
                        env,
                    )
                )  # fmt: skip
                evaluate = [sys.executable, "-m", "gen", "eval", str(out), "--student-base-url", student_url,
                            "--student-model", "gen-sim-1", "--split", "all", *common]  # fmt: skip
                order = (
                    [(eval_cpu[name], env), (base_cpu[name], base_env)]
                    if base_env
                    else [(eval_cpu[name], env)]
                )
                made: dict[int, Path] = {}
                for cpu, child_env in order if (i + k) % 2 == 0 else reversed(order):
                    before = set((out / "evals").glob("*"))
                    cpu.append(_timed(evaluate, child_env))
                    (made[id(cpu)],) = set((out / "evals").glob("*")) - before
                    time.sleep(1.1)  # evaluation directories are named to the second
                if base_env:
                    differs = _differences(made[id(eval_cpu[name])], made[id(base_cpu[name])])
                    same_figures.append(not differs)
                    for line in differs[:10]:
                        print(f"repeat {i + 1} ({name}): differs from {a.baseline}: {line}", file=sys.stderr)
                rows = {json.loads(r.read_text())["rows"] for r in (out / "evals").glob("*/report.json")}
                if len(rows) != 1:
                    raise SystemExit(f"repeat {i + 1} ({name}): the evaluations evaluated {rows} rows")
                eval_rows[name].append(rows.pop())
        print(f"{a.n:,} tasks run, 0 ms, {a.concurrency} in flight, median (range) of {a.repeats} repeats")
        print(
            "CPU ms/row: gen run's CPU / tasks; gen eval's CPU / rows it evaluated (the rows that run kept)"
        )
        head = (
            "| baseline | rows evaluated | run CPU s | run ms/row | eval CPU s | eval ms/row | eval / run |"
        )
        if base_env:
            head += f" eval at {a.baseline} CPU s | eval at {a.baseline} / run |"
        print(head)
        print("|" + " --- |" * (head.count("|") - 1))
        for name, _ in BASELINES:
            runs, evals, rows = run_cpu[name], eval_cpu[name], eval_rows[name]
            ratio = [(e / n) / (r / a.n) for r, e, n in zip(runs, evals, rows, strict=True)]
            line = (
                f"| {name} | {_range([float(n) for n in rows], '{:,.0f}')} | {_range(runs)} "
                f"| {_range([r / a.n * 1000 for r in runs], '{:.3f}')} | {_range(evals)} "
                f"| {_range([e / n * 1000 for e, n in zip(evals, rows, strict=True)], '{:.3f}')} "
                f"| x{_range(ratio)} |"
            )
            if base_env:
                olds = base_cpu[name]
                old_ratio = [(b / n) / (r / a.n) for r, b, n in zip(runs, olds, rows, strict=True)]
                line += f" {_range(olds)} | x{_range(old_ratio)} |"
            print(line)
        if base_env:
            print(
                f"report.json and results.parquet the same as {a.baseline}'s (timings aside): "
                f"{sum(same_figures)} of {len(same_figures)} evaluations"
            )
    finally:
        for sim in sims:
            sim.terminate()
            sim.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
