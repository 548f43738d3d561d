"""An Anthropic recipe with extended thinking and no max_tokens asks for budget + 1,024 tokens a request
(the API counts thinking within max_tokens). The budget's reservations, the limiter and `gen plan` must
count that, not the 1,024 of a request without thinking: they counted 1,024, and a run with
--max-tokens 40,000 spent 123,544 before it stopped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

BUDGET, ANSWER = 4000, 1024


def _prompt(tmp_path: Path, n: int = 40) -> Path:
    path = tmp_path / "p.toml"
    path.write_text(
        'name = "tb"\nversion = "1"\nintended_use = "research"\nsamples = 1\n'
        '[teacher]\nprovider = "anthropic"\nmodel = "gen-sim-1"\nlicense = "apache-2.0"\n'
        "max_concurrency = 32\n"
        f"[sampling]\nthinking_budget = {BUDGET}\n"
        '[messages]\nuser = "Solve problem {{ n }}."\n'
        f"[variables]\nn = {list(range(n))}\n"
    )
    return path


def _gen(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gen", *args], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )


def test_a_token_budget_counts_the_thinking_a_request_may_take(tmp_path: Path, sim_server) -> None:
    sim = sim_server(reasoning_tokens=3500, latency_ms=200)
    out = tmp_path / "o"
    args = ["run", str(_prompt(tmp_path)), "--base-url", sim.base_url, "--output", str(out), "--no-progress"]
    proc = _gen(tmp_path, *args, "--max-tokens", "40000")
    assert proc.returncode == 3, proc.stderr  # the budget stopped it
    served = sim.stats()
    assert served["prompt_tokens"] + served["completion_tokens"] <= 40_000, served
    # What the rows record is what was sent: max_tokens included.
    (shard,) = (out / "data").glob("train-*.parquet")
    sampling = json.loads(pq.read_table(shard).column("sampling")[0].as_py())
    assert sampling == {"thinking_budget": BUDGET, "max_tokens": BUDGET + ANSWER}


def test_plan_bounds_output_with_the_thinking_budget(tmp_path: Path, sim_server) -> None:
    sim = sim_server()
    args = ["plan", str(_prompt(tmp_path)), "--base-url", sim.base_url, "--output", str(tmp_path / "o")]
    proc = _gen(tmp_path, *args, "--json", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    output = json.loads(proc.stdout)["output_tokens"]
    assert output["max_per_task"] == BUDGET + ANSWER and output["bound_total"] == 40 * (BUDGET + ANSWER)


def test_without_max_tokens_a_budget_reserves_the_longest_answer_seen(tmp_path: Path, sim_server) -> None:
    # [sampling] without max_tokens leaves a request's length to the teacher (a reasoning model's trace
    # runs to thousands of tokens): each request in flight was reserved at 1,024 output tokens whatever
    # the answers took, so the requests in flight when the budget ran out passed it by ~2,500 tokens
    # each. Now the reservation is at least the longest answer the run has seen.
    sim = sim_server(reasoning="reasoning_content", reasoning_tokens=3500, latency_ms=100)
    prompt = _prompt(tmp_path)
    prompt.write_text(
        prompt.read_text()
        .replace('provider = "anthropic"', 'provider = "openai"')
        .replace("max_concurrency = 32", "max_concurrency = 8")
        .replace(f"thinking_budget = {BUDGET}\n", "")
    )
    out = tmp_path / "o"
    args = ["run", str(prompt), "--base-url", sim.base_url, "--output", str(out), "--no-progress"]
    proc = _gen(tmp_path, *args, "--max-tokens", "100000")  # 40 answers would take ~144,000
    assert proc.returncode == 3, proc.stderr
    served = sim.stats()
    # Only the first 8 requests, which leave before any answer says how long answers are, are reserved
    # at 1,024; they are answered long before the budget runs out (the old reservations: ~117,000).
    assert served["prompt_tokens"] + served["completion_tokens"] <= 100_000 + 1_000, served
