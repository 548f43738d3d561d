"""Batch mode (issue 15, item 1): `gen run --batch` through the simulator's OpenAI Batch and Anthropic
Message Batches endpoints, real HTTP on loopback, real subprocesses killed with SIGKILL.

The figure that matters is the simulator's: every request of every batch it accepted, by custom_id.
No custom_id twice means no request was paid for twice; one (attempt 1, retry 0) per task means every
task was asked; the rest are re-asks and retries of requests that failed or expired.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from helpers import all_task_ids, batch_recipe, ids_in

from gen import RunOptions, run
from gen.cli import main

TIMEOUT = 60


def _args(prompt: Path, out: Path, sim, provider: str = "openai", *extra: str) -> list[str]:
    return [
        "run", str(prompt), "--provider", provider, "--base-url", sim.base_url, "--output", str(out),
        "--no-progress", "--batch", "--batch-poll", "0.05", *extra,
    ]  # fmt: skip


def _gen(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "gen", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait(cond, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"gen ended before {what}: {proc.communicate()[1]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _logged(out: Path, kind: bytes) -> bool:
    try:
        return kind in (out / "batches.jsonl").read_bytes()
    except FileNotFoundError:
        return False


def _check_outcome(prompt: Path, out: Path, sim) -> list[str]:
    """Every task ends once as a row, reject or duplicate; the simulator was sent each request once:
    one first request per task, and every other one a re-ask or a retry."""
    ids = ids_in(out, "data") + ids_in(out, "rejects") + ids_in(out, "duplicates")
    assert Counter(ids).most_common(1)[0][1] == 1
    assert set(ids) == all_task_ids(prompt)
    sent = sim.server.batch_custom_ids
    assert len(sent) == len(set(sent)), "a request was submitted (and paid for) twice"
    firsts = [c for c in sent if c.endswith("-1-0")]
    assert len(firsts) == len(all_task_ids(prompt))
    assert not (out / "batches.jsonl").exists()  # everything collected: the log is gone
    usage = json.loads((out / "manifest.json").read_text())["usage"]
    served = sim.stats()
    # What the simulator billed is what the manifest counts, across the kills too.
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (
        served["prompt_tokens"],
        served["completion_tokens"],
    )
    return sent


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_batch_run_ends_every_task_and_sends_each_request_once(tmp_path: Path, sim_server, provider) -> None:
    sim = sim_server(batch_delay_s=0.1, rate_invalid_json=0.2, batch_rate_expired=0.1, batch_rate_failed=0.05)
    prompt = batch_recipe(tmp_path, 120)
    out = tmp_path / "o"
    assert main(_args(prompt, out, sim, provider, "--batch-size", "50")) == 0
    sent = _check_outcome(prompt, out, sim)
    manifest = json.loads((out / "manifest.json").read_text())
    stats = manifest["runs"][-1]
    batch = stats["batch"]
    # Requests sent = tasks + re-asks + retries of failed or expired ones, each counted in the manifest.
    assert len(sent) == 120 + stats["repairs"] + batch["retried_in_batch"]
    assert batch["expired"] > 0 and batch["failed"] > 0 and stats["repairs"] > 0
    assert batch["batches"] == sim.stats()["batches"] >= 3  # 50 a batch, then follow-up batches
    assert sim.stats()["requests"] == 0  # nothing went through the chat endpoint
    assert manifest["usage"]["prompt_tokens"] == sim.stats()["prompt_tokens"]


@pytest.mark.parametrize("point", ["upload", "created", "polling", "download"])
def test_sigkill_at_each_point_resumes_without_paying_twice(tmp_path: Path, sim_server, point) -> None:
    hold = {"upload": "upload", "download": "download"}.get(point)
    sim = sim_server(batch_delay_s=0.5, rate_invalid_json=0.2, batch_hold=hold)
    prompt = batch_recipe(tmp_path, 60)
    out = tmp_path / "o"
    args = _args(prompt, out, sim, "openai", "--batch-size", "25")
    proc = _gen(args)
    if hold is not None:
        _wait(lambda: sim.stats()["batch_held"] == 1, f"gen to reach the {point}", proc)
    elif point == "created":
        _wait(lambda: _logged(out, b'"bc"'), "a batch id in the log", proc)
    else:
        _wait(lambda: sim.stats()["batch_polls"] >= 3, "polls", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert main(args) == 0
    _check_outcome(prompt, out, sim)
    if point in ("created", "polling", "download"):
        assert sim.stats()["batch_requests"] >= 25  # the batch the killed run created was collected


def test_three_kills_and_resume_send_each_request_once(tmp_path: Path, sim_server) -> None:
    sim = sim_server(batch_delay_s=0.3, rate_invalid_json=0.25, batch_rate_expired=0.05)
    # Enough tasks that each killed run has batches of its own to submit however far the one before it
    # got between its second batch and the kill (a fast start-up once left the third run 25 tasks).
    prompt = batch_recipe(tmp_path, 300)
    out = tmp_path / "o"
    args = _args(prompt, out, sim, "openai", "--batch-size", "20", "--shard-rows", "15")
    for _ in range(3):
        proc = _gen(args)
        submitted = sim.stats()["batches"]
        _wait(lambda s=submitted: sim.stats()["batches"] >= s + 2, "batches", proc)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    assert main(args) == 0
    sent = _check_outcome(prompt, out, sim)
    assert len(sent) > 300  # re-asks (and retries) on top of one request per task


def test_anthropic_path_is_resumed_too(tmp_path: Path, sim_server) -> None:
    sim = sim_server(batch_delay_s=0.5, rate_invalid_json=0.2)
    prompt = batch_recipe(tmp_path, 40)
    out = tmp_path / "o"
    args = _args(prompt, out, sim, "anthropic", "--batch-size", "15")
    proc = _gen(args)
    _wait(lambda: _logged(out, b'"bc"'), "a batch id in the log", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert main(args) == 0
    _check_outcome(prompt, out, sim)


def test_ctrl_c_leaves_batches_running_then_cancel_and_collect(tmp_path: Path, sim_server) -> None:
    sim = sim_server(batch_delay_s=30.0)
    prompt = batch_recipe(tmp_path, 30)
    out = tmp_path / "o"
    args = _args(prompt, out, sim, "openai", "--batch-size", "10")
    proc = _gen(args)
    _wait(lambda: sim.stats()["batches"] == 3, "three batches", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 130
    assert "3 batch(es) still running at the provider" in err
    # The command that collects them, with the teacher flags the run was given.
    assert f"--output {out} --provider openai --base-url {sim.base_url} --batch`" in err
    assert sim.stats()["batch_cancels"] == 0
    # An online run would ask their tasks again: refused, with the command to use.
    code = main([a for a in args if a not in ("--batch", "--batch-poll", "0.05")])
    assert code == 2
    # Cancel them: nothing they had not run is paid; the tasks go back to the pool.
    assert main([*args, "--cancel"]) == 0
    assert sim.stats()["batch_cancels"] == 3
    sim.server.config.batch_delay_s = 0.0
    assert main(args) == 0
    ids = ids_in(out, "data") + ids_in(out, "rejects") + ids_in(out, "duplicates")
    assert set(ids) == all_task_ids(prompt) and len(ids) == 30
    assert sim.stats()["batch_requests"] == 60  # 30 cancelled unrun, 30 sent again


def test_failed_requests_fall_back_online(tmp_path: Path, sim_server) -> None:
    sim = sim_server(batch_delay_s=0.05, batch_rate_failed=0.3)
    prompt = batch_recipe(tmp_path, 60)
    out = tmp_path / "o"
    assert main(_args(prompt, out, sim, "openai", "--batch-fallback", "online")) == 0
    stats = json.loads((out / "manifest.json").read_text())["runs"][-1]
    assert stats["batch"]["failed"] > 0
    assert stats["batch"]["retried_online"] == stats["batch"]["failed"] == sim.stats()["requests"]
    assert stats["batch"]["retried_in_batch"] == 0
    assert len(set(ids_in(out, "data") + ids_in(out, "rejects"))) == 60


def test_budget_counts_at_the_batch_price_and_stops_submitting(tmp_path: Path, sim_server) -> None:
    sim = sim_server()
    prompt = batch_recipe(tmp_path, 100)
    out = tmp_path / "o"
    price = ["--price-in", "100", "--price-out", "100"]  # USD per million tokens, list price
    # About 20 requests of ~30 prompt and ~120 reserved completion tokens a batch: ~$0.15 at half price.
    code = main(_args(prompt, out, sim, "openai", "--batch-size", "20", "--max-usd", "0.4", *price))
    assert code == 3
    manifest = json.loads((out / "manifest.json").read_text())
    usage = manifest["usage"]
    half = (usage["prompt_tokens"] + usage["completion_tokens"]) * 100 / 1e6 * 0.5
    assert manifest["cost_usd"] == pytest.approx(half, rel=1e-6)
    assert manifest["cost_usd"] <= 0.4
    assert sim.stats()["batches"] < 5  # it stopped submitting before every task was sent


def test_bad_input_one_line_each(tmp_path: Path, sim_server, capsys) -> None:
    prompt = batch_recipe(tmp_path, 5)
    code = main(["run", str(prompt), "--provider", "vllm", "--base-url", "http://127.0.0.1:9/v1", "--batch"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--batch" in err and "no batch API" in err
    assert main(["run", str(prompt), "--cancel"]) == 2
    assert "--cancel" in capsys.readouterr().err


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_batch_refused_as_a_whole_loses_nothing(tmp_path: Path, sim_server, capsys, provider) -> None:
    sim = sim_server(batch_reject="input file too large (simulated)")
    prompt = batch_recipe(tmp_path, 20)
    out = tmp_path / "o"
    args = _args(prompt, out, sim, provider)
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert [line for line in err if "refused" in line] == [err[-1]]
    assert "input file too large (simulated)" in err[-1]
    sim.server.config.batch_reject = None
    assert main(args) == 0
    _check_outcome(prompt, out, sim)


def test_output_holding_batches_of_another_recipe(tmp_path: Path, sim_server, capsys) -> None:
    sim = sim_server(batch_delay_s=30.0)
    prompt = batch_recipe(tmp_path, 10)
    out = tmp_path / "o"
    proc = _gen(_args(prompt, out, sim))
    _wait(lambda: _logged(out, b'"bc"'), "a batch id in the log", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    other = batch_recipe(tmp_path, 10, name="other", user="Describe item {{ n }}.")
    capsys.readouterr()
    assert main(_args(other, out, sim)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "another recipe" in err and str(out) in err
    assert sim.stats()["batches"] == 1


def test_python_api_batch_option(tmp_path: Path, sim_server) -> None:
    sim = sim_server(batch_delay_s=0.05)
    prompt = batch_recipe(tmp_path, 10)
    result = run(
        prompt,
        RunOptions(
            base_url=sim.base_url, output=tmp_path / "o", progress=False, batch=True, batch_poll_s=0.05
        ),
    )
    assert result.status == "complete" and result.stats.rows + result.stats.rejects == 10


def test_sigkill_while_collecting_reads_the_batch_again_and_sends_nothing_twice(
    tmp_path: Path, sim_server
) -> None:
    # One large batch: judging its results takes long enough to be killed halfway, with some answers
    # and re-asks journaled and the batch not yet marked collected.
    sim = sim_server(batch_delay_s=0.2, rate_invalid_json=0.3)
    prompt = batch_recipe(tmp_path, 2000)
    out = tmp_path / "o"
    args = _args(prompt, out, sim, "openai", "--shard-rows", "50")  # checkpoints while collecting
    proc = _gen(args)
    _wait(lambda: any((out / "data").glob("*.parquet")), "a first shard", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    log = (out / "batches.jsonl").read_bytes()
    assert b'"br"' in log and b'"bd"' not in log  # killed halfway through collecting
    assert main(args) == 0
    _check_outcome(prompt, out, sim)


def test_polling_respects_the_rate_limit(tmp_path: Path, sim_server) -> None:
    # Two polls a second allowed; gen asks every 10 ms at first: the 429s' Retry-After paces it.
    sim = sim_server(batch_delay_s=1.5, rpm=120, rpm_window_s=1.0)
    prompt = batch_recipe(tmp_path, 20)
    out = tmp_path / "o"
    args = _args(prompt, out, sim, "openai", "--batch-size", "5")
    args[args.index("--batch-poll") + 1] = "0.01"
    assert main(args) == 0
    stats = json.loads((out / "manifest.json").read_text())["runs"][-1]
    assert sim.stats()["rate_limited"] > 0
    assert stats["throttled"] == sim.stats()["rate_limited"]  # each 429 waited for and asked again
    _check_outcome(prompt, out, sim)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_sigkill_after_the_provider_accepted_but_before_the_id_was_logged(
    tmp_path: Path, sim_server, provider
) -> None:
    # The batch is made, but its creation reply never arrives: the log has its requests, not its id.
    # OpenAI's is found again by its metadata, Anthropic's by its size and time; neither is sent again.
    sim = sim_server(batch_delay_s=0.2, batch_hold="accepted")
    prompt = batch_recipe(tmp_path, 30)
    out = tmp_path / "o"
    args = _args(prompt, out, sim, provider, "--batch-size", "10")
    proc = _gen(args)
    _wait(lambda: sim.stats()["batch_held"] == 1, "the batch to be accepted", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert b'"bc"' not in (out / "batches.jsonl").read_bytes()
    assert sim.stats()["batches"] == 1
    assert main(args) == 0
    _check_outcome(prompt, out, sim)


def test_offline_with_the_launched_simulator_and_its_sim_table(tmp_path: Path, capsys) -> None:
    from gen.audit import audit

    prompt = batch_recipe(tmp_path, 30)
    text = prompt.read_text().replace('provider = "openai"', 'provider = "sim"')
    prompt.write_text(text + "[sim]\nbatch_delay_s = 0.1\nbatch_rate_expired = 0.2\n")
    out = tmp_path / "o"
    assert (
        main(["run", str(prompt), "--output", str(out), "--no-progress", "--batch", "--batch-poll", "0.05"])
        == 0
    )
    stats = json.loads((out / "manifest.json").read_text())["runs"][-1]
    assert stats["batch"]["expired"] > 0 and stats["rows"] + stats["rejects"] + stats["duplicates"] == 30
    assert audit(out).clean
    prompt.write_text(text + '[sim]\nbatch_hold = "nowhere"\n')
    capsys.readouterr()
    assert main(["run", str(prompt), "--output", str(tmp_path / "o2"), "--batch"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "[sim]" in err and "batch_hold" in err
