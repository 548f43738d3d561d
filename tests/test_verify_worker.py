"""The verifiers' child processes (gen.verify_math's MathWorker, as gen.verify_python's PythonWorker):
Ctrl-C reaches the whole process group, the child included, and must not turn the answer it is deciding
into an error (the parent decides what an interrupt means); a child must not outlive a SIGKILLed parent
while it computes; and closing a worker while a call hangs must stop it now, not after the call's time
limit. Real child processes, signals and /proc throughout."""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("math_verify")

from helpers import alive, child_ends_with_parent

from gen.verify_math import MathWorker  # noqa: E402 (after the skip)

SLOW = "\\boxed{10^{10^{10}}}"  # sympy computes for ever; math-verify's own limit (timeout_s) stops it


def _children(pid: int) -> set[int]:
    """The spawned multiprocessing children of `pid` (not its resource tracker)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with open(task / "children") as f:
            found.update(int(p) for p in f.read().split())
    return {p for p in found if b"spawn_main" in _cmdline(p)}


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return b""


def _computing(pid: int, limit_s: float = 60) -> None:
    """Wait until `pid` is on a CPU (in sympy, not waiting on its pipe)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat[stat.rindex(")") + 2] == "R":
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} never computed")


def _started(worker: MathWorker) -> int:
    """Start the worker's child (a first verdict) and return its pid."""
    before = _children(os.getpid())
    assert worker.equal("\\boxed{3}", "3") is True
    (child,) = _children(os.getpid()) - before
    return child


def _ask_slow(worker: MathWorker) -> tuple[list[object], threading.Thread]:
    """A comparison math-verify computes for ever, asked in a thread (started): its verdict or error
    lands in the list."""
    got: list[object] = []

    def ask() -> None:
        try:
            got.append(worker.equal(SLOW, "3"))
        except Exception as e:
            got.append(e)

    asking = threading.Thread(target=ask, daemon=True)
    asking.start()
    return got, asking


def test_ctrl_c_while_math_verify_computes_does_not_make_that_answer_an_error() -> None:
    """SIGINT (a terminal's Ctrl-C reaches the child too) in the middle of a comparison: the child goes
    on, and the answer gets its verdict from math-verify (False: the time limit), not an error."""
    worker = MathWorker(timeout_s=3)
    try:
        child = _started(worker)
        got, asking = _ask_slow(worker)
        _computing(child)
        os.kill(child, signal.SIGINT)
        asking.join(60)
        assert got == [False]
        assert alive(child)
        assert worker.equal("\\boxed{\\frac{6}{2}}", "3") is True
        assert _children(os.getpid()) >= {child}  # the same process answered: nothing was restarted
    finally:
        worker.close()


PARENT = """
import os, sys
from pathlib import Path
from gen.verify_math import MathWorker

def children():
    found = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        found.update(int(p) for p in (task / "children").read_text().split())
    return {p for p in found if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()}

worker = MathWorker(hard_timeout_s=600, timeout_s=None)
before = children()
assert worker.equal("\\\\boxed{3}", "3")
(child,) = children() - before
print(child, flush=True)
worker.equal("SLOW", "3")  # hangs: no time limit in the child, 600 s in the parent
"""


def test_a_math_child_does_not_outlive_a_sigkilled_parent() -> None:
    """The parent is SIGKILLed while its child computes: the child never reads its pipe again, so it
    must notice its parent's end some other way, not spin on as an orphan."""
    script = textwrap.dedent(PARENT).replace("SLOW", SLOW.replace("\\", "\\\\"))

    def computing_child(parent: subprocess.Popen[str]) -> int:
        line = parent.stdout.readline()  # type: ignore[union-attr]
        assert line.strip(), "the parent script printed no child"
        _computing(int(line))
        return int(line)

    assert child_ends_with_parent(script, computing_child), "the math-verify process outlived its parent"


def test_close_while_a_call_hangs_stops_the_child_now() -> None:
    """Closing (a run's end after Ctrl-C) while a call hangs kills the child at once: the call fails as
    the process's death, and close does not wait out the call's time limit (here 600 s)."""
    worker = MathWorker(hard_timeout_s=600, timeout_s=None)
    child = _started(worker)
    got, asking = _ask_slow(worker)
    try:
        _computing(child)
        closing = threading.Thread(target=worker.close, daemon=True)
        closing.start()
        closing.join(60)  # far below the call's 600 s
        assert not closing.is_alive(), "close waited for the hanging call"
        asking.join(60)
        assert not alive(child)
        assert len(got) == 1 and isinstance(got[0], RuntimeError)
        assert str(got[0]).startswith("the math-verify process died: "), got[0]
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)
    # a closed worker starts a new child when asked again
    try:
        assert worker.equal("\\boxed{0.5}", "\\frac{1}{2}") is True
    finally:
        worker.close()
