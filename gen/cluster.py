"""The same run on a Ray cluster: the task space split by id hash, one gen producer per partition.

    gen run PROMPT --executor ray [--ray-address auto|ray://HOST:10001] --partitions N

The driver (this module, in the `gen run` process) checks everything `prepare()` checks, then starts one
Ray task per partition that is not complete yet. Task `id` belongs to partition `int(id[:8], 16) % N`;
partition i runs gen's own async producer (`gen.pipeline.Run` with `RunOptions.partition = (i, N)`)
against its share of the endpoints, and writes its own shards (`data/train-p003-00000.parquet`), journal
(`journal/p003/`) and manifest (`partitions/p003.json`) into the output directory, which must be on
storage every node sees. Each partition resumes on its own, so a crash of the driver, a worker or a node
costs only the requests in flight; a partition whose manifest says complete is not started again.

When every partition is complete, the driver deduplicates across partitions (`merge_pass`) and writes the
one `manifest.json` and the dataset card, in the format of a one-machine run.

Rate limits are the whole run's: `RateShare`, a small Ray actor, splits --rpm / --tpm among the running
partitions, which poll it every second, and hands a finished partition's share to the others. It also
carries the driver's Ctrl-C / SIGTERM to the partitions, which stop the way a one-machine run does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import importlib
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gen import __version__
from gen.card import write_card
from gen.config import RunOptions
from gen.dedup import key_of
from gen.errors import ConfigError, FatalTeacherError, GenError
from gen.ledger import load_manifest, partition_of
from gen.manifest import build_manifest
from gen.outdir import MERGE_DUPLICATES, OutputDir, partial_of_merge, partition_tag, rewritten_name
from gen.pipeline import (
    ABORTED,
    BUDGET,
    COMPLETE,
    FAILED,
    INTERRUPTED,
    Prepared,
    Run,
    RunResult,
    RunStats,
    prepare,
    run_loop,
)
from gen.rows import duplicate_row
from gen.shards import (
    ShardInfo,
    committed_shards,
    parse_shard_name,
    rewrite_without,
    write_json,
    write_rows,
)
from gen.teachers import providers
from gen.verify import merge_verification

SUMMED = ("tasks", "skipped", "replayed", "rows", "train", "eval", "rejects", "duplicates", "requests",
          "retries", "throttled", "repairs", "prompt_tokens", "completion_tokens", "cached_tokens",
          "cache_write_tokens", "truncated_kept", "unanswered_requests", "unanswered_tokens",
          "journal_skipped")  # fmt: skip
POLL_S = 1.0  # how often a partition asks RateShare for its share (and whether to stop)
LOCK_WAIT_S = 60.0  # how long a partition waits for an earlier run's partition to let go of its output


def import_ray() -> Any:
    """Ray, or a ConfigError saying how to install it (it is an optional extra)."""
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise ConfigError(
            None, "--executor ray needs Ray, which is not installed: pip install 'gen[ray]'"
        ) from None


# --------------------------------------------------------------------------- the rate share


class RateShare:
    """Splits the run's --rpm / --tpm among running partitions; a Ray actor (one per driver run).

    Each member holds a share of the total in [0, 1]. The sum of what members may be using never exceeds
    1: a member above the fair share (1 / members) is cut to it at its next poll, but keeps counting at
    its old share until it reports that its old bookings have left (`in_effect`); a member below the fair
    share is raised only out of what the others do not hold. So a partition that joins starts at 0 and
    gets its share within a poll or two, and one that leaves frees its share for the others at once.
    Partitions report progress (tasks done) with each poll, for the driver's progress bar.
    """

    def __init__(self) -> None:
        self.members: dict[int, list[float]] = {}  # partition -> [granted, in_effect]
        self.done: dict[int, int] = {}  # partition -> tasks done (or skipped) so far
        self.stop_signal: int | None = None

    def join(self, partition: int) -> tuple[float, int | None]:
        self.members[partition] = [0.0, 0.0]
        return self.poll(partition, 0.0)

    def poll(self, partition: int, in_effect: float, done: int = 0) -> tuple[float, int | None]:
        """The member's share from now on, and the signal to stop with (or None)."""
        self.done[partition] = done
        member = self.members.get(partition)
        if member is None:  # the driver saw it leave
            return 0.0, self.stop_signal
        member[1] = in_effect
        fair = 1.0 / len(self.members)
        if member[0] > fair:
            member[0] = fair
        else:
            others = sum(max(g, e) for p, (g, e) in self.members.items() if p != partition)
            member[0] = max(member[0], min(fair, 1.0 - others))
        return member[0], self.stop_signal

    def leave(self, partition: int) -> None:
        self.members.pop(partition, None)

    def stop(self, sig: int) -> None:
        self.stop_signal = sig

    def progress(self) -> int:
        return sum(self.done.values())

    def shares(self) -> dict[int, tuple[float, float]]:
        return {p: (g, e) for p, (g, e) in self.members.items()}


async def _follow_share(run: Run, share: Any, rpm: float | None, tpm: float | None, current: float) -> None:
    """In a partition: keep its Limiter at its share of the run's limits; stop when the driver says so.

    `current` is the share the limiter paces at now. After a cut, the requests booked at the old rate
    still leave at it for `Limiter.backlog()` seconds; until then the partition reports the old share as
    `in_effect`, so RateShare does not hand the difference to another partition too early.
    """
    import ray

    limiter = run.limiter
    in_effect = current
    drained_at = 0.0
    while True:
        now = time.monotonic()
        if now >= drained_at:
            in_effect = current
        done = run.stats.tasks + run.stats.skipped
        try:
            granted, stop = await asyncio.to_thread(
                ray.get, share.poll.remote(run.partition, in_effect, done)
            )
        except ray.exceptions.RayActorError:  # the driver is gone: stop now, commit what arrived
            run.stop(signal.SIGTERM)
            run.cancel()
            return
        if stop is not None and run.signal is None:
            run.stop(stop)
        if granted != current and (rpm or tpm):
            if granted > 0:
                if granted < current:
                    drained_at = time.monotonic() + limiter.backlog()
                limiter.set_rates(rpm=rpm * granted if rpm else None, tpm=tpm * granted if tpm else None)
            if granted > current:
                in_effect = granted
            current = granted
        if current <= 0 and (rpm or tpm):
            limiter.pause(POLL_S * 1.5)  # nothing granted yet: hold dispatch until the next poll
            await asyncio.sleep(POLL_S / 4)
        elif in_effect > current:  # say so as soon as the old bookings have left: another partition waits
            await asyncio.sleep(min(POLL_S, max(0.05, drained_at - time.monotonic())))
        else:
            await asyncio.sleep(POLL_S)


async def _execute_partition(run: Run, share: Any, rpm: float | None, tpm: float | None) -> RunResult:
    import ray

    # Joined before the run starts, so no request leaves before the share is known.
    granted, _ = await asyncio.to_thread(ray.get, share.join.remote(run.partition))
    if rpm or tpm:
        if granted > 0:
            run.limiter.set_rates(rpm=rpm * granted if rpm else None, tpm=tpm * granted if tpm else None)
        else:
            run.limiter.pause(POLL_S * 1.5)  # nothing free yet: the follower asks again shortly
    follower = _follow_share(run, share, rpm, tpm, granted if (rpm or tpm) else 0.0)
    try:
        return await run.execute(alongside=follower)  # the run creates the follower's task and ends it
    finally:
        try:
            await asyncio.to_thread(ray.get, share.leave.remote(run.partition))
        except ray.exceptions.RayActorError:
            pass


def _partition_main(prompt_path: str, opts: RunOptions, share: Any, rpm: float | None, tpm: float | None):
    """One partition, in a Ray worker: prepare and execute a Run; its outcome as a plain dict."""
    assert opts.partition is not None
    index = opts.partition[0]
    where = {"partition": index, "pid": os.getpid(), "node": socket.gethostname(), "version": __version__}
    try:
        _check_visible(Path(prompt_path), opts)
        assert opts.output is not None
        with _partition_lock(Path(opts.output), index):
            prepared = prepare(prompt_path, opts)
            run = Run(prepared)
            result = run_loop(_execute_partition(run, share, rpm, tpm))
    except ConfigError as e:
        return {**where, "status": "error", "kind": "config", "message": str(e)}
    except FatalTeacherError as e:
        return {**where, "status": ABORTED, "kind": "teacher", "message": str(e)}
    except GenError as e:
        return {**where, "status": ABORTED, "kind": "gen", "message": str(e)}
    except Exception as e:  # reported by the driver; the partition resumes on the next run
        tb = traceback.format_exc(limit=-3)
        return {**where, "status": FAILED, "kind": type(e).__name__, "message": f"{e}\n{tb}"}
    s = result.stats
    return {
        **where,
        "status": result.status,
        "message": result.message,
        "stats": {**s.as_dict(), "train": s.train, "eval": s.eval},
        "wall_s": result.wall_s,
        "spent_usd": result.spent_usd,
    }


@contextlib.contextmanager
def _partition_lock(out: Path, index: int, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold `partitions/pNNN.lock` while a partition runs: one writer per partition, across nodes.

    After the driver dies, Ray gives each of its partitions up to 5 s to exit (SIGTERM, then SIGKILL),
    and a partition told to exit commits what arrived. A rerun's partition that started meanwhile would
    read the journal the old one is committing and write the same shard numbers: it waits here instead.
    The kernel drops the lock when its holder dies, so a killed partition never blocks the next one.
    """
    path = OutputDir(out, index).lock
    path.parent.mkdir(exist_ok=True)
    with open(path, "a+") as f:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    f.seek(0)
                    holder = f.read().strip() or "another process"
                    raise GenError(
                        f"partition {index} is still being written by {holder} after {wait_s:.0f} s; "
                        "stop it, or wait, and run the same command again"
                    ) from None
                time.sleep(0.1)
            except OSError:  # storage without locks (some FUSE mounts): go on unguarded
                break
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        yield


def _check_visible(prompt: Path, opts: RunOptions) -> None:
    """On a worker: the driver's files are here, at the same paths (shared storage), or one clear line."""
    shared = "must be on storage every node sees, at the same path"
    if not prompt.is_file():
        raise ConfigError(prompt, f"not found on node {socket.gethostname()}: the prompt file {shared}")
    if opts.output is not None and not Path(opts.output).is_dir():
        raise ConfigError(opts.output, f"not found on node {socket.gethostname()}: --output {shared}")


# --------------------------------------------------------------------------- the merge pass


@dataclass(slots=True)
class MergeOutcome:
    rows_checked: int = 0
    removed: dict[str, int] = field(default_factory=lambda: {"exact": 0, "near": 0})
    same_partition: int = 0  # matches inside one partition: its own run decided those, they stay
    superseded: list[str] = field(default_factory=list)  # partition shards replaced by rewritten ones
    replaced: dict[str, ShardInfo | None] = field(default_factory=dict)  # old path -> new shard (or none)
    duplicate_shards: list[ShardInfo] = field(default_factory=list)
    seconds: float = 0.0
    examples: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "done": True,
            "rows_checked": self.rows_checked,
            "removed": dict(self.removed),
            "same_partition_matches": self.same_partition,
            "superseded": list(self.superseded),
            "seconds": round(self.seconds, 3),
            "rows_per_s": round(self.rows_checked / self.seconds) if self.seconds > 0 else None,
        }


def merge_pass(
    out: Path,
    manifests: dict[int, dict[str, Any]],
    run: Run,
    *,
    count: int,
    shard_rows: int,
    scaleout: bool = False,
    address: str | None = None,
) -> MergeOutcome:
    """Remove rows that duplicate (exactly or nearly) a row of another partition; writes shards only.

    Rows are read in one global order (partition, then shard path, then row) and checked by one dedup
    chain (`Deduplicator.check_batch`, a shard at a time), so the result is deterministic and the same
    on a rerun. Rows of a partition are checked against the rows kept from the partitions before it: a
    partition's own run already removed its inner duplicates. Shards that lose rows are rewritten under a
    new name (`rewritten_name`, by gen.shards.rewrite_without); the rows removed go to
    `duplicates/duplicates-merge-NNNNN.parquet`. The caller then writes the manifest that lists the new
    shards, and only then deletes the old ones.

    `scaleout`: the same decisions made by Ray tasks (gen.merge_scaleout, on the cluster at `address`),
    so no process holds the chain's indexes of the whole output.
    """
    started = time.monotonic()
    outcome = MergeOutcome()
    # It accepts no row, so no captured key would ever be taken (gen.dedup_index.AcceptedKeys): with the
    # driver run's capture on, every row kept stayed in the chain, the whole dataset on one driver.
    run.dedup.capture = False
    if scaleout:
        from gen.merge_scaleout import find_duplicates

        removed = find_duplicates(out, manifests, run.dedup, count, outcome, address=address)
    else:
        found = _find_duplicates(out, manifests, run, count, outcome)
        removed = iter(sorted(found.items()))
    _rewrite_shards(out, removed, run, outcome, shard_rows)
    outcome.seconds = time.monotonic() - started
    return outcome


def _find_duplicates(
    out: Path, manifests: dict[int, dict[str, Any]], run: Run, count: int, outcome: MergeOutcome
) -> dict[str, dict[int, tuple[str, str]]]:
    """Read the data shards' dedup keys in the global order and decide: returns, per shard path, the
    rows to remove (row index -> (kind, id kept)). Counts rows checked and same-partition matches."""
    dedup = run.dedup
    removed: dict[str, dict[int, tuple[str, str]]] = {}
    indexed = False  # rows of an earlier partition are in the index
    for index in sorted(manifests):
        entries = sorted(
            (s for s in manifests[index]["shards"] if s["split"] in ("train", "eval")),
            key=lambda s: s["path"],
        )
        for entry in entries:
            rel = entry["path"]
            batch = dedup.read_keys(out, rel)  # by the run's key (`[dedup] on`)
            outcome.rows_checked += len(batch)
            if not indexed:  # the first partition with rows: nothing to compare with, only index them
                dedup.remember(batch)
                continue
            found: dict[int, tuple[str, str]] = {}
            # Contamination was decided in each partition, against the same files: not redone here.
            for j, decision in enumerate(dedup.check_batch(batch, steps=("exact", "near"))):
                if decision is None:
                    continue
                if partition_of(decision.kept, count) == index:
                    outcome.same_partition += 1
                else:
                    found[j] = (decision.kind, decision.kept)
            if found:
                removed[rel] = found
        indexed = indexed or bool(entries)
    return removed


def _rewrite_shards(
    out: Path,
    removed: Iterator[tuple[str, dict[int, tuple[str, str]]]],
    run: Run,
    outcome: MergeOutcome,
    shard_rows: int,
) -> None:
    """Rewrite each shard that loses rows (`removed`: in path order) under `rewritten_name` (none when
    it loses all), and write the rows removed as duplicate shards of `shard_rows`, each once full: what
    is held is one shard's rows."""
    dup_rows: list[dict[str, Any]] = []
    now = datetime.now(UTC)
    for rel, found in removed:
        gone, replaced = rewrite_without(out, rel, set(found), rewritten_name(rel))
        for j, row in zip(sorted(found), gone, strict=True):
            kind, kept = found[j]
            outcome.removed[kind] = outcome.removed.get(kind, 0) + 1
            dup_rows.append(duplicate_row(row, kept, kind, created_at=now, run_id=run.run_id))
            if len(outcome.examples) < 5:
                outcome.examples.append({"id": row["id"], "duplicate_of": kept, "kind": kind})
        outcome.superseded.append(rel)
        outcome.replaced[rel] = replaced
        while len(dup_rows) >= shard_rows:
            _write_merge_duplicates(out, dup_rows[:shard_rows], outcome)
            del dup_rows[:shard_rows]
    if dup_rows:
        _write_merge_duplicates(out, dup_rows, outcome)


def _write_merge_duplicates(out: Path, chunk: list[dict[str, Any]], outcome: MergeOutcome) -> None:
    """The next `duplicates/duplicates-merge-NNNNN.parquet` shard."""
    n = len(outcome.duplicate_shards)
    outcome.duplicate_shards.append(write_rows(out, MERGE_DUPLICATES.format(n), chunk))


def _remove_merge_leftovers(out: Path, keep: set[str]) -> None:
    """Delete merge-pass files no manifest lists (a crash mid-pass), and their temporaries."""
    where = OutputDir(out)
    for rel in where.committed_shards():
        name = parse_shard_name(rel)
        if name is not None and name.merge and rel not in keep:
            (out / rel).unlink(missing_ok=True)
    for p in where.partial_files():
        if p.parent == out:  # the driver's own: the manifest's, the card's
            p.unlink(missing_ok=True)
        elif partial_of_merge(p):
            p.unlink(missing_ok=True)


# --------------------------------------------------------------------------- the merged manifest


def _merged_manifest(
    base: Run,
    previous: dict[str, Any] | None,
    manifests: dict[int, dict[str, Any]],
    shards: list[ShardInfo],
    *,
    count: int,
    scope: dict[str, Any],
    status: str,
    merge: MergeOutcome | None,
    driver_run: dict[str, Any],
) -> dict[str, Any]:
    """manifest.json of a cluster run: a one-machine manifest's fields, summed over the partitions."""
    snap = base.snapshot(shards)
    parts = [manifests[i] for i in sorted(manifests)]
    served: list[str] = []
    for pm in parts:
        served += [s for s in pm["teacher"].get("served_models", []) if s not in served]
    prompt_tokens = sum(pm["usage"]["prompt_tokens"] for pm in parts)
    completion_tokens = sum(pm["usage"]["completion_tokens"] for pm in parts)
    costs = [pm.get("cost_usd") for pm in parts if pm.get("cost_usd") is not None]
    dedup = dict(snap.dedup)
    # Every step's count (`<name>_removed`: exact, near and any of `[dedup] steps`), over the partitions
    # and the merge pass.
    for counted in [k for k in dedup if k.endswith("_removed")]:
        dedup[counted] = sum(pm["dedup"].get(counted, 0) for pm in parts)
        if merge is not None:
            dedup[counted] += merge.removed.get(counted.removesuffix("_removed"), 0)
    dedup["near_examples"] = [x for pm in parts for x in pm["dedup"].get("near_examples", [])][:5]
    driver_runs = [r for r in (previous or {}).get("runs", []) if r.get("kind") == "driver"]
    driver_runs = [r for r in driver_runs if r.get("run_id") != driver_run["run_id"]]
    merged = dataclasses.replace(
        snap,
        status=status,
        created_at=(previous or {}).get("created_at")
        or min([pm["created_at"] for pm in parts], default=snap.created_at),
        served_models=served,
        launched=[x for pm in parts for x in pm["teacher"].get("launched", [])],
        usage={
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            **{
                k: sum(pm["usage"].get(k, 0) for pm in parts)
                for k in (
                    "cached_input_tokens",
                    "cache_write_tokens",
                    "unanswered_requests",
                    "unanswered_tokens",
                )
            },
            "cache_saved_usd": round(sum(pm["usage"].get("cache_saved_usd", 0.0) for pm in parts), 6),
        },
        cost_usd=round(sum(costs), 6) if costs else snap.cost_usd,
        dedup=dedup,
        verification=merge_verification(snap.verification, [pm.get("verification") for pm in parts]),
        runs=[{**r, "partition": i} for i in sorted(manifests) for r in manifests[i].get("runs", [])]
        + driver_runs
        + [driver_run],
        cluster={
            "executor": "ray",
            "partitions": count,
            "partition_of": "int(id[:8], 16) % partitions",
            "scope": scope,
            "partition_manifests": [str(OutputDir(Path(), i).manifest) for i in range(count)],
            "merge": merge.as_dict() if merge is not None else None,
        },
    )
    return build_manifest(merged)


# --------------------------------------------------------------------------- the driver


@dataclass(slots=True)
class ClusterResult(RunResult):
    partitions: dict[int, dict[str, Any]] = field(default_factory=dict)  # what each partition run reported
    skipped_partitions: list[int] = field(default_factory=list)  # complete before this run: not started
    merge: dict[str, Any] | None = None


def endpoints_for(urls: list[str], index: int, count: int) -> list[str]:
    """Partition `index`'s endpoints: round-robin over several, all share one (or none: sim, vllm)."""
    if len(urls) <= 1:
        return list(urls)
    if len(urls) >= count:
        return urls[index::count]
    return [urls[index % len(urls)]]


def _scope(prepared: Prepared) -> dict[str, Any]:
    return {"limit": prepared.opts.limit, "samples": prepared.expansion.samples}


def _complete(pm: dict[str, Any] | None, scope: dict[str, Any], count: int) -> bool:
    if pm is None or pm.get("status") != COMPLETE:
        return False
    part = pm.get("partition") or {}
    return part.get("count") == count and all(part.get(k) == v for k, v in scope.items())


def _partition_count(opts: RunOptions, prepared: Prepared, previous: dict[str, Any] | None) -> int:
    out = prepared.out_dir
    earlier = None
    if previous is not None and previous.get("cluster"):
        earlier = previous["cluster"]["partitions"]
    else:
        for i in OutputDir(out).partition_manifests():
            try:
                pm = load_manifest(out, i)
            except (OSError, ValueError):
                continue
            if pm and pm.get("partition"):
                earlier = pm["partition"]["count"]
                break
    count = opts.partitions or earlier or max(1, len(prepared.teacher.base_urls))
    if count < 1:
        raise ConfigError(None, "--partitions must be at least 1")
    if earlier is not None and count != earlier:
        raise ConfigError(
            out,
            f"was split into {earlier} partitions; pass --partitions {earlier} to resume it "
            "(or --output for a new dataset)",
        )
    return count


def _check_output(prepared: Prepared, previous: dict[str, Any] | None, count: int) -> None:
    out = prepared.out_dir
    one_machine = [
        rel
        for rel in committed_shards(out)
        if (name := parse_shard_name(rel)) is not None and name.partition is None and not name.merge
    ]
    if (previous is not None and not previous.get("cluster")) or one_machine:
        raise ConfigError(
            out, "holds a one-machine run; resume it without --executor ray, or choose another --output"
        )
    strays = [
        rel
        for rel in committed_shards(out)
        if (name := parse_shard_name(rel)) is not None
        and name.partition is not None
        and name.partition >= count
    ]
    if strays:
        raise ConfigError(
            out, f"holds shards of partitions beyond {count} ({strays[0]}): wrong --partitions?"
        )


def _partition_options(prepared: Prepared, opts: RunOptions, index: int, count: int) -> RunOptions:
    t = prepared.teacher
    urls = endpoints_for(list(t.base_urls), index, count)
    return dataclasses.replace(
        opts,
        executor="local",
        partitions=None,
        ray_address=None,
        partition=(index, count),
        output=prepared.out_dir.resolve(),
        base_url=urls or None,
        max_concurrency=max(1, t.max_concurrency // count),
        # Placeholders: the partition paces at its RateShare share before its first request.
        rpm=opts.rpm / count if opts.rpm else None,
        tpm=opts.tpm / count if opts.tpm else None,
        max_usd=opts.max_usd / count if opts.max_usd is not None else None,
        max_tokens=max(1, opts.max_tokens // count) if opts.max_tokens is not None else None,
        new_version=False,
        lineage=prepared.lineage,
        progress=False,
        licences=opts.licences.resolve() if opts.licences else None,
        dedup_against=[Path(d).resolve() for d in opts.dedup_against],
        decontaminate_against=[os.path.abspath(d) for d in opts.decontaminate_against],
    )


def _say(message: str) -> None:
    print(f"gen: {message}", file=sys.stderr, flush=True)


def _describe(out: dict[str, Any]) -> str:
    s = out.get("stats")
    where = f" (node {out.get('node')}, pid {out.get('pid')})" if out.get("pid") else ""
    if s is None:
        return f"{out['status']}: {_first_line(out.get('message'))}{where}"
    resumed = (
        f", resumed: {s['skipped']:,} already done ({s['replayed']:,} from the journal)"
        if s["skipped"]
        else ""
    )
    return (
        f"{out['status']}: {s['rows']:,} rows, {s['rejects']:,} rejects, {s['duplicates']:,} duplicates "
        f"in {out['wall_s']:.1f} s{resumed}{where}"
    )


class _Signals:
    """The driver's Ctrl-C / SIGTERM: the first stops the partitions gracefully, a second force-cancels."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._on)
        return self

    def _on(self, sig: int, _frame: Any) -> None:
        self.received.append(sig)

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def run_cluster(
    prompt_file: str | Path,
    opts: RunOptions,
    *,
    cpus_per_partition: float = 1.0,
    max_retries: int = 2,
    on_partition: Callable[[int, dict[str, Any]], None] | None = None,
) -> ClusterResult:
    """Run (or resume) a prompt file on Ray, `opts.partitions` partitions; merge; return the outcome.

    `max_retries`: how often Ray reruns a partition whose worker or node died (it resumes from its own
    journal and shards). Raises ConfigError before any request, as a one-machine run does.
    """
    started = time.monotonic()
    if opts.executor != "ray":
        raise ConfigError(None, f"unknown executor {opts.executor!r} (known: local, ray)")
    ray = import_ray()
    plan = _plan(prompt_file, opts)
    out, previous, count, base = plan.out, plan.previous, plan.count, plan.base
    if plan.merge_done:
        _finish(out, previous)  # a rerun after the merged manifest was written: only tidy up
        return _result(base, out, previous, {}, list(range(count)), started, COMPLETE, "", None)
    _remove_merge_leftovers(out, keep=set())

    results: dict[int, dict[str, Any]] = {}
    sig: int | None = None
    if plan.todo:
        results, sig = _run_partitions(
            ray, plan.prepared, plan.opts, plan.todo, count, cpus_per_partition, max_retries, on_partition
        )
    manifests = {i: load_manifest(out, i) for i in range(count)}
    incomplete = [i for i in range(count) if not _complete(manifests[i], plan.scope, count)]
    errors = [r for r in results.values() if r.get("kind") == "config"]
    if errors:
        raise ConfigError(None, f"partition {errors[0]['partition']}: {errors[0]['message']}")

    present = {i: pm for i, pm in manifests.items() if pm is not None}
    status, message, merge, shards = _merge(plan, present, incomplete, results, sig)
    manifest = _commit(plan, present, shards, status, merge, results, started)
    skipped = [i for i in range(count) if i not in results]
    return _result(base, out, manifest, results, skipped, started, status, message, sig, merge)


@dataclass(slots=True)
class _Plan:
    """What the driver settled before starting anything: the prepared run (paths absolute, the output's
    dedup key), the partition count and scope, the driver's own Run, and the partitions still to run."""

    prepared: Prepared
    opts: RunOptions
    out: Path
    previous: dict[str, Any] | None
    count: int
    scope: dict[str, Any]
    base: Run
    todo: list[int]
    merge_done: bool  # the merged manifest is written already


def _plan(prompt_file: str | Path, opts: RunOptions) -> _Plan:
    """Prepare and check the run (ConfigError before any request), and plan its partitions."""
    prepared = prepare(prompt_file, opts)
    # Every path absolute, on the driver, before anything ships: a Ray worker's working directory is
    # not the driver's. Paths in the prompt file (schema, seeds, variable files) follow the prompt's.
    out = prepared.out_dir.resolve()
    prompt = dataclasses.replace(prepared.prompt, path=prepared.prompt.path.resolve())
    prepared = dataclasses.replace(prepared, out_dir=out, prompt=prompt)
    previous = prepared.previous
    count = _partition_count(opts, prepared, previous)
    _check_output(prepared, previous, count)
    scope = _scope(prepared)
    manifests = {i: load_manifest(out, i) for i in range(count)}
    on = _dedup_on(prepared, previous, manifests)  # one key for the partitions and the merge pass
    opts = dataclasses.replace(opts, dedup_on=on)
    prepared = dataclasses.replace(prepared, opts=dataclasses.replace(prepared.opts, dedup_on=on))
    base = Run(prepared)  # the driver's run: its id stamps the merge pass; its manifest is the template
    merge_done = bool(previous and (previous.get("cluster") or {}).get("merge"))
    todo = [i for i in range(count) if not _complete(manifests[i], scope, count)]
    if merge_done and todo:
        raise ConfigError(
            out,
            "is a finished cluster run, deduplicated across its partitions; it cannot be extended "
            "(--limit or --samples changed?): write it to another --output",
        )
    return _Plan(prepared, opts, out, previous, count, scope, base, todo, merge_done)


def _merge(
    plan: _Plan,
    present: dict[int, dict[str, Any]],
    incomplete: list[int],
    results: dict[int, dict[str, Any]],
    sig: int | None,
) -> tuple[str, str, MergeOutcome | None, list[ShardInfo]]:
    """The run's status, its message and its shards: with every partition complete, after the merge
    pass (which writes shards only); else the partitions' shards as they are, and why not all ran."""
    out, count = plan.out, plan.count
    merge = None
    status = COMPLETE
    message = ""
    if incomplete:
        statuses = [(results.get(i) or {}).get("status", FAILED) for i in incomplete]
        status = (
            INTERRUPTED
            if sig is not None
            else BUDGET
            if all(s == BUDGET for s in statuses)
            else ABORTED
            if ABORTED in statuses
            else FAILED
        )
        message = "; ".join(
            f"partition {i} {(results.get(i) or {}).get('status', 'did not run')}"
            + (f": {_first_line(results[i].get('message'))}" if results.get(i, {}).get("message") else "")
            for i in incomplete
        )
        shards = [_info(s) for i in sorted(present) for s in present[i]["shards"]]
    else:
        merge = merge_pass(
            out,
            present,
            plan.base,
            count=count,
            shard_rows=plan.prepared.opts.shard_rows,
            scaleout=plan.opts.merge == "scaleout",
            address=plan.opts.ray_address,
        )
        shards = []
        for i in sorted(present):
            for s in present[i]["shards"]:
                if s["path"] in merge.replaced:
                    new = merge.replaced[s["path"]]
                    if new is not None:
                        shards.append(new)
                else:
                    shards.append(_info(s))
        shards += merge.duplicate_shards
    return status, message, merge, shards


def _commit(
    plan: _Plan,
    present: dict[int, dict[str, Any]],
    shards: list[ShardInfo],
    status: str,
    merge: MergeOutcome | None,
    results: dict[int, dict[str, Any]],
    started: float,
) -> dict[str, Any]:
    """Write manifest.json (the commit point of the merge pass), then tidy up after a merge (the
    superseded shards) or write the card; returns the manifest."""
    base, out = plan.base, plan.out
    driver_run = {
        "run_id": base.run_id,
        "kind": "driver",
        "status": status,
        "generator_version": __version__,
        "wall_time_s": round(time.monotonic() - started, 3),
        "partitions_run": sorted(results),
        "merge": merge.as_dict() if merge is not None else None,
    }
    manifest = _merged_manifest(
        base,
        plan.previous,
        present,
        shards,
        count=plan.count,
        scope=plan.scope,
        status=status,
        merge=merge,
        driver_run=driver_run,
    )
    write_json(OutputDir(out).manifest, manifest)  # the commit point of the merge pass
    if merge is not None:
        _finish(out, manifest)
    else:
        write_card(out, manifest)
    return manifest


def _dedup_on(
    prepared: Prepared, previous: dict[str, Any] | None, manifests: dict[int, dict[str, Any] | None]
) -> str:
    """The dedup key of the whole output: the merged manifest's, else the one its partitions were begun
    with (an output made before `[dedup] on` existed: "output"), else the prompt file's."""
    out, spec = prepared.out_dir, prepared.prompt.spec.dedup.on
    if previous is not None:
        on, legacy = key_of(spec, previous, where=OutputDir(out).manifest)
    else:
        found = {
            key_of(spec, pm, where=OutputDir(out, i).manifest)
            for i, pm in sorted(manifests.items())
            if pm is not None
        }
        if len({on for on, _ in found}) > 1:
            raise ConfigError(
                out,
                "its partitions were deduplicated by different keys "
                f"({', '.join(sorted(on for on, _ in found))}); choose another --output",
            )
        on, legacy = found.pop() if found else (prepared.opts.dedup_on or spec, False)
    if legacy:
        _say(
            f"{out} was deduplicated by output text (made before [dedup] on existed); "
            "it is resumed with that key, and its manifest records it"
        )
    return on


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


def _info(s: dict[str, Any]) -> ShardInfo:
    return ShardInfo(s["path"], s["split"], s["rows"], s["sha256"], s["bytes"])


def _finish(out: Path, manifest: dict[str, Any]) -> None:
    """After the merged manifest is written: drop the shards it superseded, empty journal folders and
    the partitions' lock files."""
    merge = (manifest.get("cluster") or {}).get("merge") or {}
    for rel in merge.get("superseded", []):
        (out / rel).unlink(missing_ok=True)
    listed = {s["path"] for s in manifest["shards"]}
    _remove_merge_leftovers(out, keep=listed)
    write_card(out, manifest)
    for i in range(manifest["cluster"]["partitions"]):
        folder = OutputDir(out, i).journal
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    for lock in OutputDir(out).locks():  # merged: no partition runs on this output again
        lock.unlink(missing_ok=True)


def _result(
    base: Run,
    out: Path,
    manifest: dict[str, Any] | None,
    results: dict[int, dict[str, Any]],
    skipped: list[int],
    started: float,
    status: str,
    message: str,
    sig: int | None,
    merge: MergeOutcome | None = None,
) -> ClusterResult:
    stats = RunStats()
    spent = 0.0
    for r in results.values():
        s = r.get("stats")
        if not s:
            continue
        for name in SUMMED:
            setattr(stats, name, getattr(stats, name) + s[name])
        stats.reject_reasons.update(s["reject_reasons"])
        spent += r.get("spent_usd") or 0.0
    if merge is not None:
        moved = sum(merge.removed.values())
        stats.rows -= moved
        stats.duplicates += moved
    return ClusterResult(
        out,
        base.run_id,
        stats,
        time.monotonic() - started,
        status,
        message,
        sig,
        spent,
        partitions=results,
        skipped_partitions=skipped,
        merge=merge.as_dict() if merge is not None else ((manifest or {}).get("cluster") or {}).get("merge"),
    )


def _connect(ray: Any, address: str | None) -> bool:
    """Connect to the cluster (or start a local Ray); True when this call started it."""
    if ray.is_initialized():
        return False
    import logging

    kwargs: dict[str, Any] = {"logging_level": logging.WARNING}
    if not address:
        kwargs["include_dashboard"] = False
    ray.init(address=address, **kwargs)
    return True


def _run_partitions(
    ray: Any,
    prepared: Prepared,
    opts: RunOptions,
    todo: list[int],
    count: int,
    cpus: float,
    max_retries: int,
    on_partition: Callable[[int, dict[str, Any]], None] | None,
) -> tuple[dict[int, dict[str, Any]], int | None]:
    started_ray = _connect(ray, opts.ray_address)
    try:
        share = ray.remote(num_cpus=0)(RateShare).remote()
        pending = _submit(ray, prepared, opts, todo, count, cpus, max_retries, share)
        results, sig = _collect(ray, pending, share, prepared, opts, on_partition)
        versions = {r["version"] for r in results.values() if r.get("version")}
        if versions - {__version__}:
            _say(f"warning: workers run gen {', '.join(sorted(versions))}, the driver {__version__}")
        ray.kill(share)
        return results, sig
    finally:
        if started_ray:
            ray.shutdown()


def _submit(
    ray: Any,
    prepared: Prepared,
    opts: RunOptions,
    todo: list[int],
    count: int,
    cpus: float,
    max_retries: int,
    share: Any,
) -> dict[Any, int]:
    """Start one Ray task per partition in `todo` (with GPUs when gen launches vLLM in it); returns
    their object refs -> partition."""
    t = prepared.teacher
    resources: dict[str, Any] = {"num_cpus": cpus, "max_retries": max_retries}
    provider = providers.get(t.provider)
    if provider.uses_gpus and provider.launches(t.base_urls):  # gen starts vLLM in the partition
        v = prepared.prompt.spec.vllm.model_copy(update=prepared.opts.vllm)
        resources["num_gpus"] = v.replicas * v.tensor_parallel_size * v.data_parallel_size
    task = ray.remote(_partition_main)
    prompt = str(Path(prepared.prompt.path).resolve())
    pending = {
        task.options(name=f"gen-{partition_tag(i)}", **resources).remote(
            prompt, _partition_options(prepared, opts, i, count), share, opts.rpm, opts.tpm
        ): i
        for i in todo
    }
    _say(
        f"{len(todo)} of {count} partitions to run on Ray"
        + (f" ({count - len(todo)} already complete)" if len(todo) < count else "")
        + f" -> {prepared.out_dir}"
    )
    return pending


def _collect(
    ray: Any,
    pending: dict[Any, int],
    share: Any,
    prepared: Prepared,
    opts: RunOptions,
    on_partition: Callable[[int, dict[str, Any]], None] | None,
) -> tuple[dict[int, dict[str, Any]], int | None]:
    """Wait for the partitions, passing Ctrl-C / SIGTERM on (once: stop; twice: cancel); returns what
    each reported and the first signal received."""
    results: dict[int, dict[str, Any]] = {}
    sig: int | None = None
    from tqdm import tqdm

    bar = tqdm(desc=prepared.prompt.spec.name, unit="task", disable=not opts.progress, mininterval=0.5)
    with _Signals() as signals:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
            if signals.received and sig is None:
                sig = signals.received[0]
                _say(f"stopping the partitions ({signal.Signals(sig).name}); again to force")
                share.stop.remote(sig)
            elif len(signals.received) > 1:
                for ref in pending:
                    ray.cancel(ref, force=True)
                signals.received.clear()
            for ref in ready:
                i = pending.pop(ref)
                try:
                    outcome = ray.get(ref)
                except ray.exceptions.RayError as e:  # the worker or its node died, or it was cancelled
                    outcome = {"partition": i, "status": FAILED, "kind": type(e).__name__,
                               "message": _first_line(str(e)) or type(e).__name__}  # fmt: skip
                share.leave.remote(i)
                results[i] = outcome
                if on_partition is not None:
                    on_partition(i, outcome)
                tqdm.write(f"gen: partition {i} {_describe(outcome)}", file=sys.stderr)
            if opts.progress:
                bar.n = ray.get(share.progress.remote())
                bar.refresh()
    bar.close()
    return results, sig


__all__ = [
    "ClusterResult",
    "MergeOutcome",
    "RateShare",
    "endpoints_for",
    "import_ray",
    "merge_pass",
    "partition_of",
    "run_cluster",
]
