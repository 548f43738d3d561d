"""Every reply's wire format is checked at the client (issue 11, item 4): a malformed 200 is a retryable
teacher error, never a traceback and never a Completion that later breaks the dataset's columns."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest
from test_wire import Scripted, answer, read_request

from gen.errors import TeacherError
from gen.sim import MALFORMED
from gen.teachers.anthropic import AnthropicMessages
from gen.teachers.openai import OpenAIChat

MESSAGES = [{"role": "user", "content": "hi"}]
SAMPLING = {"max_tokens": 256}
# What the error names, per shape and protocol: where in the reply the format broke.
WHERE = {
    "model_int": ("model", "model"),
    "finish_reason_object": ("choices.0.finish_reason", "stop_reason"),
    "usage_string": ("usage", "usage"),
    "content_object": ("choices.0.message.content", "content"),
    "tokens_negative": ("usage.completion_tokens", "usage.output_tokens"),
    "tokens_huge": ("usage.completion_tokens", "usage.output_tokens"),
    "no_choices": ("choices", "content"),
    "not_an_object": ("the reply", "the reply"),
    "deep_nesting": ("choices.0.message.content", "content.0"),
}


def _client(provider: str, url: str):
    cls = AnthropicMessages if provider == "anthropic" else OpenAIChat
    return cls(url, "gen-sim-1")


def test_every_shape_has_a_test() -> None:
    assert set(WHERE) == set(MALFORMED)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("shape", MALFORMED)
async def test_a_malformed_reply_is_a_retryable_teacher_error(provider: str, shape: str, sim_server) -> None:
    sim = sim_server(rate_malformed=1.0, malformed=shape)
    client = _client(provider, sim.base_url)
    with pytest.raises(TeacherError) as info:
        await client.complete(MESSAGES, seed=1, sampling=SAMPLING)
    await client.close()
    error = info.value
    where = WHERE[shape][provider == "anthropic"]
    assert error.retryable and str(error).startswith(f"malformed reply: {where}"), str(error)
    assert sim.stats()["malformed"] == 1


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_what_a_well_formed_reply_may_leave_out_or_add(provider: str) -> None:
    # The formats' optional parts stay optional: no usage, null counts, unknown fields and blocks.
    if provider == "openai":
        reply = {
            "choices": [{"message": {"content": None, "refusal": "no"}, "finish_reason": None}],
            "extra": 1,
        }
    else:
        reply = {
            "content": [
                {"type": "thinking", "thinking": "hm"},
                {"type": "text", "text": "ok", "citations": []},
            ],
            "usage": {"input_tokens": None, "output_tokens": 3, "cache_read_input_tokens": 7},
        }

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(answer(json.dumps(reply).encode()))
        await writer.drain()

    async with Scripted(handler) as s:
        client = _client(provider, s.url)
        completion = await client.complete(MESSAGES, seed=1, sampling=SAMPLING)
        await client.close()
    assert completion.text == ("" if provider == "openai" else "ok")
    assert completion.completion_tokens == (0 if provider == "openai" else 3)
    # Anthropic's input_tokens leaves out cache reads; gen's prompt_tokens counts all of the input.
    assert completion.prompt_tokens == completion.cached_tokens == (0 if provider == "openai" else 7)


@pytest.mark.parametrize(("path", "field"), [("/chat/completions", "model"), ("/messages", "model")])
def test_the_simulator_breaks_the_reply_as_it_says(path: str, field: str, sim_server) -> None:
    sim = sim_server(rate_malformed=1.0, malformed="tokens_huge")
    body = {"model": "gen-sim-1", "max_tokens": 16, "messages": MESSAGES}
    req = urllib.request.Request(
        sim.base_url + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "anthropic-version": "2023-06-01"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        raw = resp.read()
    assert b":1000000000000000000000000000000" in raw  # past any 64-bit integer, as JSON allows
    assert json.loads(raw)[field] == "gen-sim-1"
