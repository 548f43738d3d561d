"""A hostile review of this session's `gen eval` and reasoning work (issues 13 and 14): the `[verify]
python` child process, the student's run across SIGKILL and --resume, token F1, the judge's log in
`gen audit`, and reasoning traces in shards. Real runs against the simulator, real subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from test_verify import _prompt

PID_THEN_HANG = """
import os, time
def check(output, reference, row):
    with open({pidfile!r}, "a") as f:
        f.write(f"{{os.getpid()}}\\n")
    while True:
        time.sleep(0.05)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state


def _wait_for(path: Path, limit_s: float = 60) -> str:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{path} never written")


def _gen_run(prompt: Path, out: Path, *more: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.Popen(
        [sys.executable, "-m", "gen", "run", str(prompt), "--output", str(out), "--no-progress", *more],
        cwd=prompt.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip


def test_a_hanging_verifier_child_does_not_outlive_a_sigkilled_run(tmp_path: Path) -> None:
    """SIGKILL of the run while the user's function hangs: the verifier's process must end too, not
    spin on as an orphan (it held its CPU for good)."""
    pidfile = tmp_path / "pids"
    (tmp_path / "verify.py").write_text(PID_THEN_HANG.format(pidfile=str(pidfile)))
    prompt = _prompt(tmp_path, 'reference = "{{ answer }}"\npython = "verify.py:check"\ntimeout_s = 120')
    proc = _gen_run(prompt, tmp_path / "o")
    try:
        child = int(_wait_for(pidfile).split()[0])
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        deadline = time.monotonic() + 20
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child), "the verifier's process outlived the run"
    finally:
        with_pids = pidfile.read_text().split() if pidfile.exists() else []
        for pid in with_pids:
            if _alive(int(pid)):
                os.kill(int(pid), signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()


def test_ctrl_c_while_the_verifier_runs_prints_no_traceback_and_leaves_no_process(tmp_path: Path) -> None:
    """Ctrl-C reaches the whole foreground process group, the verifier's process included: the run
    stops as interrupted with no traceback (from either process), and no verifier process is left."""
    pidfile = tmp_path / "pids"
    (tmp_path / "verify.py").write_text(PID_THEN_HANG.format(pidfile=str(pidfile)))
    prompt = _prompt(tmp_path, 'reference = "{{ answer }}"\npython = "verify.py:check"\ntimeout_s = 120')
    proc = _gen_run(prompt, tmp_path / "o", "--grace-period", "1")
    try:
        child = int(_wait_for(pidfile).split()[0])
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        _, err = proc.communicate(timeout=60)
        assert "Traceback" not in err, err
        assert proc.returncode == 130, (proc.returncode, err)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child)
    finally:
        for pid in pidfile.read_text().split() if pidfile.exists() else []:
            if _alive(int(pid)):
                os.kill(int(pid), signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
