"""Resume state: what an output directory already holds, and the journal of answers not yet in a shard.

Every finished task (a row, a reject or a duplicate) is appended to the journal the moment its answer
arrives, with one unbuffered write, so a SIGKILL loses nothing the teacher was paid for: the page cache
keeps it even if the process dies mid-run. At each checkpoint all buffers become shards, the manifest is
rewritten, and the journal segments they covered are deleted. A resumed run reads the shards' ids,
replays the journal entries that are not in a shard yet, and asks the teacher only for the rest.

An entry is one JSON object a line, sealed with an XXH3-64 of its own bytes as its last key, `"c"`
(a journal an older gen wrote is sealed with CRC-32, a number below 2**32: `intact` takes both):

    {"s": "train", "r": {...row...}, "u": [12, 80], "c": 9733872310563924107}   an answer (a row, a
                                                                                reject or a duplicate)
    {"q": "<task id>", "e": [12, 120], "u": [12, 80], "c": 123456789012345678}   a reservation

`u` is what the teacher billed for one request (prompt and completion tokens, then, when the prompt
cache was used, the prompt tokens read from and written to it): on an answer, the request that decided
the task; on a reservation, the task's previous request (an invalid answer about to be re-asked), absent
on a first request; `a`, on a re-ask's reservation, how many answers of the task came before it (a
resume that asks the task again counts them among its attempts); `"o": 1`, that its request(s) went
through the chat API at the list price, not the batch price: every entry of an online run, and those of a
batch run's online fallback (--batch-fallback online), so a --batch resume of either prices them at the
list price (an entry without it, an older gen's or a batch request's, is priced at the resuming run's
price). A reservation is written, and reaches
the page cache, before its request leaves; `e` is that request's reserved cost: the prompt's estimate
(characters / 4, as the tpm limiter counts; a prompt in a script with fewer characters per token costs
more) plus the max_tokens asked for. The next entry of the same task settles it. One still open when the
journal is replayed was in flight when the run died: the teacher may have answered and billed it, so its
`e` counts as spent. That keeps --max-tokens and --max-usd counting across SIGKILLs for one small entry
per request, written in the same os.write as the worker's earlier answers.
"""

from __future__ import annotations

import asyncio
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import xxhash

from gen.outdir import SPLITS, WRITE_PIECE, OutputDir

_TASK_ID = re.compile(r"[0-9a-f]{16,128}")
# (prompt tokens, completion tokens), or with the prompt tokens read from and written to the provider's
# prompt cache: (prompt, completion, cached, cache_written). Journaled as it is, two or four numbers.
Usage = tuple[int, ...]
# Buffers a writev may take; even, so that a piece ends with an entry (each is a head and a tail).
_IOV_MAX = min(os.sysconf("SC_IOV_MAX"), 1024) // 2 * 2 if hasattr(os, "sysconf") else 16


def seal(entry: dict[str, Any]) -> bytes:
    """An entry as its journal line: its JSON with `"c"`, the XXH3-64 of the bytes before it, last.

    Not a cryptographic hash: it is there to catch an entry edited, truncated or corrupted on disk, and
    a forger who recomputes a checksum beats SHA-256 just as well (the shards' SHA-256 in the manifest
    covers what is committed). XXH3 rather than the CRC-32 gen sealed with before: an entry holding a
    40 kB reasoning trace took zlib's CRC-32 ~9 µs to read, XXH3 ~1 µs (bench/README.md, reasoning.py).
    """
    head, tail = sealed_parts(entry)
    return b"%s%s" % (head, tail)


def sealed_parts(entry: dict[str, Any]) -> tuple[memoryview, bytes]:
    """`seal(entry)` in two parts, the JSON without its closing brace and the checksum's tail, for a
    vectored write: an entry holding a 40 kB trace is copied once (by orjson), not three more times (a
    slice, the formatting and the join of a tick's entries)."""
    head = memoryview(orjson.dumps(entry))[:-1]  # without the closing brace
    return head, b',"c":%d}\n' % xxhash.xxh3_64_intdigest(head)


def intact(line: bytes, checksum: Any) -> bool:
    """Whether a sealed line (its JSON's `"c"` is `checksum`) is as it was written: `checksum` is the
    XXH3-64 of the bytes before `,"c":`, or, in a line an older gen wrote, their CRC-32 (below 2**32)."""
    at = line.rfind(b',"c":')
    if type(checksum) is not int or at < 0:
        return False
    head = memoryview(line)[:at]
    return xxhash.xxh3_64_intdigest(head) == checksum or (checksum < 1 << 32 and zlib.crc32(head) == checksum)


def fresh_line(path: Path) -> bytes:
    """What to append to a JSON-lines file before its next line: a newline when it ends inside a line (a
    crash cut it short), else nothing."""
    try:
        with open(path, "rb") as f:
            if f.seek(0, os.SEEK_END) == 0:
                return b""
            f.seek(-1, os.SEEK_END)
            return b"" if f.read(1) == b"\n" else b"\n"
    except FileNotFoundError:
        return b""


def id_key(task_id: str) -> int:
    """The 64-bit prefix of an id, as the resume and dedup indexes keep it (8 bytes, not a string)."""
    return int(task_id[:16], 16)


def partition_of(task_id: str, count: int) -> int:
    """The partition of a cluster run a task belongs to: the same in every run, on every node."""
    return int(task_id[:8], 16) % count


class Journal:
    """Append-only JSON-lines segments under OUTPUT/journal/, one open at a time.

    Entries that arrive in the same event-loop tick leave in one write at the end of that tick
    (`loop.call_soon`), or sooner: a worker's `reserve()` for its next request writes them with it.
    So an answer is on disk before the request that follows it leaves, and a SIGKILL loses at most the
    answers to requests in flight, whose reservations are on disk; nothing older than a tick is ever
    only in memory.
    """

    def __init__(
        self, out_dir: Path, run_id: str, *, partition: int | None = None, online: bool = False
    ) -> None:
        """`online`: the run buys every request through the chat API (not a batch run): each entry is
        marked `"o": 1`, so a --batch resume prices it at the list price, as it was bought."""
        self.dir = OutputDir(out_dir, partition).journal
        self.online = online
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
        self._pending: list[bytes | memoryview] = []  # whole entries, each as two parts
        self._scheduled = False
        self.error: OSError | None = None
        self._open()

    def _open(self) -> None:
        self.path = self.dir / f"{self.run_id}-{self._segment:05d}.jsonl"
        # O_APPEND and one os.write per entry: no user-space buffer to lose in a crash.
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def append(self, split: str, row: dict[str, Any], usage: Usage = (0, 0), *, online: bool = False) -> None:
        """Queue an answer for this tick's write, with what its request cost (`usage`); `online`: a batch
        run bought that request through the chat API, at the list price. Raises the error of an earlier
        failed write."""
        if self.error is not None:
            raise self.error
        entry: dict[str, Any] = {"s": split, "r": row, "u": usage}
        if online or self.online:
            entry["o"] = 1
        self._pending.extend(sealed_parts(entry))
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_soon)

    def reserve(
        self,
        task_id: str,
        estimate: Usage,
        usage: Usage | None = None,
        *,
        write: bool = True,
        answered: int = 0,
        online: bool = False,
    ) -> None:
        """Journal a request about to leave: `estimate` bounds its cost; `usage` is what the task's
        previous request cost, if any; `answered`, how many of its answers came before (a re-ask's);
        `online`: a batch run buys both through the chat API, at the list price. With `write`, it (and
        everything queued) is written before this returns; a failed write raises, and the request must
        not be sent."""
        if self.error is not None:
            raise self.error
        entry: dict[str, Any] = {"q": task_id, "e": estimate}
        if usage is not None:
            entry["u"] = usage
        if answered:
            entry["a"] = answered
        if online or self.online:
            entry["o"] = 1
        self._pending.extend(sealed_parts(entry))
        if write:
            self.write_now()

    def _flush_soon(self) -> None:
        self._scheduled = False
        self.write_pending()

    def write_now(self) -> None:
        """Write what is queued before returning, for what must not happen before it is on disk (a
        request leaving, a batch marked collected): a failed write (now or earlier) raises."""
        self.write_pending()
        if self.error is not None:
            raise self.error

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
        parts, self._pending = self._pending, []
        # One writev of the tick's entries, in pieces of whole entries past the system's IOV_MAX or past
        # WRITE_PIECE bytes (a piece holds at least one entry): a tick of 64 answers with 40 kB traces
        # cost ~11 us an entry in one writev of 2.5 MB, ~5.5 in pieces of 1 MiB (see WRITE_PIECE).
        start = size = 0
        for at in range(0, len(parts), 2):
            entry = len(parts[at]) + len(parts[at + 1])
            if at > start and (at - start >= _IOV_MAX or size + entry > WRITE_PIECE):
                self._writev(parts[start:at])
                start, size = at, 0
            size += entry
        self._writev(parts[start:])

    def _writev(self, chunk: list[bytes | memoryview]) -> None:
        assert self._fd is not None
        written = os.writev(self._fd, chunk)
        if written != sum(map(len, chunk)):  # a short write means the disk filled up mid-entry
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
    where = OutputDir(out_dir, partition)
    folders = [where.journal]
    if partition is not None:
        folders.append(where.journal_root)
    for folder in folders:
        try:
            folder.rmdir()
        except FileNotFoundError:
            continue
        except OSError:  # not empty
            return


@dataclass(frozen=True, slots=True)
class Entry:
    """One intact journal entry: an answer (`split` and `row` set) or a reservation (`estimate` set)."""

    task_id: str
    usage: Usage  # what the teacher billed for the request this entry reports, (0, 0) if none
    split: str | None = None
    row: dict[str, Any] | None = None
    estimate: Usage | None = None
    path: Path | None = None
    line: int = 0  # 1-based
    # A reservation's: how many answers of the task came before its request (invalid ones it re-asks), so
    # a resume that asks the task again counts them among its attempts.
    answered: int = 0
    # `"o"`: a batch run bought this entry's request(s) through the chat API (--batch-fallback online), so
    # a resume prices its usage (and a reservation's estimate) at the list price, not the batch price.
    online: bool = False

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True, slots=True)
class BadEntry:
    """A line that is not an intact entry gen wrote: skipped, and its task asked again."""

    path: Path
    line: int  # 1-based
    problem: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.problem}"


def _usage(value: Any) -> Usage | None:
    if (
        isinstance(value, list)
        and len(value) in (2, 4)
        and all(type(v) is int and 0 <= v < 1 << 53 for v in value)
    ):
        return tuple(value)
    return None


def _parse(line: bytes, path: Path, n: int, unsealed: bool = False) -> Entry | str:
    """The entry a whole line holds, or what is wrong with it. Raises JSONDecodeError if not JSON.
    With `unsealed`, an answer as gen wrote it before entries were sealed (`{"s", "r"}` alone) is taken
    too: those were paid for, and their usage is the row's own token counts."""
    entry = orjson.loads(line)
    if not isinstance(entry, dict):
        return "not a journal entry (not a JSON object)"
    if unsealed and entry.keys() == {"s", "r"} and isinstance(entry["r"], dict):
        row = entry["r"]
        entry["u"] = [row.get("prompt_tokens") or 0, row.get("completion_tokens") or 0]
    elif not intact(line, entry.get("c")):
        return "checksum mismatch (edited or corrupted)" if "c" in entry else "no checksum"
    usage = _usage(entry.get("u", [0, 0]))
    if usage is None:
        return "usage is not two token counts"
    online = entry.get("o", 0)
    if online not in (0, 1) or type(online) is not int:
        return "not a valid entry (its online mark is not 1)"
    if "q" in entry:
        task_id, estimate, answered = entry["q"], _usage(entry.get("e")), entry.get("a", 0)
        if (
            not isinstance(task_id, str)
            or not _TASK_ID.fullmatch(task_id)
            or estimate is None
            or type(answered) is not int
            or not 0 <= answered < 1 << 16
        ):
            return "not a valid reservation"
        return Entry(
            task_id, usage, estimate=estimate, path=path, line=n, answered=answered, online=online == 1
        )
    split, row = entry.get("s"), entry.get("r")
    if split not in SPLITS or not isinstance(row, dict):
        return "not a valid entry (split or row missing)"
    task_id = row.get("id")
    if not isinstance(task_id, str) or not _TASK_ID.fullmatch(task_id):
        return "not a valid entry (no task id)"
    return Entry(task_id, usage, split=split, row=row, path=path, line=n, online=online == 1)


def journal_entries(
    out_dir: Path,
    partition: int | None = None,
    *,
    skip: frozenset[str] = frozenset(),
    unsealed: bool = False,
) -> Iterator[Entry | BadEntry]:
    """Every entry of every segment, oldest first, except segments named in `skip`.

    A torn last line (killed mid-write) is passed over in silence; any other line that is not an
    intact entry (not JSON, a wrong shape, a checksum that does not match) comes out as a BadEntry.
    """
    folder = OutputDir(out_dir, partition).journal
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.jsonl"), key=lambda p: p.stat().st_mtime_ns):
        if path.name in skip:
            continue
        with open(path, "rb") as f:
            held: bytes | None = None  # one line of look-ahead: only the last line may be torn
            n = 0
            for line in f:
                if held is not None:
                    yield _read_line(path, n, held, last=False, unsealed=unsealed)
                held, n = line, n + 1
            if held is not None:
                bad = _read_line(path, n, held, last=True, unsealed=unsealed)
                if bad is not None:
                    yield bad


def _read_line(path: Path, n: int, line: bytes, *, last: bool, unsealed: bool = False) -> Any:
    try:
        parsed = _parse(line, path, n, unsealed)
    except orjson.JSONDecodeError:
        if last:
            return None  # a torn line: the process died inside this os.write
        parsed = "not JSON"
    return parsed if isinstance(parsed, Entry) else BadEntry(path, n, parsed)


def read_journal(out_dir: Path, partition: int | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """(split, row) of every intact answer, oldest first (reservations and bad lines left out)."""
    for entry in journal_entries(out_dir, partition):
        if isinstance(entry, Entry) and entry.split is not None:
            assert entry.row is not None
            yield entry.split, entry.row


def journal_segments(out_dir: Path, partition: int | None = None) -> list[Path]:
    folder = OutputDir(out_dir, partition).journal
    return sorted(folder.glob("*.jsonl")) if folder.is_dir() else []


def manifest_path(out_dir: Path, partition: int | None = None) -> Path:
    """OUTPUT/manifest.json, or OUTPUT/partitions/p003.json: the resume state of partition 3."""
    return OutputDir(out_dir, partition).manifest


def load_manifest(out_dir: Path, partition: int | None = None) -> dict[str, Any] | None:
    path = OutputDir(out_dir, partition).manifest
    if not path.exists():
        return None
    return orjson.loads(path.read_bytes())


# --- the batch log: which provider batches hold which requests (gen run --batch) ---


@dataclass(slots=True)
class Pending:
    """A request to send again: a re-ask (attempt > 1) or a retry of one that failed or expired in a
    batch. `messages` None means the task's own; `used` sums the usage of the task's earlier requests,
    `last` is what its previous request cost."""

    task_id: str
    attempt: int
    retry: int
    messages: list[dict[str, str]] | None
    seed: int
    used: Usage
    last: Usage | None


@dataclass(slots=True)
class LoggedBatch:
    name: str
    fingerprint: dict[str, Any]  # the recipe's (gen.manifest.recipe_fingerprint)
    provider: str
    requests: list[tuple[str, int, int]]  # (task id, attempt, retry)
    estimate: Usage
    at: float = 0.0  # when it was about to be submitted (epoch seconds)
    id: str | None = None  # the provider's batch id, once it accepted the batch
    done: str | None = None  # "collected", "failed" (refused as a whole) or "cancelled"


class BatchLog:
    """OUTPUT/batches.jsonl: append-only sealed entries (as the journal's), one os.write each.

        {"bi": NAME, "f": FINGERPRINT, "p": PROVIDER, "t": [[task id, attempt, retry], ...], "e": [..]}
            a batch about to be submitted (written before its upload starts)
        {"bc": NAME, "id": "batch_abc"}     the provider accepted it: written the moment its id is known
        {"bd": NAME, "st": "collected"}     every result of it is in the journal (or it failed as a
                                            whole, or was cancelled): never polled again
        {"br": TASK ID, "a": 2, "k": 0, "m": [...], "s": SEED, "u": [..], "l": [..]}
            a request to send in a later batch (a re-ask, or a retry of one that failed or expired)

    A batch with "bi" but no "bc" was never accepted (the run died uploading or creating it): its
    requests are sent again, and nothing was paid for them. One with "bc" and no "bd" is polled and
    collected by the next run, never submitted again.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def _write(self, entry: dict[str, Any]) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        data = seal(entry)
        if os.write(self._fd, data) != len(data):
            raise OSError(28, "short write to the batch log (disk full?)", str(self.path))

    def intent(self, b: LoggedBatch) -> None:
        self._write(
            {
                "bi": b.name,
                "f": b.fingerprint,
                "p": b.provider,
                "t": b.requests,
                "e": list(b.estimate),
                "ts": b.at,
            }
        )

    def created(self, name: str, batch_id: str) -> None:
        self._write({"bc": name, "id": batch_id})

    def done(self, name: str, how: str) -> None:
        self._write({"bd": name, "st": how})

    def pending(self, p: Pending) -> None:
        entry: dict[str, Any] = {"br": p.task_id, "a": p.attempt, "k": p.retry, "m": p.messages, "s": p.seed}
        entry["u"] = list(p.used)
        if p.last is not None:
            entry["l"] = list(p.last)
        self._write(entry)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def read(self) -> tuple[dict[str, LoggedBatch], dict[tuple[str, int, int], Pending], list[str]]:
        """(batches by name, pending requests by (task id, attempt, retry), problems): every intact
        entry, oldest first; a torn last line is passed over, any other bad line is a problem."""
        batches: dict[str, LoggedBatch] = {}
        pending: dict[tuple[str, int, int], Pending] = {}
        problems: list[str] = []
        try:
            raw = self.path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):  # no log (or no output directory) yet
            return batches, pending, problems
        lines = raw.split(b"\n")
        for n, line in enumerate(lines, 1):
            if not line:
                continue
            try:
                entry = orjson.loads(line)
                if not isinstance(entry, dict) or not intact(line, entry.get("c")):
                    raise ValueError("checksum mismatch")
                if "bi" in entry:
                    reqs = [(str(t), int(a), int(k)) for t, a, k in entry["t"]]
                    e = entry["e"]
                    batches[entry["bi"]] = LoggedBatch(
                        entry["bi"], entry["f"], entry["p"], reqs, (int(e[0]), int(e[1])), float(entry["ts"])
                    )
                elif "bc" in entry:
                    batches[entry["bc"]].id = str(entry["id"])
                elif "bd" in entry:
                    batches[entry["bd"]].done = str(entry["st"])
                elif "br" in entry:
                    u, last = entry["u"], entry.get("l")
                    p = Pending(
                        entry["br"],
                        int(entry["a"]),
                        int(entry["k"]),
                        entry["m"],
                        int(entry["s"]),
                        tuple(int(x) for x in u[:3]),  # prompt, completion[, cached]
                        (int(last[0]), int(last[1])) if last else None,
                    )
                    key = (p.task_id, p.attempt, p.retry)
                    pending.pop(key, None)  # the order of the dict is the order last written
                    pending[key] = p
                else:
                    raise ValueError("not a batch log entry")
            except (orjson.JSONDecodeError, ValueError, KeyError, TypeError, IndexError) as e:
                if n == len(lines) or (n == len(lines) - 1 and not lines[-1]):
                    if isinstance(e, orjson.JSONDecodeError):
                        continue  # a torn last line: the process died inside this os.write
                problems.append(f"{self.path}:{n}: {e}")
        return batches, pending, problems
