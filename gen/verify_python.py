"""The user's `[verify] python` function in a process of its own, with a time limit on every call.

A verifier is the user's code, and it may never answer (an external tool that hangs, a loop on one odd
answer): on the run's verification thread it stalled every answer after it, and a thread cannot be
stopped. So the function runs in a child process (spawned, not forked: the parent has threads and an
event loop), and the parent waits at most `timeout_s` (`[verify] timeout_s`) for each verdict: a child
that gives none is killed, that answer fails, and the next answer starts a new child, which imports the
file again. The parent has imported the file once too, before any request, to refuse a broken one in one
line (gen.verify): the module's top level runs in both processes.

The child process itself (spawn, time limits, Ctrl-C, a parent's death) is gen.verify_child's. This
module imports nothing else of gen, so the child starts with the user's module alone.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

from gen.verify_child import (
    NOT_A_VERDICT,
    START_TIMEOUT_S,
    ChildDied,
    ChildRaised,
    ChildTimeout,
    ChildWorker,
)

DEFAULT_TIMEOUT_S = 5.0  # `[verify] timeout_s`: seconds one call may take


class VerifierTimeout(Exception):
    """The function gave no verdict within its time limit (and its process was killed)."""


class VerifierRaised(Exception):
    """The function raised: `kind` is the exception's type name, `message` its text."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


class PythonWorker:
    """One child process (gen.verify_child) that calls `function(output, reference, row)` from the file
    at `path`; started on first use, thread-safe."""

    def __init__(self, path: str, name: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.path = path
        self.name = name
        self.timeout_s = timeout_s
        self._child = ChildWorker(_load, (path, name), "gen-verify-python", timeout_s)

    @property
    def pid(self) -> int | None:
        """The child's process id, None while none runs."""
        return self._child.pid

    def call(self, output: Any, reference: str, row: dict[str, Any]) -> bool:
        """The function's verdict, True or False. Raises VerifierTimeout, or VerifierRaised with what the
        function (or its module's import in the child) raised, or kind NOT_A_VERDICT and the value it
        returned instead. The time limit is the call's: a child's start (an interpreter, the user's
        imports) is waited for apart."""
        try:
            return self._child.call(output, reference, row)
        except ChildTimeout as e:
            raise VerifierTimeout(str(e)) from None
        except ChildDied as e:
            how = "did not start" if e.at_start else "ended"
            raise VerifierRaised("ProcessDied", f"its process {how}: {e.detail}") from None
        except ChildRaised as e:
            message = f"importing {self.path}: {e.message}" if e.at_start else e.message
            raise VerifierRaised(e.kind, message) from None

    def close(self) -> None:
        """Stop the child now, a call in progress included (it fails as ProcessDied), without waiting out
        a hanging call's time limit."""
        self._child.close()


def _load(path: str, name: str) -> Any:
    """In the child: the user's function (ChildWorker's `load`)."""
    spec = importlib.util.spec_from_file_location("gen_user_verifier", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_user_verifier"] = module
    spec.loader.exec_module(module)
    function = getattr(module, name, None)
    if not callable(function):
        raise AttributeError(f"no function {name!r}")
    return function


__all__ = [
    "DEFAULT_TIMEOUT_S",
    "NOT_A_VERDICT",
    "START_TIMEOUT_S",
    "PythonWorker",
    "VerifierRaised",
    "VerifierTimeout",
]
