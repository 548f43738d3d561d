"""A hostile or broken teacher cannot block, bloat or corrupt an output (issue 11, items 3 and 4), end to
end: the real run against the simulator's hostile faults, real Parquet, a real SIGKILL and resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import all_task_ids, ids_in, journaled_answers

from gen import RunOptions, run
from gen.cli import main
from gen.teachers import transports as transports_module

SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}, "score": {"type": "integer"}},
    "required": ["answer", "score"],
}


def _recipe(tmp_path: Path, provider: str = "openai", n: int = 60) -> Path:
    (tmp_path / "answer.json").write_text(json.dumps(SCHEMA))
    (tmp_path / "p.toml").write_text(
        'name = "hostile"\nversion = "1"\nintended_use = "research"\nschema = "answer.json"\n'
        f'[teacher]\nprovider = "{provider}"\nmodel = "gen-sim-1"\nlicense = "apache-2.0"\n'
        "[sampling]\nmax_tokens = 256\n"
        '[messages]\nuser = "Explain item {{ n }}."\n'
        f"[variables]\nn = {list(range(n))}\n"
    )
    return tmp_path / "p.toml"


def _rejects(out: Path) -> list[dict]:
    return [r for f in sorted((out / "rejects").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def _accounted(out: Path, prompt: Path) -> list[str]:
    data, rejects, dups = ids_in(out, "data"), ids_in(out, "rejects"), ids_in(out, "duplicates")
    everything = data + rejects + dups
    assert len(everything) == len(set(everything)) and set(everything) == all_task_ids(prompt)
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"
    return data


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_malformed_replies_become_rejects_and_the_dataset_is_written(
    tmp_path: Path, sim_server, provider: str
) -> None:
    prompt = _recipe(tmp_path, provider)
    sim = sim_server(rate_malformed=0.5, malformed="any", seed=3)
    out = tmp_path / "o"
    opts = RunOptions(base_url=sim.base_url, output=out, progress=False, max_retries=0, max_concurrency=8)
    result = run(prompt, opts)
    data = _accounted(out, prompt)
    rejects = _rejects(out)
    assert sim.stats()["malformed"] == len(rejects) > 10 and len(data) > 10
    assert {r["reason"] for r in rejects} == {"teacher_error"}
    assert all(r["error"].startswith("malformed reply: ") for r in rejects), rejects[0]["error"]
    assert result.stats.rows == len(data)
    # Every kept row holds what the columns promise (the teacher's model name, counts in range).
    rows = pq.read_table(out / "data").to_pylist()
    assert {r["teacher_model"] for r in rows} == {"gen-sim-1"}
    assert all(0 <= r["completion_tokens"] <= 256 and r["finish_reason"] == "stop" for r in rows)


def test_malformed_replies_are_asked_again_while_retries_last(tmp_path: Path, sim_server) -> None:
    prompt = _recipe(tmp_path, n=40)
    sim = sim_server(rate_malformed=0.3, seed=5)
    out = tmp_path / "o"
    run(
        prompt,
        RunOptions(base_url=sim.base_url, output=out, progress=False, max_retries=6, max_concurrency=8),
    )
    data = _accounted(out, prompt)
    assert sim.stats()["malformed"] > 5 and len(data) == 40  # each retried until a good answer came


@pytest.mark.parametrize("client", ["wire", "aiohttp"])
def test_replies_past_the_cap_become_rejects_and_are_never_kept(
    tmp_path: Path, sim_server, monkeypatch, client: str
) -> None:
    # GEN_HTTP_CLIENT=aiohttp, in process
    monkeypatch.setattr(transports_module, "USE_WIRE", client == "wire")
    prompt = _recipe(tmp_path, n=40)
    sim = sim_server(rate_oversize=0.5, oversize_bytes=3_000_000, seed=2)
    out = tmp_path / "o"
    run(
        prompt,
        RunOptions(base_url=sim.base_url, output=out, progress=False, max_retries=0, max_concurrency=8),
    )
    data = _accounted(out, prompt)
    rejects = _rejects(out)
    assert sim.stats()["oversize"] == len(rejects) > 5 and len(data) > 5
    assert all("over the reply size cap (from max_tokens)" in r["error"] for r in rejects)
    assert all(r["response"] is None for r in rejects)
    # Twenty 3 MB answers were sent: none of them reached the disk.
    on_disk = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    assert on_disk < 1_000_000, on_disk


def test_max_reply_bytes_flag(tmp_path: Path, sim_server, capsys) -> None:
    prompt = _recipe(tmp_path, n=4)
    sim = sim_server()
    base = ["run", str(prompt), "--base-url", sim.base_url, "--no-progress", "--max-retries", "0"]
    assert main([*base, "--output", str(tmp_path / "bad"), "--max-reply-bytes", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["gen: error: --max-reply-bytes must be at least 1"]
    assert sim.stats()["requests"] == 0

    main([*base, "--output", str(tmp_path / "tiny"), "--max-reply-bytes", "100"])
    rejects = _rejects(tmp_path / "tiny")
    assert len(rejects) == 4 and sim.stats()["requests"] == 4
    assert all(
        "larger than 100 bytes: over the reply size cap (--max-reply-bytes)" in r["error"] for r in rejects
    )


def test_a_run_killed_among_malformed_replies_resumes_against_a_good_teacher(
    tmp_path: Path, sim_server
) -> None:
    prompt = _recipe(tmp_path, n=300)
    hostile = sim_server(rate_malformed=0.3, latency_ms=10, seed=9)
    out = tmp_path / "o"
    cmd = [
        sys.executable,
        "-m",
        "gen",
        "run",
        str(prompt),
        "--base-url",
        hostile.base_url,
        "--output",
        str(out),
    ]
    cmd += ["--no-progress", "--max-retries", "1", "--max-concurrency", "8", "--shard-rows", "100000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while journaled_answers(out) < 40 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert journaled_answers(out) >= 40, err
    assert hostile.stats()["malformed"] > 0

    good = sim_server(latency_ms=1)
    result = run(prompt, RunOptions(base_url=good.base_url, output=out, progress=False, max_concurrency=8))
    assert result.stats.replayed >= 40
    _accounted(out, prompt)
    assert all(r["error"].startswith("malformed reply: ") for r in _rejects(out))
    assert pq.read_table(out / "data").num_rows == len(ids_in(out, "data"))


def test_a_tool_input_nested_past_what_can_be_written_back_is_a_reject(tmp_path: Path, sim_server) -> None:
    """orjson reads JSON nested 1,024 deep but writes only ~254: an Anthropic tool input nested 300 deep
    passed the reply check and then raised TypeError in the client, a traceback on every run and resume."""
    prompt = _recipe(tmp_path, "anthropic", n=30)
    sim = sim_server(rate_malformed=0.4, malformed="deep_nesting", seed=4)
    out = tmp_path / "o"
    result = run(prompt, RunOptions(base_url=sim.base_url, output=out, progress=False, max_retries=0))
    _accounted(out, prompt)
    rejects = _rejects(out)
    assert result.stats.rejects == len(rejects) == sim.stats()["malformed"] > 3 and result.stats.rows > 3
    assert all(r["error"].startswith("malformed reply: content.input") for r in rejects), rejects[0]["error"]
