#!/usr/bin/env python3
"""429s: gen against a bare client with retries under scattered 429s, and gen under a real limit.

Two scenarios on gen's simulator (50 ms latency, 64 requests in flight by default):

* scattered: 5% of requests answered 429 with `Retry-After: 1` at random, 2% 500, 3% answers whose
  content is not JSON; `-n` tasks (default 2,000) of prompts/quickstart.toml. The bare client is
  bench/ceiling.py with `--retries 6` (a 429 waits its Retry-After, a 500 backs off, bad JSON is asked
  again). Target: gen's wall time within 1.5x of the bare client's.
* limit: the simulator enforces 1,200 requests a minute checked per second (20 a second), no other
  faults; gen runs `--rpm 1200` over `--limit-n` tasks (default 600, an ideal 30 s). Targets: at most
  1% of requests answered 429, wall time at most 1.15x the ideal.

    python bench/throttle.py                   # ~1.5 min: 3 x scattered (both clients), 1 x limit
    python bench/throttle.py --repeats 1 --skip-limit
    python bench/throttle.py --gen-src /path/to/other/checkout   # benchmark another tree's gen

A benchmark, not a test: it prints figures (medians over the repeats) and asserts nothing. Wall times
include start-up and depend on how busy the machine is: the "other processes" line says how much
else ran meanwhile.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput as tp  # noqa: E402  (the helpers of bench/throughput.py)

ROOT = tp.ROOT
SCATTERED = {"rate_429": 0.05, "retry_after_s": 1.0, "rate_500": 0.02, "rate_invalid_json": 0.03}


class ConfiguredSim:
    """One simulator process with any SimConfig (the `gen sim` flags do not reach every field)."""

    def __init__(self, config: dict[str, Any], cpus: set[int] | None, log: Path) -> None:
        self.port = tp.free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = self.base + "/v1"
        code = (
            "import sys, orjson; from gen.sim import SimConfig, serve; "
            "serve(SimConfig(**orjson.loads(sys.argv[1])), host='127.0.0.1', port=int(sys.argv[2]))"
        )
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, orjson.dumps(config).decode(), str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=tp._pinned(cpus),
            cwd=tp.CHILD_CWD,
            env=tp.GEN_ENV,
        )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"bench: the simulator exited: {log.read_text(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise SystemExit("bench: the simulator did not answer /health within 30 s") from None
                time.sleep(0.05)

    # The interface bench/throughput.py's run_client expects of a SimGroup.
    @property
    def ports(self) -> list[int]:
        return [self.port]

    @property
    def urls(self) -> list[str]:
        return [self.url]

    def stats(self) -> list[dict[str, int]]:
        return [tp.http_json(self.base + "/sim/stats")]

    def cpu_s(self) -> float:
        return tp.proc_cpu_s(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def delta(sim: ConfiguredSim, before: dict[str, int]) -> dict[str, int]:
    after = sim.stats()[0]
    return {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)}


def run_bare(spec: dict[str, Any], n: int, conc: int, sim: ConfiguredSim, cpus, work: Path, tag: str) -> dict:
    spec_path = work / f"spec-{tag}.json"
    spec_path.write_bytes(orjson.dumps({**spec, "base_urls": sim.urls, "n": n, "concurrency": conc}))
    out, log = work / f"bare-{tag}.parquet", work / f"bare-{tag}.log"
    cmd = [sys.executable, str(tp.CEILING), "--spec", str(spec_path), "--out", str(out), "--retries", "6"]
    before = sim.stats()[0]
    r = tp.run_client(cmd, cpus, sim, log)
    r = tp.finish(r, tp.count_rows([out]) if out.exists() else 0, log, "bare client")
    r["sim"] = delta(sim, before)
    return r


def run_gen(prompt: Path, samples: int, n: int, conc: int, sim, cpus, work: Path, tag: str, *extra) -> dict:
    out, log = work / f"gen-{tag}", work / f"gen-{tag}.log"
    cmd = [*tp.gen_command(), "run", str(prompt), "--provider", "openai", "--base-url", sim.url]
    cmd += ["--output", str(out), "--no-progress", "--max-concurrency", str(conc)]
    cmd += ["--samples", str(samples), "--limit", str(n), *extra]
    before = sim.stats()[0]
    r = tp.run_client(cmd, cpus, sim, log, env=tp.GEN_ENV)
    data = sorted((out / "data").glob("*.parquet")) if out.exists() else []
    r = tp.finish(r, tp.count_rows(data), log, "gen")
    rejects = sorted((out / "rejects").glob("*.parquet")) if out.exists() else []
    r["rejects"] = tp.count_rows(rejects)
    r["sim"] = delta(sim, before)
    said = [ln for ln in log.read_text(errors="replace").splitlines() if ln.startswith("gen:")]
    r["stderr_tail"] = said[-3:]
    return r


def med(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=2000, help="tasks of the scattered-429 scenario (default 2000)")
    ap.add_argument("--limit-n", type=int, default=600, help="tasks of the real-limit scenario (default 600)")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency-ms", type=float, default=50.0)
    ap.add_argument("--rpm", type=int, default=1200, help="the real limit, checked per second")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each client in the scattered scenario")
    ap.add_argument("--skip-scattered", action="store_true")
    ap.add_argument("--skip-limit", action="store_true")
    ap.add_argument("--prompt", type=Path, default=ROOT / "prompts" / "quickstart.toml")
    ap.add_argument("--gen-src", type=Path, help="benchmark the gen package under this directory")
    ap.add_argument("--no-pin", action="store_true", help="do not pin the simulator and clients to CPUs")
    ap.add_argument("--json", type=Path, metavar="OUT", help="also write every figure as JSON")
    args = ap.parse_args()

    tp.use_gen_source((args.gen_src or ROOT).resolve())
    sim_cpus, client_cpus, pin_note = tp.plan_cpus(not args.no_pin)
    print(f"bench: gen from {(args.gen_src or ROOT).resolve()}; {pin_note}")
    conc, lat = args.concurrency, args.latency_ms
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="gen-throttle-") as tmp:
        work = Path(tmp)
        if not args.skip_scattered:
            spec, samples, _ = tp.build_spec(args.prompt, args.n)
            config = {"latency_ms": lat, "seed": 7, **SCATTERED}
            sim = ConfiguredSim(config, sim_cpus, work / "sim-scattered.log")
            bare, gen = [], []
            try:
                for i in range(args.repeats):  # alternate which goes first
                    order = ("bare", "gen") if i % 2 == 0 else ("gen", "bare")
                    for who in order:
                        if who == "bare":
                            bare.append(run_bare(spec, args.n, conc, sim, client_cpus, work, f"s{i}"))
                        else:
                            gen.append(
                                run_gen(args.prompt, samples, args.n, conc, sim, client_cpus, work, f"s{i}")
                            )
                        r = (bare if who == "bare" else gen)[-1]
                        print(
                            f"  scattered #{i} {who:4}: {r['wall_s']:6.2f} s, {r['rows']} rows, "
                            f"other CPU {100 * r['other_cpu_busy']:.0f}%, simulator answered {r['sim']}"
                        )
            finally:
                sim.stop()
            ratio = med(gen, "wall_s") / med(bare, "wall_s")
            ideal = -(-args.n // conc) * lat / 1000
            print(
                f"\nscattered 429s ({args.n} tasks, {lat:g} ms, {conc} in flight, 5% 429 Retry-After: 1, "
                f"2% 500, 3% bad JSON; ideal without faults {ideal:.2f} s):\n"
                f"  bare client with retries: {med(bare, 'wall_s'):.2f} s (median of {len(bare)})\n"
                f"  gen:                      {med(gen, 'wall_s'):.2f} s (median of {len(gen)}), "
                f"{statistics.median(r['rows'] for r in gen):.0f} rows\n"
                f"  gen / bare: {ratio:.2f}x (target <= 1.5x)"
            )
            figures["scattered"] = {"bare": bare, "gen": gen, "ratio": ratio}
        if not args.skip_limit:
            n = args.limit_n
            spec, samples, _ = tp.build_spec(args.prompt, n)
            config = {"latency_ms": lat, "rpm": args.rpm, "rpm_window_s": 1.0, "seed": 7}
            sim = ConfiguredSim(config, sim_cpus, work / "sim-limit.log")
            try:
                rpm = ("--rpm", str(args.rpm))
                r = run_gen(args.prompt, samples, n, conc, sim, client_cpus, work, "limit", *rpm)
            finally:
                sim.stop()
            ideal = n / (args.rpm / 60)
            share = r["sim"].get("rate_limited", 0) / max(1, r["sim"].get("requests", 0))
            print(
                f"\nreal limit ({n} tasks, {args.rpm} rpm checked per second, {lat:g} ms, {conc} in flight; "
                f"gen --rpm {args.rpm}):\n"
                f"  gen: {r['wall_s']:.2f} s for an ideal {ideal:.1f} s: {r['wall_s'] / ideal:.3f}x "
                f"(target <= 1.15x); {r['rows']} rows\n"
                f"  429s: {r['sim'].get('rate_limited', 0)} of {r['sim'].get('requests', 0)} requests "
                f"({100 * share:.2f}%, target <= 1%); other CPU {100 * r['other_cpu_busy']:.0f}%"
            )
            figures["limit"] = {"gen": r, "ideal_s": ideal, "ratio": r["wall_s"] / ideal, "share_429": share}
    if args.json:
        args.json.write_bytes(orjson.dumps(figures, default=str, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
