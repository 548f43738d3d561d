"""Review: a batch run stopped (SIGINT) while its online fallback has requests in flight. Those requests
may have been billed: as in an online run (gen.asking: a cancelled request is abandoned, its reservation
spent), their reservations must be counted, at the list price, in the manifest's usage.unanswered_* and
cost_usd, not dropped with the journal at the last checkpoint.

Real HTTP against the simulator's Batch endpoints, a real `gen run` subprocess sent SIGINT."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import batch_recipe
from test_batch_fallback_price import _args, _list_cost


def test_sigint_with_online_fallback_in_flight_counts_their_reservations(tmp_path: Path, sim_server) -> None:
    sim = sim_server(batch_delay_s=0.05, batch_rate_failed=1.0, latency_ms=3000)
    prompt = batch_recipe(tmp_path, 10, "fallback")
    out = tmp_path / "o"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gen", *_args(prompt, out, sim), "--grace-period", "0.5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while sim.stats()["requests"] < 10 and time.monotonic() < deadline:  # every one online, in flight
        time.sleep(0.02)
    assert sim.stats()["requests"] == 10
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["usage"]["unanswered_requests"] == 10, (manifest["usage"], err)
    assert manifest["cost_usd"] == pytest.approx(_list_cost(manifest), rel=1e-6)
    assert manifest["cost_usd"] > 0
