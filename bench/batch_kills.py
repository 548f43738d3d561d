"""Batch mode under SIGKILL (issue 15): N tasks through the simulator's OpenAI Batch endpoints, gen killed
K times (after its first batch was accepted, while polling, while collecting results), then run to the
end. Prints whether every task ended once as a row, reject or duplicate and whether the simulator was
sent each request once (requests = tasks + re-asks + retries of failed or expired requests).

    python bench/batch_kills.py                 # 20,000 tasks, 3 kills (~1-2 min on 2 cores)
    python bench/batch_kills.py -n 2000 --kills 3 --provider anthropic
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gen.sim import SimConfig, SimThread  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "minLength": 40}, "score": {"type": "integer"}},
    "required": ["answer", "score"],
    "additionalProperties": False,
}


def _ids(out: Path) -> list[str]:
    return [
        i
        for folder in ("data", "rejects", "duplicates")
        for f in sorted((out / folder).glob("*.parquet"))
        for i in pq.read_table(f, columns=["id"])["id"].to_pylist()
    ]


def _wait(cond, proc: subprocess.Popen, timeout: float = 600) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=20_000, help="tasks")
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--provider", choices=("openai", "anthropic"), default="openai")
    ap.add_argument("--batch-size", type=int, default=5_000)
    ap.add_argument("--delay", type=float, default=1.0, help="simulated seconds until a batch ends")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="gen-batch-bench-"))
    (tmp / "answer.json").write_text(json.dumps(SCHEMA))
    prompt = tmp / "p.toml"
    prompt.write_text(
        'name = "batch-bench"\nversion = "1"\nintended_use = "research"\nschema = "answer.json"\n'
        '[sampling]\nmax_tokens = 120\n[teacher]\nmodel = "gen-sim-1"\nlicense = "apache-2.0"\n'
        '[messages]\nuser = "Explain item {{ n }} in detail."\n'
        f"[variables]\nn = {list(range(args.n))}\n"
    )
    out = tmp / "o"
    config = SimConfig(
        batch_delay_s=args.delay, rate_invalid_json=0.1, batch_rate_failed=0.01, batch_rate_expired=0.01
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with SimThread(config) as sim:
        cmd = [
            sys.executable, "-m", "gen", "run", str(prompt), "--provider", args.provider, "--base-url",
            sim.base_url, "--output", str(out), "--no-progress", "--batch", "--batch-poll", "0.2",
            "--batch-size", str(args.batch_size), "--shard-rows", "2000",
        ]  # fmt: skip
        points = ["created", "polling", "collecting"]
        started = time.monotonic()
        killed = []
        for k in range(args.kills):
            point = points[k % len(points)]
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            batches, polls = sim.stats()["batches"], sim.stats()["batch_polls"]
            shards = len(list((out / "data").glob("*.parquet")))
            if point == "created":
                hit = _wait(lambda b=batches: sim.stats()["batches"] > b, proc)
            elif point == "polling":
                hit = _wait(lambda p=polls: sim.stats()["batch_polls"] >= p + 3, proc)
            else:
                hit = _wait(lambda s=shards: len(list((out / "data").glob("*.parquet"))) > s, proc)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed.append(point if hit else f"{point} (missed: gen had ended)")
        final = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.monotonic() - started
        sent = sim.server.batch_custom_ids
        stats = sim.stats()
    ids = _ids(out)
    counts = Counter(ids)
    runs = json.loads((out / "manifest.json").read_text())["runs"]
    firsts = sum(1 for c in sent if c.endswith("-1-0"))
    later = len(sent) - firsts
    print(f"tasks                      {args.n:,}  ({args.provider}, batches of {args.batch_size:,})")
    print(f"kills                      {', '.join(killed) or 'none'}")
    print(f"final run exit status      {final.returncode}")
    print(f"tasks decided              {len(counts):,} (each once: {max(counts.values(), default=0) == 1})")
    print(f"  every task decided       {len(counts) == args.n}")
    print(f"requests sent in batches   {len(sent):,} = {firsts:,} first requests + {later:,} re-asks/retries")
    print(f"  no request sent twice    {len(sent) == len(set(sent))}")
    print(f"  one first request a task {firsts == args.n}")
    print(f"batches accepted           {stats['batches']:,}, polls {stats['batch_polls']:,}")
    print(f"runs in the manifest       {len(runs)} ({', '.join(r.get('status', '?') for r in runs)})")
    print(f"wall time, all runs        {wall:.1f} s")


if __name__ == "__main__":
    main()
