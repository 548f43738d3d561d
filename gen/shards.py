"""The only pyarrow writer: Parquet shards (zstd, atomic rename), their checksums, and the manifest.

Rows arrive as dicts on the event loop and are buffered column-wise; a full buffer is handed to one
writer thread, so the loop never blocks on compression or disk, and shards are committed in order.
pyarrow is imported on first use, not with this module: a fresh run needs it only when its first rows
are converted, so its 0.2 s of import is not spent before the first request.
A shard is written to a temporary name, fsynced, then renamed: a crash leaves either the whole shard
or nothing under its final name.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from gen.outdir import (  # noqa: F401  (re-exported: the shard names are part of this module's API)
    FOLDERS,
    SPLITS,
    WRITE_PIECE,
    OutputDir,
    ShardName,
    parse_shard_name,
    partial_path,
    partition_tag,
    shard_name,
    split_of_path,
)
from gen.rows import COLUMNS

if TYPE_CHECKING:
    import pyarrow as pa


@functools.cache
def _pyarrow() -> Any:
    """pyarrow, imported (and its memory pool chosen) on first use."""
    import pyarrow as pa
    import pyarrow.parquet  # noqa: F401  (pa.parquet below)

    # Arrow's default pool (jemalloc or mimalloc) keeps freed memory for reuse: tens of megabytes of RSS
    # on a run that builds a few tables. The system allocator gives it back; shard building is not
    # allocation-bound.
    pa.set_memory_pool(pa.system_memory_pool())
    return pa


class _PandasHidden:
    """`with WITHOUT_PANDAS:` makes `import pandas` fail in this thread, as if pandas were not installed.

    pyarrow imports pandas (when installed) on its first conversion of Python objects, only to ask
    whether they are pandas objects, and its C++ converter tries again on every call until the import
    succeeds. gen never passes pandas objects; the import would cost about 0.5 s of CPU and 40 MB of
    RSS, a tenth of a 5,000-row run's CPU and a third of its memory. Hidden only around gen's own
    conversions and only in the thread doing them: other code in the process imports pandas as usual,
    and once pandas is loaded the finder is never asked."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._installed = False

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if (name == "pandas" or name.startswith("pandas.")) and getattr(self._local, "on", False):
            raise ImportError("pandas is not needed here (gen.shards)", name=name)

    def __enter__(self) -> None:
        if not self._installed:
            sys.meta_path.insert(0, self)
            self._installed = True
        self._local.on = True

    def __exit__(self, *exc: object) -> None:
        self._local.on = False


WITHOUT_PANDAS = _PandasHidden()


def _arrow_type(pa: Any, name: str) -> pa.DataType:
    """The pyarrow type of a type named in gen.rows."""
    if name == "messages":
        return pa.list_(
            pa.struct([("role", pa.string()), ("content", pa.string()), ("reasoning_content", pa.string())])
        )
    if name == "logprobs":  # float32: a log-probability needs no more, and 1,000 tokens x top-5 stay small
        alternative = pa.struct([("token", pa.string()), ("logprob", pa.float32())])
        return pa.list_(
            pa.struct([("token", pa.string()), ("logprob", pa.float32()), ("top", pa.list_(alternative))])
        )
    if name == "timestamp_ms_utc":
        return pa.timestamp("ms", tz="UTC")
    return {"string": pa.string(), "int32": pa.int32(), "int64": pa.int64()}[name]


@functools.cache
def _schemas() -> dict[str, pa.Schema]:
    """split -> the Arrow schema of its shards, from the row contract (gen.rows), built once, on first use.
    Every field is nullable, as the shards have always declared; which columns gen never leaves null is
    checked by row_problem."""
    pa = _pyarrow()
    return {
        split: pa.schema([(c.name, _arrow_type(pa, c.type)) for c in columns])
        for split, columns in COLUMNS.items()
    }


# Columns that must hold a value in a row of that split (Arrow would take a null; gen's code would not).
_NOT_NULL = {split: tuple(c.name for c in cols if not c.nullable) for split, cols in COLUMNS.items()}


@functools.cache
def _row_checks() -> dict[str, list[tuple[str, str, Callable[[Any], bool]]]]:
    """split -> (column, type name, test of a Python value) for each column of its Arrow schema."""
    pa = _pyarrow()

    def test(t: pa.DataType) -> Callable[[Any], bool]:
        if pa.types.is_string(t):
            return lambda v: v is None or type(v) is str
        if pa.types.is_integer(t) or pa.types.is_timestamp(t):
            bits = t.bit_width
            lo, hi = (
                (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
                if not pa.types.is_unsigned_integer(t)
                else (0, (1 << bits) - 1)
            )
            return lambda v: v is None or (type(v) is int and lo <= v <= hi)
        if pa.types.is_floating(t):
            return lambda v: v is None or type(v) is float
        if pa.types.is_list(t):
            item = test(t.value_type)
            return lambda v: v is None or (type(v) is list and all(item(x) for x in v))
        if pa.types.is_struct(t):
            fields = [(f.name, test(f.type)) for f in t]
            return lambda v: v is None or (type(v) is dict and all(ok(v.get(name)) for name, ok in fields))
        raise TypeError(f"no row check for Arrow type {t}")

    return {
        split: [(f.name, str(f.type), test(f.type)) for f in schema] for split, schema in _schemas().items()
    }


def row_problem(split: str, row: dict[str, Any]) -> str | None:
    """What keeps `row` from being a row of `split`'s shards (a column missing or of the wrong type),
    or None. The same contract the writer converts with: a row that passes never fails the Parquet write."""
    for name, type_name, ok in _row_checks()[split]:
        if name not in row:
            return f"column {name} missing"
        value = row[name]
        if not ok(value) or (value is None and name in _NOT_NULL.get(split, ())):
            return f"column {name} holds {repr(value)[:60]}, expected {type_name}"
    return None


# Module constants that import pyarrow only when asked for: SCHEMAS (split -> schema) and one per kind.
_LAZY = {
    "SCHEMAS": None,
    "DATA_SCHEMA": "train",
    "REJECT_SCHEMA": "rejects",
    "DUPLICATE_SCHEMA": "duplicates",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        split = _LAZY[name]
        return _schemas() if split is None else _schemas()[split]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True, slots=True)
class ShardInfo:
    path: str  # relative to the output directory
    split: str
    rows: int
    sha256: str
    bytes: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "split": self.split,
            "rows": self.rows,
            "sha256": self.sha256,
            "bytes": self.bytes,
        }


def atomic_write_bytes(path: Path, data: bytes | pa.Buffer) -> None:
    """Write a file so that a crash leaves the old version or the new one, never a torn one."""
    tmp = partial_path(path, os.getpid())
    view = memoryview(data).cast("B")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        at = 0
        while at < len(view):  # os.write may write less than asked: go on from where it stopped
            at += os.write(fd, view[at : at + WRITE_PIECE])  # see WRITE_PIECE
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def committed_shards(out_dir: Path, *, partition: int | None = None) -> list[str]:
    """Relative paths of every shard on disk under its final name (`OutputDir.committed_shards`)."""
    return OutputDir(out_dir, partition).committed_shards()


def remove_partial_files(out_dir: Path, *, partition: int | None = None) -> None:
    """Delete temporaries a crash left behind mid-write; they never held a committed shard.

    With `partition`, only that partition's own (other partitions may be writing beside it).
    """
    for p in OutputDir(out_dir, partition).partial_files():
        p.unlink(missing_ok=True)


def next_shard_numbers(out_dir: Path, partition: int | None = None) -> dict[str, int]:
    """The first free shard number per split, so a new run never overwrites a committed shard.

    With `partition`, the numbers of that partition's own shards (each partition numbers its own).
    """
    numbers = dict.fromkeys(SPLITS, 0)
    for rel in committed_shards(out_dir, partition=partition):
        name = parse_shard_name(rel)
        if name is not None and not name.merge and name.partition == partition:
            numbers[name.split] = max(numbers[name.split], name.number + 1)
    return numbers


def describe_shard(out_dir: Path, rel_path: str) -> ShardInfo:
    """A committed shard's row count and checksum, read back from disk."""
    path = out_dir / rel_path
    rows = _pyarrow().parquet.ParquetFile(path).metadata.num_rows
    return ShardInfo(rel_path, split_of_path(rel_path), rows, sha256_file(path), path.stat().st_size)


def read_columns(
    out_dir: Path,
    rel_path: str,
    columns: list[str],
    *,
    message_keys: tuple[str, ...] | None = None,
    threads: bool = True,
) -> dict[str, list[Any]]:
    """Some columns of a shard as Python lists (used to rebuild the resume and dedup indexes).

    `message_keys`: each message of the `messages` column comes back with only these keys (only those
    fields are read and decoded, and no Python object is made for the others: `gen eval` needs role and
    content, not reasoning_content). `threads=False` decodes on this thread alone: Arrow's thread pool
    spends more CPU than it saves on a shard of a few thousand rows (`gen eval` reading its split)."""
    # ParquetFile, not pq.read_table: read_table goes through pyarrow.dataset, whose import pulls in
    # pandas (0.45 s), on the path to a resumed run's first request.
    wanted = columns
    if message_keys is not None and "messages" in columns:
        wanted = [c for c in columns if c != "messages"]
        wanted += [f"messages.list.element.{k}" for k in message_keys]
    table = _pyarrow().parquet.ParquetFile(out_dir / rel_path).read(columns=wanted, use_threads=threads)
    out = {}
    for name in columns:
        col = table.column(name)
        if name == "messages" and message_keys is not None:
            out[name] = [m for chunk in col.chunks for m in _messages_with(chunk, message_keys)]
        else:
            out[name] = col.to_pylist()
    return out


def _messages_with(chunk: Any, keys: tuple[str, ...]) -> list[Any]:
    """A list<struct> chunk as Python lists of dicts holding only `keys`."""
    pa = _pyarrow()
    values = chunk.values
    if chunk.null_count or values.null_count:  # no row holds a null list or message; if one does, plainly
        return [
            None if ms is None else [None if m is None else {k: m[k] for k in keys} for m in ms]
            for ms in chunk.to_pylist()
        ]
    fields = [values.field(k) for k in keys]
    if values.offset:  # field() ignores the struct's own offset
        fields = [f.slice(values.offset, len(values)) for f in fields]
    trimmed = pa.StructArray.from_arrays(fields, names=list(keys))
    return pa.ListArray.from_arrays(chunk.offsets, trimmed).to_pylist()


def iter_column_batches(
    out_dir: Path, rel_path: str, columns: list[str], batch_size: int = 65_536
) -> Iterator[dict[str, list[Any]]]:
    """Some columns of a shard, one record batch at a time, as Python lists: only those columns are
    decoded and memory is bounded by a batch, however large the shard (`gen report` reads a million-row
    output this way). Columns the shard lacks (written by an older row schema) are left out of every
    batch; timestamps come back as epoch milliseconds, not datetime objects (a tenth of the cost)."""
    pa = _pyarrow()
    with pa.parquet.ParquetFile(out_dir / rel_path) as pf:
        names = set(pf.schema_arrow.names)
        have = [c for c in columns if c in names]
        if not have:
            return
        for batch in pf.iter_batches(batch_size=batch_size, columns=have):
            out = {}
            for name in have:
                col = batch.column(name)
                if pa.types.is_timestamp(col.type):
                    col = col.cast(pa.int64())
                out[name] = col.to_pylist()
            yield out


def read_checked(
    path: Path, keep: list[str], batch_size: int = 65_536
) -> tuple[pa.Schema, int, list[pa.RecordBatch]]:
    """Decode every page of every column of a Parquet file, a record batch at a time, and keep only the
    columns `keep` names (those it has): its Arrow schema, its row count and those batches. A corrupt
    page anywhere raises pyarrow's error, as reading the whole table would, but what stays in memory is
    the kept columns in Arrow form, not the file's rows as Python objects (`gen audit` reads shards so)."""
    pa = _pyarrow()
    with pa.parquet.ParquetFile(path) as pf:
        schema = pf.schema_arrow
        have = [c for c in keep if c in schema.names]
        rows, batches = 0, []
        for batch in pf.iter_batches(batch_size=batch_size):
            rows += batch.num_rows
            batches.append(batch.select(have))
    return schema, rows, batches


def parquet_rows(path: Path, batch_size: int = 4096) -> Iterator[dict[str, Any]]:
    """Every row of a Parquet file (a seed table), a batch at a time; pyarrow's errors propagate."""
    with _pyarrow().parquet.ParquetFile(path) as pf:
        for batch in pf.iter_batches(batch_size=batch_size):
            yield from batch.to_pylist()


def parquet_column_names(path: Path) -> list[str]:
    """A Parquet file's top-level column names, from its footer."""
    with _pyarrow().parquet.ParquetFile(path) as pf:
        return list(pf.schema_arrow.names)


def parquet_row_count(path: Path) -> int:
    """Rows of a Parquet file, from its footer."""
    with _pyarrow().parquet.ParquetFile(path) as pf:
        return pf.metadata.num_rows


def parquet_batch_sizes(path: Path) -> Iterator[int]:
    """Decode every page of a Parquet file, a batch at a time, yielding each batch's row count: the check
    that the whole file reads (a corrupt page raises pyarrow's error where it is)."""
    with _pyarrow().parquet.ParquetFile(path) as pf:
        for group in range(pf.num_row_groups):
            for batch in pf.iter_batches(batch_size=65_536, row_groups=[group]):
                yield batch.num_rows


# Leaf columns of long, mostly unique text (answers, traces): no dictionary and no min/max statistics.
# A dictionary of unique 40 kB traces is built, hashed and thrown away (Arrow falls back to plain past
# 1 MB), and min/max of free text prunes nothing; skipping both cuts the write of a batch of traces by a
# fifth to a quarter when timed alone (less in a whole run: bench/README.md). The short columns keep both
# (ids, template names, counts).
_LONG_TEXT = frozenset(
    {
        "response",
        "reasoning",
        "messages.list.element.content",
        "messages.list.element.reasoning_content",
    }
)


def _leaf_paths(schema: pa.Schema) -> list[str]:
    """The dotted paths of a schema's Parquet leaf columns (`messages.list.element.role`, ...)."""
    pa = _pyarrow()

    def walk(prefix: str, t: pa.DataType) -> Iterator[str]:
        if pa.types.is_list(t):
            yield from walk(f"{prefix}.list.element", t.value_type)
        elif pa.types.is_struct(t):
            for f in t:
                yield from walk(f"{prefix}.{f.name}", f.type)
        else:
            yield prefix

    return [path for f in schema for path in walk(f.name, f.type)]


# Data pages v2: a v1 page copies its values once more to put the repetition and definition levels in
# front of them before compressing; a v2 page keeps the levels apart. With 8,000-token traces that copy
# was ~9 us a row of the ~70 a `field` shard's Parquet write costs (two copies of each trace), ~3 of
# `drop`'s ~40. pyarrow, polars, duckdb and Hugging Face `datasets` read them (tests/test_shard_pages.py);
# a reader that implements v1 pages only does not (README: "Shards are zstd-compressed Parquet").
DATA_PAGE_VERSION = "2.0"


def write_table(out_dir: Path, rel_path: str, table: pa.Table) -> ShardInfo:
    """Compress, checksum and atomically commit one shard (runs in the writer thread)."""
    pa = _pyarrow()
    sink = pa.BufferOutputStream()
    short = [c for c in _leaf_paths(table.schema) if c not in _LONG_TEXT]
    pa.parquet.write_table(
        table,
        sink,
        compression="zstd",
        use_dictionary=short,
        write_statistics=short,
        data_page_version=DATA_PAGE_VERSION,
    )
    data = sink.getvalue()  # an Arrow buffer: hashed and written without a copy into Python bytes
    atomic_write_bytes(out_dir / rel_path, data)
    return ShardInfo(
        rel_path, split_of_path(rel_path), table.num_rows, hashlib.sha256(data).hexdigest(), data.size
    )


def rewrite_without(
    out_dir: Path, rel_path: str, drop: set[int], new_rel: str
) -> tuple[list[dict[str, Any]], ShardInfo | None]:
    """Commit shard `rel_path` without its rows at positions `drop` as `new_rel` (the cluster merge pass;
    the old shard stays until the manifest lists the new one). Returns the removed rows' `id`, `output`,
    `response` and `vars`, in position order, and the new shard (None when no row is left: nothing
    written)."""
    pa = _pyarrow()
    import pyarrow.compute as pc

    table = pa.parquet.ParquetFile(out_dir / rel_path).read()
    keep = pa.array([j not in drop for j in range(table.num_rows)])
    gone = table.filter(pc.invert(keep)).select(["id", "output", "response", "vars"]).to_pylist()
    kept = table.filter(keep)
    return gone, (write_table(out_dir, new_rel, kept) if kept.num_rows else None)


def write_rows(out_dir: Path, rel_path: str, rows: list[dict[str, Any]]) -> ShardInfo:
    """Commit rows as one shard of the split its path names (its folder is made if missing)."""
    split = split_of_path(rel_path)
    (out_dir / rel_path).parent.mkdir(parents=True, exist_ok=True)
    return write_table(out_dir, rel_path, _pyarrow().Table.from_pylist(rows, schema=_schemas()[split]))


class ShardWriter:
    """Buffers rows per split and commits them from one background thread, in order, at checkpoints.

    Every `batch_rows` rows of a split are handed to the writer thread, which turns them into an Arrow
    record batch: the event loop only appends dicts, and a buffered row costs its bytes in Arrow rather
    than a few kilobytes of Python objects. A checkpoint turns every split's batches into shards of at
    most `rows_per_shard` rows, then calls `on_checkpoint(shards, token)` in the writer thread with every
    shard committed so far: the manifest is rewritten there, so it always matches the shards on disk.
    """

    def __init__(
        self,
        out_dir: Path,
        *,
        rows_per_shard: int = 50_000,
        batch_rows: int = 1024,
        shards: list[ShardInfo] | None = None,
        on_checkpoint: Callable[[list[ShardInfo], Any], None] | None = None,
        max_pending: int = 2,
        partition: int | None = None,
        max_buffer_chars: int = 64 * 1024 * 1024,
    ) -> None:
        self.out_dir = out_dir
        self.max_buffer_chars = max_buffer_chars
        self._chars = 0  # characters of `response` and `reasoning` buffered since the last checkpoint
        self._batch_chars = max_buffer_chars // 8  # hand the rows to the writer thread past this
        self.partition = partition
        self.rows_per_shard = rows_per_shard
        self.batch_rows = batch_rows
        for split in SPLITS:
            OutputDir(out_dir).folder(split).mkdir(parents=True, exist_ok=True)
        self._next = next_shard_numbers(out_dir, partition)
        self._rows: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}  # not yet converted
        self._unconverted = dict.fromkeys(SPLITS, 0)  # logprob entries in `_rows`
        self._batches: dict[str, list[Future[pa.RecordBatch]]] = {s: [] for s in SPLITS}
        self._counts = dict.fromkeys(SPLITS, 0)  # rows buffered per split since the last checkpoint
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gen-shards")
        self._pending: list[Future[None]] = []
        self._max_pending = max_pending
        self.shards: list[ShardInfo] = list(shards or [])
        self._on_checkpoint = on_checkpoint
        self.failed: BaseException | None = None

    @property
    def buffered(self) -> int:
        return sum(self._counts.values())

    def add(self, split: str, row: dict[str, Any]) -> bool:
        """Buffer a row; True when a split holds a shard's worth (`rows_per_shard` rows, or
        `max_buffer_chars` characters of text and traces) and `checkpoint()` should be awaited."""
        rows = self._rows[split]
        rows.append(row)
        # Long rows (reasoning traces of tens of thousands of tokens) fill memory long before a shard's
        # rows: the size of what the buffers hold is bounded too, by their two big text columns.
        self._chars += len(row.get("response") or "") + _trace_chars(row)
        # Logprobs (`logprobs = K`): a dict per token and per alternative, ~250 bytes each as Python
        # objects and ~12 as Arrow. Counted at the Arrow size towards the shard's bound, and handed to
        # the writer thread (which converts them) once a split's rows hold _MAX_UNCONVERTED of them.
        entries = _logprob_entries(row)
        if entries:
            self._chars += entries * _LOGPROB_ARROW_BYTES
            self._unconverted[split] += entries
        if (
            len(rows) >= self.batch_rows
            or self._chars >= self._batch_chars
            or self._unconverted[split] >= _MAX_UNCONVERTED
        ):
            self._rows[split] = []
            self._unconverted[split] = 0
            self._batches[split].append(self._pool.submit(_to_batch, rows, split))
            self._batch_chars = self._chars + self.max_buffer_chars // 8
        self._counts[split] += 1
        return self._counts[split] >= self.rows_per_shard or self._chars >= self.max_buffer_chars

    async def checkpoint(self, token: Any = None) -> None:
        """Hand every buffer to the writer thread; waits only when too many checkpoints are queued."""
        if self.failed is not None:
            raise self.failed
        jobs = []
        for split in SPLITS:
            if not self._counts[split]:
                continue
            if self._rows[split]:
                self._batches[split].append(self._pool.submit(_to_batch, self._rows[split], split))
            self._unconverted[split] = 0
            jobs.append((split, self._batches[split]))
            self._rows[split], self._batches[split], self._counts[split] = [], [], 0
        self._chars, self._batch_chars = 0, self.max_buffer_chars // 8
        if not jobs and token is None:
            return
        self._pending.append(self._pool.submit(self._commit, jobs, token))
        while len(self._pending) > self._max_pending:
            await self._wait(self._pending.pop(0))
        for fut in [f for f in self._pending if f.done()]:
            self._pending.remove(fut)
            await self._wait(fut)

    async def _wait(self, fut: Future[None]) -> None:
        try:
            await asyncio.wrap_future(fut)
        except BaseException as e:
            self.failed = e
            raise

    def _commit(self, jobs: list[tuple[str, list[Future[pa.RecordBatch]]]], token: Any) -> None:
        """In the writer thread, after the conversions it needs (the pool runs jobs first in, first out)."""
        if self.failed is not None:  # after one failed write nothing more is written: the state is known
            raise self.failed
        try:
            for split, batches in jobs:
                schema = _schemas()[split]
                table = _pyarrow().Table.from_batches([b.result() for b in batches], schema=schema)
                for start in range(0, table.num_rows, self.rows_per_shard):
                    rel = shard_name(split, self._next_number(split), self.partition)
                    chunk = table.slice(start, self.rows_per_shard)
                    self.shards.append(write_table(self.out_dir, rel, chunk))
            if self._on_checkpoint is not None:
                self._on_checkpoint(list(self.shards), token)
        except BaseException as e:
            self.failed = e
            raise

    def _next_number(self, split: str) -> int:
        number = self._next[split]
        self._next[split] += 1
        return number

    async def close(self, token: Any = None) -> None:
        """A last checkpoint, then wait until every shard is committed. Writer errors surface here."""
        try:
            if self.failed is None:
                await self.checkpoint(token)
            for fut in self._pending:
                await self._wait(fut)
        finally:
            self._pending.clear()
            self._pool.shutdown(wait=True)


def _to_batch(rows: list[dict[str, Any]], split: str) -> pa.RecordBatch:
    """Rows as one Arrow record batch of `split`'s schema, what `RecordBatch.from_pylist` makes (Arrow's
    C++ converter; in the writer thread, off the event loop). Traces (megabytes a batch) are converted
    apart, into `_conversion_pool`."""
    pa = _pyarrow()
    schema = _schemas()[split]
    with WITHOUT_PANDAS:
        if "reasoning" not in schema.names or not any(r.get("reasoning") for r in rows):
            return pa.RecordBatch.from_pylist(rows, schema=schema)
        pool = _conversion_pool()
        # With reasoning_format = "field" each trace is in `reasoning` and in the assistant message's
        # `reasoning_content`, one str object in both: it is converted once, and the messages' child
        # column points into the `reasoning` column's bytes (`_with_shared_traces`), not a copy of them.
        shared = "messages" in schema.names and _shares_traces(rows)
        rest = pa.RecordBatch.from_pylist(rows, schema=_rest_schema(split, shared))
        columns = dict(zip(rest.schema.names, rest.columns, strict=True))
        columns["reasoning"] = _traces_array([r.get("reasoning") for r in rows], pool)
        if shared:
            # The messages as they are, converted without their `reasoning_content` (Arrow reads only the
            # struct's fields from each dict): no per-row copy of a message to blank the trace out.
            untraced = pa.array([r["messages"] for r in rows], type=_untraced(split), memory_pool=pool)
            columns["messages"] = _with_shared_traces(untraced, columns["reasoning"], schema)
        return pa.RecordBatch.from_arrays([columns[name] for name in schema.names], schema=schema)


# A batch's traces are copied into one buffer of their exact size only while its offsets fit Arrow's
# `string` (int32); past that (never with the writer's bounded batches) pa.array decides.
_MAX_STRING_BYTES = (1 << 31) - 1


def _traces_array(traces: list[Any], pool: Any) -> pa.Array:
    """A batch's traces (str or None) as one Arrow string array in `pool`: what
    `pa.array(traces, pa.string(), memory_pool=pool)` makes, in fewer copies. When every trace is an
    ASCII str its UTF-8 bytes are its characters, so the sizes are known before copying: each trace is
    copied once, straight from the str's own bytes, into a buffer allocated at its final size. Arrow's
    builder instead grows its buffer by doubling it (every byte copied again on the way, and fresh pages
    faulted in): ~4.5 us a row of an 8,000-token trace in a run (bench/README.md, `reasoning.py`).
    Anything else (a non-ASCII trace, whose UTF-8 length is not its len(); a str subclass) is converted
    by pa.array, as before."""
    pa = _pyarrow()
    total = 0
    for t in traces:
        if t is None:
            continue
        if type(t) is not str or not t.isascii():
            total = -1
            break
        total += len(t)
    helpers = _str_bytes()
    if total < 0 or total > _MAX_STRING_BYTES or helpers is None:
        return pa.array(traces, type=pa.string(), memory_pool=pool)
    import numpy as np

    lengths = [0 if t is None else len(t) for t in traces]
    offsets = np.zeros(len(traces) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    data = pa.allocate_buffer(total, memory_pool=pool)
    utf8, copy = helpers
    at = data.address
    for t, n in zip(traces, lengths, strict=True):
        if n:
            copy(at, utf8(t, None), n)  # `t` (held by `traces`) keeps the bytes alive meanwhile
            at += n
    nulls = sum(t is None for t in traces)
    validity = pa.array(np.array([t is not None for t in traces])).buffers()[1] if nulls else None
    return pa.StringArray.from_buffers(len(traces), pa.py_buffer(offsets), data, validity, nulls)


@functools.cache
def _str_bytes() -> tuple[Callable[..., int], Callable[..., Any]] | None:
    """(the address of a str's UTF-8 bytes, memmove), both called with the GIL held; None where ctypes
    cannot give them (no CPython C API, no C library loaded by name: traces then go through pa.array).
    CPython's PyUnicode_AsUTF8AndSize returns, for an ASCII str, a pointer to the characters the str
    object holds (no copy, nothing cached in the str); they live as long as the str. memmove is libc's
    through ctypes.PyDLL, not ctypes.memmove: that one lets go of the GIL around every call, and a
    batch's hundreds of hand-overs to the event loop and back cost more than the copies saved.
    Both are function objects of gen's own (`pythonapi[name]`, not the attribute every user of
    ctypes.pythonapi shares): setting their types changes no other library's, and a restype another
    library sets (c_char_p: a NUL-terminated copy) would have the copy read past that copy's end."""
    try:
        import ctypes

        utf8 = ctypes.pythonapi["PyUnicode_AsUTF8AndSize"]
        memmove = ctypes.PyDLL(None)["memmove"]
    except (AttributeError, ImportError, OSError, TypeError):  # ImportError: a Python without _ctypes
        return None
    utf8.restype = ctypes.c_void_p
    utf8.argtypes = [ctypes.py_object, ctypes.c_void_p]
    memmove.restype = ctypes.c_void_p
    memmove.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    return utf8, memmove


@functools.cache
def _rest_schema(split: str, shared: bool) -> pa.Schema:
    """The columns `_to_batch` converts row-wise: all of `split`'s but `reasoning` (and, when the traces
    are shared, `messages`)."""
    apart = {"reasoning", *(("messages",) if shared else ())}
    return _pyarrow().schema([f for f in _schemas()[split] if f.name not in apart])


@functools.cache
def _conversion_pool() -> Any:
    """The memory pool traces are converted into: Arrow's jemalloc (else mimalloc, as the Arrow build has
    them), not the system allocator (gen's default pool, chosen for RSS). Arrow grows a column's buffer
    by doubling it, and a batch of traces is megabytes: from the system allocator each step is a fresh
    mmap, paid in page faults and copies, several times the copy of the bytes themselves
    (bench/README.md, `reasoning.py`). Both cost the same CPU there; jemalloc's peak RSS was ~20 MB
    lower."""
    pa = _pyarrow()
    for make in (pa.jemalloc_memory_pool, pa.mimalloc_memory_pool):
        try:
            return make()
        except NotImplementedError:  # not in this Arrow build
            continue
    return pa.default_memory_pool()


_LOGPROB_ARROW_BYTES = 12  # one token or alternative in Arrow: its text (~4 bytes), offset and float32
_MAX_UNCONVERTED = 200_000  # logprob entries a split keeps as Python dicts (~50 MB) before converting


def _logprob_entries(row: dict[str, Any]) -> int:
    """The tokens and alternatives of a row's `logprobs` (0 without). Any shape row_problem passes: a
    null entry or `top` (a journal row is untrusted) counts as none."""
    logprobs = row.get("logprobs")
    return sum(1 + len((t or {}).get("top") or ()) for t in logprobs) if logprobs else 0


def _trace_chars(row: dict[str, Any]) -> int:
    """The characters of a row's trace its buffered row holds: once where `messages` shares the str
    (`field`) or leaves it out (`drop`), twice where the assistant's content carries a copy of it
    (`think-tags`: the content is then longer than the trace). Counting a shared trace twice cut
    `field` shards at half the rows `drop`'s were, and a checkpoint costs the same whatever a shard's
    size: 8,000-token traces took ~15 us a row more CPU for it (bench/README.md, `reasoning.py`)."""
    trace = row.get("reasoning")
    if not trace:
        return 0
    messages = row.get("messages")
    content = messages[-1].get("content") if messages and isinstance(messages[-1], dict) else None
    return 2 * len(trace) if isinstance(content, str) and len(content) > len(trace) else len(trace)


def _shares_traces(rows: list[dict[str, Any]]) -> bool:
    """Whether every row with a trace carries that same str object as its last message's
    `reasoning_content`, and no other message has one (what `gen.reasoning.assistant_message` makes
    in `field` format)."""
    shared = False
    for r in rows:
        trace, messages = r.get("reasoning"), r.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            return False  # not a row as gen makes it: Arrow's own conversion says what is wrong
        if trace is None:
            if any(m.get("reasoning_content") is not None for m in messages):
                return False
            continue
        if not isinstance(trace, str) or not messages or messages[-1].get("reasoning_content") is not trace:
            return False
        if any(m.get("reasoning_content") is not None for m in messages[:-1]):
            return False
        shared = True
    return shared


def _with_shared_traces(messages: pa.Array, traces: pa.Array, schema: pa.Schema) -> pa.Array:
    """`messages` (converted without `reasoning_content`, `_untraced`) as `schema`'s messages column, the
    last message of each row that has a trace pointing at that trace in `traces` (the `reasoning`
    column): a string column over the same data buffer, whose offsets give each such message its row's
    bytes and every other message none (null)."""
    import numpy as np

    pa = _pyarrow()
    ends = np.frombuffer(traces.buffers()[1], dtype=np.int32, count=len(traces) + 1)[1:]
    list_offsets = np.frombuffer(messages.buffers()[1], dtype=np.int32, count=len(messages) + 1)
    values = messages.values
    has = _valid(traces)
    last = list_offsets[1:][has] - 1  # the child position of each such row's last message
    child_ends = np.zeros(len(values), dtype=np.int32)
    child_ends[last] = ends[has]
    offsets = np.zeros(len(values) + 1, dtype=np.int32)
    np.maximum.accumulate(child_ends, out=offsets[1:])
    valid = np.zeros(len(values), dtype=bool)
    valid[last] = True
    child = pa.StringArray.from_buffers(
        len(values),
        pa.py_buffer(offsets),
        traces.buffers()[2],
        pa.array(valid).buffers()[1],
        int(len(values) - valid.sum()),
    )
    struct_type = schema.field("messages").type.value_type
    fields = [values.field(f.name) if f.name != "reasoning_content" else child for f in struct_type]
    structs = pa.StructArray.from_arrays(fields, fields=list(struct_type))
    mask = None if messages.null_count == 0 else pa.array(~_valid(messages))
    return pa.ListArray.from_arrays(messages.offsets, structs, type=schema.field("messages").type, mask=mask)


@functools.cache
def _untraced(split: str) -> pa.DataType:
    """`split`'s messages type without the messages' `reasoning_content` field."""
    pa = _pyarrow()
    struct_type = _schemas()[split].field("messages").type.value_type
    return pa.list_(pa.struct([f for f in struct_type if f.name != "reasoning_content"]))


def _valid(array: pa.Array) -> Any:
    """Which values of `array` are not null, as a numpy bool array: its validity bitmap unpacked, not
    `is_null()`, whose import of Arrow's compute module cost a run with traces ~30 ms."""
    import numpy as np

    if array.null_count == 0:
        return np.ones(len(array), dtype=bool)
    bits = np.unpackbits(np.frombuffer(array.buffers()[0], dtype=np.uint8), bitorder="little")
    return bits[array.offset : array.offset + len(array)].astype(bool)


def write_json(path: Path, value: Any) -> None:
    atomic_write_bytes(path, orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")


def write_eval_results(path: Path, rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> None:
    """`gen eval`'s per-row results as one zstd Parquet file, committed atomically. `columns` names each
    column and its type (string, bool, int64, float64): the per-field score columns vary by schema."""
    pa = _pyarrow()
    types = {"string": pa.string(), "bool": pa.bool_(), "int64": pa.int64(), "float64": pa.float64()}
    schema = pa.schema([(name, types[kind]) for name, kind in columns])
    with WITHOUT_PANDAS:
        table = pa.Table.from_pylist(rows, schema=schema)
    sink = pa.BufferOutputStream()
    pa.parquet.write_table(table, sink, compression="zstd")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, sink.getvalue())


_SHORT_EVAL_TEXT = frozenset(("split", "reason", "judge"))  # results.parquet's few-valued strings


def write_eval_columns(path: Path, data: dict[str, list[Any]], columns: list[tuple[str, str]]) -> None:
    """`write_eval_results` for results already held column by column (`data`: name -> values)."""
    pa = _pyarrow()
    types = {"string": pa.string(), "bool": pa.bool_(), "int64": pa.int64(), "float64": pa.float64()}
    with WITHOUT_PANDAS:
        arrays = [pa.array(data[name], type=types[kind]) for name, kind in columns]
    table = pa.Table.from_arrays(arrays, schema=pa.schema([(n, types[k]) for n, k in columns]))
    sink = pa.BufferOutputStream()
    # Long text columns (the answers) without dictionary or statistics, as in the shards: neither helps
    # a reader of unique texts, and both cost the writer.
    short = [name for name, kind in columns if kind != "string" or name in _SHORT_EVAL_TEXT]
    pa.parquet.write_table(table, sink, compression="zstd", use_dictionary=short, write_statistics=short)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, sink.getvalue())
