"""The simulator speaks the real protocols: the official `openai` and `anthropic` SDKs parse its answers.

Both SDKs are optional test extras; without one, its tests skip. Every client is closed (warnings are
errors here) and never retries, so each fault surfaces as the SDK's own exception type.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel, Field

from gen.sim import SimThread

pytestmark = pytest.mark.timeout(30)  # the first anthropic test pays its SDK import (seconds)

KEY = "sk-sdk-test-key"
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a river."}]


class Answer(BaseModel):
    answer: str
    confidence: float = Field(ge=0, le=1)
    sources: list[str] = Field(default_factory=list, max_length=2)


SCHEMA = Answer.model_json_schema()


@pytest.fixture
def openai_sdk() -> Any:
    return pytest.importorskip("openai")


@pytest.fixture
def anthropic_sdk() -> Any:
    return pytest.importorskip("anthropic")


@pytest.fixture
def openai_client(openai_sdk, sim_server) -> Iterator[Any]:
    """`openai_client(**sim_config)`: an SDK client (no retries) on a fresh simulator, closed after."""
    clients: list[Any] = []

    def make(**config: Any) -> tuple[Any, SimThread]:
        server = sim_server(**config)
        client = openai_sdk.OpenAI(api_key=KEY, base_url=server.base_url, max_retries=0, timeout=5)
        clients.append(client)
        return client, server

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def anthropic_client(anthropic_sdk, sim_server) -> Iterator[Any]:
    """`anthropic_client(**sim_config)`: an SDK client (no retries) on a fresh simulator, closed after.

    The SDK's base URL is the server root: it adds /v1/messages itself.
    """
    clients: list[Any] = []

    def make(**config: Any) -> tuple[Any, SimThread]:
        server = sim_server(**config)
        root = server.base_url.removesuffix("/v1")
        client = anthropic_sdk.Anthropic(api_key=KEY, base_url=root, max_retries=0, timeout=5)
        clients.append(client)
        return client, server

    yield make
    for client in clients:
        client.close()


# --------------------------------------------------------------------------- openai


def test_openai_structured_chat_parses_into_sdk_types(openai_sdk, openai_client) -> None:
    from openai.types.chat import ChatCompletion

    client, server = openai_client(api_key=KEY)
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True}}
    completion = client.chat.completions.create(
        model="gen-sim-1", messages=MESSAGES, response_format=fmt, seed=7, temperature=0.3
    )
    assert isinstance(completion, ChatCompletion)
    assert completion.object == "chat.completion" and completion.model == "gen-sim-1"
    [choice] = completion.choices
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    Answer.model_validate_json(choice.message.content)
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    again = client.chat.completions.create(
        model="gen-sim-1", messages=MESSAGES, response_format=fmt, seed=7, temperature=0.3
    )
    assert again.choices[0].message.content == choice.message.content  # same seed, same answer
    assert server.stats()["ok"] == 2


def test_openai_models_list(openai_client) -> None:
    client, _ = openai_client(model="teacher-x")
    models = list(client.models.list())
    assert [m.id for m in models] == ["teacher-x"]
    assert models[0].object == "model" and models[0].owned_by == "gen-sim"


def test_openai_429_is_a_rate_limit_error(openai_sdk, openai_client) -> None:
    client, server = openai_client(rate_429=1.0, retry_after_s=2.5)
    with pytest.raises(openai_sdk.RateLimitError) as info:
        client.chat.completions.create(model="gen-sim-1", messages=MESSAGES)
    err = info.value
    assert err.status_code == 429 and err.code == "rate_limit_exceeded"
    assert err.response.headers["retry-after"] == "2.5"
    assert server.stats()["status_429"] == 1


def test_openai_wrong_key_is_an_authentication_error(openai_sdk, openai_client) -> None:
    client, _ = openai_client(api_key="sk-another-key")
    with pytest.raises(openai_sdk.AuthenticationError) as info:
        client.chat.completions.create(model="gen-sim-1", messages=MESSAGES)
    assert info.value.code == "invalid_api_key" and KEY not in str(info.value)


# --------------------------------------------------------------------------- anthropic


def test_anthropic_forced_tool_gives_a_tool_use_block(anthropic_sdk, anthropic_client) -> None:
    from anthropic.types import Message, ToolUseBlock

    client, server = anthropic_client(api_key=KEY)
    message = client.messages.create(
        model="gen-sim-1",
        max_tokens=1024,
        system="You are terse.",
        messages=[{"role": "user", "content": "Name a river."}],
        tools=[{"name": "record_answer", "description": "Record the answer.", "input_schema": SCHEMA}],
        tool_choice={"type": "tool", "name": "record_answer"},
        metadata={"user_id": "test"},
    )
    assert isinstance(message, Message)
    assert message.type == "message" and message.role == "assistant" and message.model == "gen-sim-1"
    assert message.id.startswith("msg_") and message.stop_reason == "tool_use"
    [block] = message.content
    assert isinstance(block, ToolUseBlock)
    assert block.name == "record_answer" and block.id.startswith("toolu_")
    jsonschema.validate(block.input, SCHEMA)
    Answer.model_validate(block.input)
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert server.stats()["ok"] == 1


def test_anthropic_text_answer_is_a_text_block(anthropic_sdk, anthropic_client) -> None:
    from anthropic.types import TextBlock

    client, _ = anthropic_client()
    message = client.messages.create(
        model="gen-sim-1",
        max_tokens=5,
        system=[{"type": "text", "text": "You are terse."}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "Name a river."}]}],
    )
    [block] = message.content
    assert isinstance(block, TextBlock) and block.text
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 5


def test_anthropic_529_is_an_overloaded_status_error(anthropic_sdk, anthropic_client) -> None:
    client, server = anthropic_client(rate_503=1.0)
    with pytest.raises(anthropic_sdk.APIStatusError) as info:
        client.messages.create(
            model="gen-sim-1", max_tokens=10, messages=[{"role": "user", "content": "Name a river."}]
        )
    err = info.value
    assert err.status_code == 529
    overloaded = getattr(anthropic_sdk, "OverloadedError", None)  # in newer SDKs only
    if overloaded is not None:
        assert isinstance(err, overloaded)
    assert err.body["type"] == "error" and err.body["error"]["type"] == "overloaded_error"
    assert server.stats()["status_529"] == 1


def test_anthropic_429_is_a_rate_limit_error(anthropic_sdk, anthropic_client) -> None:
    client, _ = anthropic_client(rpm=1)
    create = {"model": "gen-sim-1", "max_tokens": 10, "messages": [{"role": "user", "content": "Hi."}]}
    client.messages.create(**create)
    with pytest.raises(anthropic_sdk.RateLimitError) as info:
        client.messages.create(**create)
    headers = info.value.response.headers
    assert 59 <= int(headers["retry-after"]) <= 60
    assert headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert headers["anthropic-ratelimit-requests-reset"].endswith("Z")


def test_anthropic_wrong_key_is_an_authentication_error(anthropic_sdk, anthropic_client) -> None:
    client, _ = anthropic_client(api_key="sk-another-key")
    with pytest.raises(anthropic_sdk.AuthenticationError) as info:
        client.messages.create(
            model="gen-sim-1", max_tokens=10, messages=[{"role": "user", "content": "Name a river."}]
        )
    assert info.value.body["error"]["type"] == "authentication_error"
    assert KEY not in json.dumps(info.value.body)


def test_anthropic_unknown_model_is_not_found(anthropic_sdk, anthropic_client) -> None:
    client, _ = anthropic_client()
    with pytest.raises(anthropic_sdk.NotFoundError) as info:
        client.messages.create(
            model="claude-nope", max_tokens=10, messages=[{"role": "user", "content": "Hi."}]
        )
    assert info.value.body["error"] == {"type": "not_found_error", "message": "model: claude-nope"}


def test_anthropic_models_list(anthropic_client) -> None:
    client, _ = anthropic_client(model="claude-sim", api_key=KEY)
    if not hasattr(client, "models"):
        pytest.skip("this anthropic SDK has no models API")
    models = list(client.models.list())
    assert [m.id for m in models] == ["claude-sim"]
    assert models[0].type == "model" and models[0].display_name == "claude-sim"
