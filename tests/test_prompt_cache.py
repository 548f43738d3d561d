"""Prompt caching: the cached input tokens the teacher reports reach rows, manifest, budget and summary;
gen marks Anthropic's long shared prefix with cache_control; dispatch keeps prefix groups together.
All against the simulator, which caches as each provider does (gen.sim.cache)."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from helpers import rows_in

from gen import RunOptions, run
from gen.budget import Price, price_for
from gen.cli import main
from gen.ledger import Entry, Journal, journal_entries
from gen.pipeline import run_loop
from gen.teachers.anthropic import AnthropicMessages

SYSTEM = "You label support tickets. " + " ".join(
    f"Rule {i}: answer in the given schema." for i in range(220)
)
SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string"}},
    "required": ["label"],
    "additionalProperties": False,
}


def _prompt(tmp_path: Path, *, system: str = SYSTEM, n: int = 40, model: str = "claude-sonnet-4-5") -> Path:
    (tmp_path / "s.json").write_text(json.dumps(SCHEMA))
    (tmp_path / "p.toml").write_text(
        'name = "cache"\nversion = "1"\nintended_use = "research"\nschema = "s.json"\n'
        f'[teacher]\nprovider = "anthropic"\nmodel = "{model}"\n'
        f"[messages]\nsystem = {json.dumps(system)}\n"
        'user = "Ticket {{ n }}: my order has not arrived."\n'
        f"[variables]\nn = {list(range(n))}\n"
    )
    return tmp_path / "p.toml"


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_a_2000_token_shared_system_prompt_is_read_from_anthropic_cache_after_the_first_request(
    tmp_path: Path, sim_server, capsys
) -> None:
    assert 1900 <= len(SYSTEM) // 4 <= 2100  # the 2,000-token shared system prompt
    # With latency, as a provider: a prefix is readable once the request that wrote it is answered.
    sim = sim_server(model="claude-sonnet-4-5", latency_ms=20)
    out = tmp_path / "o"
    argv = ["run", str(_prompt(tmp_path)), "--base-url", sim.base_url, "--output", str(out), "--no-progress"]
    argv.append("--acknowledge-licence-conflict")  # a Claude model id: the review applies Anthropic's terms
    assert main(argv) == 0
    usage = _manifest(out)["usage"]
    stats = sim.stats()
    # One prefix group: its first request writes the cache, every later one reads it.
    first = usage["prompt_tokens"] // stats["ok"]
    assert usage["cache_write_tokens"] == stats["cache_write_tokens"] > 0
    assert usage["cached_input_tokens"] == stats["cached_tokens"]
    assert usage["cached_input_tokens"] / (usage["prompt_tokens"] - first) >= 0.9
    rows = rows_in(out)
    assert sum(r["cached_tokens"] for r in rows) == usage["cached_input_tokens"]
    assert all(r["cached_tokens"] < r["prompt_tokens"] for r in rows)
    # Priced at Anthropic's own rates: reads at 0.1x, the write at 1.25x the input price.
    price = price_for("claude-sonnet-4-5")
    assert price is not None and price.cached_input == 0.30 and price.cache_write == 3.75
    expected = price.cost(
        usage["prompt_tokens"],
        usage["completion_tokens"],
        usage["cached_input_tokens"],
        usage["cache_write_tokens"],
    )
    assert _manifest(out)["cost_usd"] == pytest.approx(expected, abs=1e-6)
    saved = price.saved(usage["cached_input_tokens"], usage["cache_write_tokens"])
    assert saved > 0 and usage["cache_saved_usd"] == pytest.approx(saved, abs=1e-6)
    line = capsys.readouterr().err
    share = usage["cached_input_tokens"] / usage["prompt_tokens"]
    assert f"input tokens {share:.0%} cached, saved ${saved:,.2f}" in line


def test_a_prefix_shorter_than_the_models_minimum_is_not_marked(tmp_path: Path, sim_server) -> None:
    # Haiku 4.5 caches from 4,096 tokens (gen/prices.toml): a 2,000-token system prompt is not marked,
    # and the sim, which caches only marked prefixes on this protocol, reports no cache use.
    assert price_for("claude-haiku-4-5").cache_min_tokens == 4096  # type: ignore[union-attr]
    sim = sim_server(model="claude-haiku-4-5")
    out = tmp_path / "o"
    run(
        _prompt(tmp_path, model="claude-haiku-4-5", n=8),
        RunOptions(base_url=sim.base_url, output=out, progress=False, acknowledge_licence=True),
    )
    usage = _manifest(out)["usage"]
    assert usage["cached_input_tokens"] == usage["cache_write_tokens"] == 0
    assert sim.stats()["cache_write_tokens"] == 0
    assert {r["cached_tokens"] for r in rows_in(out)} == {0}


def test_the_anthropic_body_marks_the_system_prompt_or_the_tool_when_long_enough() -> None:
    from gen.schema import Schema

    schema = Schema("s.json", "Label", SCHEMA, None)
    client = AnthropicMessages(
        "http://127.0.0.1:9", "claude-sonnet-4-5", schema=schema, cache_min_tokens=1024
    )
    sampling = {"max_tokens": 50}
    long = orjson.loads(
        client.body(
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi"}],
            seed=0,
            sampling=sampling,
        )
    )
    assert long["system"] == [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]
    assert "cache_control" not in long["tools"][0]
    short = orjson.loads(
        client.body(
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
            seed=0,
            sampling=sampling,
        )
    )
    assert short["system"] == "Be brief." and "cache_control" not in short["tools"][0]
    # No system prompt, a long tool definition: the breakpoint goes on the tool.
    big = Schema("s.json", "Label", {**SCHEMA, "description": "x" * 5000}, None)
    client = AnthropicMessages("http://127.0.0.1:9", "m", schema=big, cache_min_tokens=1024)
    body = orjson.loads(client.body([{"role": "user", "content": "hi"}], seed=0, sampling=sampling))
    assert body["tools"][0]["cache_control"] == {"type": "ephemeral"} and "system" not in body
    run_loop(client.close())


def test_openai_side_caches_prefixes_of_1024_tokens_automatically(tmp_path: Path, sim_server) -> None:
    sim = sim_server()
    out = tmp_path / "o"
    opts = RunOptions(provider="openai", model="gen-sim-1", base_url=sim.base_url, output=out, progress=False)
    opts.license = "apache-2.0"
    run(_prompt(tmp_path, n=30), opts)
    rows = rows_in(out)
    cached = [r["cached_tokens"] for r in rows]
    assert sum(1 for c in cached if c) >= len(rows) - 1  # all but the first request of the prefix
    assert all(c % 128 == 0 and c >= 1024 for c in cached if c)  # OpenAI's 128-token steps
    usage = _manifest(out)["usage"]
    assert usage["cached_input_tokens"] == sum(cached) and usage["cache_write_tokens"] == 0


def test_dispatch_groups_tasks_by_prefix_within_a_window(tmp_path: Path, sim_server) -> None:
    # The system prompt depends on the inner variable: in stream order it changes every task. The sim
    # keeps 2 cache entries (a busy provider evicts too), so only grouped dispatch finds them.
    (tmp_path / "p.toml").write_text(
        'name = "grouped"\nversion = "1"\nintended_use = "research"\n'
        '[teacher]\nprovider = "openai"\nmodel = "gen-sim-1"\nlicense = "apache-2.0"\nmax_concurrency = 1\n'
        f'[messages]\nsystem = "{{{{ style }}}}: {"Follow the house style. " * 200}"\n'
        'user = "Item {{ n }}."\n'
        '[variables]\nn = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]\nstyle = ["a", "b", "c", "d"]\n'
    )
    share = {}
    for window in (1, 1024):
        sim = sim_server(cache_entries=2)
        out = tmp_path / f"o{window}"
        run(
            tmp_path / "p.toml",
            RunOptions(base_url=sim.base_url, output=out, progress=False, dispatch_window=window),
        )
        usage = _manifest(out)["usage"]
        share[window] = usage["cached_input_tokens"] / usage["prompt_tokens"]
    assert share[1] == 0  # a, b, c, d, a, ...: each evicted before it comes again
    assert share[1024] > 0.8  # four groups of ten: nine hits each


def test_cached_usage_is_journaled_and_replayed(tmp_path: Path) -> None:
    async def write() -> None:
        journal = Journal(tmp_path, "r1")
        row = {"id": "a" * 64}
        journal.append("rejects", row, (2000, 10, 1900, 0))
        journal.reserve("b" * 64, (2000, 256), (2000, 10, 0, 1900))
        journal.close()

    run_loop(write())
    entries = [e for e in journal_entries(tmp_path) if isinstance(e, Entry)]
    assert [e.usage for e in entries] == [(2000, 10, 1900, 0), (2000, 10, 0, 1900)]


def test_budget_prices_cache_reads_and_writes_at_their_rates() -> None:
    price = Price(3.0, 15.0, cached_input=0.3, cache_write=3.75)
    # 1M prompt tokens of which 0.9M read from cache and 0.05M written; 0.1M completion.
    assert price.cost(1_000_000, 100_000, 900_000, 50_000) == pytest.approx(
        0.05 * 3.0 + 0.9 * 0.3 + 0.05 * 3.75 + 0.1 * 15.0
    )
    assert price.saved(900_000, 50_000) == pytest.approx(0.9 * 2.7 - 0.05 * 0.75)
    plain = Price(1.0, 2.0)  # no cache rates: every prompt token at the input price
    assert plain.cost(1000, 0, 900, 0) == plain.cost(1000, 0)


@pytest.mark.parametrize("gate", [True, False])
def test_a_prefix_groups_first_request_goes_alone_so_the_others_read_the_cache(
    tmp_path: Path, sim_server, gate: bool
) -> None:
    # 16 in flight, 50 ms a request: sent all at once, the first 16 would each write the prefix.
    sim = sim_server(model="claude-sonnet-4-5", latency_ms=50)
    out = tmp_path / "o"
    opts = RunOptions(base_url=sim.base_url, output=out, progress=False, acknowledge_licence=True)
    opts.max_concurrency, opts.prefix_gate = 16, gate
    run(_prompt(tmp_path, n=48), opts)
    usage = _manifest(out)["usage"]
    prefix = len(SYSTEM) // 4 + 4  # the system prompt as the simulator counts it
    if gate:
        assert usage["cache_write_tokens"] == prefix  # one write
        assert usage["cached_input_tokens"] == 47 * prefix
    else:  # the first wave, sent together, wrote it several times (16 on an idle machine)
        assert usage["cache_write_tokens"] >= 2 * prefix
        assert usage["cached_input_tokens"] <= 46 * prefix


def test_cached_usage_of_answers_only_in_the_journal_survives_a_sigkill(tmp_path: Path, sim_server) -> None:
    import signal
    import subprocess
    import sys
    import time

    sim = sim_server(latency_ms=20)
    prompt = _prompt(tmp_path, n=300)
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "gen", "run", str(prompt), "--provider", "openai", "--model", "gen-sim-1"]
    cmd += ["--license", "apache-2.0", "--base-url", sim.base_url, "--output", str(out), "--no-progress"]
    cmd += ["--max-concurrency", "8", "--shard-rows", "100000"]  # no checkpoint: answers only journaled
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while sim.stats()["ok"] < 100 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists() or _manifest(out)["usage"]["cached_input_tokens"] < 1000
    opts = RunOptions(provider="openai", model="gen-sim-1", base_url=sim.base_url, output=out, progress=False)
    opts.license = "apache-2.0"
    result = run(prompt, opts)
    assert result.status == "complete" and result.stats.replayed >= 90
    usage, served = _manifest(out)["usage"], sim.stats()["cached_tokens"]
    # Everything the sim served from cache is counted, but for the answers lost in flight at the kill.
    prefix = len(SYSTEM) // 4 + 4
    assert served - usage["unanswered_requests"] * prefix <= usage["cached_input_tokens"] <= served
    assert usage["cached_input_tokens"] > result.stats.cached_tokens  # the replayed answers' share


def test_max_usd_counts_cache_reads_at_their_rate(tmp_path: Path, sim_server) -> None:
    # A task costs ~$0.0070 at the plain input price, ~$0.0014 with its 2,000-token prefix read from
    # cache: a $0.05 budget buys ~7 tasks priced plainly, ~30 priced as billed.
    sim = sim_server(model="claude-sonnet-4-5")
    out = tmp_path / "o"
    opts = RunOptions(base_url=sim.base_url, output=out, progress=False, acknowledge_licence=True)
    opts.max_usd, opts.max_concurrency = 0.05, 1
    result = run(_prompt(tmp_path, n=200), opts)
    assert result.status == "budget"
    m = _manifest(out)
    assert result.stats.rows >= 20
    assert m["cost_usd"] <= 0.05 + 0.01  # at most the request that crossed it
    price = price_for("claude-sonnet-4-5")
    assert price is not None
    u = m["usage"]
    assert price.cost(u["prompt_tokens"], u["completion_tokens"]) > 3 * m["cost_usd"]  # priced plainly
