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

    async with SimServer(SimConfig(rate_429=0.1)) as server:   # on the current event loop
        ...  # point a client at server.base_url
    with SimThread(SimConfig()) as server:                     # in a thread with its own loop
        ...
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import hashlib
import math
import random
import secrets
import signal
import sys
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from gen.sim.instances import FENCE_INTROS, VOCAB, Gen, compiled_sampler, sample_from_schema, sentences

__all__ = ["MALFORMED", "SimConfig", "SimServer", "SimThread", "sample_from_schema", "serve"]


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
        if self.malformed != "any" and self.malformed not in MALFORMED:
            known = ", ".join(MALFORMED)
            raise ValueError(f"malformed must be 'any' or one of {known}, got {self.malformed!r}")


# Fault field names in the order their probability bands are laid out on [0, 1) (new ones go last, so a
# seed keeps drawing the same faults it always did).
_FAULTS = (
    "rate_429", "rate_500", "rate_503", "rate_drop", "rate_invalid_json", "rate_fenced_json",
    "rate_truncated", "rate_oversize", "rate_endless", "rate_gzip_bomb", "rate_malformed",
)  # fmt: skip

# The ways `rate_malformed` breaks a reply's wire format (the Anthropic path in brackets): `model` a
# number; `finish_reason` [`stop_reason`] an object; `usage` a string; the answer's `content` an object
# (message.content [the content list]); completion [output] tokens negative; or past any 64-bit integer;
# no `choices` [`content`]; the body a JSON array, not an object.
MALFORMED = (
    "model_int", "finish_reason_object", "usage_string", "content_object", "tokens_negative",
    "tokens_huge", "no_choices", "not_an_object", "deep_nesting",
)  # fmt: skip
_HUGE = b"1" + b"0" * 30  # past int64; written in place of _HUGE_MARK
_HUGE_MARK = "__gen_sim_huge__"
# Nested deeper than orjson (or a recursive serialiser) will write back, shallower than it will read.
_DEEP = b"[" * 300 + b"]" * 300  # written in place of _HUGE_MARK's sibling below
_DEEP_MARK = "__gen_sim_deep__"


# --------------------------------------------------------------------------- requests


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
    # With the messages, what picks the answer: the seed (OpenAI) or the system prompt (Anthropic).
    salt: bytes
    max_tokens: int | None
    mode: str  # "text", "json_object", "json_schema" or "tool" (Anthropic's forced tool_use)
    schema: Gen | None
    tool: str | None = None  # "tool" mode: the tool's name and its input_schema
    tool_schema: dict[str, Any] | None = None


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _BadRequest("We could not parse the JSON body of your request.") from None
    if not isinstance(body, dict):
        raise _BadRequest("The request body must be a JSON object.")
    return body


def _positive_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise _BadRequest(f"Invalid '{name}': expected a positive integer, got {value!r}.", name)
    return value


def _sampler(schema: Any) -> Gen:
    """The compiled sampler of a schema sent in a request; ValueError for one it cannot read."""
    try:
        return compiled_sampler(orjson.dumps(schema))
    except (TypeError, RecursionError) as exc:
        raise ValueError(str(exc)) from None


def _parse_chat(raw: bytes) -> _Chat:
    body = _json_object(raw)
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
                schema = _sampler(spec["schema"])
            except ValueError as exc:
                raise _BadRequest(f"Invalid schema for response_format: {exc}", "response_format") from None
            mode = "json_schema"
        elif kind in ("json_object", "text"):
            mode = kind
        else:
            raise _BadRequest(f"Invalid 'response_format.type': {kind!r}.", "response_format")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _BadRequest(f"Invalid 'model': expected a string, got {model!r}.", "model")
    prompt_tokens = chars // 4 + 4 * len(messages)
    return _Chat(messages, model, prompt_tokens, str(seed).encode(), max_tokens, mode, schema)


def _block_chars(content: Any, where: str) -> int:
    """Characters of text in an Anthropic `content` or `system`: a string or a list of blocks."""
    if isinstance(content, str):
        return len(content)
    if not isinstance(content, list):
        raise _BadRequest(f"{where}: Input should be a valid string or a list of content blocks.")
    chars = 0
    for j, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise _BadRequest(f"{where}.{j}: Input should be a content block with a 'type'.")
        text = block.get("text")
        if isinstance(text, str):
            chars += len(text)
    return chars


def _number(body: dict[str, Any], name: str, lo: float, hi: float) -> None:
    value = body.get(name)
    if value is None:
        return
    if not isinstance(value, int | float) or isinstance(value, bool) or not lo <= value <= hi:
        raise _BadRequest(f"{name}: Input should be a number between {lo:g} and {hi:g}.")


def _forced_tool(body: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The (name, input_schema) the request makes the model call, or None for a text answer."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if tools is None:
        if choice is not None:
            raise _BadRequest("tool_choice: may only be specified while providing tools.")
        return None
    if not isinstance(tools, list):
        raise _BadRequest("tools: Input should be a valid list.")
    custom: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(tools):
        name = tool.get("name") if isinstance(tool, dict) else None
        if not isinstance(name, str) or not name:
            raise _BadRequest(f"tools.{i}.name: Field required.")
        if tool.get("type") not in (None, "custom"):  # a server tool (web search, ...): never called here
            continue
        schema = tool.get("input_schema")
        if not isinstance(schema, dict) or schema.get("type") != "object":
            raise _BadRequest(
                f"tools.{i}.custom.input_schema: Input should be a JSON schema of type 'object'."
            )
        custom[name] = schema
    if choice is None:
        return None
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind in ("auto", "none"):
        return None  # the model may answer in text, and here it always does
    if kind == "any":
        if not custom:
            raise _BadRequest("tool_choice: 'any' needs at least one custom tool.")
        name = next(iter(custom))
        return name, custom[name]
    if kind == "tool":
        name = choice.get("name")
        if name not in custom:
            raise _BadRequest(f"tool_choice.name: Tool {name!r} not found in 'tools'.")
        return name, custom[name]
    raise _BadRequest(f"tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none', got {kind!r}.")


def _parse_messages(raw: bytes) -> _Chat:
    """An Anthropic Messages request; errors in the API's `field: problem` style."""
    body = _json_object(raw)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest("model: Field required." if model is None else "model: Input should be a string.")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise _BadRequest("max_tokens: Field required.")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise _BadRequest(f"max_tokens: Input should be a positive integer, got {max_tokens!r}.")
    if body.get("stream"):
        raise _BadRequest("stream: the simulator does not stream; send 'stream': false.")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("messages: Input should be a non-empty list.")
    chars = 0
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ("user", "assistant"):
            if role == "system":
                raise _BadRequest(
                    f'messages.{i}.role: Unexpected role "system". The Messages API accepts a top-level '
                    '`system` parameter, not "system" as an input message role.'
                )
            raise _BadRequest(f"messages.{i}.role: Input should be 'user' or 'assistant'.")
        chars += _block_chars(m.get("content"), f"messages.{i}.content")
    system = body.get("system")
    n_turns = len(messages)
    if system is not None:
        chars += _block_chars(system, "system")
        n_turns += 1  # counted as the OpenAI path counts a system message
    _number(body, "temperature", 0, 1)
    _number(body, "top_p", 0, 1)
    top_k = body.get("top_k")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0):
        raise _BadRequest("top_k: Input should be a non-negative integer.")
    stop = body.get("stop_sequences")
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise _BadRequest("stop_sequences: Input should be a list of strings.")
    forced = _forced_tool(body)
    salt = orjson.dumps(system)
    prompt_tokens = chars // 4 + 4 * n_turns
    if forced is None:
        return _Chat(messages, model, prompt_tokens, salt, max_tokens, "text", None)
    name, input_schema = forced
    try:
        sampler = _sampler(input_schema)
    except ValueError as exc:
        raise _BadRequest(f"tools: input_schema of {name!r} is not a valid JSON schema: {exc}") from None
    return _Chat(messages, model, prompt_tokens, salt, max_tokens, "tool", sampler, name, input_schema)


# --------------------------------------------------------------------------- answers


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


def _text_answer(
    chat: _Chat, rng: random.Random, fault: str | None, stats: dict[str, int]
) -> tuple[str, bool, int]:
    """(content with its fault applied, whether max_tokens cut it, completion tokens)."""
    content = _content(chat, rng)
    if fault == "rate_invalid_json":
        stats["invalid_json"] += 1
        content = _broken(content)
    elif fault == "rate_fenced_json":
        stats["fenced_json"] += 1
        content = f"{rng.choice(FENCE_INTROS)}\n\n```json\n{content}\n```"
    completion_tokens = max(1, len(content) // 4)
    if fault == "rate_truncated":
        stats["truncated"] += 1
        half = max(1, completion_tokens // 2)
        return content[: half * 4], True, half
    if chat.max_tokens is not None and completion_tokens > chat.max_tokens:
        return content[: chat.max_tokens * 4], True, chat.max_tokens
    return content, False, completion_tokens


# One value of each JSON type, with the schema types that admit it.
_WRONG_VALUES: tuple[tuple[Any, frozenset[str]], ...] = (
    (None, frozenset({"null"})),
    ("not-a-valid-value", frozenset({"string"})),
    (0.5, frozenset({"number"})),
    ([], frozenset({"array"})),
    ({}, frozenset({"object"})),
    (True, frozenset({"boolean"})),
)


def _violate(value: Any, schema: dict[str, Any], rng: random.Random) -> Any:
    """A tool input that breaks `schema`: a required key dropped, else a property of a wrong type.

    Only the top level is looked at; where that admits any object the input is returned as it is.
    """
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):  # a root that points into its own $defs
        node: Any = schema
        for part in ref[2:].split("/"):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            schema = node
    if not isinstance(value, dict):
        return value
    required = [k for k in schema.get("required") or () if k in value]
    if required:
        broken = dict(value)
        del broken[rng.choice(required)]
        return broken
    for key, prop in (schema.get("properties") or {}).items():
        types = prop.get("type") if isinstance(prop, dict) else None
        if not types:
            continue
        allowed = frozenset([types] if isinstance(types, str) else types)
        for wrong, admitted_by in _WRONG_VALUES:
            if not admitted_by & allowed:
                return {**value, key: wrong}
    if schema.get("additionalProperties") is False:
        return {**value, "unexpected_field": True}
    return value


# --------------------------------------------------------------------------- the two dialects


def _openai_error(
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


def _anthropic_error(
    status: int, message: str, kind: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def _seconds(s: float) -> str:
    """OpenAI's duration style, to the millisecond: `1s`, `12.5s`."""
    return f"{max(0.0, s):.3f}".rstrip("0").rstrip(".") + "s"


def _rfc3339(seconds_from_now: float) -> str:
    """Anthropic's reset-time style: an RFC 3339 UTC timestamp, `2025-05-20T17:42:01Z`."""
    when = datetime.datetime.fromtimestamp(time.time() + max(0.0, seconds_from_now), datetime.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


class _OpenAIDialect:
    """OpenAI chat completions: Bearer auth, `{"error": {...}}` bodies, `x-ratelimit-*` headers."""

    # Fault -> (stats counter) for the faults that answer with an error status.
    error_faults = {"rate_429": "status_429", "rate_500": "status_500", "rate_503": "status_503"}

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self._authorization = f"Bearer {config.api_key}" if config.api_key is not None else None

    def refuse(self, request: web.Request) -> tuple[str, web.Response] | None:
        """(stats counter, answer) when the request is turned away before it is read."""
        if self._authorization is None or request.headers.get("Authorization") == self._authorization:
            return None
        # Never echo the key: clients print this message, and logs must not carry secrets.
        msg = "Incorrect API key provided."
        return "status_401", _openai_error(401, msg, "invalid_request_error", code="invalid_api_key")

    def rate_headers(self, rpm: int, remaining: int, next_s: float, full_s: float) -> dict[str, str]:
        return {
            "x-ratelimit-limit-requests": str(rpm),
            "x-ratelimit-remaining-requests": str(remaining),
            "x-ratelimit-reset-requests": _seconds(next_s),
        }

    def rate_limited(self, wait: float, headers: dict[str, str]) -> web.Response:
        config = self.config
        headers["Retry-After"] = str(max(1, math.ceil(wait)))
        headers["retry-after-ms"] = str(math.ceil(wait * 1000))
        msg = (
            f"Rate limit reached for {config.model} on requests per min (RPM): Limit {config.rpm}. "
            f"Please try again in {_seconds(wait)}."
        )
        return _openai_error(429, msg, "requests", code="rate_limit_exceeded", headers=headers)

    parse = staticmethod(_parse_chat)

    def bad_request(self, message: str, param: str | None, headers: dict[str, str] | None) -> web.Response:
        return _openai_error(400, message, "invalid_request_error", param=param, headers=headers)

    def unknown_model(self, model: str, headers: dict[str, str] | None) -> web.Response:
        msg = f"The model `{model}` does not exist or you do not have access to it."
        return _openai_error(404, msg, "invalid_request_error", code="model_not_found", headers=headers)

    def fault(self, fault: str, headers: dict[str, str] | None) -> web.Response:
        if fault == "rate_429":
            retry_after = self.config.retry_after_s
            if self.config.retry_after_header is not None:
                h = {**(headers or {}), "Retry-After": self.config.retry_after_header}
            else:
                h = {
                    **(headers or {}),
                    "Retry-After": f"{retry_after:g}",
                    "retry-after-ms": str(round(retry_after * 1000)),
                }
            msg = "Rate limit reached (simulated)."
            return _openai_error(429, msg, "requests", code="rate_limit_exceeded", headers=h)
        if fault == "rate_500":
            msg = "The server had an error processing your request (simulated)."
            return _openai_error(500, msg, "server_error", headers=headers)
        msg = "The engine is currently overloaded (simulated)."
        return _openai_error(503, msg, "overloaded", headers=headers)

    def answer(self, chat: _Chat, rng: random.Random, fault: str | None, stats: dict[str, int]) -> bytes:
        try:
            content, cut, completion_tokens = _text_answer(chat, rng, fault, stats)
        except (ValueError, RecursionError) as exc:  # a schema that compiles but has no instance
            raise _BadRequest(f"Invalid schema for response_format: {exc}", "response_format") from None
        stats["prompt_tokens"] += chat.prompt_tokens
        stats["completion_tokens"] += completion_tokens
        body = {
            "id": f"chatcmpl-{secrets.token_hex(12)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.config.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "length" if cut else "stop",
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": chat.prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": chat.prompt_tokens + completion_tokens,
            },
        }
        return orjson.dumps(body)

    @staticmethod
    def malform(doc: dict[str, Any], shape: str) -> Any:
        """The reply `doc` with its wire format broken as `shape` says (one of MALFORMED)."""
        choice, usage = doc["choices"][0], doc["usage"]
        if shape == "model_int":
            doc["model"] = 123
        elif shape == "finish_reason_object":
            choice["finish_reason"] = {}
        elif shape == "usage_string":
            doc["usage"] = "many"
        elif shape == "content_object":
            choice["message"]["content"] = {"text": choice["message"]["content"]}
        elif shape == "tokens_negative":
            usage["completion_tokens"] = -1 - usage["completion_tokens"]
        elif shape == "tokens_huge":
            usage["completion_tokens"] = _HUGE_MARK
        elif shape == "no_choices":
            del doc["choices"]
        elif shape == "deep_nesting":
            choice["message"]["content"] = _DEEP_MARK
        elif shape == "not_an_object":
            return [doc]
        return doc

    def models(self, request: web.Request, created: int) -> bytes:
        model = {"id": self.config.model, "object": "model", "created": created, "owned_by": "gen-sim"}
        return orjson.dumps({"object": "list", "data": [model]})


class _AnthropicDialect:
    """Anthropic Messages: `x-api-key` auth, `{"type": "error", ...}` bodies, 529 for overloaded."""

    error_faults = {"rate_429": "status_429", "rate_500": "status_500", "rate_503": "status_529"}

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self._bearer = f"Bearer {config.api_key}" if config.api_key is not None else None

    def refuse(self, request: web.Request) -> tuple[str, web.Response] | None:
        headers = request.headers
        # The API takes the key as `x-api-key`; SDKs may send it as a Bearer token instead.
        if self._bearer is not None and headers.get("x-api-key") != self.config.api_key:
            if headers.get("Authorization") != self._bearer:
                return "status_401", _anthropic_error(401, "invalid x-api-key", "authentication_error")
        if "anthropic-version" not in headers:
            msg = "anthropic-version: header is required"
            return "bad_request", _anthropic_error(400, msg, "invalid_request_error")
        return None

    def rate_headers(self, rpm: int, remaining: int, next_s: float, full_s: float) -> dict[str, str]:
        return {
            "anthropic-ratelimit-requests-limit": str(rpm),
            "anthropic-ratelimit-requests-remaining": str(remaining),
            "anthropic-ratelimit-requests-reset": _rfc3339(full_s),
        }

    def rate_limited(self, wait: float, headers: dict[str, str]) -> web.Response:
        headers["retry-after"] = str(max(1, math.ceil(wait)))
        msg = (
            f"This request would exceed your organization's rate limit of {self.config.rpm} requests "
            "per minute (simulated). Please try again later."
        )
        return _anthropic_error(429, msg, "rate_limit_error", headers)

    parse = staticmethod(_parse_messages)

    def bad_request(self, message: str, param: str | None, headers: dict[str, str] | None) -> web.Response:
        return _anthropic_error(400, message, "invalid_request_error", headers)

    def unknown_model(self, model: str, headers: dict[str, str] | None) -> web.Response:
        return _anthropic_error(404, f"model: {model}", "not_found_error", headers)

    def fault(self, fault: str, headers: dict[str, str] | None) -> web.Response:
        if fault == "rate_429":
            value = self.config.retry_after_header
            if value is None:
                value = f"{self.config.retry_after_s:g}"
            h = {**(headers or {}), "retry-after": value}
            return _anthropic_error(429, "Rate limit reached (simulated).", "rate_limit_error", h)
        if fault == "rate_500":
            return _anthropic_error(500, "Internal server error (simulated).", "api_error", headers)
        return _anthropic_error(529, "Overloaded (simulated).", "overloaded_error", headers)

    def answer(self, chat: _Chat, rng: random.Random, fault: str | None, stats: dict[str, int]) -> bytes:
        if chat.mode == "tool":
            content, stop_reason, output_tokens = self._tool_use(chat, rng, fault, stats)
        else:
            text, cut, output_tokens = _text_answer(chat, rng, fault, stats)
            content = [{"type": "text", "text": text}]
            stop_reason = "max_tokens" if cut else "end_turn"
        stats["prompt_tokens"] += chat.prompt_tokens
        stats["completion_tokens"] += output_tokens
        body = {
            "id": f"msg_{secrets.token_hex(12)}",
            "type": "message",
            "role": "assistant",
            "model": self.config.model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {"input_tokens": chat.prompt_tokens, "output_tokens": output_tokens},
        }
        return orjson.dumps(body)

    @staticmethod
    def malform(doc: dict[str, Any], shape: str) -> Any:
        """The reply `doc` with its wire format broken as `shape` says (one of MALFORMED)."""
        usage = doc["usage"]
        if shape == "model_int":
            doc["model"] = 123
        elif shape == "finish_reason_object":
            doc["stop_reason"] = {}
        elif shape == "usage_string":
            doc["usage"] = "many"
        elif shape == "content_object":
            doc["content"] = doc["content"][-1]
        elif shape == "tokens_negative":
            usage["output_tokens"] = -1 - usage["output_tokens"]
        elif shape == "tokens_huge":
            usage["output_tokens"] = _HUGE_MARK
        elif shape == "no_choices":
            del doc["content"]
        elif shape == "deep_nesting":  # the tool's input (or the text) nested 300 deep
            block = doc["content"][-1]
            if block.get("type") == "tool_use":
                block["input"] = {"deep": _DEEP_MARK}
            else:
                block["text"] = _DEEP_MARK
        elif shape == "not_an_object":
            return [doc]
        return doc

    @staticmethod
    def _tool_use(
        chat: _Chat, rng: random.Random, fault: str | None, stats: dict[str, int]
    ) -> tuple[list[dict[str, Any]], str, int]:
        assert chat.schema is not None and chat.tool_schema is not None
        try:
            value = chat.schema(rng, 0)
        except (ValueError, RecursionError) as exc:  # a schema that compiles but has no instance
            raise _BadRequest(f"tools: input_schema of {chat.tool!r} has no instance: {exc}") from None
        content: list[dict[str, Any]] = []
        if fault == "rate_invalid_json":  # the input is an object, so it breaks the schema instead
            stats["invalid_json"] += 1
            value = _violate(value, chat.tool_schema, rng)
        elif fault == "rate_fenced_json":  # the chatty model: some words before the tool call
            stats["fenced_json"] += 1
            content.append({"type": "text", "text": rng.choice(FENCE_INTROS)})
        output_tokens = max(1, len(orjson.dumps(value)) // 4)
        stop_reason = "tool_use"
        if fault == "rate_truncated":
            stats["truncated"] += 1
            value, output_tokens, stop_reason = {}, max(1, output_tokens // 2), "max_tokens"
        elif chat.max_tokens is not None and output_tokens > chat.max_tokens:
            value, output_tokens, stop_reason = {}, chat.max_tokens, "max_tokens"
        block = {
            "type": "tool_use",
            "id": f"toolu_{secrets.token_hex(12)}",
            "name": chat.tool,
            "input": value,
        }
        content.append(block)
        return content, stop_reason, output_tokens

    def models(self, request: web.Request, created: int) -> bytes:
        name = self.config.model
        if request.query.get("after_id") or request.query.get("before_id"):  # one model: one page
            return orjson.dumps({"data": [], "has_more": False, "first_id": None, "last_id": None})
        when = datetime.datetime.fromtimestamp(created, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        model = {"type": "model", "id": name, "display_name": name, "created_at": when}
        return orjson.dumps({"data": [model], "has_more": False, "first_id": name, "last_id": name})


_Dialect = _OpenAIDialect | _AnthropicDialect


# --------------------------------------------------------------------------- the server


_STATS = (
    "requests", "ok", "status_429", "status_500", "status_503", "status_529", "dropped",
    "invalid_json", "fenced_json", "truncated", "bad_request", "rate_limited", "status_401", "status_404",
    "oversize", "endless", "gzip_bomb", "malformed",
    "prompt_tokens", "completion_tokens",
)  # fmt: skip


class _Simulator:
    """The handlers and their state: the config, the fault RNG, the rpm window and the counters.

    Both protocols share all of it. Counters: `requests` = ok + status_429 + status_500 + status_503
    + status_529 + dropped + bad_request + rate_limited + status_401 + status_404 + oversize + endless
    + gzip_bomb + malformed; `invalid_json`, `fenced_json` and `truncated` count the ok answers whose
    content is broken or cut short. `status_429` counts injected 429s,
    `rate_limited` the rpm ones; the `rate_503` fault is a 503 on the OpenAI path and a 529 on the
    Anthropic one. `prompt_tokens` and `completion_tokens` sum the usage of every ok answer sent: what
    a paid teacher would bill, whether or not the client lived to read it.
    """

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.stats: dict[str, int] = dict.fromkeys(_STATS, 0)
        self.created = int(time.time())
        self._faults = random.Random(config.seed)
        self._jitter = random.Random(f"{config.seed}/jitter")  # apart, so jitter never shifts the faults
        self._shapes = random.Random(f"{config.seed}/malformed")
        self._window: deque[float] | None = deque() if config.rpm is not None else None
        bands: list[tuple[float, str]] = []
        edge = 0.0
        for name in _FAULTS:
            rate = getattr(config, name)
            if rate > 0:
                edge += rate
                bands.append((edge, name))
        self._bands = bands
        self._openai = _OpenAIDialect(config)
        self._anthropic = _AnthropicDialect(config)

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
        return app

    def _admit(self, dialect: _Dialect) -> tuple[float | None, dict[str, str]]:
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

    async def _answer(self, request: web.Request, dialect: _Dialect) -> web.StreamResponse:
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
        except _BadRequest as exc:
            stats["bad_request"] += 1
            # `param` stays null for a malformed body, as it always has on the OpenAI path.
            return dialect.bad_request(exc.message, None, headers)
        if chat.model is not None and chat.model != config.model:
            stats["status_404"] += 1
            return dialect.unknown_model(chat.model, headers)
        fault = self._draw_fault() if self._bands else None
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
        digest = hashlib.sha256(orjson.dumps(chat.messages) + b"\0" + chat.salt).digest()
        rng = random.Random(int.from_bytes(digest[:8], "big"))
        if fault == "rate_oversize":
            chat.max_tokens = None  # the server that ignores it
            chat.mode = "text"
        try:
            body = dialect.answer(chat, rng, fault, stats)
        except _BadRequest as exc:
            stats["bad_request"] += 1
            return dialect.bad_request(exc.message, exc.param, headers)
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
            body = orjson.dumps(doc).replace(b'"%s"' % _HUGE_MARK.encode(), _HUGE)
            body = body.replace(b'"%s"' % _DEEP_MARK.encode(), _DEEP)
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
            f"gen sim: and Anthropic Messages at {server.base_url}/messages",
            file=sys.stderr,
            flush=True,
        )
        await stop.wait()
