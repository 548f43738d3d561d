"""math-verify in a process of its own, for `[verify] method = "math"`.

The teacher is untrusted: an answer such as `\\boxed{10^{10^{10}}}` makes sympy compute for ever.
math-verify bounds its work with `signal.alarm`, which works only in a process's main thread, not on
the run's verification thread. So the comparison runs in a child process's main thread, with
math-verify's own timeouts (`MATH_TIMEOUT_S`), and the parent waits at most `HARD_TIMEOUT_S` for a
verdict: a child that gives none is killed (the answer fails) and the next answer starts a new one.

This module imports nothing of gen, so the child (spawned, not forked: the parent has threads and an
event loop) starts with math-verify alone.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from functools import lru_cache
from multiprocessing.connection import Connection
from typing import Any

MATH_TIMEOUT_S = 5  # math-verify's parse and verify timeouts, in the child
HARD_TIMEOUT_S = 30.0  # no verdict by then: the child is killed


class MathTimeout(Exception):
    """The child gave no verdict within HARD_TIMEOUT_S (and was killed)."""


class MathWorker:
    """One child process that decides `equal(answer, reference)`; started on first use, thread-safe."""

    def __init__(
        self, hard_timeout_s: float = HARD_TIMEOUT_S, timeout_s: int | None = MATH_TIMEOUT_S
    ) -> None:
        self.hard_timeout_s = hard_timeout_s
        self.timeout_s = timeout_s  # math-verify's own, in the child (None: none)
        self._lock = threading.Lock()
        self._proc: Any = None
        self._conn: Connection | None = None

    def equal(self, answer: str, reference: str) -> bool:
        """Whether math-verify finds `answer` (LaTeX, `\\boxed{}`...) equal to `reference`. Raises
        MathTimeout, or RuntimeError with math-verify's error."""
        with self._lock:
            if self._proc is None or not self._proc.is_alive():
                self._start()
            assert self._conn is not None
            try:
                self._conn.send((answer, reference))
                if not self._conn.poll(self.hard_timeout_s):
                    self._stop()
                    raise MathTimeout(f"math-verify gave no verdict within {self.hard_timeout_s:g} s")
                ok, error = self._conn.recv()
            except (EOFError, OSError) as e:  # the child died (out of memory, killed)
                self._stop()
                raise RuntimeError(f"the math-verify process died: {e or type(e).__name__}") from None
        if error is not None:
            raise RuntimeError(error)
        return bool(ok)

    def close(self) -> None:
        with self._lock:
            self._stop()

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_serve, args=(child, self.timeout_s), name="gen-math-verify", daemon=True)
        from gen.verify_python import _main_left_alone  # the user's script is not run again

        with _main_left_alone():
            proc.start()
        child.close()
        self._proc, self._conn = proc, parent

    def _stop(self) -> None:
        from gen.verify_python import stop_child

        stop_child(self._proc, self._conn)
        self._proc = self._conn = None


def _serve(conn: Connection, timeout_s: int | None) -> None:
    """The child: answer (answer, reference) pairs until the parent hangs up."""
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    while True:
        try:
            answer, reference = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        try:
            conn.send((decide(answer, reference, timeout_s), None))
        except Exception as e:  # math-verify's own failure: this answer fails with it
            conn.send((False, f"{type(e).__name__}: {str(e)[:200]}"))


def decide(answer: str, reference: str, timeout_s: int | None = MATH_TIMEOUT_S) -> bool:
    """math-verify's verdict, in this process (its timeouts need the main thread; None: none)."""
    from math_verify import parse, verify

    return bool(
        verify(
            _gold(reference, timeout_s), parse(answer, parsing_timeout=timeout_s), timeout_seconds=timeout_s
        )
    )  # type: ignore[arg-type]


@lru_cache(maxsize=8192)
def _gold(reference: str, timeout_s: int | None) -> Any:
    """A reference parsed (a few per input: worth keeping)."""
    from math_verify import parse

    text = reference if "$" in reference or "\\boxed" in reference else f"${reference}$"
    return parse(text, parsing_timeout=timeout_s)  # type: ignore[arg-type]


__all__ = ["HARD_TIMEOUT_S", "MATH_TIMEOUT_S", "MathTimeout", "MathWorker", "decide"]
