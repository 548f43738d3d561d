"""OpenAI's Batch API: the requests go up as a JSONL file (Files API, purpose "batch"), a batch is created
on it (`POST /v1/batches`, completion_window "24h"), polled (`GET /v1/batches/{id}`), and its output and
error files are read back (`GET /v1/files/{id}/content`). Any OpenAI-compatible server with these
endpoints works; gen's simulator has them.

Limits, from OpenAI's API reference for `POST /v1/batches` (platform.openai.com/docs/api-reference/
batch/create, `input_file_id`: "The file can contain up to 50,000 requests, and can be up to 200 MB in
size"; the same text in the openai-openapi spec that async-openai follows, PR 64bit/async-openai#475).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

import orjson

from gen.errors import TeacherError, redact
from gen.teachers.batch import BatchLimits, BatchResult, BatchState
from gen.teachers.http import error_from_response
from gen.teachers.openai import OpenAIChat, read_completion
from gen.teachers.transports import open_transport
from gen.teachers.wire import WireError

LIMITS = BatchLimits(max_requests=50_000, max_bytes=200 * 1024 * 1024)
ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"  # the only window the API offers
ENDED = frozenset({"completed", "expired", "cancelled", "failed"})
MAX_FILE_BYTES = 8 << 30  # a bound on one output file read back, whatever its lines' caps add up to
LIST_PAGES = 20  # batches listed (100 a page) when looking for one whose id a crash lost


class OpenAIBatches(OpenAIChat):
    """Batches against one OpenAI-compatible base URL (ending in /v1). Built like OpenAIChat."""

    limits = LIMITS

    def __init__(self, base_url: str, model: str, **kwargs: Any) -> None:
        super().__init__(base_url, model, **kwargs)
        api_key = kwargs.get("api_key")
        # The upload is multipart: a transport of its own, whose fixed headers say so.
        self._boundary = "gen-" + secrets.token_hex(16)
        headers = {"Content-Type": f"multipart/form-data; boundary={self._boundary}"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._upload = open_transport(
            base_url,
            headers=headers,
            max_connections=2,
            request_timeout_s=kwargs.get("request_timeout_s", 600.0),
            connect_timeout_s=kwargs.get("connect_timeout_s", 10.0),
        )

    def line(self, custom_id: str, messages: list[dict[str, str]], *, seed: int, sampling: Any) -> bytes:
        body = self.body(messages, seed=seed, sampling=sampling)
        return b'{"custom_id":%s,"method":"POST","url":"%s","body":%s}' % (
            orjson.dumps(custom_id),
            ENDPOINT.encode(),
            body,
        )

    async def submit(self, lines: list[bytes], name: str) -> BatchState:
        data = b"\n".join(lines) + b"\n"
        b = self._boundary.encode()
        if b in data:  # JSON lines cannot hold the random boundary, but a wrong upload would be paid for
            raise TeacherError("the batch file contains the multipart boundary")
        form = (
            b'--%s\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            b'--%s\r\nContent-Disposition: form-data; name="file"; filename="%s.jsonl"\r\n'
            b"Content-Type: application/jsonl\r\n\r\n%s\r\n--%s--\r\n"
        ) % (b, b, name.encode(), data, b)
        try:
            status, headers, raw = await self._upload.request("POST", self.base_url + "/files", form, 1 << 20)
        except WireError as e:
            raise self._failed(e) from None
        if status >= 400:
            raise error_from_response(status, raw, headers)
        file_id = _field(raw, "id")
        body = orjson.dumps(
            {
                "input_file_id": file_id,
                "endpoint": ENDPOINT,
                "completion_window": COMPLETION_WINDOW,
                "metadata": {"gen_batch": name},
            }
        )
        raw, _ = await self._post(self.base_url + "/batches", body, 1 << 20)
        return _state(_doc(raw))

    async def find(self, name: str, *, since: float, count: int, known: set[str]) -> BatchState | None:
        params = {"limit": "100"}
        for _ in range(LIST_PAGES):
            doc = await self._get_json(self.base_url + "/batches", params, strict=True)
            data = doc.get("data") if isinstance(doc, dict) else None
            for b in data or []:
                if isinstance(b, dict) and (b.get("metadata") or {}).get("gen_batch") == name:
                    return _state(b)
            if not data or not doc.get("has_more"):
                return None
            params["after"] = str(data[-1].get("id"))
        return None

    async def state(self, batch_id: str) -> BatchState:
        return _state(await self._get_json(f"{self.base_url}/batches/{batch_id}", strict=True))

    async def cancel(self, batch_id: str) -> BatchState:
        raw, _ = await self._post(f"{self.base_url}/batches/{batch_id}/cancel", b"{}", 1 << 20)
        return _state(_doc(raw))

    async def results(self, state: BatchState, sampling: Any) -> list[BatchResult]:
        total = max(1, int(state.counts.get("total") or 0))
        limit = min(MAX_FILE_BYTES, total * self.reply_limit(sampling) + (1 << 20))
        out: list[BatchResult] = []
        for key in ("output_file_id", "error_file_id"):
            file_id = state.raw.get(key)
            if file_id:
                raw = await self._download(f"{self.base_url}/files/{file_id}/content", limit)
                out += [r for r in map(_result, raw.splitlines()) if r is not None]
        return out

    async def _download(self, url: str, limit: int) -> bytes:
        try:
            status, headers, raw = await self._transport.request("GET", url, b"", limit)
        except WireError as e:
            raise self._failed(e) from None
        if status >= 400:
            raise error_from_response(status, raw, headers)
        return raw

    async def close(self) -> None:
        await self._upload.close()
        await super().close()


def _doc(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise TeacherError(f"unreadable batch reply ({len(raw)} bytes)", retryable=True) from None


def _field(raw: bytes, name: str) -> str:
    doc = _doc(raw)
    value = doc.get(name) if isinstance(doc, dict) else None
    if not isinstance(value, str) or not value:
        raise TeacherError(f"the batch reply has no {name!r}", retryable=True)
    return value


def _state(doc: Any) -> BatchState:
    if not (isinstance(doc, dict) and isinstance(doc.get("id"), str) and isinstance(doc.get("status"), str)):
        raise TeacherError("the batch reply is not a batch object", retryable=True)
    status = doc["status"]
    message = ""
    if status == "failed":
        errors = (doc.get("errors") or {}).get("data") or []
        message = redact("; ".join(str(e.get("message")) for e in errors if isinstance(e, dict)))[:500]
    counts = doc.get("request_counts")
    return BatchState(
        id=doc["id"],
        status=status,
        ended=status in ENDED,
        failed=status == "failed",
        message=message or ("the batch failed" if status == "failed" else ""),
        counts={k: v for k, v in (counts or {}).items() if type(v) is int},
        raw=doc,
    )


def _result(line: bytes) -> BatchResult | None:
    """One output or error file line; None for a line that is not one (blank, garbled)."""
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("custom_id"), str):
        return None
    cid = doc["custom_id"]
    error = doc.get("error")
    code = error.get("code") if isinstance(error, Mapping) else None
    if code == "batch_expired":
        return BatchResult(cid, "expired", error=str(error.get("message") or code))
    if code == "batch_cancelled":
        return BatchResult(cid, "canceled", error=str(error.get("message") or code))
    response = doc.get("response")
    if isinstance(response, Mapping) and response.get("status_code") == 200:
        try:
            return BatchResult(cid, "ok", read_completion(response.get("body")))
        except TeacherError as e:
            return BatchResult(cid, "failed", error=str(e))
    if isinstance(error, Mapping):
        return BatchResult(cid, "failed", error=str(error.get("message") or code or "failed"))
    body = response.get("body") if isinstance(response, Mapping) else None
    err = body.get("error") if isinstance(body, Mapping) else None
    message = err.get("message") if isinstance(err, Mapping) else None
    status = response.get("status_code") if isinstance(response, Mapping) else None
    return BatchResult(cid, "failed", error=str(message or f"status {status}"))
