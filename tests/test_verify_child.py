"""gen.verify_child: a verifier's child process ends with its parent, a SIGKILL included, even while the
child holds its GIL in C code for good (a regular expression that backtracks for ever, sympy's integer
power). A watcher thread in the child cannot run then; the CI run that found this had math-verify's
child outlive its SIGKILLed parent. Real processes and /proc."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

from helpers import alive, child_ends_with_parent

# backtracks for ever inside the C regex engine, which never releases the GIL (no bytecode runs)
GIL_HOLDING = """
import re
def check(output, reference, row):
    return re.fullmatch(r"(a+)+b", "a" * 64) is not None
"""

PARENT = """
import os
from gen.verify_python import PythonWorker

worker = PythonWorker(VERIFY, "check", timeout_s=600)
worker.call("x", "x", {})  # hangs: the parent waits 600 s
"""


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return ""
    return stat[stat.rindex(")") + 2]


def _spawned_child(parent: int, limit_s: float = 60) -> int:
    """The parent's spawned verifier child, once it computes (on a CPU, not reading its pipe)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        for task in Path(f"/proc/{parent}/task").iterdir():
            for pid in (task / "children").read_text().split():
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes() if alive(int(pid)) else b""
                if b"spawn_main" in cmdline and _state(int(pid)) == "R":
                    time.sleep(0.5)  # well inside the regular expression
                    return int(pid)
        time.sleep(0.05)
    raise AssertionError("the verifier's child never computed")


def test_a_child_holding_its_gil_does_not_outlive_a_sigkilled_parent(tmp_path: Path) -> None:
    (tmp_path / "verify.py").write_text(GIL_HOLDING)
    script = textwrap.dedent(PARENT).replace("VERIFY", repr(str(tmp_path / "verify.py")))
    ended = child_ends_with_parent(script, lambda parent: _spawned_child(parent.pid))
    assert ended, "the verifier's process outlived its parent"
