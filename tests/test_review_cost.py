"""A hostile review of the cost features (issue 15: batch APIs, prompt caching, `gen plan`, budgets) as
they sit beside verification, reasoning traces and eval: each test is a defect found and fixed, run
against the simulator over real HTTP, in real subprocesses."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import rows_in

from gen import RunOptions, run

TIMEOUT = 120


def _gen(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gen", *args], capture_output=True, text=True, timeout=TIMEOUT
    )


def _verify_recipe(tmp_path: Path, verify: str) -> Path:
    with (tmp_path / "problems.jsonl").open("w") as f:
        for i in range(6):
            f.write(json.dumps({"pid": f"P{i:03d}", "q": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n")
    path = tmp_path / "vmath.toml"
    path.write_text(
        'name = "vmath"\nversion = "1"\nintended_use = "research"\nmax_attempts = 1\n'
        '[teacher]\nprovider = "openai"\nmodel = "gen-sim-1"\nlicense = "apache-2.0"\n'
        '[messages]\nuser = "{{ pid }}: {{ q }}"\n[seed]\npath = "problems.jsonl"\n'
        f"[verify]\n{verify}\n"
    )
    return path


def test_batch_with_rejection_sampling_is_refused_before_any_request(tmp_path: Path, sim_server) -> None:
    """[verify] max_samples asks an input again until its answers pass; a batch run cannot (it sends
    each task once, as a batch line): it must say so, not quietly make one try per input."""
    sim = sim_server(batch_delay_s=0.05)
    prompt = _verify_recipe(tmp_path, 'reference = "{{ answer }}"\nmax_samples = 3')
    proc = _gen(
        "run", str(prompt), "--provider", "openai", "--base-url", sim.base_url, "--output",
        str(tmp_path / "o"), "--no-progress", "--batch", "--batch-poll", "0.05",
    )  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "max_samples" in lines[0] and "--batch" in lines[0], lines[0]
    assert sim.stats()["batches"] == 0 and sim.stats()["batch_uploads"] == 0


KEY = "sk-live-" + "Qx7" * 12


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_key_echoed_in_a_batch_requests_error_never_reaches_disk(
    tmp_path: Path, sim_server, provider: str
) -> None:
    """A hostile provider puts the request headers (the API key) in a failed batch request's message:
    with no retries the task is a teacher_error reject, whose error must hold the message redacted."""
    sim = sim_server(api_key=KEY, echo_headers=True, batch_rate_failed=1.0, batch_delay_s=0.05)
    prompt = tmp_path / "p.toml"
    prompt.write_text(
        'name = "echo"\nversion = "1"\nintended_use = "research"\n'
        '[teacher]\nprovider = "openai"\nmodel = "gen-sim-1"\nlicense = "apache-2.0"\n'
        '[messages]\nuser = "Say {{ n }}."\n[variables]\nn = [1, 2, 3, 4]\n'
    )
    out = tmp_path / "o"
    proc = subprocess.run(
        [
            sys.executable, "-m", "gen", "run", str(prompt), "--provider", provider, "--base-url",
            sim.base_url, "--api-key-env", "GEN_SECRET_KEY", "--output", str(out), "--no-progress",
            "--batch", "--batch-poll", "0.05", "--max-retries", "0",
        ],
        capture_output=True, text=True, timeout=TIMEOUT, env={**os.environ, "GEN_SECRET_KEY": KEY},
    )  # fmt: skip
    rejects = rows_in(out, "rejects")
    assert len(rejects) == 4, proc.stderr
    assert all("request headers" in r["error"] and "[REDACTED]" in r["error"] for r in rejects)
    written = "\n".join(json.dumps(r, default=str) for r in rejects) + "".join(
        p.read_text("utf-8", "replace") for p in out.rglob("*") if p.is_file() and p.suffix != ".parquet"
    )
    assert KEY not in written and KEY not in proc.stderr + proc.stdout
    assert "Qx7Qx7" not in written + proc.stderr


def _cached_recipe(tmp_path: Path, n: int) -> Path:
    system = "You follow the house style guide to the letter. " * 120  # ~1,400 tokens shared
    path = tmp_path / "cached.toml"
    path.write_text(
        'name = "cached"\nversion = "1"\nintended_use = "research"\n'
        '[teacher]\nprovider = "anthropic"\nmodel = "claude-sonnet-4-5"\nlicense = "mit"\n'
        "[sampling]\nmax_tokens = 100\n"
        f'[messages]\nsystem = "{system}"\nuser = "Explain item {{{{ n }}}}."\n'
        f"[variables]\nn = {list(range(n))}\n"
    )
    return path


def _plan_json(*argv: str) -> dict:
    proc = _gen("plan", *argv, "--json", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_plan_with_batch_discounts_the_batch_price_once(tmp_path: Path, sim_server) -> None:
    """`gen plan ... --batch` (the flags of the batch run it plans) must price online at the list price
    and the batch at the discount once: the run's batch price was discounted a second time."""
    sim = sim_server(model="claude-sonnet-4-5")
    prompt = _cached_recipe(tmp_path, 40)
    flags = [str(prompt), "--base-url", sim.base_url, "--output", str(tmp_path / "o")]
    flags += ["--acknowledge-licence-conflict"]
    online = _plan_json(*flags)
    batch = _plan_json(*flags, "--batch")
    assert online["cost_usd"]["online"] > 0
    assert batch["cost_usd"] == online["cost_usd"]
    assert batch["price"] == online["price"]  # the list prices, with the share the batch API bills
    assert sim.stats()["requests"] == 0 and sim.stats()["batches"] == 0


def test_batch_budget_reserves_completion_tokens_at_the_output_price(tmp_path: Path, sim_server) -> None:
    """A batch reserves its requests' tokens against --max-usd before it is sent, and pays for them
    whatever follows: reserved completion tokens priced at the (cheap) input rate let the run submit
    every task and spend many times its budget when output costs more than input, as it usually does."""
    sim = sim_server(batch_delay_s=0.05)
    prompt = tmp_path / "p.toml"
    prompt.write_text(
        'name = "b"\nversion = "1"\nintended_use = "research"\n'
        '[teacher]\nprovider = "openai"\nmodel = "gen-sim-1"\nlicense = "apache-2.0"\n'
        "[sampling]\nmax_tokens = 100\n"
        f'[messages]\nuser = "Explain item {{{{ n }}}}."\n[variables]\nn = {list(range(200))}\n'
    )
    out = tmp_path / "o"
    proc = _gen(
        "run", str(prompt), "--provider", "openai", "--base-url", sim.base_url, "--output", str(out),
        "--no-progress", "--batch", "--batch-poll", "0.05", "--batch-size", "20",
        "--price-in", "1", "--price-out", "400", "--max-usd", "0.5",
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr  # stopped by the budget
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["cost_usd"] <= 0.5, manifest["cost_usd"]
    assert sim.stats()["batch_requests"] < 200


def _plain_recipe(tmp_path: Path, n: int, *, schema: bool = False, extra: str = "") -> Path:
    prompt = tmp_path / "plain.toml"
    if schema:
        doc = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
        (tmp_path / "answer.json").write_text(json.dumps(doc))
    prompt.write_text(
        'name = "plain"\nversion = "1"\nintended_use = "research"\n'
        + ('schema = "answer.json"\n' if schema else "")
        + extra
        + '[teacher]\nprovider = "openai"\nmodel = "gen-sim-1"\nlicense = "apache-2.0"\n'
        f'[messages]\nuser = "Explain item {{{{ n }}}}."\n[variables]\nn = {list(range(n))}\n'
    )
    return prompt


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("fault", ["missing", "duplicate", "foreign", "garbled"])
def test_a_hostile_results_file_never_gets_a_request_paid_twice(
    tmp_path: Path, sim_server, provider: str, fault: str
) -> None:
    """Results with a request left out, every result twice, one for a custom_id gen never sent, or lines
    that are not JSON: every task ends once, and no request is submitted twice. A request the provider
    left out of an ended batch ran (and was billed) as far as gen can tell: it is a failed request,
    retried up to --max-retries like one, never resubmitted as if it had not been sent."""
    sim = sim_server(batch_delay_s=0.05, batch_results=fault)
    prompt = _plain_recipe(tmp_path, 12)
    out = tmp_path / "o"
    proc = subprocess.run(
        [
            sys.executable, "-m", "gen", "run", str(prompt), "--provider", provider, "--base-url",
            sim.base_url, "--output", str(out), "--no-progress", "--batch", "--batch-poll", "0.05",
            "--max-retries", "2",
        ],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr
    sent = sim.server.batch_custom_ids
    assert len(sent) == len(set(sent)), "a request was submitted (and paid for) twice"
    rows, rejects = rows_in(out), rows_in(out, "rejects")
    ids = [r["id"] for r in rows + rejects + rows_in(out, "duplicates")]
    assert len(ids) == len(set(ids)) == 12
    if fault == "missing":  # each batch loses its first result: that task's retries are lost too
        assert len(rejects) == 1 and rejects[0]["reason"] == "teacher_error", rejects
        assert "not in the batch's results" in rejects[0]["error"]
        assert len(sent) == 12 + 2  # the first request and its two retries
    else:
        assert not rejects and len(sent) == 12


def _wait_for(cond, what: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"gen ended before {what}: {proc.communicate()[1]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_online_fallback_after_a_reask_counts_its_earlier_usage_once_after_sigkill(
    tmp_path: Path, sim_server
) -> None:
    """A re-ask journals what the answer before it cost; its online fallback (--batch-fallback online)
    journaled that usage again with its own reservation, so a run killed with it in flight counted the
    earlier answer twice on resume (usage, and --max-usd)."""
    sim = sim_server(batch_delay_s=0.3, rate_invalid_json=1.0, latency_ms=3000)
    prompt = _plain_recipe(tmp_path, 6, schema=True)
    out = tmp_path / "o"
    args = [
        "run", str(prompt), "--provider", "openai", "--base-url", sim.base_url, "--output", str(out),
        "--no-progress", "--batch", "--batch-poll", "0.05", "--batch-fallback", "online",
    ]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "gen", *args], stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: sim.stats()["batches"] >= 1, "the first batch", proc)
        first = sim.stats()["prompt_tokens"]  # every first answer is invalid: each task is re-asked
        sim.server.config.batch_rate_failed = 1.0  # the re-asks' batch fails: they go online
        _wait_for(lambda: sim.stats()["requests"] >= 6, "the online fallbacks", proc)
        proc.kill()  # SIGKILL, with the online requests in flight
    finally:
        proc.kill()
        proc.communicate()
    time.sleep(3.5)  # the simulator answers (and counts) the abandoned requests all the same
    abandoned = sim.stats()["prompt_tokens"] - first
    sim.server.config.latency_ms = 0
    proc2 = subprocess.run([sys.executable, "-m", "gen", *args], capture_output=True, text=True, timeout=60)
    assert proc2.returncode in (0, 1), proc2.stderr  # every answer stays invalid: 1, nothing kept
    assert len(rows_in(out) + rows_in(out, "rejects")) == 6
    usage = json.loads((out / "manifest.json").read_text())["usage"]
    # Answered requests: the first answers and the resumed run's online answers; the abandoned ones
    # (the same messages) are the manifest's unanswered requests, not its prompt tokens.
    assert usage["prompt_tokens"] == sim.stats()["prompt_tokens"] - abandoned


@pytest.mark.parametrize("mode", ["reasoning_content", "think-tags"])
def test_a_batch_run_counts_and_keeps_reasoning_as_an_online_run_does(
    tmp_path: Path, sim_server, mode: str
) -> None:
    """Traces that come back in batch results: split from the answer (think-tags), kept in the row,
    and counted in the manifest's reasoning_tokens, as online."""
    figures = {}
    for batch in (False, True):
        sim = sim_server(batch_delay_s=0.05, reasoning=mode, reasoning_tokens=50)
        out = tmp_path / ("b" if batch else "o")
        proc = _gen(
            "run", str(_plain_recipe(tmp_path, 8)), "--provider", "openai", "--base-url", sim.base_url,
            "--output", str(out), "--no-progress", *(["--batch", "--batch-poll", "0.05"] if batch else []),
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        rows = rows_in(out)
        assert len(rows) == 8 and all(r["reasoning"] for r in rows)
        assert not any("<think>" in r["response"] for r in rows)
        figures[batch] = json.loads((out / "manifest.json").read_text())["runs"][-1]["reasoning_tokens"]
    assert figures[False] > 0
    assert figures[True] == figures[False]


def test_a_batch_reject_keeps_its_trace_as_an_online_reject_does(tmp_path: Path, sim_server) -> None:
    """An answer that fails validation at its last attempt is a reject holding the raw answer and, as
    online, the trace that came with it."""
    kept = {}
    for batch in (False, True):
        sim = sim_server(batch_delay_s=0.05, reasoning="reasoning_content", rate_invalid_json=1.0)
        out = tmp_path / ("b" if batch else "o")
        proc = _gen(
            "run", str(_plain_recipe(tmp_path, 5, schema=True, extra="max_attempts = 1\n")), "--provider",
            "openai", "--base-url", sim.base_url, "--output", str(out), "--no-progress",
            *(["--batch", "--batch-poll", "0.05"] if batch else []),
        )  # fmt: skip
        rejects = rows_in(out, "rejects")
        assert len(rejects) == 5, proc.stderr
        kept[batch] = [bool(r["reasoning"]) for r in rejects]
        assert not any(r["reference"] for r in rejects)  # no [verify]: the trace is no reference
    assert all(kept[False])
    assert kept[True] == kept[False]


def test_prefix_grouping_keeps_an_inputs_samples_together_for_rejection_sampling(tmp_path: Path) -> None:
    """Prompt-cache dispatch (gen.prefix.grouped) reorders tasks within windows; an input whose samples
    a window boundary split came out in two places, and rejection sampling ([verify] max_samples), which
    reads an input's samples as consecutive tasks, then made no further tries for it. The tries made
    must not depend on the dispatch order."""
    with (tmp_path / "problems.jsonl").open("w") as f:
        for i in range(8):
            f.write(json.dumps({"q": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n")
    prompt = tmp_path / "v.toml"
    prompt.write_text(
        'name = "v"\nversion = "1"\nintended_use = "research"\nsamples = 2\nmax_attempts = 1\n'
        '[teacher]\nprovider = "sim"\nmodel = "gen-sim-1"\nlicense = "apache-2.0"\n'
        '[messages]\nsystem = "Answer in the {{ style }} style."\nuser = "{{ q }}"\n'
        '[variables]\nstyle = ["terse", "plain"]\n[seed]\npath = "problems.jsonl"\n'
        '[verify]\nreference = "{{ answer }}"\nmax_samples = 4\n'
        '[sim]\nanswer_from = "answer"\nwrong_share = 0.5\n'
    )
    tried = {}
    for window in (1, 5):
        out = tmp_path / f"w{window}"
        result = run(prompt, RunOptions(output=out, progress=False, dispatch_window=window))
        assert result.status == "complete"
        tried[window] = {r["id"] for r in rows_in(out) + rows_in(out, "rejects")}
    assert len(tried[1]) > 32  # some inputs needed more tries than their 2 samples
    assert tried[5] == tried[1]


@pytest.mark.parametrize("batch", [False, True])
def test_a_reasked_rows_cached_tokens_count_every_attempt_as_its_prompt_tokens_do(
    tmp_path: Path, sim_server, batch: bool
) -> None:
    """A row's prompt_tokens sum its attempts; its cached_tokens must too (online they did; a batch
    row kept only its last attempt's), so the rows add up to the manifest's totals."""
    sim = sim_server(model="claude-sonnet-4-5", batch_delay_s=0.05, rate_invalid_json=0.4, seed=3)
    (tmp_path / "answer.json").write_text(
        json.dumps({"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]})
    )
    prompt = _cached_recipe(tmp_path, 30)
    prompt.write_text(
        prompt.read_text().replace(
            'version = "1"\n', 'version = "1"\nschema = "answer.json"\nmax_attempts = 10\n'
        )
    )
    out = tmp_path / "o"
    proc = _gen(
        "run", str(prompt), "--base-url", sim.base_url, "--output", str(out), "--no-progress",
        "--acknowledge-licence-conflict", *(["--batch", "--batch-poll", "0.05"] if batch else []),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = rows_in(out)
    assert len(rows) == 30 and not rows_in(out, "rejects")
    assert any(r["attempts"] > 1 for r in rows)
    usage = json.loads((out / "manifest.json").read_text())["usage"]
    assert usage["cached_input_tokens"] > 0
    assert sum(r["prompt_tokens"] for r in rows) == usage["prompt_tokens"]
    assert sum(r["cached_tokens"] for r in rows) == usage["cached_input_tokens"]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_batch_answer_past_the_reply_cap_is_refused_as_online(
    tmp_path: Path, sim_server, provider: str
) -> None:
    """One result line far past what its max_tokens allows (a hostile provider): online such a reply is
    refused at the reply size cap; in a batch it became a row."""
    sim = sim_server(batch_delay_s=0.05, batch_results="oversize", oversize_bytes=400_000)
    prompt = _plain_recipe(tmp_path, 12, extra="[sampling]\nmax_tokens = 400\n")
    out = tmp_path / "o"
    proc = _gen(
        "run", str(prompt), "--provider", provider, "--base-url", sim.base_url, "--output", str(out),
        "--no-progress", "--batch", "--batch-poll", "0.05", "--max-retries", "0",
    )  # fmt: skip
    rows, rejects = rows_in(out), rows_in(out, "rejects")
    assert len(rows) + len(rejects) == 12, proc.stderr
    assert max(len(r["response"]) for r in rows) < 400 * 128
    assert len(rejects) == 1 and "size cap" in rejects[0]["error"], rejects


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_key_echoed_in_batch_answers_never_reaches_disk(tmp_path: Path, sim_server, provider: str) -> None:
    """Batch answers that name the credential (as their model): secret_echo rejects, redacted, and the
    key nowhere in the output or on stderr."""
    sim = sim_server(api_key=KEY, echo_key=True, batch_delay_s=0.05)
    out = tmp_path / "o"
    proc = subprocess.run(
        [
            sys.executable, "-m", "gen", "run", str(_plain_recipe(tmp_path, 4)), "--provider", provider,
            "--base-url", sim.base_url, "--api-key-env", "GEN_SECRET_KEY", "--output", str(out),
            "--no-progress", "--batch", "--batch-poll", "0.05",
        ],
        capture_output=True, text=True, timeout=TIMEOUT, env={**os.environ, "GEN_SECRET_KEY": KEY},
    )  # fmt: skip
    rejects = rows_in(out, "rejects")
    assert len(rejects) == 4 and {r["reason"] for r in rejects} == {"secret_echo"}, proc.stderr
    written = "\n".join(json.dumps(r, default=str) for r in rejects) + "".join(
        p.read_text("utf-8", "replace") for p in out.rglob("*") if p.is_file() and p.suffix != ".parquet"
    )
    assert KEY not in written and KEY not in proc.stderr + proc.stdout
    assert "Qx7Qx7" not in written + proc.stderr


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_batch_whose_provider_reports_no_counts_is_still_collected(
    tmp_path: Path, sim_server, provider: str
) -> None:
    """The results of an ended batch are read within a size bound; bounded by the provider's request
    counts alone, a gateway that reports 0 left a large batch over the bound: never collected, its
    answers (paid for) lost on every run. gen knows how many requests it put in the batch."""
    # Answers with ~2 kB traces: 600 of them, over a megabyte (the bound's fixed allowance).
    sim = sim_server(
        batch_delay_s=0.05, batch_results="uncounted", reasoning="reasoning_content", reasoning_tokens=600
    )
    sampling = "max_tokens = 2000\n" + ("thinking_budget = 1024\n" if provider == "anthropic" else "")
    prompt = _plain_recipe(tmp_path, 600, extra=f"[sampling]\n{sampling}")
    out = tmp_path / "o"
    proc = _gen(
        "run", str(prompt), "--provider", provider, "--base-url", sim.base_url, "--output", str(out),
        "--no-progress", "--batch", "--batch-poll", "0.05", "--max-retries", "0",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = rows_in(out)
    assert len(rows) == 600 and sum(len(r["reasoning"]) + len(r["response"]) for r in rows) > 1.2e6
    assert sim.stats()["batch_requests"] == 600


def test_the_command_printed_on_ctrl_c_collects_the_batches(tmp_path: Path, sim_server) -> None:
    """Ctrl-C leaves the batches at the provider and prints the command that collects them later. Run
    verbatim, that command must reach the same teacher: the --provider and --base-url the run was
    given on the command line, not the prompt file's."""
    sim = sim_server(batch_delay_s=2.0)
    prompt = _plain_recipe(tmp_path, 10)  # its [teacher] says openai, with no base URL
    out = tmp_path / "o"
    args = [
        "run", str(prompt), "--provider", "anthropic", "--base-url", sim.base_url, "--output", str(out),
        "--no-progress", "--batch", "--batch-poll", "0.05",
    ]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "gen", *args], stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: sim.stats()["batches"] >= 1, "a batch", proc)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    command = err.split("run `", 1)[1].split("`", 1)[0]
    argv = shlex.split(command)
    assert argv[:2] == ["gen", "run"]
    again = subprocess.run(
        [sys.executable, "-m", "gen", *argv[1:], "--no-progress"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert again.returncode == 0, again.stderr
    assert len(rows_in(out)) == 10
    assert sim.stats()["batch_requests"] == 10  # collected, not sent again
