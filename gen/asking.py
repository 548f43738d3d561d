"""Asking one task until its answer is valid, and what becomes of a valid answer.

`ask` is the ask-until-valid loop: each request reserved in the journal before it leaves, retried
(gen.retry), charged to the budget when answered, re-asked with the validator's error or afresh after a
truncated reply, up to the template's `max_attempts`; a task that ends as a reject is journaled here.
`decide` takes a valid answer to its outcome: verification ([verify]), the exact-duplicate check, then
the row or the duplicate. Functions of the `Run` (gen.pipeline) whose state they use; no asyncio task is
created here (the pipeline creates and cancels them all).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from gen.errors import FatalTeacherError, TeacherError, leaks_secret, redact
from gen.ledger import Usage, id_key
from gen.limits import LimitedTeacher, estimate_tokens
from gen.reasoning import CLOSE, OPEN, answer_logprobs, blank, estimated_tokens, split_think
from gen.retry import with_retries
from gen.rows import COLUMNS
from gen.teachers.base import Completion
from gen.templates import Task
from gen.validate import Verdict, check, repair_messages
from gen.verify import VERIFICATION_FAILED

if TYPE_CHECKING:
    from gen.budget import Price
    from gen.pipeline import Run

# What asking until valid gives (`ask`): the completion, its verdict, the attempts, the prompt,
# completion and cached prompt tokens summed over them, and what the last request cost. A plain tuple:
# one per row.
Asked = tuple[Completion, Verdict, int, int, int, int, Usage]


class OverBudget(Exception):
    """Raised by `ask` before a request the budget no longer allows: the task stays undecided."""


def _on_retry(run: Run, e: TeacherError, task_id: str, key: int, answered: int) -> None:
    run.stats.retries += 1
    if e.status == 429:
        run.stats.throttled += 1
    if e.billed:  # the failed attempt is spent; the retry is journaled as a request of its own
        spent = run._abandon(key)
        if spent is not None:
            run._reserve(task_id, key, spent, spent, answered)


def take_inline_trace(comp: Completion) -> None:
    """Move an inline `<think>` trace out of the reply's text (gen.reasoning.split_think), so validation
    sees the answer only. Beside a trace the protocol carried apart, only a block opening the text is
    taken out (a bare `</think>` is then the answer's own), and joins the trace after it unless it
    repeats it. A blank trace (an empty `<think></think>`, as Qwen3 gives with thinking off; a
    whitespace-only field or thinking block) is none: `reasoning` is null when the teacher gave no
    trace. The logprobs keep the answer's tokens only (gen.reasoning.answer_logprobs), whichever way
    the trace came."""
    if blank(comp.reasoning):
        comp.reasoning = None
    sent = comp.text
    if comp.reasoning is None and (CLOSE in comp.text or comp.text[:64].lstrip().startswith(OPEN)):
        comp.reasoning, comp.text = split_think(comp.text)
        if not comp.reasoning:  # split_think strips the trace it takes
            comp.reasoning = None
    elif comp.reasoning is not None and comp.text[:64].lstrip().startswith(OPEN):
        inline, comp.text = split_think(comp.text)
        if inline and inline != comp.reasoning.strip():
            comp.reasoning = f"{comp.reasoning}\n\n{inline}"
    # A blank block taken out leaves no trace, but its tokens head the logprobs all the same.
    if comp.logprobs and (comp.reasoning is not None or comp.text != sent):
        comp.logprobs = answer_logprobs(comp.logprobs, comp.text)


def count_reply(run: Run, comp: Completion, price: Price | None = None) -> Usage:
    """Count an answered request in the run's stats and charge it to the budget (at `price` when it has
    one of its own: the batch driver's); returns its usage as the journal records it."""
    last = reply_usage(comp)
    cached, written = comp.cached_tokens, comp.cache_write_tokens
    s = run.stats
    s.requests += 1
    s.prompt_tokens += comp.prompt_tokens
    s.completion_tokens += comp.completion_tokens
    s.cached_tokens += cached
    s.cache_write_tokens += written
    if comp.reasoning is not None:
        s.reasoning_tokens += comp.reasoning_tokens or estimated_tokens(comp.reasoning)
    elif comp.reasoning_tokens:  # thinking the teacher reported but did not send
        s.reasoning_tokens += comp.reasoning_tokens
    run.budget.charge(*last, price=price)
    if not run._completion_bounded and comp.completion_tokens > run._max_completion:
        run._max_completion = comp.completion_tokens  # what the next reservations count (gen.pipeline)
    return last


def reply_usage(comp: Completion) -> Usage:
    """What a request cost, as the journal records it (two numbers, or four with the prompt cache)."""
    cached, written = comp.cached_tokens, comp.cache_write_tokens
    if cached or written:
        return (comp.prompt_tokens, comp.completion_tokens, cached, written)
    return (comp.prompt_tokens, comp.completion_tokens)


def reply_leaks_secret(comp: Completion) -> bool:
    """Whether the reply repeats the API key, in its text, its model or its trace."""
    return leaks_secret(comp.text, comp.model) or (
        comp.reasoning is not None and leaks_secret(comp.reasoning, None)
    )


def cut_off(comp: Completion, keep_truncated: bool) -> bool:
    """Whether a reply is rejected `truncated` (and asked afresh): cut off at max_tokens, unless
    keep_truncated, which still cannot keep a reply with no answer (a trace cut before `</think>`): an
    `empty` reject would hide the cut, and its repair prompt show the teacher an empty reply."""
    return comp.finish_reason == "length" and (not keep_truncated or not comp.text.strip())


async def ask(run: Run, task: Task, key: int, teacher: LimitedTeacher) -> Asked | None:
    """Ask the teacher until the reply is valid: re-ask with the validator's error (afresh, with
    another seed, after a truncated reply) up to the template's `max_attempts`. Each request is
    reserved in the journal before it leaves and charged to the budget when answered.

    Returns the valid completion, its verdict, the attempts, the usage summed over them and what
    the last request cost; or None when the task ended as a reject: journaled here (invalid,
    truncated, teacher_error, secret_echo), or held by `first_failures` while no request of the
    run has been answered yet."""
    assert task.messages is not None
    seed = int(task.id[:8], 16) & 0x7FFFFFFF  # per task: a rerun asks the same question the same way
    messages = task.messages
    prompt_tokens = completion_tokens = cached_tokens = 0
    # Answers an earlier run got before the crash or stop that left this task's re-ask unanswered count.
    attempts = run.prior_attempts.pop(task.id, 0)
    last: Usage | None = None  # what the previous request of this task cost
    while True:
        attempts += 1
        # Checked here, right before the reservation (no await between): a worker that waited at the
        # prefix gate, and a re-ask, are new requests the budget may no longer allow.
        reason = run._over_budget()
        if reason is not None:
            run.stop_reason = reason
            if last is not None:  # settle the answered request (a (0, 0) reservation carries it)
                assert run.journal is not None
                run.journal.reserve(task.id, (0, 0), last, answered=attempts - 1)
            raise OverBudget(reason)
        estimate = (estimate_tokens(messages, 0), run._max_completion)
        run._reserve(task.id, key, estimate, last, attempts - 1)
        try:
            comp = await with_retries(
                lambda m=messages, s=seed: teacher.complete(m, seed=s, sampling=run.p.sampling),
                run.retry_policy,
                on_retry=lambda e, a=attempts - 1: _on_retry(run, e, task.id, key, a),
            )
        except asyncio.CancelledError:
            run._abandon(key)
            raise
        except FatalTeacherError:
            run._in_flight.pop(key, None)
            raise
        except TeacherError as e:
            # A failure the teacher may have billed (a timeout, a 2xx gen could not keep) costs its
            # reservation; any other failed request is not billed.
            if e.billed:
                spent = run._abandon(key) or (0, 0)
            else:
                run._in_flight.pop(key, None)
                spent = (0, 0)
            row = run._reject_row(task, "teacher_error", str(e), None, attempts)
            if not run.first_failures.hold(task, row, e):  # held (or the run stops) while none answered
                await run._finish(task, "rejects", row, spent)
            return
        run._in_flight.pop(key, None)
        take_inline_trace(comp)
        if run.on_reply is not None:
            run.on_reply(task, comp, attempts)
        if run.first_failures.armed:
            await run._record_held_failures()
        last = count_reply(run, comp)
        prompt_tokens += comp.prompt_tokens
        completion_tokens += comp.completion_tokens
        cached_tokens += comp.cached_tokens
        if reply_leaks_secret(comp):  # a teacher that echoes our key: never keep a byte of it
            row = run._reject_row(
                task, "secret_echo", "the reply holds the API key (redacted)", redact(comp.text), attempts
            )
            await run._finish(task, "rejects", row, last)
            return
        cut = cut_off(comp, run.spec.keep_truncated)
        verdict = check(comp.text, run.p.schema, truncated=cut)
        if verdict.ok:
            break
        if attempts >= run.spec.max_attempts:
            row = run._reject_row(
                task,
                verdict.reason or "invalid",
                verdict.error or "",
                comp.text,
                attempts,
                reasoning=comp.reasoning,  # by name: the argument before it is `reference`
            )
            await run._finish(task, "rejects", row, last)
            return
        run.stats.repairs += 1
        if cut:  # ask afresh, not with the cut reply; another seed, or a seeded teacher cuts it again
            messages, seed = task.messages, (seed + 1) & 0x7FFFFFFF
        else:
            messages = repair_messages(task.messages, comp.text, verdict.error or "")
    return comp, verdict, attempts, prompt_tokens, completion_tokens, cached_tokens, last


async def decide(
    run: Run,
    task: Task,
    comp: Completion,
    verdict: Verdict,
    attempts: int,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int,
    last: Usage,
    *,
    online: bool = False,
) -> bool:
    """A valid answer to its outcome: verification ([verify]), the exact-duplicate check, then the row
    (or the duplicate). True when the answer was kept (a row or a duplicate), else a reject. The
    online workers and the batch driver (gen.batching) both end a task here; `online`: a batch run's
    answer bought through the chat API (journaled so: gen.ledger)."""
    assert task.messages is not None
    answer = verdict.output_json if verdict.output_json is not None else comp.text
    if run.verifier is not None:
        outcome = await asyncio.get_running_loop().run_in_executor(
            run._verify_pool, run.verifier.check, comp.text, verdict.output_json, task.vars_json
        )
        if not outcome.ok:
            row = run._data_row(
                task, comp, verdict, answer, prompt_tokens, completion_tokens, cached_tokens, attempts
            )
            reject = run._reject_row(
                task, VERIFICATION_FAILED, outcome.error or "", comp.text, attempts, outcome.reference
            )
            await run._finish(task, "rejects", _carry_over(row, reject), last, online=online)
            return False
    kept = None
    if run.p.opts.dedup:
        kept = run.dedup.check_exact(
            run.dedup.message_digest(task.messages, answer, comp.reasoning), id_key(task.id)
        )
    if kept is not None:
        dup = {
            "id": task.id,
            "output": verdict.output_json,
            "response": comp.text,
            "vars": task.vars_json,
        }
        await run._finish(task, "duplicates", run._duplicate_row(dup, kept, "exact"), last, online=online)
        return True
    row = run._data_row(
        task, comp, verdict, answer, prompt_tokens, completion_tokens, cached_tokens, attempts
    )
    await run._finish(task, task.split, row, last, online=online)
    return True


def _carry_over(row: dict[str, Any], reject: dict[str, Any]) -> dict[str, Any]:
    """`reject` with what the data row `row` holds in the reject's other columns (a reasoning trace, say):
    an answer that failed verification keeps everything it had."""
    for c in COLUMNS["rejects"]:
        if reject.get(c.name) is None and row.get(c.name) is not None:
            reject[c.name] = row[c.name]
    return reject
