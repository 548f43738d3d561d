"""`gen plan` on a prompt file of ten million tasks (a benchmark, not a test): the issue's goal is an
answer in under 5 s. The plan counts tasks by arithmetic and renders a sample of 64 inputs, so the
figure should not depend on N. Prints the wall time of the whole `gen plan` process (interpreter start
included) for each N, and the plan's task count.

    python bench/plan_bench.py                 # 10,000,000 tasks, and 1,000 to compare
    python bench/plan_bench.py -n 100000000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def prompt_file(folder: Path, n: int) -> Path:
    """N tasks: a long shared system prompt (cacheable), a variable from a file, one inline."""
    a = 1000 if n >= 1000 else n
    b = max(1, n // a)
    (folder / "words.txt").write_text("\n".join(f"w{i}" for i in range(b)) + "\n")
    path = folder / f"big{n}.toml"
    system = "You write short facts. " + "Keep to the house style. " * 200
    path.write_text(
        f'name = "big{n}"\nversion = "1"\nintended_use = "research"\n'
        '[teacher]\nmodel = "gen-sim-1"\nlicense = "mit"\n'
        f"[messages]\nsystem = {json.dumps(system)}\n"
        'user = "Write about {{ a }} and {{ b }}."\n'
        f'[variables]\na = {list(range(a))}\nb = {{ file = "words.txt" }}\n'
    )
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, nargs="+", default=[10_000_000, 1_000])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for n in args.n:
            path = prompt_file(folder, n)
            cmd = [
                sys.executable,
                "-m",
                "gen",
                "plan",
                str(path),
                "--output",
                str(folder / f"out{n}"),
                "--json",
            ]
            times, tasks = [], None
            for _ in range(args.repeats):
                start = time.perf_counter()
                done = subprocess.run(cmd, capture_output=True, text=True, check=True)
                times.append(time.perf_counter() - start)
                tasks = json.loads(done.stdout)["tasks"]["total"]
            times.sort()
            print(f"gen plan, {tasks:,} tasks: median {times[len(times) // 2]:.2f} s, best {times[0]:.2f} s")


if __name__ == "__main__":
    main()
