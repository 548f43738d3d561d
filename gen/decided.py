"""The decided prefix of the task stream: how many tasks, from the first, an output has decided, so a
resume starts the stream there instead of walking past every done task (issue 16).

A resume otherwise computes, for each done task, its id (sha256), its split (sha256), the canonical JSON
of its input and a Task, only to skip it: ~4 us a task, seconds at a million rows. Instead each
checkpoint writes `index/decided.json` (`OutputDir.decided`), after the shards it covers:

    {"format": 1, "gen": "<version>", "stream_sha256": "...", "decided": K,
     "shards": {"data/train-00000.parquet": "<sha256>", ...}}

meaning: every task at a position below K in the stream has its row in one of those shards. It is used
only when all of it still holds: the same gen, the same stream (`stream_sha256`: the prompt file, the
template name, --samples, the variables' values, the seed table's bytes), and every listed shard on
disk with that sha256. Anything else (a changed seed file, another --samples, a shard rewritten or
gone, an unreadable file) and the resume walks the stream as before, checking each id: the marker
only ever speeds a resume up. --limit does not change the stream (it cuts it): a resume starts at K and
takes the rest up to the limit.

Not used (nor written) for a partition of a cluster run or a refresh (they keep only some ids), for
rejection sampling (retries are not stream positions) or a --batch run.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from gen import __version__
from gen.outdir import OutputDir, partial_path
from gen.templates import Expansion, Task, canonical_json

FORMAT = 1


def stream_sha256(expansion: Any) -> str | None:
    """The identity of a prompt file's task stream (the ids and their order), or None for a source that
    is not a prompt file's Expansion (gen eval's recorded tasks) or a seed table that cannot be read."""
    if not isinstance(expansion, Expansion):
        return None
    prompt = expansion.prompt
    h = hashlib.sha256(
        canonical_json(
            {
                "gen": __version__,
                "prompt_sha256": prompt.sha256,
                "template": prompt.spec.name,
                "samples": expansion.samples,
                "variables": expansion.variables,
                "seed": str(expansion.seed.path) if expansion.seed is not None else None,
            }
        ).encode()
    )
    if expansion.seed is not None:
        try:
            with open(expansion.seed.path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        except OSError:
            return None
    return h.hexdigest()


def read(out_dir: Path, stream: str, shards: dict[str, str]) -> int:
    """K, the tasks decided from the stream's start, when `index/decided.json` is there and holds for
    this stream and these committed shards (path -> sha256); else 0."""
    try:
        mark = orjson.loads(OutputDir(out_dir).decided.read_bytes())
        if (
            mark["format"] != FORMAT
            or mark["gen"] != __version__
            or mark["stream_sha256"] != stream
            or any(shards.get(rel) != sha for rel, sha in mark["shards"].items())
        ):
            return 0
        decided = mark["decided"]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return 0
    return decided if type(decided) is int and decided > 0 else 0


def write(out_dir: Path, stream: str, decided: int, shards: dict[str, str]) -> None:
    """Commit the marker (temporary name, rename). OSError is the caller's; a failed write leaves the
    previous marker, which still holds (shards are only ever added)."""
    path = OutputDir(out_dir).decided
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "format": FORMAT,
        "gen": __version__,
        "stream_sha256": stream,
        "decided": decided,
        "shards": shards,
    }
    tmp = partial_path(path, os.getpid())
    try:
        with open(tmp, "wb") as f:
            f.write(orjson.dumps(body, option=orjson.OPT_SORT_KEYS))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


class Prefix:
    """Which stream positions are still undecided in this run: positions are opened as the expansion
    yields their tasks (`track`) and closed when the task is decided (`close`: its row buffered, or
    skipped as done before); `decided()` is then the lowest open position, or the next one to yield."""

    def __init__(self, start: int) -> None:
        self._next = start
        self._open: dict[int, tuple[int, Task]] = {}  # id(task) -> (position, the task: keeps its id unique)

    def track(self, tasks: Iterator[Task]) -> Iterator[Task]:
        opened = self._open
        for task in tasks:
            opened[id(task)] = (self._next, task)
            self._next += 1
            yield task

    def close(self, task: Task) -> None:
        self._open.pop(id(task), None)

    def decided(self) -> int:
        return min((pos for pos, _ in self._open.values()), default=self._next)
