"""--max-usd counts the requests in flight at what they may cost: their prompt estimate at the input
rate and their max_tokens at the output rate, every one of them, so a run with 64 requests out and an
expensive output rate stops sending before the budget is gone (found by a review: it spent $3.31 of a
$0.50 limit)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import explain_recipe

MAX_TOKENS = 100
CONCURRENCY = 64
PRICE_IN, PRICE_OUT = 1.0, 400.0  # USD per million tokens: a completion costs 400x a prompt token
MAX_USD = 0.5


def _recipe(tmp_path: Path, n: int) -> Path:
    return explain_recipe(tmp_path, n, max_tokens=MAX_TOKENS, name="inflight")


def test_requests_in_flight_are_reserved_at_the_output_rate(tmp_path: Path, sim_server) -> None:
    sim = sim_server(latency_ms=200)
    out = tmp_path / "o"
    argv = [sys.executable, "-m", "gen", "run", str(_recipe(tmp_path, 400)), "--base-url", sim.base_url]
    argv += ["--output", str(out), "--no-progress", "--price-in", str(PRICE_IN)]
    argv += ["--max-concurrency", str(CONCURRENCY)]
    argv += ["--price-out", str(PRICE_OUT), "--max-usd", str(MAX_USD)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert "spending budget reached" in proc.stderr + proc.stdout, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "budget"
    # At most one reservation past the limit: the request that was allowed out while spent + reserved
    # was still under it. Its bound: its prompt (the recipe's prompts are a few dozen tokens; 200 is
    # generous) at the input rate and max_tokens at the output rate.
    one_request = (200 * PRICE_IN + MAX_TOKENS * PRICE_OUT) / 1e6
    assert manifest["cost_usd"] <= MAX_USD + one_request, manifest["cost_usd"]
    assert manifest["cost_usd"] > MAX_USD / 2  # it did spend: the limit, not a stop at the start


def test_a_re_ask_is_a_request_the_budget_must_allow(tmp_path: Path, sim_server) -> None:
    # Every answer is cut at max_tokens, so each task is asked afresh up to max_attempts: the re-asks
    # leave after the worker's check, and each must pass the budget on its own.
    sim = sim_server(rate_truncated=1.0)
    recipe = _recipe(tmp_path, 3)
    recipe.write_text(recipe.read_text().replace('version = "1"\n', 'version = "1"\nmax_attempts = 20\n'))
    out = tmp_path / "o"
    argv = [sys.executable, "-m", "gen", "run", str(recipe), "--base-url", sim.base_url]
    argv += ["--output", str(out), "--no-progress", "--price-in", str(PRICE_IN)]
    argv += ["--price-out", str(PRICE_OUT)]
    argv += ["--max-concurrency", "1", "--max-usd", "0.05"]  # a reservation is ~$0.04, an answer ~$0.02
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert "spending budget reached" in proc.stderr, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "budget"
    assert manifest["cost_usd"] <= 0.05 + (200 * PRICE_IN + MAX_TOKENS * PRICE_OUT) / 1e6, manifest
    assert sim.stats()["requests"] < 20  # not every try of the first task
    # The task stopped between its tries is undecided: a resumed run asks it again.
    assert not (out / "rejects").exists() or not list((out / "rejects").glob("*.parquet"))
