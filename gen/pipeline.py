"""The async producer: prompt file -> tasks -> teacher -> validation -> dedup -> journal -> shards.

All task management lives here: a fixed pool of workers pulls from the lazy task stream (no task list
is ever built), each keeps one request in flight, and finished rows go to the shard writer in batches.
Every answer is journaled on arrival, so a crash at any instant costs at most the requests in flight.
`Run` coordinates; what a resume loads (gen.resume), asking a task until valid and deciding its answer
(gen.asking) and the teacher's start-up (gen.teacher_setup) are functions of it in modules of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gen import __version__, asking, decided, resume, teacher_setup
from gen.budget import Budget, Price, list_price
from gen.card import write_card
from gen.config import RunOptions
from gen.dedup import Deduplicator, key_of, reasoning_of, resolve_steps
from gen.errors import ConfigError, GenError
from gen.idset import IdSet
from gen.ledger import (
    Journal,
    Usage,
    id_key,
    partition_of,
    remove_empty_journal,
)
from gen.limits import LimitedTeacher, Limiter, completion_cap, max_completion
from gen.manifest import RunSnapshot, build_manifest, run_entry
from gen.outdir import OutputDir
from gen.prefix import PrefixGate, grouped
from gen.prepare import Prepared, prepare, prepare_refresh
from gen.progress import Progress
from gen.reasoning import (
    assistant_message,
    journal_form,
)
from gen.reserved import InFlight
from gen.retry import RetryPolicy
from gen.rows import Row, duplicate_row, reject_row
from gen.shards import (
    ShardInfo,
    ShardWriter,
    write_json,
)
from gen.teacher_setup import public_url
from gen.teachers import providers
from gen.teachers.base import Completion
from gen.teachers.checks import FirstFailures, check_teacher
from gen.teachers.openai import OpenAIChat
from gen.templates import Task, canonical_json
from gen.templates import task_id as make_task_id
from gen.validate import Verdict
from gen.verify import CHECK_KEYS, VERIFICATION_FAILED, tally

OPENAI_CACHE_MIN_TOKENS = 1024  # the prefix gate's threshold when the price table names none
_USAGE_KEYS = (
    "prompt_tokens",
    "completion_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "unanswered_requests",
    "unanswered_tokens",
)

# How a run ended; the CLI maps these to exit statuses.
COMPLETE, INTERRUPTED, BUDGET, ABORTED, FAILED = "complete", "interrupted", "budget", "aborted", "failed"


@dataclass(slots=True)
class RunStats:
    tasks: int = 0
    skipped: int = 0  # already done in an earlier run
    replayed: int = 0  # answers recovered from the journal, not asked again
    rows: int = 0
    train: int = 0
    eval: int = 0
    rejects: int = 0
    duplicates: int = 0
    requests: int = 0
    retries: int = 0
    throttled: int = 0
    repairs: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # of prompt_tokens: read from the provider's prompt cache
    cache_write_tokens: int = 0  # of prompt_tokens: written to it (Anthropic)
    truncated_kept: int = 0  # rows kept although cut off at max_tokens (keep_truncated = true)
    reasoning_tokens: int = 0  # in the traces of answers received (reported, else about chars / 4)
    # Requests this run gave up waiting for (cancelled in flight): counted at their reservation.
    unanswered_requests: int = 0
    unanswered_tokens: int = 0
    journal_skipped: int = 0  # journal entries not intact or not a valid row: their tasks asked again
    reject_reasons: Counter[str] = field(default_factory=Counter)
    # Batch mode (gen.batching): batches submitted; requests of a batch that failed alone or expired;
    # of those, sent again in a later batch and sent online (--batch-fallback online).
    batches: int = 0
    batch_failed: int = 0
    batch_expired: int = 0
    batch_retried: int = 0
    batch_online: int = 0

    def counted(self) -> dict[str, Any]:
        """The counters of decided rows, as as_dict has them: what a checkpoint's manifest records."""
        return {
            "rows": self.rows,
            "rejects": self.rejects,
            "duplicates": self.duplicates,
            "truncated_kept": self.truncated_kept,
            "reject_reasons": dict(self.reject_reasons),
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "tasks": self.tasks,
            "skipped": self.skipped,
            "replayed": self.replayed,
            "rows": self.rows,
            "rejects": self.rejects,
            "duplicates": self.duplicates,
            "requests": self.requests,
            "retries": self.retries,
            "throttled": self.throttled,
            "repairs": self.repairs,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "truncated_kept": self.truncated_kept,
            "reasoning_tokens": self.reasoning_tokens,
            "unanswered_requests": self.unanswered_requests,
            "unanswered_tokens": self.unanswered_tokens,
            "journal_skipped": self.journal_skipped,
            "reject_reasons": dict(self.reject_reasons),
            **(
                {
                    "batch": {
                        "batches": self.batches,
                        "failed": self.batch_failed,
                        "expired": self.batch_expired,
                        "retried_in_batch": self.batch_retried,
                        "retried_online": self.batch_online,
                    }
                }
                if self.batches or self.batch_failed or self.batch_expired
                else {}
            ),
        }


@dataclass(slots=True)
class RunResult:
    output_dir: Path
    run_id: str
    stats: RunStats
    wall_s: float
    status: str
    message: str = ""
    signal: int | None = None
    spent_usd: float = 0.0
    saved_usd: float = 0.0  # what prompt caching saved this run (summary line)


@dataclass(frozen=True, slots=True)
class _Checkpoint:
    """What a checkpoint hands the writer thread: the journal segments its shards cover, and the usage
    journaled in them, taken on the event loop as they were closed (the manifest must not count an
    answer whose entry is in a later segment: a resumed run would count it again)."""

    segments: list[Path]
    usage: dict[str, Any]
    cost_usd: float
    checks: dict[str, int] = field(default_factory=dict)  # answer verification's counters (Run._checks)
    decided: int = 0  # tasks decided from the stream's start, all in the shards written (gen.decided)
    # The run's counters of decided rows (RunStats.counted): counted later, an answer journaled after
    # the checkpoint was in the manifest's run entry and, replayed by a resume, in the resume's too.
    counted: dict[str, Any] = field(default_factory=dict)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _inputs(it: Iterator[Task]) -> Iterator[list[Task]]:
    """The task stream cut into inputs: the samples of one input come one after another."""
    group: list[Task] = []
    for task in it:
        if group and (task.sample == 0 or task.vars_json != group[0].vars_json):
            yield group
            group = []
        group.append(task)
    if group:
        yield group


def _take(it: Iterator[Task], limit: int | None) -> Iterator[Task]:
    if limit is None:
        yield from it
        return
    for n, task in enumerate(it):
        if n >= limit:
            return
        yield task


class Run:
    """One execution of a prepared run: resumes what the output directory holds, then produces the rest."""

    def __init__(self, p: Prepared) -> None:
        self.p = p
        self.spec = p.prompt.spec
        self.run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + secrets.token_hex(3)
        self.stats = RunStats()
        # Partition `index` of `count` in a cluster run (gen.cluster), or None for a one-machine run.
        self.partition: int | None = p.opts.partition[0] if p.opts.partition else None
        self.partitions: int = p.opts.partition[1] if p.opts.partition else 1
        self.out = OutputDir(p.out_dir, self.partition)  # this run's own manifest and journal
        d = self.spec.dedup
        # An output keeps the key it was begun with; one made before [dedup] on existed keeps "output".
        on, self.legacy_dedup_key = key_of(d.on, p.previous, p.opts.dedup_on, self.out.manifest)
        near = d.near and not p.opts.no_near_dedup
        try:
            steps = resolve_steps(d.steps, p.prompt.base_dir) if d.steps is not None else None
        except ConfigError as e:
            raise ConfigError(p.prompt.path, e.problem) from None
        if steps is not None:
            # Near off (`near = false`, --no-near-dedup) takes it out of a chain the prompt file names;
            # decontamination, on when files are given, runs right after exact.
            steps = [n for n in steps if n != "near" or near]
            steps = [n for n in steps if n != "contaminated"]
            if p.decontamination:
                steps.insert(1, "contaminated")
        self.dedup = Deduplicator(
            near=near and p.opts.dedup,
            threshold=p.opts.near_threshold or d.threshold,
            field=d.field,
            on=on,
            steps=steps,
            given=d.steps,
            decontaminate=p.decontamination,
            reasoning=reasoning_of(d.reasoning, p.previous),
        )
        # Id keys done or in flight: each id is produced once. ~10 bytes a key, not a set's ~90 (gen.idset).
        self.claimed = IdSet()
        # Task id -> its answers (invalid, so re-asked) before a request a crash or a budget stop left
        # unanswered, from the journal: asked again, the task counts them among its attempts.
        self.prior_attempts: dict[str, int] = {}
        # Of them, tasks whose open reservation is a batch run's re-ask ((0, 0): the result before it was
        # judged and its usage journaled, the re-ask not yet in the batch log): task id -> that attempt.
        self.batch_judged: dict[str, int] = {}
        self._reasked: dict[int, int] = {}  # id key -> `answered` of a re-ask's reservation (pruned)
        self._indexed: set[str] = set()  # data shards whose dedup index is persisted (gen.dedup_index)
        # The keys each accepted data row was checked with, until its shard's index is written from them
        # (gen.dedup_index.AcceptedKeys; made on first use: numpy is not imported before a request).
        self.dedup.capture = self.dedup.can_load() and p.opts.dedup
        self._accepted_keys: Any = None
        self._uncounted: set[int] = set()  # id keys in shards the manifest missed: usage not yet counted
        self._found_runs: set[str] = set()  # run ids on rows this run recovered (shards, journal)
        # The task stream's decided prefix (gen.decided): its identity (None: not tracked), where this run
        # starts it, and the positions still open.
        self._stream: str | None = None
        self._start = 0
        self._prefix: decided.Prefix | None = None
        self.retry_policy = RetryPolicy(max_retries=p.opts.max_retries, max_wait_s=p.opts.max_pause_s)
        self.first_failures = FirstFailures()  # stops a run whose first answers all fail alike
        prev_usage = (p.previous or {}).get("usage", {})
        # Usage of earlier runs: what the manifest counted, plus (after replay) what the journal held.
        self._carried = {k: int(prev_usage.get(k) or 0) for k in _USAGE_KEYS}
        self.budget = Budget(
            max_usd=p.opts.max_usd,
            max_tokens=p.opts.max_tokens,
            price=p.price,
            spent_usd=float((p.previous or {}).get("cost_usd") or 0.0),
            spent_tokens=self._carried["prompt_tokens"]
            + self._carried["completion_tokens"]
            + self._carried["unanswered_tokens"],
        )
        # A reservation's bound on a request's completion: what the request asks for at most. A recipe
        # that asks for no max_tokens sets no bound: then the longest answer seen so far counts, once
        # longer than the default (count_reply), so that requests in flight of a reasoning teacher whose
        # traces run to thousands of tokens are not each reserved at 1,024.
        self._max_completion = max_completion(p.sampling)
        self._completion_bounded = completion_cap(p.sampling) is not None
        self._in_flight = InFlight()  # id key -> (task id, reservation), with the reservations summed
        # What a request bought through the chat API is billed: a batch run's price is the batch price.
        self._online_price = list_price(p.price, batch=p.opts.batch)
        self.served_models: list[str] = []
        self.started = time.monotonic()
        self.created_at = (p.previous or {}).get("created_at") or datetime.now(UTC).isoformat(
            timespec="seconds"
        )
        self.base_urls: list[str] = list(p.teacher.base_urls)
        self.served: list[dict[str, Any]] = []  # what launched vLLM servers report (model path, revision)
        self.status = "running"
        self.stop_reason: str | None = None
        self.stop_status: str | None = None  # how it ended, when _final_status cannot tell (batch --cancel)
        self.signal: int | None = None
        self._urls: list[str] = []  # the teacher's base URLs (the ones gen launched, else the given ones)
        self._exhausted = False  # a worker found the task stream at its end: every task was handed out
        self._sampling_json = canonical_json(p.sampling)
        self._workers: list[asyncio.Task[None]] = []
        self.limiter = Limiter(
            max_concurrency=p.teacher.max_concurrency,
            rpm=p.opts.rpm,
            tpm=p.opts.tpm,
            max_pause_s=p.opts.max_pause_s,
            notify=self._say,
        )
        self.writer: ShardWriter | None = None
        self.journal: Journal | None = None
        minimum = (p.price.cache_min_tokens if p.price else None) or OPENAI_CACHE_MIN_TOKENS
        self.gate = PrefixGate(minimum) if p.opts.prefix_gate else None
        # Answer verification ([verify]): checks run on a thread of their own, off the event loop.
        self.verifier = p.verifier
        self._verify_pool = (
            ThreadPoolExecutor(1, thread_name_prefix="gen-verify") if self.verifier is not None else None
        )
        self.max_samples = self.verifier.spec.max_samples if self.verifier is not None else None
        self._verified: set[int] = (
            set()
        )  # rejection sampling: id keys of answers that passed, earlier runs too
        before = (
            ((p.previous or {}).get("verification") or {}).get("per_template", {}).get(self.spec.name, {})
        )
        self._checks_carried = {k: int(before.get(k) or 0) for k in CHECK_KEYS}
        self._checks: Counter[str] = Counter()
        # Called with every answer the teacher gives (the task, the completion, its attempt number), on
        # the event loop, before validation: gen eval records each request's latency with it.
        self.on_reply: Callable[[Task, Completion, int], None] | None = None

    # --- the manifest: rewritten at every checkpoint, from the writer thread ---

    def _usage(self) -> dict[str, Any]:
        """The dataset's usage so far, over every run: the manifest's `usage`."""
        s, c = self.stats, self._carried
        prompt_tokens = c["prompt_tokens"] + s.prompt_tokens
        completion_tokens = c["completion_tokens"] + s.completion_tokens
        cached, written = (
            c["cached_input_tokens"] + s.cached_tokens,
            c["cache_write_tokens"] + s.cache_write_tokens,
        )
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            # Of prompt_tokens: read from the provider's prompt cache, and written to it.
            "cached_input_tokens": cached,
            "cache_write_tokens": written,
            # Against billing every prompt token at the input price; in cost_usd already.
            "cache_saved_usd": self._saved_usd(cached, written),
            # Requests in flight when a run died or gave up on them: their reservations count as spent.
            "unanswered_requests": c["unanswered_requests"] + s.unanswered_requests,
            "unanswered_tokens": c["unanswered_tokens"] + s.unanswered_tokens,
        }

    def _saved_usd(self, cached: int, written: int) -> float:
        return round(self.p.price.saved(cached, written), 6) if self.p.price is not None else 0.0

    def _closing(self, segments: list[Path]) -> _Checkpoint:
        mark = self._prefix.decided() if self._prefix is not None else 0
        checks, counted = dict(self._checks), self.stats.counted()
        return _Checkpoint(segments, self._usage(), self.budget.spent_usd, checks, mark, counted)

    def _verification(self, checks: dict[str, int]) -> dict[str, Any] | None:
        """The manifest's `verification`: the check, and per template the tries over every run."""
        if self.verifier is None:
            return None
        n = tally({k: self._checks_carried[k] + checks.get(k, 0) for k in CHECK_KEYS})
        return {
            **self.verifier.describe(),
            "samples": self.p.expansion.samples,
            "per_template": {self.spec.name: n},
        }

    def manifest(self, shards: list[ShardInfo], at: _Checkpoint | None = None) -> dict[str, Any]:
        """The manifest of the output as it stands: `shards` on disk, counters as of checkpoint `at`."""
        return build_manifest(self.snapshot(shards, at))

    def snapshot(self, shards: list[ShardInfo], at: _Checkpoint | None = None) -> RunSnapshot:
        """What the manifest says now, as plain data (gen.manifest builds the manifest from it)."""
        t = self.p.teacher
        prompt = self.p.prompt
        spent_usd = at.cost_usd if at is not None else self.budget.spent_usd
        stats = {**self.stats.as_dict(), **(at.counted if at is not None else {})}
        this_run = run_entry(self.run_id, self.status, time.monotonic() - self.started, stats)
        return RunSnapshot(
            run_id=self.run_id,
            status=self.status,
            created_at=self.created_at,
            updated_at=datetime.now(UTC).isoformat(timespec="seconds"),
            prompt_file={"path": str(prompt.path), "sha256": prompt.sha256},
            template={
                "name": self.spec.name,
                "version": self.spec.version,
                "sha256": self.p.expansion.template_sha256,
                "description": self.spec.description,
            },
            schema=(
                {"ref": self.p.schema.ref, "name": self.p.schema.name, "sha256": self.p.schema.sha256}
                if self.p.schema
                else None
            ),
            provider=t.provider,
            model=t.model,
            served_models=self.served_models,
            license=t.license,
            base_urls=[public_url(u) for u in self.base_urls]
            if providers.get(t.provider).records_base_urls
            else [],
            launched=self.served,
            seed=(
                {"path": str(self.p.prompt.resolve(self.spec.seed.path)), "license": self.spec.seed.license}
                if self.spec.seed
                else None
            ),
            intended_use=self.p.review.intended_use,
            licence_review={**self.p.review.as_dict(), "registries": self.p.registry_sources},
            sampling=self.p.sampling,
            samples=self.p.expansion.samples,
            limit=self.p.opts.limit,
            eval_fraction=self.spec.eval_fraction,
            lineage=self.p.lineage or (self.p.previous or {}).get("lineage"),
            shards=shards,
            dedup=self.dedup.as_dict(),
            usage=at.usage if at is not None else self._usage(),
            cost_usd=round(spent_usd, 6) if self.p.price is not None else None,
            journal_committed=[s.name for s in at.segments] if at is not None else [],
            runs=self._earlier_runs() + [this_run],
            partition=self._partition_scope() if self.partition is not None else None,
            verification=self._verification(at.checks if at is not None else dict(self._checks)),
            reasoning_format=self.p.reasoning_format,
        )

    def _earlier_runs(self) -> list[dict[str, Any]]:
        """The runs before this one: those the last manifest names, then any whose rows this run found
        (in a shard the manifest missed, or in the journal) although it died before writing a manifest."""
        runs = [r for r in (self.p.previous or {}).get("runs", []) if r.get("run_id") != self.run_id]
        named = {r.get("run_id") for r in runs}
        runs += [{"run_id": rid, "status": "crashed"} for rid in sorted(self._found_runs - named)]
        return runs

    def _partition_scope(self) -> dict[str, Any]:
        """What a partition was asked to produce: its manifest says complete only for this scope."""
        return {
            "index": self.partition,
            "count": self.partitions,
            "limit": self.p.opts.limit,
            "samples": self.p.expansion.samples,
        }

    def _on_checkpoint(self, shards: list[ShardInfo], at: _Checkpoint | None) -> None:
        self._write_indexes(shards)  # before the manifest lists them; an OSError fails as a shard's does
        manifest = self.manifest(shards, at)
        if self.partition is not None:  # the driver merges the partitions into manifest.json and the card
            self.out.manifest.parent.mkdir(exist_ok=True)
        write_json(self.out.manifest, manifest)
        if self.partition is None:
            write_card(self.p.out_dir, manifest)
        if at is not None and at.decided and self._stream is not None:
            with contextlib.suppress(OSError):  # it only speeds a resume up; the last one still holds
                decided.write(self.p.out_dir, self._stream, at.decided, {s.path: s.sha256 for s in shards})
        for segment in at.segments if at is not None else []:  # their entries are in shards now
            segment.unlink(missing_ok=True)

    def _write_indexes(self, shards: list[ShardInfo]) -> None:
        """Persist the dedup indexes of data shards that have none yet (gen.dedup_index), in the writer
        thread: from the keys the dedup chain computed when their rows were accepted, else read back from
        the shard just written, as a resume would."""
        if not self.dedup.can_load():
            return
        from gen import dedup_index

        settings = dedup_index.settings_of(self.dedup)
        accepted = self._accepted_keys
        for s in shards:
            if s.split in ("train", "eval") and s.path not in self._indexed:
                # From the keys its rows were kept with; read back and hashed only when one lacks them.
                seg = accepted.segment(s.split, s.rows) if accepted is not None else None
                if seg is None:
                    seg = dedup_index.build(self.dedup, self.p.out_dir, s.path)
                dedup_index.write(self.p.out_dir, s.path, s.sha256, settings, seg)
                self._indexed.add(s.path)

    # --- the producer ---

    async def execute(self, *, alongside: Coroutine[Any, Any, Any] | None = None) -> RunResult:
        """Resume what the output holds, then produce the rest. `alongside` runs beside the run (a cluster
        partition's rate-share follower) and is cancelled when the run ends: every asyncio task is the
        pipeline's to create and cancel."""
        side = asyncio.create_task(alongside) if alongside is not None else None
        try:
            return await self._execute()
        finally:
            if side is not None:
                side.cancel()
                await asyncio.gather(side, return_exceptions=True)

    async def _execute(self) -> RunResult:
        p = self.p
        client, servers = await teacher_setup.open_teacher(self)
        try:
            # Before anything is written or any task dispatched: a URL nothing answers, an HTML page,
            # a model the server does not list, a refused key.
            self.served_models = await check_teacher(
                client, p.teacher.model, check_model=not p.opts.no_model_check
            )
            p.out_dir.mkdir(parents=True, exist_ok=True)
            if self.legacy_dedup_key and self.partition is None:
                self._say(
                    f"{p.out_dir} was deduplicated by output text (made before [dedup] on existed); "
                    "it is resumed with that key, and its manifest records it"
                )
            shards = await asyncio.to_thread(resume.load_committed, self)
            self.writer = ShardWriter(
                p.out_dir,
                rows_per_shard=p.opts.shard_rows,
                shards=shards,
                on_checkpoint=self._on_checkpoint,
                partition=self.partition,
            )
            old_segments = resume.replay_journal(self)
            # An online run's entries are marked bought at the list price: a --batch resume prices them so.
            self.journal = Journal(p.out_dir, self.run_id, partition=self.partition, online=not p.opts.batch)
            # Commits replayed answers and what the journal says was spent, then drops the old journal.
            await self.writer.checkpoint(self._closing(old_segments))
        except BaseException:
            await client.close()
            for server in reversed(servers):
                await server.stop()
            with contextlib.suppress(OSError):  # only when empty: what prepare's writability probe left
                p.out_dir.rmdir()
            raise

        teacher = LimitedTeacher(client, self.limiter)
        progress = Progress(
            self.stats, enabled=p.opts.progress, desc=self.spec.name, checking=lambda: self.dedup.pending
        )
        self.limiter.on_pause = progress.show_pause
        counter = asyncio.create_task(self._count_total(progress))
        self._install_signal_handlers()
        error: BaseException | None = None
        try:
            if not self.served and isinstance(client, OpenAIChat):
                self.served = [
                    {k: m.get(k) for k in ("id", "root", "max_model_len") if m.get(k) is not None}
                    for m in await client.models()
                ]
            keep = self._keep()
            stream = self._task_stream(keep, progress)
            # Tasks sharing a prompt prefix leave together, while the provider's cache still holds it.
            tasks = grouped(stream, p.opts.dispatch_window)
            if p.opts.batch:  # the provider's batch API (gen.batching): one driver instead of workers
                from gen.batching import BatchDriver

                driver = BatchDriver(self, teacher, progress, self._urls[0], p.fingerprint)
                self._workers = [asyncio.create_task(driver.drive(tasks, keep))]
            else:
                inputs = _inputs(tasks)
                self._workers = [
                    asyncio.create_task(
                        self._sampling_worker(inputs, keep, teacher, progress)
                        if self.max_samples is not None
                        else self._worker(tasks, keep, teacher, progress)
                    )
                    for _ in range(p.teacher.max_concurrency)
                ]
            try:
                await asyncio.gather(*self._workers)
                await self._record_held_failures()  # fewer than FAIL_FAST_AFTER, and nothing else came
            except BaseException as e:
                error = e
                for w in self._workers:
                    w.cancel()
                await asyncio.gather(*self._workers, return_exceptions=True)
            self.status = self._final_status(error)
        finally:
            self._remove_signal_handlers()
            counter.cancel()
            await client.close()
            for server in reversed(servers):
                await server.stop()
            try:
                await self._commit_all()
            except OSError as e:  # the last checkpoint could not be written: shards before it are intact
                error = error or e
            finally:
                self.limiter.on_pause = None
                progress.close()
                if self._verify_pool is not None:
                    self._verify_pool.shutdown(wait=False, cancel_futures=True)
                if self.verifier is not None:
                    self.verifier.close()
        if error is not None and not isinstance(error, asyncio.CancelledError | KeyboardInterrupt):
            if isinstance(error, GenError):
                raise error
            if isinstance(error, OSError):
                raise OutputError(p.out_dir, error) from error
            raise error
        if (
            self.status == BUDGET and self.signal is None
        ):  # the figure spent in the end, requests out included
            self.stop_reason = self.budget.exhausted() or self.stop_reason
        return RunResult(
            p.out_dir,
            self.run_id,
            self.stats,
            time.monotonic() - self.started,
            self.status,
            self.stop_reason or "",
            self.signal,
            self.budget.spent_usd,
            self._saved_usd(self.stats.cached_tokens, self.stats.cache_write_tokens),
        )

    def _say(self, message: str) -> None:
        from tqdm import tqdm

        tqdm.write(f"gen: {message}", file=sys.stderr)

    def _final_status(self, error: BaseException | None) -> str:
        """How the run ended. COMPLETE only when every worker returned because the task stream ran out.

        A cancellation nobody here asked for (no signal, no budget) is an interruption: a Ray worker told
        to exit by SIGTERM raises SystemExit, and `asyncio.Runner` then cancels this task mid-run.
        """
        if isinstance(error, OSError):
            return FAILED
        if error is not None and not isinstance(error, asyncio.CancelledError):
            return ABORTED
        if self.stop_status is not None and error is None:
            return self.stop_status
        if self.signal is not None:
            return INTERRUPTED
        if self.stop_reason is not None:
            return BUDGET
        if error is not None or not self._exhausted:
            self.stop_reason = "cancelled before every task was decided"
            return INTERRUPTED
        return COMPLETE

    async def _commit_all(self) -> None:
        """Last checkpoint: everything answered goes into shards and the journal segment is dropped."""
        assert self.writer is not None and self.journal is not None
        if self.writer.failed is not None:  # the disk refused; keep the journal for the next run
            self.journal.close()
            await self.writer.close()
            return
        self._drain()
        try:
            closed: Path | None = self.journal.rotate()
        except OSError:  # the journal's last write failed; the answers are still in the buffers
            closed = None
        self.journal.close()
        await self.writer.close(self._closing([closed] if closed else []))
        remove_empty_journal(self.p.out_dir, self.partition)  # everything is in shards now

    def _install_signal_handlers(self) -> None:
        if self.partition is not None:  # a cluster worker: its driver stops it (gen.cluster), not signals
            return
        loop = asyncio.get_running_loop()
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.stop, sig)
        except (ValueError, RuntimeError, NotImplementedError):  # not the main thread, or no signals here
            pass

    def _remove_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.remove_signal_handler(sig)
            except (ValueError, RuntimeError, NotImplementedError):
                pass

    def stop(self, sig: int) -> None:
        """Stop as signal `sig` asks: dispatch nothing new, cancel the workers after `grace_s`; a second
        call cancels them now. Called on the run's own loop (its signal handlers, a cluster's follower)."""
        if self.signal is not None:  # a second Ctrl-C: stop waiting for in-flight requests
            self.cancel()
            return
        self.signal = sig
        self.stop_reason = f"stopped by {signal.Signals(sig).name}"
        asyncio.get_running_loop().call_later(self.p.opts.grace_s, self.cancel)

    def cancel(self) -> None:
        """Cancel the workers now; what arrived is still committed (`execute` returns as interrupted)."""
        for w in self._workers:
            w.cancel()

    async def _count_total(self, progress: Progress) -> None:
        if self.p.opts.only_ids is not None:
            progress.set_total(len(self.p.opts.only_ids))
            return
        total = await asyncio.to_thread(self.p.expansion.count)
        if self.p.opts.limit is not None:
            total = min(total, self.p.opts.limit)
        progress.set_total(-(-total // self.partitions))  # a partition's share, about

    def _keep(self) -> Callable[[str], bool] | None:
        """The ids this run produces, when not all: its partition's, or a refresh's. The expansion skips
        rendering inputs none of whose ids it keeps; the workers skip every other task it refuses."""
        only, index, count = self.p.opts.only_ids, self.partition, self.partitions
        if only is None and index is None:
            return None

        def keep(tid: str) -> bool:
            if index is not None and partition_of(tid, count) != index:
                return False
            return only is None or id_key(tid) in only

        return keep

    def tracks_prefix(self) -> bool:
        """Whether this run keeps the stream's decided prefix (gen.decided): every id of the stream, one
        try each, dispatched by workers."""
        o = self.p.opts
        return o.only_ids is None and self.partition is None and self.max_samples is None and not o.batch

    def _task_stream(self, keep: Callable[[str], bool] | None, progress: Progress) -> Iterator[Task]:
        """The tasks to dispatch, up to --limit: from the decided prefix on when an earlier run left a
        marker that holds (those tasks count as skipped), each tracked until decided."""
        p, start = self.p, self._start
        render = self._render_keep(keep)
        source = p.expansion.tasks(keep=render, start=start) if start else p.expansion.tasks(keep=render)
        if self._stream is not None:
            self._prefix = decided.Prefix(start)
            source = self._prefix.track(source)
        done = start if p.opts.limit is None else min(start, p.opts.limit)  # within the limit
        if done:
            self.stats.skipped += done
            progress.tick(done)
        return _take(source, None if p.opts.limit is None else p.opts.limit - done)

    def _render_keep(self, keep: Callable[[str], bool] | None) -> Callable[[str], bool] | None:
        """The ids whose input the expansion renders: `keep`'s, less the ids already decided, so a resume
        of a large output does not render every done input again before its first request. Not for
        rejection sampling (an input's retries need its messages) or the batch driver."""
        if self.max_samples is not None or self.p.opts.batch or not self.claimed:
            return keep
        claimed = self.claimed

        def undecided(tid: str) -> bool:  # the partition's cheap test first: a claimed lookup is ~1 us
            return (keep is None or keep(tid)) and int(tid[:16], 16) not in claimed  # id_key, inlined

        return undecided

    async def _sampling_worker(
        self,
        inputs: Iterator[list[Task]],
        keep: Callable[[str], bool] | None,
        teacher: LimitedTeacher,
        progress: Progress,
    ) -> None:
        """Rejection sampling (`[verify] max_samples`): one input at a time, tried until `samples`
        answers passed or `max_samples` were tried."""
        while self.stop_reason is None:
            group = next(inputs, None)
            if group is None:
                self._exhausted = True
                return
            await self._sample_input(group, keep, teacher, progress)

    async def _sample_input(
        self,
        group: list[Task],
        keep: Callable[[str], bool] | None,
        teacher: LimitedTeacher,
        progress: Progress,
    ) -> None:
        """Try one input's samples in order; past its `samples`, each try is sample index `samples`, then
        the next (a new id, so a new seed). Tries an earlier run decided are counted, not asked again."""
        assert self.max_samples is not None
        first = group[0]
        full = len(group) == self.p.expansion.samples and first.messages is not None
        tries = self.max_samples if full else len(group)  # a --limit that cut the input: no tries beyond
        if full and self.verifier is not None and self.verifier.unusable(first.vars_json) is not None:
            tries = len(group)  # its reference passes no answer: each listed sample is a reject, unasked
        want, kept, ticked = len(group), 0, 0
        for sample in range(tries):
            if kept >= want or self.stop_reason is not None:
                break
            listed = sample < len(group)
            task = group[sample] if listed else self._retry_task(first, sample)
            if keep is not None and not keep(task.id):
                continue
            key = id_key(task.id)
            if key in self.claimed:  # decided by an earlier run (or the same input listed twice)
                kept += key in self._verified
                if listed:
                    self.stats.skipped += 1
                    ticked += 1
                    progress.tick()
                continue
            reason = self._over_budget()
            if reason is not None:
                self.stop_reason = reason
                return
            self.claimed.add(key)
            try:
                ok = await self._process(task, key, teacher)
            except asking.OverBudget:  # stopped before a re-ask: a resumed run asks again
                self.claimed.discard(key)
                return
            except asyncio.CancelledError:
                self.claimed.discard(key)  # not answered: a resumed run asks again
                raise
            if ok:
                kept += 1
                self._verified.add(key)
            self.stats.tasks += 1
            if listed:
                ticked += 1
                progress.tick()
        if self.stop_reason is None:
            for _ in range(len(group) - ticked):  # samples not needed: decided all the same
                progress.tick()

    def _retry_task(self, first: Task, sample: int) -> Task:
        """Another try at `first`'s input, as sample index `sample`."""
        tid = make_task_id(self.p.prompt.sha256, self.spec.name, first.vars_json, sample)
        return Task(tid, first.vars_json, sample, first.split, first.messages, first.render_error)

    async def _worker(
        self,
        tasks: Iterator[Task],
        keep: Callable[[str], bool] | None,
        teacher: LimitedTeacher,
        progress: Progress,
    ) -> None:
        # Several workers share one generator: safe, since next() never awaits and the loop is one thread.
        while self.stop_reason is None:
            task = next(tasks, None)
            if task is None:
                self._exhausted = True
                return
            if keep is not None and not keep(task.id):
                continue  # another partition's task, or not in the refresh
            key = id_key(task.id)
            if key in self.claimed:
                self.stats.skipped += 1
                progress.tick()
                if self._prefix is not None:
                    self._prefix.close(task)
                continue
            reason = self._over_budget()
            if reason is None and task.messages is None and task.render_error is None:
                # Not rendered, as claimed when the expansion passed it: only a duplicate input whose
                # first copy a worker gave back when the budget stopped it (OverBudget). Left undecided.
                reason = "the budget ran out with a task in flight"
            if reason is not None:
                self.stop_reason = reason
                return
            self.claimed.add(key)
            prefix = self.gate.key(task) if self.gate is not None else None
            leads = False
            try:
                if prefix is not None:
                    assert self.gate is not None
                    leads = await self.gate.enter(prefix)
                await self._process(task, key, teacher)
            except asking.OverBudget:  # the budget went while it waited at the gate, or before a re-ask
                self.claimed.discard(key)  # not answered: a resumed run asks again
                return
            except asyncio.CancelledError:
                self.claimed.discard(key)  # not answered: a resumed run asks again
                raise
            finally:
                if leads:
                    assert self.gate is not None and prefix is not None
                    self.gate.leave(prefix)
            self.stats.tasks += 1
            progress.tick()

    async def gather(self, coros: list[Coroutine[Any, Any, None]]) -> None:
        """Run coroutines side by side (the batch driver's online fallback): the pipeline owns every
        asyncio task, so they are created here, bounded by the limiter's concurrency."""
        tasks = [asyncio.create_task(c) for c in coros]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    def _over_budget(self) -> str | None:
        """Why no further request may leave (the budget with every request in flight counted), or None.

        Every request reserved and not yet answered (those queued at the limiter too) counts at its
        reservation: its prompt estimate plus its max_tokens (at the input and output rates for
        --max-usd), never an average of earlier answers: a short answer says nothing of the next one's
        bound. Without max_tokens there is no bound: the longest answer seen so far counts (at least
        1,024). Checked before every request: `InFlight` keeps the sums, so the check is O(1). A batch
        run's online fallback in flight counts at the list price (gen.batching checks it so)."""
        b = self.budget
        if b.max_usd is None and b.max_tokens is None:
            return None
        price = b.price
        return b.exhausted(
            reserved_tokens=self._in_flight.tokens,
            reserved_usd=self._in_flight.usd(price, self._online_price)
            if b.max_usd is not None and price is not None
            else None,
        )

    async def _ask(self, task: Task, key: int, teacher: LimitedTeacher) -> asking.Asked | None:
        """Ask until valid (gen.asking.ask)."""
        return await asking.ask(self, task, key, teacher)

    async def _process(self, task: Task, key: int, teacher: LimitedTeacher) -> bool:
        """One task to its outcome: ask until valid, verify ([verify]), then the exact-duplicate check,
        then the row. True when the answer was kept (a row or a duplicate), else a reject."""
        if task.messages is None:
            await self._finish(
                task, "rejects", self._reject_row(task, "render_error", task.render_error or "", None, 0)
            )
            return False
        unusable = self.verifier.unusable(task.vars_json) if self.verifier is not None else None
        if unusable is not None:  # no answer could pass: not asked, not paid for
            row = self._reject_row(
                task, VERIFICATION_FAILED, unusable.error or "", None, 0, unusable.reference
            )
            await self._finish(task, "rejects", row)
            return False
        asked = await asking.ask(self, task, key, teacher)
        if asked is None:
            return False
        return await asking.decide(self, task, *asked)

    def _data_row(
        self,
        task: Task,
        comp: Completion,
        verdict: Verdict,
        answer: str,
        prompt_tokens: int,
        completion_tokens: int,
        cached_tokens: int,
        attempts: int,
    ) -> Row:
        """The `data/` row of a valid answer (`answer`: the validated JSON, else the reply's text)."""
        assert task.messages is not None
        t = self.p.teacher
        row: Row = {
            "id": task.id,
            "messages": [*task.messages, assistant_message(answer, comp.reasoning, self.p.reasoning_format)],
            "response": comp.text,
            "output": verdict.output_json,
            "reasoning": comp.reasoning,
            "reasoning_tokens": comp.reasoning_tokens,  # reported, with or without a trace (o-series)
            "logprobs": comp.logprobs,
            "vars": task.vars_json,
            "sample": task.sample,
            "split": task.split,
            "template": self.spec.name,
            "template_version": self.spec.version,
            "template_sha256": self.p.expansion.template_sha256,
            "prompt_sha256": self.p.prompt.sha256,
            "teacher_provider": t.provider,
            "teacher_model": comp.model or t.model,
            "teacher_license": t.license,
            "sampling": self._sampling_json,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "cached_tokens": cached_tokens,
            "finish_reason": comp.finish_reason,
            "attempts": attempts,
            "created_at": _now_ms(),
            "run_id": self.run_id,
            "generator_version": __version__,
        }
        return row

    def _reserve(
        self,
        task_id: str,
        key: int,
        estimate: Usage,
        usage: Usage | None,
        answered: int = 0,
        *,
        online: bool = False,
    ) -> None:
        """Journal the request about to leave (with everything queued, in one write) before it leaves:
        if the run dies with it in flight, the next run counts `estimate` as spent (at the list price
        when `online`: a batch run's online fallback), and asks the task again counting the `answered`
        (invalid) answers before it among its attempts."""
        assert self.journal is not None
        # raises if it cannot be written: nothing is sent
        self.journal.reserve(task_id, estimate, usage, answered=answered, online=online)
        if answered:  # a re-ask: its count goes with it when a rotation journals it again
            self._reasked[key] = answered
        self._in_flight.put(key, (task_id, estimate), online=online)

    def _abandon(self, key: int, *, price: Price | None = None) -> Usage | None:
        """A request given up in flight, or failed after the teacher may have billed it: its reservation
        is spent (at `price`, when it has one of its own: a batch run's online fallback). Returns that
        reservation."""
        gone = self._in_flight.pop(key, None)
        if gone is None:
            return None
        estimate = gone[1]
        self.stats.unanswered_requests += 1
        self.stats.unanswered_tokens += estimate[0] + estimate[1]
        self.budget.charge(*estimate, price=price)
        return estimate

    def _carry_reservations(self) -> None:
        """After a rotation, journal again the requests still in flight: the segment that held their
        reservations is deleted once its checkpoint is committed."""
        assert self.journal is not None
        self._reasked = {k: n for k, n in self._reasked.items() if k in self._in_flight}
        # A batch run has only its online fallback's requests in flight here (its batch requests are in
        # the batch log): bought at the list price.
        online = self.p.opts.batch
        for key, (task_id, estimate) in self._in_flight.items():
            answered = self._reasked.get(key, 0)
            self.journal.reserve(task_id, estimate, write=False, answered=answered, online=online)
        self.journal.write_pending()

    async def _record_held_failures(self) -> None:
        for held_task, row in self.first_failures.release():
            await self._finish(held_task, "rejects", row)

    def _reject_row(
        self,
        task: Task,
        reason: str,
        error: str,
        response: str | None,
        attempts: int,
        reference: str | None = None,
        reasoning: str | None = None,
    ) -> dict[str, Any]:
        return reject_row(
            reference=reference,
            id=task.id,
            reason=reason,
            error=error,
            response=response,
            reasoning=reasoning,
            vars=task.vars_json,
            sample=task.sample,
            template=self.spec.name,
            teacher_model=self.p.teacher.model,
            attempts=attempts,
            created_at=_now_ms(),
            run_id=self.run_id,
        )

    def _duplicate_row(self, row: dict[str, Any], kept: str, kind: str) -> dict[str, Any]:
        return duplicate_row(row, kept, kind, created_at=_now_ms(), run_id=self.run_id)

    async def _finish(
        self, task: Task, split: str, row: dict[str, Any], usage: Usage = (0, 0), *, online: bool = False
    ) -> None:
        """Journal the outcome at once, with what its last request cost (`online`: a batch run bought it
        at the list price), then buffer it; checkpoint when a shard is full."""
        assert self.journal is not None
        journaled = journal_form(row, self.p.reasoning_format) if split in ("train", "eval") else row
        self.journal.append(split, journaled, usage, online=online)
        if split in ("train", "eval") and self.dedup.batched:
            self.dedup.offer(split, row)
            full = self.dedup.pending >= Deduplicator.BATCH and self._drain()
        else:
            full = self._accept(split, row)
        if self._prefix is not None:  # buffered, or queued for the batched checks (drained at a checkpoint)
            self._prefix.close(task)
        if full:
            await self._checkpoint()

    def _drain(self) -> bool:
        """Decide the rows waiting for the batched checks (contaminated, near); True when a checkpoint is
        due."""
        full = False
        for split, row, found in self.dedup.drain():
            if found is not None:
                full |= self._accept("duplicates", self._duplicate_row(row, found.kept, found.kind))
            else:
                full |= self._accept(split, row)
        return full

    def _accept(self, split: str, row: dict[str, Any]) -> bool:
        """Count and buffer a decided row; True when a buffer is full."""
        assert self.writer is not None
        self._count(split, row)
        if self.dedup.capture and split != "rejects":  # its keys go with it, into its shard's index
            keys = self.dedup.take_keys(row["id"])
            if split != "duplicates":
                if self._accepted_keys is None:
                    from gen.dedup_index import AcceptedKeys, settings_of

                    self._accepted_keys = AcceptedKeys(settings_of(self.dedup), self.dedup.near)
                self._accepted_keys.add(split, keys)
        return self.writer.add(split, row)

    def _count(self, split: str, row: dict[str, Any]) -> None:
        """Count a decided row (accepted now, or found in a shard no manifest counted: gen.resume)."""
        s = self.stats
        if self.verifier is not None:
            self._count_try(split, row)
        if split == "rejects":
            s.rejects += 1
            s.reject_reasons[row["reason"]] += 1
        elif split == "duplicates":
            s.duplicates += 1
        else:
            s.rows += 1
            if row.get("finish_reason") == "length":
                s.truncated_kept += 1
            if split == "eval":
                s.eval += 1
            else:
                s.train += 1

    def _count_try(self, split: str, row: dict[str, Any]) -> None:
        """Verification's counters, from each decided task (live or replayed from the journal). A
        duplicate row does not say its sample: it counts as a try, not as a first one."""
        c = self._checks
        c["tries"] += 1
        first = row.get("sample") == 0
        c["first_tries"] += first
        if split == "rejects":
            c["failed"] += row["reason"] == VERIFICATION_FAILED
        else:
            c["verified"] += 1
            c["first_verified"] += first

    async def _checkpoint(self) -> None:
        """Every answer journaled so far goes into shards; the journal segment they were in is dropped."""
        assert self.journal is not None and self.writer is not None
        self._drain()  # a row still waiting for its near check must not lose its journal entry
        closed = self.journal.rotate()
        self._carry_reservations()
        await self.writer.checkpoint(self._closing([closed]))


class OutputError(GenError):
    """Writing the output failed (disk full, permissions): committed shards are intact."""

    def __init__(self, out_dir: Path, error: OSError) -> None:
        self.out_dir = out_dir
        self.error = error
        super().__init__(
            f"cannot write to {out_dir}: {error.strerror or error}. Committed shards are intact and every "
            "answer received is in the journal; free space and run the same command again to resume"
        )


async def worker_pool(n: int, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run `n` copies of `work()` side by side until every one returns (they share their input, e.g. one
    iterator); the first error cancels the others and is raised. For gen's other loops of requests (the
    evaluation's judge, gen.eval_judge): every asyncio task is the pipeline's to create and cancel."""
    workers = [asyncio.create_task(work()) for _ in range(n)]
    try:
        await asyncio.gather(*workers)
    except BaseException:
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        raise


async def run_prepared_async(prepared: Prepared) -> RunResult:
    """Execute a prepared run (or one partition of it) in this process, on the running loop."""
    return await Run(prepared).execute()


def run_prepared(prepared: Prepared) -> RunResult:
    """Synchronous `run_prepared_async`, on a fresh event loop (`run_loop`)."""
    return run_loop(run_prepared_async(prepared))


def run_loop(coro: Any) -> Any:
    """Run a coroutine on a fresh event loop: uvloop where installed (set GEN_NO_UVLOOP=1 to refuse it)."""
    factory = None
    if os.environ.get("GEN_NO_UVLOOP") != "1":
        try:
            import uvloop  # about a third less CPU per request in the event loop and its transports

            factory = uvloop.new_event_loop
        except ImportError:
            pass
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def summary(result: RunResult) -> str:
    s = result.stats
    tokens = s.prompt_tokens + s.completion_tokens
    rate = s.rows / result.wall_s if result.wall_s > 0 else 0.0
    extra = ""
    if s.skipped or s.replayed:
        extra = f" (resumed: {s.skipped:,} already done, {s.replayed:,} recovered from the journal)"
    if s.cached_tokens and s.prompt_tokens:
        extra += (
            f"; input tokens {s.cached_tokens / s.prompt_tokens:.0%} cached, saved ${result.saved_usd:,.2f}"
        )
    truncated = s.reject_reasons.get("truncated", 0)
    failed = s.reject_reasons.get(VERIFICATION_FAILED, 0)
    why = [f"{truncated:,} truncated"] if truncated else []
    why += [f"{failed:,} failed verification"] if failed else []
    rejects = f"{s.rejects:,} rejects" + (f" ({', '.join(why)})" if why else "")
    if s.truncated_kept:
        rejects += f", {s.truncated_kept:,} truncated rows kept"
    if s.batches:
        extra += (
            f"; {s.batches:,} batches, {s.batch_failed + s.batch_expired:,} batch requests failed or expired"
        )
    if s.reasoning_tokens:
        tokens_s = s.reasoning_tokens / result.wall_s if result.wall_s > 0 else 0.0
        rejects += f", {s.reasoning_tokens:,} reasoning tokens ({tokens_s:,.0f}/s)"
    return (
        f"gen: {s.rows:,} rows ({s.train:,} train, {s.eval:,} eval), {rejects}, "
        f"{s.duplicates:,} duplicates, {s.retries:,} retries, {tokens:,} tokens "
        f"in {result.wall_s:.1f} s ({rate:,.0f} rows/s) -> {result.output_dir}{extra}"
    )


__all__ = [
    "OutputError",
    "RunOptions",
    "RunResult",
    "RunStats",
    "prepare",
    "prepare_refresh",
    "run_loop",
    "run_prepared",
    "run_prepared_async",
    "summary",
]
