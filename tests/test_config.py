"""Bad input: one line naming the file and the problem, exit status 2, and no request sent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gen.cli import main

GOOD = """
name = "t"
version = "1"
intended_use = "research"
schema = "fact.py:Fact"

[teacher]
provider = "openai"
model = "m"
license = "apache-2.0"

[messages]
system = "You write facts."
user = "Tell me about {{ topic }} for {{ who }}."

[variables]
topic = ["a", "b"]
who = { file = "who.txt" }
"""

SCHEMA = """
from pydantic import BaseModel, ConfigDict

class Fact(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fact: str
"""


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    (tmp_path / "fact.py").write_text(SCHEMA)
    (tmp_path / "who.txt").write_text("kids\n\nadults\n")
    path = tmp_path / "p.toml"
    path.write_text(GOOD)
    return path


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


CASES = [
    ("invalid TOML", lambda s: s.replace('version = "1"', "version = "), "invalid TOML"),
    (
        "unknown key",
        lambda s: s.replace('version = "1"', 'version = "1"\ntemprature = 1'),
        "unknown key 'temprature'",
    ),
    ("unknown variable", lambda s: s.replace("{{ topic }}", "{{ topik }}"), "unknown variable 'topik'"),
    ("template syntax", lambda s: s.replace("{{ topic }}", "{{ topic "), "template syntax error"),
    ("missing seed file", lambda s: s.replace('"who.txt"', '"nope.txt"'), "no such file"),
    ("missing seed table", lambda s: s + '\n[seed]\npath = "rows.jsonl"\n', "no such file"),
    ("schema import", lambda s: s.replace("fact.py:Fact", "fact.py:Nope"), "no pydantic model named 'Nope'"),
    ("schema file", lambda s: s.replace("fact.py:Fact", "missing.py:Fact"), "no such file"),
    (
        "unknown provider",
        lambda s: s.replace('provider = "openai"', 'provider = "bard"'),
        "unknown provider 'bard'",
    ),
    ("missing key", lambda s: s.replace('version = "1"', ""), "missing key 'version'"),
]


@pytest.mark.parametrize(("case", "edit", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_prompt_file_exits_2_naming_file_before_any_request(
    case: str, edit, expected: str, recipe: Path, sim_server, capsys
) -> None:
    sim = sim_server()
    recipe.write_text(edit(GOOD))
    code, err = _run(["run", str(recipe), "--base-url", sim.base_url, "--no-progress"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert str(recipe) in lines[0] and expected in lines[0]
    assert sim.stats()["requests"] == 0


def test_schema_module_that_raises_is_one_line(recipe: Path, sim_server, capsys) -> None:
    sim = sim_server()
    (recipe.parent / "fact.py").write_text("import not_a_module_anywhere\n")
    code, err = _run(["run", str(recipe), "--base-url", sim.base_url], capsys)
    assert code == 2 and "import failed: ModuleNotFoundError" in err and len(err.strip().splitlines()) == 1
    assert sim.stats()["requests"] == 0


def test_missing_api_key_variable(recipe: Path, sim_server, capsys, monkeypatch) -> None:
    sim = sim_server()
    monkeypatch.delenv("GEN_TEST_KEY", raising=False)
    code, err = _run(
        ["run", str(recipe), "--base-url", sim.base_url, "--api-key-env", "GEN_TEST_KEY"], capsys
    )
    assert code == 2 and "GEN_TEST_KEY" in err and str(recipe) in err
    assert sim.stats()["requests"] == 0


@pytest.mark.parametrize("value", ["1.5", "0", "-0.2"])
def test_near_threshold_out_of_range(recipe: Path, sim_server, capsys, value: str) -> None:
    sim = sim_server()
    code, err = _run(["run", str(recipe), "--base-url", sim.base_url, "--near-threshold", value], capsys)
    assert code == 2 and "--near-threshold: must be in (0, 1]" in err and len(err.strip().splitlines()) == 1
    assert sim.stats()["requests"] == 0


def test_missing_prompt_file(tmp_path: Path, capsys) -> None:
    code, err = _run(["run", str(tmp_path / "nope.toml")], capsys)
    assert code == 2 and "nope.toml: no such prompt file" in err


def test_seed_row_without_a_column_is_a_reject_not_a_crash(tmp_path: Path, capsys) -> None:
    (tmp_path / "rows.jsonl").write_text('{"topic": "a"}\n{"other": "b"}\n{"topic": "c"}\n')
    (tmp_path / "p.toml").write_text(
        'name = "t"\nversion = "1"\nintended_use = "research"\n[teacher]\nlicense = "mit"\n'
        '[messages]\nuser = "About {{ topic }}"\n[seed]\npath = "rows.jsonl"\n'
    )
    code, err = _run(
        ["run", str(tmp_path / "p.toml"), "--output", str(tmp_path / "out"), "--no-progress"], capsys
    )
    assert code == 0, err
    import pyarrow.parquet as pq

    rejects = pq.read_table(tmp_path / "out" / "rejects").to_pylist()
    assert [r["reason"] for r in rejects] == ["render_error"]
    assert "topic" in rejects[0]["error"]


def test_real_cli_subprocess_reports_config_error(recipe: Path) -> None:
    recipe.write_text(GOOD.replace("{{ topic }}", "{{ topik }}"))
    proc = subprocess.run(
        [sys.executable, "-m", "gen", "run", str(recipe), "--base-url", "http://127.0.0.1:9/v1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == f"gen: error: {recipe}: messages.user: unknown variable 'topik' (defined: topic, who)"
    )
    assert "Traceback" not in proc.stderr


def test_a_typo_in_the_sim_table_is_bad_input(tmp_path: Path, capsys) -> None:
    (tmp_path / "p.toml").write_text(
        'name = "t"\nversion = "1"\nintended_use = "research"\n[teacher]\nlicense = "mit"\n'
        '[messages]\nuser = "Hi {{ x }}"\n[variables]\nx = ["a"]\n[sim]\nlatency_msec = 5\n'
    )
    code, err = _run(["run", str(tmp_path / "p.toml"), "--output", str(tmp_path / "o")], capsys)
    assert code == 2 and "[sim]" in err and "latency_msec" in err
