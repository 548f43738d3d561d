"""Requests the teacher may have billed without an answer gen could keep count against the budget, and
no request leaves once the requests already out could spend it (found by a hostile review)."""

from __future__ import annotations

import json
from pathlib import Path

from test_budget_crash import _recipe

from gen import RunOptions, run


def test_requests_that_time_out_are_charged_at_their_reservation(tmp_path: Path, sim_server) -> None:
    # The teacher works on every request (and would bill it) but answers after gen gave up.
    prompt = _recipe(tmp_path, n=3)
    sim = sim_server(latency_ms=800)
    out = tmp_path / "o"
    opts = RunOptions(base_url=sim.base_url, output=out, progress=False, request_timeout_s=0.2, max_retries=1)
    result = run(prompt, opts)
    assert result.stats.rejects == 3 and sim.stats()["requests"] == 6
    usage = json.loads((out / "manifest.json").read_text())["usage"]
    assert usage["unanswered_requests"] == 6 and usage["unanswered_tokens"] > 6 * 120


def test_no_request_leaves_while_those_out_could_spend_the_budget(tmp_path: Path, sim_server) -> None:
    # Before any answer, the requests in flight are counted at their reservation (prompt + max_tokens):
    # with a budget smaller than one request, the first request is the only one.
    prompt = _recipe(tmp_path, n=40)
    sim = sim_server(latency_ms=100)
    out = tmp_path / "o"
    result = run(prompt, RunOptions(base_url=sim.base_url, output=out, progress=False, max_tokens=50))
    assert result.status == "budget" and sim.stats()["requests"] == 1
    spent = json.loads((out / "manifest.json").read_text())["usage"]["total_tokens"]
    assert f"{spent:,} of 50 tokens" in result.message  # the figure at the end, not when it stopped
