"""Spending limits across crashes: usage is journaled with every answer, and requests in flight at a
SIGKILL count against --max-tokens as reserved, so a run killed and resumed again and again still stops
at its limit (issue 11, item 2)."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import ids_in

from gen import RunOptions, run

SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "minLength": 40}, "score": {"type": "integer"}},
    "required": ["answer", "score"],
    "additionalProperties": False,
}
MAX_TOKENS = 120  # the recipe's sampling: no answer is longer, so a reservation is an upper bound
CONCURRENCY = 8


def _recipe(tmp_path: Path, n: int) -> Path:
    (tmp_path / "answer.json").write_text(json.dumps(SCHEMA))
    (tmp_path / "p.toml").write_text(
        'name = "budget"\nversion = "1"\nintended_use = "research"\nschema = "answer.json"\n'
        "eval_fraction = 0.1\n"
        f"[sampling]\nmax_tokens = {MAX_TOKENS}\n"
        '[teacher]\nprovider = "openai"\nmodel = "gen-sim-1"\nlicense = "apache-2.0"\n'
        '[messages]\nuser = "Explain item {{ n }} in detail."\n'
        f"[variables]\nn = {list(range(n))}\n"
    )
    return tmp_path / "p.toml"


def _gen(prompt: Path, out: Path, base_url: str, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "gen", "run", str(prompt), "--base-url", base_url, "--output", str(out)]
    cmd += ["--no-progress", "--max-concurrency", str(CONCURRENCY), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _answers(out: Path) -> int:
    """Answers decided so far: rows in committed shards plus answer entries in the journal."""
    try:
        committed = sum(s["rows"] for s in json.loads((out / "manifest.json").read_text())["shards"])
    except (FileNotFoundError, json.JSONDecodeError):
        committed = 0
    journaled = 0
    for segment in (out / "journal").glob("*.jsonl"):
        try:
            journaled += segment.read_bytes().count(b'"r":{')
        except FileNotFoundError:  # deleted by a checkpoint meanwhile: its rows are in the manifest now
            pass
    return committed + journaled


def _served(sim) -> int:
    stats = sim.stats()
    return stats["prompt_tokens"] + stats["completion_tokens"]


def test_sigkill_and_resume_repeatedly_never_spends_past_max_tokens(tmp_path: Path, sim_server) -> None:
    limit = 15_000  # about 270 of the 600 answers (about 55 tokens each)
    prompt = _recipe(tmp_path, n=600)
    sim = sim_server(latency_ms=20, latency_jitter_ms=10)
    out = tmp_path / "o"
    rng = random.Random(7)
    kills = 0
    code = None
    for _ in range(8):
        before = _answers(out)
        proc = _gen(prompt, out, sim.base_url, "--max-tokens", str(limit), "--shard-rows", "40")
        # About a third of the limit per run, then a kill at a random instant (checkpoints included):
        # without the journal's usage every run would start again from what the manifest last said.
        goal = before + rng.randint(70, 110)
        deadline = time.monotonic() + 60
        while _answers(out) < goal and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.003)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=60)
            kills += 1
            continue
        _, err = proc.communicate(timeout=60)
        code = proc.returncode
        break
    assert code == 3, f"the run should have stopped at its budget by itself (kills={kills}): {err}"
    assert "token budget reached" in err
    assert kills >= 2

    served = _served(sim)
    in_flight = CONCURRENCY * (MAX_TOKENS + 20)  # one request's worst case: its prompt and max_tokens
    # The teacher's own count: within the limit plus what was in flight when each run died or stopped.
    assert served <= limit + (kills + 1) * in_flight, (served, kills)
    usage = json.loads((out / "manifest.json").read_text())["usage"]
    # The manifest counts every answer that arrived, from every run, killed or not ...
    assert usage["total_tokens"] <= served <= usage["total_tokens"] + kills * in_flight
    # ... and the requests lost in flight at their reservation, an upper bound of what they cost.
    assert usage["unanswered_requests"] <= kills * CONCURRENCY
    assert served <= usage["total_tokens"] + usage["unanswered_tokens"]
    # It stopped because the limit was spent, counting what it expected its last requests in flight to use.
    assert usage["total_tokens"] + usage["unanswered_tokens"] >= limit - in_flight

    rows = ids_in(out, "data") + ids_in(out, "rejects") + ids_in(out, "duplicates")
    assert len(rows) == len(set(rows)), "an id was written twice"


def test_replayed_answers_count_in_usage_and_cost(tmp_path: Path, sim_server) -> None:
    """One kill with no checkpoint before it: every answer of the killed run is only in the journal."""
    prompt = _recipe(tmp_path, n=200)
    sim = sim_server(latency_ms=5)
    out = tmp_path / "o"
    proc = _gen(prompt, out, sim.base_url, "--shard-rows", "100000", "--price-in", "1", "--price-out", "2")
    deadline = time.monotonic() + 60
    while _answers(out) < 60 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert not ids_in(out, "data"), "no checkpoint should have happened yet"

    result = run(
        prompt,
        RunOptions(
            base_url=sim.base_url, output=out, progress=False, price_in=1.0, price_out=2.0, max_concurrency=8
        ),
    )
    assert result.status == "complete" and result.stats.replayed >= 60
    stats = sim.stats()
    manifest = json.loads((out / "manifest.json").read_text())
    usage = manifest["usage"]
    # Served but never read: only what was in flight at the kill; all the rest is in the manifest.
    assert usage["prompt_tokens"] <= stats["prompt_tokens"] <= usage["prompt_tokens"] + CONCURRENCY * 20
    assert (
        usage["completion_tokens"]
        <= stats["completion_tokens"]
        <= usage["completion_tokens"] + CONCURRENCY * MAX_TOKENS
    )
    assert usage["unanswered_requests"] <= CONCURRENCY
    expected = (usage["prompt_tokens"] * 1 + usage["completion_tokens"] * 2) / 1e6
    assert expected <= manifest["cost_usd"] <= expected + usage["unanswered_tokens"] * 2 / 1e6 + 1e-6


def test_requests_given_up_after_the_grace_period_count_at_their_reservation(
    tmp_path: Path, sim_server
) -> None:
    prompt = _recipe(tmp_path, n=50)
    sim = sim_server(latency_ms=2_000)  # nothing answers before the grace period ends
    out = tmp_path / "o"
    proc = _gen(prompt, out, sim.base_url, "--grace-period", "0.2", "--max-concurrency", "4")
    deadline = time.monotonic() + 30
    while sim.stats()["requests"] < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    manifest = json.loads((out / "manifest.json").read_text())
    usage = manifest["usage"]
    assert usage["total_tokens"] == 0
    # Each: the prompt's estimate (the simulator's own count for it, 10 tokens) and max_tokens.
    assert usage["unanswered_requests"] == 4
    assert usage["unanswered_tokens"] == 4 * (10 + MAX_TOKENS)
    assert manifest["runs"][-1]["unanswered_requests"] == 4
    assert not list((out / "journal").glob("*.jsonl")), "the reservations are in the manifest now"
