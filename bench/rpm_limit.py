"""gen under a real per-second request limit: the share of 429s and the time against the ideal.

The simulator (in this process, on loopback) refuses requests beyond --rpm over a sliding --window;
`gen run --rpm` (a child process) paces at the same limit. Figures, not assertions: on a loaded machine
both event loops run late and requests bunch on the wire, so the 429 share depends on the machine. The
test suite checks the pacing schedule gen produces instead (tests/test_resume.py).

    python bench/rpm_limit.py                       # 600 tasks at 3,000 rpm over a 1 s window, 3 runs
    python bench/rpm_limit.py -n 2000 --rpm 1200 --window 60 --repeats 1
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gen.sim import SimConfig, SimThread


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=600, help="tasks")
    ap.add_argument("--rpm", type=float, default=3000)
    ap.add_argument("--window", type=float, default=1.0, help="seconds the simulator counts the limit over")
    ap.add_argument("--latency-ms", type=float, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"{args.n} tasks, --rpm {args.rpm:g}, limit checked over {args.window:g} s")
    print("run | requests | 429s | share | wall s | ideal s | wall/ideal")
    for k in range(args.repeats):
        config = SimConfig(
            rpm=int(args.rpm), rpm_window_s=args.window, retry_after_s=0.2, latency_ms=args.latency_ms
        )
        sim = SimThread(config)
        sim.start()
        try:
            with tempfile.TemporaryDirectory() as tmp:
                prompt = Path(tmp) / "p.toml"
                prompt.write_text(
                    'name = "rpm"\nversion = "1"\nintended_use = "research"\n'
                    '[teacher]\nmodel = "gen-sim-1"\nlicense = "apache-2.0"\n'
                    '[messages]\nuser = "Explain item {{ n }} in detail."\n'
                    f"[variables]\nn = {list(range(args.n))}\n"
                )
                cmd = [sys.executable, "-m", "gen", "run", str(prompt), "--provider", "openai",
                       "--base-url", sim.base_url, "--output", f"{tmp}/o", "--rpm", str(args.rpm),
                       "--no-progress"]  # fmt: skip
                started = time.monotonic()
                subprocess.run(cmd, check=True, capture_output=True)
                wall = time.monotonic() - started
            s = sim.stats()
        finally:
            sim.stop()
        ideal = args.n / (args.rpm / 60)
        share = s["rate_limited"] / max(1, s["requests"])
        print(f"{k + 1} | {s['requests']} | {s['rate_limited']} | {share:.2%} | {wall:.1f} | {ideal:.1f} | "
              f"{wall / ideal:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
