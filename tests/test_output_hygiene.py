"""What a user sees after a run: no empty journal/, an honest `gen diff`, a card in JSON, `gen sim`'s port."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import journaled_answers

from gen import RunOptions, run
from gen.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "prompts" / "quickstart.toml"

RECIPE = """
name = "{name}"
version = "1"
intended_use = "research"
[teacher]
provider = "openai"
model = "gen-sim-1"
license = "apache-2.0"
[messages]
user = "{user}"
[variables]
n = {values}
"""


def _recipe(tmp_path: Path, name: str, values: list[int], user: str = "Explain item {{ n }}.") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(RECIPE.format(name=name, user=user, values=values))
    return path


# --- journal/ --------------------------------------------------------------------------------------


def test_a_finished_run_leaves_no_journal_folder(tmp_path: Path) -> None:
    out = tmp_path / "qs"
    proc = subprocess.run(
        [sys.executable, "-m", "gen", "run", str(QUICKSTART), "--output", str(out), "--no-progress",
         "--limit", "40", "--shard-rows", "10"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (out / "manifest.json").exists()
    assert not (out / "journal").exists()


def test_a_resumed_run_removes_the_journal_it_replayed(tmp_path: Path, sim_server) -> None:
    prompt = _recipe(tmp_path, "slow", list(range(300)))
    slow = sim_server(latency_ms=200)  # 300 tasks, 8 at a time: 7.5 s, far longer than the wait below
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "gen", "run", str(prompt), "--base-url", slow.base_url, "--output", str(out),
           "--no-progress", "--max-concurrency", "8", "--shard-rows", "100000"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and journaled_answers(out) < 10:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert journaled_answers(out) >= 10, "the killed run should have journaled answers"

    result = run(prompt, RunOptions(base_url=sim_server().base_url, output=out, progress=False))
    assert result.status == "complete" and result.stats.replayed > 0
    assert not (out / "journal").exists()


def test_a_journal_holding_answers_is_kept(tmp_path: Path) -> None:
    from gen.ledger import remove_empty_journal

    (tmp_path / "journal" / "p001").mkdir(parents=True)
    (tmp_path / "journal" / "p001" / "run-00000.jsonl").write_text('{"s": "train", "r": {}}\n')
    (tmp_path / "journal" / "p002").mkdir()
    remove_empty_journal(tmp_path, 2)  # partition 2 is done; partition 1 still holds answers
    assert not (tmp_path / "journal" / "p002").exists()
    assert (tmp_path / "journal" / "p001" / "run-00000.jsonl").exists()
    remove_empty_journal(tmp_path)
    assert (tmp_path / "journal" / "p001" / "run-00000.jsonl").exists()


# --- gen diff --------------------------------------------------------------------------------------


def _run(prompt: Path, out: Path, base_url: str) -> None:
    argv = ["run", str(prompt), "--base-url", base_url, "--output", str(out), "--no-progress"]
    assert main(argv) == 0


def test_diff_of_unrelated_outputs_says_so(tmp_path: Path, sim_server, capsys) -> None:
    sim = sim_server()
    a = _recipe(tmp_path, "alpha", list(range(10)))
    b = _recipe(tmp_path, "beta", list(range(10)), user="Summarise item {{ n }}.")
    _run(a, tmp_path / "a", sim.base_url)
    _run(b, tmp_path / "b", sim.base_url)
    capsys.readouterr()

    assert main(["diff", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    text = capsys.readouterr().out
    assert "None" not in text
    assert "share no inputs" in text
    warnings = [line for line in text.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "different recipes" in warnings[0]
    assert "alpha" in warnings[0] and "beta" in warnings[0]

    assert main(["diff", str(tmp_path / "a"), str(tmp_path / "b"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["common_inputs"] == 0 and d["identical_outputs"] is None
    assert len(d["warnings"]) == 1 and "different recipes" in d["warnings"][0]


def test_diff_of_two_versions_of_one_recipe_warns_nothing(tmp_path: Path, sim_server, capsys) -> None:
    sim = sim_server()
    a = _recipe(tmp_path, "alpha", list(range(10)))
    _run(a, tmp_path / "a", sim.base_url)
    _run(a, tmp_path / "a2", sim_server(seed=1).base_url)
    capsys.readouterr()
    assert main(["diff", str(tmp_path / "a"), str(tmp_path / "a2")]) == 0
    text = capsys.readouterr().out
    assert "warning" not in text and "shared inputs: 10" in text and "identical outputs: " in text
    assert main(["diff", str(tmp_path / "a"), str(tmp_path / "a2"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["warnings"] == []


# --- the dataset card ------------------------------------------------------------------------------


def test_the_card_shows_sampling_as_json(tmp_path: Path) -> None:
    out = tmp_path / "qs"
    run(QUICKSTART, RunOptions(output=out, progress=False, limit=10))
    card = (out / "README.md").read_text()
    manifest = json.loads((out / "manifest.json").read_text())
    found = re.search(r"^- sampling: `(.*?)`", card, re.M)
    assert found, card
    assert json.loads(found.group(1)) == manifest["sampling"] == {"temperature": 0.7, "max_tokens": 256}


# --- gen sim --port ---------------------------------------------------------------------------------


def test_sim_on_a_taken_port_is_one_line_exit_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "gen", "sim", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"--port {port}" in lines[0] and "taken" in lines[0] and "aborted" not in lines[0]


@pytest.mark.parametrize("port", ["-1", "65536"])
def test_sim_port_out_of_range_is_one_line_exit_2(port: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["sim", "--port", port])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"gen sim: error: argument --port: {port} is not a port (0 to 65535; 0 picks a free one)"
    ]
