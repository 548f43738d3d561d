"""The writer copies a batch of ASCII traces straight into one buffer of their exact size
(`gen.shards._traces_array`) instead of letting Arrow's builder grow its buffer by doubling: the array,
and so the shard, must be what Arrow's own conversion makes, byte for byte, and anything that is not a
plain ASCII str must still go through Arrow's conversion."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pyarrow as pa
import pytest
from test_reasoning_dedup import rows_in_one
from test_reasoning_shards import _trace, _with_trace

from gen.shards import ShardWriter, _conversion_pool, _traces_array, write_rows


class _Text(str):
    pass


def _same_as_arrow(traces: list) -> pa.Array:
    got = _traces_array(traces, _conversion_pool())
    got.validate(full=True)
    want = pa.array(traces, type=pa.string())
    assert got.type == pa.string()
    assert got.equals(want)
    assert got.null_count == want.null_count
    # Same offsets and the same bytes: nothing in the data buffer that Arrow's conversion would not put there.
    assert (
        got.buffers()[1].to_pybytes()[: 4 * (len(traces) + 1)]
        == want.buffers()[1].to_pybytes()[: 4 * (len(traces) + 1)]
    )
    end = int.from_bytes(want.buffers()[1].to_pybytes()[4 * len(traces) : 4 * (len(traces) + 1)], "little")
    assert got.buffers()[2].to_pybytes()[:end] == want.buffers()[2].to_pybytes()[:end]
    return got


@pytest.mark.parametrize(
    "traces",
    [
        ["we reason. " * 4000, "then we check. " * 3000],
        ["first", None, "", "x" * 100_000, None],
        [None, "only the second has one"],
        ["", "", "a"],
        [None, ""],
        [],
    ],
)
def test_ascii_traces_are_copied_into_what_arrow_makes(traces: list) -> None:
    got = _same_as_arrow(traces)
    assert got.buffers()[2].size == sum(len(t) for t in traces if t)  # one buffer, of the traces' size


@pytest.mark.parametrize(
    "traces",
    [
        ["ascii", "déjà vu: the UTF-8 bytes outnumber the characters", None],
        ["思考过程" * 1000, "plain"],
        [_Text("a str subclass"), "plain"],
        ["\U0001f914 thinking", None, ""],
    ],
)
def test_other_traces_are_converted_by_arrow(traces: list) -> None:
    assert _same_as_arrow(traces).to_pylist() == traces


def test_a_shard_of_ascii_traces_is_byte_for_byte_the_one_arrow_writes(tmp_path: Path) -> None:
    """The ShardWriter's shard (traces copied by `_traces_array`, shared with the messages in `field`)
    is the file `write_rows` makes from the same rows through Arrow's own row conversion."""
    base = rows_in_one(tmp_path)
    rows = [_with_trace(base, i, _trace(i), "field") for i in range(12)]

    async def go() -> None:
        writer = ShardWriter(tmp_path / "w", batch_rows=64)
        for row in rows:
            writer.add("train", row)
        await writer.close()

    asyncio.run(go())
    (ours,) = (tmp_path / "w" / "data").rglob("*.parquet")
    theirs = write_rows(tmp_path / "x", "data/train-00000.parquet", rows)
    assert ours.read_bytes() == (tmp_path / "x" / theirs.path).read_bytes()


def test_without_the_c_helpers_traces_go_through_arrow(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where ctypes cannot reach CPython's C API or the C library (another interpreter, another
    platform), `_str_bytes` gives None and the traces are converted by pa.array, the same array."""
    import gen.shards as shards

    monkeypatch.setattr(shards, "_str_bytes", lambda: None)
    _same_as_arrow(["we reason. " * 100, None, ""])
