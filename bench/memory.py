"""Resident memory over a long run, what the resume and dedup indexes cost per row, and how long a
resume of the output takes to reach its first request (a benchmark).

Runs `gen run` on N tasks (default 1,000,000: about ten minutes on two cores) against `gen sim` at
latency 0, the last 1,000 held back (`--limit`), samples the gen process's RSS every half second, and
prints it at each tenth of the run: after warm-up it should grow only by the indexes, whose bytes per
row are measured separately here by building each index for 100,000 rows and reading the process's
RSS before and after. Then it resumes the output for the held-back tasks and prints the seconds from
`gen run` starting to the simulator seeing its first request (the persisted dedup indexes are loaded,
not rebuilt: gen/dedup_index.py; the task stream starts at its decided prefix: gen/decided.py), then
from a copy without index/decided.json (the stream walked past every done task), and with --rebuild
also with index/ deleted.

    python bench/memory.py              # 1,000,000 tasks
    python bench/memory.py -n 200000    # shorter
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def rss_mb(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def index_costs(n: int = 100_000) -> dict[str, float]:
    """Bytes per row of each index, from the RSS it adds when built for n rows (keys as a run gives them:
    64-bit id keys, 16-hex-digit id prefixes)."""
    from gen.dedup import ExactDedup
    from gen.idset import IdSet
    from gen.near_dedup import NearDedup

    rng = random.Random(1)
    words = [f"w{i}" for i in range(5000)]
    texts = [" ".join(rng.choices(words, k=60)) for _ in range(n)]
    ids = [f"{rng.getrandbits(128):032x}" for _ in range(n)]
    costs = {}
    gc.collect()
    before = rss_mb()
    claimed = IdSet()  # as a run claims them: one at a time
    for i in ids:
        claimed.add(int(i[:16], 16))
    len(claimed)  # merged into its sorted array
    costs["resume index (claimed ids, gen.idset)"] = (rss_mb() - before) * 2**20 / n
    before = rss_mb()
    exact = ExactDedup()
    for t, i in zip(texts, ids, strict=True):
        exact.add(t, int(i[:16], 16))
    costs["exact dedup index"] = (rss_mb() - before) * 2**20 / n
    before = rss_mb()
    near = NearDedup()
    for start in range(0, n, 4096):
        near.add_batch(texts[start : start + 4096], [i[:16] for i in ids[start : start + 4096]])
    costs["near dedup index (MinHash LSH)"] = (rss_mb() - before) * 2**20 / n
    costs["near dedup index, its own model"] = near.bytes_per_row
    del claimed, exact, near
    return costs


def first_request_s(cmd: list[str], port: int) -> float:
    """Seconds from starting `cmd` to the simulator's request counter moving."""

    def requests() -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/sim/stats", timeout=5) as r:
            return int(json.loads(r.read())["requests"])

    seen = requests()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        while requests() == seen:
            if proc.poll() is not None:
                raise SystemExit(
                    f"gen exited before a request: {proc.stderr.read()[-2000:] if proc.stderr else ''}"
                )
            time.sleep(0.01)
        return time.perf_counter() - start
    finally:
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", "--tasks", type=int, default=1_000_000)
    ap.add_argument("--rebuild", action="store_true", help="also time a resume with the indexes deleted")
    args = ap.parse_args()
    resume: dict[str, float] = {}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sim = subprocess.Popen(
        [sys.executable, "-m", "gen", "sim", "--port", str(port)], stderr=subprocess.DEVNULL
    )
    samples: list[tuple[float, float]] = []
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            a = 1000
            (folder / "b.txt").write_text("\n".join(f"item {i}" for i in range(args.tasks // a)) + "\n")
            prompt = Path(__file__).resolve().parents[1] / "prompts" / "quickstart.toml"
            big = folder / "big.toml"
            text = prompt.read_text()
            head, _, _ = text.partition("[variables]")
            big.write_text(
                head.replace('"../schemas/', f'"{prompt.parent.parent}/schemas/')
                + f"[variables]\ntopic = {json.dumps([f'topic {i}' for i in range(a)])}\n"
                + 'audience = { file = "b.txt" }\n'
            )
            cmd = [sys.executable, "-m", "gen", "run", str(big), "--provider", "openai", "--base-url",
                   f"http://127.0.0.1:{port}/v1", "--samples", "1", "--output", str(folder / "out"),
                   "--no-progress"]  # fmt: skip
            start = time.perf_counter()
            held = min(1000, args.tasks // 10)
            proc = subprocess.Popen(
                [*cmd, "--limit", str(args.tasks - held)], stderr=subprocess.PIPE, text=True
            )
            while proc.poll() is None:
                try:
                    samples.append((time.perf_counter() - start, rss_mb(proc.pid)))
                except FileNotFoundError:
                    break
                time.sleep(0.5)
            err = proc.stderr.read() if proc.stderr else ""
            if proc.returncode != 0:
                raise SystemExit(f"gen failed: {err[-2000:]}")
            wall = time.perf_counter() - start
            import shutil

            walk = folder / "out-walk"
            shutil.copytree(folder / "out", walk)
            (walk / "index" / "decided.json").unlink()
            if args.rebuild:
                keep = folder / "out-copy"
                shutil.copytree(folder / "out", keep)
            resume["with the persisted indexes and decided prefix"] = first_request_s(cmd, port)
            resume["decided prefix deleted (the stream walked past the done tasks)"] = first_request_s(
                [*cmd[:-2], str(walk), "--no-progress"], port
            )
            shutil.rmtree(walk)
            if args.rebuild:
                shutil.rmtree(keep / "index")
                resume["indexes deleted (rebuilt from the shards)"] = first_request_s(
                    [*cmd[:-2], str(keep), "--no-progress"], port
                )
    finally:
        sim.terminate()
        sim.wait()
    print(f"# resident memory of `gen run`, {args.tasks:,} tasks at 0 ms latency ({wall:.0f} s)")
    print("| share of the run | RSS MB |")
    print("|---:|---:|")
    for tenth in range(1, 11):
        t = wall * tenth / 10
        rss = max((r for s, r in samples if s <= t), default=0.0)
        print(f"| {tenth * 10}% | {rss:.0f} |")
    print(f"\npeak RSS {max(r for _, r in samples):.0f} MB; {err.strip().splitlines()[-1] if err else ''}")
    print(f"\n# resume of the {args.tasks - held:,}-row output: seconds to its first request")
    for name, s in resume.items():
        print(f"- {name}: {s:.1f} s")
    print("\n# index cost per row (built for 100,000 rows, RSS delta)")
    print("| index | bytes per row |")
    print("|---|---:|")
    for name, cost in index_costs().items():
        print(f"| {name} | {cost:,.0f} |")
    print("\nEverything else is flat after warm-up: tasks stream from the prompt file, rows leave in shards.")


if __name__ == "__main__":
    main()
