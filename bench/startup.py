"""Start-up to the first request, for a prompt file of ten million tasks (a benchmark, not a test).

Starts `gen sim`, then `gen run` on a generated prompt file whose variables expand to N tasks, and
polls the simulator's /sim/stats until the first request arrives. Expansion is lazy and resume state is
read, not rebuilt, so the figure should not depend on N. Also times a resume of a finished output.

    python bench/startup.py            # 10,000,000 tasks
    python bench/startup.py -n 1000    # the same, small: compare
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stats(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/sim/stats", timeout=2) as r:
        return json.loads(r.read())


def prompt_file(folder: Path, n: int) -> Path:
    a = 1000 if n >= 1000 else n
    b = max(1, n // a)
    (folder / "words.txt").write_text("\n".join(f"w{i}" for i in range(b)) + "\n")
    path = folder / "big.toml"
    path.write_text(
        'name = "big"\nversion = "1"\nintended_use = "research"\n'
        '[teacher]\nmodel = "gen-sim-1"\nlicense = "mit"\n'
        '[messages]\nuser = "Write about {{ a }} and {{ b }}."\n'
        f'[variables]\na = {list(range(a))}\nb = {{ file = "words.txt" }}\n'
    )
    return path


def time_to_first_request(cmd: list[str], port: int) -> float:
    before = stats(port)["requests"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while stats(port)["requests"] == before:
            if proc.poll() is not None:
                raise SystemExit(f"gen exited with {proc.returncode} before any request: {' '.join(cmd)}")
            time.sleep(0.002)
        return time.perf_counter() - start
    finally:
        proc.wait(timeout=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", "--tasks", type=int, default=10_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    port = free_port()
    sim = subprocess.Popen(
        [sys.executable, "-m", "gen", "sim", "--port", str(port)], stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(200):
            try:
                stats(port)
                break
            except OSError:
                time.sleep(0.05)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            prompt = prompt_file(folder, args.tasks)
            base = [sys.executable, "-m", "gen", "run", str(prompt), "--provider", "openai", "--base-url",
                    f"http://127.0.0.1:{port}/v1", "--no-progress", "--limit", "200"]  # fmt: skip
            fresh = sorted(
                time_to_first_request([*base, "--output", str(folder / f"fresh{i}")], port)
                for i in range(args.repeats)
            )
            out = folder / "resumed"
            subprocess.run([*base, "--output", str(out)], check=True, stderr=subprocess.DEVNULL)
            resumed = sorted(  # each resume asks for 200 more tasks than the output holds
                time_to_first_request([*base, "--limit", str(400 + 200 * i), "--output", str(out)], port)
                for i in range(args.repeats)
            )
    finally:
        sim.terminate()
        sim.wait()
    print(f"# start-up to the first request, prompt file of {args.tasks:,} tasks, median of {args.repeats}")
    print("| case | seconds |")
    print("|---|---:|")
    print(f"| fresh output | {fresh[len(fresh) // 2]:.2f} |")
    print(f"| resume of an output holding 200-600 rows | {resumed[len(resumed) // 2]:.2f} |")


if __name__ == "__main__":
    main()
