"""Answer verification benchmark: `[verify] method = "math"` answers per second on one thread.

    python bench/verify_bench.py                    # 10,000 answers, the default mix
    taskset -c 0 python bench/verify_bench.py       # the one-core figure
    python bench/verify_bench.py -n 2000 --trace-words 8000 --share-equivalent 0.5

It builds a real Verifier from a prompt file (a seed table of references, `[verify] reference =
"{{ answer }}"`, method `math`) and calls `Verifier.check` on each answer, as the pipeline does on its
verification thread (rendering the reference, extracting the final `\\boxed{}`, deciding). Answers are
a working of `--trace-words` words, then a boxed final answer, in this mix:

- identical: the reference's own text (`\\frac{3}{4}`, `42`, `\\{1, 2\\}`);
- wrong integer: off by one from an integer reference;
- equivalent: the same value written another way (`0.75` for `\\frac{3}{4}`, `\\{2, 1\\}` for `\\{1, 2\\}`),
  which only math-verify decides;
- wrong expression: a non-integer that is not the reference (math-verify decides that it is not).

It prints answers/s per kind and over the mix (wall clock), answers per CPU-second over the mix (this
process and the math-verify child together: the one-core figure, whatever else the machine runs), and
the same through a one-thread pool fed from an asyncio loop (the pipeline's path: `run_in_executor`),
with the loop's longest stall.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gen.config import load_prompt_file  # noqa: E402
from gen.templates import Expansion, canonical_json  # noqa: E402
from gen.verify import Verifier  # noqa: E402

# (reference, an equivalent form, a wrong non-integer form)
FORMS = [
    ("\\frac{3}{4}", "0.75", "\\frac{4}{5}"),
    ("\\frac{1}{2}", "0.5", "\\frac{1}{3}"),
    ("\\{1, 2\\}", "\\{2, 1\\}", "\\{1, 3\\}"),
    ("2\\sqrt{2}", "\\sqrt{8}", "3\\sqrt{2}"),
    ("9\\pi", "\\pi \\cdot 9", "8\\pi"),
    ("0.375", "\\frac{3}{8}", "0.376"),
]
WORDS = "so then we add the two terms and divide by the common factor which gives".split()


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=10_000, help="answers (default 10,000)")
    ap.add_argument("--trace-words", type=int, default=300, help="words of working before the boxed answer")
    ap.add_argument("--share-wrong-int", type=float, default=0.2)
    ap.add_argument("--share-equivalent", type=float, default=0.1)
    ap.add_argument("--share-wrong-expr", type=float, default=0.1)
    args = ap.parse_args()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        refs = [str(rng.randint(1, 10_000)) for _ in range(200)] + [f[0] for f in FORMS]
        with (d / "seed.jsonl").open("w") as f:
            for i, r in enumerate(refs):
                f.write(json.dumps({"pid": i, "answer": r}) + "\n")
        (d / "p.toml").write_text(
            'name = "b"\nversion = "1"\n[messages]\nuser = "{{ pid }}"\n[seed]\npath = "seed.jsonl"\n'
            '[verify]\nreference = "{{ answer }}"\nmethod = "math"\n'
        )
        prompt = load_prompt_file(d / "p.toml")
        assert prompt.spec.verify is not None
        verifier = Verifier(prompt.spec.verify, prompt, Expansion(prompt, None), None, 1)

        cases: list[tuple[str, str, str]] = []  # (kind, answer text, vars_json)
        for _ in range(args.n):
            u = rng.random()
            trace = " ".join(rng.choices(WORDS, k=args.trace_words))
            if u < args.share_wrong_int:
                i = rng.randrange(200)
                kind, final = "wrong integer", str(int(refs[i]) + 1)
            elif u < args.share_wrong_int + args.share_equivalent:
                i = 200 + rng.randrange(len(FORMS))
                kind, final = "equivalent", FORMS[i - 200][1]
            elif u < args.share_wrong_int + args.share_equivalent + args.share_wrong_expr:
                i = 200 + rng.randrange(len(FORMS))
                kind, final = "wrong expression", FORMS[i - 200][2]
            else:
                i = rng.randrange(len(refs))
                kind, final = "identical", refs[i]
            text = f"{trace}\n\nSo the final answer is \\boxed{{{final}}}."
            cases.append((kind, text, canonical_json({"pid": i, "answer": refs[i]})))

        # Start the math-verify process (it imports sympy) outside the timing.
        warm = canonical_json({"pid": 202, "answer": refs[202]})  # a set: math-verify decides it
        assert verifier.check(f"\\boxed{{{FORMS[2][1]}}}", None, warm).ok
        child = verifier._math_worker.pid  # type: ignore[union-attr]
        per_kind: dict[str, list[float]] = {}
        wrong_verdicts = 0
        cpu0 = time.process_time() + _cpu_s(child)
        t0 = time.perf_counter()
        for kind, text, vars_json in cases:
            t = time.perf_counter()
            ok = verifier.check(text, None, vars_json).ok
            per_kind.setdefault(kind, []).append(time.perf_counter() - t)
            wrong_verdicts += ok != (kind in ("identical", "equivalent"))
        total = time.perf_counter() - t0
        cpu = time.process_time() + _cpu_s(child) - cpu0

        print(f"{args.n:,} answers, {args.trace_words} words of working each, method math, one thread")
        print(f"{'kind':<18} {'answers':>8} {'answers/s':>10} {'mean ms':>8}")
        for kind, times in sorted(per_kind.items()):
            rate, mean_ms = len(times) / sum(times), 1000 * sum(times) / len(times)
            print(f"{kind:<18} {len(times):>8,} {rate:>10,.0f} {mean_ms:>8.3f}")
        print(f"{'all':<18} {args.n:>8,} {args.n / total:>10,.0f} {1000 * total / args.n:>8.3f}")
        print(
            f"CPU (this process and the math-verify one): {cpu:.2f} s, {args.n / cpu:,.0f} answers per CPU-s"
        )
        print(f"verdicts that disagree with the kind: {wrong_verdicts}")

        async def through_pool() -> tuple[float, float]:
            loop = asyncio.get_running_loop()
            pool = ThreadPoolExecutor(1)
            stall, last, done = 0.0, time.perf_counter(), False

            async def ticker() -> None:
                nonlocal stall, last
                while not done:
                    await asyncio.sleep(0.001)
                    now = time.perf_counter()
                    stall, last = max(stall, now - last), now

            tick = asyncio.ensure_future(ticker())
            t = time.perf_counter()
            it = iter(cases)

            async def worker() -> None:  # as the run's workers: each awaits its answer's check
                for _, text, vars_json in it:
                    await loop.run_in_executor(pool, verifier.check, text, None, vars_json)

            await asyncio.gather(*(worker() for _ in range(64)))
            elapsed = time.perf_counter() - t
            done = True
            await tick
            pool.shutdown()
            return elapsed, stall

        elapsed, stall = asyncio.run(through_pool())
        verifier.close()
        print(f"through a one-thread pool from an event loop: {args.n / elapsed:,.0f} answers/s, "
              f"longest loop stall {stall * 1000:.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
