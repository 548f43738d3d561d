"""Rate limits that wrap a teacher: smooth RPM/TPM pacing, adaptive concurrency, server back-pressure.

- RPM and TPM are paced with GCRA (a token bucket seen as "theoretical arrival time"): requests leave
  evenly spaced, with a burst of at most one request, so a limit that the server checks per second or per
  minute is never exceeded by a burst at start-up.
- TPM reserves an estimate (prompt characters / 4 + max_tokens) before the request and corrects it with
  the usage the teacher reports.
- On a 429 the in-flight limit is halved (at most once a second) and grows back by one request per
  `limit` successes (AIMD), and dispatch pauses until the server's Retry-After or rate-limit reset.
- A teacher module never sleeps or counts: `LimitedTeacher` does it around any teacher.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

from gen.errors import TeacherError
from gen.teachers.base import Completion, Teacher

Clock = Callable[[], float]
RPM_HEADROOM = 0.97
Sleep = Callable[[float], Awaitable[None]]


class Pacer:
    """GCRA pacing at `rate` units a second; `burst` units may leave back to back."""

    def __init__(
        self, rate: float, *, burst: float = 1.0, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep
    ):
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = burst
        self.tolerance = burst / rate
        self._tat = 0.0  # theoretical arrival time of the next unit
        self._clock = clock
        self._sleep = sleep

    def reserve(self, amount: float = 1.0) -> float:
        """Book `amount` units; returns the seconds to wait before using them."""
        now = self._clock()
        self._tat = max(self._tat, now) + amount / self.rate
        return max(0.0, self._tat - self.tolerance - now)

    async def acquire(self, amount: float = 1.0) -> None:
        wait = self.reserve(amount)
        if wait > 0:
            await self._sleep(wait)

    def adjust(self, amount: float) -> None:
        """Correct an earlier reservation by `amount` units (negative gives units back)."""
        self._tat += amount / self.rate

    def set_rate(self, rate: float, *, burst: float | None = None) -> None:
        """Pace at `rate` from now on. Units already booked keep their times: after a cut, the old rate
        goes on for `backlog()` seconds (what gen.cluster waits before it hands the difference on)."""
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        if burst is not None:
            self.burst = burst
        self.tolerance = self.burst / rate

    def backlog(self) -> float:
        """Seconds until the last unit booked so far may leave."""
        return max(0.0, self._tat - self.tolerance - self._clock())


class AdaptiveLimit:
    """In-flight requests allowed right now: halved on throttling, recovered additively (AIMD).

    Hand-written rather than an asyncio.Condition: acquiring a free slot is a comparison and an
    increment, with no lock round trip, since it happens on every request.
    """

    def __init__(
        self, maximum: int, *, minimum: int = 1, cooldown_s: float = 1.0, clock: Clock = time.monotonic
    ):
        self.maximum = maximum
        self.minimum = minimum
        self.limit = float(maximum)
        self.in_flight = 0
        self.cuts = 0
        self._cooldown = cooldown_s
        self._last_cut = -1e18
        self._clock = clock
        self._waiters: deque[asyncio.Future[None]] = deque()

    def _allowed(self) -> int:
        return max(self.minimum, int(self.limit))

    async def acquire(self) -> None:
        if self.in_flight < self._allowed() and not self._waiters:
            self.in_flight += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut  # the slot was handed over by release(): in_flight already counts it
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release()  # handed a slot while being cancelled: give it back
            else:
                self._waiters.remove(fut)
            raise

    def release(self) -> None:
        self.in_flight -= 1
        while self._waiters and self.in_flight < self._allowed():
            fut = self._waiters.popleft()
            if not fut.done():
                self.in_flight += 1
                fut.set_result(None)

    def on_success(self) -> None:
        if self.limit < self.maximum:
            self.limit = min(self.maximum, self.limit + 1.0 / self.limit)

    def on_throttle(self) -> None:
        now = self._clock()
        if now - self._last_cut >= self._cooldown:  # one cut per burst of 429s, not one per request
            self._last_cut = now
            self.limit = max(float(self.minimum), self.limit / 2)
            self.cuts += 1


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_reset(value: str | None, now: float | None = None) -> float | None:
    """Seconds until a rate-limit window resets: OpenAI's '6m0s' / '20ms' / '1.5s', or an RFC 3339 time."""
    if not value:
        return None
    value = value.strip()
    parts = _DURATION.findall(value)
    if parts and "".join(n + u for n, u in parts) == value:
        scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
        return sum(float(n) * scale[u] for n, u in parts)
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return max(0.0, when.timestamp() - (now if now is not None else time.time()))


def server_pause(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asks us to hold all dispatch: its request budget is spent until a reset."""
    for remaining, reset in (
        ("x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"),
        ("x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"),
        ("anthropic-ratelimit-requests-remaining", "anthropic-ratelimit-requests-reset"),
        ("anthropic-ratelimit-tokens-remaining", "anthropic-ratelimit-tokens-reset"),
    ):
        left = headers.get(remaining)
        if left is not None and left.strip() in ("0", "0.0"):
            return parse_reset(headers.get(reset))
    return None


class Limiter:
    """Everything that decides when the next request may leave."""

    def __init__(
        self,
        *,
        max_concurrency: int,
        rpm: float | None = None,
        tpm: float | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.concurrency = AdaptiveLimit(max_concurrency, clock=clock)
        # Paced 3% under the limit: requests leave evenly, but network jitter can bunch two of them at
        # the server, and a server that counts per second would refuse the one that lands early.
        self.rpm = Pacer(rpm / 60.0 * RPM_HEADROOM, clock=clock, sleep=sleep) if rpm else None
        # A token bucket that admits one second's worth at once, and never less than one large request.
        self.tpm = Pacer(tpm / 60.0, burst=tpm / 60.0, clock=clock, sleep=sleep) if tpm else None
        self._paused_until = 0.0
        self._clock = clock
        self._sleep = sleep
        self.throttled = 0

    def set_rates(self, *, rpm: float | None, tpm: float | None) -> None:
        """Change the RPM and TPM limits (None: unlimited) while requests flow: how a cluster run's
        partitions take their share of the run's limits, and a larger one when a partition finishes."""
        self.rpm = self._repace(self.rpm, rpm / 60.0 * RPM_HEADROOM if rpm else None, 1.0)
        self.tpm = self._repace(self.tpm, tpm / 60.0 if tpm else None, tpm / 60.0 if tpm else 1.0)

    def _repace(self, pacer: Pacer | None, rate: float | None, burst: float) -> Pacer | None:
        if rate is None:
            return None
        if pacer is None:
            return Pacer(rate, burst=burst, clock=self._clock, sleep=self._sleep)
        pacer.set_rate(rate, burst=burst)
        return pacer

    def backlog(self) -> float:
        """Seconds of requests and tokens already booked at the current rates (see Pacer.set_rate)."""
        return max([p.backlog() for p in (self.rpm, self.tpm) if p is not None], default=0.0)

    def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    async def before(self, tokens: int) -> None:
        await self.concurrency.acquire()
        try:
            if self.rpm is None and self.tpm is None and self._paused_until == 0.0:
                return  # the common case for a local server: no pacing at all
            while (wait := self._paused_until - self._clock()) > 0:
                await self._sleep(wait)
            if self.rpm is not None:
                await self.rpm.acquire()
            if self.tpm is not None:
                await self.tpm.acquire(tokens)
        except BaseException:
            self.concurrency.release()
            raise

    def after(self, *, estimated: int, used: int | None, headers: Mapping[str, str], throttled: bool) -> None:
        self.concurrency.release()
        if throttled:
            self.throttled += 1
            self.concurrency.on_throttle()
        else:
            self.concurrency.on_success()
        if self.tpm is not None and used is not None:
            self.tpm.adjust(used - estimated)
        pause = server_pause(headers)
        if pause:
            self.pause(pause)


def estimate_tokens(messages: list[dict[str, str]], max_tokens: int) -> int:
    return sum(len(m.get("content") or "") for m in messages) // 4 + 4 * len(messages) + max_tokens


class LimitedTeacher:
    """A teacher whose requests pass through a Limiter. Same interface as the teacher it wraps."""

    def __init__(self, teacher: Teacher, limiter: Limiter, *, default_max_tokens: int = 1024) -> None:
        self.teacher = teacher
        self.limiter = limiter
        self.default_max_tokens = default_max_tokens

    async def complete(
        self, messages: list[dict[str, str]], *, seed: int, sampling: Mapping[str, Any]
    ) -> Completion:
        estimated = 0
        if self.limiter.tpm is not None:  # only a token budget needs the estimate
            max_tokens = (
                sampling.get("max_tokens") or sampling.get("max_completion_tokens") or self.default_max_tokens
            )
            estimated = estimate_tokens(messages, int(max_tokens))
        await self.limiter.before(estimated)
        try:
            comp = await self.teacher.complete(messages, seed=seed, sampling=sampling)
        except TeacherError as e:
            throttled = e.status == 429
            if throttled and e.retry_after:
                self.limiter.pause(e.retry_after)
            self.limiter.after(estimated=estimated, used=None, headers=e.headers, throttled=throttled)
            raise
        except BaseException:
            self.limiter.after(estimated=estimated, used=None, headers={}, throttled=False)
            raise
        self.limiter.after(
            estimated=estimated,
            used=comp.prompt_tokens + comp.completion_tokens,
            headers=comp.headers,
            throttled=False,
        )
        return comp

    async def close(self) -> None:
        await self.teacher.close()
