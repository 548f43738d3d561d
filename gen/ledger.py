"""Resume state: what an output directory already holds, and the journal of answers not yet in a shard.

Every finished task (a row, a reject or a duplicate) is appended to the journal the moment its answer
arrives, with one unbuffered write, so a SIGKILL loses nothing the teacher was paid for: the page cache
keeps it even if the process dies mid-run. At each checkpoint all buffers become shards, the manifest is
rewritten, and the journal segments they covered are deleted. A resumed run reads the shards' ids,
replays the journal entries that are not in a shard yet, and asks the teacher only for the rest.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

JOURNAL_DIR = "journal"


def journal_dir(out_dir: Path, partition: int | None = None) -> Path:
    """OUTPUT/journal/, or OUTPUT/journal/p003/ for partition 3 of a cluster run."""
    folder = out_dir / JOURNAL_DIR
    return folder / f"p{partition:03d}" if partition is not None else folder


def id_key(task_id: str) -> int:
    """The 64-bit prefix of an id, as the resume and dedup indexes keep it (8 bytes, not a string)."""
    return int(task_id[:16], 16)


def partition_of(task_id: str, count: int) -> int:
    """The partition of a cluster run a task belongs to: the same in every run, on every node."""
    return int(task_id[:8], 16) % count


class Journal:
    """Append-only JSON-lines segments under OUTPUT/journal/, one open at a time.

    Entries that arrive in the same event-loop tick leave in one write at the end of that tick
    (`loop.call_soon`), or sooner: a worker calls `write_pending()` before it sends its next request.
    So an answer is on disk before the request that follows it leaves, and a SIGKILL loses at most the
    answers to requests in flight; nothing older than a tick is ever only in memory.
    """

    def __init__(self, out_dir: Path, run_id: str, *, partition: int | None = None) -> None:
        self.dir = journal_dir(out_dir, partition)
        for attempt in range(3):
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
                break
            except FileNotFoundError:  # a finished partition removed the empty journal/ between mkdirs
                if attempt == 2:
                    raise
        self.run_id = run_id
        self._segment = 0
        self._fd: int | None = None
        self.path: Path | None = None
        self._pending: list[bytes] = []
        self._scheduled = False
        self.error: OSError | None = None
        self._open()

    def _open(self) -> None:
        self.path = self.dir / f"{self.run_id}-{self._segment:05d}.jsonl"
        # O_APPEND and one os.write per entry: no user-space buffer to lose in a crash.
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def append(self, split: str, row: dict[str, Any]) -> None:
        """Queue an entry for this tick's write. Raises the error of an earlier failed write."""
        if self.error is not None:
            raise self.error
        self._pending.append(orjson.dumps({"s": split, "r": row}) + b"\n")
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        self._scheduled = False
        self.write_pending()

    def write_pending(self) -> None:
        """Write what is queued now. An error is kept and raised by the next append()."""
        if not self._pending:
            return
        try:
            self.flush()
        except OSError as e:  # surfaces at the next append, in a worker that can stop the run
            self.error = e

    def flush(self) -> None:
        if not self._pending or self._fd is None:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        written = os.write(self._fd, data)
        if written != len(data):  # a short write means the disk filled up mid-entry
            raise OSError(28, "short write to the journal (disk full?)", str(self.path))

    def rotate(self) -> Path:
        """Close the current segment and start the next; returns the closed segment's path."""
        assert self._fd is not None and self.path is not None
        self.flush()
        os.close(self._fd)
        closed = self.path
        self._segment += 1
        self._open()
        return closed

    def close(self) -> None:
        """Write what is queued (best effort: an error is kept in `self.error`) and close."""
        if self._fd is not None:
            if self.error is None:
                try:
                    self.flush()
                except OSError as e:
                    self.error = e
            os.close(self._fd)
            self._fd = None
        if self.path is not None and self.path.exists() and self.path.stat().st_size == 0:
            self.path.unlink()


def remove_empty_journal(out_dir: Path, partition: int | None = None) -> None:
    """Remove the run's journal folder, then OUTPUT/journal/ itself, if empty: a finished run leaves no
    journal. A folder holding answers (or another partition's folder) stays; rmdir never deletes them."""
    folders = [journal_dir(out_dir, partition)]
    if partition is not None:
        folders.append(journal_dir(out_dir))
    for folder in folders:
        try:
            folder.rmdir()
        except FileNotFoundError:
            continue
        except OSError:  # not empty
            return


def read_journal(out_dir: Path, partition: int | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every entry of every segment, oldest first. A torn last line (killed mid-write) is skipped."""
    folder = journal_dir(out_dir, partition)
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.jsonl"), key=lambda p: p.stat().st_mtime_ns):
        with open(path, "rb") as f:
            for line in f:
                try:
                    entry = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue  # a torn line: the process died inside this os.write
                yield entry["s"], entry["r"]


def journal_segments(out_dir: Path, partition: int | None = None) -> list[Path]:
    folder = journal_dir(out_dir, partition)
    return sorted(folder.glob("*.jsonl")) if folder.is_dir() else []


@dataclass(slots=True)
class OutputState:
    """What is already committed in an output directory."""

    manifest: dict[str, Any] | None = None
    done: set[int] = field(default_factory=set)  # id keys of rows, rejects and duplicates in shards
    kept_outputs: list[tuple[str, str]] = field(default_factory=list)  # (id, dedup text) of data rows
    shard_paths: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.manifest is None and not self.shard_paths


PARTITIONS_DIR = "partitions"


def manifest_path(out_dir: Path, partition: int | None = None) -> Path:
    """OUTPUT/manifest.json, or OUTPUT/partitions/p003.json: the resume state of partition 3."""
    if partition is None:
        return out_dir / "manifest.json"
    return out_dir / PARTITIONS_DIR / f"p{partition:03d}.json"


def load_manifest(out_dir: Path, partition: int | None = None) -> dict[str, Any] | None:
    path = manifest_path(out_dir, partition)
    if not path.exists():
        return None
    return orjson.loads(path.read_bytes())
