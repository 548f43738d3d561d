"""429s: the reaction is proportional to the evidence, and no pause is silent or unbounded.

The limiter tests run on an injected clock and sleep: nothing waits for real, nothing asserts a rate.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import FakeTime

from gen.cli import main
from gen.errors import TeacherError
from gen.limits import LimitedTeacher, Limiter
from gen.teachers.base import Completion


def _limiter(t: FakeTime, notices: list[str] | None = None, **kw) -> Limiter:
    if notices is not None:
        kw["notify"] = notices.append
    return Limiter(max_concurrency=64, clock=t.clock, sleep=t.sleep, **kw)


class Scripted:
    """A teacher that answers 50 ms (of the fake clock) later with what it is told to: a 429 or a 200."""

    def __init__(self, t: FakeTime) -> None:
        self.t = t
        self.next: tuple[bool, float | None, dict[str, str]] = (False, None, {})

    async def complete(self, messages, *, seed, sampling) -> Completion:
        self.t.now += 0.05
        throttled, retry_after, headers = self.next
        if throttled:
            raise TeacherError(
                "slow down", status=429, retryable=True, retry_after=retry_after, headers=headers
            )
        return Completion("ok", "stop", 1, 1, headers=headers)

    async def close(self) -> None: ...


async def _answer(limiter: Limiter, t: FakeTime, *, throttled: bool, retry_after: float | None = None,
                  headers: dict[str, str] | None = None) -> None:  # fmt: skip
    """One request through the limiter (as the pipeline sends it), answered 50 ms later."""
    teacher = Scripted(t)
    teacher.next = (throttled, retry_after, headers or {})
    try:
        await LimitedTeacher(teacher, limiter).complete(
            [{"role": "user", "content": "x"}], seed=1, sampling={}
        )
    except TeacherError:
        assert throttled


async def test_an_isolated_429_neither_halves_concurrency_nor_pauses_dispatch() -> None:
    t = FakeTime()
    limiter = _limiter(t)
    for i in range(400):  # 5% of answers are 429 with Retry-After: 1, scattered
        await _answer(limiter, t, throttled=i % 20 == 7, retry_after=1.0)
    assert limiter.throttled == 20
    assert limiter.concurrency.cuts == 0 and limiter.concurrency.limit == 64
    assert t.slept == []  # dispatch never waited: only the request that got the 429 waits (in retry)


async def test_a_429_share_above_the_threshold_halves_concurrency_and_pauses() -> None:
    t = FakeTime()
    limiter = _limiter(t)
    for i in range(100):
        await _answer(limiter, t, throttled=i % 3 == 0, retry_after=2.0)  # a third of the answers
    assert limiter.concurrency.cuts >= 1 and limiter.concurrency.limit <= 32
    assert any(s == pytest.approx(2.0, abs=0.06) for s in t.slept)  # dispatch held for the Retry-After


async def test_a_spent_limit_pauses_dispatch_until_the_reset() -> None:
    t = FakeTime()
    limiter = _limiter(t)
    spent = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "3s"}
    await _answer(limiter, t, throttled=False, headers=spent)  # a 200 that spends the budget
    start = t.now
    await limiter.before(0)
    assert t.now - start == pytest.approx(3.0, abs=0.06)
    assert limiter.concurrency.cuts == 0  # paced by the server's own reset: no reason to cut
    limiter.after(estimated=0, used=None, headers={}, throttled=False)
    # A single 429 that says the budget is spent is evidence enough on its own.
    await _answer(limiter, t, throttled=True, retry_after=1.0, headers=spent)
    assert limiter.concurrency.cuts == 1 and limiter.concurrency.limit == 32
    start = t.now
    await limiter.before(0)
    assert t.now - start == pytest.approx(3.0, abs=0.06)


async def test_concurrency_recovers_as_fast_as_it_fell() -> None:
    t = FakeTime()
    limiter = _limiter(t)
    for _ in range(30):
        await _answer(limiter, t, throttled=True, retry_after=0.1)
    assert limiter.concurrency.limit <= 32
    fell_to = limiter.concurrency.limit
    t.now += 5.0  # the evidence is old
    assert fell_to <= 32
    for _ in range(64):  # a round of answers at full concurrency
        await _answer(limiter, t, throttled=False)
    assert limiter.concurrency.limit == 64


@pytest.mark.parametrize("asked", [99999.0, float("inf")])
async def test_a_huge_retry_after_or_reset_is_capped_and_said_once(asked: float) -> None:
    t = FakeTime()
    notices: list[str] = []
    limiter = _limiter(t, notices, max_pause_s=60.0)
    for _ in range(30):  # a real limit (every answer 429) asking for a day's pause
        await _answer(limiter, t, throttled=True, retry_after=asked)
    assert max(t.slept) <= 60.0 + 1e-9
    reset = "99999s" if asked == 99999.0 else "inf"
    spent = {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": reset}
    await _answer(limiter, t, throttled=False, headers=spent)
    start = t.now
    await limiter.before(0)
    assert t.now - start <= 60.0 + 1e-9
    assert len(notices) == 2, notices  # one line per kind of ask, not one per request
    assert "Retry-After" in notices[0] and "--max-pause" in notices[0]
    assert "x-ratelimit-reset-tokens" in notices[1]


async def test_limited_teacher_waits_the_capped_retry_after_and_says_so() -> None:
    t = FakeTime()
    notices: list[str] = []
    limiter = _limiter(t, notices, max_pause_s=5.0)

    class Refuses:
        async def complete(self, messages, *, seed, sampling) -> Completion:
            raise TeacherError("slow down", status=429, retryable=True, retry_after=99999.0,
                               headers={"retry-after": "99999"})  # fmt: skip

        async def close(self) -> None: ...

    teacher = LimitedTeacher(Refuses(), limiter)
    with pytest.raises(TeacherError) as e:
        await teacher.complete([{"role": "user", "content": "x"}], seed=1, sampling={})
    assert e.value.retry_after == 5.0  # what the retry of this request will wait
    assert notices and "99999" in notices[0] and "5 s" in notices[0]


# --------------------------------------------------------------------------- a real run


def _recipe(tmp_path: Path, n: int) -> Path:
    (tmp_path / "p.toml").write_text(
        'name = "throttle"\nversion = "1"\nintended_use = "research"\n'
        '[teacher]\nprovider = "openai"\nmodel = "gen-sim-1"\nlicense = "apache-2.0"\n'
        '[messages]\nuser = "Explain item {{ n }}."\n'
        f"[variables]\nn = {list(range(n))}\n"
    )
    return tmp_path / "p.toml"


@pytest.mark.parametrize("header", ["99999", "inf"])
def test_a_run_told_to_wait_forever_pauses_at_most_max_pause(tmp_path: Path, sim_server, capsys,
                                                              header: str) -> None:  # fmt: skip
    sim = sim_server(rate_429=0.3, retry_after_header=header, seed=3)
    out = tmp_path / "o"
    args = ["run", str(_recipe(tmp_path, 40)), "--base-url", sim.base_url, "--output", str(out)]
    code = main([*args, "--max-pause", "0.05", "--max-concurrency", "8", "--max-retries", "10"])
    err = capsys.readouterr().err
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if "--max-pause" in ln]
    assert len(lines) == 1, err  # said once, not once per 429
    assert f"Retry-After: {header}" in lines[0] and "0.05 s" in lines[0]
    assert "paused" in err  # the progress bar showed the pause
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    rows = sum(pq.read_metadata(f).num_rows for f in (out / "data").glob("*.parquet"))
    assert rows == 40
    assert sim.stats()["status_429"] > 0


def test_max_pause_must_be_positive(tmp_path: Path, sim_server, capsys) -> None:
    sim = sim_server()
    args = ["run", str(_recipe(tmp_path, 2)), "--base-url", sim.base_url, "--output", str(tmp_path / "o")]
    assert main([*args, "--max-pause", "0"]) == 2
    err = capsys.readouterr().err
    assert "--max-pause" in err and len(err.strip().splitlines()) == 1
    assert sim.stats()["requests"] == 0


def test_an_unreadable_retry_after_is_said_once_without_echoing_it(
    tmp_path: Path, sim_server, capsys
) -> None:
    secret = "sk-echoed-back-by-a-hostile-teacher"
    sim = sim_server(rate_429=0.3, retry_after_header=secret, seed=3)
    out = tmp_path / "o"
    args = ["run", str(_recipe(tmp_path, 30)), "--base-url", sim.base_url, "--output", str(out)]
    code = main(
        [*args, "--no-progress", "--max-concurrency", "8", "--max-retries", "10", "--max-pause", "0.1"]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if "neither seconds nor a date" in ln]
    assert len(lines) == 1, err
    assert secret not in err
    assert sim.stats()["status_429"] > 0
