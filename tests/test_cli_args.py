"""The command line's own errors: one line naming the flag and the problem, exit 2; --debug anywhere."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gen.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "prompts" / "quickstart.toml"


def _usage_error(argv: list[str], capsys) -> str:
    """Run argv, expect argparse's exit 2, return stderr (stdout must stay empty)."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err


@pytest.fixture
def bad_prompt(tmp_path: Path) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text("name = [")
    return path


@pytest.mark.parametrize("where", ["after", "before"])
def test_debug_is_accepted_anywhere_and_keeps_the_exit_status(
    where: str, bad_prompt: Path, tmp_path: Path, capsys
) -> None:
    args = ["run", str(bad_prompt), "--output", str(tmp_path / "o")]
    argv = [*args, "--debug"] if where == "after" else ["--debug", *args]
    assert main(argv) == 2  # a configuration error stays exit 2 with a traceback shown
    err = capsys.readouterr().err
    assert "Traceback" in err and "bad.toml" in err


def test_without_debug_a_configuration_error_is_one_line(bad_prompt: Path, tmp_path: Path, capsys) -> None:
    assert main(["run", str(bad_prompt), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["run", "p.toml", "--sample", "3"], "--sample"),  # once silently --samples 3
        (["run", "p.toml", "--max-tok", "3"], "--max-tok"),
        (["refresh", "out", "--mod", "m"], "--mod"),
        (["audit", "out", "--js"], "--js"),
        (["diff", "a", "b", "--js"], "--js"),
        (["sim", "--rate-4", "0.1"], "--rate-4"),
        (["--vers"], "--vers"),
        (["--deb", "audit", "out"], "--deb"),
    ],
)
def test_abbreviated_flags_are_refused_everywhere(argv: list[str], flag: str, capsys) -> None:
    err = _usage_error(argv, capsys)
    assert flag in err


@pytest.mark.parametrize(
    ("argv", "prog", "names"),
    [
        (["run", "p.toml", "--bogus"], "gen run", ["--bogus"]),
        (["audit", "out", "--bogus", "x"], "gen audit", ["--bogus"]),
        (["run", "p.toml", "--samples", "x"], "gen run", ["--samples", "'x'"]),
        (["run", "p.toml", "--executor", "spark"], "gen run", ["--executor", "spark"]),
        (["sim", "--port", "eighty"], "gen sim", ["--port", "eighty"]),
        (["run"], "gen run", ["prompt_file"]),
        (["frobnicate"], "gen", ["frobnicate"]),
        ([], "gen", ["command"]),
    ],
)
def test_usage_errors_are_one_line_from_the_subcommand(
    argv: list[str], prog: str, names: list[str], capsys
) -> None:
    err = _usage_error(argv, capsys)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: "), err
    assert all(n in lines[0] for n in names), err
    assert "usage:" not in err


def test_usage_error_through_the_real_console_script(tmp_path: Path) -> None:
    argv = ["run", str(QUICKSTART), "--sample", "3", "--output", str(tmp_path / "o")]
    proc = subprocess.run(
        [sys.executable, "-m", "gen", *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "gen run: error: unrecognized arguments: --sample 3 (see gen run --help)"
    ]
    assert not (tmp_path / "o").exists()  # nothing ran


def test_help_is_still_full(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: gen run") and "--samples" in out and "--debug" in out
