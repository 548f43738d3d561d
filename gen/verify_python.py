"""The user's `[verify] python` function in a process of its own, with a time limit on every call.

A verifier is the user's code, and it may never answer (an external tool that hangs, a loop on one odd
answer): on the run's verification thread it stalled every answer after it, and a thread cannot be
stopped. So the function runs in a child process (spawned, not forked: the parent has threads and an
event loop), and the parent waits at most `timeout_s` (`[verify] timeout_s`) for each verdict: a child
that gives none is killed, that answer fails, and the next answer starts a new child, which imports the
file again. The parent has imported the file once too, before any request, to refuse a broken one in one
line (gen.verify): the module's top level runs in both processes.

This module imports nothing of gen, so the child starts with the user's module alone.
"""

from __future__ import annotations

import contextlib
import importlib.util
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import types
from multiprocessing.connection import Connection
from typing import Any

DEFAULT_TIMEOUT_S = 5.0  # `[verify] timeout_s`: seconds one call may take
START_TIMEOUT_S = 120.0  # a child's start and the module's import, apart from any call's time limit
_SHOWN = 200  # characters of an error message sent back


class VerifierTimeout(Exception):
    """The function gave no verdict within its time limit (and its process was killed)."""


class VerifierRaised(Exception):
    """The function raised: `kind` is the exception's type name, `message` its text."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


class PythonWorker:
    """One child process that calls `function(output, reference, row)` from the file at `path`; started
    on first use, thread-safe."""

    def __init__(self, path: str, name: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.path = path
        self.name = name
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._proc: Any = None
        self._conn: Connection | None = None

    def call(self, output: Any, reference: str, row: dict[str, Any]) -> bool:
        """The function's verdict (its return value's truth). Raises VerifierTimeout, or VerifierRaised
        with what the function (or its module's import in the child) raised. The time limit is the
        call's: a child's start (an interpreter, the user's imports) is waited for apart."""
        with self._lock:
            if self._proc is None or not self._proc.is_alive():
                self._start()
            assert self._conn is not None
            try:
                self._conn.send((output, reference, row))
                if not self._conn.poll(self.timeout_s):
                    self._stop()
                    raise VerifierTimeout(f"gave no verdict within {self.timeout_s:g} s")
                ok, error = self._conn.recv()
            except (EOFError, OSError) as e:  # the child died (out of memory, os._exit, a crash)
                self._stop()
                raise VerifierRaised("ProcessDied", f"its process ended: {e or type(e).__name__}") from None
        if error is not None:
            raise VerifierRaised(*error)
        return bool(ok)

    def close(self) -> None:
        """Stop the child now, a call in progress included (it fails as ProcessDied): waiting for the lock
        first waited out a hanging call's whole time limit after Ctrl-C, and the run with it."""
        proc = self._proc
        if proc is not None:
            proc.kill()
        with self._lock:
            self._stop()

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(
            target=_serve, args=(child, self.path, self.name), name="gen-verify-python", daemon=True
        )
        with _main_left_alone():
            proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        try:
            if not parent.poll(START_TIMEOUT_S):
                raise EOFError(f"not started within {START_TIMEOUT_S:g} s")
            failed = parent.recv()
        except (EOFError, OSError) as e:
            self._stop()
            why = f"its process did not start: {e or type(e).__name__}"
            raise VerifierRaised("ProcessDied", why) from None
        if failed is not None:
            self._stop()
            raise VerifierRaised(*failed)

    def _stop(self) -> None:
        stop_child(self._proc, self._conn)
        self._proc = self._conn = None


def stop_child(proc: Any, conn: Connection | None) -> None:
    """Kill a verifier's child process (python or math) and close its end of the pipe."""
    if proc is not None:
        proc.kill()
        proc.join(5)
    if conn is not None:
        conn.close()


def _serve(conn: Connection, path: str, name: str) -> None:
    """The child: import the function, then answer (output, reference, row) until the parent hangs up."""
    # Ctrl-C reaches the whole process group: the parent decides (and kills this process), so a call in
    # progress does not die with a traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent()
    try:
        function = _load(path, name)
    except BaseException as e:  # the user's module can raise anything, SystemExit included
        conn.send((type(e).__name__, f"importing {path}: {str(e)[:_SHOWN]}"))
        return
    conn.send(None)  # ready: the calls' time limits start now
    while True:
        try:
            output, reference, row = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        try:
            conn.send((bool(function(output, reference, row)), None))
        except Exception as e:  # this answer fails with the error; the next one is asked as usual
            conn.send((False, (type(e).__name__, str(e)[:_SHOWN])))


@contextlib.contextmanager
def _main_left_alone() -> Any:
    """Spawn without the parent's `__main__`: multiprocessing's spawn runs the parent's main script again
    in the child, and a user's script that calls `gen.run(...)` at its top level (no `__main__` guard)
    then began a whole second run there, into the same output. The child needs nothing of it."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")  # no __file__, no __spec__: nothing to run
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


def _exit_with_parent() -> None:
    """End this process when the parent's ends (a SIGKILL included): a call that hangs never reads the
    pipe's end, and would spin on as an orphan."""
    parent = multiprocessing.parent_process()
    if parent is None or parent.sentinel is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="gen-verify-parent", daemon=True).start()


def _load(path: str, name: str) -> Any:
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


__all__ = ["DEFAULT_TIMEOUT_S", "START_TIMEOUT_S", "PythonWorker", "VerifierRaised", "VerifierTimeout"]
