"""Review: the budget flags take amounts of money, and a value that is none is refused."""

import subprocess
import sys


def test_a_max_usd_or_price_that_is_no_amount_is_refused() -> None:
    """`--max-usd nan` (or a `--price-in nan`) made every budget check false: `gen run` and the eval's
    teacher (`spent + reserved >= nan`) never stopped, the eval's judge (`<= nan`) judged nothing. A
    negative or infinite amount is no limit either. One line naming the flag, exit 2, before anything."""
    cases = [
        ["eval", "/nonexistent", "--student-model", "s", "--student-base-url", "http://127.0.0.1:9/v1",
         "--max-usd", "nan"],
        ["run", "/nonexistent.toml", "--max-usd", "nan"],
        ["run", "/nonexistent.toml", "--max-usd", "-1"],
        ["run", "/nonexistent.toml", "--max-usd", "1", "--price-in", "nan"],
        ["run", "/nonexistent.toml", "--max-usd", "1", "--price-out", "inf"],
        ["run", "/nonexistent.toml", "--max-usd", "1", "--price-cached-in", "nan"],
        ["eval", "/nonexistent", "--student-model", "s", "--student-base-url", "http://127.0.0.1:9/v1",
         "--student-gpu-hour-usd", "nan"],
    ]  # fmt: skip
    for argv in cases:
        done = subprocess.run(
            [sys.executable, "-m", "gen", *argv], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 2, (argv, done.stderr)
        assert "--max-usd" in done.stderr or "-price-" in done.stderr or "gpu-hour" in done.stderr, (
            argv,
            done.stderr,
        )
        assert "Traceback" not in done.stderr
    ok = subprocess.run(
        [sys.executable, "-m", "gen", "run", "/nonexistent.toml", "--max-usd", "0.5", "--price-in", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ok.returncode == 2 and "no such prompt file" in ok.stderr  # amounts accepted: on to the file
