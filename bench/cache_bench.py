"""Prompt caching on the simulator (a benchmark, not a test): how much of the input is read from cache,
and what it saves, with and without gen's prefix-grouped dispatch and its one-leader-per-group gate.

A recipe with a ~2,000-token system prompt that depends on an inner variable (4 styles, so in stream
order it changes every task) runs against the simulator's Anthropic side, priced as claude-sonnet-4-5
(gen/prices.toml: input $3, cache read $0.30, cache write $3.75 per million). The simulator keeps a
bounded cache (`--cache-entries`, default 2: a busy provider evicts too) and answers after `--latency-ms`.

    python bench/cache_bench.py             # 400 tasks, 64 in flight, 50 ms
    python bench/cache_bench.py -n 2000 --provider openai
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from gen import RunOptions, run
from gen.sim import SimConfig
from gen.sim.server import SimThread

MODES = {
    "stream order, no gate": {"dispatch_window": 1, "prefix_gate": False},
    "grouped, no gate": {"dispatch_window": 1024, "prefix_gate": False},
    "grouped + gate (default)": {"dispatch_window": 1024, "prefix_gate": True},
}


def prompt_file(folder: Path, n: int, provider: str, model: str) -> Path:
    system = "{{ style }}: you label support tickets. " + " ".join(f"Rule {i}: be brief." for i in range(440))
    (folder / "p.toml").write_text(
        'name = "cache-bench"\nversion = "1"\nintended_use = "research"\n'
        f'[teacher]\nprovider = "{provider}"\nmodel = "{model}"\n'
        f"[messages]\nsystem = {json.dumps(system)}\n"
        'user = "Ticket {{ n }}: my order has not arrived."\n'
        f'[variables]\nn = {list(range(n // 4))}\nstyle = ["a", "b", "c", "d"]\n'
    )
    return folder / "p.toml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=400)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency-ms", type=float, default=50.0)
    ap.add_argument("--cache-entries", type=int, default=2)
    ap.add_argument("--provider", choices=("anthropic", "openai"), default="anthropic")
    args = ap.parse_args()
    model = "claude-sonnet-4-5" if args.provider == "anthropic" else "gpt-4.1"
    where = f"{args.provider} side as {model}"
    print(f"{args.n} tasks, {where}, {args.concurrency} in flight, {args.latency_ms:g} ms a request")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        prompt = prompt_file(folder, args.n, args.provider, model)
        for name, mode in MODES.items():
            config = SimConfig(model=model, latency_ms=args.latency_ms, cache_entries=args.cache_entries)
            with SimThread(config) as sim:
                out = folder / name.replace(" ", "_")
                opts = RunOptions(
                    base_url=sim.base_url,
                    output=out,
                    progress=False,
                    max_concurrency=args.concurrency,
                    acknowledge_licence=True,
                    license="apache-2.0",
                    **mode,
                )
                result = run(prompt, opts)
                m = json.loads((out / "manifest.json").read_text())
            u = m["usage"]
            share = u["cached_input_tokens"] / u["prompt_tokens"]
            print(
                f"{name:26} input {share:6.1%} cached, {u['cache_write_tokens']:>9,} tokens written, "
                f"cost ${m['cost_usd']:.4f}, saved ${u['cache_saved_usd']:.4f}, {result.wall_s:.1f} s"
            )


if __name__ == "__main__":
    main()
