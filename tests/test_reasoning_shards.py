"""Shards of rows with long reasoning traces (issue 14, Numbers): what the writer's shortcuts for long
text must not change. A trace in `reasoning` and in the assistant message (`field` format) is converted
once and shared in memory, and long text columns go without a dictionary or statistics; the shards read
back exactly as the rows were given, whatever mix of formats, missing and empty traces they hold."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from test_reasoning_dedup import rows_in_one

from gen.reasoning import assistant_message
from gen.shards import ShardWriter, _shares_traces, parquet_rows


def _with_trace(row: dict[str, Any], i: int, trace: str | None, fmt: str) -> dict[str, Any]:
    answer = f"answer {i}"
    turns = [m for m in row["messages"][:-1]]
    if i % 4 == 1:  # a system turn before the user's: the assistant message is not the second
        turns = [{"role": "system", "content": "be brief"}, *turns]
    return {
        **row,
        "id": f"{i:032x}",
        "response": answer,
        "reasoning": trace,
        "reasoning_tokens": None if trace is None else len(trace) // 4,
        "messages": [*turns, assistant_message(answer, trace, fmt)],
    }


def _write(folder: Path, rows: list[dict[str, Any]], batch_rows: int = 4) -> list[dict[str, Any]]:
    async def go() -> None:
        writer = ShardWriter(folder, batch_rows=batch_rows)
        for row in rows:
            writer.add("train", row)
        await writer.close()

    asyncio.run(go())
    (shard,) = (folder / "data").rglob("*.parquet")
    return list(parquet_rows(shard))


def _messages(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The message structs as Parquet returns them: every field present, null where absent."""
    return [
        {"role": m["role"], "content": m["content"], "reasoning_content": m.get("reasoning_content")}
        for m in row["messages"]
    ]


def _trace(i: int) -> str | None:
    if i % 5 == 3:
        return None
    if i % 5 == 4:
        return ""
    return f"step {i}: " + "we reason carefully. " * (200 + i)


@pytest.mark.parametrize("fmt", ["field", "think-tags", "drop"])
def test_traces_read_back_as_written(tmp_path: Path, fmt: str) -> None:
    base = rows_in_one(tmp_path)
    rows = [_with_trace(base, i, _trace(i), fmt) for i in range(11)]
    assert _shares_traces(rows) == (fmt == "field")  # the shared conversion is the one under test
    back = {r["id"]: r for r in _write(tmp_path / "w", rows)}
    assert len(back) == len(rows)
    for row in rows:
        got = back[row["id"]]
        assert got["reasoning"] == row["reasoning"]
        assert got["messages"] == _messages(row)
        assert got["response"] == row["response"]
    if fmt == "field":  # the trace is in both places, byte for byte
        assert all(back[r["id"]]["messages"][-1]["reasoning_content"] == r["reasoning"] for r in rows)


def test_a_trace_given_as_an_equal_but_separate_string_is_kept_too(tmp_path: Path) -> None:
    """The shared conversion is taken only when the message holds the very str of `reasoning`: a row
    made elsewhere (a copy, or a message whose trace differs) is written as given."""
    base = rows_in_one(tmp_path)
    rows = [_with_trace(base, i, _trace(i), "field") for i in range(6)]
    rows[0]["messages"][-1]["reasoning_content"] = "".join(list(rows[0]["reasoning"]))  # equal, not the same
    rows[2]["messages"][-1]["reasoning_content"] = "a different trace"
    rows[1]["messages"][0]["reasoning_content"] = "a trace on an input turn"
    back = {r["id"]: r for r in _write(tmp_path / "w", rows, batch_rows=64)}
    for row in rows:
        assert back[row["id"]]["messages"] == _messages(row)
        assert back[row["id"]]["reasoning"] == row["reasoning"]


def test_long_text_columns_have_no_dictionary_or_statistics(tmp_path: Path) -> None:
    """Answers and traces are mostly unique: a dictionary of them is built and thrown away, and their
    min/max prune nothing. The short columns keep both."""
    base = rows_in_one(tmp_path)
    _write(tmp_path / "w", [_with_trace(base, i, _trace(i), "field") for i in range(6)])
    (shard,) = (tmp_path / "w" / "data").rglob("*.parquet")
    group = pq.read_metadata(shard).row_group(0)
    columns = {group.column(i).path_in_schema: group.column(i) for i in range(group.num_columns)}
    for name in (
        "reasoning",
        "response",
        "messages.list.element.content",
        "messages.list.element.reasoning_content",
    ):
        assert "RLE_DICTIONARY" not in columns[name].encodings, name
        assert not columns[name].is_stats_set, name
    for name in ("id", "template", "messages.list.element.role"):
        assert "RLE_DICTIONARY" in columns[name].encodings, name
        assert columns[name].is_stats_set, name


def test_a_row_of_the_wrong_shape_is_refused_by_arrow_as_before(tmp_path: Path) -> None:
    """The shared conversion looks only at rows as gen makes them; anything else goes to Arrow's own
    conversion, which says what is wrong (and the writer fails as it always has)."""
    import pyarrow as pa

    from gen.shards import _to_batch

    base = rows_in_one(tmp_path)
    rows = [_with_trace(base, i, _trace(i), "field") for i in range(3)]
    for bad in ("not a list", ["not a dict"], [{"role": "user", "content": 5}]):
        with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
            _to_batch([*rows, {**rows[0], "messages": bad}], "train")
    odd = [*rows, {**rows[0], "reasoning": b"bytes"}]  # Arrow takes bytes for a string: as before
    assert _to_batch(odd, "train").equals(
        pa.RecordBatch.from_pylist(odd, schema=_to_batch(rows, "train").schema)
    )
