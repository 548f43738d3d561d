"""CPU per row and peak memory of gen with long reasoning traces against short answers (a benchmark).

Issue 14's numbers: 10,000 rows whose traces average 8,000 tokens (simulator, 0 ms) should cost gen
at most 2x the CPU per row of short answers (near dedup of the traces included), and its peak RSS at
most 300 MB above a short-answer run. For each setting this starts one `gen sim` process (its own CPU
and memory are not counted), runs `gen run` as a child process on N tasks, and reads that child's CPU
time (user + system) and peak RSS from `os.wait4`. Near dedup is on (the default), `[dedup] on =
"example"` with traces in the key (the default).

    python bench/reasoning.py                 # 10,000 rows a setting (about 2 x 320 MB of traces)
    python bench/reasoning.py -n 2000         # shorter
    python bench/reasoning.py --tokens 30000  # longer traces
    python bench/reasoning.py --repeat 1      # one run of each (the default, 3, prints medians)

Each setting runs --repeat times, alternated with the other; the ratio printed is that of the median
CPU per row (one run's ratio moves +-5% on a small VM).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _prompt(folder: Path, n: int) -> Path:
    path = folder / "bench.toml"
    path.write_text(
        'name = "bench-reasoning"\nversion = "1"\nintended_use = "research"\neval_fraction = 0.0\n'
        '[teacher]\nprovider = "openai"\nmodel = "gen-sim-1"\nlicense = "apache-2.0"\n'
        '[messages]\nuser = "Solve problem {{ n }} and explain."\n'
        f"[variables]\nn = {list(range(n))}\n"
    )
    return path


def one(n: int, sim_args: list[str], concurrency: int, gen_args: list[str]) -> dict[str, float]:
    """gen's CPU ms per row and peak RSS (MB) for N tasks against a simulator started with sim_args."""
    port = _free_port()
    sim = subprocess.Popen(
        [sys.executable, "-m", "gen", "sim", "--port", str(port), *sim_args],
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    try:
        for _ in range(400):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            argv = [
                sys.executable, "-m", "gen", "run", str(_prompt(folder, n)), "--base-url",
                f"http://127.0.0.1:{port}/v1", "--output", str(folder / "out"), "--no-progress",
                "--max-concurrency", str(concurrency), *gen_args,
            ]  # fmt: skip
            started = time.monotonic()
            child = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            assert child.stderr is not None
            _, status, usage = os.wait4(child.pid, 0)
            wall = time.monotonic() - started
            err = child.stderr.read().decode()
            child.returncode = os.waitstatus_to_exitcode(status)
            if child.returncode != 0:
                raise SystemExit(f"gen run failed ({child.returncode}): {err[-2000:]}")
            summary = err.strip().splitlines()[-1]
            data = sum(f.stat().st_size for f in (folder / "out" / "data").glob("*.parquet"))
    finally:
        sim.terminate()
        sim.wait()
    cpu = usage.ru_utime + usage.ru_stime
    return {
        "cpu_ms_per_row": cpu / n * 1000,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "wall_s": wall,
        "data_mb": data / 2**20,
        "summary": summary,  # type: ignore[dict-item]
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", "--rows", type=int, default=10_000)
    ap.add_argument("--tokens", type=int, default=8_000, help="the traces' mean length in tokens")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--reasoning-format", default="field", help="field (the default), think-tags or drop")
    ap.add_argument("--no-near-dedup", action="store_true", help="exact dedup only")
    ap.add_argument(
        "--repeat", type=int, default=3, help="runs of each setting, alternated; the figures are medians"
    )
    args = ap.parse_args()
    gen_args = [
        "--reasoning-format",
        args.reasoning_format,
        *(["--no-near-dedup"] if args.no_near_dedup else []),
    ]
    settings = {
        "short answers": [],
        f"{args.tokens:,}-token traces": [
            "--reasoning",
            "reasoning_content",
            "--reasoning-tokens",
            str(args.tokens),
        ],
    }
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in settings}
    for i in range(args.repeat):  # alternated, so a drift of the machine's speed touches both alike
        for name, sim_args in settings.items():
            runs[name].append(r := one(args.rows, sim_args, args.concurrency, gen_args))
            print(
                f"{name:>22}: {r['cpu_ms_per_row']:.3f} ms CPU a row, peak RSS {r['peak_rss_mb']:.0f} MB, "
                f"{r['wall_s']:.1f} s, data {r['data_mb']:.1f} MB (run {i + 1} of {args.repeat})",
                flush=True,
            )
            print(f"{'':>24}{r['summary']}", flush=True)
    short, long = runs.values()
    each = ", ".join(
        f"{t['cpu_ms_per_row'] / s['cpu_ms_per_row']:.2f}x" for s, t in zip(short, long, strict=True)
    )
    cpu = {name: statistics.median(r["cpu_ms_per_row"] for r in rs) for name, rs in runs.items()}
    rss = {name: statistics.median(r["peak_rss_mb"] for r in rs) for name, rs in runs.items()}
    a, b = runs
    print(
        f"ratio CPU/row {cpu[b] / cpu[a]:.2f}x, of the medians (goal <= 2x; each run: {each}); "
        f"peak RSS +{rss[b] - rss[a]:.0f} MB, of the medians (goal <= 300 MB); {args.rows:,} rows each"
    )


if __name__ == "__main__":
    main()
