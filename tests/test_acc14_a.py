"""Acceptance checks of issue 14 (reasoning traces), part a: capture in every wire format and the
training format, attacked with hostile teacher replies through the simulator over real HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import rows_in

from gen import RunOptions, run


def _prompt(folder: Path, *, n: int = 3, provider: str = "openai", tables: str = "", top: str = "") -> Path:
    (folder / "p.toml").write_text(
        f'name = "acc"\nversion = "1"\nintended_use = "research"\nsamples = 1\n{top}\n'
        f'[teacher]\nprovider = "{provider}"\nmodel = "gen-sim-1"\nlicense = "apache-2.0"\n'
        '[messages]\nuser = "Solve problem {{ n }}."\n'
        f"[variables]\nn = {list(range(n))}\n" + tables
    )
    return folder / "p.toml"


def _run(sim, prompt: Path, out: Path, **kw):
    return run(prompt, RunOptions(base_url=sim.base_url, output=out, progress=False, **kw))


# --------------------------------------------------------------------------- a blank trace is none


@pytest.mark.parametrize(
    ("config", "provider", "tables"),
    [
        ({"reasoning": "reasoning_content", "reasoning_text": "   \n  "}, "openai", ""),
        ({"reasoning": "reasoning", "reasoning_text": ""}, "openai", ""),
        ({"reasoning": "think-tags", "reasoning_text": ""}, "openai", ""),  # Qwen3 with thinking off
        ({"answer_text": "<think> \n </think>fine"}, "openai", ""),
        ({"reasoning_text": " "}, "anthropic", "[sampling]\nthinking_budget = 2000\n"),
    ],
    ids=["reasoning_content", "reasoning", "think-tags", "inline", "anthropic"],
)
@pytest.mark.parametrize("fmt", ["field", "think-tags"])
def test_a_blank_trace_is_no_trace(tmp_path: Path, sim_server, config, provider, tables, fmt) -> None:
    """`reasoning` is null when the teacher gave none: an empty or whitespace-only trace (an empty
    `<think></think>` block, a blank field, blank thinking blocks) is none, and the assistant message
    carries no empty trace either."""
    sim = sim_server(reasoning_usage=False, **config)
    out = tmp_path / "o"
    prompt = _prompt(tmp_path, provider=provider, tables=tables, top=f'reasoning_format = "{fmt}"')
    result = _run(sim, prompt, out)
    rows = rows_in(out)
    assert result.stats.rows == 3 and len(rows) == 3
    for row in rows:
        assert row["reasoning"] is None and row["reasoning_tokens"] is None
        assistant = row["messages"][-1]
        assert assistant["reasoning_content"] is None
        assert "<think>" not in assistant["content"] and assistant["content"].strip()
    assert result.stats.reasoning_tokens == 0


def test_a_blank_reasoning_content_does_not_hide_a_reasoning_field() -> None:
    """Both fields present: a blank `reasoning_content` is no trace, so `reasoning` is read."""
    from gen.teachers.openai import read_completion

    reply = {
        "choices": [{"message": {"content": "42", "reasoning_content": "  ", "reasoning": "six times seven"}}]
    }
    assert read_completion(reply).reasoning == "six times seven"


# --------------------------------------------------------------------------- inline <think> blocks


@pytest.mark.parametrize(
    ("text", "trace"),
    [
        ("<think>first</think>\n<think>second</think>\n\nfine", "first\n\nsecond"),  # repeated
        (
            "<think>outer <think>inner</think> still outer</think>\nfine",
            "outer <think>inner</think> still outer",
        ),
        ("<think>never write <think> in an answer</think>fine", "never write <think> in an answer"),
        ("step one\n</think>\n<think>step two</think>fine", "step one\n\nstep two"),  # R1: no opening tag
    ],
    ids=["repeated", "nested", "unmatched-open-in-trace", "no-opening-tag"],
)
def test_every_think_block_at_the_head_is_taken_out_of_a_free_text_answer(
    tmp_path: Path, sim_server, text: str, trace: str
) -> None:
    """The tags are removed from the answer: a second `<think>` block right after the first (or one
    nested in it) is trace too, not part of the answer a student is trained on."""
    sim = sim_server(answer_text=text)
    out = tmp_path / "o"
    result = _run(sim, _prompt(tmp_path, top='reasoning_format = "think-tags"'), out)
    assert result.stats.rows == 3
    for row in rows_in(out):
        assert row["response"] == "fine" and row["reasoning"] == trace
        assert row["messages"][-1]["content"] == f"<think>\n{trace}\n</think>\n\nfine"


@pytest.mark.parametrize("inline", ["<think>weighed it</think>\n\nfine", "<think>field trace</think>fine"])
def test_a_think_block_is_taken_out_of_the_answer_when_a_field_carried_a_trace_too(
    tmp_path: Path, sim_server, inline: str
) -> None:
    """A gateway that sends `reasoning_content` and leaves a `<think>` block at the head of `content`
    as well: the tags still leave the answer; a block that says something else than the field is kept
    in the trace after it (nothing disappears), one that repeats it is not written twice."""
    sim = sim_server(reasoning="reasoning_content", reasoning_text="field trace", answer_text=inline)
    out = tmp_path / "o"
    result = _run(sim, _prompt(tmp_path), out)
    assert result.stats.rows == 3
    want = "field trace\n\nweighed it" if "weighed" in inline else "field trace"
    for row in rows_in(out):
        assert row["response"] == "fine" and row["reasoning"] == want
        assert row["messages"][-1]["content"] == "fine"


# --------------------------------------------------------------------------- </think> in an answer

MARKUP = {
    "type": "object",
    "properties": {"answer": {"const": "close the block with </think> then answer"}},
    "required": ["answer"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("reasoning", [None, "reasoning_content"])
def test_a_close_tag_inside_a_fenced_json_answer_is_the_answer_s_own(
    tmp_path: Path, sim_server, reasoning: str | None
) -> None:
    """A JSON answer (in a ```json fence after a line of prose, as chatty teachers write it) whose
    string holds `</think>`: no trace is cut out of it, and it validates at the first ask."""
    import json

    (tmp_path / "s.json").write_text(json.dumps(MARKUP))
    sim = sim_server(rate_fenced_json=1.0, reasoning=reasoning)
    out = tmp_path / "o"
    result = _run(sim, _prompt(tmp_path, top='schema = "s.json"'), out)
    assert result.stats.rows == 3, result.stats.reject_reasons
    for row in rows_in(out):
        assert json.loads(row["output"]) == {"answer": "close the block with </think> then answer"}
        assert row["attempts"] == 1 and "```json" in row["response"]
        assert (row["reasoning"] is None) == (reasoning is None)


# --------------------------------------------------------------------------- Anthropic thinking's rules


@pytest.mark.parametrize(
    ("sampling", "named"),
    [("temperature = 0.2", "temperature"), ("top_k = 40", "top_k"), ("top_p = 0.5", "top_p")],
)
def test_sampling_that_extended_thinking_refuses_is_one_line_before_any_request(
    tmp_path: Path, sim_server, capsys, sampling: str, named: str
) -> None:
    """The Messages API refuses `temperature` other than 1, `top_k`, and `top_p` below 0.95 with
    thinking on (as it refuses a forced tool): each is one line, exit 2, before any request, instead
    of a run that stops at its first request with the API's 400."""
    from gen.cli import main

    sim = sim_server()
    tables = f"[sampling]\nthinking_budget = 2000\n{sampling}\n"
    prompt = _prompt(tmp_path, provider="anthropic", tables=tables)
    argv = ["run", str(prompt), "--base-url", sim.base_url, "--output", str(tmp_path / "o"), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0] and "thinking" in err[0] and str(prompt) in err[0], err
    assert sim.stats()["requests"] == 0


def test_sampling_that_extended_thinking_takes_runs(tmp_path: Path, sim_server) -> None:
    """temperature = 1 and top_p in 0.95..1 are what the API allows with thinking: they are sent."""
    sim = sim_server()
    tables = "[sampling]\nthinking_budget = 2000\ntemperature = 1\ntop_p = 0.95\n"
    out = tmp_path / "o"
    result = _run(sim, _prompt(tmp_path, provider="anthropic", tables=tables), out)
    assert result.stats.rows == 3 and sim.stats()["bad_request"] == 0


def test_the_simulator_refuses_sampling_with_thinking_as_the_api_does() -> None:
    from gen.sim.reasoning import parse_anthropic

    thinking = {"type": "enabled", "budget_tokens": 2000}
    for bad in ({"temperature": 0.2}, {"top_k": 5}, {"top_p": 0.9}):
        with pytest.raises(ValueError, match="thinking"):
            parse_anthropic({"thinking": thinking, **bad}, 4000, False)
    assert parse_anthropic({"thinking": thinking, "temperature": 1, "top_p": 0.95}, 4000, False) == 2000


# --------------------------------------------------------------------------- reasoning_tokens


def test_reasoning_tokens_reported_without_a_trace_are_kept(tmp_path: Path, sim_server) -> None:
    """`reasoning_tokens` comes from usage.completion_tokens_details.reasoning_tokens where reported: a
    teacher that reasons without sending its trace (OpenAI's o-series) still says how much it thought;
    a plain model's 0 stays null."""
    sim = sim_server(reasoning="hidden", reasoning_tokens=300)
    out = tmp_path / "o"
    result = _run(sim, _prompt(tmp_path), out)
    rows = rows_in(out)
    assert result.stats.rows == 3 and len(rows) == 3
    for row in rows:
        assert row["reasoning"] is None and row["messages"][-1]["reasoning_content"] is None
        assert row["reasoning_tokens"] and row["reasoning_tokens"] > 150
        assert row["completion_tokens"] > row["reasoning_tokens"]
    assert result.stats.reasoning_tokens == sum(r["reasoning_tokens"] for r in rows)


def test_a_reported_zero_without_a_trace_is_null() -> None:
    from gen.teachers.openai import read_completion

    reply = {
        "choices": [{"message": {"content": "42"}}],
        "usage": {"completion_tokens": 1, "completion_tokens_details": {"reasoning_tokens": 0}},
    }
    assert read_completion(reply).reasoning_tokens is None
