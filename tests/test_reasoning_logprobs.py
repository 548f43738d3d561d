"""Teacher logprobs (issue 14 item 6) and the reasoning settings' bad input: `logprobs = K` stores the
answer's tokens with their top-K alternatives, compactly; what cannot work stops before any request."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from gen import RunOptions, run
from gen.cli import main
from gen.sim.instances import sentences
from tests.helpers import rows_in
from tests.test_reasoning import _prompt


def test_logprobs_of_a_1000_token_answer_with_k_5_stay_under_100_kb_on_disk(
    tmp_path: Path, sim_server
) -> None:
    answer = sentences(random.Random(7), 2000)[:4000]  # 1,000 tokens of 4 characters
    sim = sim_server(answer_text=answer)
    out = tmp_path / "o"
    prompt = _prompt(tmp_path, n=1, tables="[sampling]\nlogprobs = 5\n")
    result = run(prompt, RunOptions(base_url=sim.base_url, output=out, progress=False))
    assert result.stats.rows == 1
    (shard,) = (out / "data").glob("*.parquet")
    (row,) = rows_in(out)
    assert len(row["logprobs"]) == 1000 and all(len(t["top"]) == 5 for t in row["logprobs"])
    assert "".join(t["token"] for t in row["logprobs"]) == row["response"]
    assert all(t["top"][0]["token"] == t["token"] and t["logprob"] <= 0 for t in row["logprobs"])
    assert json.loads(row["sampling"])["logprobs"] == 5
    # the column alone, in a real Parquet file as gen writes it
    only = tmp_path / "logprobs.parquet"
    pq.write_table(pq.read_table(shard, columns=["logprobs"]), only, compression="zstd")
    assert only.stat().st_size < 100_000, only.stat().st_size
    assert shard.stat().st_size < 100_000 + 2 * len(answer)


@pytest.mark.parametrize(
    ("tables", "provider", "words"),
    [
        ("[sampling]\nlogprobs = 5\n", "anthropic", "returns no logprobs"),
        ("[sampling]\nlogprobs = 50\n", "openai", "1..20"),
        ("[sampling]\nlogprobs = true\n", "openai", "1..20"),
        ("[sampling]\nthinking_budget = 2048\n", "openai", "Anthropic's extended thinking"),
        ("[sampling]\nthinking_budget = 500\n", "anthropic", ">= 1024"),
        (
            "[sampling]\nthinking_budget = 4096\nmax_tokens = 4000\n",
            "anthropic",
            "larger than thinking_budget",
        ),
    ],
)
def test_reasoning_settings_that_cannot_work_are_one_line_and_exit_2_before_any_request(
    tmp_path: Path, sim_server, capsys, tables: str, provider: str, words: str
) -> None:
    sim = sim_server()
    prompt = _prompt(tmp_path, n=2, tables=tables, provider=provider)
    argv = ["run", str(prompt), "--base-url", sim.base_url, "--output", str(tmp_path / "o"), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0] and str(prompt) in err[0], err
    assert sim.stats()["requests"] == 0 and not (tmp_path / "o").exists()


def test_the_thinking_budget_flag_is_checked_like_the_key(tmp_path: Path, sim_server, capsys) -> None:
    sim = sim_server()
    prompt = _prompt(tmp_path, n=2)
    argv = ["run", str(prompt), "--base-url", sim.base_url, "--output", str(tmp_path / "o"), "--no-progress"]
    assert main([*argv, "--thinking-budget", "2048"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gen: error: --thinking-budget"), err
    assert sim.stats()["requests"] == 0
