"""Rate limits that wrap a teacher: smooth RPM/TPM pacing, adaptive concurrency, server back-pressure.

- RPM and TPM are paced with GCRA (a token bucket seen as "theoretical arrival time"): requests leave
  evenly spaced, with a burst of at most one request, so a limit that the server checks per second or per
  minute is never exceeded by a burst at start-up.
- TPM reserves an estimate (prompt characters / 4 + max_tokens) before the request and corrects it with
  the usage the teacher reports.
- A 429 is answered in proportion to the evidence. The request that got it waits its Retry-After
  (gen.retry); dispatch as a whole slows (the in-flight limit halves, at most once a second, and all
  dispatch pauses for the Retry-After) only when the server says its budget is spent
  (`x-ratelimit-remaining-*` or `anthropic-ratelimit-*-remaining` at 0: dispatch holds until the
  reset) or when 429s are more than THROTTLE_SHARE of the recent answers. Scattered 429s (a shared key,
  a busy gateway) thus cost only the requests they hit. After a cut the limit grows back as fast as it
  fell: one request per success once RECOVER_AFTER_S have passed without a cut, so it doubles a round.
- Every pause is capped at `max_pause_s` (--max-pause): a Retry-After or a reset of 99999 s or `inf`
  waits that long at most, said once on stderr, and the progress bar shows the pause.
- A teacher module never sleeps or counts: `LimitedTeacher` does it around any teacher.
"""

from __future__ import annotations

import asyncio
import math
import re
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

from gen.errors import TeacherError
from gen.teachers.base import Completion, Teacher
from gen.teachers.providers import rate_limit_headers

Clock = Callable[[], float]
RPM_HEADROOM = 0.97
Sleep = Callable[[float], Awaitable[None]]
DEFAULT_MAX_PAUSE_S = 60.0
# Dispatch slows when 429s are more than this share of the last THROTTLE_WINDOW answers (counted over
# at least THROTTLE_MIN_ANSWERS, so that 10 429s among the first answers are needed too). 10% sits well
# above scattered faults: with 5% of answers 429 at random, more than 20 in 200 happens about once in
# 2,000 windows.
THROTTLE_SHARE = 0.10
THROTTLE_WINDOW = 200
THROTTLE_MIN_ANSWERS = 100
THROTTLE_HORIZON_S = 60.0  # answers older than this are no evidence
RECOVER_AFTER_S = 2.0  # after a cut, the in-flight limit holds this long before it grows back


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
        self,
        maximum: int,
        *,
        minimum: int = 1,
        cooldown_s: float = 1.0,
        recover_after_s: float = RECOVER_AFTER_S,
        clock: Clock = time.monotonic,
    ):
        self.maximum = maximum
        self.minimum = minimum
        self.limit = float(maximum)
        self.in_flight = 0
        self.cuts = 0
        self._cooldown = cooldown_s
        self._recover_after = recover_after_s
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
        # As fast as it fell: one more request per success (a doubling per round of requests in
        # flight), once the cut is RECOVER_AFTER_S old; 429s in that time are new evidence.
        if self.limit < self.maximum and self._clock() - self._last_cut >= self._recover_after:
            self.limit = min(float(self.maximum), self.limit + 1.0)

    def on_throttle(self) -> None:
        now = self._clock()
        if now - self._last_cut >= self._cooldown:  # one cut per burst of 429s, not one per request
            self._last_cut = now
            self.limit = max(float(self.minimum), self.limit / 2)
            self.cuts += 1


class ThrottleEvidence:
    """The recent answers' 429 share: whether dispatch as a whole is too fast, or 429s are scattered."""

    def __init__(
        self,
        *,
        share: float = THROTTLE_SHARE,
        window: int = THROTTLE_WINDOW,
        min_answers: int = THROTTLE_MIN_ANSWERS,
        horizon_s: float = THROTTLE_HORIZON_S,
        clock: Clock = time.monotonic,
    ) -> None:
        self.share = share
        self.min_answers = min_answers
        self.horizon_s = horizon_s
        self._answers: deque[tuple[float, bool]] = deque(maxlen=window)
        self._throttled = 0  # 429s among _answers
        self._clock = clock

    def record(self, throttled: bool) -> bool:
        """Count one answer; True when 429s now exceed the share (the evidence is then used up)."""
        now = self._clock()
        answers = self._answers
        while answers and (len(answers) == answers.maxlen or answers[0][0] < now - self.horizon_s):
            self._throttled -= answers.popleft()[1]
        answers.append((now, throttled))
        self._throttled += throttled
        if throttled and self._throttled > self.share * max(len(answers), self.min_answers):
            answers.clear()  # one cut per body of evidence: the next needs new 429s
            self._throttled = 0
            return True
        return False


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


def spent_budget(headers: Mapping[str, str]) -> tuple[str, float | None] | None:
    """(the reset header, its seconds) when the server says a budget of ours is spent, else None."""
    for remaining, reset in rate_limit_headers():  # each registered provider's (gen.teachers.providers)
        left = headers.get(remaining)
        if left is not None and left.strip() in ("0", "0.0"):
            return reset, parse_reset(headers.get(reset))
    return None


def server_pause(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asks us to hold all dispatch: its request budget is spent until a reset."""
    spent = spent_budget(headers)
    return spent[1] if spent is not None else None


def _say(message: str) -> None:
    print(f"gen: {message}", file=sys.stderr, flush=True)


def _printable(value: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in value.strip()[:40])


def retry_after_label(headers: Mapping[str, str]) -> str:
    """How the server asked, for a message: `Retry-After: 99999`, `retry-after-ms: 500` (the header
    gen.teachers.http.parse_retry_after read)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            float(ms)
            return f"retry-after-ms: {_printable(ms)}"
        except ValueError:
            pass
    value = headers.get("retry-after")
    return f"Retry-After: {_printable(value)}" if value else "Retry-After"


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
        max_pause_s: float = DEFAULT_MAX_PAUSE_S,
        notify: Callable[[str], None] = _say,
    ) -> None:
        """`notify` prints one line for the user (the pipeline's goes above the progress bar);
        `on_pause(seconds, why)`, when set, is told of each pause the server asked for."""
        self.concurrency = AdaptiveLimit(max_concurrency, clock=clock)
        self.evidence = ThrottleEvidence(clock=clock)
        self.max_pause_s = max_pause_s
        self.notify = notify
        self.on_pause: Callable[[float, str], None] | None = None
        self._told: set[str] = set()
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

    def cap(self, asked: float, kind: str, shown: str | None = None) -> float:
        """`asked` seconds of waiting, at most max_pause_s; a cut ask is said once for each `kind`."""
        if math.isnan(asked):
            return 0.0
        if asked <= self.max_pause_s:
            return asked
        if kind not in self._told:
            self._told.add(kind)
            self.notify(
                f"the teacher asked to wait {asked:g} s ({shown or kind}); gen waits "
                f"{self.max_pause_s:g} s at most and asks again (--max-pause)"
            )
        return self.max_pause_s

    def pause(self, seconds: float, *, why: str | None = None) -> None:
        """Hold all dispatch for `seconds` (at most max_pause_s); `why`, the server's ask, is shown in
        the progress bar."""
        seconds = min(seconds, self.max_pause_s)
        until = self._clock() + seconds
        if until > self._paused_until:
            self._paused_until = until
            if why is not None and self.on_pause is not None:
                self.on_pause(seconds, why)

    def unreadable_retry_after(self, value: str) -> None:
        """Say once that a Retry-After was neither seconds nor a date (the request backs off as usual).
        The value itself is not echoed: a hostile teacher could put anything there, a key included."""
        if "unreadable" not in self._told:
            self._told.add("unreadable")
            self.notify(
                f"the teacher sent a Retry-After of {len(value)} characters that is neither seconds nor "
                "a date; gen backs off as after any error (0.5 s, doubling, at most --max-pause)"
            )

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

    def after(
        self,
        *,
        estimated: int,
        used: int | None,
        headers: Mapping[str, str],
        throttled: bool,
        retry_after: float | None = None,
    ) -> None:
        """Account for one answer. `throttled`: it was a 429, whose `retry_after` (seconds) the
        request itself waits; dispatch as a whole slows only on evidence (see the module doc)."""
        self.concurrency.release()
        spent = spent_budget(headers) if headers else None
        if retry_after is not None:
            retry_after = self.cap(retry_after, "Retry-After", retry_after_label(headers))
        if throttled:
            self.throttled += 1
            if self.evidence.record(True) or spent is not None:
                self.concurrency.on_throttle()
                if retry_after:
                    self.pause(retry_after, why=retry_after_label(headers))
        else:
            self.evidence.record(False)
            self.concurrency.on_success()
        if self.tpm is not None and used is not None:
            self.tpm.adjust(used - estimated)
        if spent is not None and spent[1]:
            reset, seconds = spent
            shown = f"{reset}: {_printable(headers.get(reset, ''))}"
            self.pause(self.cap(seconds, reset, shown), why=shown)


# A request's completion bound when its sampling sets none: what a reservation counts (gen run, its
# plan, the eval judge) and what the rate limiter assumes (Anthropic's default too).
DEFAULT_MAX_TOKENS = 1024


def completion_cap(sampling: Mapping[str, Any]) -> int | None:
    """The max_tokens (or max_completion_tokens) a request with `sampling` asks for, or None: no bound."""
    asked = sampling.get("max_tokens") or sampling.get("max_completion_tokens")
    return asked if type(asked) is int and asked > 0 else None


def max_completion(sampling: Mapping[str, Any]) -> int:
    """What a request with `sampling` may complete at most: its max_tokens (or max_completion_tokens),
    a positive int, else DEFAULT_MAX_TOKENS."""
    return completion_cap(sampling) or DEFAULT_MAX_TOKENS


def estimate_tokens(messages: list[dict[str, str]], max_tokens: int) -> int:
    return sum(len(m.get("content") or "") for m in messages) // 4 + 4 * len(messages) + max_tokens


class LimitedTeacher:
    """A teacher whose requests pass through a Limiter. Same interface as the teacher it wraps."""

    def __init__(
        self, teacher: Teacher, limiter: Limiter, *, default_max_tokens: int = DEFAULT_MAX_TOKENS
    ) -> None:
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
        sent = time.perf_counter()
        try:
            comp = await self.teacher.complete(messages, seed=seed, sampling=sampling)
        except TeacherError as e:
            throttled = e.status == 429
            retry_after = e.retry_after
            if retry_after is not None:
                # Capped here, so that the retry of this request (gen.retry) waits no longer either.
                e.retry_after = self.limiter.cap(retry_after, "Retry-After", retry_after_label(e.headers))
            elif throttled and e.headers.get("retry-after"):
                self.limiter.unreadable_retry_after(e.headers["retry-after"])
            self.limiter.after(
                estimated=estimated,
                used=None,
                headers=e.headers,
                throttled=throttled,
                retry_after=e.retry_after if throttled else None,
            )
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
        comp.latency_s = time.perf_counter() - sent  # the request alone, not its wait for a slot
        return comp

    async def close(self) -> None:
        await self.teacher.close()
