"""A verifier's verdicts from a child process of its own, with a time limit on every call: what the
`[verify] python` function (gen.verify_python) and math-verify (gen.verify_math) both run in.

The child is spawned, not forked (the parent has threads and an event loop), without the parent's
`__main__`. It builds its verdict function once (`load(*args)`, which may import the user's module or
math-verify: waited for apart from any call's limit, up to START_TIMEOUT_S), says it is ready, then
answers requests until the parent hangs up. The parent waits at most `timeout_s` for each verdict: a
child that gives none is killed, that call fails, and the next call starts a new child.

The child ignores SIGINT (Ctrl-C reaches the whole process group: the parent decides what it means, and
kills the child, so an answer being decided does not become an error), and ends when its parent ends (a
SIGKILL included, by the kernel on Linux: a call that computes for ever never reads its pipe again, and
may hold its GIL). `close` kills the child before it waits for a call in progress.

This module imports nothing else of gen but gen.prctl (the standard library's ctypes), so the child
starts with what `load` imports alone.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import types
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from gen.prctl import PR_SET_PDEATHSIG, load_prctl

START_TIMEOUT_S = 120.0  # a child's start and its `load`, apart from any call's time limit
_SHOWN = 200  # characters of an error message sent back
NOT_A_VERDICT = "NotAVerdict"
"""ChildRaised's `kind` when the function returned something other than True or False (its `message`
shows the value and its type)."""


class ChildTimeout(Exception):
    """The child gave no verdict within the call's time limit (and was killed)."""


class ChildDied(Exception):
    """The child ended (out of memory, os._exit, killed, closed), or did not start (`at_start`);
    `detail` says how the pipe saw it."""

    def __init__(self, detail: str, at_start: bool) -> None:
        super().__init__(detail)
        self.detail = detail
        self.at_start = at_start


class ChildRaised(Exception):
    """The verdict function (or `load`, `at_start`) raised: `kind` is the exception's type name,
    `message` its text (at most 200 characters)."""

    def __init__(self, kind: str, message: str, at_start: bool) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message
        self.at_start = at_start


class ChildWorker:
    """One child process that answers `function(*request)`, True or False, where `function = load(*args)`
    is built in the child (`load` must be a module-level function: it is pickled by name); started on
    first use, thread-safe (one call at a time)."""

    def __init__(
        self, load: Callable[..., Callable[..., Any]], args: tuple[Any, ...], name: str, timeout_s: float
    ) -> None:
        self.load = load
        self.args = args
        self.name = name
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._proc: Any = None
        self._conn: Connection | None = None

    @property
    def pid(self) -> int | None:
        """The child's process id, None before its start or after its stop."""
        proc = self._proc
        return proc.pid if proc is not None else None

    def call(self, *request: Any) -> bool:
        """The verdict on `request`. Raises ChildTimeout, ChildDied or ChildRaised. The time limit is the
        call's: a child's start is waited for apart."""
        with self._lock:
            if self._proc is None or not self._proc.is_alive():
                self._start()
            assert self._conn is not None
            try:
                self._conn.send(request)
                if not self._conn.poll(self.timeout_s):
                    self._stop()
                    raise ChildTimeout(f"gave no verdict within {self.timeout_s:g} s")
                ok, error = self._conn.recv()
            except (EOFError, OSError) as e:  # the child died (out of memory, os._exit, a crash, close)
                self._stop()
                raise ChildDied(str(e) or type(e).__name__, at_start=False) from None
        if error is not None:
            raise ChildRaised(*error, at_start=False)
        return bool(ok)

    def close(self) -> None:
        """Stop the child now, a call in progress included (it fails as ChildDied): waiting for the lock
        first waited out a hanging call's whole time limit after Ctrl-C, and the run with it. A later
        call starts a new child."""
        proc = self._proc
        if proc is not None:
            proc.kill()
        with self._lock:
            self._stop()

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_serve, args=(child, self.load, self.args), name=self.name, daemon=True)
        try:
            _spawner().submit(_spawn, proc).result()
        except RuntimeError as e:  # the interpreter is shutting down: no thread may start now
            child.close()
            parent.close()
            raise ChildDied(str(e), at_start=True) from None
        child.close()
        self._proc, self._conn = proc, parent
        try:
            if not parent.poll(START_TIMEOUT_S):
                raise EOFError(f"not started within {START_TIMEOUT_S:g} s")
            failed = parent.recv()
        except (EOFError, OSError) as e:
            self._stop()
            raise ChildDied(str(e) or type(e).__name__, at_start=True) from None
        if failed is not None:
            self._stop()
            raise ChildRaised(*failed, at_start=True)

    def _stop(self) -> None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if proc is not None:
            proc.kill()
            proc.join(5)
        if conn is not None:
            conn.close()


def _serve(conn: Connection, load: Callable[..., Callable[..., Any]], args: tuple[Any, ...]) -> None:
    """The child: build the verdict function, then answer requests until the parent hangs up."""
    # Ctrl-C reaches the whole process group: the parent decides (and kills this process), so a call in
    # progress does not die with a traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent()
    # What the user's code prints goes to stderr: gen's stdout, which this process shares, is gen's own
    # (`gen plan --json`). The descriptor too, for what writes to it from C or a subprocess.
    with contextlib.suppress(OSError):  # no stderr to send it to: then it stays where it was
        os.dup2(2, 1)
        sys.stdout = sys.stderr
    try:
        function = load(*args)
    except BaseException as e:  # the user's module can raise anything, SystemExit included
        conn.send((type(e).__name__, _message(e)))
        return
    conn.send(None)  # ready: the calls' time limits start now
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        try:
            verdict = function(*request)
        except BaseException as e:  # SystemExit and KeyboardInterrupt too (the user's): this request fails
            conn.send((False, (type(e).__name__, _message(e))))
            continue
        if _is_verdict(verdict):
            conn.send((bool(verdict), None))
        else:  # "no" is true, None false: taken for its truth, a value that is no verdict decided silently
            conn.send((False, (NOT_A_VERDICT, f"{_shown(verdict)} ({type(verdict).__name__})")))


def _is_verdict(value: Any) -> bool:
    """True or False: Python's, numpy's (what a comparison of numpy values gives) or sympy's (Eq)."""
    kind = type(value)
    if kind is bool:
        return True
    module, name = kind.__module__, kind.__name__
    return (module == "numpy" and name in ("bool", "bool_")) or (
        module == "sympy.logic.boolalg" and name in ("BooleanTrue", "BooleanFalse")
    )


def _message(e: BaseException) -> str:
    try:
        return str(e)[:_SHOWN]
    except BaseException as inner:  # the user's __str__ can raise too
        return f"(its message could not be read: {type(inner).__name__})"


def _shown(value: Any) -> str:
    try:
        text = repr(value)
    except BaseException:  # the user's __repr__ can raise too
        return "a value"
    return text if len(text) <= 100 else text[:100] + "..."


_SPAWNER: tuple[int, Any] | None = None  # (pid, executor): a forked process needs a thread of its own
_SPAWNER_LOCK = threading.Lock()


def _spawner() -> Any:
    """The one thread that starts children, for as long as this process lives: on Linux the child's
    kernel-side parent is the thread that forked it (PR_SET_PDEATHSIG fires when that THREAD ends), and
    a worker is thread-safe, so a calling thread that ended killed the child under the next caller."""
    global _SPAWNER
    with _SPAWNER_LOCK:
        if _SPAWNER is None or _SPAWNER[0] != os.getpid():
            from concurrent.futures import ThreadPoolExecutor  # not in the child: it starts lean

            _SPAWNER = (os.getpid(), ThreadPoolExecutor(1, thread_name_prefix="gen-verify-spawn"))
        return _SPAWNER[1]


def _spawn(proc: Any) -> None:
    with _main_left_alone():
        proc.start()


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
    pipe's end, and would spin on as an orphan.

    On Linux the kernel does it (PR_SET_PDEATHSIG with SIGKILL): a watcher thread cannot run while the
    verdict function holds the GIL in C code (a regular expression that backtracks, sympy's integer
    power), and CI once saw math-verify's child outlive its SIGKILLed parent so. The kernel's parent is
    the thread that started the child: ChildWorker starts every child from one thread that lives as
    long as the process (_spawner). Elsewhere, a watcher thread does what it can."""
    parent = multiprocessing.parent_process()
    if parent is None or parent.sentinel is None:
        return
    prctl = load_prctl()
    if prctl is not None and prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
        if os.getppid() != parent.pid:  # the parent ended before the kernel was told
            os._exit(1)
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="gen-verify-parent", daemon=True).start()


__all__ = ["NOT_A_VERDICT", "START_TIMEOUT_S", "ChildDied", "ChildRaised", "ChildTimeout", "ChildWorker"]
