"""A batch run's online fallback (`--batch-fallback online`) is bought at the list price, not the batch
price: a resumed run that counts those requests from the journal must count them at the list price too
(the manifest's cost_usd and the --max-usd budget), as the run that bought them did.

Real HTTP against the simulator's OpenAI Batch endpoints, a real `gen run` subprocess killed with SIGKILL.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import all_task_ids, batch_recipe, ids_in, killed_with_answers

from gen.cli import main
from gen.ledger import BadEntry, Entry, journal_entries, seal

LIST = 100.0  # USD per million tokens, input and output alike: a token costs the same either way


def _args(prompt: Path, out: Path, sim) -> list[str]:
    # gen-sim-* has a batch_discount of 0.5 in the price table: the flags give its list price.
    return [
        "run", str(prompt), "--provider", "openai", "--base-url", sim.base_url, "--output", str(out),
        "--no-progress", "--batch", "--batch-poll", "0.05", "--batch-fallback", "online",
        "--price-in", str(LIST), "--price-out", str(LIST),
    ]  # fmt: skip


def _list_cost(manifest: dict) -> float:
    """What the manifest's usage costs at the list price: every answered token, and every reservation
    of a request that was in flight when a run died (priced as the budget prices them)."""
    u = manifest["usage"]
    return (u["prompt_tokens"] + u["completion_tokens"] + u["unanswered_tokens"]) * LIST / 1e6


def test_uninterrupted_run_prices_online_fallback_at_list_price(tmp_path: Path, sim_server) -> None:
    # Every request fails in its batch and is answered online: the whole run is at the list price.
    sim = sim_server(batch_delay_s=0.05, batch_rate_failed=1.0)
    prompt = batch_recipe(tmp_path, 20, "fallback")
    out = tmp_path / "o"
    assert main(_args(prompt, out, sim)) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["runs"][-1]["batch"]["retried_online"] == 20 == sim.stats()["requests"]
    assert manifest["usage"]["unanswered_tokens"] == 0
    assert manifest["cost_usd"] == pytest.approx(_list_cost(manifest), rel=1e-6)


def test_online_fallback_failed_after_billing_is_charged_at_list_price(tmp_path: Path, sim_server) -> None:
    # Every request fails in its batch, then online with a malformed reply (billed, maybe): each is
    # rejected with its reservation spent, bought online.
    sim = sim_server(batch_delay_s=0.05, batch_rate_failed=1.0, rate_malformed=1.0)
    prompt = batch_recipe(tmp_path, 10, "fallback")
    out = tmp_path / "o"
    assert main([*_args(prompt, out, sim), "--max-retries", "1"]) == 1  # 1: kept nothing
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(ids_in(out, "rejects")) == 10 and manifest["usage"]["unanswered_tokens"] > 0
    assert manifest["cost_usd"] == pytest.approx(_list_cost(manifest), rel=1e-6)


def killed_after_8_answers(argv: list[str], out: Path) -> Path:
    """`gen ARGV` in a child, SIGKILLed once its journal holds 8 answers: that segment."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gen", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return killed_with_answers(proc, out, 8)


def test_resumed_run_counts_journaled_online_answers_at_list_price(tmp_path: Path, sim_server) -> None:
    # Every request fails in its batch and goes online, slowly enough that the run is killed with some
    # online answers journaled and others in flight (their reservations journaled).
    sim = sim_server(batch_delay_s=0.05, batch_rate_failed=1.0, latency_ms=100, latency_jitter_ms=900)
    n = 40
    prompt = batch_recipe(tmp_path, n, "fallback")
    out = tmp_path / "o"
    segment = killed_after_8_answers(_args(prompt, out, sim), out)
    journaled = segment.read_bytes()
    assert b'"r":{' in journaled and b'"q":' in journaled
    sim.server.config.latency_ms = sim.server.config.latency_jitter_ms = 0.0
    assert main(_args(prompt, out, sim)) == 0
    ids = ids_in(out, "data") + ids_in(out, "rejects") + ids_in(out, "duplicates")
    assert sorted(ids) == sorted(all_task_ids(prompt))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["usage"]["unanswered_tokens"] > 0  # online requests were in flight at the kill
    # Every answer (and every reservation) was bought online: none at the batch's half price.
    assert manifest["cost_usd"] == pytest.approx(_list_cost(manifest), rel=1e-6)


def test_online_mark_is_read_and_entries_without_it_are_as_before(tmp_path: Path) -> None:
    """The journal's `"o"` mark: 1 on an entry a batch run bought online; absent (every entry an older
    gen wrote, and every other entry) means the run's price, as before; anything else is a bad entry."""
    tid = "ab" * 16
    row = {"id": tid, "output": "x"}
    folder = tmp_path / "journal"
    folder.mkdir()
    (folder / "r-00000.jsonl").write_bytes(
        seal({"q": tid, "e": [10, 120]})
        + seal({"q": tid, "e": [10, 120], "o": 1})
        + seal({"s": "rejects", "r": row, "u": [10, 50], "o": 1})
        + seal({"s": "rejects", "r": row, "u": [10, 50]})
        + seal({"s": "rejects", "r": row, "u": [10, 50], "o": 2})
        + seal({"s": "rejects", "r": row, "u": [10, 50], "o": True})
    )
    entries = list(journal_entries(tmp_path))
    assert [e.online for e in entries[:4] if isinstance(e, Entry)] == [False, True, True, False]
    assert [isinstance(e, BadEntry) for e in entries] == [False] * 4 + [True] * 2
