"""Anthropic's Message Batches: the requests go in one `POST /v1/messages/batches`, the batch is polled
(`GET /v1/messages/batches/{id}`) until its processing_status is "ended", and its results are read from
its `results_url` (JSONL, one result per request, in any order).

Limits, from Anthropic's API reference "Create a Message Batch" (docs.anthropic.com/en/api/
creating-message-batches: "Batches may contain up to 100,000 requests and be up to 256 MB in total
size") and the batch-processing guide (platform.claude.com/docs/build-with-claude/batch-processing).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import orjson

from gen.errors import TeacherError, redact
from gen.teachers.anthropic import AnthropicMessages
from gen.teachers.batch import BatchLimits, BatchResult, BatchState
from gen.teachers.http import error_from_response
from gen.teachers.wire import WireError

LIMITS = BatchLimits(max_requests=100_000, max_bytes=256 * 1000 * 1000)
MAX_RESULTS_BYTES = 8 << 30
LIST_PAGES = 20  # batches listed (100 a page) when looking for one whose id a crash lost
_OUTCOME = {"succeeded": "ok", "errored": "failed", "expired": "expired", "canceled": "canceled"}


class AnthropicBatches(AnthropicMessages):
    """Message Batches against one Anthropic base URL. Built like AnthropicMessages."""

    limits = LIMITS

    def line(self, custom_id: str, messages: list[dict[str, str]], *, seed: int, sampling: Any) -> bytes:
        params = self.body(messages, seed=seed, sampling=sampling)
        return b'{"custom_id":%s,"params":%s}' % (orjson.dumps(custom_id), params)

    async def submit(self, lines: list[bytes], name: str) -> BatchState:
        body = b'{"requests":[%s]}' % b",".join(lines)
        raw, _ = await self._post(self.base_url + "/messages/batches", body, 1 << 20)
        return _state(_doc(raw))

    async def find(self, name: str, *, since: float, count: int, known: set[str]) -> BatchState | None:
        """A Message Batch carries no metadata: the newest one of `count` requests, created since
        `since` (less a minute of clock skew), that the log does not know. Another process's batch of
        the same size from the same minutes could be taken for it; its results then match none of the
        requests, which are sent again once it ends: delayed, never paid twice."""
        params = {"limit": "100"}
        for _ in range(LIST_PAGES):
            doc = await self._get_json(self.base_url + "/messages/batches", params, strict=True)
            data = doc.get("data") if isinstance(doc, dict) else None
            for b in data or []:
                try:
                    state = _state(b)
                    created = datetime.fromisoformat(str(b.get("created_at"))).timestamp()
                except (TeacherError, ValueError):
                    continue
                if created < since - 60:
                    return None  # newest first: the rest are older still
                if state.id not in known and sum(state.counts.values()) == count:
                    return state
            if not data or not doc.get("has_more") or not doc.get("last_id"):
                return None
            params["after_id"] = str(doc["last_id"])
        return None

    async def state(self, batch_id: str) -> BatchState:
        return _state(await self._get_json(f"{self.base_url}/messages/batches/{batch_id}", strict=True))

    async def cancel(self, batch_id: str) -> BatchState:
        raw, _ = await self._post(f"{self.base_url}/messages/batches/{batch_id}/cancel", b"", 1 << 20)
        return _state(_doc(raw))

    async def results(self, state: BatchState, sampling: Any) -> list[BatchResult]:
        url = state.raw.get("results_url")
        own = urlsplit(self.base_url)
        # The key goes only to the host it was given for: a results_url elsewhere is read from here.
        if not isinstance(url, str) or urlsplit(url)[:2] != own[:2]:
            url = f"{self.base_url}/messages/batches/{state.id}/results"
        total = max(1, sum(state.counts.values()))
        limit = min(MAX_RESULTS_BYTES, total * self.reply_limit(sampling) + (1 << 20))
        try:
            status, headers, raw = await self._transport.request("GET", url, b"", limit)
        except WireError as e:
            raise self._failed(e) from None
        if status >= 400:
            raise error_from_response(status, raw, headers)
        return [r for r in map(self._result, raw.splitlines()) if r is not None]

    def _result(self, line: bytes) -> BatchResult | None:
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(doc, dict) or not isinstance(doc.get("custom_id"), str):
            return None
        result = doc.get("result")
        kind = result.get("type") if isinstance(result, Mapping) else None
        outcome = _OUTCOME.get(kind)  # type: ignore[arg-type]
        cid = doc["custom_id"]
        if outcome is None:
            return BatchResult(cid, "failed", error=f"unknown result type {str(kind)[:40]!r}")
        if outcome == "ok":
            try:
                return BatchResult(cid, "ok", self.read_completion(result.get("message")))
            except TeacherError as e:
                return BatchResult(cid, "failed", error=str(e))
        error = result.get("error") if outcome == "failed" else None
        inner = error.get("error") if isinstance(error, Mapping) else None
        message = inner.get("message") if isinstance(inner, Mapping) else None
        return BatchResult(cid, outcome, error=redact(str(message or kind))[:500])


def _doc(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise TeacherError(f"unreadable batch reply ({len(raw)} bytes)", retryable=True) from None


def _state(doc: Any) -> BatchState:
    if not (isinstance(doc, dict) and isinstance(doc.get("id"), str)):
        raise TeacherError("the batch reply is not a message batch", retryable=True)
    status = str(doc.get("processing_status"))
    counts = doc.get("request_counts")
    return BatchState(
        id=doc["id"],
        status=status,
        ended=status == "ended",
        counts={k: v for k, v in (counts or {}).items() if type(v) is int},
        raw=doc,
    )
