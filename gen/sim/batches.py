"""The simulator's batch APIs: OpenAI's Files and Batch endpoints and Anthropic's Message Batches.

Each request line of a batch is answered when the batch is created, by the same code (and the same
fault draws for broken, fenced or cut answers) as a chat request; the batch then shows `in_progress`
until `batch_delay_s` has passed, and `completed` / `ended` after. Per-request failures
(`batch_rate_failed`, a 500 for that request alone) and expiry (`batch_rate_expired`) are drawn from
their own seeded RNG. `batch_reject` refuses every batch as a whole with that message (OpenAI: the
batch `failed` at validation; Anthropic: a 400 at creation), as does a batch over
`batch_max_requests`, with duplicate custom_ids, or (Anthropic) a custom_id past its rule. The `rpm` limit
applies to polls too. `batch_hold` ("upload", "create",
"accepted": the batch is made but its id not sent, "poll" or "download") keeps the first such request
unanswered until its client goes away: a test kills gen there.
`batch_results` plays a hostile provider's results file: "missing" (the first result left out),
"duplicate" (every result twice), "foreign" (one for a custom_id of no request), "garbled" (lines that
are not JSON), "oversize" (the first answer padded by `oversize_bytes`), "uncounted" (the batch object
reports every request count as 0). `batch_cancel_ran`: an OpenAI batch cancelled after its requests ran
keeps their results (its output and error files), as the real API keeps what completed before a cancel.

Counters (in /sim/stats): `batches` accepted, `batch_requests` (requests in accepted batches: what a
provider bills), `batch_failed`, `batch_expired`, `batch_rejected`, `batch_uploads`, `batch_polls`,
`batch_downloads`, `batch_cancels`, `batch_held`.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import MultipartReader, web

from gen.sim.dialects import BadRequest

if TYPE_CHECKING:
    from gen.sim.server import _Simulator

STATS = (
    "batches", "batch_requests", "batch_failed", "batch_expired", "batch_rejected", "batch_uploads",
    "batch_polls", "batch_downloads", "batch_cancels", "batch_held",
)  # fmt: skip
HOLD_POINTS = ("upload", "create", "accepted", "poll", "download")
RESULT_FAULTS = ("missing", "duplicate", "foreign", "garbled", "oversize", "uncounted")
MAX_UPLOAD_BYTES = 256 * 1024 * 1024  # above both providers' documented file and batch sizes
_CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")  # Anthropic's rule for a request's custom_id
_CONTENT_FAULTS = ("rate_invalid_json", "rate_fenced_json", "rate_truncated")


@dataclass(slots=True)
class _Batch:
    id: str
    kind: str  # "openai" or "anthropic"
    created: float
    lines: list[tuple[str, str, bytes]]  # (custom_id, outcome: ok | failed | expired, body)
    metadata: dict[str, Any] = field(default_factory=dict)
    input_file_id: str | None = None
    cancelled_at: float | None = None
    rejected: str | None = None


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


class SimBatches:
    """The batch endpoints of one simulator, sharing its config, answers, fault draws and counters."""

    def __init__(self, sim: _Simulator) -> None:
        self.sim = sim
        self.config = sim.config
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, _Batch] = {}
        self._rng = random.Random(f"{sim.config.seed}/batch")
        self._held: set[str] = set()
        self.submitted: list[str] = []  # the custom_id of every request of every accepted batch, in order

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/files", self.upload)
        app.router.add_get("/v1/files/{id}/content", self.content)
        app.router.add_post("/v1/batches", self.create_openai)
        app.router.add_get("/v1/batches", self.list_openai)
        app.router.add_get("/v1/batches/{id}", self.get_openai)
        app.router.add_post("/v1/batches/{id}/cancel", self.cancel_openai)
        app.router.add_post("/v1/messages/batches", self.create_anthropic)
        app.router.add_get("/v1/messages/batches", self.list_anthropic)
        app.router.add_get("/v1/messages/batches/{id}", self.get_anthropic)
        app.router.add_post("/v1/messages/batches/{id}/cancel", self.cancel_anthropic)
        app.router.add_get("/v1/messages/batches/{id}/results", self.results_anthropic)

    # --- shared ---

    async def _hold(self, point: str, request: web.Request) -> bool:
        """The first request at the configured point waits, unanswered, until its client is gone; True
        then (the caller does nothing more: nobody is left to answer)."""
        if self.config.batch_hold != point or point in self._held:
            return False
        self._held.add(point)
        self.sim.stats["batch_held"] += 1
        while request.transport is not None and not request.transport.is_closing():
            await asyncio.sleep(0.02)
        return True

    def _answer(self, dialect: Any, raw: bytes) -> tuple[str, bytes, int]:
        """(outcome, body, status) of one request line, answered now."""
        u = self._rng.random()
        if u < self.config.batch_rate_failed:
            self.sim.stats["batch_failed"] += 1
            return "failed", b"", 500
        if u < self.config.batch_rate_failed + self.config.batch_rate_expired:
            self.sim.stats["batch_expired"] += 1
            return "expired", b"", 0
        try:
            chat = dialect.parse(raw)
        except BadRequest as exc:
            return "failed", orjson.dumps({"error": {"message": exc.message}}), 400
        if chat.model is not None and chat.model != self.config.model:
            return "failed", orjson.dumps({"error": {"message": f"model {chat.model} not found"}}), 404
        self.sim._set_answer(chat)  # a batch's answers get an input's reference right as a chat's do
        fault = self.sim._draw_fault() if self.sim._bands else None
        if fault not in _CONTENT_FAULTS:
            fault = None
        # The prompt cache as for a chat request: providers cache within batches too (best effort).
        cache = self.sim.cache
        if chat.marked is not None:
            chat.cached, chat.written = cache.marked(*chat.marked)
        elif dialect is self.sim._openai:
            chat.cached = cache.automatic(chat.prefixes)
        digest = hashlib.sha256(orjson.dumps(chat.messages) + b"\0" + chat.salt).digest()
        rng = random.Random(int.from_bytes(digest[:8], "big"))
        try:
            body = dialect.answer(chat, rng, fault, self.sim.stats)
        except BadRequest as exc:
            return "failed", orjson.dumps({"error": {"message": exc.message}}), 400
        if chat.marked is not None:
            cache.store_marked(*chat.marked)
        elif dialect is self.sim._openai:
            cache.store_automatic(chat.prefixes)
        return "ok", body, 200

    def _accept(
        self,
        kind: str,
        requests: list[tuple[str, bytes]],
        echo: str | None = None,
        credential: str | None = None,
        **extra: Any,
    ) -> _Batch:
        batch = _Batch(
            id=("batch_" if kind == "openai" else "msgbatch_") + secrets.token_hex(12),
            kind=kind,
            created=time.time(),
            lines=[],
            **extra,
        )
        limit = self.config.batch_max_requests
        ids = [cid for cid, _ in requests]
        if self.config.batch_reject is not None:
            batch.rejected = self.config.batch_reject
        elif limit is not None and len(requests) > limit:
            batch.rejected = f"a batch may hold at most {limit:,} requests; this one holds {len(requests):,}"
        elif not requests:
            batch.rejected = "a batch needs at least one request"
        elif len(set(ids)) != len(ids):
            batch.rejected = "custom_id values must be unique within a batch"
        elif kind == "anthropic" and not all(_CUSTOM_ID.fullmatch(cid) for cid in ids):
            batch.rejected = "custom_id must match ^[a-zA-Z0-9_-]{1,64}$"
        if batch.rejected is not None:
            self.sim.stats["batch_rejected"] += 1
        else:
            dialect = self.sim._openai if kind == "openai" else self.sim._anthropic
            batch.lines = [(cid, *self._answer(dialect, raw)[:2]) for cid, raw in requests]
            if echo is not None:  # echo_headers: a failed request's message carries the request headers
                message = f"The server had an error (simulated) (request headers: {echo})"
                failed = orjson.dumps({"error": {"message": message}})
                batch.lines = [(c, o, failed if o == "failed" and not b else b) for c, o, b in batch.lines]
            if credential is not None:  # echo_key: every answer names the credential as its model
                batch.lines = [(c, o, _named(b, credential) if o == "ok" else b) for c, o, b in batch.lines]
            self.submitted += [cid for cid, _ in requests]
            self.sim.stats["batches"] += 1
            self.sim.stats["batch_requests"] += len(requests)
        self.batches[batch.id] = batch
        return batch

    def _echo(self, request: web.Request) -> str | None:
        """With `echo_headers`, the request's headers (the API key among them), as a hostile provider
        puts them in the messages of a batch's failed requests."""
        if not self.config.echo_headers:
            return None
        return orjson.dumps({str(k): v for k, v in request.headers.items()}).decode()

    def _credential(self, request: web.Request) -> str | None:
        """With `echo_key`, the request's credential, which the batch's answers then name as their model."""
        if not self.config.echo_key:
            return None
        return request.headers.get("Authorization") or request.headers.get("x-api-key") or ""

    def _limited(self, dialect: Any) -> web.Response | None:
        """The `rpm` limit on polls too (a provider rate-limits its batch endpoints): a 429 with the
        protocol's Retry-After and rate-limit headers, or None."""
        if self.sim._window is None:
            return None
        wait, headers = self.sim._admit(dialect)
        if wait is None:
            return None
        self.sim.stats["rate_limited"] += 1
        return dialect.rate_limited(wait, headers)

    def _done(self, batch: _Batch) -> bool:
        return batch.cancelled_at is not None or time.time() >= batch.created + self.config.batch_delay_s

    def _batch(self, request: web.Request, kind: str) -> _Batch:
        batch = self.batches.get(request.match_info["id"])
        if batch is None or batch.kind != kind:
            raise web.HTTPNotFound(
                body=orjson.dumps({"error": {"message": "No such batch"}}), content_type="application/json"
            )
        return batch

    # --- OpenAI: Files and Batch ---

    async def upload(self, request: web.Request) -> web.StreamResponse:
        refused = self.sim._openai.refuse(request)
        if refused is not None:
            return refused[1]
        self.sim.stats["batch_uploads"] += 1
        if await self._hold("upload", request):
            return web.Response()
        try:  # the request's own multipart() caps the file at aiohttp's 1 MiB client_max_size
            reader = MultipartReader(request.headers, request.content, client_max_size=MAX_UPLOAD_BYTES)
        except TypeError:  # an aiohttp from before the cap
            reader = MultipartReader(request.headers, request.content)
        purpose, data = None, None
        while (part := await reader.next()) is not None:
            if part.name == "purpose":
                purpose = (await part.read()).decode()
            elif part.name == "file":
                data = bytes(await part.read())  # type: ignore[union-attr]
        if purpose != "batch" or data is None:
            return _openai_error(400, "a batch file needs purpose=batch and a file part")
        file_id = "file-" + secrets.token_hex(12)
        self.files[file_id] = data
        doc = {"id": file_id, "object": "file", "bytes": len(data), "purpose": "batch"}
        return web.json_response(doc, dumps=lambda d: orjson.dumps(d).decode())

    async def content(self, request: web.Request) -> web.StreamResponse:
        refused = self.sim._openai.refuse(request)
        if refused is not None:
            return refused[1]
        self.sim.stats["batch_downloads"] += 1
        if await self._hold("download", request):
            return web.Response()
        data = self.files.get(request.match_info["id"])
        if data is None:
            return _openai_error(404, "No such file")
        return web.Response(body=data, content_type="application/jsonl")

    async def create_openai(self, request: web.Request) -> web.StreamResponse:
        refused = self.sim._openai.refuse(request)
        if refused is not None:
            return refused[1]
        body = orjson.loads(await request.read())
        data = self.files.get(body.get("input_file_id"))
        if data is None:
            return _openai_error(400, "input_file_id names no uploaded file")
        if body.get("completion_window") != "24h" or body.get("endpoint") != "/v1/chat/completions":
            return _openai_error(400, "completion_window must be 24h and endpoint /v1/chat/completions")
        requests = []
        for line in data.splitlines():
            if line.strip():
                item = orjson.loads(line)
                requests.append((item["custom_id"], orjson.dumps(item["body"])))
        if await self._hold("create", request):
            return web.Response()  # the batch is not made: a client killed here paid nothing
        batch = self._accept(
            "openai",
            requests,
            self._echo(request),
            self._credential(request),
            metadata=body.get("metadata") or {},
            input_file_id=body["input_file_id"],
        )
        if await self._hold("accepted", request):  # made, but its id never reaches the client
            return web.Response()
        return self._openai_doc(batch)

    def _openai_doc(self, batch: _Batch) -> web.Response:
        return web.Response(body=orjson.dumps(self._openai_obj(batch)), content_type="application/json")

    def _openai_obj(self, batch: _Batch) -> dict[str, Any]:
        done = self._done(batch)
        doc: dict[str, Any] = {
            "id": batch.id,
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "errors": None,
            "input_file_id": batch.input_file_id,
            "completion_window": "24h",
            "status": "in_progress",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": int(batch.created),
            "request_counts": {"total": len(batch.lines), "completed": 0, "failed": 0},
            "metadata": batch.metadata,
        }
        if batch.rejected is not None:
            doc["status"] = "failed"
            doc["errors"] = {"object": "list", "data": [{"code": "invalid_batch", "message": batch.rejected}]}
            return doc
        if batch.cancelled_at is not None:
            doc["status"] = "cancelled"
            if not self.config.batch_cancel_ran:
                return doc
        elif not done:
            return doc
        ok = [(c, b) for c, o, b in batch.lines if o == "ok"]
        bad = [(c, o, b) for c, o, b in batch.lines if o != "ok"]
        if batch.cancelled_at is None:
            doc["status"] = "completed"
        doc["request_counts"] = {"total": len(batch.lines), "completed": len(ok), "failed": len(bad)}
        if self.config.batch_results == "uncounted":  # a gateway that counts nothing
            doc["request_counts"] = {"total": 0, "completed": 0, "failed": 0}
        if ok:
            out_id = f"file-out-{batch.id}"
            out = [
                orjson.dumps(
                    {
                        "id": f"batch_req_{i}",
                        "custom_id": c,
                        "response": {"status_code": 200, "request_id": str(i), "body": orjson.loads(b)},
                        "error": None,
                    }
                )
                + b"\n"
                for i, (c, b) in enumerate(ok)
            ]
            fault = self.config.batch_results
            self.files.setdefault(
                out_id, b"".join(out) if fault is None else _hostile(fault, out, self.config.oversize_bytes)
            )
            doc["output_file_id"] = out_id
        if bad:
            err_id = f"file-err-{batch.id}"
            self.files.setdefault(err_id, b"".join(_openai_error_line(c, o, b) + b"\n" for c, o, b in bad))
            doc["error_file_id"] = err_id
        return doc

    async def get_openai(self, request: web.Request) -> web.StreamResponse:
        refused = self.sim._openai.refuse(request)
        if refused is not None:
            return refused[1]
        self.sim.stats["batch_polls"] += 1
        if await self._hold("poll", request):
            return web.Response()
        limited = self._limited(self.sim._openai)
        return limited or self._openai_doc(self._batch(request, "openai"))

    async def list_openai(self, request: web.Request) -> web.StreamResponse:
        refused = self.sim._openai.refuse(request)
        if refused is not None:
            return refused[1]
        mine = [b for b in reversed(self.batches.values()) if b.kind == "openai"]
        after = request.query.get("after")
        if after:
            ids = [b.id for b in mine]
            mine = mine[ids.index(after) + 1 :] if after in ids else []
        limit = int(request.query.get("limit", "20"))
        page = mine[:limit]
        doc = {"object": "list", "data": [self._openai_obj(b) for b in page], "has_more": len(mine) > limit}
        return web.Response(body=orjson.dumps(doc), content_type="application/json")

    async def cancel_openai(self, request: web.Request) -> web.StreamResponse:
        refused = self.sim._openai.refuse(request)
        if refused is not None:
            return refused[1]
        batch = self._batch(request, "openai")
        self.sim.stats["batch_cancels"] += 1
        if not self._done(batch) and batch.rejected is None:
            batch.cancelled_at = time.time()
        return self._openai_doc(batch)

    # --- Anthropic: Message Batches ---

    async def create_anthropic(self, request: web.Request) -> web.StreamResponse:
        refused = self.sim._anthropic.refuse(request)
        if refused is not None:
            return refused[1]
        self.sim.stats["batch_uploads"] += 1
        if await self._hold("upload", request):
            return web.Response()
        body = orjson.loads(await request.content.read())  # past aiohttp's 1 MiB client_max_size
        requests = [(r["custom_id"], orjson.dumps(r["params"])) for r in body.get("requests") or []]
        if await self._hold("create", request):
            return web.Response()
        batch = self._accept("anthropic", requests, self._echo(request), self._credential(request))
        if await self._hold("accepted", request):  # made, but its id never reaches the client
            return web.Response()
        if batch.rejected is not None:
            doc = {"type": "error", "error": {"type": "invalid_request_error", "message": batch.rejected}}
            return web.Response(body=orjson.dumps(doc), status=400, content_type="application/json")
        return self._anthropic_doc(request, batch)

    def _anthropic_doc(self, request: web.Request, batch: _Batch) -> web.Response:
        done = self._done(batch)
        n = len(batch.lines)
        counts = {"processing": n, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        if batch.cancelled_at is not None:
            counts = {**counts, "processing": 0, "canceled": n}
        elif done:
            counts["processing"] = 0
            for _, outcome, _ in batch.lines:
                counts[{"ok": "succeeded", "failed": "errored", "expired": "expired"}[outcome]] += 1
        if self.config.batch_results == "uncounted":  # a gateway that counts nothing
            counts = dict.fromkeys(counts, 0)
        results = f"{request.scheme}://{request.host}/v1/messages/batches/{batch.id}/results"
        doc = {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": "ended" if done else "in_progress",
            "request_counts": counts,
            "ended_at": _iso(time.time()) if done else None,
            "created_at": _iso(batch.created),
            "expires_at": _iso(batch.created + timedelta(hours=24).total_seconds()),
            "archived_at": None,
            "cancel_initiated_at": _iso(batch.cancelled_at) if batch.cancelled_at else None,
            "results_url": results if done else None,
        }
        return web.Response(body=orjson.dumps(doc), content_type="application/json")

    async def list_anthropic(self, request: web.Request) -> web.StreamResponse:
        refused = self.sim._anthropic.refuse(request)
        if refused is not None:
            return refused[1]
        mine = [b for b in reversed(self.batches.values()) if b.kind == "anthropic" and b.rejected is None]
        after = request.query.get("after_id")
        if after:
            ids = [b.id for b in mine]
            mine = mine[ids.index(after) + 1 :] if after in ids else []
        limit = int(request.query.get("limit", "20"))
        page = mine[:limit]
        docs = [orjson.loads(self._anthropic_doc(request, b).body) for b in page]  # type: ignore[arg-type]
        doc = {
            "data": docs,
            "has_more": len(mine) > limit,
            "first_id": page[0].id if page else None,
            "last_id": page[-1].id if page else None,
        }
        return web.Response(body=orjson.dumps(doc), content_type="application/json")

    async def get_anthropic(self, request: web.Request) -> web.StreamResponse:
        refused = self.sim._anthropic.refuse(request)
        if refused is not None:
            return refused[1]
        self.sim.stats["batch_polls"] += 1
        if await self._hold("poll", request):
            return web.Response()
        limited = self._limited(self.sim._anthropic)
        return limited or self._anthropic_doc(request, self._batch(request, "anthropic"))

    async def cancel_anthropic(self, request: web.Request) -> web.StreamResponse:
        refused = self.sim._anthropic.refuse(request)
        if refused is not None:
            return refused[1]
        batch = self._batch(request, "anthropic")
        self.sim.stats["batch_cancels"] += 1
        if not self._done(batch):
            batch.cancelled_at = time.time()
        return self._anthropic_doc(request, batch)

    async def results_anthropic(self, request: web.Request) -> web.StreamResponse:
        refused = self.sim._anthropic.refuse(request)
        if refused is not None:
            return refused[1]
        batch = self._batch(request, "anthropic")
        self.sim.stats["batch_downloads"] += 1
        if await self._hold("download", request):
            return web.Response()
        if not self._done(batch):
            doc = {"type": "error", "error": {"type": "invalid_request_error", "message": "not ended yet"}}
            return web.Response(body=orjson.dumps(doc), status=400, content_type="application/json")
        lines = []
        for cid, outcome, body in batch.lines:
            if batch.cancelled_at is not None:
                result: dict[str, Any] = {"type": "canceled"}
            elif outcome == "ok":
                result = {"type": "succeeded", "message": orjson.loads(body)}
            elif outcome == "expired":
                result = {"type": "expired"}
            else:
                message = "Internal server error (simulated)."
                if body:
                    message = orjson.loads(body)["error"]["message"]
                result = {
                    "type": "errored",
                    "error": {"type": "error", "error": {"type": "api_error", "message": message}},
                }
            lines.append(orjson.dumps({"custom_id": cid, "result": result}) + b"\n")
        if self.config.batch_results is not None:
            return web.Response(
                body=_hostile(self.config.batch_results, lines, self.config.oversize_bytes),
                content_type="application/binary",
            )
        return web.Response(body=b"".join(lines), content_type="application/binary")


def _openai_error(status: int, message: str) -> web.Response:
    doc = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
    return web.Response(body=orjson.dumps(doc), status=status, content_type="application/json")


def _openai_error_line(cid: str, outcome: str, body: bytes) -> bytes:
    if outcome == "expired":
        error = {"code": "batch_expired", "message": "This request could not be executed before the "
                 "completion window expired."}  # fmt: skip
        return orjson.dumps({"id": "batch_req", "custom_id": cid, "response": None, "error": error})
    message = orjson.loads(body) if body else {"error": {"message": "The server had an error (simulated)."}}
    status = 500 if not body else 400
    response = {"status_code": status, "request_id": "sim", "body": message}
    return orjson.dumps({"id": "batch_req", "custom_id": cid, "response": response, "error": None})


def _hostile(fault: str, lines: list[bytes], oversize: int) -> bytes:
    """A results file as a hostile or broken provider sends it (SimConfig.batch_results)."""
    if fault == "missing":
        lines = lines[1:]
    elif fault == "duplicate":
        lines = [line for line in lines for _ in range(2)]
    elif fault == "foreign" and lines:
        doc = orjson.loads(lines[0])
        doc["custom_id"] = "f" * 32 + "-1-0"
        lines = [orjson.dumps(doc) + b"\n", *lines]
    elif fault == "garbled":
        lines = [b'{"custom_id": "\n', *lines, b"\xff\xfe not json\n"]
    elif fault == "oversize" and lines:  # the first answer far past what its max_tokens allows
        filler = b"word " * (oversize // 5)
        first = (
            lines[0]
            .replace(b'"text":"', b'"text":"' + filler, 1)
            .replace(b'"content":"', b'"content":"' + filler, 1)
        )
        lines = [first, *lines[1:]]
    return b"".join(lines)


def _named(body: bytes, credential: str) -> bytes:
    doc = orjson.loads(body)
    doc["model"] = credential
    return orjson.dumps(doc)
