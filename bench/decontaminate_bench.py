"""Decontamination benchmark: building the n-gram index from benchmark files, and checking rows.

    python bench/decontaminate_bench.py                      # 20,000 benchmark rows, 20,000 train rows
    python bench/decontaminate_bench.py --bench-rows 100000 --rows 50000 --words 120

Corpus: synthetic texts of --words words (Zipf-distributed from a 20,000-word vocabulary). The benchmark
is written as a JSONL file (question + answer columns) and read by gen.decontaminate.build, as a run
does before its first request. Then --rows train texts (input + answer, --words each) are checked
through ContaminationStep.check_batch; --hit-rate of them quote 13 words of a benchmark row.

Figures: index build time and n-grams/s; index size (bytes per n-gram: the numpy arrays and the bit
filter, and the growth of the process's peak resident memory while building, temporary arrays included);
check time per row (µs); rows found contaminated against the number planted (they should be equal, give
or take an accidental 13-gram match, which a Zipf vocabulary of 20,000 words makes rare).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gen.decontaminate import ContaminationStep, Source, build  # noqa: E402

VOCAB = [f"w{i}" for i in range(20_000)]
WEIGHTS = [1 / (i + 1) for i in range(len(VOCAB))]


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choices(VOCAB, WEIGHTS, k=n))


def _peak_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench-rows", type=int, default=20_000)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--words", type=int, default=80)
    ap.add_argument("--hit-rate", type=float, default=0.05)
    ap.add_argument("--ngram", type=int, default=13)
    args = ap.parse_args()
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.jsonl"
        questions = [_text(rng, args.words) for _ in range(args.bench_rows)]
        with path.open("w") as f:
            for q in questions:
                f.write(json.dumps({"question": q, "answer": _text(rng, 10)}) + "\n")
        before = _peak_kib()
        t0 = time.perf_counter()
        d = build([Source(path, "bench.jsonl", ["question", "answer"])], ngram=args.ngram, splits=False)
        built = time.perf_counter() - t0
        grown = (_peak_kib() - before) * 1024
    n = len(d.hashes)
    arrays = d.hashes.nbytes + d.files.nbytes + d.rows.nbytes + d.filter.nbytes
    rate = f"{n / built:,.0f} n-grams/s"
    print(f"index: {args.bench_rows:,} rows, {n:,} distinct {args.ngram}-grams in {built:.2f} s ({rate})")
    size = f"{arrays / n:.1f} bytes per n-gram in its arrays ({arrays / 2**20:.1f} MiB)"
    print(f"index size: {size}; peak RSS grew {grown / 2**20:.1f} MiB while building")

    step = ContaminationStep(decontaminate=d)
    keys, planted = [], 0
    for _i in range(args.rows):
        text = _text(rng, args.words)
        if rng.random() < args.hit_rate:
            q = questions[rng.randrange(len(questions))].split()
            at = rng.randrange(len(q) - args.ngram + 1)
            text = " ".join(q[at : at + args.ngram]) + " " + text
            planted += 1
        keys.append(("train", text))
    ids = [f"{i:064x}" for i in range(args.rows)]
    t0 = time.perf_counter()
    found = step.check_batch(ids, keys)
    took = time.perf_counter() - t0
    hits = sum(f is not None for f in found)
    per_row = f"{took / args.rows * 1e6:.0f} µs a row"
    print(f"check: {args.rows:,} rows in {took:.2f} s ({per_row}); found {hits:,} (planted {planted:,})")


if __name__ == "__main__":
    main()
