"""Shards are written with Parquet data pages v2 (issue 14, Numbers: a v1 page copies a trace once more
to put the levels in front of it). What that must not change: the readers the README names (pyarrow,
polars, duckdb, Hugging Face `datasets`) read a shard of `field` rows, whose trace is in `reasoning` and
in the assistant message's `reasoning_content`, back exactly as the rows were given."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from test_reasoning_dedup import rows_in_one

from gen.reasoning import assistant_message
from gen.shards import ShardWriter

# A Thrift compact PageHeader starts with field 1, `type` (i32): 0x15, then the zigzag varint of the
# PageType: DATA_PAGE (0) -> 0x00, DICTIONARY_PAGE (2) -> 0x04, DATA_PAGE_V2 (3) -> 0x06.
_PAGE_TYPE = {b"\x15\x00": "v1", b"\x15\x06": "v2", b"\x15\x04": "dictionary"}


def _rows(tmp_path: Path) -> list[dict[str, Any]]:
    base = rows_in_one(tmp_path)
    rows = []
    for i in range(40):
        trace = None if i % 7 == 3 else f"step {i}: " + "we reason with care, then check. " * (50 + 37 * i)
        answer = f"\\boxed{{{i}}}"
        rows.append(
            {
                **base,
                "id": f"{i:032x}",
                "response": answer,
                "reasoning": trace,
                "reasoning_tokens": None if trace is None else len(trace) // 4,
                "messages": [*base["messages"][:-1], assistant_message(answer, trace, "field")],
            }
        )
    return rows


def _shard(folder: Path, rows: list[dict[str, Any]]) -> Path:
    async def go() -> None:
        writer = ShardWriter(folder, batch_rows=16)
        for row in rows:
            writer.add("train", row)
        await writer.close()

    asyncio.run(go())
    (shard,) = (folder / "data").glob("*.parquet")
    return shard


def _first_data_page(path: Path, column: str) -> str:
    """The kind of the first data page of a column of a Parquet file's first row group."""
    group = pq.read_metadata(path).row_group(0)
    chunk = next(
        group.column(j) for j in range(group.num_columns) if group.column(j).path_in_schema == column
    )
    with open(path, "rb") as f:
        f.seek(chunk.data_page_offset)
        return _PAGE_TYPE[f.read(2)]


def _want(rows: list[dict[str, Any]]) -> list[tuple[str, str | None, str | None, str]]:
    return [
        (r["id"], r["reasoning"], r["messages"][-1].get("reasoning_content"), r["response"]) for r in rows
    ]


def test_shards_have_v2_data_pages(tmp_path: Path) -> None:
    shard = _shard(tmp_path / "w", _rows(tmp_path))
    for column in ("reasoning", "messages.list.element.reasoning_content", "id", "created_at"):
        assert _first_data_page(shard, column) == "v2", column
    assert pq.read_metadata(shard).num_rows == 40


def test_pyarrow_reads_a_shard_of_shared_traces_back(tmp_path: Path) -> None:
    rows = _rows(tmp_path)
    table = pq.read_table(_shard(tmp_path / "w", rows))
    got = [
        (r["id"], r["reasoning"], r["messages"][-1]["reasoning_content"], r["response"])
        for r in table.to_pylist()
    ]
    assert got == _want(rows)
    assert all(m["reasoning_content"] is None for r in table.to_pylist() for m in r["messages"][:-1])


def test_polars_reads_a_shard_of_shared_traces_back(tmp_path: Path) -> None:
    pl = pytest.importorskip("polars")
    rows = _rows(tmp_path)
    frame = pl.read_parquet(_shard(tmp_path / "w", rows))
    got = [
        (r["id"], r["reasoning"], r["messages"][-1]["reasoning_content"], r["response"])
        for r in frame.iter_rows(named=True)
    ]
    assert got == _want(rows)


def test_duckdb_reads_a_shard_of_shared_traces_back(tmp_path: Path) -> None:
    duckdb = pytest.importorskip("duckdb")
    rows = _rows(tmp_path)
    shard = _shard(tmp_path / "w", rows)
    con = duckdb.connect()
    got = con.execute(
        "SELECT id, reasoning, messages[len(messages)].reasoning_content, response"
        " FROM read_parquet(?) ORDER BY id",
        [str(shard)],
    ).fetchall()
    assert got == _want(rows)
    # The nested column is read as a whole too, not only its last field.
    (count,) = con.execute(
        "SELECT count(*) FROM (SELECT unnest(messages) AS m FROM read_parquet(?)) WHERE m.role = 'assistant'",
        [str(shard)],
    ).fetchone()
    assert count == 40


def test_datasets_reads_a_shard_of_shared_traces_back(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rows = _rows(tmp_path)
    shard = _shard(tmp_path / "w", rows)
    ds = datasets.load_dataset(
        "parquet", data_files={"train": str(shard)}, split="train", cache_dir=str(tmp_path / "hf")
    )
    got = [(r["id"], r["reasoning"], r["messages"][-1]["reasoning_content"], r["response"]) for r in ds]
    assert got == _want(rows)


def test_the_page_header_check_tells_v1_from_v2(tmp_path: Path) -> None:
    """The test's own page check, on files pyarrow writes with either version."""
    import pyarrow as pa

    table = pa.table({"t": ["a" * 100, None, "b" * 100]})
    for version, want in (("1.0", "v1"), ("2.0", "v2")):
        path = tmp_path / f"{version}.parquet"
        pq.write_table(table, path, use_dictionary=False, data_page_version=version)
        assert _first_data_page(path, "t") == want
