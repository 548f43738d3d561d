"""Answers cut off at max_tokens are rejects with reason `truncated` (re-asked), unless keep_truncated."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import rows_in

from gen import RunOptions, run
from gen.pipeline import summary

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "prompts" / "quickstart.toml"
TOPICS = [f"topic {i}" for i in range(20)]


def _prompt(tmp_path: Path, extra: str = "", sampling: str = "temperature = 0.7") -> Path:
    """A recipe without a schema: any non-empty text is an answer, so only truncation can reject it."""
    p = tmp_path / "essay.toml"
    p.write_text(
        f"""
name = "essay"
version = "1"
intended_use = "research"
eval_fraction = 0.0
{extra}

[teacher]
license = "apache-2.0"
model = "gen-sim-1"

[sampling]
{sampling}

[messages]
user = "Write a paragraph about {{{{ topic }}}}."

[variables]
topic = {json.dumps(TOPICS)}
"""
    )
    return p


def _run(prompt: Path, sim, out: Path, provider: str = "openai"):
    return run(prompt, RunOptions(provider=provider, base_url=sim.base_url, output=out, progress=False))


def test_cut_answers_are_re_asked_then_rejected_as_truncated(tmp_path: Path, sim_server) -> None:
    sim = sim_server(rate_truncated=1.0)
    out = tmp_path / "o"
    result = _run(_prompt(tmp_path, "max_attempts = 2"), sim, out)
    assert result.stats.rows == 0 and result.stats.rejects == len(TOPICS)
    rejects = rows_in(out, "rejects")
    assert {r["reason"] for r in rejects} == {"truncated"}
    assert all(r["attempts"] == 2 and r["response"] and "max_tokens" in r["error"] for r in rejects)
    assert sim.stats()["requests"] == 2 * len(TOPICS)  # each asked again once
    assert f"{len(TOPICS)} rejects ({len(TOPICS)} truncated)" in summary(result)


def test_a_re_ask_after_a_cut_can_keep_a_whole_answer(tmp_path: Path, sim_server) -> None:
    sim = sim_server(rate_truncated=0.5, seed=4)
    out = tmp_path / "o"
    result = _run(_prompt(tmp_path, "max_attempts = 6"), sim, out)
    rows = rows_in(out)
    assert result.stats.rows + result.stats.rejects == len(TOPICS)
    assert rows and all(r["finish_reason"] == "stop" for r in rows)
    assert any(r["attempts"] > 1 for r in rows)
    assert sim.stats()["truncated"] > 0


def test_max_tokens_cut_is_a_reject_without_a_schema(tmp_path: Path, sim_server) -> None:
    # The simulator cuts at max_tokens like a real server: finish_reason "length".
    sim = sim_server()
    out = tmp_path / "o"
    result = _run(_prompt(tmp_path, "max_attempts = 1", "max_tokens = 5"), sim, out)
    assert result.stats.rows == 0
    assert {r["reason"] for r in rows_in(out, "rejects")} == {"truncated"}


def test_keep_truncated_keeps_them_as_rows_and_counts_them(tmp_path: Path, sim_server) -> None:
    sim = sim_server(rate_truncated=1.0)
    out = tmp_path / "o"
    result = _run(_prompt(tmp_path, "keep_truncated = true"), sim, out)
    rows = rows_in(out)
    assert len(rows) == len(TOPICS) and result.stats.rejects == 0
    assert all(r["finish_reason"] == "length" and r["attempts"] == 1 for r in rows)
    assert result.stats.truncated_kept == len(TOPICS)
    assert f"{len(TOPICS)} truncated rows kept" in summary(result)
    assert sim.stats()["requests"] == len(TOPICS)


def test_anthropic_max_tokens_stop_is_a_truncated_reject(tmp_path: Path, sim_server) -> None:
    # stop_reason "max_tokens" maps to finish_reason "length"; with a schema the cut tool input ({})
    # would fail validation anyway, but the reason says why.
    sim = sim_server(rate_truncated=1.0)
    out = tmp_path / "o"
    opts = RunOptions(provider="anthropic", base_url=sim.base_url, output=out, progress=False, limit=6)
    result = run(QUICKSTART, opts)
    assert result.stats.rows == 0 and result.stats.rejects == 6
    assert {r["reason"] for r in rows_in(out, "rejects")} == {"truncated"}
