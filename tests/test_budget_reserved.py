"""Both budget limits count every request in flight at its reservation (prompt estimate + max_tokens),
kept as running sums (gen.reserved.InFlight): --max-tokens used to count them, once a request had been
answered, at the average of the answers so far, so a teacher whose later answers are longer than its
first let out requests that together passed the limit by up to in_flight x (max_tokens - average)."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

from helpers import explain_recipe

from gen.budget import Price
from gen.reserved import InFlight

MAX_TOKENS = 2000  # [sampling] max_tokens: a long answer (~500-1,400 tokens) stays under it
CONCURRENCY = 32
LIMIT = 200_000  # well over the 32 first reservations (~65,000): the average decides
PROMPT_BOUND = 200  # the recipe's prompts are a few dozen tokens


def _recipe(tmp_path: Path, n: int) -> Path:
    return explain_recipe(tmp_path, n, max_tokens=MAX_TOKENS, name="reserved")


def test_max_tokens_counts_requests_in_flight_at_their_reservations(tmp_path: Path, sim_server) -> None:
    # 300 short answers (~100 tokens) first, then ten times as long: an average weighed down by the
    # short ones let 32 long requests out while the limit had room for a few (~20,000 tokens past it).
    sim = sim_server(latency_ms=20, long_after=300)
    out = tmp_path / "o"
    argv = [sys.executable, "-m", "gen", "run", str(_recipe(tmp_path, 1000)), "--base-url", sim.base_url]
    argv += ["--output", str(out), "--no-progress", "--max-concurrency", str(CONCURRENCY)]
    argv += ["--max-tokens", str(LIMIT)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert proc.returncode == 3, proc.stderr
    assert "token budget reached" in proc.stderr, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "budget"
    stats = sim.stats()
    billed = stats["prompt_tokens"] + stats["completion_tokens"]
    # Every request let out was reserved at its bound while spent + reserved was under the limit; only
    # the last one let out may pass it, by at most its own reservation.
    assert billed <= LIMIT + PROMPT_BOUND + MAX_TOKENS, (billed, stats)
    assert billed > LIMIT / 2, billed  # it did spend: the limit stopped it, not the start
    assert manifest["usage"]["total_tokens"] == billed  # every answer arrived and was counted


def test_running_sums_equal_the_exact_sums() -> None:
    # A long run's churn: reservations made, answered, abandoned, journaled again (a billed retry), at
    # estimates of every size; the running sums stay the exact sums of what is in flight.
    price = Price(input=3.0, output=15.0)
    rng = random.Random(7)
    flight = InFlight()
    for step in range(200_000):
        if flight and rng.random() < 0.5:
            key = rng.choice(list(flight.keys())) if step % 1000 == 0 else next(iter(flight))
            flight.pop(key)
        else:
            key = rng.getrandbits(63)
            flight[key] = (f"t{key}", (rng.randint(1, 30_000), rng.choice((1, 1024, 4096, 32_768))))
        if step % 20_000 == 0:
            _check(flight, price)
    _check(flight, price)
    while flight:
        flight.pop(next(iter(flight)))
    assert (flight.tokens, flight.usd(price)) == (0, 0.0)
    assert flight.pop(12345, None) is None and flight.tokens == 0  # a key not in flight: nothing moves


def _check(flight: InFlight, price: Price) -> None:
    estimates = [estimate for _, estimate in flight.values()]
    assert flight.tokens == sum(p + c for p, c in estimates)
    exact = math.fsum(price.cost(p, c) for p, c in estimates)
    assert math.isclose(flight.usd(price), exact, rel_tol=1e-12, abs_tol=1e-12)


def test_replacing_a_reservation_moves_the_sums_by_the_difference() -> None:
    flight = InFlight()
    flight[1] = ("a", (100, 1000))
    flight[1] = ("a", (40, 7))  # a billed retry journaled again at what the failed attempt cost
    assert flight.tokens == 47 and len(flight) == 1
    assert flight.usd(Price(input=1.0, output=2.0)) == (40 + 14) / 1e6
