"""math-verify in a process of its own, for `[verify] method = "math"`.

The teacher is untrusted: an answer such as `\\boxed{10^{10^{10}}}` makes sympy compute for ever.
math-verify bounds its work with `signal.alarm`, which works only in a process's main thread, not on
the run's verification thread. So the comparison runs in a child process's main thread, with
math-verify's own timeouts (`MATH_TIMEOUT_S`), and the parent waits at most `HARD_TIMEOUT_S` for a
verdict: a child that gives none is killed (the answer fails) and the next answer starts a new one.

The child process itself (spawned, not forked: the parent has threads and an event loop; Ctrl-C and a
parent's death) is gen.verify_child's. This module imports nothing else of gen, so the child starts with
math-verify alone.
"""

from __future__ import annotations

import logging
from functools import lru_cache, partial
from typing import Any

from gen.verify_child import ChildDied, ChildRaised, ChildTimeout, ChildWorker

MATH_TIMEOUT_S = 5  # math-verify's parse and verify timeouts, in the child
HARD_TIMEOUT_S = 30.0  # no verdict by then: the child is killed


class MathTimeout(Exception):
    """The child gave no verdict within HARD_TIMEOUT_S (and was killed)."""


class MathWorker:
    """One child process (gen.verify_child) that decides `equal(answer, reference)`; started on first
    use, thread-safe."""

    def __init__(
        self, hard_timeout_s: float = HARD_TIMEOUT_S, timeout_s: int | None = MATH_TIMEOUT_S
    ) -> None:
        self.hard_timeout_s = hard_timeout_s
        self.timeout_s = timeout_s  # math-verify's own, in the child (None: none)
        self._child = ChildWorker(_load, (timeout_s,), "gen-math-verify", hard_timeout_s)

    @property
    def pid(self) -> int | None:
        """The child's process id, None while none runs."""
        return self._child.pid

    def equal(self, answer: str, reference: str) -> bool:
        """Whether math-verify finds `answer` (LaTeX, `\\boxed{}`...) equal to `reference`. Raises
        MathTimeout, or RuntimeError with math-verify's error."""
        try:
            return self._child.call(answer, reference)
        except ChildTimeout:
            raise MathTimeout(f"math-verify gave no verdict within {self.hard_timeout_s:g} s") from None
        except ChildDied as e:
            how = "did not start" if e.at_start else "died"
            raise RuntimeError(f"the math-verify process {how}: {e.detail}") from None
        except ChildRaised as e:
            raise RuntimeError(f"{e.kind}: {e.message}") from None

    def close(self) -> None:
        """Stop the child now, a call in progress included (it fails as the process's death)."""
        self._child.close()


def _load(timeout_s: int | None) -> Any:
    """In the child: import math-verify (its start, not a call's time), then decide with it."""
    import math_verify  # noqa: F401

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    return partial(decide, timeout_s=timeout_s)


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
