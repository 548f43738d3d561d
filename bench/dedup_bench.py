"""Near-duplicate removal benchmark: gen.near_dedup.NearDedup against the libraries it was chosen over.

    python bench/dedup_bench.py                 # 50,000 rows through NearDedup, 10,000 through the rest
    taskset -c 0 python bench/dedup_bench.py    # the one-core figure (rensa may use a second thread)
    python bench/dedup_bench.py --rows 5000 --alt-rows 2000 --methods neardedup.add,rensa

Corpus: synthetic ~100-word texts (Zipf-distributed words from a 20,000-word vocabulary); a fraction
(--dup-rate, 10%) are copies of an earlier text with 1-3 words replaced, so their word 3-gram Jaccard is
~0.94 (1 edit), ~0.89 (2) or ~0.83 (3, below the 0.85 threshold). Every method works streaming: each text
is checked against all kept earlier texts, then indexed if it is not a duplicate, confirmed by the
MinHash estimate >= threshold, with the (bands, rows) that gen.near_dedup.choose_bands picks.

Columns: rows/s over the whole stream; recall = share of near-duplicates flagged among those whose true
Jaccard to their source is >= threshold, and >= threshold + 0.05 (where LSH promises 99.9%); flagged<t =
share of near-duplicates below the threshold flagged anyway (estimate noise); false = share of original
texts flagged (should be 0); bytes/row = growth of the process's resident memory while indexing divided by
rows kept (NearDedup also reports its own bytes_per_row). Each method runs in its own subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gen.dedup import normalise  # noqa: E402
from gen.near_dedup import NearDedup, candidate_probability, choose_bands, shingle_hashes  # noqa: E402

THRESHOLD = 0.85
SEED = 1
METHODS = ["neardedup.add", "neardedup.add_batch", "rensa", "datasketch", "numpy"]


# ---------------------------------------------------------------------------------------------------------
# corpus


def make_corpus(rows: int, dup_rate: float, seed: int) -> tuple[list[str], list[int]]:
    """Texts and, for each, the index of the text it near-duplicates (-1 for originals)."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = sorted({"".join(rng.choices(letters, k=rng.randint(2, 10))) for _ in range(20_000)})
    weights = [1.0 / (i + 1) ** 0.9 for i in range(len(vocab))]
    texts: list[str] = []
    source: list[int] = []
    originals: list[int] = []
    for i in range(rows):
        if originals and rng.random() < dup_rate:
            src = rng.choice(originals)
            words = texts[src].split()
            for pos in rng.sample(range(len(words)), rng.randint(1, 3)):
                words[pos] = rng.choice(vocab) + "x"  # never equal to the word it replaces
            texts.append(" ".join(words))
            source.append(src)
        else:
            n = rng.randint(90, 110)
            text = " ".join(rng.choices(vocab, weights=weights, k=n))
            if rng.random() < 0.5:
                text = text.capitalize() + "."
            texts.append(text)
            source.append(-1)
            originals.append(i)
    return texts, source


def shingle_set(text: str) -> set[str]:
    words = normalise(text).split()
    if len(words) < 3:
        return {" ".join(words)}
    return {" ".join(words[i : i + 3]) for i in range(len(words) - 2)}


def true_jaccard(texts: list[str], source: list[int]) -> dict[int, float]:
    out = {}
    for i, src in enumerate(source):
        if src >= 0:
            a, b = shingle_set(texts[i]), shingle_set(texts[src])
            out[i] = len(a & b) / len(a | b)
    return out


# ---------------------------------------------------------------------------------------------------------
# the methods: each is a factory returning a streaming `run(texts) -> list[bool]` (True = duplicate)


def method_neardedup_add(bands: int, rows: int) -> tuple[Callable[[list[str]], list[bool]], object]:
    dedup = NearDedup(threshold=THRESHOLD, num_perm=bands * rows, bands=bands, seed=SEED)

    def run(texts: list[str]) -> list[bool]:
        return [dedup.add(t) is not None for t in texts]

    return run, dedup


def method_neardedup_batch(bands: int, rows: int) -> tuple[Callable[[list[str]], list[bool]], object]:
    dedup = NearDedup(threshold=THRESHOLD, num_perm=bands * rows, bands=bands, seed=SEED)

    def run(texts: list[str]) -> list[bool]:
        out: list[bool] = []
        for i in range(0, len(texts), 1000):
            out.extend(r is not None for r in dedup.add_batch(texts[i : i + 1000]))
        return out

    return run, dedup


def shingle_strings(text: str) -> list[str]:
    words = normalise(text).split()
    if len(words) < 3:
        return [" ".join(words)]
    return [f"{a} {b} {c}" for a, b, c in zip(words, words[1:], words[2:], strict=False)]


def method_rensa(bands: int, rows: int) -> tuple[Callable[[list[str]], list[bool]], object]:
    """rensa's own API: RMinHash over shingle strings, RMinHashLSH, RMinHash.jaccard to confirm."""
    import rensa

    num_perm = bands * rows
    lsh = rensa.RMinHashLSH(THRESHOLD, num_perm, bands)
    kept: list[object] = []

    def run(texts: list[str]) -> list[bool]:
        out = []
        for text in texts:
            m = rensa.RMinHash(num_perm, SEED)
            m.update(shingle_strings(text))
            if any(m.jaccard(kept[c]) >= THRESHOLD for c in lsh.query(m)):
                out.append(True)
                continue
            lsh.insert(len(kept), m)
            kept.append(m)
            out.append(False)
        return out

    return run, lsh


def method_datasketch(bands: int, rows: int) -> tuple[Callable[[list[str]], list[bool]], object]:
    """datasketch: MinHash.update_batch over shingle bytes, MinHashLSH(params=(b, r)), MinHash.jaccard."""
    from datasketch import MinHash, MinHashLSH

    num_perm = bands * rows
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=num_perm, params=(bands, rows))
    kept: dict[int, MinHash] = {}
    template = MinHash(num_perm=num_perm, seed=SEED)  # permutations computed once, shared by copies
    scheme = template.scheme

    def run(texts: list[str]) -> list[bool]:
        out = []
        for i, text in enumerate(texts):
            m = MinHash(num_perm=num_perm, seed=SEED, permutations=template.permutations, scheme=scheme)
            m.update_batch([s.encode() for s in shingle_strings(text)])
            if any(m.jaccard(kept[c]) >= THRESHOLD for c in lsh.query(m)):
                out.append(True)
                continue
            lsh.insert(i, m)
            kept[i] = m
            out.append(False)
        return out

    return run, lsh


def method_numpy(bands: int, rows: int) -> tuple[Callable[[list[str]], list[bool]], object]:
    """Hand-rolled: the same numpy shingle hashes, numpy multiply-shift MinHash, dict-per-band LSH."""
    num_perm = bands * rows
    rng = np.random.default_rng(SEED)
    a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) | np.uint64(1)
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    tables: list[dict[bytes, list[int]]] = [{} for _ in range(bands)]
    kept: list[np.ndarray] = []
    need = int(np.ceil(THRESHOLD * num_perm - 1e-9))

    def minhash(texts: list[str]) -> np.ndarray:
        flat, offsets = shingle_hashes(texts)
        counts = np.diff(offsets).astype(np.intp)
        out = np.empty((len(texts), num_perm), np.uint32)
        for lo in range(
            0, len(texts), 16
        ):  # pad rows of a chunk to equal length with their own first shingle
            hi = min(lo + 16, len(texts))
            width = int(counts[lo:hi].max())
            idx = np.minimum(np.arange(width), counts[lo:hi, None] - 1) + offsets[lo:hi, None].astype(np.intp)
            x = flat[idx][:, :, None]  # (rows, width, 1)
            h = (x * a + b) >> np.uint64(32)  # multiply-shift: a 2-independent family on 64-bit keys
            out[lo:hi] = h.min(axis=1)
        return out

    def run(texts: list[str]) -> list[bool]:
        out = []
        for lo in range(0, len(texts), 256):
            sigs = minhash(texts[lo : lo + 256])
            for sig in sigs:
                keys = [sig[j * rows : (j + 1) * rows].tobytes() for j in range(bands)]
                cands = {c for t, k in zip(tables, keys, strict=True) for c in t.get(k, ())}
                if any(np.count_nonzero(kept[c] == sig) >= need for c in cands):
                    out.append(True)
                    continue
                for t, k in zip(tables, keys, strict=True):
                    t.setdefault(k, []).append(len(kept))
                kept.append(sig)
                out.append(False)
        return out

    return run, tables


FACTORIES = {
    "neardedup.add": method_neardedup_add,
    "neardedup.add_batch": method_neardedup_batch,
    "rensa": method_rensa,
    "datasketch": method_datasketch,
    "numpy": method_numpy,
}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_one(method: str, rows: int, dup_rate: float, seed: int, max_perm: int) -> dict[str, object]:
    texts, source = make_corpus(rows, dup_rate, seed)
    bands, r = choose_bands(THRESHOLD, max_perm=max_perm)
    run, obj = FACTORIES[method](bands, r)
    run(make_corpus(200, dup_rate, seed + 1)[0])  # warm up: imports, caches, permutations
    run, obj = FACTORIES[method](bands, r)
    before = rss_bytes()
    t0, c0 = time.perf_counter(), time.process_time()
    flags = run(texts)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    grown = rss_bytes() - before
    jac = true_jaccard(texts, source)
    above = [i for i, j in jac.items() if j >= THRESHOLD]
    above_m = [i for i, j in jac.items() if j >= THRESHOLD + 0.05]
    below = [i for i, j in jac.items() if j < THRESHOLD]
    originals = [i for i, s in enumerate(source) if s < 0]
    kept = rows - sum(flags)
    result: dict[str, object] = {
        "method": method,
        "rows": rows,
        "rows_per_s": rows / elapsed,
        "rows_per_cpu_s": rows / cpu,
        "recall_t": sum(flags[i] for i in above) / max(1, len(above)),
        "recall_t05": sum(flags[i] for i in above_m) / max(1, len(above_m)),
        "flagged_below_t": sum(flags[i] for i in below) / max(1, len(below)),
        "false_dup": sum(flags[i] for i in originals) / max(1, len(originals)),
        "pairs": [len(above), len(above_m), len(below)],
        "rss_bytes_per_row": grown / max(1, kept),
    }
    if isinstance(obj, NearDedup):
        result["own_bytes_per_row"] = obj.bytes_per_row
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=50_000, help="rows through NearDedup")
    ap.add_argument("--alt-rows", type=int, default=10_000, help="rows through the other libraries")
    ap.add_argument("--dup-rate", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-perm", type=int, default=256, help="choose_bands budget")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one method in this process
    args = ap.parse_args()

    if args.one:
        print(json.dumps(run_one(args.one, args.rows, args.dup_rate, args.seed, args.max_perm)))
        return

    bands, rows = choose_bands(THRESHOLD, max_perm=args.max_perm)
    print(f"choose_bands({THRESHOLD}, max_perm={args.max_perm}) -> bands={bands} rows={rows}", end=" ")
    print(f"num_perm={bands * rows}")
    for s in (0.3, 0.5, 0.7, 0.8, THRESHOLD, THRESHOLD + 0.05):
        print(f"  P(candidate | J={s:.2f}) = {candidate_probability(s, bands, rows):.6f}")
    print()
    header = (
        f"{'method':22s} {'rows':>7s} {'rows/s':>9s} {'rows/cpu-s':>10s} {'recall>=t':>10s} "
        f"{'recall>=t+.05':>14s} {'flagged<t':>10s} {'false':>7s} {'bytes/row':>10s}"
    )
    print(header)
    print("-" * len(header))
    for method in args.methods.split(","):
        n = args.rows if method.startswith("neardedup") else args.alt_rows
        cmd = [sys.executable, __file__, "--one", method, "--rows", str(n)]
        cmd += ["--dup-rate", str(args.dup_rate), "--seed", str(args.seed), "--max-perm", str(args.max_perm)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["?"])[-1]
            print(f"{method:22s} skipped: {last}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        mem = f"{r['rss_bytes_per_row']:.0f}"
        if "own_bytes_per_row" in r:
            mem += f" ({r['own_bytes_per_row']:.0f})"
        print(
            f"{method:22s} {r['rows']:7d} {r['rows_per_s']:9.0f} {r['rows_per_cpu_s']:10.0f} "
            f"{r['recall_t']:10.4f} {r['recall_t05']:14.4f} {r['flagged_below_t']:10.4f} "
            f"{r['false_dup']:7.4f} {mem:>10s}"
        )
    print(
        "\npairs (>=t, >=t+0.05, <t) are counted per run; bytes/row: RSS growth / rows kept (own estimate)."
    )


if __name__ == "__main__":
    main()
