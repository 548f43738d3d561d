"""Near-dedup guarantees on real text pairs (a benchmark): P(removed) at Jaccard 0.90 and 0.80.

Base texts are windows of this repository's own prose (README.md, CHANGELOG.md, docs/*.md), of 30, 100
and 300 words; each pair is a base and a copy with random words replaced until the copy's word 3-gram
Jaccard to the base (computed exactly, on shingle sets) is within 0.005 of the target. A pair is
"removed" when gen.near_dedup would flag the copy against the base: some LSH band equal, and the
confirmation cut met (NearDedup's own signatures and rule). The issue-16 bounds: removed with
probability >= 99.9% at 0.90, kept with probability >= 85% at 0.80 (threshold 0.85).

    python bench/near_recall.py              # 2,000 pairs per target and length (minutes)
    python bench/near_recall.py --pairs 500
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gen.near_dedup import NearDedup, agreement, normalise, shingle_hashes, signatures  # noqa: E402


def shingles(words: list[str]) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + 3]) for i in range(len(words) - 2)} if len(words) >= 3 else {tuple(words)}


def jaccard(a: list[str], b: list[str]) -> float:
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def corpus() -> list[str]:
    files = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
    return normalise(" ".join(f.read_text() for f in files)).split()


def make_pair(rng: random.Random, words: list[str], length: int, target: float) -> tuple[str, str] | None:
    start = rng.randrange(0, len(words) - length)
    base = words[start : start + length]
    copy = base[:]
    for _ in range(length):
        j = jaccard(base, copy)
        if abs(j - target) <= 0.005:
            return " ".join(base), " ".join(copy)
        if j < target:
            return None  # overshot: try another pair
        copy[rng.randrange(length)] = f"x{rng.randrange(10**9)}"
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=2_000)
    args = ap.parse_args()
    words = corpus()
    d = NearDedup()
    rng = random.Random(16)
    print(f"# near dedup on real text pairs: threshold {d.threshold}, {d.bands} bands x {d.rows} rows")
    print("| words | Jaccard | pairs | removed | kept |")
    print("|---:|---:|---:|---:|---:|")
    for length in (30, 100, 300):
        for target in (0.90, 0.80):
            pairs: list[tuple[str, str]] = []
            while len(pairs) < args.pairs:
                p = make_pair(rng, words, length, target)
                if p is not None:
                    pairs.append(p)
            removed = 0
            for i in range(0, len(pairs), 2048):
                chunk = [t for p in pairs[i : i + 2048] for t in p]
                sig, fps = signatures(*shingle_hashes(chunk), d.bands, d.rows, d.seed)
                a, b = sig[0::2], sig[1::2]
                candidate = (fps[0::2] == fps[1::2]).any(axis=1)
                both, either = agreement(a, b)
                removed += int(np.count_nonzero(candidate & (both * d.num_perm >= d._min_equal * either)))
            n = len(pairs)
            print(f"| {length} | {target:.2f} | {n:,} | {removed / n:.4%} | {1 - removed / n:.4%} |")


if __name__ == "__main__":
    main()
