"""The only pyarrow writer: Parquet shards (zstd, atomic rename), their checksums, and the manifest.

Rows arrive as dicts on the event loop and are buffered column-wise; a full buffer is handed to one
writer thread, so the loop never blocks on compression or disk, and shards are committed in order.
A shard is written to a temporary name, fsynced, then renamed: a crash leaves either the whole shard
or nothing under its final name.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])

DATA_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("messages", pa.list_(MESSAGE)),
        ("response", pa.string()),
        ("output", pa.string()),
        ("vars", pa.string()),
        ("sample", pa.int32()),
        ("split", pa.string()),
        ("template", pa.string()),
        ("template_version", pa.string()),
        ("template_sha256", pa.string()),
        ("prompt_sha256", pa.string()),
        ("teacher_provider", pa.string()),
        ("teacher_model", pa.string()),
        ("teacher_license", pa.string()),
        ("sampling", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("finish_reason", pa.string()),
        ("attempts", pa.int32()),
        ("created_at", pa.timestamp("ms", tz="UTC")),
        ("run_id", pa.string()),
        ("generator_version", pa.string()),
    ]
)

REJECT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("reason", pa.string()),
        ("error", pa.string()),
        ("response", pa.string()),
        ("vars", pa.string()),
        ("sample", pa.int32()),
        ("template", pa.string()),
        ("teacher_model", pa.string()),
        ("attempts", pa.int32()),
        ("created_at", pa.timestamp("ms", tz="UTC")),
        ("run_id", pa.string()),
    ]
)

DUPLICATE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("duplicate_of", pa.string()),  # the first 16 hex digits of the kept row's id
        ("kind", pa.string()),  # "exact" or "near"
        ("output", pa.string()),
        ("vars", pa.string()),
        ("created_at", pa.timestamp("ms", tz="UTC")),
        ("run_id", pa.string()),
    ]
)

SPLITS = ("train", "eval", "rejects", "duplicates")
SCHEMAS = {
    "train": DATA_SCHEMA,
    "eval": DATA_SCHEMA,
    "rejects": REJECT_SCHEMA,
    "duplicates": DUPLICATE_SCHEMA,
}
FOLDERS = {"train": "data", "eval": "data", "rejects": "rejects", "duplicates": "duplicates"}


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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that a crash leaves the old version or the new one, never a torn one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
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


def shard_name(split: str, number: int) -> str:
    return f"{FOLDERS[split]}/{split}-{number:05d}.parquet"


def split_of_path(rel_path: str) -> str:
    return Path(rel_path).stem.rsplit("-", 1)[0]


def committed_shards(out_dir: Path) -> list[str]:
    """Relative paths of every shard on disk under its final name, in a stable order."""
    found = []
    for folder in sorted(set(FOLDERS.values())):
        for p in sorted((out_dir / folder).glob("*.parquet")):
            if split_of_path(p.name) in SPLITS and not p.name.startswith("."):
                found.append(f"{folder}/{p.name}")
    return found


def remove_partial_files(out_dir: Path) -> None:
    """Delete temporaries a crash left behind mid-write; they never held a committed shard."""
    for folder in set(FOLDERS.values()) | {"."}:
        for p in (out_dir / folder).glob(".*.tmp-*"):
            p.unlink(missing_ok=True)


def next_shard_numbers(out_dir: Path) -> dict[str, int]:
    """The first free shard number per split, so a new run never overwrites a committed shard."""
    numbers = dict.fromkeys(SPLITS, 0)
    for rel in committed_shards(out_dir):
        split, _, number = Path(rel).stem.rpartition("-")
        if number.isdigit():
            numbers[split] = max(numbers[split], int(number) + 1)
    return numbers


def describe_shard(out_dir: Path, rel_path: str) -> ShardInfo:
    """A committed shard's row count and checksum, read back from disk."""
    path = out_dir / rel_path
    rows = pq.ParquetFile(path).metadata.num_rows
    return ShardInfo(rel_path, split_of_path(rel_path), rows, sha256_file(path), path.stat().st_size)


def read_columns(out_dir: Path, rel_path: str, columns: list[str]) -> dict[str, list[Any]]:
    """Some columns of a shard as Python lists (used to rebuild the resume and dedup indexes)."""
    table = pq.read_table(out_dir / rel_path, columns=columns)
    return {name: table.column(name).to_pylist() for name in columns}


def write_shard(out_dir: Path, rel_path: str, schema: pa.Schema, rows: list[dict[str, Any]]) -> ShardInfo:
    """Build, compress, checksum and atomically commit one shard (runs in the writer thread)."""
    # Rows stay dicts until here: appending a dict on the event loop is the cheapest hand-off, and
    # Arrow's C++ converter builds the columns in the writer thread.
    table = pa.Table.from_pylist(rows, schema=schema)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", write_statistics=True)
    data = sink.getvalue().to_pybytes()
    path = out_dir / rel_path
    atomic_write_bytes(path, data)
    return ShardInfo(
        rel_path, split_of_path(rel_path), table.num_rows, hashlib.sha256(data).hexdigest(), len(data)
    )


class ShardWriter:
    """Buffers rows per split and commits them from one background thread, in order, at checkpoints.

    A checkpoint turns every non-empty buffer into a shard, then calls `on_checkpoint(shards, token)` in
    the writer thread, with every shard committed so far and the caller's token: the manifest is
    rewritten there, so the manifest on disk always matches the shards on disk.
    """

    def __init__(
        self,
        out_dir: Path,
        *,
        rows_per_shard: int = 50_000,
        shards: list[ShardInfo] | None = None,
        on_checkpoint: Callable[[list[ShardInfo], Any], None] | None = None,
        max_pending: int = 2,
    ) -> None:
        self.out_dir = out_dir
        self.rows_per_shard = rows_per_shard
        for folder in set(FOLDERS.values()):
            (out_dir / folder).mkdir(parents=True, exist_ok=True)
        self._next = next_shard_numbers(out_dir)
        self._buffers: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gen-shards")
        self._pending: list[Future[None]] = []
        self._max_pending = max_pending
        self.shards: list[ShardInfo] = list(shards or [])
        self._on_checkpoint = on_checkpoint
        self.failed: BaseException | None = None

    @property
    def buffered(self) -> int:
        return sum(len(b) for b in self._buffers.values())

    def add(self, split: str, row: dict[str, Any]) -> bool:
        """Buffer a row; True when a buffer is full and `checkpoint()` should be awaited."""
        buf = self._buffers[split]
        buf.append(row)
        return len(buf) >= self.rows_per_shard

    async def checkpoint(self, token: Any = None) -> None:
        """Hand every buffer to the writer thread; waits only when too many checkpoints are queued."""
        if self.failed is not None:
            raise self.failed
        jobs = []
        for split in SPLITS:
            rows, self._buffers[split] = self._buffers[split], []
            for start in range(0, len(rows), self.rows_per_shard):  # no shard over rows_per_shard
                chunk = rows[start : start + self.rows_per_shard]
                jobs.append((shard_name(split, self._next[split]), SCHEMAS[split], chunk))
                self._next[split] += 1
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

    def _commit(self, jobs: list[tuple[str, pa.Schema, list[dict[str, Any]]]], token: Any) -> None:
        if self.failed is not None:  # after one failed write nothing more is written: the state is known
            raise self.failed
        try:
            for rel, schema, columns in jobs:
                self.shards.append(write_shard(self.out_dir, rel, schema, columns))
            if self._on_checkpoint is not None:
                self._on_checkpoint(list(self.shards), token)
        except BaseException as e:
            self.failed = e
            raise

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


def write_json(path: Path, value: Any) -> None:
    atomic_write_bytes(path, orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
