"""Rate limits and retries, with an injected clock and sleep: no test waits for real."""

from __future__ import annotations

import asyncio

import pytest
from helpers import FakeTime
from hypothesis import given
from hypothesis import strategies as st

from gen.errors import FatalTeacherError, TeacherError
from gen.limits import AdaptiveLimit, Limiter, Pacer, parse_reset, server_pause
from gen.retry import RetryPolicy, with_retries


@given(st.floats(0.5, 500.0), st.integers(2, 300))
def test_pacer_spaces_requests_evenly_with_no_burst(rate: float, n: int) -> None:
    t = FakeTime()
    pacer = Pacer(rate, clock=t.clock, sleep=t.sleep)
    times = []
    for _ in range(n):
        t.now += pacer.reserve()  # what acquire() sleeps
        times.append(t.now)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert all(abs(g - 1 / rate) < 1e-6 for g in gaps)
    # No window of one second ever holds more than rate + 1 requests: nothing a per-second limit refuses.
    for i, start in enumerate(times[:50]):
        assert sum(1 for x in times[i:] if x < start + 1.0) <= rate + 1


def test_pacer_adjust_gives_back_unused_tokens() -> None:
    t = FakeTime()
    pacer = Pacer(100.0, burst=100.0, clock=t.clock, sleep=t.sleep)  # 100 tokens a second
    assert pacer.reserve(150) == pytest.approx(0.5)
    pacer.adjust(-100)  # the request used 50, not 150
    assert pacer.reserve(50) == pytest.approx(0.0)


async def test_adaptive_limit_halves_on_throttle_and_recovers_after_a_hold() -> None:
    t = FakeTime()
    limit = AdaptiveLimit(64, clock=t.clock, recover_after_s=2.0)
    limit.on_throttle()
    limit.on_throttle()  # within the cool-down: one burst of 429s is one cut
    assert limit.limit == 32
    t.now = 2.0
    limit.on_throttle()
    assert limit.limit == 16
    for _ in range(16):
        limit.on_success()
    assert limit.limit == 16  # held: the cut is fresh
    t.now = 4.0
    for _ in range(16):
        limit.on_success()
    assert limit.limit == 32  # then one slot per success: a doubling per round, as fast as it fell


async def test_adaptive_limit_blocks_beyond_the_limit_and_hands_over_slots() -> None:
    limit = AdaptiveLimit(2)
    await limit.acquire()
    await limit.acquire()
    third = asyncio.ensure_future(limit.acquire())
    await asyncio.sleep(0)
    assert not third.done() and limit.in_flight == 2
    limit.release()
    await third
    assert limit.in_flight == 2
    cancelled = asyncio.ensure_future(limit.acquire())
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    limit.release()
    limit.release()
    assert limit.in_flight == 0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("6m0s", 360.0),
        ("1s", 1.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("2.5", 2.5),
        (None, None),
        ("junk", None),
    ],
)
def test_parse_reset(value, seconds) -> None:
    assert parse_reset(value) == seconds


def test_parse_reset_rfc3339() -> None:
    assert parse_reset("2026-01-01T00:00:10Z", now=1767225600.0) == pytest.approx(10.0)


def test_server_pause_only_when_the_budget_is_spent() -> None:
    assert server_pause({"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "1s"}) is None
    assert server_pause({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s"}) == 2.0
    assert server_pause({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "500ms"}) == 0.5


async def test_limiter_pauses_dispatch_until_reset() -> None:
    t = FakeTime()
    limiter = Limiter(max_concurrency=4, clock=t.clock, sleep=t.sleep)
    await limiter.before(10)
    spent = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "3s"}
    limiter.after(estimated=10, used=10, headers=spent, throttled=False)
    await limiter.before(10)
    assert t.now == pytest.approx(3.0)


async def test_retries_back_off_honour_retry_after_and_stop() -> None:
    t = FakeTime()
    calls = []

    async def flaky() -> str:
        calls.append(t.now)
        if len(calls) < 4:
            raise TeacherError("busy", status=429, retryable=True, retry_after=2.0)
        return "ok"

    retried: list[TeacherError] = []
    policy = RetryPolicy(max_retries=5, initial_s=0.1)
    assert await with_retries(flaky, policy, on_retry=retried.append, sleep=t.sleep) == "ok"
    assert len(calls) == 4 and len(retried) == 3
    assert all(s >= 2.0 for s in t.slept)  # never sooner than Retry-After

    async def always() -> str:
        raise TeacherError("down", status=503, retryable=True)

    t.slept.clear()
    with pytest.raises(TeacherError, match="down"):
        await with_retries(always, RetryPolicy(max_retries=3, initial_s=0.1), sleep=t.sleep)
    assert len(t.slept) == 3  # three retries, then the error


@pytest.mark.parametrize(
    "error",
    [TeacherError("bad request", status=400), FatalTeacherError("no key", status=401, retryable=True)],
)
async def test_final_and_fatal_errors_are_not_retried(error: TeacherError) -> None:
    t = FakeTime()
    calls = 0

    async def fail() -> str:
        nonlocal calls
        calls += 1
        raise error

    with pytest.raises(TeacherError):
        await with_retries(fail, RetryPolicy(), sleep=t.sleep)
    assert calls == 1 and not t.slept
