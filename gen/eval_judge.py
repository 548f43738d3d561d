"""The LLM judge of a free-text evaluation (`gen eval` on a dataset without a schema).

Which judge: `--judge-provider`, `--judge-model`, `--judge-base-url`, `--judge-api-key-env` and
`--judge-prompt`, each defaulting to the dataset's teacher as the manifest records it (its provider and
model, its base URL where recorded, else the recipe's `[teacher]` table; a provider gen launches, such as
the simulator, is launched for the judge from the recipe, `[sim]` table included). `resolve_judge`
checks the flags (ConfigError, before anything is sent); `check_reachable` asks the judge's model listing
before the student gets any request; `judge_rows` judges every (student, teacher) pair with
gen.judge.judge_pair, both orders, under the eval's own limits (a gen.limits.Limiter of its own:
concurrency, rpm, tpm, 429 pauses) and retries.

Concurrency: gen.judge creates no asyncio task and only gen/pipeline.py may, so the pairs go through the
pipeline's `worker_pool` (a fixed pool of workers pulling from one iterator, as the run's own workers
do) rather than a second producer: a pair is two dependent requests (the second order is not asked when
the first cannot be parsed), which the run's one-request-per-task rows do not express.

Resume: each verdict is appended to `judge.jsonl` in the eval directory (flushed at once) with the
judge's identity and the tokens its requests cost; an evaluation resumed with `--resume` re-asks only the
pairs this judge (same provider, model and prompt) has not decided, and the student is not asked again
(its answers are in `answers/`). A pair that ended as `error` is asked again, but its line keeps what its
answered requests cost, so --max-usd and the report count it.

Budget: with --max-usd every pair in flight counts at its reservation, what its requests may cost at
most (`_JudgeSpend`), as gen run counts the teacher's requests in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from gen.errors import ConfigError, FatalTeacherError, TeacherError
from gen.eval_compare import Rate
from gen.judge import (
    Pair,
    check_judge_reachable,
    judge_pair,
    load_prompt,
    open_judge,
    pair_reservation,
    request_reservation,
    tally,
)
from gen.reserved import InFlight
from gen.teachers import providers
from gen.teachers.checks import public_url

if TYPE_CHECKING:
    from gen.budget import Price
    from gen.config import PromptFile

VERDICTS_FILE = "judge.jsonl"
RESERVED_FILE = "judge_reserved.jsonl"  # each judge request's reservation, written before it leaves
NO_ANSWER = "no_answer"  # the student gave no valid answer: a loss, the judge not asked
RULE = (
    "each pair asked twice, the answers swapped; win / tie / loss over the decided rows (a row the "
    "student gave no valid answer is a loss, unparseable and error rows are left out); non-loss = "
    "win + tie"
)


@dataclass(frozen=True, slots=True)
class JudgeSpec:
    """The judge of an evaluation: who, where (None: its provider launches it), its key's variable and
    its prompt (path and sha256: verdicts of another prompt are not reused)."""

    provider: str
    model: str
    base_url: str | None
    api_key_env: str | None
    prompt_path: Path
    prompt_sha256: str

    @property
    def key(self) -> str:
        """What a persisted verdict must match to be reused."""
        return f"{self.provider}:{self.model}:{self.prompt_sha256}"

    def identity(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "model": self.model,
            "base_url": public_url(self.base_url) if self.base_url else None,
            "prompt": str(self.prompt_path),
            "prompt_sha256": self.prompt_sha256,
        }


def resolve_judge(
    manifest: dict[str, Any],
    recipe: PromptFile,
    *,
    provider: str | None,
    model: str | None,
    base_url: str | None,
    api_key_env: str | None,
    prompt: str | Path | None,
) -> JudgeSpec:
    """The judge the flags name, the dataset's teacher filling what they leave out. ConfigError (naming
    the flag) for an unknown provider, a bad URL, a key variable that is not set, a bad prompt file."""
    from gen.config import _check_base_url
    from gen.prepare import check_api_key

    teacher = manifest.get("teacher") or {}
    spec_t = recipe.spec.teacher
    name = provider or teacher.get("provider") or spec_t.provider or "sim"
    spec = providers.get(name, where="--judge-provider" if provider else recipe.path)
    if base_url is not None and spec.launch_always:
        if provider:
            raise ConfigError(
                "--judge-base-url", f"provider {name!r} is started by gen; use --judge-provider openai"
            )
        name, spec = "openai", providers.get("openai")  # the teacher was gen's simulator: a running one
    if spec.mode != "request":
        raise ConfigError("--judge-provider", f"provider {name!r} cannot be asked request by request")
    same = name == teacher.get("provider")  # the teacher's own server and key are the defaults
    judge_model = model or teacher.get("model") or spec.default_model
    if not judge_model:
        raise ConfigError("--judge-model", "no judge model: name one (default: the dataset's teacher)")
    url = base_url
    if url is not None:
        _check_base_url(url, "--judge-base-url")
    elif same:
        recorded = teacher.get("base_urls") or []
        url = recorded[0] if recorded else (spec_t.base_url if isinstance(spec_t.base_url, str) else None)
        if url is None and isinstance(spec_t.base_url, list) and spec_t.base_url:
            url = spec_t.base_url[0]
    url = url or spec.default_base_url
    if spec.launch_always:
        url = None  # the simulator: gen starts it, whatever URL was recorded
    if url is None and spec.launcher is None:
        raise ConfigError(
            "--judge-base-url", f"where is the judge ({name} {judge_model}) served? give --judge-base-url URL"
        )
    key_env = api_key_env or (spec_t.api_key_env if same else None)
    if key_env:
        key = os.environ.get(key_env)
        if not key:
            raise ConfigError(
                "--judge-api-key-env" if api_key_env else recipe.path,
                f"environment variable {key_env} (the judge's API key) is not set",
            )
        check_api_key(key, key_env)
    loaded = load_prompt(prompt)
    sha = hashlib.sha256(loaded.path.read_bytes()).hexdigest()
    return JudgeSpec(name, judge_model, url.rstrip("/") if url else None, key_env, loaded.path, sha)


@contextlib.asynccontextmanager
async def opened(
    judge: JudgeSpec,
    recipe: PromptFile,
    *,
    max_connections: int,
    request_timeout_s: float,
    connect_timeout_s: float,
) -> AsyncIterator[Any]:
    """A client for the judge; a judge its provider launches (the simulator, vLLM) is started from the
    recipe for as long as the block runs."""
    spec = providers.get(judge.provider)
    launch = providers.Launch(recipe, judge.model, recipe.spec.vllm)
    url = judge.base_url
    try:
        if url is None:
            assert spec.launcher is not None  # resolve_judge saw to it
            url = (await spec.launcher(launch))[0]
        key = os.environ.get(judge.api_key_env) if judge.api_key_env else None
        client = open_judge(
            judge.provider,
            url,
            judge.model,
            api_key=key,
            max_connections=max_connections,
            request_timeout_s=request_timeout_s,
            connect_timeout_s=connect_timeout_s,
        )
        try:
            yield client
        finally:
            await client.close()
    finally:
        for server in reversed(launch.servers):
            await server.stop()


async def check_reachable(judge: JudgeSpec, recipe: PromptFile, *, check_model: bool, **client: Any) -> None:
    """ConfigError (one line, exit 2) when the judge cannot be reached, does not list its model or
    refuses the key: called before any request to the student."""
    async with opened(judge, recipe, **client) as c:
        await check_judge_reachable(c, judge.model, check_model=check_model)


class VerdictLog:
    """`judge.jsonl`: one line per judged pair ({"id", "verdict", "judge", "u"}: `u` the prompt and
    completion tokens of the pair's requests), flushed as it is written so that an interrupted
    evaluation keeps its verdicts; a line a crash cut short is skipped on reading. A pair that ended as
    `error` after the judge answered some of its requests has a line too, for what they cost: it is no
    verdict (a resume asks that pair again), so a row may have `error` lines before its verdict line.
    Files of a gen that kept no `error` lines (or no `u`) read as before.
    `usage` holds each row's tokens summed over all its lines of this judge, and this run's pairs added
    as they end: the report and --max-usd count every request the judge answered, earlier runs' too.
    A line's `r` (absent when none) is the reservations, (prompt estimate, max_tokens), of its pair's
    requests that got no usable answer but may have been billed (timed out, a 2xx gen could not keep):
    --max-usd counts them at that, as gen run counts the teacher's (`unanswered`, by row id); the
    report's tokens are the judge's `u` alone.

    `judge_reserved.jsonl` beside it (`reserver`) holds each request's reservation ({"k", "id", "judge",
    "q"}), written before the request leaves, and {"k", "end": true} once its pair's line is written: a
    pair whose gen died (SIGKILL) before it ended wrote no line, and `load` counts the reservations it
    never settled (and those of requests given up in flight, Ctrl-C, which stay open) in `unanswered`
    (another judge's in `others`), as gen run counts the open reservations its journal holds."""

    def __init__(self, path: Path, judge: JudgeSpec) -> None:
        self.path = path
        self.reserved_path = path.with_name(RESERVED_FILE)
        self.judge = judge
        self.usage: dict[str, tuple[int, int]] = {}
        self.unanswered: dict[str, tuple[int, int]] = {}
        self.others: dict[str, tuple[int, int]] = {}  # another judge's key -> its lines' u + r summed

    def load(self) -> dict[str, str]:
        """The verdicts this judge already gave, by row id (`error` lines are none); `usage` is set to
        the tokens of every line of this judge, by row id."""
        found: dict[str, str] = {}
        self.usage, self.unanswered, self.others = {}, {}, {}
        try:
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return found
        for line in lines:
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(entry, dict) and entry.get("judge") == self.judge.key:
                tid = str(entry.get("id"))
                if entry.get("verdict") != "error":
                    found[tid] = str(entry.get("verdict"))
                self._add(tid, line_usage(entry), line_usage(entry, "r"))
            elif isinstance(entry, dict) and isinstance(entry.get("judge"), str):
                # Another judge's (a resume with another prompt or model): paid for all the same.
                u, r = line_usage(entry), line_usage(entry, "r")
                self._add_other(entry["judge"], _plus(u, r))
        self._load_open()
        return found

    def _add_other(self, key: str, usage: tuple[int, int]) -> None:
        self.others[key] = _plus(self.others.get(key, (0, 0)), usage)

    def _load_open(self) -> None:
        """The reservations of pairs that never ended (their gen was killed), into `unanswered`."""
        held: dict[str, tuple[str, str, tuple[int, int]]] = {}  # k -> (judge key, row id, reserved)
        try:
            lines = self.reserved_path.read_bytes().splitlines()
        except FileNotFoundError:
            return
        for line in lines:
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:  # a line a crash cut short
                continue
            if not isinstance(entry, dict) or not isinstance(entry.get("k"), str):
                continue
            if entry.get("end") is True:
                held.pop(entry["k"], None)
                continue
            judge, tid, q = entry.get("judge"), entry.get("id"), line_usage(entry, "q")
            if isinstance(judge, str) and isinstance(tid, str):
                old = held.get(entry["k"], (judge, tid, (0, 0)))[2]
                held[entry["k"]] = (judge, tid, _plus(old, q))
        for judge, tid, q in held.values():
            if judge == self.judge.key:
                self._add(tid, (0, 0), q)
            else:
                self._add_other(judge, q)

    def others_usd(self, price: Price | None) -> float:
        """What the other judges' lines cost, each at its model's price in the price table (at `price`,
        this judge's, for a model the table does not list)."""
        from gen.budget import price_for

        total = 0.0
        for key, usage in self.others.items():
            provider, _, rest = key.partition(":")
            model = rest.rpartition(":")[0]
            if provider in providers.names():
                model = providers.get(provider).price_key or model
            total += _cost(price_for(model) or price, [usage])
        return total

    def _add(self, tid: str, usage: tuple[int, int], unanswered: tuple[int, int] = (0, 0)) -> None:
        self.usage[tid] = _plus(self.usage.get(tid, (0, 0)), usage)
        if any(unanswered):
            self.unanswered[tid] = _plus(self.unanswered.get(tid, (0, 0)), unanswered)

    @contextlib.contextmanager
    def appender(self) -> Iterator[Any]:
        from gen.ledger import fresh_line

        start = fresh_line(self.path)
        with open(self.path, "ab") as f:
            f.write(start)  # after a line a crash cut short, or the first verdict joined it, unreadable

            def record(
                tid: str, verdict: str, usage: tuple[int, int] = (0, 0), unanswered: tuple[int, int] = (0, 0)
            ) -> None:
                self._add(tid, usage, unanswered)
                if verdict == "error" and not any(usage) and not any(unanswered):  # nothing to remember
                    return
                # An `error` line too: a resume asks the pair again, but what it cost stays counted.
                entry: dict[str, Any] = {
                    "id": tid,
                    "verdict": verdict,
                    "judge": self.judge.key,
                    "u": list(usage),
                }
                if any(unanswered):
                    entry["r"] = list(unanswered)
                f.write(orjson.dumps(entry) + b"\n")
                f.flush()

            yield record

    @contextlib.contextmanager
    def reserver(
        self,
    ) -> Iterator[
        tuple[Callable[[int, str, tuple[int, int]], None], Callable[[int, str, tuple[int, int]], None]]
    ]:
        """(reserve(key, row id, reservation): before a request of pair `key` leaves; settle(key, row id,
        abandoned): once the pair's line is written, `abandoned` the reservation of its requests given up
        in flight (Ctrl-C), kept open so that every later run counts them), each flushed as it is
        written (OSError when it cannot be: the request is not sent). Keys are this run's, made unique
        across runs by a random tag."""
        from gen.ledger import fresh_line

        tag = os.urandom(6).hex()
        start = fresh_line(self.reserved_path)
        with open(self.reserved_path, "ab") as f:
            f.write(start)

            def reserve(key: int, tid: str, reservation: tuple[int, int], k: str | None = None) -> None:
                entry = {"k": k or f"{tag}.{key}", "id": tid, "judge": self.judge.key, "q": list(reservation)}
                f.write(orjson.dumps(entry) + b"\n")
                f.flush()

            def settle(key: int, tid: str, abandoned: tuple[int, int] = (0, 0)) -> None:
                if any(abandoned):  # first: a crash between the two lines counts it twice, never not
                    reserve(key, tid, abandoned, f"{tag}.{key}.abandoned")
                f.write(orjson.dumps({"k": f"{tag}.{key}", "end": True}) + b"\n")
                f.flush()

            yield reserve, settle


def line_usage(entry: dict[str, Any], field: str = "u") -> tuple[int, int]:
    """A judge.jsonl line's (prompt, completion) tokens (`field` "r": its unanswered requests'
    reservations); (0, 0) for a line of a gen that kept none."""
    u = entry.get(field)
    return (u[0], u[1]) if usage_ok(u) else (0, 0)


def usage_ok(u: Any) -> bool:
    """`u` is what gen writes: two token counts (non-negative integers)."""
    return isinstance(u, list) and len(u) == 2 and all(type(n) is int and n >= 0 for n in u)


class _NoRoom(Exception):
    """A request of a pair past its first two (a re-ask, a retry) would pass --max-usd: not sent."""


class _Metered:
    """The judge's client for one pair: adds up the tokens of the requests it answers, and in
    `unanswered` the reservations of those that got no usable answer but may have been billed (a
    TeacherError marked `billed`: a timeout, a 2xx gen could not keep), and in `abandoned` those given
    up in flight (Ctrl-C), which --max-usd counts as gen run counts the teacher's. The pair's
    reservation covers its first two requests (one per order); each later one (an order asked again
    after a reply without a verdict line, or a retry after a failed request) is reserved as it leaves
    by `extend` (False: no room, _NoRoom raised and the request not sent), and each request's is
    written to disk before it leaves (`reserve`)."""

    def __init__(
        self,
        client: Any,
        extend: Callable[[tuple[int, int]], bool] | None = None,
        reserve: Callable[[tuple[int, int]], None] | None = None,
    ) -> None:
        self._client = client
        self._extend = extend
        self._reserve = reserve  # writes the request's reservation to disk before it leaves
        self.sent = 0
        self.prompt_tokens = self.completion_tokens = 0
        self.unanswered = (0, 0)
        self.abandoned = (0, 0)  # the reservation of a request given up in flight (Ctrl-C)

    async def complete(self, messages: Any, **kwargs: Any) -> Any:
        self.sent += 1
        reservation = request_reservation(messages, kwargs.get("sampling"))
        if self.sent > 2 and self._extend is not None and not self._extend(reservation):
            raise _NoRoom
        if self._reserve is not None:
            self._reserve(reservation)
        try:
            comp = await self._client.complete(messages, **kwargs)
        except TeacherError as e:
            if e.billed:
                self.unanswered = _plus(self.unanswered, reservation)
            raise
        except BaseException:  # given up in flight (Ctrl-C): it may have been billed
            self.abandoned = _plus(self.abandoned, reservation)
            raise
        self.prompt_tokens += comp.prompt_tokens
        self.completion_tokens += comp.completion_tokens
        return comp


async def judge_rows(
    judge: JudgeSpec,
    recipe: PromptFile,
    rows: list[tuple[str, Pair]],
    log: VerdictLog,
    *,
    max_concurrency: int,
    rpm: float | None,
    tpm: float | None,
    max_retries: int,
    max_pause_s: float,
    request_timeout_s: float,
    connect_timeout_s: float,
    say: Callable[[str], None] | None = None,
    max_usd: float | None = None,
    spent_usd: float = 0.0,
    price: Price | None = None,
) -> dict[str, str]:
    """The verdict of every (row id, pair), reusing those `log` holds and appending the new ones (`say`
    is told how many are asked). A judge that refuses the key (401/403) is a ConfigError naming it.

    With `max_usd` (and the judge's `price`): a pair begins only while `spent_usd` (what the evaluation
    spent before judging), the judge's pairs in judge.jsonl and this run's, and the reservations of the
    pairs in flight and of its own (`_JudgeSpend`) fit in it; once one does not, JudgeBudgetSpent is
    raised when the pairs in flight are done (their verdicts kept)."""
    from gen.limits import LimitedTeacher, Limiter
    from gen.pipeline import worker_pool
    from gen.retry import RetryPolicy

    verdicts = log.load()
    pending = [(tid, pair) for tid, pair in rows if tid not in verdicts]
    if not pending:
        return verdicts
    spent = spent_usd + _cost(price, log.usage.values()) + _cost(price, log.unanswered.values())
    spent += log.others_usd(price)  # an earlier run's judge of another prompt or model: paid all the same
    ledger = _JudgeSpend(max_usd, price, spent)
    if say is not None:
        say(f"judging {len(pending):,} answers with {judge.model} (each pair asked in both orders)")
    todo = iter(pending)
    prompt = load_prompt(judge.prompt_path)
    policy = RetryPolicy(max_retries=max_retries, max_wait_s=max_pause_s)
    limiter = Limiter(max_concurrency=max_concurrency, rpm=rpm, tpm=tpm, max_pause_s=max_pause_s)
    async with opened(
        judge,
        recipe,
        max_connections=max_concurrency,
        request_timeout_s=request_timeout_s,
        connect_timeout_s=connect_timeout_s,
    ) as client:
        limited = LimitedTeacher(client, limiter)
        with log.appender() as record, log.reserver() as (reserve, settle):

            async def work() -> None:
                for tid, pair in todo:  # one shared iterator: each pair goes to one worker
                    key = await ledger.begin(tid, pair_reservation(pair, prompt))
                    if key is None:
                        return
                    # The row's seed, as the run sends it: the same pair gets the same requests.
                    seed = int(tid[:8], 16) & 0x7FFFFFFF if _hex(tid[:8]) else 0
                    metered = _Metered(
                        limited,
                        lambda more, k=key: ledger.extend(k, more),
                        lambda q, k=key, t=tid: reserve(k, t, q),
                    )
                    try:
                        verdict = await judge_pair(
                            pair, client=metered, prompt=prompt, seed=seed, retry_policy=policy
                        )
                    except BaseException as e:  # a refusal, no room for a re-ask, or cancelled (Ctrl-C)
                        # What the judge answered of the pair was paid for: kept as an `error` line (a
                        # resume asks the pair again and counts it), as for a pair that ended as error.
                        used = (metered.prompt_tokens, metered.completion_tokens)
                        record(tid, "error", used, metered.unanswered)
                        settle(key, tid, metered.abandoned)  # kept open: counted by every later run
                        ledger.end(key, used, _plus(metered.unanswered, metered.abandoned))
                        if isinstance(e, _NoRoom):
                            return  # the budget stopped: no further pair begins
                        if isinstance(e, FatalTeacherError):
                            raise ConfigError(f"judge {judge.model}", f"refused the request: {e}") from None
                        raise
                    verdicts[tid] = verdict
                    used = (metered.prompt_tokens, metered.completion_tokens)
                    record(tid, verdict, used, metered.unanswered)
                    settle(key, tid)
                    ledger.end(key, used, metered.unanswered)

            await worker_pool(min(max_concurrency, len(pending)), work)
    if ledger.stopped:
        judged = sum(tid in verdicts for tid, _ in rows)
        raise JudgeBudgetSpent(
            f"--max-usd {max_usd:g} reached while judging: {judged:,} of {len(rows):,} answers judged "
            f"(${ledger.spent:,.4f} spent; the verdicts are kept in {VERDICTS_FILE}); resume with a "
            "higher --max-usd"
        )
    return verdicts


class JudgeBudgetSpent(Exception):
    """--max-usd was reached while judging: the verdicts so far are kept in judge.jsonl."""


def _plus(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    """Two (prompt, completion) token counts added."""
    return a[0] + b[0], a[1] + b[1]


def _cost(price: Price | None, usage: Any) -> float:
    return 0.0 if price is None else sum(price.cost(p, c) for p, c in usage)


class _JudgeSpend:
    """What the judge has cost against --max-usd, with every pair in flight counted at its reservation
    (what its requests may cost at most: `gen.judge.pair_reservation`, priced), kept as running sums
    (gen.reserved.InFlight) as gen run keeps its requests', never at an average of the pairs so far.

    A pair begins only while what was spent plus the reservations in flight plus its own is at most the
    limit. One that does not fit waits while pairs are in flight (they usually cost far less than they
    reserved, and their ends free room); when none is left in flight and it still does not fit, the
    judging stops. As gen run lets exactly one request out under a budget smaller than one
    reservation, the first pair of a run is let out alone when the limit is not reached yet but has no
    room for its reservation: the only pair that may end above the limit. A request of a pair past its
    first two is reserved as it leaves (`extend`). No limit (or no price): every pair begins."""

    def __init__(self, max_usd: float | None, price: Price | None, spent: float) -> None:
        self.max_usd, self.price, self.spent = max_usd, price, spent
        self.in_flight = InFlight()  # pair key -> (row id, (prompt, completion) tokens reserved)
        self.stopped = False
        self._begun = False  # a pair of this run has begun
        self._keys = itertools.count()
        self._changed = asyncio.Event()  # set (and replaced) when a pair ends or the judging stops

    def _fits(self, reservation: tuple[int, int]) -> bool:
        if self.max_usd is None or self.price is None:
            return True
        return self.spent + self.in_flight.usd(self.price) + self.price.cost(*reservation) <= self.max_usd

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def begin(self, tid: str, reservation: tuple[int, int]) -> int | None:
        """The key of the pair, reserved in flight; None when no pair may begin (`stopped`)."""
        while True:
            if self.stopped:
                return None
            if self._fits(reservation):
                break
            if not self.in_flight:
                assert self.max_usd is not None
                if not self._begun and self.spent < self.max_usd:
                    break  # gen run's one request under a budget smaller than one reservation
                self.stopped = True
                self._wake()
                return None
            await self._changed.wait()
        self._begun = True
        key = next(self._keys)
        self.in_flight[key] = (tid, reservation)
        return key

    def extend(self, key: int, more: tuple[int, int]) -> bool:
        """Reserve one more request of the pair `key` (True), or stop the judging when it does not fit."""
        if not self._fits(more):
            self.stopped = True
            self._wake()
            return False
        tid, held = self.in_flight[key]
        self.in_flight[key] = (tid, _plus(held, more))
        return True

    def end(self, key: int, usage: tuple[int, int], unanswered: tuple[int, int] = (0, 0)) -> None:
        """The pair is done (a verdict, `error`, or interrupted): its reservation is released and what
        its answered requests cost is counted, with the reservations of those that may have been
        billed unanswered (`unanswered`)."""
        self.in_flight.pop(key, None)
        self.spent += _cost(self.price, [usage, unanswered])
        self._wake()


def _hex(s: str) -> bool:
    try:
        int(s, 16)
    except ValueError:
        return False
    return bool(s)


def figures(
    judge: JudgeSpec,
    verdicts: dict[str, str],
    no_answer: int,
    tokens: tuple[int, int] = (0, 0),
    price: Price | None = None,
) -> dict[str, Any]:
    """report.json's `judge`: the judge's identity, the counts of each verdict, and win / tie / loss /
    non-loss as Rates (95% Wilson) over the decided rows (RULE); the prompt and completion tokens of
    its requests and what they cost at `price` (None: unpriced)."""
    counts = tally(verdicts.values())
    counts[NO_ANSWER] = no_answer
    losses = counts["loss"] + no_answer
    decided = counts["win"] + counts["tie"] + losses
    return {
        **judge.identity(),
        "rule": RULE,
        "counts": counts,
        "decided": decided,
        "win": Rate(counts["win"], decided).as_dict(),
        "tie": Rate(counts["tie"], decided).as_dict(),
        "loss": Rate(losses, decided).as_dict(),
        "non_loss": Rate(counts["win"] + counts["tie"], decided).as_dict(),
        "tokens": {"prompt": tokens[0], "completion": tokens[1]},
        "cost_usd": None if price is None else price.cost(*tokens),
    }
