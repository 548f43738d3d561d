"""Peak memory of the scaled-out merge pass (gen.merge_scaleout, `gen run --merge scaleout`) on local Ray.

Writes a cluster run's partition shards (gen.shards; 8 partitions, 50,000-row shards, ~60-word answers
to short tickets, 5% exact and 5% near copies of earlier partitions' rows), then runs the merge pass
in a fresh process that starts a local Ray, and prints that process's peak RSS (the driver: VmHWM)
and each Ray worker's peak RSS (VmHWM of every worker process, each of which ran several tasks), the
wall time, and what was removed. The persisted indexes are not written, so the map tasks re-hash the
shards (the slow case). With --driver the one-driver pass runs too, for comparison.

    python bench/merge_scaleout.py -n 500000 -n 2000000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PARTITIONS = 8
SHARD_ROWS = 50_000


def make(out: Path, n: int, seed: int = 1) -> dict[int, dict]:
    """n rows over PARTITIONS partitions; returns the partition manifests' shard lists."""
    from gen.ledger import partition_of
    from gen.shards import write_rows

    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(20000)])
    per = n // PARTITIONS
    texts: list[list[str]] = []  # kept per partition only as long as needed to copy from
    manifests: dict[int, dict] = {}
    all_ids: dict[int, list[str]] = {p: [] for p in range(PARTITIONS)}
    k = 0
    while min(len(v) for v in all_ids.values()) < per:  # ids as gen makes them, each in its partition
        tid = hashlib.sha256(str(k).encode()).hexdigest()
        k += 1
        if len(all_ids[partition_of(tid, PARTITIONS)]) < per:
            all_ids[partition_of(tid, PARTITIONS)].append(tid)
    for p in range(PARTITIONS):
        words = vocab[rng.integers(0, vocab.size, (per, 60))]
        mine = [(f"ticket {p}-{i}", " ".join(w)) for i, w in enumerate(words)]
        if p:
            earlier = [t for part in texts for t in part]
            pick = rng.random(per)
            src = rng.integers(0, len(earlier), per)
            for i in np.flatnonzero(pick < 0.05).tolist():
                ticket, text = earlier[src[i]]
                mine[i] = (ticket, text.upper())  # exact once folded: the same ticket, the same answer
            for i in np.flatnonzero((pick >= 0.05) & (pick < 0.10)).tolist():
                ticket, text = earlier[src[i]]
                w = text.split()
                w[int(rng.integers(0, 60))] = "edited"
                mine[i] = (ticket, " ".join(w))  # near: one word of 60
        texts.append(mine)
        ids = all_ids[p]
        shards = []
        for s, start in enumerate(range(0, per, SHARD_ROWS)):
            rows = [
                {
                    "id": ids[i],
                    "messages": [
                        {"role": "user", "content": q},
                        {"role": "assistant", "content": t},
                    ],
                    "output": None,
                    "response": t,
                    "vars": json.dumps({"t": q}),
                }
                for i, (q, t) in enumerate(mine[start : start + SHARD_ROWS], start)
            ]
            info = write_rows(out, f"data/train-p{p:03d}-{s:05d}.parquet", rows)
            shards.append({"path": info.path, "split": "train", "rows": info.rows, "sha256": info.sha256,
                           "bytes": info.bytes})  # fmt: skip
        manifests[p] = {"shards": shards}
    return manifests


def _hwm_mb(pid: int | str = "self") -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _descendants(root: int) -> list[int]:
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


def merge(out: Path, scaleout: bool) -> dict:
    """The merge pass in this process (a child of the bench): its figures."""
    import ray

    from gen.cluster import merge_pass
    from gen.dedup import Deduplicator

    manifests = {int(k): v for k, v in json.loads((out / "bench-manifests.json").read_text()).items()}
    if scaleout:
        ray.init(include_dashboard=False, logging_level="ERROR")
    started = time.monotonic()

    class _Run:
        dedup = Deduplicator(near=True, on="example")
        run_id = "bench"

    outcome = merge_pass(out, manifests, _Run(), count=PARTITIONS, shard_rows=SHARD_ROWS, scaleout=scaleout)
    wall = time.monotonic() - started
    workers = []
    if scaleout:
        for pid in _descendants(os.getpid()):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"default_worker" in cmd or cmd.startswith(b"ray::"):
                workers.append(round(_hwm_mb(pid)))
        ray.shutdown()
    return {
        "driver_peak_mb": round(_hwm_mb()),
        "worker_peaks_mb": sorted(workers, reverse=True),
        "wall_s": round(wall, 1),
        "rows": outcome.rows_checked,
        "removed": outcome.removed,
        "same_partition": outcome.same_partition,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, action="append", help="rows (repeatable; default 500,000 and 2,000,000)")
    ap.add_argument("--driver", action="store_true", help="run the one-driver pass too")
    ap.add_argument("--merge", help=argparse.SUPPRESS)  # the child: DIR:scaleout|driver
    args = ap.parse_args()
    if args.merge:
        where, how = args.merge.rsplit(":", 1)
        print(json.dumps(merge(Path(where), how == "scaleout")))
        return
    for n in args.n or [500_000, 2_000_000]:
        with tempfile.TemporaryDirectory(prefix="gen-merge-bench-") as tmp:
            out = Path(tmp)
            t = time.monotonic()
            manifests = make(out, n)
            (out / "bench-manifests.json").write_text(json.dumps(manifests))
            print(f"{n:,} rows written in {time.monotonic() - t:.0f} s", flush=True)
            for how in ["scaleout"] + (["driver"] if args.driver else []):
                if how == "driver":  # from the same shards: undo the scaled-out pass's rewrites
                    for p in (out / "data").glob("*-m.parquet"):
                        p.unlink()
                    for p in (out / "duplicates").glob("*"):
                        p.unlink()
                r = subprocess.run([sys.executable, __file__, "--merge", f"{out}:{how}"], capture_output=True,
                                   text=True, check=True)  # fmt: skip
                print(f"{n:,} rows, {how}: {r.stdout.strip().splitlines()[-1]}", flush=True)


if __name__ == "__main__":
    main()
