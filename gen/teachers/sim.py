"""The teacher simulator: a real OpenAI chat-completions server on loopback, with injectable faults.

`gen sim` serves it so users can dry-run recipes and load-test settings; the tests point the real
aiohttp client at it. Answers are deterministic (a sha256 of the messages and the request's `seed`
picks them) and JSON-schema answers validate against the requested schema. Faults (429, 500, 503,
dropped connections, broken or fenced JSON) are drawn from a seeded RNG owned by the server, and an
optional requests-per-minute limit answers 429 with OpenAI's rate-limit headers.

    async with SimServer(SimConfig(rate_429=0.1)) as server:   # on the current event loop
        ...  # point a client at server.base_url
    with SimThread(SimConfig()) as server:                     # in a thread with its own loop
        ...
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import secrets
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from gen.teachers.sampling import FENCE_INTROS, VOCAB, Gen, compiled_sampler, sample_from_schema, sentences

__all__ = ["SimConfig", "SimServer", "SimThread", "sample_from_schema", "serve"]


@dataclass(kw_only=True, slots=True)
class SimConfig:
    """How the simulator behaves. Rates are fractions of chat requests, drawn per request.

    At most one fault hits a request. Checks run in a real gateway's order, each answered at once
    without the added latency: `api_key` (401 unless `Authorization: Bearer <api_key>`), then `rpm`
    (429), then the body (400) and the model (404 when a `model` other than ours is asked for).
    """

    model: str = "gen-sim-1"
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    rate_429: float = 0.0
    retry_after_s: float = 1.0
    rate_500: float = 0.0
    rate_503: float = 0.0
    rate_invalid_json: float = 0.0
    rate_fenced_json: float = 0.0
    rate_drop: float = 0.0
    rpm: int | None = None
    seed: int = 0
    api_key: str | None = None

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


# Fault field names in the order their probability bands are laid out on [0, 1).
_FAULTS = ("rate_429", "rate_500", "rate_503", "rate_drop", "rate_invalid_json", "rate_fenced_json")


# --------------------------------------------------------------------------- the server


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(slots=True)
class _Chat:
    messages: list[Any]
    model: str | None
    prompt_tokens: int
    seed: int | None
    max_tokens: int | None
    mode: str  # "text", "json_object" or "json_schema"
    schema: Gen | None


def _positive_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise _BadRequest(f"Invalid '{name}': expected a positive integer, got {value!r}.", name)
    return value


def _parse_chat(raw: bytes) -> _Chat:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _BadRequest("We could not parse the JSON body of your request.") from None
    if not isinstance(body, dict):
        raise _BadRequest("The request body must be a JSON object.")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("'messages' must be a non-empty array.", "messages")
    chars = 0
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise _BadRequest(f"Invalid 'messages[{i}]': expected an object with a 'role'.", f"messages[{i}]")
        content = m.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):  # content parts: count the text ones
            chars += sum(
                len(p["text"]) for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
            )
        elif content is not None:
            raise _BadRequest(f"Invalid 'messages[{i}].content'.", f"messages[{i}].content")
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise _BadRequest(f"Invalid 'seed': expected an integer, got {seed!r}.", "seed")
    max_tokens = _positive_int(body, "max_completion_tokens") or _positive_int(body, "max_tokens")
    mode, schema = "text", None
    fmt = body.get("response_format")
    if fmt is not None:
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind == "json_schema":
            spec = fmt.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict | bool):
                raise _BadRequest("Missing 'response_format.json_schema.schema'.", "response_format")
            try:
                schema = compiled_sampler(orjson.dumps(spec["schema"]))
            except (ValueError, TypeError, RecursionError) as exc:
                raise _BadRequest(f"Invalid schema for response_format: {exc}", "response_format") from None
            mode = "json_schema"
        elif kind in ("json_object", "text"):
            mode = kind
        else:
            raise _BadRequest(f"Invalid 'response_format.type': {kind!r}.", "response_format")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _BadRequest(f"Invalid 'model': expected a string, got {model!r}.", "model")
    return _Chat(messages, model, chars // 4 + 4 * len(messages), seed, max_tokens, mode, schema)


def _content(chat: _Chat, rng: random.Random) -> str:
    if chat.mode == "json_schema":
        assert chat.schema is not None
        return orjson.dumps(chat.schema(rng, 0)).decode()
    if chat.mode == "json_object":
        obj = {
            "answer": sentences(rng, rng.randint(10, 30)),
            "confidence": round(rng.random(), 2),
            "keywords": list(rng.choices(VOCAB, k=rng.randint(1, 4))),
        }
        return orjson.dumps(obj).decode()
    return sentences(rng, rng.randint(30, 80))


def _broken(content: str) -> str:
    """`content` cut short; a proper prefix of a JSON object or array never parses."""
    cut = content[: max(1, len(content) // 2)]
    try:
        orjson.loads(cut)
    except orjson.JSONDecodeError:
        return cut
    return content + "}"  # a bare scalar's prefix may still parse (`42` -> `4`)


def _error(
    status: int,
    message: str,
    kind: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def _seconds(s: float) -> str:
    """OpenAI's duration style, to the millisecond: `1s`, `12.5s`."""
    return f"{max(0.0, s):.3f}".rstrip("0").rstrip(".") + "s"


_STATS = (
    "requests", "ok", "status_429", "status_500", "status_503", "dropped",
    "invalid_json", "fenced_json", "bad_request", "rate_limited", "status_401", "status_404",
)  # fmt: skip


class _Simulator:
    """The handlers and their state: the config, the fault RNG, the rpm window and the counters.

    Counters: `requests` = ok + status_429 + status_500 + status_503 + dropped + bad_request
    + rate_limited + status_401 + status_404; `invalid_json` and `fenced_json` count the ok answers
    whose content is broken. `status_429` counts injected 429s, `rate_limited` the rpm ones.
    """

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.stats: dict[str, int] = dict.fromkeys(_STATS, 0)
        self.created = int(time.time())
        self._faults = random.Random(config.seed)
        self._jitter = random.Random(f"{config.seed}/jitter")  # apart, so jitter never shifts the faults
        self._window: deque[float] | None = deque() if config.rpm is not None else None
        bands: list[tuple[float, str]] = []
        edge = 0.0
        for name in _FAULTS:
            rate = getattr(config, name)
            if rate > 0:
                edge += rate
                bands.append((edge, name))
        self._bands = bands
        self._authorization = f"Bearer {config.api_key}" if config.api_key is not None else None

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if self._authorization is None or request.headers.get("Authorization") == self._authorization:
            return None
        # Never echo the key: clients print this message, and logs must not carry secrets.
        return _error(401, "Incorrect API key provided.", "invalid_request_error", code="invalid_api_key")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/sim/stats", self.get_stats)
        app.router.add_post("/sim/reset", self.reset)
        return app

    def _admit(self) -> tuple[float | None, dict[str, str]]:
        """Sliding 60 s window: (seconds until a slot frees if refused else None, rate-limit headers)."""
        assert self._window is not None and self.config.rpm is not None
        window, rpm = self._window, self.config.rpm
        now = time.monotonic()
        while window and window[0] <= now - 60.0:
            window.popleft()
        wait = None
        if len(window) < rpm:
            window.append(now)
        else:
            wait = window[0] + 60.0 - now
        headers = {
            "x-ratelimit-limit-requests": str(rpm),
            "x-ratelimit-remaining-requests": str(rpm - len(window)),
            "x-ratelimit-reset-requests": _seconds(window[0] + 60.0 - now),
        }
        return wait, headers

    def _draw_fault(self) -> str | None:
        u = self._faults.random()
        for edge, name in self._bands:
            if u < edge:
                return name
        return None

    async def chat(self, request: web.Request) -> web.StreamResponse:
        stats, config = self.stats, self.config
        stats["requests"] += 1
        denied = self._unauthorized(request)
        if denied is not None:
            stats["status_401"] += 1
            return denied
        headers: dict[str, str] | None = None
        if self._window is not None:
            wait, headers = self._admit()
            if wait is not None:
                stats["rate_limited"] += 1
                headers["Retry-After"] = str(max(1, math.ceil(wait)))
                headers["retry-after-ms"] = str(math.ceil(wait * 1000))
                msg = (
                    f"Rate limit reached for {config.model} on requests per min (RPM): Limit {config.rpm}. "
                    f"Please try again in {_seconds(wait)}."
                )
                return _error(429, msg, "requests", code="rate_limit_exceeded", headers=headers)
        try:
            chat = _parse_chat(await request.read())
        except _BadRequest as exc:
            stats["bad_request"] += 1
            return _error(400, exc.message, "invalid_request_error", headers=headers)
        if chat.model is not None and chat.model != config.model:
            stats["status_404"] += 1
            msg = f"The model `{chat.model}` does not exist or you do not have access to it."
            return _error(404, msg, "invalid_request_error", code="model_not_found", headers=headers)
        fault = self._draw_fault() if self._bands else None
        delay = config.latency_ms
        if config.latency_jitter_ms:
            delay += self._jitter.uniform(-config.latency_jitter_ms, config.latency_jitter_ms)
        if delay > 0:
            await asyncio.sleep(delay / 1000)
        if fault == "rate_drop":
            stats["dropped"] += 1
            return _drop(request)
        if fault == "rate_429":
            stats["status_429"] += 1
            h = {
                **(headers or {}),
                "Retry-After": f"{config.retry_after_s:g}",
                "retry-after-ms": str(round(config.retry_after_s * 1000)),
            }
            return _error(
                429, "Rate limit reached (simulated).", "requests", code="rate_limit_exceeded", headers=h
            )
        if fault == "rate_500":
            stats["status_500"] += 1
            return _error(
                500,
                "The server had an error processing your request (simulated).",
                "server_error",
                headers=headers,
            )
        if fault == "rate_503":
            stats["status_503"] += 1
            return _error(
                503, "The engine is currently overloaded (simulated).", "overloaded", headers=headers
            )
        digest = hashlib.sha256(orjson.dumps(chat.messages) + b"\0" + str(chat.seed).encode()).digest()
        rng = random.Random(int.from_bytes(digest[:8], "big"))
        try:
            content = _content(chat, rng)
        except (ValueError, RecursionError) as exc:  # a schema that compiles but has no instance
            stats["bad_request"] += 1
            return _error(
                400,
                f"Invalid schema for response_format: {exc}",
                "invalid_request_error",
                param="response_format",
                headers=headers,
            )
        if fault == "rate_invalid_json":
            stats["invalid_json"] += 1
            content = _broken(content)
        elif fault == "rate_fenced_json":
            stats["fenced_json"] += 1
            content = f"{rng.choice(FENCE_INTROS)}\n\n```json\n{content}\n```"
        finish = "stop"
        completion_tokens = max(1, len(content) // 4)
        if chat.max_tokens is not None and completion_tokens > chat.max_tokens:
            content = content[: chat.max_tokens * 4]
            completion_tokens = chat.max_tokens
            finish = "length"
        stats["ok"] += 1
        body = {
            "id": f"chatcmpl-{secrets.token_hex(12)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": config.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": finish,
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": chat.prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": chat.prompt_tokens + completion_tokens,
            },
        }
        return web.Response(body=orjson.dumps(body), content_type="application/json", headers=headers)

    async def models(self, request: web.Request) -> web.Response:
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        model = {"id": self.config.model, "object": "model", "created": self.created, "owned_by": "gen-sim"}
        return web.Response(
            body=orjson.dumps({"object": "list", "data": [model]}), content_type="application/json"
        )

    async def health(self, request: web.Request) -> web.Response:
        return web.Response()

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.stats), content_type="application/json")

    async def reset(self, request: web.Request) -> web.Response:
        for k in self.stats:
            self.stats[k] = 0
        return web.Response(body=orjson.dumps(self.stats), content_type="application/json")


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

    async def start(self) -> None:
        """Listen on host:port. Raises OSError if the port is taken."""
        if self._runner is not None:
            raise RuntimeError("the simulator is already running")
        # No access log: formatting a line per request would cost more than answering it.
        runner = web.AppRunner(self._sim.app(), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self._requested_port)
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
            f"gen sim: serving the OpenAI protocol on {server.base_url} (model {config.model})",
            file=sys.stderr,
            flush=True,
        )
        await stop.wait()
