"""`gen eval --max-usd` counts every judge pair in flight at its reservation (each of its two requests'
prompt estimate + the judge request's max_tokens, at the judge's price), as `gen run` does for the
teacher (tests/test_budget_reserved.py). It used to count them at the average cost of the pairs judged
so far: a judge whose later verdicts are longer than its first let out pairs that together passed
--max-usd, so gen paid more than the user allowed.

The judge is the simulator in `longer` mode with `long_after`: its first replies are a verdict line
(~10 tokens), the later ones put ~390 tokens of rationale before it (under the 512 max_tokens gen asks
for). The sim counts prompt tokens as gen estimates them, so what it served, priced from the price
table, is what gen paid.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_eval_judge import free_text_dataset

from gen.budget import price_for

N = 40
CONCURRENCY = 8
SHORT_REQUESTS = 16  # the judge's first 16 replies (8 pairs) are short, the rest ~40 times as long
JUDGE = "gpt-4o-mini"  # priced in gen/prices.toml


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return free_text_dataset(tmp_path_factory.mktemp("free"), n=N)


def _eval(
    out: Path, student, judge, *args: str, concurrency: int = CONCURRENCY
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gen", "eval", str(out), "--student-base-url", student.base_url,
         "--student-model", "student-1", "--no-progress", "--split", "all",
         "--max-concurrency", str(concurrency), "--judge-model", JUDGE, "--judge-base-url", judge.base_url,
         *args],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def _paid(judge) -> float:
    """What the judge served, priced from the price table: what gen paid it."""
    price = price_for(JUDGE)
    assert price is not None
    s = judge.stats()
    return price.cost(s["prompt_tokens"], s["completion_tokens"])


def _lines(d: Path) -> list[dict]:
    return [json.loads(line) for line in (d / "judge.jsonl").read_text().splitlines() if line.strip()]


def _logged(d: Path) -> float:
    price = price_for(JUDGE)
    assert price is not None
    return sum(price.cost(*e["u"]) for e in _lines(d))


def test_a_judge_whose_verdicts_grow_stays_within_max_usd(dataset: Path, tmp_path: Path, sim_server) -> None:
    out = tmp_path / "out"
    shutil.copytree(dataset, out)
    student = sim_server(model="student-1", perturb_share=0.5)
    judge = sim_server(model=JUDGE, judge="longer", latency_ms=40, long_after=SHORT_REQUESTS)
    limit = 0.004  # ~40 short pairs or ~7 long ones: the short pairs' average lets 8 long ones out at once
    proc = _eval(out, student, judge, "--max-usd", repr(limit))
    assert proc.returncode == 3, proc.stderr
    assert "--max-usd" in proc.stderr and "judge.jsonl" in proc.stderr
    d = next((out / "evals").iterdir())
    paid = _paid(judge)
    assert paid <= limit, (paid, limit, judge.stats())
    assert _logged(d) == pytest.approx(paid)  # every request it answered is in judge.jsonl
    lines = _lines(d)
    assert len(lines) > 8 and judge.stats()["requests"] > SHORT_REQUESTS  # it judged long verdicts too
    assert paid > limit / 2  # the limit stopped it, not the start

    # Resumed with a higher limit: only the rest is judged, and the report counts every pair's tokens.
    proc = _eval(out, student, judge, "--max-usd", "1000", "--resume", str(d))
    assert proc.returncode == 0, proc.stderr
    data = json.loads((d / "report.json").read_text())
    assert sum(data["judge"]["counts"][v] for v in ("win", "tie", "loss")) == N
    assert judge.stats()["requests"] == 2 * N  # no pair asked twice
    s = judge.stats()
    assert data["judge"]["tokens"] == {"prompt": s["prompt_tokens"], "completion": s["completion_tokens"]}
    assert data["judge"]["cost_usd"] == pytest.approx(_paid(judge))


def test_a_budget_too_small_for_one_pair_judges_exactly_one(
    dataset: Path, tmp_path: Path, sim_server
) -> None:
    """As `gen run` lets exactly one request out under a budget smaller than one reservation (not one
    per worker), the judge lets exactly one pair out; a resume once that is spent asks nothing."""
    out = tmp_path / "out"
    shutil.copytree(dataset, out)
    student = sim_server(model="student-1", perturb_share=0.5)
    judge = sim_server(model=JUDGE, judge="longer", latency_ms=40)
    limit = 0.00005  # a pair reserves ~$0.0007 (2 x (~280 prompt tokens + 512 max_tokens)), costs ~$0.0001
    proc = _eval(out, student, judge, "--max-usd", repr(limit))
    assert proc.returncode == 3, proc.stderr
    assert "--max-usd" in proc.stderr and "0 of" not in proc.stderr
    d = next((out / "evals").iterdir())
    assert judge.stats()["requests"] == 2 and len(_lines(d)) == 1
    assert _logged(d) == pytest.approx(_paid(judge)) and _paid(judge) > 0
    proc = _eval(out, student, judge, "--max-usd", repr(limit), "--resume", str(d))
    assert proc.returncode == 3, proc.stderr
    assert judge.stats()["requests"] == 2  # what was spent reached the limit: no pair begun


def test_a_re_ask_is_reserved_as_it_leaves(dataset: Path, tmp_path: Path, sim_server) -> None:
    """A judge whose replies have no verdict line: each order is asked again (3 asks in all), so a pair
    is 3 requests where its reservation covers 2. Each request past the two is reserved as it leaves;
    the first that does not fit is not sent: its pair ends as `error` (what it cost kept in
    judge.jsonl, the pair asked again on a resume) and judging stops. The old rule (spent + pairs in
    flight at their average below the limit) let a pair begin while anything was left, so one at a time
    the last pair ended past the limit."""
    out = tmp_path / "out"
    shutil.copytree(dataset, out)
    student = sim_server(model="student-1", perturb_share=0.5)
    judge = sim_server(model=JUDGE, judge="garbage")
    limit = 0.002  # a request costs ~$0.00005 and reserves ~$0.00035: ~8 pairs fit, not the 9th's re-ask
    proc = _eval(out, student, judge, "--max-usd", repr(limit), concurrency=1)
    assert proc.returncode == 3, proc.stderr
    assert "--max-usd" in proc.stderr
    d = next((out / "evals").iterdir())
    paid = _paid(judge)
    assert paid <= limit, (paid, limit)
    assert _logged(d) == pytest.approx(paid)
    lines = _lines(d)
    requests = judge.stats()["requests"]
    assert requests % 3 == 2  # every pair asked 3 times but the last, refused its third request
    assert [e["verdict"] for e in lines] == ["unparseable"] * (requests // 3) + ["error"]
    assert sum(lines[-1]["u"]) > 0  # its two answered requests' tokens
    assert paid > limit / 2

    # Resumed under a higher limit: the erred pair is asked again, what it cost before still counted.
    proc = _eval(out, student, judge, "--max-usd", repr(limit * 2), "--resume", str(d), concurrency=1)
    assert proc.returncode == 3, proc.stderr
    again = _lines(d)
    assert again[len(lines)]["id"] == lines[-1]["id"] and again[len(lines)]["verdict"] == "unparseable"
    assert _paid(judge) <= limit * 2 and _logged(d) == pytest.approx(_paid(judge))


def test_the_rule_pair_by_pair() -> None:
    """gen.eval_judge._JudgeSpend at $1 per million tokens either way (a reservation of 1,500 tokens is
    $0.0015): what begins, waits, is refused, and the one pair a too-small budget lets out."""
    import asyncio

    from gen.budget import Price
    from gen.eval_judge import _JudgeSpend

    pair = (500, 1000)

    async def main() -> None:
        spend = _JudgeSpend(0.003, Price(1.0, 1.0), 0.0)
        a = await spend.begin("a", pair)
        b = await spend.begin("b", pair)  # 0.003 reserved: at the limit, not past it
        assert a is not None and b is not None
        waiting = asyncio.ensure_future(spend.begin("c", pair))
        await asyncio.sleep(0)
        assert not waiting.done()  # no room: it waits while pairs are in flight
        spend.end(a, (100, 100))  # $0.0002 spent, a's reservation released: still no room for c
        await asyncio.sleep(0)
        assert not waiting.done()
        spend.end(b, (100, 100))
        c = await waiting
        assert c is not None and spend.spent == pytest.approx(0.0004)
        assert not spend.extend(c, pair)  # a re-ask past the limit: refused, and judging stops
        assert spend.stopped and await spend.begin("d", (1, 1)) is None
        spend.end(c, (0, 0))
        assert len(spend.in_flight) == 0

        tiny = _JudgeSpend(0.001, Price(1.0, 1.0), 0.0)  # smaller than one pair's reservation
        first = await tiny.begin("a", pair)
        assert first is not None  # exactly one pair is let out, as gen run lets one request out
        second = asyncio.ensure_future(tiny.begin("b", pair))
        await asyncio.sleep(0)
        tiny.end(first, (10, 10))
        assert await second is None and tiny.stopped

        spent = _JudgeSpend(0.001, Price(1.0, 1.0), 0.001)  # a resume with the limit reached: none
        assert await spent.begin("a", pair) is None

    asyncio.run(main())
