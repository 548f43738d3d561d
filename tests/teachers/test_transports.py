"""gen.teachers.transports: both transports against the simulator on loopback give the same answer and
the same size-cap error, and the choice rule picks the plain-http client only for http:// URLs."""

from __future__ import annotations

import orjson
import pytest

from gen.errors import TeacherError
from gen.teachers import transports as transports_module
from gen.teachers.openai import OpenAIChat
from gen.teachers.transports import AiohttpTransport, Transport, WireTransport, open_transport, wants_wire
from gen.teachers.wire import WireError

MESSAGES = [{"role": "user", "content": "Give one JSON object."}]
KINDS = {"wire": WireTransport, "aiohttp": AiohttpTransport}


def transport(kind: str) -> Transport:
    return KINDS[kind](
        headers={"Content-Type": "application/json"},
        max_connections=4,
        request_timeout_s=10.0,
        connect_timeout_s=2.0,
    )


def body(seed: int) -> bytes:
    return orjson.dumps({"model": "gen-sim-1", "messages": MESSAGES, "max_tokens": 64, "seed": seed})


async def test_both_transports_give_the_same_answer(sim_server) -> None:
    sim = sim_server()
    url = sim.base_url.rstrip("/") + "/chat/completions"
    answers = {}
    for kind in KINDS:
        t = transport(kind)
        try:
            status, headers, raw = await t.request("POST", url, body(7), 1 << 20)
            # A second request on the same transport (a kept-alive connection for the plain-http one).
            again = await t.request("POST", url, body(7), 1 << 20)
        finally:
            await t.close()
        assert status == 200 and again[0] == 200
        assert headers["content-type"].startswith("application/json")  # lower-case lookup works on both
        reply = orjson.loads(raw)
        answers[kind] = [c["message"]["content"] for c in reply["choices"]]
        assert answers[kind] == [c["message"]["content"] for c in orjson.loads(again[2])["choices"]]
    assert answers["wire"] == answers["aiohttp"] and answers["wire"][0]


@pytest.mark.parametrize("kind", list(KINDS))
async def test_both_transports_refuse_a_reply_past_the_cap_alike(kind: str, sim_server) -> None:
    sim = sim_server(rate_oversize=1.0, oversize_bytes=2_000_000)
    url = sim.base_url.rstrip("/") + "/chat/completions"
    t = transport(kind)
    try:
        with pytest.raises(WireError) as info:
            await t.request("POST", url, body(1), 100_000)
    finally:
        await t.close()
    assert info.value.oversize and not info.value.timeout and not info.value.final
    assert str(info.value) == "reply larger than 100,000 bytes"


@pytest.mark.parametrize("kind", list(KINDS))
async def test_the_client_maps_either_transports_failures_alike(kind: str, sim_server, monkeypatch) -> None:
    monkeypatch.setattr(transports_module, "USE_WIRE", kind == "wire")
    sim = sim_server(rate_oversize=1.0, oversize_bytes=2_000_000)
    client = OpenAIChat(sim.base_url, "gen-sim-1", max_reply_bytes=100_000)
    assert isinstance(client._transport, KINDS[kind])
    try:
        with pytest.raises(TeacherError) as info:
            await client.complete(MESSAGES, seed=1, sampling={})
    finally:
        await client.close()
    assert info.value.retryable and info.value.billed
    assert str(info.value) == "reply larger than 100,000 bytes: over the reply size cap (--max-reply-bytes)"


async def test_a_refused_connection_is_retryable_on_either_transport(monkeypatch) -> None:
    for use_wire in (True, False):
        monkeypatch.setattr(transports_module, "USE_WIRE", use_wire)
        client = OpenAIChat("http://127.0.0.1:9/v1", "m", connect_timeout_s=2.0)  # the discard port: refused
        try:
            with pytest.raises(TeacherError) as info:
                await client.complete(MESSAGES, seed=1, sampling={})
        finally:
            await client.close()
        assert info.value.retryable and str(info.value).startswith("connection failed: "), info.value


def test_the_choice_rule(monkeypatch) -> None:
    assert wants_wire("http://127.0.0.1:8000/v1", use_wire=True)
    assert not wants_wire("https://api.openai.com/v1", use_wire=True)  # https: aiohttp, always
    assert not wants_wire("http://127.0.0.1:8000/v1", use_wire=False)  # GEN_HTTP_CLIENT=aiohttp
    kw = {"headers": {}, "max_connections": 1, "request_timeout_s": 1.0, "connect_timeout_s": 1.0}
    monkeypatch.setattr(transports_module, "USE_WIRE", True)
    assert isinstance(open_transport("http://h:1/v1", **kw), WireTransport)
    assert isinstance(open_transport("https://h/v1", **kw), AiohttpTransport)
    monkeypatch.setattr(transports_module, "USE_WIRE", False)
    assert isinstance(open_transport("http://h:1/v1", **kw), AiohttpTransport)
