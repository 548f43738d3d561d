"""`[verify] timeout_s` (issue 14): a `python` verifier that never answers makes that answer a
`verification_failed` reject saying so, and the run goes on; before, it stalled every answer after it
(the verification thread stayed in the user's function for good)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from helpers import rows_in
from test_verify import _manifest, _plan, _prompt, _run

HANGING = """
import time
def check(output, reference, row):
    if row["pid"] in ("P001", "P004"):
        while True:  # a loop, not a sleep: it holds its CPU (and the GIL of its process) for good
            time.time()
    return output.rstrip(".").endswith("\\\\boxed{" + reference + "}")
"""


def _ids(prompt: Path, pids: set[str]) -> set[str]:
    from gen.config import load_prompt_file
    from gen.templates import Expansion

    tasks = Expansion(load_prompt_file(prompt), None).tasks()
    return {t.id for t in tasks if json.loads(t.vars_json)["pid"] in pids}


def test_a_hanging_python_verifier_fails_that_answer_and_the_run_goes_on(tmp_path: Path) -> None:
    (tmp_path / "verify.py").write_text(HANGING)
    prompt = _prompt(tmp_path, 'reference = "{{ answer }}"\npython = "verify.py:check"\ntimeout_s = 0.5')
    plan = _plan(prompt, 0.3)
    hung = _ids(prompt, {"P001", "P004"})
    wrong = {t for t, ok in plan.items() if not ok}
    result = _run(prompt, tmp_path / "o")
    assert result.status == "complete"
    assert {r["id"] for r in rows_in(tmp_path / "o")} == set(plan) - wrong - hung
    rejects = {r["id"]: r for r in rows_in(tmp_path / "o", "rejects")}
    assert set(rejects) == wrong | hung
    for tid in hung:
        assert rejects[tid]["reason"] == "verification_failed"
        assert rejects[tid]["error"] == (
            "the verifier verify.py:check gave no verdict within 0.5 s ([verify] timeout_s)"
        )
    verification = _manifest(tmp_path / "o")["verification"]
    assert verification["timeout_s"] == 0.5 and verification["python"] == "verify.py:check"


def test_timeout_s_must_be_positive(tmp_path: Path) -> None:
    (tmp_path / "verify.py").write_text(HANGING)
    prompt = _prompt(tmp_path, 'reference = "{{ answer }}"\npython = "verify.py:check"\ntimeout_s = 0')
    proc = subprocess.run(
        [sys.executable, "-m", "gen", "run", str(prompt), "--output", str(tmp_path / "o"), "--no-progress"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "timeout_s" in proc.stderr, proc.stderr


SLOW_TO_IMPORT = """
import time
time.sleep(1.5)  # a heavy import (sympy, a model): the child's start, not a call
def check(output, reference, row):
    return output.rstrip(".").endswith("\\\\boxed{" + reference + "}")
"""


def test_the_time_limit_is_the_calls_not_the_verifiers_import(tmp_path: Path) -> None:
    """A module slower to import than `timeout_s` still decides every answer: its process's start is
    waited for apart."""
    (tmp_path / "verify.py").write_text(SLOW_TO_IMPORT)
    prompt = _prompt(tmp_path, 'reference = "{{ answer }}"\npython = "verify.py:check"\ntimeout_s = 0.5')
    plan = _plan(prompt, 0.3)
    wrong = {t for t, ok in plan.items() if not ok}
    result = _run(prompt, tmp_path / "o")
    assert result.status == "complete"
    assert {r["id"] for r in rows_in(tmp_path / "o")} == set(plan) - wrong
    assert all("gave no verdict" not in r["error"] for r in rows_in(tmp_path / "o", "rejects"))
