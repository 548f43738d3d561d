"""The teacher simulator: real OpenAI and Anthropic servers on loopback, with injectable faults.

`gen sim` serves it so users can dry-run recipes and load-test settings; the tests point the real
aiohttp client (and the official SDKs) at it. One server speaks both protocols: OpenAI chat
completions at `POST /v1/chat/completions` and Anthropic Messages at `POST /v1/messages`, with
`GET /v1/models` answering in the shape of whichever protocol asks (Anthropic's clients send
`anthropic-version`). Answers are deterministic (a sha256 of the messages and the request's `seed`,
or on the Anthropic path of the messages and the `system` prompt, picks them), and JSON-schema
answers (`response_format`, or a forced `tool_use` whose `input` fits the tool's `input_schema`)
validate against the requested schema. Faults (429, 500, 503 or Anthropic's 529, dropped
connections, broken or fenced JSON, and the hostile ones: replies too large, bodies that never end,
gzip bombs, replies that break the protocol's wire format) are drawn from a seeded RNG owned by the
server, and an optional requests-per-minute limit answers 429 with the protocol's rate-limit headers.
This module holds that state and the handlers; each protocol's wire format is in gen.sim.dialects.

    async with SimServer(SimConfig(rate_429=0.1)) as server:   # on the current event loop
        ...  # point a client at server.base_url
    with SimThread(SimConfig()) as server:                     # in a thread with its own loop
        ...
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import random
import signal
import sys
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass

import orjson
from aiohttp import web

from gen.sim.answers import answer_for
from gen.sim.batches import HOLD_POINTS, RESULT_FAULTS, SimBatches
from gen.sim.batches import STATS as BATCH_STATS
from gen.sim.cache import PromptCache
from gen.sim.dialects import (
    MALFORMED,
    AnthropicDialect,
    BadRequest,
    Dialect,
    OpenAIDialect,
    _Chat,
    malformed_bytes,
)
from gen.sim.instances import sample_from_schema
from gen.sim.judge import MODES as JUDGE_MODES
from gen.sim.judge import reply as judge_reply
from gen.sim.reasoning import check_config as check_reasoning

__all__ = ["MALFORMED", "SimConfig", "SimServer", "SimThread", "perturbed", "sample_from_schema", "serve"]


@dataclass(kw_only=True, slots=True)
class SimConfig:
    """How the simulator behaves. Rates are fractions of chat requests, drawn per request.

    At most one fault hits a request. Checks run in a real gateway's order, each answered at once
    without the added latency: `api_key` (401 unless `Authorization: Bearer <api_key>`; on the
    Anthropic path `x-api-key: <api_key>` too, and then a 400 without `anthropic-version`), then `rpm`
    (429), then the body (400) and the model (404 when a `model` other than ours is asked for).

    On the Anthropic path `rate_503` answers 529 `overloaded_error`, `rate_invalid_json` breaks a
    tool_use `input` against its schema (a required key left out) and `rate_fenced_json` puts a line
    of text before the tool_use block; text answers break as on the OpenAI path.

    `echo_headers` plays a hostile or debugging gateway: every error answer (4xx, 5xx, on the chat,
    messages and models paths) carries the request's headers, the API key among them, in its message.
    `echo_key` is worse: every 200 answer names the request's credential (its Authorization or
    x-api-key value) as its `model` and, on the OpenAI path, at the end of its text.
    """

    model: str = "gen-sim-1"
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    rate_429: float = 0.0
    retry_after_s: float = 1.0
    # Sent verbatim as the `rate_429` fault's Retry-After instead of `retry_after_s` (and then no
    # retry-after-ms): a hostile or broken value such as "inf", "99999" or "soon".
    retry_after_header: str | None = None
    rate_500: float = 0.0
    rate_503: float = 0.0
    rate_invalid_json: float = 0.0
    rate_fenced_json: float = 0.0
    rate_drop: float = 0.0
    rate_truncated: float = 0.0  # answer cut to half, as if at max_tokens (finish_reason "length")
    rate_oversize: float = 0.0
    oversize_bytes: int = 5_000_000
    rate_endless: float = 0.0
    endless_interval_s: float = 0.0
    rate_gzip_bomb: float = 0.0
    bomb_bytes: int = 1 << 30
    rate_malformed: float = 0.0
    malformed: str = "any"
    rpm: int | None = None
    rpm_window_s: float = 60.0  # the window the rpm limit is checked over (1.0: a per-second limit)
    seed: int = 0
    api_key: str | None = None
    echo_headers: bool = False
    echo_key: bool = False
    list_models: bool = True
    # Prompt caching (gen.sim.cache): the shortest prefix cached (OpenAI's automatic minimum; Anthropic's
    # for Sonnet 4.5 and Opus 4), how long an entry lives after its last use, how many are kept.
    cache_min_tokens: int = 1024
    cache_ttl_s: float = 300.0
    cache_entries: int = 10_000
    # The judge (gen.sim.judge): "longer", "longer_a", "first" or "garbage" for requests that show two
    # answers; the first `judge_garbage_first` of them get a reply without a verdict all the same.
    judge: str | None = None
    judge_garbage_first: int = 0
    # A teacher with references to get right (gen.sim.answers): `answers` maps an input's key to its
    # reference (gen fills it from the prompt file's `answer_from` variable); `wrong_share` of the
    # answers are wrong; `answer_field`: the field of a JSON answer that carries it.
    answer_from: str | None = None
    answer_field: str | None = None
    answers: dict[str, str] | None = None
    wrong_share: float = 0.0
    # A simulated student (`gen eval` tests): answers as the teacher would (the same messages and seed
    # give the same answer), except on the requests `perturbed()` picks, a `perturb_share` of them,
    # whose top-level field `perturb_field` ("*": every field; a text answer gains a word) it changes.
    perturb_share: float = 0.0
    perturb_field: str = "*"
    # Batch APIs (gen.sim.batches): seconds from creation until a batch has ended, the share of its
    # requests that fail alone or expire, a message refusing every batch as a whole, the most requests
    # a batch may hold, and where the first request is held unanswered ("upload", "create", "accepted",
    # "poll", "download").
    batch_delay_s: float = 0.0
    batch_rate_failed: float = 0.0
    batch_rate_expired: float = 0.0
    batch_reject: str | None = None
    batch_max_requests: int | None = None
    batch_hold: str | None = None
    # A hostile provider's results of an ended batch: "missing" leaves the first request's result out,
    # "duplicate" sends every result twice, "foreign" adds one for a custom_id of no request, "garbled"
    # adds lines that are not JSON.
    batch_results: str | None = None
    batch_cancel_ran: bool = False  # a cancelled OpenAI batch serves the results of the requests it ran
    # A reasoning teacher (gen.sim.reasoning): how the OpenAI path sends a trace ("reasoning_content",
    # "reasoning", "think-tags"; "hidden": only counted in usage; None: no trace), how long, whether
    # the samples of one input get near-identical traces, and whether usage reports reasoning_tokens.
    # `answer_text`: a fixed text answer (a shared short final answer such as \boxed{42});
    # `reasoning_text`: a fixed trace in place of the drawn one (a hostile teacher's blank trace, say),
    # in whichever way the trace is sent.
    reasoning: str | None = None
    reasoning_tokens: int = 200
    reasoning_near_copies: bool = False
    reasoning_usage: bool = True
    answer_text: str | None = None
    reasoning_text: str | None = None
    # A teacher whose answers grow: free-text answers after the first `long_after` ok ones are ten times
    # as long (what an average of the early answers underestimates); a judge's replies (`judge`) gain a
    # rationale of ~390 tokens before their verdict line.
    long_after: int | None = None

    def __post_init__(self) -> None:
        rates = {name: getattr(self, name) for name in _FAULTS}
        for name, rate in rates.items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {rate}")
        if sum(rates.values()) > 1.0 + 1e-9:
            raise ValueError(f"fault rates must sum to at most 1, got {sum(rates.values()):g}")
        if self.latency_ms < 0 or self.latency_jitter_ms < 0:
            raise ValueError("latency_ms and latency_jitter_ms must be >= 0")
        if self.retry_after_s < 0:
            raise ValueError(f"retry_after_s must be >= 0, got {self.retry_after_s}")
        if self.rpm is not None and self.rpm < 1:
            raise ValueError(f"rpm must be >= 1 or None, got {self.rpm}")
        if not 0 < self.rpm_window_s <= 60.0:
            raise ValueError(f"rpm_window_s must be in (0, 60], got {self.rpm_window_s}")
        if self.oversize_bytes < 0 or self.bomb_bytes < 0 or self.endless_interval_s < 0:
            raise ValueError("oversize_bytes, bomb_bytes and endless_interval_s must be >= 0")
        if self.cache_min_tokens < 1 or self.cache_ttl_s < 0 or self.cache_entries < 0:
            raise ValueError("cache_min_tokens must be >= 1, cache_ttl_s and cache_entries >= 0")
        if self.judge is not None and self.judge not in JUDGE_MODES:
            raise ValueError(f"judge must be one of {', '.join(JUDGE_MODES)}, got {self.judge!r}")
        if not 0.0 <= self.wrong_share <= 1.0:
            raise ValueError(f"wrong_share must be in [0, 1], got {self.wrong_share}")
        if not 0.0 <= self.perturb_share <= 1.0:
            raise ValueError(f"perturb_share must be in [0, 1], got {self.perturb_share}")
        failed, expired = self.batch_rate_failed, self.batch_rate_expired
        if failed < 0 or expired < 0 or failed + expired > 1.0:
            raise ValueError("batch_rate_failed and batch_rate_expired must be >= 0 and sum to at most 1")
        if self.batch_delay_s < 0:
            raise ValueError(f"batch_delay_s must be >= 0, got {self.batch_delay_s}")
        if self.batch_results is not None and self.batch_results not in RESULT_FAULTS:
            raise ValueError(f"batch_results must be one of {', '.join(RESULT_FAULTS)}")
        if self.batch_hold is not None and self.batch_hold not in HOLD_POINTS:
            raise ValueError(f"batch_hold must be one of {', '.join(HOLD_POINTS)}, got {self.batch_hold!r}")
        if self.batch_max_requests is not None and self.batch_max_requests < 1:
            raise ValueError(f"batch_max_requests must be >= 1, got {self.batch_max_requests}")
        if self.long_after is not None and self.long_after < 0:
            raise ValueError(f"long_after must be >= 0 or None, got {self.long_after}")
        check_reasoning(self)
        if self.malformed != "any" and self.malformed not in MALFORMED:
            known = ", ".join(MALFORMED)
            raise ValueError(f"malformed must be 'any' or one of {known}, got {self.malformed!r}")


# Fault field names in the order their probability bands are laid out on [0, 1) (new ones go last, so a
# seed keeps drawing the same faults it always did).
_FAULTS = (
    "rate_429", "rate_500", "rate_503", "rate_drop", "rate_invalid_json", "rate_fenced_json",
    "rate_truncated", "rate_oversize", "rate_endless", "rate_gzip_bomb", "rate_malformed",
)  # fmt: skip


# --------------------------------------------------------------------------- the server


_STATS = (
    "requests", "ok", "status_429", "status_500", "status_503", "status_529", "dropped",
    "invalid_json", "fenced_json", "truncated", "bad_request", "rate_limited", "status_401", "status_404",
    "oversize", "endless", "gzip_bomb", "malformed",
    "prompt_tokens", "completion_tokens", "cached_tokens", "cache_write_tokens", *BATCH_STATS,
)  # fmt: skip


class _Simulator:
    """The handlers and their state: the config, the fault RNG, the rpm window and the counters.

    Both protocols share all of it. Counters: `requests` = ok + status_429 + status_500 + status_503
    + status_529 + dropped + bad_request + rate_limited + status_401 + status_404 + oversize + endless
    + gzip_bomb + malformed; `invalid_json`, `fenced_json` and `truncated` count the ok answers whose
    content is broken or cut short. `status_429` counts injected 429s,
    `rate_limited` the rpm ones; the `rate_503` fault is a 503 on the OpenAI path and a 529 on the
    Anthropic one. `prompt_tokens` and `completion_tokens` sum the usage of every ok answer sent: what
    a paid teacher would bill, whether or not the client lived to read it. `cached_tokens` and
    `cache_write_tokens` sum what the prompt cache (gen.sim.cache) read and wrote of them.
    """

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.stats: dict[str, int] = dict.fromkeys(_STATS, 0)
        self.created = int(time.time())
        self._faults = random.Random(config.seed)
        self._jitter = random.Random(f"{config.seed}/jitter")  # apart, so jitter never shifts the faults
        self._shapes = random.Random(f"{config.seed}/malformed")
        self._window: deque[float] | None = deque() if config.rpm is not None else None
        self._judged = 0  # judge requests answered (SimConfig.judge_garbage_first)
        bands: list[tuple[float, str]] = []
        edge = 0.0
        for name in _FAULTS:
            rate = getattr(config, name)
            if rate > 0:
                edge += rate
                bands.append((edge, name))
        self._bands = bands
        self._openai = OpenAIDialect(config)
        self._anthropic = AnthropicDialect(config)
        self.cache = PromptCache(
            min_tokens=config.cache_min_tokens, ttl_s=config.cache_ttl_s, entries=config.cache_entries
        )
        self._batches = SimBatches(self)

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        """The OpenAI path's 401 answer for a request without our key, else None."""
        refused = self._openai.refuse(request)
        return None if refused is None else refused[1]

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/sim/stats", self.get_stats)
        app.router.add_post("/sim/reset", self.reset)
        self._batches.routes(app)
        return app

    def _admit(self, dialect: Dialect) -> tuple[float | None, dict[str, str]]:
        """Sliding window (60 s, or `rpm_window_s` with the limit scaled to it): (seconds until a slot
        frees if refused else None, rate-limit headers)."""
        assert self._window is not None and self.config.rpm is not None
        span = self.config.rpm_window_s
        window, rpm = self._window, self.config.rpm
        allowed = max(1, round(rpm * span / 60.0))
        now = time.monotonic()
        while window and window[0] <= now - span:
            window.popleft()
        wait = None
        if len(window) < allowed:
            window.append(now)
        else:
            wait = window[0] + span - now
        headers = dialect.rate_headers(
            rpm, allowed - len(window), window[0] + span - now, window[-1] + span - now
        )
        return wait, headers

    def _set_answer(self, chat: _Chat) -> None:
        """The final answer `chat` gets, when the simulator has references (`[sim] answer_from`): chat
        requests and a batch's alike."""
        config = self.config
        if config.answers:
            chat.answer = answer_for(chat.messages, chat.salt, config.answers, config.wrong_share)
            chat.answer_field = config.answer_field

    def _draw_fault(self) -> str | None:
        u = self._faults.random()
        for edge, name in self._bands:
            if u < edge:
                return name
        return None

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return self._echo(request, await self._answer(request, self._openai))

    async def messages(self, request: web.Request) -> web.StreamResponse:
        return self._echo(request, await self._answer(request, self._anthropic))

    def _echo(self, request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        """With `echo_headers`, an error answer's message gains the request's headers, verbatim; with
        `echo_key`, a 200 answer names the request's credential as its model (and in its text)."""
        if self.config.echo_key and response.status == 200 and isinstance(response, web.Response):
            credential = request.headers.get("Authorization") or request.headers.get("x-api-key") or ""
            doc = orjson.loads(response.body)  # type: ignore[arg-type]
            doc["model"] = credential
            for choice in doc.get("choices") or []:
                choice["message"]["content"] = f"{choice['message']['content']} {credential}"
            response.body = orjson.dumps(doc)
            return response
        if not self.config.echo_headers or response.status < 400 or not isinstance(response, web.Response):
            return response
        doc = orjson.loads(response.body)  # type: ignore[arg-type]
        echoed = orjson.dumps({str(k): v for k, v in request.headers.items()}).decode()
        doc["error"]["message"] = f"{doc['error']['message']} (request headers: {echoed})"
        response.body = orjson.dumps(doc)
        return response

    async def _answer(self, request: web.Request, dialect: Dialect) -> web.StreamResponse:
        stats, config = self.stats, self.config
        stats["requests"] += 1
        refused = dialect.refuse(request)
        if refused is not None:
            stats[refused[0]] += 1
            return refused[1]
        headers: dict[str, str] | None = None
        if self._window is not None:
            wait, headers = self._admit(dialect)
            if wait is not None:
                stats["rate_limited"] += 1
                return dialect.rate_limited(wait, headers)
        try:
            chat = dialect.parse(await request.read())
        except BadRequest as exc:
            stats["bad_request"] += 1
            # `param` stays null for a malformed body, as it always has on the OpenAI path.
            return dialect.bad_request(exc.message, None, headers)
        if chat.model is not None and chat.model != config.model:
            stats["status_404"] += 1
            return dialect.unknown_model(chat.model, headers)
        self._set_answer(chat)
        fault = self._draw_fault() if self._bands else None
        # The prompt cache is read as the request arrives and written once it is answered (below).
        if chat.marked is not None:
            chat.cached, chat.written = self.cache.marked(*chat.marked)
        elif dialect is self._openai:
            chat.cached = self.cache.automatic(chat.prefixes)
        delay = config.latency_ms
        if config.latency_jitter_ms:
            delay += self._jitter.uniform(-config.latency_jitter_ms, config.latency_jitter_ms)
        if delay > 0:
            await asyncio.sleep(delay / 1000)
        if fault is not None:
            if fault == "rate_drop":
                stats["dropped"] += 1
                return _drop(request)
            counter = dialect.error_faults.get(fault)
            if counter is not None:
                stats[counter] += 1
                return dialect.fault(fault, headers)
            if fault == "rate_endless":
                stats["endless"] += 1
                return await _endless(request, config.endless_interval_s)
            if fault == "rate_gzip_bomb":
                stats["gzip_bomb"] += 1
                bomb_headers = {**(headers or {}), "Content-Encoding": "gzip"}
                bomb = _gzip_bomb(config.bomb_bytes)
                return web.Response(body=bomb, content_type="application/json", headers=bomb_headers)
        if config.judge is not None and chat.mode == "text":
            garbage = self._judged < config.judge_garbage_first
            long = config.long_after is not None and stats["ok"] >= config.long_after
            chat.fixed = judge_reply(chat.messages, config.judge, garbage, long)
            self._judged += chat.fixed is not None
        if config.perturb_share and perturbed(chat.salt, config.perturb_share):
            chat.perturb = config.perturb_field
        digest = hashlib.sha256(orjson.dumps(chat.messages) + b"\0" + chat.salt).digest()
        rng = random.Random(int.from_bytes(digest[:8], "big"))
        if fault == "rate_oversize":
            chat.max_tokens = None  # the server that ignores it
            chat.mode = "text"
        try:
            body = dialect.answer(chat, rng, fault, stats)
        except BadRequest as exc:
            stats["bad_request"] += 1
            return dialect.bad_request(exc.message, exc.param, headers)
        if chat.marked is not None:
            self.cache.store_marked(*chat.marked)
        elif dialect is self._openai:
            self.cache.store_automatic(chat.prefixes)
        if fault == "rate_oversize":
            stats["oversize"] += 1
            filler = orjson.dumps("word " * (config.oversize_bytes // 5))
            body = body.replace(b'"text":"', b'"text":' + filler[:-1], 1).replace(
                b'"content":"', b'"content":' + filler[:-1], 1
            )
        elif fault == "rate_malformed":
            stats["malformed"] += 1
            shape = config.malformed
            if shape == "any":
                shape = self._shapes.choice(MALFORMED)
            doc = dialect.malform(orjson.loads(body), shape)
            body = malformed_bytes(doc)
        else:
            stats["ok"] += 1
        return web.Response(body=body, content_type="application/json", headers=headers)

    async def models(self, request: web.Request) -> web.Response:
        # One path, two protocols: Anthropic's clients always send `anthropic-version`.
        dialect = self._anthropic if "anthropic-version" in request.headers else self._openai
        refused = dialect.refuse(request)
        if refused is not None:
            return self._echo(request, refused[1])
        if not self.config.list_models:
            return self._echo(request, web.json_response({"error": {"message": "Not Found"}}, status=404))
        return web.Response(body=dialect.models(request, self.created), content_type="application/json")

    async def health(self, request: web.Request) -> web.Response:
        return web.Response()

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.stats), content_type="application/json")

    async def reset(self, request: web.Request) -> web.Response:
        for k in self.stats:
            self.stats[k] = 0
        return web.Response(body=orjson.dumps(self.stats), content_type="application/json")


def perturbed(salt: bytes, share: float) -> bool:
    """Whether the simulated student changes its answer to a request with this salt (on the OpenAI path
    the request's `seed` as decimal digits; gen sends `int(id[:8], 16) & 0x7FFFFFFF`): a fixed `share`
    of salts, picked by a hash, so a test knows which rows disagree."""
    h = int.from_bytes(hashlib.sha256(b"perturb\0" + salt).digest()[:8], "big")
    return h / 2**64 < share


async def _endless(request: web.Request, interval_s: float) -> web.StreamResponse:
    """A 200 whose chunked body never ends (the start of a chat reply, then filler) until the client
    hangs up; a chunk every `interval_s`, or as fast as the client reads."""
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    chunk = b"word " * (13 if interval_s else 13_000)
    try:
        await resp.write(b'{"choices": [{"message": {"role": "assistant", "content": "')
        while True:
            await resp.write(chunk)
            await asyncio.sleep(interval_s)
    except (ConnectionError, RuntimeError):  # the client went away (aiohttp raises either)
        pass
    return resp


@functools.cache
def _gzip_bomb(size: int) -> bytes:
    """A gzip stream of `size` zero bytes (about 1,000 times smaller), made once per size."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(min(size, 1 << 20))
    parts = []
    left = size
    while left > 0:
        parts.append(packer.compress(block[: min(left, len(block))]))
        left -= len(block)
    parts.append(packer.flush())
    return b"".join(parts)


def _drop(request: web.Request) -> web.StreamResponse:
    """Close the connection with nothing written: the client sees the server disconnect."""
    transport = request.transport
    if transport is not None:
        transport.close()
    return web.Response()  # never written: aiohttp sees the closed transport and discards it


# --------------------------------------------------------------------------- serving


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class SimServer:
    """The simulator on the current event loop: `async with SimServer(config) as server: ...`.

    `port=0` picks a free port; `port` and `base_url` ("http://HOST:PORT/v1") are the real ones once
    started. `stats` is the live counters dict (see `/sim/stats`).
    """

    def __init__(self, config: SimConfig | None = None, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config or SimConfig()
        self.host = host
        self._requested_port = port
        self._sim = _Simulator(self.config)
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the simulator is not running")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.port}/v1"

    @property
    def stats(self) -> dict[str, int]:
        return self._sim.stats

    @property
    def batch_custom_ids(self) -> list[str]:
        """The custom_id of every request of every batch accepted so far: what a provider would bill."""
        return list(self._sim._batches.submitted)

    async def start(self) -> None:
        """Listen on host:port. Raises OSError if the port is taken."""
        if self._runner is not None:
            raise RuntimeError("the simulator is already running")
        # No access log: formatting a line per request would cost more than answering it.
        runner = web.AppRunner(self._sim.app(), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            # A deep accept queue: a client opening a thousand connections at once must not be refused
            # by the kernel (aiohttp's default backlog is 128), as real inference servers are not.
            site = web.TCPSite(runner, self.host, self._requested_port, backlog=4096)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = runner.addresses[0][1]

    async def stop(self) -> None:
        """Close the listener and every connection. Safe to call twice."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self._port = None

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


class SimThread:
    """A SimServer in a daemon thread with its own event loop, for sync code and separate-loop tests.

    `with SimThread(config) as server:` starts it and stops it cleanly on exit; `stats()` is a copy.
    """

    def __init__(self, config: SimConfig | None = None, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = SimServer(config, host=host, port=port)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the simulator is not running")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://{_url_host(self.server.host)}:{self.port}/v1"

    def stats(self) -> dict[str, int]:
        return dict(self.server.stats)

    def start(self) -> None:
        """Start the thread and wait until the server listens; re-raises a failure to start."""
        if self._thread is not None:
            raise RuntimeError("the simulator is already running")
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), name="gen-sim", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            self._thread = None
            raise self._error

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            await self.server.start()
            self._port = self.server.port
        except BaseException as exc:
            self._error = exc
            return
        finally:
            self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.server.stop()

    def stop(self) -> None:
        """Stop the server, close its connections and join the thread. Safe to call twice."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        thread.join()
        self._port = None

    def __enter__(self) -> SimThread:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def serve(config: SimConfig | None = None, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the simulator until SIGINT or SIGTERM (blocking, for `gen sim`); then return normally."""
    try:
        asyncio.run(_serve(config or SimConfig(), host, port))
    except KeyboardInterrupt:  # where signal handlers cannot be installed (Windows)
        pass


async def _serve(config: SimConfig, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):  # Windows, or not the main thread
            pass
    async with SimServer(config, host=host, port=port) as server:
        print(
            f"gen sim: serving the OpenAI protocol on {server.base_url} (model {config.model})\n"
            f"gen sim: and Anthropic Messages at {server.base_url}/messages\n"
            f"gen sim: batch APIs at {server.base_url}/batches and {server.base_url}/messages/batches",
            file=sys.stderr,
            flush=True,
        )
        await stop.wait()
