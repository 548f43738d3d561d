"""Dedup with reasoning traces (issue 14 items 1 and 4): what the teacher wrote, trace and answer
together, is compared; a shared short final answer is no duplicate, near-identical traces are; the near
check's text does not grow with the trace; resume and --dedup-against key rows the same way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import rows_in
from test_reasoning import _prompt

from gen import RunOptions, run
from gen.dedup import Deduplicator
from gen.reasoning import SAMPLE_REACH, SAMPLE_WHOLE, SAMPLE_WIDTH, SAMPLE_WINDOWS, trace_sample

BOXED = "\\boxed{42}"


def _run(tmp_path: Path, sim, *, dedup: str = "", n: int = 6, samples: int = 1, name: str = "o", **kw):
    folder = tmp_path / name
    folder.mkdir()
    prompt = _prompt(folder, n=n, samples=samples, tables=f"[dedup]\n{dedup}\n" if dedup else "")
    out = folder / "out"
    return run(prompt, RunOptions(base_url=sim.base_url, output=out, progress=False, **kw)), out


@pytest.mark.parametrize("on", ["example", "output"])
def test_different_inputs_sharing_a_short_answer_are_never_duplicates(tmp_path: Path, sim_server, on) -> None:
    sim = sim_server(reasoning="reasoning_content", reasoning_tokens=300, answer_text=BOXED)
    result, out = _run(tmp_path, sim, dedup=f'on = "{on}"')
    assert result.stats.rows == 6 and result.stats.duplicates == 0
    assert {r["response"] for r in rows_in(out)} == {BOXED}


def test_without_traces_in_the_key_the_shared_answer_is_one_row(tmp_path: Path, sim_server) -> None:
    """The control: `[dedup] reasoning = false` compares the answers alone, as before traces."""
    sim = sim_server(reasoning="reasoning_content", reasoning_tokens=300, answer_text=BOXED)
    result, _ = _run(tmp_path, sim, dedup='on = "output"\nreasoning = false')
    assert result.stats.rows == 1 and result.stats.duplicates == 5


def test_samples_with_different_traces_and_the_same_answer_are_kept(tmp_path: Path, sim_server) -> None:
    sim = sim_server(reasoning="reasoning_content", reasoning_tokens=300, answer_text=BOXED)
    result, _ = _run(tmp_path, sim, n=3, samples=3)
    assert result.stats.rows == 9 and result.stats.duplicates == 0
    control, _ = _run(tmp_path, sim, n=3, samples=3, dedup="reasoning = false", name="c")
    assert control.stats.rows == 3 and control.stats.duplicates == 6


@pytest.mark.parametrize("on", ["example", "output"])
def test_near_identical_traces_are_near_duplicates(tmp_path: Path, sim_server, on: str) -> None:
    # samples of one input write the same trace but for one sentence: not exact, near duplicates
    sim = sim_server(
        reasoning="reasoning_content", reasoning_tokens=4000, reasoning_near_copies=True, answer_text=BOXED
    )
    result, out = _run(tmp_path, sim, n=3, samples=3, dedup=f'on = "{on}"')
    assert result.stats.rows == 3 and result.stats.duplicates == 6
    dups = rows_in(out, "duplicates")
    assert {d["kind"] for d in dups} == {"near"}
    kept = {r["id"][:16]: json.loads(r["vars"]) for r in rows_in(out)}
    assert all(json.loads(d["vars"]) == kept[d["duplicate_of"]] for d in dups)  # each of its own input


def test_the_near_text_of_a_trace_is_bounded() -> None:
    short = "word " * 100
    assert trace_sample(short) == short
    for n_words in (2_000, 30_000, 120_000):
        long = " ".join(f"w{i}" for i in range(n_words))
        sample = trace_sample(long)
        assert len(sample) <= SAMPLE_WINDOWS * (SAMPLE_WIDTH + 1) <= SAMPLE_WHOLE
        head, tail = sample[:SAMPLE_WIDTH], sample[-SAMPLE_WIDTH:]
        assert head in long[: 2 * SAMPLE_REACH] and tail in long[-2 * SAMPLE_REACH :]
    d = Deduplicator(on="output")
    row = {"output": None, "response": BOXED, "vars": "{}", "reasoning": "x " * 200_000}
    assert len(d.near_item(row)) <= len(BOXED) + 1 + SAMPLE_WHOLE


def test_resume_keys_the_committed_rows_as_the_run_did(tmp_path: Path, sim_server) -> None:
    """A resumed run reads the exact and near keys back from the shards (trace included; the think-tags
    answer message holds the trace, the key does not take it from there): the second half of the
    inputs, near copies of nothing committed, are all kept, and nothing committed is asked again."""
    sim = sim_server(reasoning="think-tags", reasoning_tokens=300, answer_text=BOXED)
    folder = tmp_path / "r"
    folder.mkdir()
    prompt = _prompt(folder, n=8, top='reasoning_format = "think-tags"', tables='[dedup]\non = "output"\n')
    out = folder / "out"
    first = run(prompt, RunOptions(base_url=sim.base_url, output=out, progress=False, limit=4))
    assert first.stats.rows == 4
    again = run(prompt, RunOptions(base_url=sim.base_url, output=out, progress=False))
    assert again.stats.skipped == 4 and again.stats.rows == 4 and again.stats.duplicates == 0
    # the keys read back from the shards equal the keys the run computed for the same rows
    d = Deduplicator(on="output")
    from gen.shards import committed_shards

    for rel in committed_shards(out):
        if rel.startswith("data/"):
            batch = d.read_keys(out, rel)
            rows = {r["id"]: r for r in rows_in(out)}
            want = d.keys("exact", [rows[i] for i in batch.ids])
            assert batch.keys["exact"] == want
            assert batch.keys["near"] == d.keys("near", [rows[i] for i in batch.ids])


def _full_at(tmp_path: Path, rows: list[dict]) -> tuple[list[int], list[int]]:
    """Where a ShardWriter (1,000,000 characters, 50,000 rows) says a shard's worth is buffered, adding
    `rows` with a checkpoint each time; and the shards' row counts."""
    import asyncio

    import pyarrow.parquet as pq

    from gen.shards import ShardWriter

    async def go() -> list[int]:
        writer = ShardWriter(tmp_path / "w", rows_per_shard=50_000, max_buffer_chars=1_000_000)
        full_at = []
        for i, row in enumerate(rows):
            if writer.add("train", {**row, "id": f"{i:032x}"}):
                full_at.append(i)
                await writer.checkpoint()
        await writer.close()
        return full_at

    full_at = asyncio.run(go())
    sizes = sorted(pq.read_metadata(f).num_rows for f in (tmp_path / "w" / "data").glob("*.parquet"))
    return full_at, sizes


def test_shard_buffers_are_bounded_by_the_text_they_hold(tmp_path: Path) -> None:
    """A shard's worth is rows_per_shard rows or max_buffer_chars characters of answers and traces,
    whichever comes first: 30,000-token traces do not pile up 50,000 rows deep in memory."""
    row = rows_in_one(tmp_path)
    trace = "t" * 240_000  # ~60,000 tokens, in `reasoning` alone (as `drop` keeps it)
    assert _full_at(tmp_path, [{**row, "reasoning": trace}] * 12) == ([4, 9], [2, 5, 5])  # 5 x 240,000


def test_a_trace_is_counted_as_many_times_as_the_row_holds_it(tmp_path: Path) -> None:
    """`field` shares the trace's str with the assistant message: counted once, as `drop`'s; counted
    twice, the shards of `field` were half the size of `drop`'s, and a checkpoint costs the same whatever
    a shard's size. `think-tags` copies it into the assistant's content: counted twice."""
    from gen.reasoning import assistant_message

    row = rows_in_one(tmp_path)
    trace = "t" * 120_000

    def formatted(fmt: str) -> dict:
        answer = row["output"] if row["output"] is not None else row["response"]
        return {
            **row,
            "reasoning": trace,
            "messages": [*row["messages"][:-1], assistant_message(answer, trace, fmt)],
        }

    assert _full_at(tmp_path / "field", [formatted("field")] * 12) == ([8], [3, 9])  # 9 x 120,000
    assert _full_at(tmp_path / "tags", [formatted("think-tags")] * 12) == ([4, 9], [2, 5, 5])  # 5 x 2 x


def rows_in_one(tmp_path: Path) -> dict:
    """One valid data row, as a run writes it."""
    from gen.sim import SimConfig, SimThread

    with SimThread(SimConfig()) as sim:
        folder = tmp_path / "one"
        folder.mkdir()
        run(_prompt(folder, n=1), RunOptions(base_url=sim.base_url, output=folder / "out", progress=False))
    (row,) = rows_in(folder / "out")
    row["created_at"] = int(row["created_at"].timestamp() * 1000)
    return row
