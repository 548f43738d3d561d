"""The vLLM launcher against a fake `vllm` executable (tests/fakes/vllm) on PATH: real subprocesses,
real HTTP, real signals."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from gen.errors import ConfigError, GenError
from gen.launchers.vllm import LaunchError, VLLMServer, VLLMSettings, vllm_available
from gen.teachers.openai import OpenAIChat

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parents[2]
FAKES = ROOT / "tests" / "fakes"
MESSAGES = [{"role": "user", "content": "Name a river."}]
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and prctl")


@pytest.fixture(autouse=True)
def fake_vllm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The fake first on PATH, this interpreter next (its shebang is `env python3`), gen importable."""
    path = os.pathsep.join([str(FAKES), str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    monkeypatch.setenv("PATH", path)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # default logs land here, here and in subprocesses
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("FAKE_VLLM_PID_FILE", str(tmp_path / "vllm.pid"))
    for name in (
        "FAKE_VLLM_ARGV_FILE",
        "FAKE_VLLM_WORKER_PID_FILE",
        "FAKE_VLLM_BIND_DELAY_S",
        "FAKE_VLLM_STARTUP_S",
        "FAKE_VLLM_FAIL",
        "FAKE_VLLM_IGNORE_SIGTERM",
        "VLLM_API_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def settings(**kw: object) -> VLLMSettings:
    kw.setdefault("model", "org/fake-model-7b")
    kw.setdefault("startup_timeout_s", 20.0)
    return VLLMSettings(**kw)  # type: ignore[arg-type]


def server(s: VLLMSettings, **kw: object) -> VLLMServer:
    kw.setdefault("progress", None)
    kw.setdefault("poll_interval_s", 0.05)
    return VLLMServer(s, **kw)  # type: ignore[arg-type]


def alive(pid: int) -> bool:
    """Running and not a zombie (init may be slow to reap, or not reap at all, in a container)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def wait_gone(pid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return not alive(pid)


def read_pid(path: Path) -> int:
    return int(path.read_text())


# --------------------------------------------------------------------------- no process


def test_command_maps_settings_to_vllm_flags() -> None:
    s = settings(
        port=8123,
        tensor_parallel_size=2,
        data_parallel_size=4,
        max_model_len=8192,
        gpu_memory_utilization=0.85,
        dtype="bfloat16",
        served_model_name="teacher",
        max_num_seqs=256,
        generation_config="vllm",
        api_key="sekret",
        extra_args=["--enable-prefix-caching", "--seed", "7"],
    )
    assert VLLMServer(s).command() == [
        "vllm", "serve", "org/fake-model-7b", "--host", "127.0.0.1", "--port", "8123",
        "--tensor-parallel-size", "2", "--data-parallel-size", "4", "--max-model-len", "8192",
        "--gpu-memory-utilization", "0.85", "--dtype", "bfloat16", "--served-model-name", "teacher",
        "--max-num-seqs", "256", "--generation-config", "vllm", "--enable-prompt-tokens-details",
        "--enable-prefix-caching", "--seed", "7",
    ]  # fmt: skip
    assert "sekret" not in " ".join(VLLMServer(s).command())


def test_defaults_leave_vllm_defaults_alone_and_pick_a_free_port() -> None:
    srv = VLLMServer(settings())
    argv = srv.command()
    assert argv[:3] == ["vllm", "serve", "org/fake-model-7b"]
    assert argv[3:6] == ["--host", "127.0.0.1", "--port"] and len(argv) == 8
    assert argv[7] == "--enable-prompt-tokens-details"  # the cached-token counts the rows record
    assert 0 < srv.port < 65536 and srv.base_url == f"http://127.0.0.1:{srv.port}/v1"
    assert srv.pid is None and srv.model_name == "org/fake-model-7b"


def test_wildcard_host_is_reached_over_loopback() -> None:
    assert VLLMServer(settings(host="0.0.0.0", port=9000)).base_url == "http://127.0.0.1:9000/v1"


@pytest.mark.parametrize(
    "bad",
    [
        {"tensor_parallel_size": 0},
        {"data_parallel_size": 0},
        {"max_model_len": 0},
        {"gpu_memory_utilization": 1.5},
        {"port": 70000},
        {"startup_timeout_s": 0},
        {"extra_args": ["--port", "9"]},
        {"extra_args": ["--host=0.0.0.0"]},
        {"extra_args": ["--api-key", "k"]},
    ],
)
def test_bad_settings_are_config_errors(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        settings(**bad)


def test_vllm_available_follows_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert vllm_available()
    monkeypatch.setenv("PATH", str(tmp_path))
    assert not vllm_available()


async def test_missing_executable_is_a_launch_error() -> None:
    with pytest.raises(LaunchError, match="not on PATH") as info:
        await server(settings(executable="no-such-vllm-here")).start()
    assert isinstance(info.value, GenError)


async def test_port_in_use_is_a_launch_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(LaunchError, match="already in use"):
            await server(settings(port=port)).start()


# --------------------------------------------------------------------------- real child processes


async def test_launch_chat_and_clean_stop(fake_vllm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    worker_file = fake_vllm / "worker.pid"
    monkeypatch.setenv("FAKE_VLLM_WORKER_PID_FILE", str(worker_file))
    monkeypatch.setenv("FAKE_VLLM_BIND_DELAY_S", "0.3")  # connection refused first, like a loading vLLM
    monkeypatch.setenv("FAKE_VLLM_STARTUP_S", "0.3")  # then /health 503
    srv = server(settings())
    async with srv:
        pid = srv.pid
        assert pid is not None and pid == read_pid(fake_vllm / "vllm.pid") and alive(pid)
        worker = read_pid(worker_file)
        assert alive(worker)
        assert os.getpgid(pid) == pid and os.getpgid(worker) == pid  # its own group, with its workers
        assert os.getsid(pid) == pid
        teacher = OpenAIChat(srv.base_url, srv.model_name)
        try:
            done = await teacher.complete(MESSAGES, seed=1, sampling={"temperature": 0.7})
            assert await teacher.list_models() == ["org/fake-model-7b"]
        finally:
            await teacher.close()
        assert done.text and done.model == "org/fake-model-7b" and done.finish_reason == "stop"
        assert srv.returncode is None
        log_path = srv.log_path
        assert log_path is not None and "Application startup complete" in srv.log_tail()
    assert not alive(pid) and wait_gone(worker, 2.0)
    assert srv.returncode == 0  # the fake shut down gracefully on SIGTERM
    assert not log_path.exists()  # the temp log goes after a clean run
    await srv.stop()  # twice is fine


async def test_flags_reach_the_child(fake_vllm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    argv_file = fake_vllm / "argv.json"
    monkeypatch.setenv("FAKE_VLLM_ARGV_FILE", str(argv_file))
    log = fake_vllm / "logs" / "vllm.log"
    s = settings(
        tensor_parallel_size=2,
        data_parallel_size=2,
        max_model_len=2048,
        gpu_memory_utilization=0.5,
        dtype="float16",
        extra_args=["--enable-prefix-caching", "--seed", "3"],
        log_path=log,
    )
    srv = server(s)
    async with srv:
        argv = json.loads(argv_file.read_text())
        assert argv == srv.command()[1:]
        for flag, value in [
            ("--tensor-parallel-size", "2"),
            ("--data-parallel-size", "2"),
            ("--max-model-len", "2048"),
            ("--gpu-memory-utilization", "0.5"),
            ("--dtype", "float16"),
            ("--port", str(srv.port)),
        ]:
            assert argv[argv.index(flag) + 1] == value
        assert argv[-3:] == ["--enable-prefix-caching", "--seed", "3"]
    assert log.exists() and "--enable-prefix-caching" in log.read_text()  # a given log is kept


async def test_served_model_reports_id_and_root_with_api_key(
    fake_vllm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv_file = fake_vllm / "argv.json"
    monkeypatch.setenv("FAKE_VLLM_ARGV_FILE", str(argv_file))
    s = settings(served_model_name="teacher", api_key="sekret", max_model_len=1024)
    async with server(s) as srv:
        model = await srv.served_model()
        assert model["id"] == "teacher" and model["root"] == "org/fake-model-7b"
        assert model["max_model_len"] == 1024
        teacher = OpenAIChat(srv.base_url, srv.model_name, api_key="sekret")
        try:
            assert (await teacher.complete(MESSAGES, seed=2, sampling={})).model == "teacher"
        finally:
            await teacher.close()
        assert "sekret" not in argv_file.read_text()  # the key travels in the environment
    assert await srv.served_model() == {}  # nothing answers once stopped


async def test_exit_before_ready_raises_with_status_and_log_tail(
    fake_vllm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_VLLM_FAIL", "1")
    srv = server(settings())
    with pytest.raises(LaunchError) as info:
        await srv.start()
    err = info.value
    assert err.returncode == 1 and "exited with status 1" in str(err)
    assert "CUDA out of memory" in str(err) and "CUDA out of memory" in err.log_tail
    assert err.log_path is not None and err.log_path.exists()  # kept: the message points at it
    assert "vllm serve org/fake-model-7b" in str(err) or "serve org/fake-model-7b" in str(err)
    err.log_path.unlink()


async def test_startup_timeout_raises_and_kills_the_child(
    fake_vllm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_VLLM_STARTUP_S", "60")  # listens, but /health stays 503
    srv = server(settings(startup_timeout_s=2.5))
    t0 = time.monotonic()
    with pytest.raises(LaunchError, match=r"not ready after 2.5s \(/health") as info:
        await srv.start()
    assert 2.5 <= time.monotonic() - t0 < 8
    assert "raise startup_timeout_s" in str(info.value) and "vLLM API server" in info.value.log_tail
    assert not alive(read_pid(fake_vllm / "vllm.pid"))
    assert info.value.log_path is not None
    info.value.log_path.unlink()


async def test_progress_shows_the_last_log_line(fake_vllm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_VLLM_BIND_DELAY_S", "0.8")
    seen: list[str] = []
    t0 = time.monotonic()
    async with server(settings(), progress=seen.append, progress_interval_s=0.2):
        elapsed = time.monotonic() - t0
    assert seen[0].startswith("gen: starting vLLM for org/fake-model-7b")
    assert any("waiting for vLLM" in m and "Loading safetensors checkpoint shards" in m for m in seen)
    assert seen[-1].startswith("gen: vLLM ready on http://127.0.0.1:")
    assert len(seen) <= elapsed / 0.2 + 3  # throttled, not one line per 0.05 s poll


async def test_sigterm_ignored_escalates_to_sigkill(fake_vllm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_VLLM_IGNORE_SIGTERM", "1")
    monkeypatch.setenv("FAKE_VLLM_WORKER_PID_FILE", str(fake_vllm / "worker.pid"))
    srv = server(settings())
    await srv.start()
    pid, worker = srv.pid, read_pid(fake_vllm / "worker.pid")
    assert pid is not None
    t0 = time.monotonic()
    await srv.stop(timeout_s=0.5)
    assert 0.4 < time.monotonic() - t0 < 5
    assert srv.returncode == -signal.SIGKILL and not alive(pid) and wait_gone(worker, 2.0)


async def test_exception_inside_context_stops_the_child(fake_vllm: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        async with server(settings()) as srv:
            pid = srv.pid
            raise RuntimeError("boom")
    assert pid is not None and not alive(pid)


async def test_cancelled_start_stops_the_child(fake_vllm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C under asyncio.run cancels the awaiting task: the half-started vLLM must go too."""
    monkeypatch.setenv("FAKE_VLLM_STARTUP_S", "60")
    srv = server(settings())
    task = asyncio.create_task(srv.start())
    pid_file = fake_vllm / "vllm.pid"
    while not pid_file.exists():
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not alive(read_pid(pid_file)) and srv.returncode is not None
    assert srv.log_path is not None and not srv.log_path.exists()  # no error points at it


async def test_child_that_dies_after_start_is_cleaned_up_by_stop(
    fake_vllm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_VLLM_WORKER_PID_FILE", str(fake_vllm / "worker.pid"))
    monkeypatch.setenv("FAKE_VLLM_IGNORE_SIGTERM", "1")
    srv = server(settings())
    await srv.start()
    assert srv.pid is not None
    os.kill(srv.pid, signal.SIGKILL)  # the API server crashes; its worker is orphaned
    worker = read_pid(fake_vllm / "worker.pid")
    while srv.returncode is None:
        await asyncio.sleep(0.02)
    assert alive(worker)
    await srv.stop(timeout_s=0.3)  # the group is still signalled: the orphan goes too
    assert wait_gone(worker, 2.0)
    assert srv.log_path is not None and srv.log_path.exists()  # a crash keeps the log
    srv.log_path.unlink()


@linux_only
def test_child_dies_when_gen_is_sigkilled(fake_vllm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PR_SET_PDEATHSIG: SIGKILL gen (no atexit, no finally) and vLLM still gets SIGTERM."""
    monkeypatch.setenv("FAKE_VLLM_WORKER_PID_FILE", str(fake_vllm / "worker.pid"))
    code = (
        "import asyncio, sys, time\n"
        "from gen.launchers.vllm import VLLMServer, VLLMSettings\n"
        "async def main():\n"
        "    srv = VLLMServer(VLLMSettings(model='m', startup_timeout_s=20), progress=None)\n"
        "    await srv.start()\n"
        "    print(srv.pid, flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        child = int(line)
        assert alive(child)
        worker = read_pid(fake_vllm / "worker.pid")
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
    assert wait_gone(child, 5.0), "vLLM outlived a SIGKILLed gen"
    assert wait_gone(worker, 5.0)


@linux_only
def test_atexit_stops_a_server_left_running(fake_vllm: Path) -> None:
    """A script that starts vLLM and returns without stopping it: the atexit hook stops it and waits,
    so the child is gone before the interpreter exits (not only later, through PDEATHSIG)."""
    code = (
        "import asyncio, atexit, os\n"
        "pids = []\n"
        "def gone():\n"  # registered first, so it runs after gen's hook
        "    stat = open(f'/proc/{pids[0]}/stat').read()\n"
        "    print('state', stat[stat.rfind(')') + 2], flush=True)\n"
        "atexit.register(gone)\n"
        "from gen.launchers.vllm import VLLMServer, VLLMSettings\n"
        "async def main():\n"
        "    srv = VLLMServer(VLLMSettings(model='m', startup_timeout_s=20), progress=None)\n"
        "    await srv.start()\n"
        "    pids.append(srv.pid)\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    # Reaped by gen's hook: /proc has no entry any more (the open fails) or, at most, a zombie.
    assert "state R" not in done.stdout and "state S" not in done.stdout, done.stdout + done.stderr
    assert "state Z" in done.stdout or "FileNotFoundError" in done.stderr, done.stdout + done.stderr


@linux_only
def test_ctrl_c_stops_the_child(fake_vllm: Path) -> None:
    """SIGINT to gen (the child is in its own session, so only gen gets it): asyncio.run cancels the
    main task, the context manager stops vLLM, then KeyboardInterrupt ends gen."""
    code = (
        "import asyncio\n"
        "from gen.launchers.vllm import VLLMServer, VLLMSettings\n"
        "async def main():\n"
        "    async with VLLMServer(VLLMSettings(model='m', startup_timeout_s=20), progress=None) as srv:\n"
        "        print(srv.pid, flush=True)\n"
        "        await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert alive(child)
        parent.send_signal(signal.SIGINT)
        _, err = parent.communicate(timeout=10)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.communicate()
    assert "KeyboardInterrupt" in err
    assert not alive(child)  # already gone when gen exited


async def test_restart_after_stop(fake_vllm: Path) -> None:
    srv = server(settings())
    await srv.start()
    first = srv.pid
    await srv.stop()
    assert await srv.start() == srv.base_url
    try:
        assert srv.pid != first and srv.pid is not None and alive(srv.pid)
        assert (await srv.served_model())["id"] == "org/fake-model-7b"
    finally:
        await srv.stop()
    assert first is not None and not alive(first)
