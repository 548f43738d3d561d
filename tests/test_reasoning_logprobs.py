"""Teacher logprobs (issue 14 item 6) and the reasoning settings' bad input: `logprobs = K` stores the
answer's tokens with their top-K alternatives, compactly; what cannot work stops before any request."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import rows_in
from test_reasoning import _prompt

from gen import RunOptions, run
from gen.cli import main
from gen.sim.instances import sentences


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


def test_the_reply_cap_counts_k_alternatives_a_token() -> None:
    from gen.teachers.http import (
        REPLY_BYTES_PER_LOGPROB,
        REPLY_BYTES_PER_TOKEN,
        REPLY_ENVELOPE_BYTES,
        reply_limit,
    )

    per_token = REPLY_BYTES_PER_TOKEN + REPLY_BYTES_PER_LOGPROB * 6
    assert reply_limit({"max_tokens": 1000, "logprobs": 5}) == REPLY_ENVELOPE_BYTES + 1000 * per_token
    wire = {"max_tokens": 1000, "logprobs": True, "top_logprobs": 5}
    assert reply_limit(wire) == REPLY_ENVELOPE_BYTES + 1000 * per_token


def test_gen_sim_answers_as_a_reasoning_teacher_from_its_flags(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [
        "--port",
        str(port),
        "--reasoning",
        "think-tags",
        "--reasoning-tokens",
        "40",
        "--answer-text",
        "42",
    ]
    sim = subprocess.Popen([sys.executable, "-m", "gen", "sim", *argv], stderr=subprocess.DEVNULL)
    try:
        body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "seed": 1}).encode()
        for _ in range(200):
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body)
                reply = json.loads(urllib.request.urlopen(req, timeout=5).read())
                break
            except OSError:
                time.sleep(0.05)
        content = reply["choices"][0]["message"]["content"]
        assert content.startswith("<think>\n") and content.endswith("</think>\n\n42")
        assert reply["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0
    finally:
        sim.terminate()
        sim.wait(timeout=10)
