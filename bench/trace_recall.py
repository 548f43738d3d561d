"""How often the near check catches near-identical reasoning traces, and what the trace sample costs.

Pairs of rows answer one input with the same short final answer (`\\boxed{42}`) and traces made as the
simulator makes them (sentences drawn from a fixed pool, about 4 characters a token). A near copy
changes two words of the trace at random (or inserts one sentence, which shifts the text after it);
an independent trace is drawn afresh. A pair counts as caught when the second row is a near duplicate
of the first (`[dedup] on = "example"`, the default threshold): near copies should be, independent
traces never. Also prints the CPU of `gen.reasoning.trace_sample` per trace.

    python bench/trace_recall.py                  # 300 pairs per length
    python bench/trace_recall.py --pairs 100
"""

from __future__ import annotations

import argparse
import json
import random
import time

from gen.dedup import Deduplicator
from gen.reasoning import trace_sample
from gen.sim.instances import VOCAB
from gen.sim.reasoning import _pool

BOXED = "\\boxed{42}"


def _trace(rng: random.Random, tokens: int) -> str:
    return " ".join(rng.choices(_pool(), k=max(1, tokens * 4 // 80)))


def _two_words_changed(rng: random.Random, trace: str) -> str:
    words = trace.split(" ")
    for i in rng.sample(range(len(words)), 2):
        words[i] = rng.choice(VOCAB)
    return " ".join(words)


def _sentence_inserted(rng: random.Random, trace: str) -> str:
    at = trace.find(". ", rng.randrange(len(trace)))
    at = len(trace) if at < 0 else at + 2
    return trace[:at] + rng.choice(_pool()) + " " + trace[at:]


def _row(i: int, trace: str) -> dict:
    vars_ = json.dumps({"problem": "What is six times seven?"})
    return {
        "id": f"{i:064x}",
        "messages": [
            {"role": "user", "content": "What is six times seven?"},
            {"role": "assistant", "content": BOXED},
        ],
        "output": None,
        "response": BOXED,
        "vars": vars_,
        "reasoning": trace,
    }


def caught(a: str, b: str) -> bool:
    d = Deduplicator()
    decisions = d.check_batch([_row(1, a), _row(2, b)])
    return decisions[1] is not None and decisions[1].kind == "near"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=300)
    ap.add_argument("--tokens", type=int, nargs="*", default=[1_000, 2_000, 8_000, 30_000])
    args = ap.parse_args()
    rng = random.Random(14)
    for tokens in args.tokens:
        found = {"two words changed": 0, "one sentence inserted": 0, "independent": 0}
        spent, traces = 0.0, 0
        for _ in range(args.pairs):
            a = _trace(rng, tokens)
            found["two words changed"] += caught(a, _two_words_changed(rng, a))
            found["one sentence inserted"] += caught(a, _sentence_inserted(rng, a))
            found["independent"] += caught(a, _trace(rng, tokens))
            started = time.thread_time()
            trace_sample(a)
            spent += time.thread_time() - started
            traces += 1
        shares = ", ".join(f"{k} {v / args.pairs:.0%}" for k, v in found.items())
        print(
            f"{tokens:>6,} tokens: caught: {shares}; trace_sample {spent / traces * 1e6:.1f} µs a trace",
            flush=True,
        )


if __name__ == "__main__":
    main()
