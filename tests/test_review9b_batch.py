"""Session 9's hostile review of the batch run's budget with `--batch-fallback online` (the fallback
checked against --max-usd, its requests in flight at the list price, a collected batch's reservation
released before its fallbacks leave). Real HTTP against the simulator's OpenAI Batch and chat
endpoints, real `gen run` runs.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import all_task_ids, batch_recipe, ids_in, rows_in

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


def test_a_held_back_fallback_of_a_left_out_result_is_sent_once_after_sigkill(
    tmp_path: Path, sim_server
) -> None:
    # One batch of 3 (at the batch price, $0.018 reserved, under $0.019): the first request is answered
    # but the provider leaves its result out (a failed request, as far as gen can tell), the other two
    # fail (the simulator's seed 2 draws them so). The two failed ones go online ($0.012 each at the list
    # price); the left-out one finds the budget held by them and waits for a later batch (logged as its
    # next request). Killed then, before the batch is marked collected, the resumed run queues that
    # request from the log, and reads the batch again: the left-out result was settled again (only the
    # results present were checked against the task's next request), so its task was asked twice,
    # online at once and in the new batch: paid twice.
    sim = sim_server(
        batch_delay_s=0.05, batch_rate_failed=0.5, seed=2, batch_results="missing", latency_ms=4000
    )
    prompt = batch_recipe(tmp_path, 3, "held")
    out = tmp_path / "o"
    log = out / "batches.jsonl"
    args = _args(prompt, out, sim, "--max-retries", "1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gen", *args, "--max-usd", "0.019"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (log.exists() and '"br"' in log.read_text() and sim.stats()["requests"] == 2):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the fallback never went online"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    assert len(sim.server.batch_custom_ids) == 3
    pending = [json.loads(line) for line in log.read_text().splitlines() if '"br"' in line]
    assert [(p["a"], p["k"]) for p in pending] == [(1, 1)]
    held = pending[0]["br"][:32]  # the left-out request's task

    sim.server.config.latency_ms = 0.0
    main([*args, "--max-usd", "1"])
    # The two fallbacks lost in flight are asked again (their reservations counted); the held-back one
    # is asked once, in a batch, as the log says, and never online.
    assert sim.stats()["requests"] == 2 + 2, sim.stats()["requests"]
    resent = [c for c in sim.server.batch_custom_ids[3:] if c.startswith(held)]
    assert resent == [f"{held}-1-1"], sim.server.batch_custom_ids


def test_a_result_left_out_of_a_batch_counts_at_its_reservation(tmp_path: Path, sim_server) -> None:
    # The provider answers every request but leaves the first result out of the results file: gen
    # treats that request as failed because it may have run and been billed. Its reservation (at the
    # batch price) must then count, as an online request's that timed out does. It was released with
    # the batch's reservation before the fallback left, uncounted, so the fallback could spend the
    # money the left-out request may already have cost.
    sim = sim_server(batch_delay_s=0.05, batch_results="missing")
    prompt = batch_recipe(tmp_path, 3, "left_out")
    out = tmp_path / "o"
    assert main(_args(prompt, out, sim)) == 0
    assert sim.stats()["requests"] == 1  # the left-out request, sent again online
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["usage"]["unanswered_requests"] == 1
    assert manifest["usage"]["unanswered_tokens"] >= MAX_TOKENS
    rows = rows_in(out)
    assert len(rows) == 3
    # Each row's tokens, at the price it was bought at: the batch's at half the list price, the
    # fallback's (the left-out task's) at the list price; the left-out request at its reservation.
    left_out = sim.server.batch_custom_ids[0][:32]
    answered = sum(
        r["completion_tokens"] * LIST_OUT / 1e6 * (1.0 if r["id"].startswith(left_out) else 0.5) for r in rows
    )
    assert abs(manifest["cost_usd"] - (answered + MAX_TOKENS * LIST_OUT / 2e6)) < 1e-9, manifest["cost_usd"]


def test_cancel_buys_nothing_online(tmp_path: Path, sim_server) -> None:
    # `--cancel` cancels the batches, commits what they answered and submits nothing. A cancelled batch
    # keeps the results of the requests it ran (OpenAI), its failed ones among them: with
    # --batch-fallback online they were sent at once through the chat API, at the list price, by the
    # very command meant to stop the spending. They wait for the next --batch run instead.
    sim = sim_server(batch_delay_s=30.0, batch_rate_failed=1.0, batch_cancel_ran=True)
    prompt = batch_recipe(tmp_path, 4, "cancel")
    out = tmp_path / "o"
    args = _args(prompt, out, sim)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gen", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while not ((out / "batches.jsonl").exists() and '"bc"' in (out / "batches.jsonl").read_text()):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "no batch was submitted"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert main([*args, "--cancel"]) == 0
    assert sim.stats()["batch_cancels"] == 1
    assert sim.stats()["requests"] == 0  # nothing bought online
    # The next run sends them (in a batch first, as a retry); every task ends once.
    sim.server.config.batch_rate_failed = 0.0
    sim.server.config.batch_delay_s = 0.0
    assert main(args) == 0
    decided = ids_in(out, "data") + ids_in(out, "rejects") + ids_in(out, "duplicates")
    assert sorted(decided) == sorted(all_task_ids(prompt))
    assert sim.stats()["requests"] == 0
