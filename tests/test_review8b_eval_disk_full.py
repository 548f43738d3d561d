"""Review: `gen eval` writes the student's queued answers before each request leaves (gen.eval_run
StudentRun._reserve); a write that fails then (a full disk) must surface as in `gen run`: one clear line
naming the output, no traceback, a non-zero exit, and a resume that keeps every answer written and asks
only the rest. The child gets a sitecustomize whose journal writes fail with ENOSPC after a few."""

from __future__ import annotations

import errno
import subprocess
from pathlib import Path

from test_eval_journal_order import N, student_eval

ROOT = Path(__file__).resolve().parents[1]

FULL_AFTER = """
import errno
import gen.ledger as ledger

_writev = ledger.Journal._writev
_calls = [0]


def _full(self, chunk):
    _calls[0] += 1
    if _calls[0] > 6:
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
    return _writev(self, chunk)


ledger.Journal._writev = _full
"""


def test_a_full_disk_at_a_students_request_is_one_line_and_the_resume_loses_nothing(
    tmp_path: Path, sim_server
) -> None:
    assert errno.ENOSPC
    server = sim_server(model="student-1")
    out, args, env = student_eval(tmp_path, server, FULL_AFTER)
    full = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert full.returncode not in (0, 2), full.stderr
    assert "Traceback" not in full.stderr, full.stderr
    lines = [line for line in full.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "No space left on device" in lines[0], full.stderr
    # gen eval's own advice: running the same command again would begin a new evaluation, paying again.
    eval_dir = next((out / "evals").iterdir())
    assert f"--resume {eval_dir}" in lines[0] and "same command" not in lines[0], lines[0]
    asked = server.stats()["requests"]
    assert 1 <= asked < N
    env["PYTHONPATH"] = str(ROOT)
    resumed = subprocess.run(
        [*args, "--resume", str(eval_dir)], env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    # One request at a time: only the one whose answer could not be written is asked twice.
    assert server.stats()["requests"] <= N + 1, (asked, server.stats()["requests"])


DISK_FULL = (
    FULL_AFTER
    + """
import gen.shards as shards

_atomic = shards.atomic_write_bytes


def _atomic_full(path, data):
    if _calls[0] > 6:  # the disk is full: no shard or manifest can be written either
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    return _atomic(path, data)


shards.atomic_write_bytes = _atomic_full
"""
)


def test_a_full_disk_before_any_checkpoint_keeps_the_journaled_answers(tmp_path: Path, sim_server) -> None:
    # The first checkpoint cannot be written either: the evaluation directory holds no answers' manifest,
    # but its journal holds the answers written before the disk filled: paid for, they must be kept.
    server = sim_server(model="student-1")
    out, args, env = student_eval(tmp_path, server, DISK_FULL)
    full = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert full.returncode not in (0, 2) and "Traceback" not in full.stderr, full.stderr
    asked = server.stats()["requests"]
    assert 4 <= asked < N
    dirs = list((out / "evals").iterdir()) if (out / "evals").is_dir() else []
    assert len(dirs) == 1, "the evaluation directory (its journal) was removed"
    assert f"--resume {dirs[0]}" in full.stderr, full.stderr
    env["PYTHONPATH"] = str(ROOT)
    resumed = subprocess.run([*args, "--resume", str(dirs[0])], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert server.stats()["requests"] <= N + 1, (asked, server.stats()["requests"])
