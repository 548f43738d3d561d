"""The simulator's batch endpoints speak the real wire formats: the official `openai` and `anthropic`
SDKs create, poll and read back its batches (Files + Batch API; Message Batches), typed by the SDKs' own
models. gen's batch clients parse the same shapes (tests/test_batch.py runs them end to end)."""

from __future__ import annotations

import io
import json
import time

import pytest

pytestmark = pytest.mark.timeout(60)

KEY = "sk-batch-sdk-key"


def _wait_ended(get, ended) -> object:
    deadline = time.monotonic() + 20
    while True:
        obj = get()
        if ended(obj):
            return obj
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_openai_sdk_runs_a_batch_against_the_simulator(sim_server) -> None:
    openai = pytest.importorskip("openai")
    sim = sim_server(api_key=KEY, batch_delay_s=0.2, batch_rate_expired=0.3)
    lines = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gen-sim-1", "messages": [{"role": "user", "content": f"q{i}"}], "seed": i},
        }
        for i in range(10)
    ]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    with openai.OpenAI(api_key=KEY, base_url=sim.base_url, max_retries=0, timeout=5) as client:
        f = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
        batch = client.batches.create(
            input_file_id=f.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"gen_batch": "x"},
        )
        assert batch.status == "in_progress" and batch.request_counts.total == 10
        done = _wait_ended(lambda: client.batches.retrieve(batch.id), lambda b: b.status == "completed")
        assert done.request_counts.completed + done.request_counts.failed == 10
        out = client.files.content(done.output_file_id).text.splitlines()
        err = client.files.content(done.error_file_id).text.splitlines()
        ok = [json.loads(line) for line in out]
        assert all(r["response"]["status_code"] == 200 for r in ok)
        assert {json.loads(line)["error"]["code"] for line in err} == {"batch_expired"}
        assert {r["custom_id"] for r in ok} | {json.loads(line)["custom_id"] for line in err} == {
            f"r{i}" for i in range(10)
        }
        listed = client.batches.list(limit=10).data
        assert [b.id for b in listed] == [batch.id] and listed[0].metadata == {"gen_batch": "x"}
        other = client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert client.batches.cancel(other.id).status == "cancelled"


def test_anthropic_sdk_runs_a_message_batch_against_the_simulator(sim_server) -> None:
    anthropic = pytest.importorskip("anthropic")
    sim = sim_server(api_key=KEY, batch_delay_s=0.2, batch_rate_failed=0.3)
    root = sim.base_url.removesuffix("/v1")
    requests = [
        {
            "custom_id": f"r{i}",
            "params": {
                "model": "gen-sim-1",
                "max_tokens": 50,
                "messages": [{"role": "user", "content": f"q{i}"}],
            },
        }
        for i in range(10)
    ]
    with anthropic.Anthropic(api_key=KEY, base_url=root, max_retries=0, timeout=5) as client:
        batch = client.messages.batches.create(requests=requests)
        assert batch.processing_status == "in_progress" and batch.request_counts.processing == 10
        done = _wait_ended(
            lambda: client.messages.batches.retrieve(batch.id), lambda b: b.processing_status == "ended"
        )
        assert done.request_counts.succeeded + done.request_counts.errored == 10
        results = list(client.messages.batches.results(batch.id))
        kinds = {r.result.type for r in results}
        assert kinds == {"succeeded", "errored"} and {r.custom_id for r in results} == {
            f"r{i}" for i in range(10)
        }
        assert all(r.result.message.content[0].text for r in results if r.result.type == "succeeded")
        assert [b.id for b in client.messages.batches.list(limit=10).data] == [batch.id]
        other = client.messages.batches.create(requests=requests[:2])
        assert client.messages.batches.cancel(other.id).cancel_initiated_at is not None
