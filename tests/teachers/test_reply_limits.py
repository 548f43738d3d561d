"""A reply may not take unbounded memory or time (issue 11, item 3), through both transports.

The simulator's hostile faults (a reply far past max_tokens, a body that never ends, a gzip bomb, a body
that trickles) against the plain-http client and aiohttp; scripted servers for the exact edges.
"""

from __future__ import annotations

import asyncio
import gzip
import tracemalloc
import zlib
from collections.abc import Iterator

import pytest
from test_wire import MESSAGES, OK_BODY, Scripted, answer, pool, read_request

from gen.errors import TeacherError
from gen.sim import server as sim_module
from gen.teachers import transports as transports_module
from gen.teachers.anthropic import AnthropicMessages
from gen.teachers.http import (
    REPLY_BYTES_PER_LOGPROB,
    REPLY_BYTES_PER_TOKEN,
    REPLY_ENVELOPE_BYTES,
    UNSET_MAX_TOKENS,
    reply_limit,
)
from gen.teachers.openai import OpenAIChat
from gen.teachers.wire import WireError

SAMPLING = {"max_tokens": 256, "temperature": 0.7}
CAP_256 = REPLY_ENVELOPE_BYTES + 256 * REPLY_BYTES_PER_TOKEN
MB = 1024 * 1024


@pytest.fixture(params=["wire", "aiohttp"])
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run the test through gen's plain-http client, then through aiohttp (GEN_HTTP_CLIENT=aiohttp)."""
    monkeypatch.setattr(transports_module, "USE_WIRE", request.param == "wire")
    yield request.param


def client(provider: str, url: str, **kw) -> OpenAIChat | AnthropicMessages:
    cls = AnthropicMessages if provider == "anthropic" else OpenAIChat
    return cls(url, "gen-sim-1", **kw)


async def ask(provider: str, url: str, sampling: dict | None = None, **kw) -> str:
    c = client(provider, url, **kw)
    try:
        return (await c.complete(MESSAGES, seed=1, sampling=SAMPLING if sampling is None else sampling)).text
    finally:
        await c.close()


async def refused(provider: str, url: str, **kw) -> TeacherError:
    with pytest.raises(TeacherError) as info:
        await ask(provider, url, **kw)
    assert info.value.retryable, info.value
    return info.value


def test_the_default_cap_follows_the_request() -> None:
    assert reply_limit({"max_tokens": 256}) == CAP_256
    assert reply_limit({"max_completion_tokens": 100, "max_tokens": 9999}) == REPLY_ENVELOPE_BYTES + 100 * 128
    assert reply_limit({}) == REPLY_ENVELOPE_BYTES + UNSET_MAX_TOKENS * REPLY_BYTES_PER_TOKEN
    assert reply_limit({"max_tokens": "256"}) == reply_limit({})  # not a count: as if unset
    with_logprobs = reply_limit({"max_tokens": 10, "logprobs": True, "top_logprobs": 4, "n": 2})
    assert with_logprobs == REPLY_ENVELOPE_BYTES + 2 * 10 * (
        REPLY_BYTES_PER_TOKEN + 5 * REPLY_BYTES_PER_LOGPROB
    )
    # Anthropic's requests always carry max_tokens (1024 when the recipe sets none): so does the cap.
    assert AnthropicMessages("http://x/v1", "m").reply_limit({}) == reply_limit({"max_tokens": 1024})
    assert OpenAIChat("http://x/v1", "m", max_reply_bytes=5000).reply_limit(SAMPLING) == 5000


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_reply_far_past_max_tokens_is_refused_and_retryable(
    provider: str, transport: str, sim_server
) -> None:
    sim = sim_server(rate_oversize=1.0, oversize_bytes=5_000_000)
    error = await refused(provider, sim.base_url)
    assert f"larger than {CAP_256:,} bytes" in str(error) and "max_tokens" in str(error)
    # --max-reply-bytes: the user's cap, both ways.
    assert len(await ask(provider, sim.base_url, max_reply_bytes=6_000_000)) > 5_000_000
    error = await refused(provider, sim.base_url, max_reply_bytes=1_000_000)
    assert "larger than 1,000,000 bytes" in str(error) and "--max-reply-bytes" in str(error)


def _peak_during(coro_factory) -> tuple[BaseException | None, int]:
    """(the error the coroutine raised, the most memory Python held meanwhile beyond the start)."""

    async def go() -> BaseException | None:
        try:
            await coro_factory()
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            return e
        return None

    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        error = asyncio.run(go())
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return error, peak


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_an_endless_body_is_cut_off_at_the_cap(provider: str, transport: str, sim_server) -> None:
    sim = sim_server(rate_endless=1.0)
    error, peak = _peak_during(lambda: ask(provider, sim.base_url, request_timeout_s=20.0))
    assert isinstance(error, TeacherError) and error.retryable
    assert f"larger than {CAP_256:,} bytes" in str(error)
    assert peak < 8 * MB, f"{peak:,} bytes held for a reply capped at {CAP_256:,}"
    assert sim.stats()["endless"] == 1


def test_a_gzip_bomb_never_inflates_past_the_cap(transport: str, sim_server) -> None:
    bomb_bytes = 64 * MB
    sim_module._gzip_bomb(bomb_bytes)  # made before measuring: the server shares this process
    sim = sim_server(rate_gzip_bomb=1.0, bomb_bytes=bomb_bytes)
    error, peak = _peak_during(lambda: ask("openai", sim.base_url))
    assert isinstance(error, TeacherError) and error.retryable
    if transport == "aiohttp":  # asks for gzip and inflates it: cut off at the cap
        assert f"larger than {CAP_256:,} bytes" in str(error)
    else:  # never asks for gzip, never inflates: the compressed bytes are not JSON
        assert "unreadable" in str(error)
    assert peak < 8 * MB, f"{peak:,} bytes held for a reply capped at {CAP_256:,}"


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_body_that_trickles_forever_hits_the_request_timeout(
    provider: str, transport: str, sim_server
) -> None:
    sim = sim_server(rate_endless=1.0, endless_interval_s=0.05)  # ~1.3 KB/s: never reaches the cap
    error = await refused(provider, sim.base_url, request_timeout_s=1.0)
    assert "timed out" in str(error)


@pytest.mark.parametrize(
    ("coding", "pack"),
    [("gzip", gzip.compress), ("deflate", zlib.compress), ("x-gzip", gzip.compress)],
)
async def test_compressed_answers_still_read_through_aiohttp(monkeypatch, coding: str, pack) -> None:
    monkeypatch.setattr(transports_module, "USE_WIRE", False)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while (req := await read_request(reader)) is not None:
            assert b"accept-encoding: gzip, deflate\r\n" in req[0].lower()
            writer.write(answer(pack(OK_BODY), extra=b"Content-Encoding: %s\r\n" % coding.encode()))
            await writer.drain()

    async with Scripted(handler) as s:
        assert await ask("openai", s.url) == "{}"


async def test_an_encoding_not_asked_for_is_a_retryable_error(monkeypatch) -> None:
    monkeypatch.setattr(transports_module, "USE_WIRE", False)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(answer(OK_BODY, extra=b"Content-Encoding: br\r\n"))
        await writer.drain()

    async with Scripted(handler) as s:
        error = await refused("openai", s.url)
    assert "Content-Encoding" in str(error)


# --- the plain-http client's edges, byte by byte


async def test_a_reply_of_exactly_the_limit_passes_and_one_byte_more_fails() -> None:
    reply = answer()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while await read_request(reader) is not None:
            writer.write(reply)
            await writer.drain()

    async with Scripted(handler) as s:
        p = pool(s.url)
        assert (await p.request("POST", "/v1/x", b"{}", limit=len(reply)))[2] == OK_BODY
        with pytest.raises(WireError) as info:
            await p.request("POST", "/v1/x", b"{}", limit=len(reply) - 1)
        assert info.value.oversize and not p._idle  # the connection it came on is not reused
        p.close()


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n",  # said up front
        b"HTTP/1.1 200 OK\r\nX-Endless: ",  # a header that never ends
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n",  # a body delimited by the close, never closed
    ],
)
async def test_past_the_limit_fails_at_once_whatever_grows(head: bytes) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(head)
        try:
            while True:
                writer.write(b"a" * 4096)
                await writer.drain()
                await asyncio.sleep(0.01)
        except ConnectionError:
            pass

    async with Scripted(handler) as s:
        p = pool(s.url, timeout=30.0)
        with pytest.raises(WireError) as info:
            await p.request("POST", "/v1/x", b"{}", limit=64 * 1024)
        p.close()
    assert info.value.oversize and not info.value.timeout
