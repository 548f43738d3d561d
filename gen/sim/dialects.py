"""The simulator's two protocol dialects: request parsing, answers, errors and faults in each wire format.

`OpenAIDialect` speaks chat completions, `AnthropicDialect` Messages; the server (gen.sim.server) owns
the state (config, fault draws, rpm window, counters) and asks the dialect of the path hit to parse,
answer, refuse or break a reply.
"""

from __future__ import annotations

import datetime
import hashlib
import math
import random
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from gen.sim import reasoning
from gen.sim.answers import reasoned_text, with_answer
from gen.sim.instances import FENCE_INTROS, VOCAB, Gen, compiled_sampler, sentences

if TYPE_CHECKING:
    from gen.sim.server import SimConfig

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


def malformed_bytes(doc: Any) -> bytes:
    """A malformed reply's body: `doc` as JSON, with the marks swapped for what orjson will not write."""
    body = orjson.dumps(doc).replace(b'"%s"' % _HUGE_MARK.encode(), _HUGE)
    return body.replace(b'"%s"' % _DEEP_MARK.encode(), _DEEP)


# --------------------------------------------------------------------------- requests


class BadRequest(Exception):
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
    # Prompt caching (gen.sim.cache): OpenAI's leading-message prefixes, (digest, tokens) shortest
    # first; or Anthropic's one prefix a cache_control breakpoint marks. What the cache then found:
    prefixes: list[tuple[bytes, int]] = field(default_factory=list)
    marked: tuple[bytes, int] | None = None
    cached: int = 0
    written: int = 0
    fixed: str | None = None  # the text to answer instead of a drawn one (the judge mode)
    long: bool = False  # a free-text answer ten times as long (SimConfig.long_after)
    answer: str | None = None  # the final answer to give (gen.sim.answers), when the input has a reference
    answer_field: str | None = None
    json_schema: Any = None  # "json_schema" mode: the schema as sent
    # The simulated student's disagreement (SimConfig.perturb_*): the field it changes ("*": every
    # top-level field), or None to answer as the teacher would.
    perturb: str | None = None
    top_logprobs: int | None = None  # OpenAI: logprobs asked for, with K alternatives (gen.sim.reasoning)
    thinking: int | None = None  # Anthropic: the extended-thinking budget enabled


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("We could not parse the JSON body of your request.") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    return body


def _positive_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise BadRequest(f"Invalid '{name}': expected a positive integer, got {value!r}.", name)
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
        raise BadRequest("'messages' must be a non-empty array.", "messages")
    chars = 0
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest(f"Invalid 'messages[{i}]': expected an object with a 'role'.", f"messages[{i}]")
        content = m.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):  # content parts: count the text ones
            chars += sum(
                len(p["text"]) for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
            )
        elif content is not None:
            raise BadRequest(f"Invalid 'messages[{i}].content'.", f"messages[{i}].content")
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise BadRequest(f"Invalid 'seed': expected an integer, got {seed!r}.", "seed")
    max_tokens = _positive_int(body, "max_completion_tokens") or _positive_int(body, "max_tokens")
    mode, schema = "text", None
    fmt = body.get("response_format")
    if fmt is not None:
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind == "json_schema":
            spec = fmt.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict | bool):
                raise BadRequest("Missing 'response_format.json_schema.schema'.", "response_format")
            try:
                schema = _sampler(spec["schema"])
            except ValueError as exc:
                raise BadRequest(f"Invalid schema for response_format: {exc}", "response_format") from None
            mode = "json_schema"
        elif kind in ("json_object", "text"):
            mode = kind
        else:
            raise BadRequest(f"Invalid 'response_format.type': {kind!r}.", "response_format")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest(f"Invalid 'model': expected a string, got {model!r}.", "model")
    prompt_tokens = chars // 4 + 4 * len(messages)
    try:
        top_logprobs = reasoning.parse_openai(body)
    except ValueError as exc:
        raise BadRequest(str(exc), "top_logprobs") from None
    raw = fmt["json_schema"]["schema"] if mode == "json_schema" else None
    chat = _Chat(messages, model, prompt_tokens, str(seed).encode(), max_tokens, mode, schema)
    chat.prefixes = _leading_prefixes(model, messages)
    chat.json_schema = raw
    chat.top_logprobs = top_logprobs
    return chat


def _leading_prefixes(model: Any, messages: list[Any]) -> list[tuple[bytes, int]]:
    """(digest, tokens) of each run of leading messages but the whole, counted as prompt_tokens counts."""
    h = hashlib.sha256(orjson.dumps(model))
    chars, out = 0, []
    for n, m in enumerate(messages[:-1], 1):
        h.update(orjson.dumps(m))
        content = m.get("content")
        chars += len(content) if isinstance(content, str) else 0
        out.append((h.copy().digest(), chars // 4 + 4 * n))
    return out


def _breakpoint(model: str, tools: Any, system: Any) -> tuple[bytes, int] | None:
    """The prefix the last cache_control breakpoint in `tools` or `system` closes: (digest, tokens, as
    the system text counts in prompt_tokens). Breakpoints inside messages are not simulated."""
    tools = tools if isinstance(tools, list) else []
    blocks = system if isinstance(system, list) else []
    in_system = [i for i, b in enumerate(blocks) if isinstance(b, dict) and b.get("cache_control")]
    if in_system:
        kept = blocks[: in_system[-1] + 1]
        chars = sum(len(b["text"]) for b in kept if isinstance(b.get("text"), str))
        return hashlib.sha256(orjson.dumps([model, tools, kept])).digest(), chars // 4 + 4
    in_tools = [i for i, t in enumerate(tools) if isinstance(t, dict) and t.get("cache_control")]
    if in_tools:
        return hashlib.sha256(orjson.dumps([model, tools[: in_tools[-1] + 1]])).digest(), 0
    return None


def _block_chars(content: Any, where: str) -> int:
    """Characters of text in an Anthropic `content` or `system`: a string or a list of blocks."""
    if isinstance(content, str):
        return len(content)
    if not isinstance(content, list):
        raise BadRequest(f"{where}: Input should be a valid string or a list of content blocks.")
    chars = 0
    for j, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise BadRequest(f"{where}.{j}: Input should be a content block with a 'type'.")
        text = block.get("text")
        if isinstance(text, str):
            chars += len(text)
    return chars


def _number(body: dict[str, Any], name: str, lo: float, hi: float) -> None:
    value = body.get(name)
    if value is None:
        return
    if not isinstance(value, int | float) or isinstance(value, bool) or not lo <= value <= hi:
        raise BadRequest(f"{name}: Input should be a number between {lo:g} and {hi:g}.")


def _forced_tool(body: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The (name, input_schema) the request makes the model call, or None for a text answer."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if tools is None:
        if choice is not None:
            raise BadRequest("tool_choice: may only be specified while providing tools.")
        return None
    if not isinstance(tools, list):
        raise BadRequest("tools: Input should be a valid list.")
    custom: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(tools):
        name = tool.get("name") if isinstance(tool, dict) else None
        if not isinstance(name, str) or not name:
            raise BadRequest(f"tools.{i}.name: Field required.")
        if tool.get("type") not in (None, "custom"):  # a server tool (web search, ...): never called here
            continue
        schema = tool.get("input_schema")
        if not isinstance(schema, dict) or schema.get("type") != "object":
            raise BadRequest(
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
            raise BadRequest("tool_choice: 'any' needs at least one custom tool.")
        name = next(iter(custom))
        return name, custom[name]
    if kind == "tool":
        name = choice.get("name")
        if name not in custom:
            raise BadRequest(f"tool_choice.name: Tool {name!r} not found in 'tools'.")
        return name, custom[name]
    raise BadRequest(f"tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none', got {kind!r}.")


def _parse_messages(raw: bytes) -> _Chat:
    """An Anthropic Messages request; errors in the API's `field: problem` style."""
    body = _json_object(raw)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model: Field required." if model is None else "model: Input should be a string.")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise BadRequest("max_tokens: Field required.")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise BadRequest(f"max_tokens: Input should be a positive integer, got {max_tokens!r}.")
    if body.get("stream"):
        raise BadRequest("stream: the simulator does not stream; send 'stream': false.")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages: Input should be a non-empty list.")
    chars = 0
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ("user", "assistant"):
            if role == "system":
                raise BadRequest(
                    f'messages.{i}.role: Unexpected role "system". The Messages API accepts a top-level '
                    '`system` parameter, not "system" as an input message role.'
                )
            raise BadRequest(f"messages.{i}.role: Input should be 'user' or 'assistant'.")
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
        raise BadRequest("top_k: Input should be a non-negative integer.")
    stop = body.get("stop_sequences")
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise BadRequest("stop_sequences: Input should be a list of strings.")
    forced = _forced_tool(body)
    try:
        thinking = reasoning.parse_anthropic(body, max_tokens, forced is not None)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    salt = orjson.dumps(system)
    prompt_tokens = chars // 4 + 4 * n_turns
    marked = _breakpoint(model, body.get("tools"), system)
    if forced is None:
        chat = _Chat(messages, model, prompt_tokens, salt, max_tokens, "text", None)
        chat.thinking = thinking
        asked = reasoning.schema_in_text(system)
        if asked is not None:  # JSON asked for in the text (thinking rules out a forced tool)
            try:
                chat.mode, chat.schema = "json_schema", _sampler(asked)
            except ValueError as exc:
                raise BadRequest(f"system: the JSON schema asked for is not valid: {exc}") from None
    else:
        name, input_schema = forced
        try:
            sampler = _sampler(input_schema)
        except ValueError as exc:
            raise BadRequest(f"tools: input_schema of {name!r} is not a valid JSON schema: {exc}") from None
        chat = _Chat(messages, model, prompt_tokens, salt, max_tokens, "tool", sampler, name, input_schema)
    chat.marked = marked
    return chat


# --------------------------------------------------------------------------- answers


def perturb_value(value: Any, schema: Any, field: str) -> Any:
    """`value` (an instance of `schema`) with top-level `field` ("*": every one) changed to another valid
    value: the next enum member, the other boolean, the integer beside it, a longer string."""
    if not isinstance(value, dict) or not isinstance(schema, dict):
        return value
    props = schema.get("properties") or {}
    out = dict(value)
    for name in list(out) if field == "*" else [field]:
        if name in out:
            out[name] = _other(out[name], _resolve(schema, props.get(name) or {}))
    return out


def _resolve(root: dict[str, Any], node: Any) -> dict[str, Any]:
    ref = node.get("$ref") if isinstance(node, dict) else None
    if isinstance(ref, str) and ref.startswith("#/"):
        for part in ref[2:].split("/"):
            root = root.get(part, {})
        return root
    return node if isinstance(node, dict) else {}


def _other(v: Any, node: dict[str, Any]) -> Any:
    enum = node.get("enum")
    if isinstance(enum, list) and v in enum and len(enum) > 1:
        return enum[(enum.index(v) + 1) % len(enum)]
    if isinstance(v, bool):
        return not v
    if isinstance(v, int):
        hi = node.get("maximum")
        return v - 1 if hi is not None and v + 1 > hi else v + 1
    if isinstance(v, float):
        hi, lo = node.get("maximum"), node.get("minimum")
        if hi is None or v + 1.0 <= hi:
            return v + 1.0
        return (v + lo) / 2 if lo is not None else v - 1.0
    if isinstance(v, str):
        most = node.get("maxLength")
        return ("x" + v)[: most or None] if v[:1] != "x" else ("y" + v[1:])
    return v


def _content(chat: _Chat, rng: random.Random) -> str:
    if chat.fixed is not None and chat.mode == "text":
        return chat.fixed
    if chat.mode == "json_schema":
        assert chat.schema is not None
        value = chat.schema(rng, 0)
        if chat.answer is not None:
            value = with_answer(value, chat.answer_field, chat.answer)
        if chat.perturb is not None:
            value = perturb_value(value, chat.json_schema, chat.perturb)
        return orjson.dumps(value).decode()
    if chat.answer is not None and chat.mode == "text":
        return reasoned_text(chat.answer, rng)
    if chat.mode == "json_object":
        obj = {
            "answer": sentences(rng, rng.randint(10, 30)),
            "confidence": round(rng.random(), 2),
            "keywords": list(rng.choices(VOCAB, k=rng.randint(1, 4))),
        }
        return orjson.dumps(obj).decode()
    text = sentences(rng, rng.randint(30, 80) * (10 if chat.long else 1))
    return f"Otherwise: {text}" if chat.perturb is not None else text


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


class OpenAIDialect:
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
        if chat.fixed is None:  # the judge mode's verdict (gen.sim.judge) comes first
            chat.fixed = self.config.answer_text
        chat.long = self.config.long_after is not None and stats["ok"] >= self.config.long_after
        try:
            content, cut, completion_tokens = _text_answer(chat, rng, fault, stats)
        except (ValueError, RecursionError) as exc:  # a schema that compiles but has no instance
            raise BadRequest(f"Invalid schema for response_format: {exc}", "response_format") from None
        stats["cached_tokens"] += chat.cached
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
                "prompt_tokens_details": {"cached_tokens": chat.cached},
            },
        }
        reasoning.openai_logprobs(body, chat.top_logprobs, rng)  # of the answer, before a trace joins it
        reasoning.openai_reasoning(body, self.config, chat.messages, chat.max_tokens, rng, chat.top_logprobs)
        stats["prompt_tokens"] += chat.prompt_tokens
        stats["completion_tokens"] += body["usage"]["completion_tokens"]
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


class AnthropicDialect:
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
        if chat.fixed is None:  # the judge mode's verdict (gen.sim.judge) comes first
            chat.fixed = self.config.answer_text
        chat.long = self.config.long_after is not None and stats["ok"] >= self.config.long_after
        if chat.mode == "tool":
            content, stop_reason, output_tokens = self._tool_use(chat, rng, fault, stats)
        else:
            text, cut, output_tokens = _text_answer(chat, rng, fault, stats)
            content = [{"type": "text", "text": text}]
            stop_reason = "max_tokens" if cut else "end_turn"
        stats["cached_tokens"] += chat.cached
        stats["cache_write_tokens"] += chat.written
        usage = {
            # As Anthropic reports it: input_tokens is what follows the last cache breakpoint.
            "input_tokens": chat.prompt_tokens - chat.cached - chat.written,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": chat.written,
            "cache_read_input_tokens": chat.cached,
        }
        body = {
            "id": f"msg_{secrets.token_hex(12)}",
            "type": "message",
            "role": "assistant",
            "model": self.config.model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": usage,
        }
        reasoning.anthropic_thinking(body, self.config, chat.messages, chat.thinking, rng)
        stats["prompt_tokens"] += chat.prompt_tokens
        stats["completion_tokens"] += body["usage"]["output_tokens"]
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
            raise BadRequest(f"tools: input_schema of {chat.tool!r} has no instance: {exc}") from None
        if chat.answer is not None:
            value = with_answer(value, chat.answer_field, chat.answer)
        if chat.perturb is not None:
            value = perturb_value(value, chat.tool_schema, chat.perturb)
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


Dialect = OpenAIDialect | AnthropicDialect
