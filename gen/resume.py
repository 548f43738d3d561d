"""What a resumed run loads before it asks anything: the shards earlier runs committed (ids to skip,
kept outputs to dedup against, other datasets named by --dedup-against) and the answers the journal
holds that no shard does, with what the journal says was spent.

Functions of the `Run` they fill (gen.pipeline): its claimed ids, dedup state, counters and budget.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from gen.budget import list_price
from gen.ledger import BadEntry, Usage, id_key, journal_entries, journal_segments
from gen.reasoning import restored
from gen.shards import (
    ShardInfo,
    committed_shards,
    describe_shard,
    read_columns,
    remove_partial_files,
    row_problem,
    split_of_path,
)

if TYPE_CHECKING:
    from gen.pipeline import Run

SKIPPED_SHOWN = 20  # bad journal entries named on stderr one by one; the rest are counted in one line


def load_committed(run: Run) -> list[ShardInfo]:
    """Index what earlier runs committed: ids (to skip) and kept outputs (to dedup against)."""
    remove_partial_files(run.p.out_dir, partition=run.partition)
    committed = committed_shards(run.p.out_dir, partition=run.partition)
    if not committed and not run.p.opts.dedup_against:
        return _load_committed(run, committed)  # a fresh output: nothing to index (no numpy to import)
    from gen.near_dedup import small_pages

    with small_pages():  # the indexes built here are GBs at 10M rows (see there)
        return _load_committed(run, committed)


def _load_committed(run: Run, committed: list[str]) -> list[ShardInfo]:
    out = run.p.out_dir
    listed = {s["path"]: s for s in (run.p.previous or {}).get("shards", [])}
    shards: list[ShardInfo] = []
    # Nothing committed (a fresh run): no reader, nor its import of gen.dedup_index (`gen eval`, which
    # writes no index, would import it for nothing).
    ahead = _SegmentReads(run, committed, listed) if committed and run.dedup.can_load() else None
    try:
        for rel in committed:
            _load_shard(run, rel, listed.get(rel), shards, ahead)
    finally:
        if ahead is not None:
            ahead.close()
    run.claimed.compact()  # sorted here, in this thread, rather than at the workers' first lookup
    if run.tracks_prefix():  # where the task stream starts (gen.decided), off the event loop
        from gen import decided

        run._stream = decided.stream_sha256(run.p.expansion)
        if run._stream is not None:
            run._start = decided.read(out, run._stream, {s.path: s.sha256 for s in shards})
    for other in run.p.opts.dedup_against:  # rows of other datasets count as already kept
        theirs = _listed_sha256(other) if run.dedup.can_load() else {}
        for rel in committed_shards(other):
            if split_of_path(rel) in ("train", "eval"):
                seg = None
                if rel in theirs:  # its persisted index, when made with this run's settings
                    from gen import dedup_index

                    settings = dedup_index.settings_of(run.dedup)
                    seg, _ = dedup_index.read(other, rel, theirs[rel], settings)
                if seg is not None:
                    run.dedup.remember_segment(seg)
                else:
                    run.dedup.remember(run.dedup.read_keys(other, rel))  # by this run's key
    return shards


def _load_shard(
    run: Run, rel: str, info: dict[str, Any] | None, shards: list[ShardInfo], ahead: _SegmentReads | None
) -> None:
    """One committed shard into the run's claimed ids and dedup state (appended to `shards`)."""
    out = run.p.out_dir
    # Shards the manifest lists are trusted (audit verifies them); one the manifest missed, as a
    # crash between rename and manifest write can leave, is read back and listed now.
    if info:
        shards.append(ShardInfo(info["path"], info["split"], info["rows"], info["sha256"], info["bytes"]))
    else:
        shards.append(describe_shard(out, rel))
        run._found_runs.update(read_columns(out, rel, ["run_id"])["run_id"])
    keys: Any
    if shards[-1].split in ("train", "eval") and ahead is not None:
        from gen import dedup_index  # the persisted index, or the shard read and hashed

        seg = ahead.take(rel, shards[-1].sha256)
        if seg is None:
            seg = dedup_index.load_or_build(run.dedup, out, rel, shards[-1].sha256)
        keys = seg.ids  # a uint64 array: the claimed ids take it as it is (gen.idset)
        run.dedup.remember_segment(seg)
        run._indexed.add(rel)
        if run.max_samples is not None or not info:
            keys = keys.tolist()
        if run.max_samples is not None:
            run._verified.update(keys)
    elif shards[-1].split in ("train", "eval"):
        batch = run.dedup.read_keys(out, rel)  # by the output's key
        keys = [id_key(tid) for tid in batch.ids]
        run.dedup.remember(batch)
        if run.max_samples is not None:
            run._verified.update(keys)
    else:
        keys = [id_key(tid) for tid in read_columns(out, rel, ["id"])["id"]]
        if run.max_samples is not None and shards[-1].split == "duplicates":  # they passed
            run._verified.update(keys)
    run.claimed.update(keys)
    if not info:  # the manifest did not count these rows' usage: their journal entries still say it
        run._uncounted.update(keys)
        # nor their rows and tries: the journal replay skips them (claimed)
        _count_rows(run, rel, shards[-1].split)


def _count_rows(run: Run, rel: str, split: str) -> None:
    """The run's counters (rows, rejects and their reasons, verification's tries) of the rows of a shard
    no manifest lists (a crash between its rename and the manifest write): only that manifest would
    have counted them."""
    columns = {"rejects": ["sample", "reason"], "duplicates": ["id"]}.get(split, ["sample", "finish_reason"])
    read = read_columns(run.p.out_dir, rel, columns)
    for values in zip(*read.values(), strict=True):
        run._count(split, dict(zip(read, values, strict=True)))


class _SegmentReads:
    """The persisted dedup index segments of listed data shards, read and checksummed two shards ahead
    in a thread of their own (hashing and reading release the GIL), while the loader indexes the one
    before: a large output's resume spends most of its loading in those reads."""

    AHEAD = 2

    def __init__(self, run: Run, rels: list[str], listed: dict[str, dict[str, Any]]) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from gen import dedup_index

        settings = dedup_index.settings_of(run.dedup)
        self._todo = [
            (rel, listed[rel]["sha256"])
            for rel in rels
            if rel in listed and listed[rel].get("split") in ("train", "eval") and listed[rel].get("sha256")
        ]
        self._read = lambda rel, sha: dedup_index.read(run.p.out_dir, rel, sha, settings)[0]
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="gen-index-read")
        self._queue: list[tuple[str, str, Any]] = []
        self._fill()

    def _fill(self) -> None:
        while self._todo and len(self._queue) < self.AHEAD:
            rel, sha = self._todo.pop(0)
            self._queue.append((rel, sha, self._pool.submit(self._read, rel, sha)))

    def take(self, rel: str, sha256: str) -> Any:
        """Shard `rel`'s segment when it was read ahead and is good; None: the caller loads it."""
        if not self._queue or self._queue[0][:2] != (rel, sha256):
            return None
        _, _, fut = self._queue.pop(0)
        self._fill()
        return fut.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def replay_journal(run: Run) -> list[Path]:
    """Put answers that reached the journal but not a shard back into the buffers, and count what
    the journal says was spent: the usage of every request reported, and the reservation of every
    request that was in flight when the run died. Entries a batch run marked as bought online (its
    --batch-fallback online) are priced at the list price, the others at the run's."""
    assert run.writer is not None
    segments = journal_segments(run.p.out_dir, run.partition)
    committed = frozenset((run.p.previous or {}).get("journal_committed") or ())
    # task id -> the reservation of its request not yet answered, and whether it was bought online
    open_: dict[str, tuple[Usage, bool]] = {}
    answered: dict[str, int] = {}  # task id -> its answers before that request (gen.ledger.Entry)
    # prompt, completion, cached and cache-written tokens: at the run's price, and at the list price
    priced = [0, 0, 0, 0]
    online = [0, 0, 0, 0]
    # A manifest without `journal_committed` was written by a gen whose journal entries were not
    # sealed yet: its unsealed answers are taken (checked against the row schema all the same).
    unsealed = run.p.previous is not None and "journal_committed" not in run.p.previous
    deduplicate = run.p.opts.dedup  # off for gen eval: every answer is kept
    for entry in journal_entries(run.p.out_dir, run.partition, skip=committed, unsealed=unsealed):
        if isinstance(entry, BadEntry):
            _skip_entry(run, f"{entry}")
            continue
        spent = online if entry.online else priced
        if entry.estimate is not None:  # a reservation: a re-ask settles the one before it
            open_[entry.task_id] = (entry.estimate, entry.online)
            answered[entry.task_id] = entry.answered
            for i, n in enumerate(entry.usage):
                spent[i] += n
            continue
        open_.pop(entry.task_id, None)
        answered.pop(entry.task_id, None)
        split, row = entry.split, entry.row
        assert split is not None and row is not None
        if split in ("train", "eval"):
            row = restored(row, run.p.reasoning_format)  # the trace back in its message
        key = id_key(entry.task_id)
        if key in run.claimed:  # in a shard: the manifest counted it, unless it missed the shard
            if key in run._uncounted:
                run._uncounted.discard(key)
                spent[0] += entry.usage[0]
                spent[1] += entry.usage[1]
            continue
        for i, n in enumerate(entry.usage):
            spent[i] += n
        problem = row_problem(split, row)
        if problem is not None:
            _skip_entry(run, f"{entry}: {problem}")
            continue
        run.claimed.add(key)
        if run.max_samples is not None and split in ("train", "eval", "duplicates"):
            run._verified.add(key)
        run.stats.replayed += 1
        run._found_runs.add(row["run_id"])
        if split in ("train", "eval"):
            # The journal holds rows that passed the exact check (so it finds none here, only indexes
            # them); the batched steps are redone in order.
            exact = run.dedup.check_batch([row], steps=("exact",))[0] if deduplicate else None
            if exact is not None:
                run._accept("duplicates", run._duplicate_row(row, exact.kept, exact.kind))
            else:
                run.dedup.offer(split, row)
        else:
            run._accept(split, row)
    if run.stats.journal_skipped > SKIPPED_SHOWN:
        more = run.stats.journal_skipped - SKIPPED_SHOWN
        run._say(f"skipped {more:,} more journal entries like those; their tasks are asked again")
    run._carried["prompt_tokens"] += priced[0] + online[0]
    run._carried["completion_tokens"] += priced[1] + online[1]
    run._carried["cached_input_tokens"] += priced[2] + online[2]
    run._carried["cache_write_tokens"] += priced[3] + online[3]
    run.budget.charge(*priced)
    # Entries bought online (an online run's, a batch run's fallback) at the list price; the others (a
    # batch request's, any of an older gen's online run) at the run's.
    listed = list_price(run.p.price, batch=run.p.opts.batch)
    if any(online):
        run.budget.charge(*online, price=listed)
    for task_id, (estimate, bought_online) in open_.items():
        if answered.get(task_id) and id_key(task_id) not in run.claimed:
            run.prior_attempts[task_id] = answered[task_id]
            if estimate == (0, 0):  # not an online run's re-ask in flight: its answer is not counted
                run.batch_judged[task_id] = answered[task_id]
        # A (0, 0) reservation carries only the usage of the request before it (batch mode: the
        # request itself is in a provider batch, which the batch log tracks): never in flight here.
        if id_key(task_id) not in run.claimed and estimate != (0, 0):
            run._carried["unanswered_requests"] += 1
            run._carried["unanswered_tokens"] += estimate[0] + estimate[1]
            run.budget.charge(*estimate, price=listed if bought_online else None)
    run._drain()
    return segments


def _skip_entry(run: Run, what: str) -> None:
    run.stats.journal_skipped += 1
    if run.stats.journal_skipped <= SKIPPED_SHOWN:
        run._say(f"skipped journal entry {what}; its task is asked again")


def _listed_sha256(out_dir: Path) -> dict[str, str]:
    """Shard path -> sha256 as another output's manifest lists them ({} when it cannot be read)."""
    from gen.ledger import load_manifest

    try:
        manifest = load_manifest(out_dir) or {}
        return {s["path"]: s["sha256"] for s in manifest.get("shards", [])}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}
