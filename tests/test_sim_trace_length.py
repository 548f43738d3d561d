"""The simulator's traces are as long as it is told: `reasoning_tokens = T` gives traces that average T
tokens by its own count (about 4 characters a token, what its usage reports), and an Anthropic thinking
budget caps them. bench/reasoning.py's "8,000-token traces" and issue 14's figure rest on this."""

from __future__ import annotations

import statistics
from pathlib import Path

from helpers import rows_in

from gen import RunOptions, run


def _prompt(folder: Path, n: int, provider: str = "openai", tables: str = "") -> Path:
    (folder / "p.toml").write_text(
        'name = "lengths"\nversion = "1"\nintended_use = "research"\neval_fraction = 0.0\n'
        f'[teacher]\nprovider = "{provider}"\nmodel = "gen-sim-1"\nlicense = "apache-2.0"\n'
        '[messages]\nuser = "Solve problem {{ n }}."\n'
        f"[variables]\nn = {list(range(n))}\n" + tables
    )
    return folder / "p.toml"


def test_traces_average_the_tokens_asked_for(tmp_path: Path, sim_server) -> None:
    sim = sim_server(reasoning="reasoning_content", reasoning_tokens=2_000)
    out = tmp_path / "o"
    run(_prompt(tmp_path, 120), RunOptions(base_url=sim.base_url, output=out, progress=False))
    rows = rows_in(out)
    assert len(rows) == 120
    reported = statistics.mean(r["reasoning_tokens"] for r in rows)
    by_length = statistics.mean(len(r["reasoning"]) / 4 for r in rows)
    # drawn +-25% per answer: the mean of 120 is within a few percent of 2,000 (it was 2,289 before the
    # pool sentences were measured: they average 93 characters with their space, not 80)
    assert 1_900 <= reported <= 2_100, reported
    assert 1_900 <= by_length <= 2_100, by_length
    assert min(r["reasoning_tokens"] for r in rows) < 2_000 < max(r["reasoning_tokens"] for r in rows)


def test_a_thinking_budget_caps_the_trace(tmp_path: Path, sim_server) -> None:
    sim = sim_server(reasoning_tokens=30_000)
    out = tmp_path / "o"
    prompt = _prompt(tmp_path, 6, provider="anthropic", tables="[sampling]\nthinking_budget = 1500\n")
    run(prompt, RunOptions(base_url=sim.base_url, output=out, progress=False))
    rows = rows_in(out)
    assert len(rows) == 6
    # the simulator counts a token per 4 characters: no trace is longer than the budget allows
    lengths = [len(r["reasoning"]) for r in rows]
    assert all(1_400 * 4 <= n <= 1_500 * 4 for n in lengths), lengths
