"""Session 9's hostile review of the batch run's budget with `--batch-fallback online` (the fallback
checked against --max-usd, its requests in flight at the list price, a collected batch's reservation
released before its fallbacks leave). Real HTTP against the simulator's OpenAI Batch and chat
endpoints, real `gen run` runs.
"""

from __future__ import annotations

import json
from pathlib import Path

from helpers import batch_recipe

from gen.cli import main

LIST_OUT = 100.0  # USD per million completion tokens at the list price; prompt tokens are free
MAX_TOKENS = 120  # batch_recipe's [sampling] max_tokens: a request's reservation, priced
ONLINE_RESERVATION = MAX_TOKENS * LIST_OUT / 1e6  # $0.012 a fallback request may cost


def _args(prompt: Path, out: Path, sim, *more: str) -> list[str]:
    return [
        "run", str(prompt), "--provider", "openai", "--base-url", sim.base_url, "--output", str(out),
        "--no-progress", "--batch", "--batch-poll", "0.05", "--batch-fallback", "online",
        "--price-in", "0", "--price-out", str(LIST_OUT), "--max-pause", "0.05", *more,
    ]  # fmt: skip


def test_a_fallback_retried_after_a_billed_failure_counts_every_attempt(tmp_path: Path, sim_server) -> None:
    # Every batch request fails, and every fallback request is answered with a 2xx gen cannot keep (a
    # malformed reply: the teacher may have billed it) and retried. An online run charges each billed
    # attempt at its reservation; the fallback charged only the last one of each request, so a run
    # under --max-usd could pay --max-retries + 1 times what it counted.
    n = 3
    sim = sim_server(batch_delay_s=0.05, batch_rate_failed=1.0, rate_malformed=1.0)
    prompt = batch_recipe(tmp_path, n, "billed")
    out = tmp_path / "o"
    main(_args(prompt, out, sim, "--max-retries", "2"))
    sent = sim.stats()["requests"]  # chat requests: the fallback's, every attempt
    assert sent == n * 3, sent  # the bare attempt and 2 retries each
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["usage"]["unanswered_requests"] == sent
    assert abs(manifest["cost_usd"] - sent * ONLINE_RESERVATION) < 1e-9, manifest["cost_usd"]
    # The journal says so too: a rerun (nothing left to ask) replays the same spending.
    assert main(_args(prompt, out, sim, "--max-retries", "2")) == 0
    assert sim.stats()["requests"] == sent
    again = json.loads((out / "manifest.json").read_text())
    assert abs(again["cost_usd"] - sent * ONLINE_RESERVATION) < 1e-9, again["cost_usd"]
    assert again["usage"]["unanswered_requests"] == sent
