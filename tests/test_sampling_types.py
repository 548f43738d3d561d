"""[sampling] is passed through into each request, but the keys every teacher API knows have types and
ranges that a teacher refuses with a 400 on every request (or, for `max_tokens = true`, gen's own size
cap could not read): a mistyped value is one line naming the prompt file and the key, exit 2, before any
request. Keys gen does not know still pass through untouched."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest


def _prompt(tmp_path: Path, sampling: str) -> Path:
    path = tmp_path / "p.toml"
    path.write_text(
        'name = "s"\nversion = "1"\nintended_use = "research"\nsamples = 1\nmax_attempts = 1\n'
        '[teacher]\nprovider = "openai"\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "gen-sim-1"\n'
        'license = "apache-2.0"\n'
        f"[sampling]\n{sampling}\n"
        '[messages]\nuser = "Say {{ w }}."\n'
        '[variables]\nw = ["a", "b", "c"]\n'
    )
    return path


def _run(tmp_path: Path, prompt: Path, sim) -> subprocess.CompletedProcess[str]:
    args = ["run", str(prompt), "--base-url", sim.base_url, "--output", str(tmp_path / "o"), "--no-progress"]
    return subprocess.run(
        [sys.executable, "-m", "gen", *args], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("temperature = true", "temperature"),
        ('temperature = "0.7"', "temperature"),
        ("temperature = -0.5", "temperature"),
        ("top_p = 1.5", "top_p"),
        ("max_tokens = true", "max_tokens"),
        ('max_tokens = "256"', "max_tokens"),
        ("max_tokens = 0", "max_tokens"),
        ("max_tokens = 25.5", "max_tokens"),
        ("max_completion_tokens = -1", "max_completion_tokens"),
        ("n = 0", "n"),
        ("presence_penalty = 3", "presence_penalty"),
        ("frequency_penalty = false", "frequency_penalty"),
        ("stop = 5", "stop"),
        ("stop = [1, 2]", "stop"),
        ("top_k = 2.5", "top_k"),
    ],
)
def test_a_mistyped_sampling_value_is_one_line_before_any_request(
    tmp_path: Path, sim_server, line: str, key: str
) -> None:
    sim = sim_server()
    prompt = _prompt(tmp_path, line)
    proc = _run(tmp_path, prompt, sim)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert prompt.name in lines[0] and f"sampling.{key}" in lines[0], lines[0]
    assert sim.stats()["requests"] == 0


def test_well_typed_and_unknown_sampling_keys_pass_through_as_written(tmp_path: Path, sim_server) -> None:
    sim = sim_server()
    sampling = (
        'temperature = 1\ntop_p = 0.9\nmax_tokens = 512\nstop = ["\\n\\n"]\nseed_hint = "x"\n'
        "repetition_penalty = 1.1\npresence_penalty = -1.5\ntop_k = -1\n"
    )
    proc = _run(tmp_path, _prompt(tmp_path, sampling), sim)
    assert proc.returncode == 0, proc.stderr
    recorded = pq.read_table(tmp_path / "o" / "data" / "train-00000.parquet").column("sampling")[0].as_py()
    assert '"temperature":1,' in recorded and '"seed_hint":"x"' in recorded, recorded
