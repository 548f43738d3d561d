"""Batch mode (`gen run --batch`): the run's requests go to the provider's batch API at its batch price.

The same run as online (prompt file, validation, re-asks, rejects, dedup, shards, manifest, licence
review): only the way requests reach the teacher differs. Requests are packed into batches within the
provider's documented limits (gen.teachers.batch_openai / batch_anthropic) and `--batch-size`, each
batch is submitted, polled with a backing-off interval, and its results are judged as online answers
are; answers that fail validation are re-asked in a follow-up batch.

No double payment: the batch log (OUTPUT/batches.jsonl, gen.ledger.BatchLog) holds a batch's requests
before it is uploaded and its id the moment the provider accepts it. A run killed at any point resumes
by polling the batches the log names, and only sends again the requests of a batch the provider never
accepted (killed while uploading or creating; for OpenAI a batch created but not yet logged is found
again by its metadata). A batch is marked collected only after every one of its results reached the
journal, so a run killed while collecting reads it again and skips what was journaled.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gen import asking
from gen.config import request_timeout
from gen.errors import ConfigError, GenError, TeacherError, redact
from gen.ledger import BatchLog, LoggedBatch, Pending, Usage, id_key
from gen.limits import estimate_tokens
from gen.outdir import OutputDir
from gen.retry import with_retries
from gen.teachers import providers
from gen.teachers.batch import BatchClient, BatchResult, BatchState, custom_id
from gen.templates import Task
from gen.validate import check, repair_messages
from gen.verify import VERIFICATION_FAILED

if TYPE_CHECKING:
    from gen.pipeline import Run
    from gen.progress import Progress

MAX_LIVE_BATCHES = 16  # batches submitted and not yet collected at once: bounds memory on huge runs
POLL_MAX_S = 300.0  # the longest wait between two polls of a batch whose counts do not move
POLL_BACKOFF = 1.5  # the wait grows by this after each poll that shows no progress
BYTES_MARGIN = 1 << 20  # room kept under the provider's file-size limit (the upload's envelope)
FALLBACKS = ("batch", "online")


class BatchRejected(GenError):
    """The provider refused a batch as a whole: nothing of it ran or was paid for."""


@dataclass(slots=True)
class Req:
    """One request of a task, on its way through a batch."""

    task: Task
    attempt: int
    retry: int
    messages: list[dict[str, str]] | None  # None: the task's own
    seed: int
    used: Usage = (0, 0)  # the usage of the task's earlier requests, summed: prompt, completion[, cached]
    last: Usage | None = None  # what its previous request cost

    @property
    def custom_id(self) -> str:
        return custom_id(self.task.id, self.attempt, self.retry)

    def pending(self) -> Pending:
        return Pending(self.task.id, self.attempt, self.retry, self.messages, self.seed, self.used, self.last)


@dataclass(slots=True)
class Live:
    logged: LoggedBatch
    reqs: dict[str, Req]
    interval: float
    next_poll: float = 0.0
    state: BatchState | None = None
    counts: dict[str, int] = field(default_factory=dict)


def check_batch_options(opts: Any, provider: str | None = None) -> None:
    """Bad batch flags, as one ConfigError each, before anything is sent; with `provider`, whether it
    has a batch API too."""
    if opts.batch_cancel and not opts.batch:
        raise ConfigError("--cancel", "cancels the batches of a batch run: pass it with --batch")
    if opts.batch_fallback != "batch" and not opts.batch:
        raise ConfigError("--batch-fallback", "applies to batch runs only: pass it with --batch")
    if not opts.batch:
        return
    if opts.batch_fallback not in FALLBACKS:
        raise ConfigError("--batch-fallback", f"must be one of {', '.join(FALLBACKS)}")
    if opts.executor != "local" or opts.partition is not None:
        raise ConfigError("--batch", "runs in one process: it cannot be combined with --executor ray")
    if provider is not None and providers.get(provider).batch is None:
        raise ConfigError(
            "--batch",
            f"provider {provider!r} has no batch API (openai and anthropic have one, and so does the "
            "simulator); run without --batch",
        )
    if not 0 < opts.batch_poll_s < 86_400:
        raise ConfigError("--batch-poll", f"must be a positive number of seconds, got {opts.batch_poll_s:g}")


def check_output(out_dir: Path, fingerprint: dict[str, Any], *, batch: bool, again: str) -> None:
    """An output whose batch log holds batches of another recipe, or batches still at the provider
    while this run is not a batch run (it would ask their tasks again, and pay twice): ConfigError."""
    log = BatchLog(OutputDir(out_dir).batches)
    batches, _, _ = log.read()
    outstanding = [b for b in batches.values() if b.done is None]
    if not outstanding:
        return
    other = [b for b in outstanding if b.fingerprint != fingerprint]
    if other:
        raise ConfigError(
            out_dir,
            f"holds {len(other)} batch(es) submitted for another recipe (another prompt file, schema or "
            "teacher): collect them with the recipe that made them, or choose another --output",
        )
    if not batch:
        raise ConfigError(
            out_dir,
            f"holds {len(outstanding)} batch(es) submitted and not yet collected: collect them with "
            f"`{again} --batch` (or cancel them with --batch --cancel) before an online run",
        )


class BatchDriver:
    """Runs a prepared run's tasks through the provider's batch API. One coroutine (`drive`), created
    as a task by the pipeline, which owns every asyncio task."""

    def __init__(
        self, run: Run, online: Any, progress: Progress, base_url: str, fingerprint: dict[str, Any] | None
    ) -> None:
        self.run = run
        self.p = p = run.p
        self.opts = p.opts
        self.online = online  # the limited chat client: --batch-fallback online
        self.progress = progress
        self.fingerprint = fingerprint or {}
        self.log = BatchLog(OutputDir(p.out_dir).batches)
        t = p.teacher
        spec = providers.get(t.provider)
        self.client: BatchClient = spec.batch_class()(
            base_url,
            t.model,
            api_key=p.api_key,
            schema=p.schema,
            strict=run.spec.strict,
            max_connections=4,
            request_timeout_s=request_timeout(p.opts.request_timeout_s, p.sampling),
            connect_timeout_s=p.opts.connect_timeout_s,
            max_reply_bytes=p.opts.max_reply_bytes,
        )
        limits = self.client.limits
        self.max_requests = min(limits.max_requests, self.opts.batch_size or limits.max_requests)
        self.max_bytes = limits.max_bytes - BYTES_MARGIN
        # The run's price is the batch price (prepare scaled it): a request sent online pays the list
        # price, which the run derived once (Run._online_price) for its own in-flight check.
        self.online_price = run._online_price
        self.live: dict[str, Live] = {}
        self.queue: deque[Req] = deque()
        self.answered: set[int] = set()  # tasks decided (a row, reject or duplicate): their results skip
        # (attempt, retry) of each task's latest request queued or logged: a result of an earlier one is
        # read again only when a run died collecting its batch, and is passed over then.
        self.step: dict[str, tuple[int, int]] = {}
        # custom_ids of results a run that died collecting judged already, their usage journaled (with the
        # re-ask's reservation) but the re-ask not yet logged: judged again, never counted again.
        self.counted: set[str] = set()
        self.outstanding = 0  # the reserved tokens of requests in live batches (budget)
        self.outstanding_out = 0  # of them, completion tokens: priced at the output rate
        self.stopped: str | None = None  # why no new batch is submitted (the budget)
        self._count = 0
        self._fresh: Iterator[Task] | None = None

    # --- the loop ---

    async def drive(self, tasks: Iterator[Task], keep: Callable[[str], bool] | None = None) -> None:
        """Resume the batches the log names, then submit, poll and collect until every task is decided,
        the budget is reached, or the run is stopped (the batches submitted run on at the provider)."""
        run = self.run
        try:
            self.answered = set(run.claimed)  # what the shards and the journal hold
            await self._resume()
            self._fresh = (t for t in tasks if keep is None or keep(t.id))
            if self.opts.batch_cancel:
                await self._cancel_all()
            while run.stop_reason is None:
                if not self.opts.batch_cancel:
                    await self._submit_more()
                if not self.live:
                    break
                await self._poll()
            if run.stop_reason is not None:
                if self.live:  # Ctrl-C: the batches run on at the provider without us
                    names = ", ".join(b.logged.id or "?" for b in self.live.values())
                    run.stop_reason += (
                        f"; {len(self.live)} batch(es) still running at the provider ({names}): collect "
                        "them later with the command below"
                    )
                return
            if self.opts.batch_cancel:
                run.stop_status = "cancelled"
                run.stop_reason = "cancelled the submitted batches; what they had answered is committed"
                return
            if self.stopped is not None:
                run.stop_reason = self.stopped
                return
            run._exhausted = True
            self.log.close()
            self.log.path.unlink(missing_ok=True)  # every batch collected: the log has nothing to say
        finally:
            self.log.close()
            await self.client.close()

    async def _call(self, make: Any) -> Any:
        """A batch API call with the run's retry policy (backoff, Retry-After honoured on 429)."""
        return await with_retries(make, self.run.retry_policy, on_retry=self._on_retry)

    def _on_retry(self, e: TeacherError) -> None:
        self.run.stats.retries += 1
        if e.status == 429:
            self.run.stats.throttled += 1

    # --- resume: what the batch log says is at the provider ---

    async def _resume(self) -> None:
        run = self.run
        batches, pending, problems = self.log.read()
        for problem in problems[:20]:
            run._say(f"skipped batch log entry {problem}")
        latest: dict[str, Pending] = {}
        for p in pending.values():  # in the order written: the last one of a task is its next request
            latest[p.task_id] = p
            self.step[p.task_id] = (p.attempt, p.retry)
        known = {b.id for b in batches.values() if b.id is not None}
        for b in batches.values():
            if b.done is None and b.id is None:  # never known to be accepted: maybe it was
                found = await self._call(
                    lambda b=b: self.client.find(b.name, since=b.at, count=len(b.requests), known=known)
                )
                if found is not None:
                    known.add(found.id)
                    self.log.created(b.name, found.id)
                    b.id = found.id
                    run._say(f"found batch {found.id}, accepted before the last run died; collecting it")
                else:
                    self.log.done(b.name, "void")  # not accepted: its requests are sent again
                    b.done = "void"
        live = [b for b in batches.values() if b.done is None]
        in_batches = {(t, a, k) for b in live for t, a, k in b.requests}
        wanted = {t for b in live for t, _, _ in b.requests}
        for tid, p in latest.items():
            if (tid, p.attempt, p.retry) not in in_batches:
                wanted.add(tid)
        wanted = {t for t in wanted if id_key(t) not in self.answered}
        found_tasks: dict[str, Task] = {}
        if wanted:
            for task in self.p.expansion.tasks(keep=lambda tid: tid in wanted):
                if task.id in wanted:
                    found_tasks[task.id] = task
                    if len(found_tasks) == len(wanted):
                        break
        for b in live:
            reqs: dict[str, Req] = {}
            for tid, a, k in b.requests:
                task = found_tasks.get(tid)
                if task is None:
                    continue  # decided already (its result is skipped), or no longer in the recipe
                p = pending.get((tid, a, k))
                if p is None:  # a first request: nothing logged but its place in the batch
                    p = Pending(tid, a, k, None, _seed(tid), (0, 0), None)
                # The journal's open (0, 0) reservation says `a` answers of the task were judged by a batch
                # run (gen.resume): a kill came between it and the re-ask's "br" (the step would skip the
                # result otherwise). An online run's re-ask in flight says nothing of this batch's result.
                if run.batch_judged.get(tid, 0) >= a and self.step.get(tid, (1, 0)) <= (a, k):
                    self.counted.add(custom_id(tid, a, k))
                reqs[custom_id(tid, a, k)] = Req(task, a, k, p.messages, p.seed, p.used, p.last)
                run.claimed.add(id_key(tid))
            self.live[b.name] = Live(b, reqs, self.opts.batch_poll_s)
            self.outstanding += b.estimate[0] + b.estimate[1]
            self.outstanding_out += b.estimate[1]
        for tid, p in latest.items():
            task = found_tasks.get(tid)
            if task is None or (tid, p.attempt, p.retry) in in_batches:
                continue
            self.queue.append(Req(task, p.attempt, p.retry, p.messages, p.seed, p.used, p.last))
            run.claimed.add(id_key(tid))
        if self.live:
            run._say(f"resuming {len(self.live)} batch(es) submitted before: polling them, not sending again")

    # --- submitting ---

    def _next_fresh(self) -> Req | None:
        run = self.run
        assert self._fresh is not None
        for task in self._fresh:
            key = id_key(task.id)
            if key in run.claimed:
                if key in self.answered:  # done before; otherwise in a batch submitted before
                    run.stats.skipped += 1
                    self.progress.tick()
                continue
            run.claimed.add(key)
            return Req(task, 1, 0, None, _seed(task.id))
        self._fresh = iter(())
        return None

    async def _submit_more(self) -> None:
        while self.stopped is None and len(self.live) < MAX_LIVE_BATCHES and self.run.stop_reason is None:
            reqs: list[Req] = []
            lines: list[bytes] = []
            size = 0
            estimate = [0, 0]
            while len(reqs) < self.max_requests:
                req = self.queue.popleft() if self.queue else self._next_fresh()
                if req is None:
                    break
                if req.task.messages is None:  # a template that did not render: decided here
                    await self._decide_reject(req, "render_error", req.task.render_error or "", None, (0, 0))
                    continue
                verifier = self.run.verifier
                unusable = verifier.unusable(req.task.vars_json) if verifier is not None else None
                if unusable is not None:  # a reference no answer could pass: decided here, unasked
                    await self._decide_reject(
                        req,
                        VERIFICATION_FAILED,
                        unusable.error or "",
                        None,
                        (0, 0),
                        reference=unusable.reference,
                        asked=False,
                    )
                    continue
                messages = req.messages or req.task.messages
                cost = (estimate_tokens(messages, 0), self.run._max_completion)
                reason = self._over_budget((estimate[0] + cost[0], estimate[1] + cost[1]))
                if reason is not None:
                    self.stopped = reason
                    self._unclaim(req)
                    break
                line = self.client.line(req.custom_id, messages, seed=req.seed, sampling=self.p.sampling)
                if size + len(line) + 1 > self.max_bytes and reqs:
                    self.queue.appendleft(req)
                    break
                reqs.append(req)
                lines.append(line)
                size += len(line) + 1
                estimate[0] += cost[0]
                estimate[1] += cost[1]
            if not reqs:
                return
            await self._submit(reqs, lines, (estimate[0], estimate[1]))

    def _over_budget(self, batched: Usage = (0, 0)) -> str | None:
        """Why no further request may leave, or None: the budget with every reservation still open
        counted, the live batches' and `batched` (the batch being filled, this request included) at the
        batch price, and the online fallback's requests in flight (the run's in-flight table) at the list
        price, what the chat API bills them. O(1): the sums are kept as reservations come and go."""
        budget = self.run.budget
        if budget.max_usd is None and budget.max_tokens is None:
            return None
        in_flight = self.run._in_flight
        out = self.outstanding_out + batched[1]
        prompt = self.outstanding - self.outstanding_out + batched[0]
        price = budget.price
        return budget.exhausted(
            reserved_tokens=prompt + out + in_flight.tokens,
            # A batch is paid whatever follows: its completion tokens at the output rate.
            reserved_usd=price.cost(prompt, out) + in_flight.usd(price, self.online_price)
            if price is not None
            else None,
        )

    def _unclaim(self, req: Req) -> None:
        if req.attempt == 1 and req.retry == 0:
            self.run.claimed.discard(id_key(req.task.id))
        else:
            self.queue.appendleft(req)

    async def _submit(self, reqs: list[Req], lines: list[bytes], estimate: Usage) -> None:
        run = self.run
        self._count += 1
        name = f"{run.run_id}-{self._count:04d}"
        logged = LoggedBatch(
            name,
            self.fingerprint,
            self.p.teacher.provider,
            [(r.task.id, r.attempt, r.retry) for r in reqs],
            estimate,
            time.time(),
        )
        self.log.intent(logged)  # before the upload: a run killed from here on knows what it sent
        try:
            state = await self._call(lambda: self.client.submit(lines, name))
        except TeacherError as e:
            if not e.retryable:  # refused: nothing was created, nothing paid
                self.log.done(name, "failed")
                why = str(e).rstrip(".")
                raise BatchRejected(
                    f"the provider refused batch {name} ({len(reqs):,} requests) as a whole: {why}. Nothing "
                    "of it ran; what was collected is committed"
                ) from None
            raise  # it may have been created: the next run looks for it before sending anything
        self.log.created(name, state.id)
        logged.id = state.id
        self.live[name] = Live(logged, {r.custom_id: r for r in reqs}, self.opts.batch_poll_s, state=state)
        self.live[name].next_poll = time.monotonic() + self.opts.batch_poll_s
        self.outstanding += estimate[0] + estimate[1]
        self.outstanding_out += estimate[1]
        run.stats.batches += 1
        run._say(f"batch {state.id}: submitted {len(reqs):,} requests ({state.status})")

    # --- polling and collecting ---

    async def _poll(self) -> None:
        run = self.run
        wake = min(b.next_poll for b in self.live.values())
        while run.stop_reason is None and time.monotonic() < wake:
            await asyncio.sleep(min(0.1, max(0.0, wake - time.monotonic())))
        if run.stop_reason is not None:
            return
        now = time.monotonic()
        for name, b in list(self.live.items()):
            if b.next_poll > now:
                continue
            assert b.logged.id is not None
            state = await self._call(lambda i=b.logged.id: self.client.state(i))
            if state.counts != b.counts or b.state is None or state.status != b.state.status:
                run._say(f"batch {state.id}: {state.status} {_counts(state.counts)}")
                b.interval = self.opts.batch_poll_s
            else:
                b.interval = min(POLL_MAX_S, b.interval * POLL_BACKOFF)
            b.state, b.counts = state, state.counts
            b.next_poll = time.monotonic() + b.interval
            if state.failed:
                self.log.done(name, "failed")
                del self.live[name]
                why = redact(state.message).rstrip(".")
                raise BatchRejected(
                    f"the provider refused batch {state.id} ({len(b.logged.requests):,} requests) as a "
                    f"whole: {why}. Nothing of it ran; the next run sends them again"
                )
            if state.ended:
                await self._collect(name, b, state)

    async def _collect(self, name: str, b: Live, state: BatchState) -> None:
        run = self.run
        count = len(b.logged.requests)
        results = await self._call(lambda: self.client.results(state, self.p.sampling, count))
        seen: set[str] = set()
        fallback: list[Req] = []
        for r in results:
            req = b.reqs.get(r.custom_id)
            if req is None or r.custom_id in seen:
                continue
            seen.add(r.custom_id)
            if self._settled(req):
                continue  # decided, or asked again, by a run that died collecting this batch
            again = await self._settle(req, r)
            if again is not None:
                fallback.append(again)
        cancelled = state.status in ("cancelled", "canceled", "cancelling")
        for cid, req in b.reqs.items():
            # A left-out result's next request (a retry, or a fallback the budget held back) logged by a
            # run that died collecting this batch is queued already: settled again, it was sent twice.
            if cid in seen or self._settled(req):
                continue
            if cancelled:  # never run (the batch was cancelled first): not paid, sent again
                self._requeue(req)
                continue
            # Left out of an ended batch's results: it may have run and been billed, so it is a failed
            # request (retried up to --max-retries), never one resent as if it had not been sent, and
            # its reservation is spent.
            self._charge_left_out(req)
            again = await self._settle(req, BatchResult(cid, "failed", error="not in the batch's results"))
            if again is not None:
                fallback.append(again)
        # Every result is judged and charged (a failed one costs nothing): the batch's reservation is
        # spent or free, and no longer holds budget the fallback's requests may need.
        self.outstanding -= b.logged.estimate[0] + b.logged.estimate[1]
        self.outstanding_out -= b.logged.estimate[1]
        if fallback:
            await run.gather([self._online(req) for req in fallback])
        assert run.journal is not None
        run.journal.write_now()  # every answer of the batch on disk before it is marked collected
        self.log.done(name, "cancelled" if state.status in ("cancelled", "canceled") else "collected")
        del self.live[name]

    def _charge_left_out(self, req: Req) -> None:
        """A request left out of an ended batch's results may have run and been billed: its reservation
        (its prompt estimate and max_tokens, at the batch price) is spent, as an online request's that
        timed out is, and journaled so (a (0, 0) reservation carrying it, as a judged answer's usage):
        else the batch's reservation was released uncounted, and the fallback spent it again."""
        run = self.run
        messages = req.messages or req.task.messages
        estimate = (estimate_tokens(messages, 0) if messages else 0, run._max_completion)
        run.stats.unanswered_requests += 1
        run.stats.unanswered_tokens += estimate[0] + estimate[1]
        run.budget.charge(*estimate)
        assert run.journal is not None
        run.journal.reserve(req.task.id, (0, 0), estimate, answered=req.attempt - 1)

    def _settled(self, req: Req) -> bool:
        """Whether `req`'s task was decided, or its next request queued (by this run, or logged by a
        run that died collecting the batch), so its result is passed over."""
        return id_key(req.task.id) in self.answered or self.step.get(req.task.id, (1, 0)) > (
            req.attempt,
            req.retry,
        )

    def _retry_in_batch(self, req: Req) -> None:
        """Send a failed request's task again in a later batch, as its next retry."""
        self.run.stats.batch_retried += 1
        self._queue(Req(req.task, req.attempt, req.retry + 1, req.messages, req.seed, req.used, req.last))

    def _queue(self, req: Req) -> None:
        """Log a request to send in a later batch (a re-ask or a retry), then queue it."""
        self.step[req.task.id] = (req.attempt, req.retry)
        self.log.pending(req.pending())
        self.queue.append(req)

    def _requeue(self, req: Req) -> None:
        if self.opts.batch_cancel:
            self.run.claimed.discard(id_key(req.task.id))
            if (req.attempt, req.retry) != (1, 0):
                self.log.pending(req.pending())
            return
        if (req.attempt, req.retry) != (1, 0):
            self.log.pending(req.pending())
        self.queue.append(req)

    async def _settle(self, req: Req, r: BatchResult) -> Req | None:
        """Judge one result: decide the task, or queue its next request. Returns a request to send
        online now (--batch-fallback online), else None."""
        run = self.run
        if r.outcome == "canceled":
            self._requeue(req)
            return None
        if r.outcome != "ok" or r.completion is None:
            if r.outcome == "expired":
                run.stats.batch_expired += 1
            else:
                run.stats.batch_failed += 1
            if req.retry >= self.opts.max_retries:
                error = f"batch request {r.outcome}: {r.error}"
                await self._decide_reject(req, "teacher_error", error, None, (0, 0))
                return None
            # --cancel submits nothing, and buys nothing online either: the next --batch run sends it.
            if self.opts.batch_fallback == "online" and not self.opts.batch_cancel:
                return req
            self._retry_in_batch(req)
            return None
        await self._judge(req, r.completion)
        return None

    async def _online(self, req: Req) -> None:
        """A failed or expired batch request sent again at once through the chat API (online price),
        when the budget allows it (else it waits for a later batch, and no new batch is submitted)."""
        run = self.run
        messages = req.messages or req.task.messages
        assert messages is not None
        key = id_key(req.task.id)
        # Checked as an online run checks, right before the reservation (no await between): every
        # request in flight counted, the fallback's own at the list price.
        reason = self._over_budget()
        if reason is not None:
            self.stopped = self.stopped or reason
            self._retry_in_batch(req)
            return
        # req.last (what the request before it cost) is in the journal already, with its re-ask: not again.
        # Journaled as bought online: a resume prices it (if in flight) at the list price.
        run._reserve(req.task.id, key, (estimate_tokens(messages, 0), run._max_completion), None, online=True)
        try:
            comp = await with_retries(
                lambda: self.online.complete(messages, seed=req.seed, sampling=self.p.sampling),
                run.retry_policy,
                on_retry=lambda e: self._on_online_retry(e, req.task.id, key),
            )
        except asyncio.CancelledError:  # given up in flight (a stop past its grace): it may have been billed
            run._abandon(key, price=self.online_price)
            raise
        except TeacherError as e:
            spent = (
                run._abandon(key, price=self.online_price)
                if e.billed
                else run._in_flight.pop(key, None) and None
            )
            await self._decide_reject(req, "teacher_error", str(e), None, spent or (0, 0), online=True)
            return
        run._in_flight.pop(key, None)
        run.stats.batch_online += 1
        await self._judge(req, comp, online=True)

    def _on_online_retry(self, e: TeacherError, task_id: str, key: int) -> None:
        """A fallback request about to be retried, as an online run's (gen.asking): a failure the
        teacher may have billed (a timeout, a 2xx gen could not keep) is spent at the list price, and
        the retry is journaled as a request of its own (else a run paid every attempt, counted one)."""
        self._on_retry(e)
        if e.billed:
            spent = self.run._abandon(key, price=self.online_price)
            if spent is not None:
                self.run._reserve(task_id, key, spent, spent, online=True)

    async def _judge(self, req: Req, comp: Any, *, online: bool = False) -> None:
        """An answer, as Run._ask judges one: count and charge it, then a row, a reject or a re-ask.
        `online`: bought through the chat API (the fallback), at the list price, and journaled so."""
        run, spec = self.run, self.run.spec
        price = self.online_price if online else self.p.price
        task = req.task
        asking.take_inline_trace(comp)  # as online: validation sees the answer only
        again = req.custom_id in self.counted  # judged before the last run died: its usage is journaled
        if again:
            self.counted.discard(req.custom_id)
            last = asking.reply_usage(comp)
        else:
            last = asking.count_reply(run, comp, price)
        journaled = (0, 0) if again else last  # what a journal entry of this answer reports
        earlier_cached = req.used[2] if len(req.used) > 2 else 0
        used = (req.used[0] + last[0], req.used[1] + last[1], earlier_cached + comp.cached_tokens)
        if asking.reply_leaks_secret(comp):
            error = "the reply holds the API key (redacted)"
            await self._decide_reject(req, "secret_echo", error, redact(comp.text), journaled, online=online)
            return
        cut = asking.cut_off(comp, spec.keep_truncated)
        verdict = check(comp.text, self.p.schema, truncated=cut)
        if verdict.ok:
            self.answered.add(id_key(task.id))
            await asking.decide(
                run, task, comp, verdict, req.attempt, used[0], used[1], used[2], journaled, online=online
            )
            run.stats.tasks += 1
            self.progress.tick()
            return
        if req.attempt >= spec.max_attempts:
            await self._decide_reject(
                req,
                verdict.reason or "invalid",
                verdict.error or "",
                comp.text,
                journaled,
                comp.reasoning,
                online=online,
            )
            return
        run.stats.repairs += 1
        assert task.messages is not None
        if cut:  # afresh, with another seed (as online)
            nxt = Req(task, req.attempt + 1, 0, None, (req.seed + 1) & 0x7FFFFFFF, used, last)
        else:
            messages = repair_messages(task.messages, comp.text, verdict.error or "")
            nxt = Req(task, req.attempt + 1, 0, messages, req.seed, used, last)
        assert run.journal is not None
        # What this request cost, on disk before the re-ask is logged: a resumed run that finds the
        # re-ask skips this result, and counts its usage from the journal. `answered`: a resumed run that
        # finds this reservation but not the re-ask (killed between the two writes) judges the result
        # again without counting it (self.counted).
        if not again:
            run.journal.reserve(task.id, (0, 0), last, answered=req.attempt, online=online)
        self._queue(nxt)

    async def _decide_reject(
        self,
        req: Req,
        reason: str,
        error: str,
        response: str | None,
        usage: Usage,
        reasoning: str | None = None,
        *,
        online: bool = False,
        reference: str | None = None,
        asked: bool = True,
    ) -> None:
        """`asked=False`: decided before its first request left (its attempts are 0)."""
        self.answered.add(id_key(req.task.id))
        attempts = req.attempt if asked else 0
        row = self.run._reject_row(
            req.task, reason, error, response, attempts, reference=reference, reasoning=reasoning
        )
        await self.run._finish(req.task, "rejects", row, usage, online=online)
        self.run.stats.tasks += 1
        self.progress.tick()

    # --- --cancel ---

    async def _cancel_all(self) -> None:
        for b in self.live.values():
            assert b.logged.id is not None
            state = await self._call(lambda i=b.logged.id: self.client.cancel(i))
            self.run._say(f"batch {state.id}: cancel requested ({state.status})")
            b.next_poll = 0.0


def _seed(task_id: str) -> int:
    return int(task_id[:8], 16) & 0x7FFFFFFF  # as the online run: a rerun asks the same way


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in counts.items())
