"""Launch `vllm serve MODEL` as a child process, wait until it is ready, and never leave it behind.

    settings = VLLMSettings(model="Qwen/Qwen2.5-7B-Instruct", tensor_parallel_size=2)
    async with VLLMServer(settings) as server:       # returns once GET /health answers 200
        teacher = OpenAIChat(server.base_url, server.model_name)
        ...

The child runs in its own session (so the terminal's Ctrl-C reaches gen, not vLLM, and gen decides
how vLLM shuts down) and its own process group (so one signal reaches the API server and the engine
and worker processes it spawns). It is stopped — SIGTERM to the group, then SIGKILL after a grace
period — on normal exit, on an exception, on Ctrl-C (cancellation of the awaiting task), from an
`atexit` hook, and, on Linux, when gen itself dies without cleaning up (SIGKILL, OOM killer): the
child asks the kernel for SIGTERM when its parent dies (`PR_SET_PDEATHSIG`).

PR_SET_PDEATHSIG fires when the *thread* that started the child ends, so call start() from a thread
that lives as long as the server should (the main thread's event loop: `asyncio.run`). It reaches
the API server process only; vLLM's own SIGTERM handling then stops its engine and workers. Ray
workers (multi-node) live outside the process group and are not covered.

vLLM's API server starts listening only once the engine is up; until then connections are refused.
`/health` answers 200 when the engine is ready and 503 when it is dead or draining. `/v1/models`
lists the served name as `id` and the model path or repo as `root`.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from gen import ALLOCATOR_DEFAULTS
from gen.errors import ConfigError, GenError
from gen.prctl import PR_SET_PDEATHSIG, PR_SET_THP_DISABLE, load_prctl

__all__ = ["LaunchError", "VLLMServer", "VLLMSettings", "vllm_available"]

# Flags gen sets itself from VLLMSettings; in extra_args they would silently disagree with base_url,
# served_model_name or the key gen sends.
_OWN_FLAGS = ("--host", "--port", "--api-key", "--served-model-name")
# vLLM reports the prompt tokens its prefix cache served (usage.prompt_tokens_details.cached_tokens, the
# rows' cached_tokens) only with this flag; its automatic prefix caching itself is on by default.
PROMPT_TOKENS_DETAILS = "--enable-prompt-tokens-details"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_TAIL_BYTES = 256 * 1024


class LaunchError(GenError):
    """vLLM could not be started: not installed, exited before it was ready, or not ready in time.

    The message carries the exit status and the last lines of vLLM's log, which is where the real
    cause is (CUDA out of memory, a gated model, a bad flag).
    """

    def __init__(
        self,
        message: str,
        *,
        returncode: int | None = None,
        log_tail: str = "",
        log_path: Path | None = None,
        command: list[str] | None = None,
    ) -> None:
        self.returncode = returncode
        self.log_tail = log_tail
        self.log_path = log_path
        self.command = list(command or [])
        text = message
        if log_tail:
            where = f" of {log_path}" if log_path is not None else ""
            text += f"\n--- last lines{where} ---\n{log_tail}"
        super().__init__(text)


@dataclass(kw_only=True, slots=True)
class VLLMSettings:
    """How to run `vllm serve`. None leaves a flag out, so vLLM's own default applies."""

    model: str
    host: str = "127.0.0.1"
    port: int | None = None  # None: pick a free port
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    dtype: str | None = None
    served_model_name: str | None = None  # the name clients send as `model`; default: `model`
    max_num_seqs: int | None = None  # the engine's batch size; keep gen's concurrency at or above it
    generation_config: str | None = None  # "auto" (recent vLLM's default), "vllm", or a folder
    api_key: str | None = None  # given to vLLM as VLLM_API_KEY, never on the command line
    env: dict[str, str] = field(default_factory=dict)  # extra environment, e.g. CUDA_VISIBLE_DEVICES
    extra_args: list[str] = field(default_factory=list)  # passed through verbatim, last
    executable: str = "vllm"  # looked up on PATH
    startup_timeout_s: float = 900.0  # cold starts of big models take minutes
    log_path: Path | None = None  # where the child's stdout+stderr go (default: a temp file)

    def __post_init__(self) -> None:
        def bad(problem: str) -> ConfigError:
            return ConfigError(None, f"vllm: {problem}")

        if not self.model:
            raise bad("model must not be empty")
        if self.port is not None and not 0 < self.port < 65536:
            raise bad(f"port must be in 1..65535, got {self.port}")
        for name in ("tensor_parallel_size", "data_parallel_size"):
            if getattr(self, name) < 1:
                raise bad(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_model_len", "max_num_seqs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise bad(f"{name} must be >= 1, got {value}")
        if self.gpu_memory_utilization is not None and not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise bad(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.startup_timeout_s <= 0:
            raise bad(f"startup_timeout_s must be > 0, got {self.startup_timeout_s}")
        for arg in self.extra_args:
            if arg.split("=", 1)[0] in _OWN_FLAGS:
                raise bad(f"set {arg.split('=', 1)[0]} through its own setting, not extra_args")
        if self.log_path is not None:
            self.log_path = Path(self.log_path)


def vllm_available(executable: str = "vllm") -> bool:
    """True when the `vllm` executable is on PATH (it says nothing about GPUs)."""
    return shutil.which(executable) is not None


def _free_port(host: str) -> int:
    """A port nothing listens on now: bind port 0, read what the kernel gave, release it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_taken(host: str, port: int) -> bool:
    """Whether something listens on host:port (SO_REUSEADDR, as uvicorn: TIME_WAIT is no obstacle)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _connect_host(host: str) -> str:
    """Where to connect for a server bound to `host`: loopback for the wildcard addresses."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


# --------------------------------------------------------------------------- the child's setup

_PRCTL = load_prctl()


def _child_setup(parent_pid: int, allow_thp: bool) -> Callable[[], None]:
    """preexec_fn: a new session (so a new process group), then SIGTERM on the parent's death; with
    `allow_thp`, transparent huge pages back on (gen's MIMALLOC_ALLOW_THP=0 turned them off for gen's
    process and, through fork and exec, for its children: gen's setting, not the server's)."""
    prctl = _PRCTL
    sigterm = int(signal.SIGTERM)

    def setup() -> None:
        os.setsid()
        if prctl is not None:
            if allow_thp:
                prctl(PR_SET_THP_DISABLE, 0, 0, 0, 0)
            prctl(PR_SET_PDEATHSIG, sigterm, 0, 0, 0)
            # The parent may have died between fork and prctl; then the signal would never come.
            if os.getppid() != parent_pid:
                os.kill(os.getpid(), signal.SIGTERM)

    return setup


# --------------------------------------------------------------------------- the log


def _tail_lines(path: Path | None, n: int) -> list[str]:
    """The last n non-empty lines of a log; progress bars' carriage returns split lines too."""
    if path is None or n <= 0:
        return []
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - _TAIL_BYTES))
            data = f.read()
    except OSError:
        return []
    text = _ANSI.sub("", data.decode("utf-8", "replace"))
    lines = [line.rstrip() for line in re.split(r"[\r\n]+", text)]
    return [line for line in lines if line.strip()][-n:]


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name} (exit status {returncode})"
    return f"exited with status {returncode}"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the server

_LIVE: set[VLLMServer] = set()


@atexit.register
def _stop_all() -> None:
    """Belt and braces: whatever was not stopped by the context manager goes down with gen."""
    for server in list(_LIVE):
        server._stop_sync(timeout_s=10.0)


class VLLMServer:
    """`vllm serve` as a child process: `async with VLLMServer(settings) as server: ...`.

    `progress` receives a status line while vLLM starts (at most every `progress_interval_s`,
    with the last line vLLM logged); the default writes to stderr, None is quiet.
    """

    def __init__(
        self,
        settings: VLLMSettings,
        *,
        progress: Callable[[str], None] | None = _stderr,
        progress_interval_s: float = 5.0,
        poll_interval_s: float = 0.5,
    ) -> None:
        self.settings = settings
        self.port = settings.port if settings.port is not None else _free_port(settings.host)
        self._progress = progress
        self._progress_interval_s = progress_interval_s
        self._poll_interval_s = poll_interval_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._pgid: int | None = None
        self._log_path: Path | None = settings.log_path
        self._temp_log = False
        self._died = False  # the child exited before stop() signalled it
        self._keep_log = False  # an error message points at the log

    # ---- what it runs and where

    @property
    def base_url(self) -> str:
        """The address to give OpenAIChat: http://HOST:PORT/v1 (loopback for a wildcard host)."""
        host = _connect_host(self.settings.host)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/v1"

    @property
    def model_name(self) -> str:
        """The name to send as `model` in requests."""
        return self.settings.served_model_name or self.settings.model

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """None while the child runs (or before start); its exit status once it has exited."""
        return self._proc.poll() if self._proc is not None else None

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    def command(self) -> list[str]:
        """The argv that will be run (the API key, if any, travels in the environment instead)."""
        s = self.settings
        argv = [s.executable, "serve", s.model, "--host", s.host, "--port", str(self.port)]
        if s.tensor_parallel_size != 1:
            argv += ["--tensor-parallel-size", str(s.tensor_parallel_size)]
        if s.data_parallel_size != 1:
            argv += ["--data-parallel-size", str(s.data_parallel_size)]
        if s.max_model_len is not None:
            argv += ["--max-model-len", str(s.max_model_len)]
        if s.gpu_memory_utilization is not None:
            argv += ["--gpu-memory-utilization", f"{s.gpu_memory_utilization:g}"]
        if s.dtype is not None:
            argv += ["--dtype", s.dtype]
        if s.served_model_name is not None:
            argv += ["--served-model-name", s.served_model_name]
        if s.max_num_seqs is not None:
            argv += ["--max-num-seqs", str(s.max_num_seqs)]
        if s.generation_config is not None:
            argv += ["--generation-config", s.generation_config]
        if PROMPT_TOKENS_DETAILS not in s.extra_args:
            argv.append(PROMPT_TOKENS_DETAILS)
        return argv + list(s.extra_args)

    def _environment(self) -> dict[str, str]:
        # gen's allocator defaults (gen/__init__.py) are for gen's process, not the server's; the
        # settings' env may set them for it.
        inherited = {k: v for k, v in os.environ.items() if ALLOCATOR_DEFAULTS.get(k) != v}
        env = {**inherited, **self.settings.env}
        env.setdefault("PYTHONUNBUFFERED", "1")  # log lines reach the file (and progress) at once
        if self.settings.api_key is not None:
            env["VLLM_API_KEY"] = self.settings.api_key
        return env

    def _headers(self) -> dict[str, str]:
        key = self.settings.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}

    def log_tail(self, n_lines: int = 40) -> str:
        """The last lines vLLM wrote to its log (empty before start)."""
        return "\n".join(_tail_lines(self._log_path, n_lines))

    # ---- starting

    async def start(self) -> str:
        """Launch vLLM and wait until GET /health answers 200; returns `base_url`.

        Raises LaunchError when the executable is missing, the port is taken, the child exits
        before it is ready, or `startup_timeout_s` passes (the child is then stopped). Cancelled
        (Ctrl-C) while waiting, it stops the child before re-raising.
        """
        if self._proc is not None and self._proc.poll() is None:
            raise RuntimeError("vLLM is already running")
        if self._pgid is not None:  # it crashed since the last start: clear what it left behind
            await self.stop()
        s = self.settings
        argv = self.command()
        resolved = shutil.which(s.executable, path=self._environment().get("PATH"))
        if resolved is None:
            raise LaunchError(
                f"{s.executable!r} is not on PATH; install vLLM (pip install 'gen[vllm]') on a GPU "
                "machine, or point the teacher at a running server with --base-url",
                command=argv,
            )
        if _port_taken(s.host, self.port):
            raise LaunchError(f"port {self.port} on {s.host} is already in use", command=argv)
        self._open_log()
        self._died = self._keep_log = False
        assert self._log_path is not None
        env = self._environment()
        with open(self._log_path, "wb") as log:
            setup: dict[str, Any] = (
                {"preexec_fn": _child_setup(os.getpid(), env.get("MIMALLOC_ALLOW_THP") != "0")}
                if _PRCTL is not None
                else {"start_new_session": True}
            )
            try:
                self._proc = subprocess.Popen(
                    [resolved, *argv[1:]],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    close_fds=True,
                    **setup,
                )
            except OSError as e:
                raise LaunchError(f"could not run {resolved}: {e}", command=argv) from None
        self._pgid = self._proc.pid  # setsid made it the leader of a new group
        _LIVE.add(self)
        try:
            await self._wait_ready(argv)
        except BaseException:
            # Timeout, early exit, cancellation (Ctrl-C): never leave a half-started vLLM behind.
            await self._shield_stop()
            raise
        return self.base_url

    def _open_log(self) -> None:
        if self.settings.log_path is not None:
            self._log_path = self.settings.log_path
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
        else:
            fd, name = tempfile.mkstemp(prefix="gen-vllm-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
            self._temp_log = True

    def _say(self, message: str) -> None:
        if self._progress is not None:
            self._progress(message)

    async def _wait_ready(self, argv: list[str]) -> None:
        assert self._proc is not None
        s = self.settings
        health = self.base_url.removesuffix("/v1") + "/health"
        started = time.monotonic()
        deadline = started + s.startup_timeout_s
        next_report = started + self._progress_interval_s
        self._say(f"gen: starting vLLM for {s.model} on {self.base_url} (log: {self._log_path})")
        last_status = "no answer yet"
        timeout = aiohttp.ClientTimeout(total=5.0)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                returncode = self._proc.poll()
                if returncode is not None:
                    elapsed = time.monotonic() - started
                    self._keep_log = True
                    raise LaunchError(
                        f"vLLM {_describe_exit(returncode)} {elapsed:.1f}s after launch, before it was "
                        f"ready\ncommand: {shlex.join(argv)}",
                        returncode=returncode,
                        log_tail=self.log_tail(20),
                        log_path=self._log_path,
                        command=argv,
                    )
                try:
                    async with session.get(health) as resp:
                        await resp.read()
                        if resp.status == 200:
                            break
                        last_status = f"/health answered {resp.status}"
                except (aiohttp.ClientError, TimeoutError) as e:
                    last_status = f"/health: {type(e).__name__}"
                now = time.monotonic()
                if now >= deadline:
                    self._keep_log = True
                    await self._shield_stop()
                    raise LaunchError(
                        f"vLLM was not ready after {s.startup_timeout_s:g}s ({last_status}); stopped it. "
                        "Large models can take many minutes to download and load: raise "
                        f"startup_timeout_s if the log shows progress\ncommand: {shlex.join(argv)}",
                        returncode=self.returncode,
                        log_tail=self.log_tail(20),
                        log_path=self._log_path,
                        command=argv,
                    )
                if now >= next_report:
                    next_report = now + self._progress_interval_s
                    last = _tail_lines(self._log_path, 1)
                    self._say(
                        f"gen: waiting for vLLM ({now - started:.0f}s)"
                        + (f": {last[0][:200]}" if last else "")
                    )
                await asyncio.sleep(min(self._poll_interval_s, max(0.0, deadline - now)))
        if self._proc.poll() is not None:  # something else answered on our port
            self._keep_log = True
            raise LaunchError(
                f"vLLM {_describe_exit(self._proc.returncode)} although {health} answered 200: is another "
                f"server on port {self.port}?",
                returncode=self._proc.returncode,
                log_tail=self.log_tail(20),
                log_path=self._log_path,
                command=argv,
            )
        self._say(f"gen: vLLM ready on {self.base_url} after {time.monotonic() - started:.0f}s")

    # ---- asking it

    async def served_model(self) -> dict[str, Any]:
        """The served model's entry in /v1/models: `id` (the name to request), `root` (the path or
        repo it was loaded from), and whatever else vLLM reports (`max_model_len`, ...).

        Empty when the server does not answer.
        """
        timeout = aiohttp.ClientTimeout(total=10.0)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with session.get(self.base_url + "/models", headers=self._headers()) as resp:
                    if resp.status != 200:
                        return {}
                    doc = orjson.loads(await resp.read())
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError):
            return {}
        models = [m for m in doc.get("data", []) if isinstance(m, Mapping)] if isinstance(doc, dict) else []
        if not models:
            return {}
        entry = next((m for m in models if m.get("id") == self.model_name), models[0])
        return {"id": entry.get("id"), "root": entry.get("root"), **entry}

    # ---- stopping

    async def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM vLLM's process group, wait up to `timeout_s` for it to go, then SIGKILL it.

        Safe to call twice and after the child exited by itself (its workers may not have).
        """
        for pause in self._stopping(timeout_s):
            await asyncio.sleep(pause)

    def _stop_sync(self, timeout_s: float) -> None:
        """stop() without an event loop, for atexit."""
        for pause in self._stopping(timeout_s):
            time.sleep(pause)

    def _stopping(self, timeout_s: float) -> Iterator[float]:
        """The stop sequence, shared by both: it yields the pauses between checks, each caller sleeps."""
        if self._pgid is None:
            return
        self._died = self._died or self.returncode is not None
        self._signal_group(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while not self._group_gone() and time.monotonic() < deadline:
            yield 0.05
        if not self._group_gone():
            self._signal_group(signal.SIGKILL)
            kill_deadline = time.monotonic() + 5.0
            while not self._group_gone() and time.monotonic() < kill_deadline:
                yield 0.05
        self._finish()

    async def _shield_stop(self) -> None:
        # Stop even when the task awaiting us is being cancelled again (a second Ctrl-C).
        task = asyncio.ensure_future(self.stop())
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            await task
            raise

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self._pgid is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._pgid, sig)

    def _group_gone(self) -> bool:
        """True once the child is reaped and no live process is left in its group."""
        if self._proc is not None and self._proc.poll() is None:
            return False
        assert self._pgid is not None
        try:
            os.killpg(self._pgid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        # Only zombies left (orphans that init has not reaped yet) count as gone.
        return not _group_has_live_process(self._pgid)

    def _finish(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=1.0)
        self._pgid = None
        _LIVE.discard(self)
        if self._temp_log and not (self._died or self._keep_log) and self._log_path is not None:
            # Stopped by us (done, or cancelled): the temp log has served its purpose. A failed
            # start or a crash keeps it, since the error the caller sees points at it.
            with contextlib.suppress(OSError):
                self._log_path.unlink()

    # ---- context manager

    async def __aenter__(self) -> VLLMServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._shield_stop()


def _group_has_live_process(pgid: int) -> bool:
    """Whether /proc shows a non-zombie process in group `pgid` (True where /proc is missing)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses: split after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False
