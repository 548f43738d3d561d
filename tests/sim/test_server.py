"""The simulator over real HTTP: the aiohttp client against a server on a free loopback port."""

from __future__ import annotations

import asyncio
import datetime
import enum
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal

import aiohttp
import jsonschema
import orjson
import pytest
from pydantic import BaseModel, Field, HttpUrl, conint, constr

from gen.sim import SimConfig, SimServer, SimThread, sample_from_schema

pytestmark = pytest.mark.timeout(10)

ROOT = Path(__file__).resolve().parents[2]
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a river."}]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def chat(
    session: aiohttp.ClientSession, base_url: str, **body: Any
) -> tuple[int, dict[str, str], dict[str, Any]]:
    body.setdefault("model", "gen-sim-1")
    body.setdefault("messages", MESSAGES)
    async with session.post(f"{base_url}/chat/completions", json=body) as r:
        return r.status, dict(r.headers), await r.json()


def content_of(reply: dict[str, Any]) -> str:
    return reply["choices"][0]["message"]["content"]


def check(instance: Any, schema: dict[str, Any]) -> None:
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    validator.validate(instance)


# --------------------------------------------------------------------------- schemas under test


class Color(enum.Enum):
    red = "red"
    green = "green"
    blue = "blue"


class Person(BaseModel):
    name: str
    email: str = Field(json_schema_extra={"format": "email"})
    age: conint(ge=18, le=99)


class Review(BaseModel):
    summary: str
    verdict: Literal["accept", "reject", "revise"]
    score: float = Field(gt=0, le=10)
    color: Color
    reviewer: Person
    co_author: Person | None = None
    tags: list[str] = Field(min_length=2, max_length=3)
    code: constr(min_length=4, max_length=6)
    count: conint(gt=0, lt=5)
    published: datetime.date
    updated: datetime.datetime
    ref: uuid.UUID
    link: HttpUrl
    weights: dict[str, int]
    pair: tuple[int, str]
    labels: set[Literal["x", "y", "z"]]
    short_reason: Annotated[str, Field(max_length=15)]


class Node(BaseModel):
    label: str
    children: list[Node] = []


class Answer(BaseModel):
    answer: str
    confidence: float = Field(ge=0, le=1)
    sources: list[str] = Field(default_factory=list, max_length=2)


HAND_WRITTEN = {
    "type": "object",
    "properties": {
        "kind": {"$ref": "#/$defs/Kind"},
        "item": {"$ref": "#/definitions/Item"},
        "value": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 3}, {"type": "null"}]},
        "either": {"oneOf": [{"type": "string", "minLength": 3}, {"type": "boolean"}]},
        "merged": {"allOf": [{"$ref": "#/$defs/Base"}, {"properties": {"extra": {"const": 7}}}]},
        "multi": {"type": ["string", "integer"]},
        "ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "old_style": {"type": "integer", "minimum": 5, "exclusiveMinimum": True, "maximum": 7},
        "fixed": {"const": "v1"},
        "free": {"type": "object", "additionalProperties": {"type": "boolean"}},
        "empty_ok": {"type": "array", "items": {"type": "string"}, "maxItems": 0},
        "when": {"type": "string", "format": "date-time"},
        "site": {"type": "string", "format": "uri"},
        "even": {"type": "integer", "multipleOf": 2, "minimum": 1, "maximum": 9},
        "description": {"type": "string", "maxLength": 200},
    },
    "required": ["kind", "item", "value"],
    "additionalProperties": False,
    "$defs": {
        "Kind": {"type": "string", "enum": ["alpha", "beta", "gamma"]},
        "Base": {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]},
    },
    "definitions": {
        "Item": {
            "type": "object",
            "properties": {
                "title": {"type": "string", "maxLength": 8},
                "n": {"type": "integer", "default": 3},
            },
            "required": ["title"],
        }
    },
}

SCHEMAS = {
    "review": Review.model_json_schema(),
    "recursive": Node.model_json_schema(),
    "answer": Answer.model_json_schema(),
    "hand_written": HAND_WRITTEN,
}
MODELS: dict[str, type[BaseModel]] = {"review": Review, "recursive": Node, "answer": Answer}


# --------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("name", SCHEMAS)
def test_samples_validate_against_schema_and_model(name: str) -> None:
    schema = SCHEMAS[name]
    for seed in range(100):
        value = sample_from_schema(schema, random.Random(seed))
        check(value, schema)
        if name in MODELS:
            MODELS[name].model_validate_json(orjson.dumps(value))


def test_samples_vary_and_repeat_with_the_rng() -> None:
    schema = Review.model_json_schema()
    a = sample_from_schema(schema, random.Random(1))
    assert a == sample_from_schema(schema, random.Random(1))
    assert a != sample_from_schema(schema, random.Random(2))


def test_long_text_fields_get_sentences_and_short_fields_get_words() -> None:
    lengths = [
        len(sample_from_schema(Review.model_json_schema(), random.Random(s))["summary"].split())
        for s in range(50)
    ]
    assert min(lengths) >= 10 and max(lengths) <= 40
    names = [sample_from_schema(Person.model_json_schema(), random.Random(s))["name"] for s in range(50)]
    assert all(1 <= len(n.split()) <= 4 for n in names)
    assert len(set(names)) > 40


def test_unsatisfiable_schema_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        sample_from_schema({"type": "string", "minLength": 5, "maxLength": 2}, random.Random(0))
    with pytest.raises(ValueError):
        sample_from_schema({"$ref": "#/$defs/Missing"}, random.Random(0))


# --------------------------------------------------------------------------- the protocol


async def test_reply_has_openai_shape(sim_server, session) -> None:
    server = sim_server(model="teacher-x")
    status, headers, reply = await chat(session, server.base_url, model="teacher-x", max_tokens=1000)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert reply["id"].startswith("chatcmpl-")
    assert reply["object"] == "chat.completion"
    assert isinstance(reply["created"], int) and reply["model"] == "teacher-x"
    [choice] = reply["choices"]
    assert choice == {
        "index": 0,
        "message": {"role": "assistant", "content": choice["message"]["content"]},
        "finish_reason": "stop",
        "logprobs": None,
    }
    content = choice["message"]["content"]
    assert len(content.split()) >= 20 and content.endswith(".")
    chars = sum(len(m["content"]) for m in MESSAGES)
    assert reply["usage"] == {
        "prompt_tokens": chars // 4 + 4 * len(MESSAGES),
        "completion_tokens": len(content) // 4,
        "total_tokens": chars // 4 + 4 * len(MESSAGES) + len(content) // 4,
        "prompt_tokens_details": {"cached_tokens": 0},  # as OpenAI sends it; a short prompt is never cached
    }


async def test_same_messages_and_seed_give_the_same_content(sim_server, session) -> None:
    url = sim_server().base_url
    first = content_of((await chat(session, url, seed=7))[2])
    assert content_of((await chat(session, url, seed=7))[2]) == first
    assert content_of((await chat(session, url, seed=8))[2]) != first
    other = [{"role": "user", "content": "Name a mountain."}]
    assert content_of((await chat(session, url, seed=7, messages=other))[2]) != first


@pytest.mark.parametrize("name", SCHEMAS)
async def test_json_schema_content_validates(sim_server, session, name: str) -> None:
    url = sim_server().base_url
    fmt = {"type": "json_schema", "json_schema": {"name": name, "schema": SCHEMAS[name], "strict": True}}
    for seed in range(5):
        status, _, reply = await chat(session, url, seed=seed, response_format=fmt)
        assert status == 200
        value = json.loads(content_of(reply))
        check(value, SCHEMAS[name])
        if name in MODELS:
            MODELS[name].model_validate_json(content_of(reply))


async def test_json_object_mode_answers_an_object(sim_server, session) -> None:
    _, _, reply = await chat(session, sim_server().base_url, response_format={"type": "json_object"})
    assert isinstance(json.loads(content_of(reply)), dict)


async def test_max_tokens_truncates_and_reports_length(sim_server, session) -> None:
    url = sim_server().base_url
    fmt = {"type": "json_schema", "json_schema": {"name": "r", "schema": SCHEMAS["review"]}}
    full = content_of((await chat(session, url, response_format=fmt))[2])
    _, _, reply = await chat(session, url, response_format=fmt, max_tokens=5)
    assert reply["choices"][0]["finish_reason"] == "length"
    assert content_of(reply) == full[:20]
    assert reply["usage"]["completion_tokens"] == 5
    with pytest.raises(json.JSONDecodeError):
        json.loads(content_of(reply))


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'{"model": "m"}',
        b'{"messages": []}',
        b'{"messages": [{"content": "no role"}]}',
        b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}',
        b'{"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "yaml"}}',
        b'{"messages": [{"role": "user", "content": "x"}],'
        b' "response_format": {"type": "json_schema", "json_schema": {"name": "n"}}}',
    ],
)
async def test_malformed_body_is_a_400_in_openai_shape(sim_server, session, body: bytes) -> None:
    server = sim_server()
    async with session.post(
        f"{server.base_url}/chat/completions", data=body, headers={"Content-Type": "application/json"}
    ) as r:
        assert r.status == 400
        error = (await r.json())["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] is None
    assert server.stats()["bad_request"] == 1


async def test_models_and_health(sim_server, session) -> None:
    server = sim_server(model="m-1")
    async with session.get(f"{server.base_url}/models") as r:
        assert r.status == 200
        listing = await r.json()
    assert listing["object"] == "list"
    [model] = listing["data"]
    assert model["id"] == "m-1" and model["object"] == "model" and model["owned_by"] == "gen-sim"
    assert isinstance(model["created"], int)
    async with session.get(server.base_url.removesuffix("/v1") + "/health") as r:
        assert r.status == 200 and await r.read() == b""


async def test_unknown_model_is_a_404_and_a_missing_one_is_ours(sim_server, session) -> None:
    server = sim_server()
    status, _, reply = await chat(session, server.base_url, model="no-such-model")
    assert status == 404 and reply["error"]["code"] == "model_not_found"
    async with session.post(f"{server.base_url}/chat/completions", json={"messages": MESSAGES}) as r:
        assert r.status == 200 and (await r.json())["model"] == "gen-sim-1"
    assert server.stats()["status_404"] == 1 and server.stats()["ok"] == 1


async def test_api_key_is_checked_and_never_echoed(sim_server, session) -> None:
    server = sim_server(api_key="sk-right")
    url = f"{server.base_url}/chat/completions"
    body = {"model": "gen-sim-1", "messages": MESSAGES}
    for headers in ({}, {"Authorization": "Bearer sk-wrong-123"}):
        async with session.post(url, json=body, headers=headers) as r:
            assert r.status == 401
            text = await r.text()
        assert json.loads(text)["error"]["code"] == "invalid_api_key" and "sk-" not in text
    async with session.get(f"{server.base_url}/models") as r:
        assert r.status == 401
    async with session.post(url, json=body, headers={"Authorization": "Bearer sk-right"}) as r:
        assert r.status == 200
    assert server.stats()["status_401"] == 2 and server.stats()["ok"] == 1


# --------------------------------------------------------------------------- faults


async def test_fenced_json_fault_wraps_valid_json_in_a_fence(sim_server, session) -> None:
    server = sim_server(rate_fenced_json=1.0)
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMAS["answer"]}}
    status, _, reply = await chat(session, server.base_url, response_format=fmt)
    content = content_of(reply)
    assert status == 200 and "```json\n" in content and content.endswith("\n```")
    intro, _, rest = content.partition("```json\n")
    assert intro.strip()
    Answer.model_validate_json(rest.removesuffix("\n```"))
    assert server.stats()["fenced_json"] == 1 and server.stats()["ok"] == 1


async def test_invalid_json_fault_breaks_the_content(sim_server, session) -> None:
    server = sim_server(rate_invalid_json=1.0)
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMAS["answer"]}}
    status, _, reply = await chat(session, server.base_url, response_format=fmt)
    assert status == 200 and reply["choices"][0]["finish_reason"] == "stop"
    with pytest.raises(json.JSONDecodeError):
        json.loads(content_of(reply))
    assert server.stats()["invalid_json"] == 1


async def test_429_fault_carries_retry_after(sim_server, session) -> None:
    server = sim_server(rate_429=1.0, retry_after_s=2.5)
    status, headers, reply = await chat(session, server.base_url)
    assert status == 429
    assert headers["Retry-After"] == "2.5" and headers["retry-after-ms"] == "2500"
    assert reply["error"]["code"] == "rate_limit_exceeded"
    assert server.stats()["status_429"] == 1


@pytest.mark.parametrize(
    ("field", "status", "kind"), [("rate_500", 500, "server_error"), ("rate_503", 503, "overloaded")]
)
async def test_server_error_faults(sim_server, session, field: str, status: int, kind: str) -> None:
    server = sim_server(**{field: 1.0})
    got, _, reply = await chat(session, server.base_url)
    assert got == status and reply["error"]["type"] == kind
    assert server.stats()[f"status_{status}"] == 1


async def test_dropped_connection_raises_a_client_connection_error(sim_server, session) -> None:
    server = sim_server(rate_drop=1.0)
    with pytest.raises(aiohttp.ClientConnectionError):
        await chat(session, server.base_url)
    assert server.stats()["dropped"] == 1


async def test_fault_rates_mix_reproducibly(sim_server, session) -> None:
    config = {"rate_500": 0.3, "rate_invalid_json": 0.3, "seed": 3}
    runs = []
    for _ in range(2):
        url = sim_server(**config).base_url
        runs.append([(await chat(session, url))[0] for _ in range(30)])
    assert runs[0] == runs[1]
    assert 500 in runs[0] and 200 in runs[0]


async def test_rpm_limit_answers_429_with_rate_limit_headers(sim_server, session) -> None:
    server = sim_server(rpm=5)
    results = await asyncio.gather(*(chat(session, server.base_url) for _ in range(8)))
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200] * 5 + [429] * 3
    for status, headers, _ in results:
        assert headers["x-ratelimit-limit-requests"] == "5"
        assert headers["x-ratelimit-reset-requests"].endswith("s")
        if status == 429:
            assert headers["x-ratelimit-remaining-requests"] == "0"
            assert 59 <= int(headers["Retry-After"]) <= 60
    assert server.stats()["rate_limited"] == 3 and server.stats()["ok"] == 5


async def test_latency_is_added(sim_server, session) -> None:
    url = sim_server(latency_ms=80, latency_jitter_ms=10).base_url
    start = time.perf_counter()
    await asyncio.gather(*(chat(session, url) for _ in range(10)))
    assert 0.07 <= time.perf_counter() - start < 1.0  # concurrent requests wait side by side


def test_config_rejects_bad_rates() -> None:
    with pytest.raises(ValueError):
        SimConfig(rate_500=1.5)
    with pytest.raises(ValueError):
        SimConfig(rate_500=0.6, rate_503=0.6)
    with pytest.raises(ValueError):
        SimConfig(rpm=0)


# --------------------------------------------------------------------------- stats and serving


async def test_stats_count_and_reset(sim_server, session) -> None:
    server = sim_server()
    root = server.base_url.removesuffix("/v1")
    await chat(session, server.base_url)
    await chat(session, server.base_url)
    async with session.post(f"{server.base_url}/chat/completions", data=b"{") as r:
        assert r.status == 400
    async with session.get(f"{root}/sim/stats") as r:
        stats = await r.json()
    assert stats["requests"] == 3 and stats["ok"] == 2 and stats["bad_request"] == 1
    assert stats == server.stats()
    async with session.post(f"{root}/sim/reset") as r:
        assert r.status == 200
    assert set(server.stats().values()) == {0}


async def test_sim_server_runs_on_the_current_loop(session) -> None:
    async with SimServer(SimConfig(seed=1)) as server:
        assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
        status, _, _ = await chat(session, server.base_url)
        assert status == 200 and server.stats["ok"] == 1
    with pytest.raises(RuntimeError):
        server.port  # noqa: B018


def test_sim_thread_serves_sync_code() -> None:
    with SimThread(SimConfig()) as server:
        request = urllib.request.Request(
            f"{server.base_url}/chat/completions",
            data=orjson.dumps({"model": "gen-sim-1", "messages": MESSAGES}),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as r:
            assert r.status == 200
            assert json.loads(r.read())["object"] == "chat.completion"
        assert server.stats()["ok"] == 1


def test_serve_prints_its_url_and_exits_cleanly_on_sigint() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = "from gen.sim import SimConfig, serve; serve(SimConfig(model='m'), port=0)"
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert line.startswith("gen sim: serving the OpenAI protocol on http://127.0.0.1:")
        assert line.rstrip().endswith("/v1 (model m)")
        url = line.split(" on ")[1].split(" ")[0]
        with urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=5) as r:
            assert r.status == 200
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    assert "Traceback" not in rest
