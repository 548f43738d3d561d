"""Retry policy as data, applied with tenacity around any teacher call.

Exponential backoff with full jitter, never shorter than what the server asked for in Retry-After;
only errors marked retryable are retried (429, 5xx, timeouts, dropped connections).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from gen.errors import FatalTeacherError, TeacherError

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryPolicy:
    max_retries: int = 6
    initial_s: float = 0.5
    max_wait_s: float = 60.0
    multiplier: float = 2.0

    def wait_for(self, retry_state: RetryCallState) -> float:
        """Full-jitter exponential backoff, raised to the server's Retry-After when it gave one."""
        attempt = retry_state.attempt_number
        cap = min(self.max_wait_s, self.initial_s * self.multiplier ** (attempt - 1))
        wait = random.uniform(0, cap)
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, TeacherError) and exc.retry_after is not None:
            wait = max(wait, min(exc.retry_after, self.max_wait_s))
        return wait


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, TeacherError) and exc.retryable and not isinstance(exc, FatalTeacherError)


async def with_retries(
    call: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    on_retry: Callable[[TeacherError], None] | None = None,
    sleep: Callable[[float], Awaitable[None]] | None = None,
) -> T:
    """Run `call`, retrying retryable TeacherErrors; the last error is raised when retries run out."""

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None:
            exc = state.outcome.exception()
            if isinstance(exc, TeacherError):
                on_retry(exc)

    kwargs = {"sleep": sleep} if sleep is not None else {}
    retrying = AsyncRetrying(
        stop=stop_after_attempt(policy.max_retries + 1),
        wait=policy.wait_for,
        retry=retry_if_exception(_retryable),
        before_sleep=before_sleep,
        reraise=True,
        **kwargs,
    )

    async def attempt() -> T:  # tenacity awaits only what it sees as a coroutine function
        return await call()

    return await retrying(attempt)
