"""gen.shards.read_columns(message_keys=...): the messages column trimmed in Arrow equals the plain read
with each message cut to those keys (what `gen eval` sends the student as the recorded input turns)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from gen.shards import read_columns

MSG = pa.struct([("role", pa.string()), ("content", pa.string()), ("reasoning_content", pa.string())])


def _write(path: Path, messages: list, chunk: int) -> None:
    table = pa.table(
        {"id": [str(i) for i in range(len(messages))], "messages": pa.array(messages, pa.list_(MSG))}
    )
    pq.write_table(table, path, row_group_size=chunk)  # several row groups: several chunks


def _trimmed(rows: list) -> list:
    return [None if ms is None else [{"role": m["role"], "content": m["content"]} for m in ms] for ms in rows]


def _messages(i: int) -> list[dict]:
    return [
        {"role": "system", "content": f"sys {i}", "reasoning_content": None},
        {"role": "user", "content": f"user {i} é", "reasoning_content": None},
        {
            "role": "assistant",
            "content": f"answer {i}",
            "reasoning_content": f"thought {i}" if i % 2 else None,
        },
    ][: 1 + i % 3]


def test_trimmed_messages_equal_the_plain_read(tmp_path: Path) -> None:
    rows = [_messages(i) for i in range(50)]
    _write(tmp_path / "s.parquet", rows, chunk=7)
    got = read_columns(tmp_path, "s.parquet", ["id", "messages"], message_keys=("role", "content"))
    plain = read_columns(tmp_path, "s.parquet", ["id", "messages"])
    assert got["messages"] == _trimmed(plain["messages"])
    assert got["id"] == plain["id"]
    assert plain["messages"][1][1]["reasoning_content"] is None  # the plain read keeps every key


def test_a_null_list_or_message_falls_back_to_python(tmp_path: Path) -> None:
    rows = [_messages(i) for i in range(10)]
    rows[3] = None
    rows[5] = [None, *rows[5][:1]]
    _write(tmp_path / "s.parquet", rows, chunk=4)
    got = read_columns(tmp_path, "s.parquet", ["messages"], message_keys=("role", "content"))
    want = [
        None
        if ms is None
        else [None if m is None else {"role": m["role"], "content": m["content"]} for m in ms]
        for ms in rows
    ]
    assert got["messages"] == want
