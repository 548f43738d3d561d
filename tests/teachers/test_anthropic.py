"""gen's Anthropic Messages client against the simulator's /v1/messages over loopback HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import jsonschema
import orjson
import pytest
from pydantic import BaseModel, Field

from gen.errors import FatalTeacherError, TeacherError
from gen.schema import Schema, SchemaMismatch
from gen.teachers.anthropic import DEFAULT_MAX_TOKENS, AnthropicMessages
from gen.teachers.openai import OpenAIChat

pytestmark = pytest.mark.timeout(10)

MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a river."}]
SAMPLING: dict[str, Any] = {"temperature": 0.5, "max_tokens": 2000}
KEY = "sk-ant-secret-0123456789"


class Answer(BaseModel):
    answer: str
    confidence: float = Field(ge=0, le=1)
    sources: list[str] = Field(default_factory=list, max_length=2)


ANSWER = Schema("schemas/answer.py:Answer", "Answer v1.json", Answer.model_json_schema(), Answer)
PLAIN = Schema(  # a JSON Schema file: validated by jsonschema, not pydantic
    "schemas/pair.json",
    "pair",
    {
        "type": "object",
        "properties": {"left": {"type": "string"}, "right": {"type": "integer"}},
        "required": ["left", "right"],
        "additionalProperties": False,
    },
    None,
)


@pytest.fixture
async def teacher(sim_server) -> AsyncIterator[Callable[..., tuple[AnthropicMessages, Any]]]:
    """`teacher(schema=..., model=..., **sim_config)`: a client on a fresh simulator, closed after.

    The client sends the simulator's `api_key`, if it has one.
    """
    clients: list[AnthropicMessages] = []

    def make(
        *, schema: Schema | None = None, model: str = "gen-sim-1", **config: Any
    ) -> tuple[AnthropicMessages, Any]:
        server = sim_server(**config)
        client = AnthropicMessages(server.base_url, model, api_key=config.get("api_key"), schema=schema)
        clients.append(client)
        return client, server

    yield make
    for client in clients:
        await client.close()


async def complete(client: AnthropicMessages, messages: list[dict[str, str]] = MESSAGES, **sampling: Any):
    return await client.complete(messages, seed=1, sampling={**SAMPLING, **sampling})


# --------------------------------------------------------------------------- answers


@pytest.mark.parametrize("schema", [ANSWER, PLAIN], ids=["pydantic", "json_schema"])
async def test_structured_output_comes_through_the_tool(teacher, schema: Schema) -> None:
    client, server = teacher(schema=schema)
    for i in range(5):
        comp = await complete(client, [{"role": "user", "content": f"Question {i}?"}])
        schema.validate(comp.text)  # raises SchemaMismatch if the tool input does not fit
        assert isinstance(orjson.loads(comp.text), dict)
        assert comp.finish_reason == "stop" and comp.model == "gen-sim-1"
    assert server.stats()["ok"] == 5


def test_tool_carries_the_schema_and_is_forced() -> None:
    client = AnthropicMessages("http://h/v1/", "claude-x", schema=ANSWER)
    body = orjson.loads(client.body(MESSAGES, seed=9, sampling={}))
    [tool] = body["tools"]
    assert tool == {
        "name": "Answer_v1_json",
        "description": "Record the answer.",
        "input_schema": Answer.model_json_schema(),
        "strict": True,
    }
    assert body["tool_choice"] == {"type": "tool", "name": "Answer_v1_json"}
    assert client.url == "http://h/v1/messages"
    loose = AnthropicMessages("http://h/v1", "claude-x", schema=ANSWER, strict=False)
    assert "strict" not in orjson.loads(loose.body(MESSAGES, seed=9, sampling={}))["tools"][0]


def test_body_lifts_the_system_prompt_and_maps_sampling() -> None:
    client = AnthropicMessages("http://h/v1", "claude-x")
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Again"},
    ]
    sampling = {"temperature": 0.2, "top_p": 0.9, "top_k": 40, "stop": "END", "seed": 5, "max_tokens": 77}
    body = orjson.loads(client.body(messages, seed=123, sampling=sampling))
    assert body == {
        "model": "claude-x",
        "max_tokens": 77,
        "system": "Be brief.",
        "messages": messages[1:],
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "stop_sequences": ["END"],
    }
    plain = orjson.loads(client.body(messages[1:2], seed=1, sampling={"stop": ["a", "b"]}))
    assert plain == {
        "model": "claude-x",
        "max_tokens": DEFAULT_MAX_TOKENS,
        "messages": messages[1:2],
        "stop_sequences": ["a", "b"],
    }


async def test_system_prompt_reaches_the_server_as_the_top_level_system(teacher) -> None:
    client, server = teacher()
    # The simulator refuses a "system" role in messages, so an answer proves the system prompt moved;
    # it derives answers from the messages and the system prompt, so changing either changes the text.
    first = await complete(client)
    assert (await complete(client)).text == first.text
    other_system = [{"role": "system", "content": "You are verbose."}, MESSAGES[1]]
    assert (await complete(client, other_system)).text != first.text
    assert (await complete(client, MESSAGES[1:])).text != first.text
    assert server.stats()["ok"] == 4 and server.stats()["bad_request"] == 0


async def test_usage_maps_to_prompt_and_completion_tokens(teacher, sim_server) -> None:
    client, _ = teacher(schema=ANSWER)
    comp = await complete(client)
    chars = sum(len(m["content"]) for m in MESSAGES)
    assert comp.prompt_tokens == chars // 4 + 4 * len(MESSAGES)
    assert comp.completion_tokens == len(comp.text) // 4 > 0
    # The same conversation costs the same prompt tokens on the OpenAI path of the simulator.
    openai = OpenAIChat(sim_server().base_url, "gen-sim-1", schema=ANSWER)
    try:
        assert (
            await openai.complete(MESSAGES, seed=1, sampling=SAMPLING)
        ).prompt_tokens == comp.prompt_tokens
    finally:
        await openai.close()


async def test_text_mode_joins_text_blocks(teacher) -> None:
    client, _ = teacher()
    comp = await complete(client)
    assert comp.finish_reason == "stop"
    assert len(comp.text.split()) >= 20 and comp.text.endswith(".")
    assert comp.completion_tokens == len(comp.text) // 4


async def test_max_tokens_cut_is_finish_reason_length(teacher) -> None:
    client, _ = teacher()
    comp = await complete(client, max_tokens=3)
    assert comp.finish_reason == "length" and comp.completion_tokens == 3 and len(comp.text) == 12
    structured, _ = teacher(schema=ANSWER)
    comp = await complete(structured, max_tokens=2)
    assert comp.finish_reason == "length" and comp.text == "{}"


async def test_seed_is_not_sent_and_does_not_change_the_answer(teacher) -> None:
    client, _ = teacher(schema=ANSWER)
    a = await client.complete(MESSAGES, seed=1, sampling=SAMPLING)
    b = await client.complete(MESSAGES, seed=2, sampling={**SAMPLING, "seed": 3})
    assert a.text == b.text


async def test_list_models(teacher) -> None:
    client, server = teacher(model="claude-other", api_key=KEY)  # any model may ask for the listing
    assert await client.list_models() == ["gen-sim-1"]
    wrong = AnthropicMessages(server.base_url, "gen-sim-1", api_key="sk-ant-wrong")
    try:
        assert await wrong.list_models() == []
    finally:
        await wrong.close()


async def test_models_follow_pages_with_the_anthropic_headers() -> None:
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    ids = [f"claude-{i}" for i in range(5)]
    seen: list[tuple[str | None, str | None]] = []

    async def listing(request: web.Request) -> web.Response:
        seen.append((request.headers.get("x-api-key"), request.headers.get("anthropic-version")))
        after = request.query.get("after_id")
        start = ids.index(after) + 1 if after else 0
        page = ids[start : start + 2]
        doc = {
            "data": [{"type": "model", "id": i, "display_name": i.title()} for i in page],
            "has_more": start + 2 < len(ids),
            "first_id": page[0],
            "last_id": page[-1],
        }
        return web.json_response(doc)

    app = web.Application()
    app.router.add_get("/v1/models", listing)
    async with TestServer(app, host="127.0.0.1") as server:
        client = AnthropicMessages(str(server.make_url("/v1")), "claude-0", api_key=KEY)
        try:
            entries = await client.models()
            assert await client.list_models() == ids
        finally:
            await client.close()
    assert [e["id"] for e in entries] == ids and entries[0]["display_name"] == "Claude-0"
    assert set(seen) == {(KEY, "2023-06-01")} and len(seen) == 6  # 3 pages, twice


# --------------------------------------------------------------------------- faults in the answer


async def test_invalid_json_fault_breaks_the_tool_input_against_the_schema(teacher) -> None:
    for schema in (ANSWER, PLAIN):
        client, server = teacher(schema=schema, rate_invalid_json=1.0)
        comp = await complete(client)
        assert isinstance(orjson.loads(comp.text), dict)  # still JSON: the tool input is an object
        with pytest.raises(SchemaMismatch):
            schema.validate(comp.text)
        assert server.stats()["invalid_json"] == 1


async def test_invalid_json_fault_in_text_mode_is_broken_text(teacher) -> None:
    whole = (await complete(teacher()[0])).text
    client, _ = teacher(rate_invalid_json=1.0)
    comp = await complete(client)
    assert comp.finish_reason == "stop"
    assert 0 < len(comp.text) < len(whole) and whole.startswith(comp.text)


async def test_chatty_answer_still_yields_the_tool_input(teacher) -> None:
    client, server = teacher(schema=ANSWER, rate_fenced_json=1.0)
    comp = await complete(client)
    ANSWER.validate(comp.text)
    assert server.stats()["fenced_json"] == 1


# --------------------------------------------------------------------------- errors


async def test_429_is_retryable_with_retry_after(teacher) -> None:
    client, server = teacher(rate_429=1.0, retry_after_s=2.5)
    with pytest.raises(TeacherError) as info:
        await complete(client)
    err = info.value
    assert not isinstance(err, FatalTeacherError)
    assert err.status == 429 and err.retryable and err.retry_after == 2.5
    assert err.message == "Rate limit reached (simulated)."
    assert server.stats()["status_429"] == 1


async def test_rpm_limit_429_carries_anthropic_rate_limit_headers(teacher) -> None:
    client, server = teacher(rpm=1)
    ok = await complete(client)
    assert ok.headers["anthropic-ratelimit-requests-remaining"] == "0"
    with pytest.raises(TeacherError) as info:
        await complete(client)
    err = info.value
    assert err.status == 429 and err.retryable and err.retry_after is not None
    assert 59 <= err.retry_after <= 60
    assert err.headers["anthropic-ratelimit-requests-limit"] == "1"
    assert err.headers["anthropic-ratelimit-requests-reset"].endswith("Z")
    assert "rate limit of 1 requests per minute" in err.message
    assert server.stats()["rate_limited"] == 1


@pytest.mark.parametrize(("field", "status"), [("rate_503", 529), ("rate_500", 500)])
async def test_overloaded_and_server_errors_are_retryable(teacher, field: str, status: int) -> None:
    client, server = teacher(**{field: 1.0})
    with pytest.raises(TeacherError) as info:
        await complete(client)
    assert info.value.status == status and info.value.retryable
    assert info.value.message.endswith("(simulated).")
    assert server.stats()[f"status_{status}"] == 1


async def test_401_is_fatal_and_never_shows_the_key(teacher) -> None:
    right, server = teacher(api_key=KEY)
    await complete(right)  # the right key, in x-api-key, is accepted
    for key in ("sk-ant-wrong-987", None):
        client = AnthropicMessages(server.base_url, "gen-sim-1", api_key=key)
        try:
            with pytest.raises(FatalTeacherError) as info:
                await complete(client)
        finally:
            await client.close()
        err = info.value
        assert err.status == 401 and not err.retryable
        assert err.message == "invalid x-api-key"
        shown = f"{err} {err!r} {err.message} {err.headers}"
        assert "sk-ant" not in shown and KEY not in shown
    assert server.stats()["status_401"] == 2 and server.stats()["ok"] == 1


async def test_unknown_model_is_a_final_404(teacher) -> None:
    client, server = teacher(model="claude-nope")
    with pytest.raises(TeacherError) as info:
        await complete(client)
    err = info.value
    assert err.status == 404 and not err.retryable and not isinstance(err, FatalTeacherError)
    assert err.message == "model: claude-nope"
    assert server.stats()["status_404"] == 1 and server.stats()["requests"] == 1


async def test_bad_request_is_final_with_the_servers_message(teacher) -> None:
    client, _ = teacher()
    with pytest.raises(TeacherError) as info:
        await complete(client, temperature=1.5)  # fine for OpenAI, out of range for Anthropic
    assert info.value.status == 400 and not info.value.retryable
    assert info.value.message.startswith("temperature:")


async def test_dropped_connection_is_retryable(teacher) -> None:
    client, server = teacher(rate_drop=1.0)
    with pytest.raises(TeacherError) as info:
        await complete(client)
    assert info.value.retryable and info.value.status is None
    assert info.value.message.startswith("connection failed:")
    assert server.stats()["dropped"] == 1


# --------------------------------------------------------------------------- the simulator's side


async def test_simulator_checks_anthropic_headers_and_body(sim_server) -> None:
    import aiohttp

    server = sim_server(api_key=KEY)
    url = f"{server.base_url}/messages"
    good = {"model": "gen-sim-1", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}
    cases = [
        ({"x-api-key": KEY}, good, 400, "anthropic-version: header is required"),
        ({"anthropic-version": "2023-06-01"}, good, 401, "invalid x-api-key"),
        ({"x-api-key": "sk-other", "anthropic-version": "2023-06-01"}, good, 401, "invalid x-api-key"),
        (None, {**good, "max_tokens": None}, 400, "max_tokens: Field required."),
        (None, {**good, "messages": MESSAGES}, 400, 'Unexpected role "system"'),
        (None, {**good, "tool_choice": {"type": "tool", "name": "t"}}, 400, "tool_choice:"),
        (
            None,
            {
                **good,
                "tools": [{"name": "t", "input_schema": {"type": "object"}}],
                "tool_choice": {"type": "tool", "name": "u"},
            },
            400,
            "tool_choice.name:",
        ),
    ]
    async with aiohttp.ClientSession() as session:
        for headers, body, status, message in cases:
            headers = headers or {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
            payload = {k: v for k, v in body.items() if v is not None}
            async with session.post(url, json=payload, headers=headers) as r:
                assert r.status == status
                text = await r.text()
            reply = json.loads(text)
            assert reply["type"] == "error" and message in reply["error"]["message"]
            assert reply["error"]["type"] in ("invalid_request_error", "authentication_error")
            assert KEY not in text
    assert server.stats()["status_401"] == 2 and server.stats()["bad_request"] == 5


async def _messages(server: Any, **body: Any) -> tuple[int, dict[str, Any]]:
    import aiohttp

    body = {"model": "gen-sim-1", "max_tokens": 500, "messages": [{"role": "user", "content": "x"}], **body}
    headers = {"anthropic-version": "2023-06-01"}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{server.base_url}/messages", json=body, headers=headers) as r:
            return r.status, await r.json()


async def test_simulator_tool_choice_any_calls_the_first_custom_tool(sim_server) -> None:
    schema = PLAIN.json_schema
    tools = [
        {"type": "web_search_20250305", "name": "web_search"},  # a server tool: never called
        {"name": "first", "input_schema": schema},
        {"name": "second", "input_schema": {"type": "object"}},
    ]
    status, reply = await _messages(sim_server(), tools=tools, tool_choice={"type": "any"})
    assert status == 200 and reply["stop_reason"] == "tool_use"
    [block] = reply["content"]
    assert block["name"] == "first"
    jsonschema.validate(block["input"], schema)
    status, reply = await _messages(sim_server(), tools=tools, tool_choice={"type": "auto"})
    assert status == 200 and [b["type"] for b in reply["content"]] == ["text"]


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"n": {"type": "integer"}, "s": {"type": ["string", "null"]}}},
        {"type": "object", "properties": {"b": {"type": "boolean"}}, "required": ["b"]},
        {
            "$ref": "#/$defs/Root",
            "$defs": {"Root": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}},
            "type": "object",
        },
        {"type": "object", "properties": {"free": {}}, "additionalProperties": False},
    ],
    ids=["wrong_type", "required", "ref_root", "extra_key"],
)
async def test_simulator_invalid_json_fault_always_breaks_the_schema(sim_server, schema) -> None:
    server = sim_server(rate_invalid_json=1.0)
    tools = [{"name": "t", "input_schema": schema}]
    for i in range(5):
        messages = [{"role": "user", "content": f"q{i}"}]
        status, reply = await _messages(
            server, messages=messages, tools=tools, tool_choice={"type": "tool", "name": "t"}
        )
        assert status == 200
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(reply["content"][-1]["input"], schema)
    assert server.stats()["invalid_json"] == 5
