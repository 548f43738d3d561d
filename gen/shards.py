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

SPLITS = ("train", "eval", "rejects")


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
    folder = "rejects" if split == "rejects" else "data"
    return f"{folder}/{split}-{number:05d}.parquet"


def next_shard_numbers(out_dir: Path) -> dict[str, int]:
    """The first free shard number per split, so a new run never overwrites a committed shard."""
    numbers = {}
    for split in SPLITS:
        folder = out_dir / ("rejects" if split == "rejects" else "data")
        used = [
            int(p.stem.rsplit("-", 1)[1])
            for p in folder.glob(f"{split}-*.parquet")
            if p.stem.rsplit("-", 1)[1].isdigit()
        ]
        numbers[split] = max(used, default=-1) + 1
    return numbers


def write_shard(out_dir: Path, rel_path: str, schema: pa.Schema, columns: dict[str, list[Any]]) -> ShardInfo:
    """Build, compress, checksum and atomically commit one shard (runs in the writer thread)."""
    table = pa.Table.from_pydict(columns, schema=schema)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", write_statistics=True)
    data = sink.getvalue().to_pybytes()
    path = out_dir / rel_path
    atomic_write_bytes(path, data)
    split = Path(rel_path).stem.rsplit("-", 1)[0]
    return ShardInfo(rel_path, split, table.num_rows, hashlib.sha256(data).hexdigest(), len(data))


class ShardWriter:
    """Buffers rows per split and commits shards from one background thread, in order.

    `on_commit(shards)` is called in the writer thread after each shard lands, with every shard committed
    so far: the manifest is rewritten there, so the manifest on disk always matches the shards on disk.
    """

    def __init__(
        self,
        out_dir: Path,
        *,
        rows_per_shard: int = 50_000,
        on_commit: Callable[[list[ShardInfo]], None] | None = None,
        max_pending: int = 2,
    ) -> None:
        self.out_dir = out_dir
        self.rows_per_shard = rows_per_shard
        (out_dir / "data").mkdir(parents=True, exist_ok=True)
        (out_dir / "rejects").mkdir(parents=True, exist_ok=True)
        self._next = next_shard_numbers(out_dir)
        self._schemas = {"train": DATA_SCHEMA, "eval": DATA_SCHEMA, "rejects": REJECT_SCHEMA}
        self._buffers: dict[str, dict[str, list[Any]]] = {s: self._empty(s) for s in SPLITS}
        self._counts = dict.fromkeys(SPLITS, 0)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gen-shards")
        self._pending: list[Future[ShardInfo]] = []
        self._max_pending = max_pending
        self.shards: list[ShardInfo] = []
        self._on_commit = on_commit

    def _empty(self, split: str) -> dict[str, list[Any]]:
        return {name: [] for name in self._schemas[split].names}

    def add(self, split: str, row: dict[str, Any]) -> bool:
        """Buffer a row; True when the split's buffer is full and `flush(split)` should be awaited."""
        buf = self._buffers[split]
        for name, column in buf.items():
            column.append(row[name])
        self._counts[split] += 1
        return self._counts[split] >= self.rows_per_shard

    async def flush(self, split: str) -> None:
        """Hand the split's buffer to the writer thread; waits only when too many shards are queued."""
        if self._counts[split] == 0:
            return
        columns, self._buffers[split], self._counts[split] = self._buffers[split], self._empty(split), 0
        rel = shard_name(split, self._next[split])
        self._next[split] += 1
        self._pending.append(self._pool.submit(self._commit, rel, self._schemas[split], columns))
        while len(self._pending) > self._max_pending:
            await asyncio.wrap_future(self._pending.pop(0))
        self._pending = [f for f in self._pending if not f.done() or f.result() is None]

    def _commit(self, rel: str, schema: pa.Schema, columns: dict[str, list[Any]]) -> ShardInfo:
        info = write_shard(self.out_dir, rel, schema, columns)
        self.shards.append(info)
        if self._on_commit is not None:
            self._on_commit(list(self.shards))
        return info

    async def close(self) -> None:
        """Flush every split and wait until all shards are committed. Errors of the writer surface here."""
        for split in SPLITS:
            await self.flush(split)
        try:
            for fut in self._pending:
                await asyncio.wrap_future(fut)
        finally:
            self._pending.clear()
            self._pool.shutdown(wait=True)


def write_json(path: Path, value: Any) -> None:
    atomic_write_bytes(path, orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
