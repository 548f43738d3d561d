"""A batch run's online fallback (`--batch-fallback online`) under --max-usd: each fallback request is a
request the budget must allow, and while in flight it counts at its reservation at the list price (what
the chat API bills), not the batch price the run's batches are priced at.

Found by session 8's review: the fallback requests of a failed batch all left at once, unchecked, and
the in-flight table was priced at the run's (batch) price, half the list price. Real HTTP against the
simulator's OpenAI Batch endpoints, real `gen run` runs.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from helpers import all_task_ids, batch_recipe, ids_in

from gen import RunOptions
from gen.batching import BatchDriver
from gen.budget import Price
from gen.cli import main
from gen.ledger import id_key
from gen.pipeline import Run, prepare
from gen.progress import Progress
from gen.reserved import InFlight

LIST_OUT = 100.0  # USD per million completion tokens at the list price; prompt tokens are free
MAX_TOKENS = 120  # batch_recipe's [sampling] max_tokens: a request's reservation, priced
ONLINE_RESERVATION = MAX_TOKENS * LIST_OUT / 1e6  # $0.012; the batch price (discount 0.5) is half
N = 20


def _args(prompt: Path, out: Path, sim, max_usd: float) -> list[str]:
    # gen-sim-* has a batch_discount of 0.5 in the price table: the flags give its list price.
    return [
        "run", str(prompt), "--provider", "openai", "--base-url", sim.base_url, "--output", str(out),
        "--no-progress", "--batch", "--batch-poll", "0.05", "--batch-fallback", "online",
        "--price-in", "0", "--price-out", str(LIST_OUT), "--max-usd", str(max_usd),
    ]  # fmt: skip


def test_fallback_requests_in_flight_count_at_the_list_price(tmp_path: Path, sim_server) -> None:
    # One batch of 20 fits at the batch price (20 x $0.006 = $0.12 < $0.126); every request fails in it
    # and would go online, at $0.012 each: only while what is in flight is under the limit may one
    # leave, so 11 leave (10 x $0.012 < $0.126 <= 11 x $0.012), not all 20 (the old code: unchecked; and
    # priced at the batch price, all 20 fit too).
    max_usd = 10.5 * ONLINE_RESERVATION
    sim = sim_server(batch_delay_s=0.05, batch_rate_failed=1.0)
    prompt = batch_recipe(tmp_path, N, "fallback")
    out = tmp_path / "o"
    assert main(_args(prompt, out, sim, max_usd)) == 3  # the budget stopped it
    sent = sim.stats()["requests"]  # chat requests only: the fallback
    assert 1 <= sent <= 11, sent
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "budget"
    batch = manifest["runs"][-1]["batch"]
    # The fallbacks the budget held back wait for a later batch (logged: a resume sends them).
    assert batch["retried_online"] == sent and batch["retried_in_batch"] == N - sent
    assert manifest["cost_usd"] <= max_usd
    decided = ids_in(out, "data") + ids_in(out, "rejects") + ids_in(out, "duplicates")
    assert len(decided) == sent

    # Resumed with room, the batches now answering: every task decided once, none asked online again.
    sim.server.config.batch_rate_failed = 0.0
    assert main(_args(prompt, out, sim, 1.0)) == 0
    assert sim.stats()["requests"] == sent
    decided = ids_in(out, "data") + ids_in(out, "rejects") + ids_in(out, "duplicates")
    assert sorted(decided) == sorted(all_task_ids(prompt))


def test_no_budget_lets_every_fallback_go(tmp_path: Path, sim_server) -> None:
    # The check costs nothing without a limit, and holds nothing back.
    sim = sim_server(batch_delay_s=0.05, batch_rate_failed=1.0)
    prompt = batch_recipe(tmp_path, N, "fallback")
    out = tmp_path / "o"
    args = _args(prompt, out, sim, 1.0)
    assert main(args[: args.index("--max-usd")]) == 0
    assert sim.stats()["requests"] == N


def test_a_batch_is_not_submitted_while_fallback_requests_in_flight_hold_the_budget(
    tmp_path: Path, sim_server
) -> None:
    """The submission check counts the online fallback's requests in flight, at the list price. (The
    driver awaits a batch's fallbacks before it submits again, so this is the check's contract, held
    here on a real run's driver against the simulator; the old check left them out.)"""
    sim = sim_server()
    opts = RunOptions(
        base_url=sim.base_url, output=tmp_path / "o", progress=False, batch=True, batch_fallback="online",
        batch_size=1, price_in=0.0, price_out=LIST_OUT, max_usd=0.012,
    )  # fmt: skip
    run = Run(prepare(batch_recipe(tmp_path, 3, "fallback"), opts))
    run.p.out_dir.mkdir(parents=True, exist_ok=True)
    driver = BatchDriver(run, None, Progress(run.stats, enabled=False, desc="t"), sim.base_url, {})
    tasks = list(run.p.expansion.tasks())
    # One fallback request in flight: 100 completion tokens, $0.010 at the list price ($0.005 at the
    # batch price). A batch request reserves $0.006 (120 tokens at the batch price): with the fallback at
    # the list price that is $0.016, past $0.012; ignored, or at the batch price ($0.011), it is not.
    run._in_flight.put(id_key(tasks[0].id), (tasks[0].id, (0, 100)), online=True)
    driver._fresh = iter(tasks[1:])

    async def submit() -> None:
        try:
            await driver._submit_more()
        finally:
            await driver.client.close()

    asyncio.run(submit())
    assert driver.stopped is not None and "spending budget reached" in driver.stopped
    assert sim.server.batch_custom_ids == [] and not driver.live
    assert id_key(tasks[1].id) not in run.claimed  # held back, not lost: a later run asks it

    # The fallback answered: the budget holds a batch again.
    run._in_flight.pop(id_key(tasks[0].id))
    driver.stopped = None
    driver.client = BatchDriver(run, None, driver.progress, sim.base_url, {}).client
    driver._fresh = iter(tasks[1:2])
    asyncio.run(submit())
    assert driver.stopped is None and len(driver.live) == 1 and len(sim.server.batch_custom_ids) == 1
    driver.log.close()


def test_in_flight_keeps_online_reservations_apart() -> None:
    """`InFlight` sums the online fallback's reservations apart, so `usd` prices them at the list price
    in O(1); a reservation made again moves between the two sums."""
    batch_price = Price(1.0, 2.0)
    list_price = Price(2.0, 4.0)
    f = InFlight()
    f[1] = ("a", (10, 100))
    f.put(2, ("b", (20, 100)), online=True)
    assert f.tokens == 230 and len(f) == 2
    assert f.is_online(2) and not f.is_online(1)
    assert f.usd(batch_price, list_price) == pytest.approx(
        batch_price.cost(10, 100) + list_price.cost(20, 100)
    )
    # Without an online price, every reservation is at `price` (an online run: one price).
    assert f.usd(batch_price) == pytest.approx(batch_price.cost(30, 200))
    f.put(1, ("a", (5, 50)), online=True)  # journaled again, bought online this time
    assert f.usd(batch_price, list_price) == pytest.approx(list_price.cost(25, 150)) and f.tokens == 175
    assert f.pop(2) == ("b", (20, 100)) and not f.is_online(2)
    assert f.usd(batch_price, list_price) == pytest.approx(list_price.cost(5, 50))
    f[1] = ("a", (1, 1))
    assert f.usd(batch_price, list_price) == pytest.approx(batch_price.cost(1, 1)) and f.tokens == 2
    assert f.pop(1) == ("a", (1, 1)) and f.tokens == 0 and f.usd(batch_price, list_price) == 0.0
