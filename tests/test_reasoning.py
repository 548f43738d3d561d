"""Reasoning traces (issue 14): captured in each wire format a teacher uses, kept apart from the answer
that validation sees, written into `messages` as `reasoning_format` says, compared by dedup, and the
teacher's logprobs kept compactly. Everything runs against the simulator over real HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import rows_in

from gen import RunOptions, run
from gen.cli import main
from gen.config import request_timeout
from gen.reasoning import split_think
from gen.teachers.anthropic import max_tokens_of
from gen.teachers.http import reply_limit

SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}, "confidence": {"type": "number"}},
    "required": ["answer", "confidence"],
    "additionalProperties": False,
}


def _prompt(
    folder: Path,
    *,
    n: int = 4,
    samples: int = 1,
    schema: bool = False,
    top: str = "",
    tables: str = "",
    provider: str = "openai",
) -> Path:
    """A prompt file with `n` inputs; `top` adds top-level keys, `tables` more TOML tables."""
    if schema:
        (folder / "s.json").write_text(json.dumps(SCHEMA))
    (folder / "p.toml").write_text(
        'name = "reason"\nversion = "1"\nintended_use = "research"\n'
        + ('schema = "s.json"\n' if schema else "")
        + f"samples = {samples}\n{top}\n"
        + f'[teacher]\nprovider = "{provider}"\nmodel = "gen-sim-1"\nlicense = "apache-2.0"\n'
        + '[messages]\nuser = "Solve problem {{ n }}."\n'
        + f"[variables]\nn = {list(range(n))}\n"
        + tables
    )
    return folder / "p.toml"


def _opts(sim, out: Path, **kw) -> RunOptions:
    return RunOptions(base_url=sim.base_url, output=out, progress=False, **kw)


# --------------------------------------------------------------------------- capture


@pytest.mark.parametrize("wire", ["reasoning_content", "reasoning", "think-tags"])
def test_each_openai_wire_format_gives_the_trace_apart_from_a_validated_answer(
    tmp_path: Path, sim_server, wire: str
) -> None:
    sim = sim_server(reasoning=wire, reasoning_tokens=120)
    out = tmp_path / "o"
    result = run(_prompt(tmp_path, schema=True), _opts(sim, out))
    assert result.status == "complete" and result.stats.rows == 4 and result.stats.rejects == 0
    for row in rows_in(out):
        assert row["reasoning"] and len(row["reasoning"]) > 200
        assert "<think>" not in row["response"] and "</think>" not in row["response"]
        # validation saw the answer alone: the output is the response's JSON, the trace is not in it
        assert json.loads(row["output"]) == json.loads(row["response"])
        assert row["reasoning"] not in row["response"]
        assert row["reasoning_tokens"] == len(row["reasoning"]) // 4  # the simulator's usage report
        assert row["completion_tokens"] > row["reasoning_tokens"]
    assert result.stats.reasoning_tokens == sum(r["reasoning_tokens"] for r in rows_in(out))


def test_a_trace_without_a_usage_count_has_null_reasoning_tokens(tmp_path: Path, sim_server) -> None:
    sim = sim_server(reasoning="think-tags", reasoning_usage=False)
    out = tmp_path / "o"
    run(_prompt(tmp_path), _opts(sim, out))
    rows = rows_in(out)
    assert rows and all(r["reasoning"] and r["reasoning_tokens"] is None for r in rows)


def test_a_plain_teacher_gives_null_reasoning_and_the_messages_keep_one_struct(
    tmp_path: Path, sim_server
) -> None:
    sim = sim_server()
    out = tmp_path / "o"
    run(_prompt(tmp_path), _opts(sim, out))
    rows = rows_in(out)
    assert rows and all(r["reasoning"] is None and r["reasoning_tokens"] is None for r in rows)
    assert all(r["logprobs"] is None for r in rows)  # not asked for
    assert all(m["reasoning_content"] is None for r in rows for m in r["messages"])


def test_split_think_handles_an_opening_tag_left_in_the_prompt_and_an_unclosed_trace() -> None:
    assert split_think("<think>\nabc\n</think>\n\n42") == ("abc", "42")
    assert split_think("  <think>abc</think>42") == ("abc", "42")
    assert split_think("abc\n</think>\n\n42") == ("abc", "42")  # R1 templates put <think> in the prompt
    assert split_think("<think>\nstill thinking when cut") == ("still thinking when cut", "")
    assert split_think("no tags here") == (None, "no tags here")
    assert split_think("a <think> b </think> c") == (None, "a <think> b </think> c")  # not at the start


def test_a_trace_cut_at_max_tokens_is_rejected_as_truncated_with_its_trace(
    tmp_path: Path, sim_server
) -> None:
    sim = sim_server(reasoning="think-tags", reasoning_tokens=400)
    out = tmp_path / "o"
    prompt = _prompt(tmp_path, n=2, top="max_attempts = 1", tables="[sampling]\nmax_tokens = 100\n")
    result = run(prompt, _opts(sim, out))
    assert result.stats.rows == 0 and result.stats.reject_reasons == {"truncated": 2}
    rejects = rows_in(out, "rejects")
    assert all(r["reasoning"] and not r["response"] for r in rejects)


def test_anthropic_extended_thinking_asks_for_json_in_the_text_instead_of_a_forced_tool(
    tmp_path: Path, sim_server
) -> None:
    """The simulator refuses a forced tool together with thinking, as the API does: every row coming
    back valid proves gen asked for the JSON in the text and validated that."""
    sim = sim_server()
    out = tmp_path / "o"
    prompt = _prompt(
        tmp_path, schema=True, provider="anthropic", tables="[sampling]\nthinking_budget = 2048\n"
    )
    result = run(prompt, _opts(sim, out))
    assert result.status == "complete" and result.stats.rows == 4, result.stats.reject_reasons
    assert sim.stats()["bad_request"] == 0
    for row in rows_in(out):
        assert row["reasoning"] and row["reasoning_tokens"] is None  # the API does not count it apart
        assert set(json.loads(row["output"])) == {"answer", "confidence"}
        assert json.loads(row["sampling"])["thinking_budget"] == 2048


def test_the_thinking_budget_flag_turns_thinking_on(tmp_path: Path, sim_server) -> None:
    sim = sim_server()
    out = tmp_path / "o"
    prompt = _prompt(tmp_path, n=2, provider="anthropic")
    argv = ["run", str(prompt), "--base-url", sim.base_url, "--output", str(out), "--no-progress"]
    assert main([*argv, "--thinking-budget", "1500"]) == 0
    rows = rows_in(out)
    assert len(rows) == 2 and all(r["reasoning"] for r in rows)


def test_a_30000_token_trace_fits_the_derived_reply_cap_and_deadline(tmp_path: Path, sim_server) -> None:
    sim = sim_server(reasoning_tokens=30_000)
    out = tmp_path / "o"
    prompt = _prompt(tmp_path, n=2, provider="anthropic", tables="[sampling]\nthinking_budget = 40000\n")
    result = run(prompt, _opts(sim, out))
    assert result.stats.rows == 2 and result.stats.retries == 0
    assert all(len(r["reasoning"]) >= 22_500 * 4 for r in rows_in(out))
    # the cap and the deadline grow with the budget: 40,000 tokens and an answer on top
    assert max_tokens_of({"thinking_budget": 40_000}) == 41_024
    assert reply_limit({"thinking_budget": 40_000}, unset_max_tokens=1024) >= 41_024 * 128
    assert request_timeout(None, {"thinking_budget": 40_000}) == 2000.0
    assert request_timeout(None, {}) == 600.0 and request_timeout(30.0, {"max_tokens": 10**6}) == 30.0


def test_a_trace_that_holds_the_api_key_is_a_secret_echo_reject(
    tmp_path: Path, sim_server, monkeypatch
) -> None:
    key = "sk-test-reasoning-0123456789abcdef"
    monkeypatch.setenv("GEN_TEST_REASONING_KEY", key)
    # an inline trace that repeats the key, and a harmless answer after it
    sim = sim_server(answer_text=f"<think>the key is {key}</think>\n\nfine", api_key=key)
    out = tmp_path / "o"
    prompt = _prompt(tmp_path, n=2)
    prompt.write_text(
        prompt.read_text().replace("[messages]", 'api_key_env = "GEN_TEST_REASONING_KEY"\n[messages]')
    )
    result = run(prompt, _opts(sim, out))
    assert result.stats.rows == 0 and result.stats.reject_reasons == {"secret_echo": 2}
    for folder in ("data", "rejects"):
        for f in (out / folder).glob("*.parquet"):
            assert key.encode() not in f.read_bytes()


def test_progress_and_the_summary_show_reasoning_tokens_per_second(
    tmp_path: Path, sim_server, capsys
) -> None:
    sim = sim_server(reasoning="reasoning_content", reasoning_tokens=100)
    out = tmp_path / "o"
    prompt = _prompt(tmp_path, n=3)
    assert main(["run", str(prompt), "--base-url", sim.base_url, "--output", str(out)]) == 0
    err = capsys.readouterr().err
    assert "reasoning=" in err and "tok/s" in err  # the bar's postfix
    assert "reasoning tokens (" in err.strip().splitlines()[-1]  # the summary line


def test_progress_counts_answers_waiting_for_the_near_check(tmp_path: Path, sim_server, capsys) -> None:
    # Kept answers wait for the near check in batches of 256: with a slow teacher the bar said rows=0
    # for minutes while answers were coming in. It says how many are waiting (checking=N).
    sim = sim_server(latency_ms=150)
    out = tmp_path / "o"
    prompt = _prompt(tmp_path, n=40)
    argv = ["run", str(prompt), "--base-url", sim.base_url, "--output", str(out), "--max-concurrency", "4"]
    assert main(argv) == 0  # ~1.5 s: the bar is drawn a few times
    err = capsys.readouterr().err
    assert "rows=0 " in err and "checking=" in err, err[-2000:]
