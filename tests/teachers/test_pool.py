"""Several endpoints: balanced by outstanding requests, a failing one ejected, probed and re-admitted."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pyarrow.parquet as pq

from gen import RunOptions, run
from gen.cli import main
from gen.errors import TeacherError
from gen.launchers.vllm import _free_port
from gen.sim import SimConfig, SimThread
from gen.teachers.openai import OpenAIChat
from gen.teachers.pool import EndpointPool

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "prompts" / "quickstart.toml"
FAKES = ROOT / "tests" / "fakes"
MESSAGES = [{"role": "user", "content": "hello"}]


def _rows(out: Path) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in (out / "data").glob("*.parquet"))


def test_requests_spread_over_replicas(tmp_path: Path, sim_server) -> None:
    sims = [sim_server(latency_ms=5) for _ in range(3)]
    argv = ["run", str(QUICKSTART), "--provider", "openai", "--output", str(tmp_path / "o"), "--no-progress"]
    for s in sims:
        argv += ["--base-url", s.base_url]
    assert main(argv) == 0
    counts = [s.stats()["requests"] for s in sims]
    assert sum(counts) == 240 and min(counts) > 40, counts
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert len(manifest["teacher"]["base_urls"]) == 3


def test_a_failing_replica_is_ejected_and_the_run_carries_on(tmp_path: Path, sim_server, capsys) -> None:
    good = sim_server(latency_ms=2)
    bad = sim_server(rate_drop=1.0)
    argv = [
        "run",
        str(QUICKSTART),
        "--provider",
        "openai",
        "--base-url",
        good.base_url,
        "--base-url",
        bad.base_url,
        "--output",
        str(tmp_path / "o"),
        "--no-progress",
        "--max-concurrency",
        "8",
    ]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "ejected after 5 failures" in err and "carrying on with 1 other" in err
    assert (
        _rows(tmp_path / "o")
        + json.loads((tmp_path / "o" / "manifest.json").read_text())["totals"]["duplicates"]
        == 240
    )
    assert bad.stats()["requests"] < 30  # ejected early, not sent a share of 240


async def test_an_ejected_endpoint_is_probed_and_readmitted() -> None:
    now = [0.0]
    port = _free_port("127.0.0.1")
    live = SimThread(SimConfig())
    live.start()
    down = OpenAIChat(f"http://127.0.0.1:{port}/v1", "gen-sim-1")
    up = OpenAIChat(live.base_url, "gen-sim-1")
    log: list[str] = []
    pool = EndpointPool(
        [("down", down), ("up", up)], eject_after=2, probe_after_s=10, clock=lambda: now[0], log=log.append
    )
    try:
        for _ in range(2):  # both go to "down" first only when it has fewer outstanding; force it:
            try:
                await down.complete(MESSAGES, seed=1, sampling={})
            except TeacherError as e:
                pool._failed(pool.endpoints[0], e)
        assert pool.endpoints[0].ejected_at == 0.0 and "ejected" in log[0]
        for _ in range(5):
            await pool.complete(MESSAGES, seed=1, sampling={})
        assert pool.endpoints[0].requests == 0  # nothing sent to an ejected endpoint before its probe
        revived = SimThread(SimConfig(), port=port)
        revived.start()
        try:
            now[0] = 11.0
            await pool.complete(MESSAGES, seed=1, sampling={})
            assert pool.endpoints[0].requests == 1 and pool.endpoints[0].ejected_at is None
            assert "re-admitted" in log[-1]
        finally:
            await pool.close()
            revived.stop()
    finally:
        live.stop()


def test_provider_vllm_launches_serves_and_stops(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(
        "PATH", os.pathsep.join([str(FAKES), str(Path(sys.executable).parent), os.environ["PATH"]])
    )
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pid_file = tmp_path / "vllm.pid"
    argv_file = tmp_path / "argv.json"
    monkeypatch.setenv("FAKE_VLLM_PID_FILE", str(pid_file))
    monkeypatch.setenv("FAKE_VLLM_ARGV_FILE", str(argv_file))
    out = tmp_path / "o"
    result = run(
        QUICKSTART,
        RunOptions(
            provider="vllm",
            model="org/fake-model-7b",
            license="apache-2.0",
            output=out,
            progress=False,
            limit=20,
            vllm={"max_model_len": 4096, "extra_args": ["--enforce-eager"]},
        ),
    )
    assert result.status == "complete" and result.stats.rows + result.stats.duplicates == 20
    manifest = json.loads((out / "manifest.json").read_text())
    assert (
        manifest["teacher"]["provider"] == "vllm"
        and manifest["teacher"]["launched"][0]["id"] == "org/fake-model-7b"
    )
    assert manifest["teacher"]["launched"][0].get("root")
    argv = json.loads(argv_file.read_text())
    assert "--max-model-len" in argv and "4096" in argv and "--enforce-eager" in argv
    pid = int(pid_file.read_text())
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        asyncio.run(asyncio.sleep(0.05))
    else:
        raise AssertionError("vllm was left running")
