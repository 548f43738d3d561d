"""What a probe of the plain-http client found (issue 12): each against a scripted server, byte by byte."""

from __future__ import annotations

import asyncio

import pytest
from test_wire import MESSAGES, OK_BODY, Scripted, pool, read_request

from gen.errors import TeacherError
from gen.teachers.openai import OpenAIChat
from gen.teachers.wire import WireError


async def test_an_interim_answer_then_a_closed_connection_is_not_an_answer() -> None:
    # `100 Continue` (no length: it has no body) and then the server hangs up: there is no final answer.
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()

    async with Scripted(handler) as s:
        p = pool(s.url)
        with pytest.raises(WireError, match="connection lost before the answer"):
            await p.request("POST", "/v1/x", b"{}")
        p.close()
        client = OpenAIChat(s.url, "m")
        with pytest.raises(TeacherError) as info:
            await client.complete(MESSAGES, seed=1, sampling={})
        await client.close()
    assert info.value.retryable


async def test_a_non_ascii_path_is_percent_encoded() -> None:
    async with Scripted(None) as s:  # type: ignore[arg-type]
        s.handler = s.serve_forever
        client = OpenAIChat(s.url.replace("/v1", "/prïvé v1"), "m")
        assert (await client.complete(MESSAGES, seed=1, sampling={})).text == "{}"
        await client.close()
    assert s.requests[0].startswith(b"POST /pr%C3%AFv%C3%A9%20v1/chat/completions HTTP/1.1\r\n")


async def test_control_characters_in_a_path_cannot_inject_a_header() -> None:
    async with Scripted(None) as s:  # type: ignore[arg-type]
        s.handler = s.serve_forever
        p = pool(s.url)
        await p.request("POST", "/v1/x\r\nX-Injected: 1", b"{}")
        p.close()
    head = s.requests[0].split(b"\r\n\r\n")[0]
    assert head.startswith(b"POST /v1/x%0D%0AX-Injected:%201 HTTP/1.1\r\n")
    assert b"\r\nX-Injected" not in head


@pytest.mark.parametrize("coding", [b"identity", b"gzip", b"chunked, identity"])
async def test_a_transfer_coding_that_is_not_chunked_last_is_read_to_the_close(coding: bytes) -> None:
    # RFC 9112 6.3: a response whose final transfer coding is not chunked ends when the connection does.
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: %s\r\n\r\n" % coding + OK_BODY)
        await writer.drain()

    async with Scripted(handler) as s:
        p = pool(s.url)
        status, _, body = await p.request("POST", "/v1/x", b"{}")
        p.close()
    assert status == 200 and body == OK_BODY


async def test_chunked_last_is_still_a_known_length() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while await read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
                         % (len(OK_BODY), OK_BODY))  # fmt: skip
            await writer.drain()

    async with Scripted(handler) as s:
        p = pool(s.url)
        for _ in range(3):
            assert (await p.request("POST", "/v1/x", b"{}"))[2] == OK_BODY
        p.close()
    assert s.connections == 1  # chunked: the connection stays usable
