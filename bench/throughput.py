#!/usr/bin/env python3
"""Throughput benchmark: `gen run` against a bare-client ceiling, on the OpenAI-protocol simulator.

For each setting (simulated latency, requests in flight, replicas R) it starts R `gen sim` processes
(one by default), then runs the two clients as separate processes, alternating them, `--repeats` times
each:

* ceiling: bench/ceiling.py, a minimal aiohttp client sending the same request bodies (with R > 1, to
  the replica with the fewest requests outstanding, as gen does);
* gen:     `gen run PROMPT --provider openai --base-url URL [--base-url URL2 ...] --output DIR ...`.

Per client process it measures wall time, rows written, CPU seconds (user+sys, from os.wait4), peak
RSS (ru_maxrss) and start-up (spawn until its first TCP connection to the simulator appears in
/proc/net/tcp), and prints the medians as a markdown table per setting. The simulator(s) are pinned to
one core and the clients to the others when there are two or more, so their CPU does not count against
the clients.

    python bench/throughput.py                      # 5,000 tasks; 0 ms x 64 and 200 ms x 100; 3 repeats
    python bench/throughput.py -n 2000 --latency-ms 0 50 --concurrency 64 64 --repeats 5 --json out.json
    python bench/throughput.py --replica-setting    # 10,000 tasks; 50 ms x 1000 over 4 `gen sim` processes
    python bench/throughput.py --latency-ms 50 200 --concurrency 1000 100 --replicas 4 1

This is a benchmark, not a test: it asserts nothing beyond "every run produced N rows".
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
CEILING = Path(__file__).resolve().parent / "ceiling.py"
CLK_TCK = os.sysconf("SC_CLK_TCK")
METRICS = ("rows_per_s", "cpu_ms_per_row", "cpu_s_per_1k", "peak_rss_mb", "wall_s", "startup_s")


# --------------------------------------------------------------------------- helpers


GEN_ENV: dict[str, str] | None = None  # set by --gen-src / --gen-ref: the environment of gen's processes
# Children run here, not in the repository root: with `python -m gen` the working directory comes first
# on sys.path and the tree's gen/ would shadow the --gen-ref / --gen-src copy.
CHILD_CWD: Path = Path(tempfile.gettempdir())


def use_gen_source(src: Path) -> None:
    """Benchmark the `gen` package under `src` instead of the installed one (children and this driver)."""
    global GEN_ENV
    if not (src / "gen" / "__init__.py").is_file():
        raise SystemExit(f"bench: {src} holds no gen/__init__.py")
    GEN_ENV = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")])),
    }
    sys.path.insert(0, str(src))


def export_ref(ref: str, dest: Path) -> Path:
    """`git archive REF gen` unpacked under dest: a frozen copy of the package, whatever the tree holds."""
    import io
    import tarfile

    blob = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "gen"], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def gen_command() -> list[str]:
    """The `gen` console script of this interpreter's environment (else `python -m gen`)."""
    if GEN_ENV is not None:
        return [sys.executable, "-m", "gen"]
    script = Path(sys.executable).parent / "gen"
    if script.exists():
        return [str(script)]
    found = shutil.which("gen")
    return [found] if found else [sys.executable, "-m", "gen"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return orjson.loads(r.read())


def proc_cpu_s(pid: int) -> float:
    """user+sys CPU seconds of a running process, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime: fields 14 and 15 of stat


def busy_cpu_s(cpus: set[int] | None) -> float:
    """CPU seconds the given CPUs (all when None) have spent busy since boot, by anyone: /proc/stat."""
    total = 0
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu") or line.startswith("cpu "):
                continue
            name, *vals = line.split()
            if cpus is not None and int(name[3:]) not in cpus:
                continue
            user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in vals[:8])
            total += user + nice + system + irq + softirq + steal
    return total / CLK_TCK


def connections_to(ports: list[int]) -> set[str]:
    """Local addresses of client sockets connecting or connected to 127.0.0.1:PORT, any of ports (IPv4)."""
    suffixes = tuple(f":{port:04X}" for port in ports)
    found = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            # parts[1] local, parts[2] remote, parts[3] state: 01 ESTABLISHED, 02 SYN_SENT
            if parts[2].endswith(suffixes) and parts[3] in ("01", "02"):
                found.add(parts[1])
    return found


def listen_overflows() -> int | None:
    """The kernel's ListenOverflows + ListenDrops counters (TcpExt, /proc/net/netstat): connections a
    listening socket's full accept queue turned away (the client's SYN is then retried after ~1 s)."""
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            row = dict(zip(names.split()[1:], map(int, values.split()[1:]), strict=False))
            return row.get("ListenOverflows", 0) + row.get("ListenDrops", 0)
    return None


def plan_cpus(pin: bool) -> tuple[set[int] | None, set[int] | None, str]:
    """(simulator cpus, client cpus, a sentence for the output)."""
    cpus = sorted(os.sched_getaffinity(0))
    if not pin:
        return None, None, f"not pinned (--no-pin); {len(cpus)} CPU(s) shared by simulator and clients"
    if len(cpus) < 2:
        return (
            None,
            None,
            "not pinned: only 1 CPU available, so the simulator's CPU competes with the clients",
        )
    sim, clients = {cpus[0]}, set(cpus[1:])
    return (
        sim,
        clients,
        (
            f"simulator (and this driver) pinned to CPU {cpus[0]}, clients pinned to CPU(s) "
            f"{','.join(map(str, sorted(clients)))}: the simulator's CPU does not count against the clients"
        ),
    )


def _pinned(cpus: set[int] | None):  # noqa: ANN202
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def count_rows(paths: list[Path]) -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in paths)


def read_responses(paths: list[Path]) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in paths:
        t = pq.read_table(p, columns=["id", "response"])
        out.update(zip(t.column("id").to_pylist(), t.column("response").to_pylist(), strict=True))
    return out


# --------------------------------------------------------------------------- the simulator


class Sim:
    """One `gen sim` process. Spawned here; `wait_ready()` waits for its /health."""

    def __init__(self, latency_ms: float, model: str, cpus: set[int] | None, log: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = self.base + "/v1"
        self._log_path = log
        self._log = open(log, "wb")
        cmd = [*gen_command(), "sim", "--port", str(self.port), "--latency-ms", f"{latency_ms:g}"]
        cmd += ["--model", model]
        self.proc = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_pinned(cpus),
            cwd=CHILD_CWD,
            env=GEN_ENV,
        )

    def wait_ready(self) -> None:
        log = self._log_path
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                self._log.close()
                tail = log.read_text(errors="replace")[-2000:]
                raise SystemExit(f"bench: gen sim exited with {self.proc.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                tail = log.read_text(errors="replace")[-2000:]
                raise SystemExit(f"bench: gen sim did not answer /health within 30 s:\n{tail}")
            time.sleep(0.05)

    def stats(self) -> dict[str, int]:
        return http_json(self.base + "/sim/stats")

    def cpu_s(self) -> float:
        return proc_cpu_s(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class SimGroup:
    """R `gen sim` processes with the same latency, all pinned to the same CPU(s): the replicas of a
    setting. Figures are summed over them; `per_replica` keeps the requests each one answered."""

    def __init__(
        self, replicas: int, latency_ms: float, model: str, cpus: set[int] | None, work: Path, tag: str
    ) -> None:
        self.sims: list[Sim] = []
        try:
            for r in range(replicas):  # spawn all, then wait: they start up side by side
                log = work / (f"sim-{tag}.log" if replicas == 1 else f"sim-{tag}-{r}.log")
                self.sims.append(Sim(latency_ms, model, cpus, log))
            for sim in self.sims:
                sim.wait_ready()
        except BaseException:
            self.stop()
            raise

    @property
    def ports(self) -> list[int]:
        return [s.port for s in self.sims]

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.sims]

    def stats(self) -> list[dict[str, int]]:
        return [s.stats() for s in self.sims]

    def cpu_s(self) -> float:
        return sum(s.cpu_s() for s in self.sims)

    def stop(self) -> None:
        for s in self.sims:
            s.stop()


# --------------------------------------------------------------------------- one client process


def run_client(cmd: list[str], cpus: set[int] | None, sim: SimGroup, log: Path, env=None) -> dict[str, Any]:
    """Spawn, watch for the first connection to a simulator, reap with wait4: the per-process figures."""
    ports = sim.ports
    before_conns = connections_to(ports)
    watched = cpus if cpus is not None else set(os.sched_getaffinity(0))  # the CPUs the client may use
    overflows0 = listen_overflows()
    stats0, sim_cpu0, busy0 = sim.stats(), sim.cpu_s(), busy_cpu_s(watched)
    with open(log, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_pinned(cpus), cwd=CHILD_CWD, env=env
        )
        startup = None
        while True:  # poll until the first connection (or the exit), then block
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if connections_to(ports) - before_conns:
                startup = time.perf_counter() - t0
                pid, status, ru = os.wait4(proc.pid, 0)
                break
            time.sleep(0.002)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: tell Popen
    busy = busy_cpu_s(watched) - busy0
    sim_cpu = sim.cpu_s() - sim_cpu0
    stats1 = sim.stats()
    overflows1 = listen_overflows()
    per_replica = [b["requests"] - a["requests"] for a, b in zip(stats0, stats1, strict=True)]
    client_cpu = ru.ru_utime + ru.ru_stime
    # What else ran on the clients' CPUs meanwhile (other processes on the machine). Unpinned, the
    # simulator counts as "else" too, so take it out.
    other = busy - client_cpu - (sim_cpu if cpus is None else 0.0)
    return {
        "rc": proc.returncode,
        "wall_s": wall,
        "cpu_s": client_cpu,
        "user_s": ru.ru_utime,
        "sys_s": ru.ru_stime,
        "peak_rss_mb": ru.ru_maxrss / 1024,  # Linux: KiB
        "startup_s": startup,
        "sim_requests": sum(per_replica),
        "sim_requests_per_replica": per_replica,
        "sim_ok": sum(b["ok"] - a["ok"] for a, b in zip(stats0, stats1, strict=True)),
        "listen_overflows": None if overflows0 is None or overflows1 is None else overflows1 - overflows0,
        "sim_cpu_s": sim_cpu,
        "other_cpu_s": max(0.0, other),
        "other_cpu_busy": max(0.0, other) / (wall * len(watched)),
    }


def finish(r: dict[str, Any], rows: int, log: Path, name: str) -> dict[str, Any]:
    r["rows"] = rows
    r["rows_per_s"] = rows / r["wall_s"]
    # The same number in two units (ms per row == s per 1,000 rows); both columns were asked for.
    r["cpu_ms_per_row"] = r["cpu_s_per_1k"] = 1000 * r["cpu_s"] / rows if rows else math.nan
    r["client_cpu_busy"] = r["cpu_s"] / r["wall_s"]
    r["sim_cpu_busy"] = r["sim_cpu_s"] / r["wall_s"]
    if r["rc"] != 0:
        tail = log.read_text(errors="replace")[-2000:]
        print(f"bench: {name} exited with {r['rc']}; its output ends with:\n{tail}", file=sys.stderr)
    return r


def run_ceiling(spec: dict[str, Any], n: int, conc: int, sim: SimGroup, cpus, work: Path, tag: str) -> dict:
    spec_path = work / f"spec-{tag}.json"
    spec_path.write_bytes(orjson.dumps({**spec, "base_urls": sim.urls, "n": n, "concurrency": conc}))
    out = work / f"ceiling-{tag}.parquet"
    log = work / f"ceiling-{tag}.log"
    cmd = [sys.executable, str(CEILING), "--spec", str(spec_path), "--out", str(out)]
    r = run_client(cmd, cpus, sim, log)
    rows = count_rows([out]) if out.exists() else 0
    r = finish(r, rows, log, "ceiling")
    r["_files"] = [out]
    return r


def run_gen(prompt: Path, samples: int, n: int, conc: int, sim: SimGroup, cpus, work: Path, tag: str) -> dict:
    out = work / f"gen-{tag}"
    log = work / f"gen-{tag}.log"
    cmd = [*gen_command(), "run", str(prompt), "--provider", "openai"]
    for url in sim.urls:  # several: gen balances them by fewest outstanding requests
        cmd += ["--base-url", url]
    cmd += ["--output", str(out), "--no-progress", "--max-concurrency", str(conc)]
    cmd += ["--samples", str(samples), "--limit", str(n)]
    r = run_client(cmd, cpus, sim, log, env=GEN_ENV)
    data = sorted((out / "data").glob("*.parquet")) if out.exists() else []
    rejects = sorted((out / "rejects").glob("*.parquet")) if out.exists() else []
    r = finish(r, count_rows(data), log, "gen")
    r["rejects"] = count_rows(rejects)
    manifest = out / "manifest.json"
    if manifest.exists():  # its layout changes between versions of gen: take what is there
        m = orjson.loads(manifest.read_bytes())
        stats = m.get("stats") or (m.get("runs") or [{}])[-1] or {}
        keep = ("requests", "retries", "repairs", "rejects", "duplicates", "throttled", "reject_reasons")
        r["gen_stats"] = {k: stats[k] for k in keep if k in stats} or m.get("totals")
        r["status"] = m.get("status")
    r["_files"] = data
    return r


# --------------------------------------------------------------------------- the spec both clients share


def build_spec(prompt: Path, n: int) -> tuple[dict[str, Any], int, dict[str, Any]]:
    """Load the prompt file through gen itself; return (ceiling spec, samples, facts for the output)."""
    from gen.config import RunOptions
    from gen.teachers.openai import OpenAIChat

    try:
        from gen.prepare import prepare
    except ImportError:  # older trees (--gen-ref): prepare lived in gen.pipeline
        from gen.pipeline import prepare

    with tempfile.TemporaryDirectory() as tmp:
        opts = RunOptions(provider="openai", base_url="http://127.0.0.1:9/v1", output=Path(tmp) / "x")
        p = prepare(prompt, opts)
    if p.expansion.seed is not None:
        raise SystemExit("bench: prompt files with a seed table are not supported by bench/ceiling.py")
    if p.schema is None:
        print(
            "bench: note: the prompt file has no schema, so this is not a structured-output run",
            file=sys.stderr,
        )
    inputs = p.expansion.count() // p.expansion.samples
    samples = math.ceil(n / inputs)  # gen gets --samples S --limit N: exactly N tasks
    client = OpenAIChat(
        "http://127.0.0.1:9/v1", p.teacher.model, schema=p.schema, strict=p.prompt.spec.strict
    )
    body = orjson.loads(client.body([], seed=0, sampling=p.sampling))  # what gen sends, less messages/seed
    spec = {
        "name": p.prompt.spec.name,
        "prompt_sha256": p.prompt.sha256,
        "model": body["model"],
        "sampling": p.sampling,
        "response_format": body.get("response_format"),
        "templates": [
            [r, s]
            for r, s in (("system", p.prompt.spec.messages.system), ("user", p.prompt.spec.messages.user))
            if s is not None
        ],
        "variables": p.expansion.variables,
        "samples": samples,
    }
    facts = {
        "inputs": inputs,
        "samples": samples,
        "tasks": n,
        "model": p.teacher.model,
        "schema": p.schema.ref if p.schema else None,
    }
    return spec, samples, facts


# --------------------------------------------------------------------------- report


def medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    out = {}
    for k in (*METRICS, "client_cpu_busy", "sim_cpu_busy", "other_cpu_busy"):
        vals = [r[k] for r in runs if r.get(k) is not None]
        out[k] = statistics.median(vals) if vals else None
    return out


def replicas_words(replicas: int) -> str:
    return "" if replicas == 1 else f", {replicas} simulator processes"


def fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def table(med: dict[str, dict[str, float]]) -> str:
    ceil_rate = med["ceiling"]["rows_per_s"]
    lines = [
        "| client | rows/s | CPU ms/row | CPU s/1k rows | peak RSS MB | wall s | start-up s "
        "| ratio to ceiling |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ("ceiling", "gen"):
        m = med[name]
        ratio = m["rows_per_s"] / ceil_rate if ceil_rate else None
        lines.append(
            f"| {name} | {fmt(m['rows_per_s'], ',.0f')} | {fmt(m['cpu_ms_per_row'], '.3f')} | "
            f"{fmt(m['cpu_s_per_1k'], '.2f')} | {fmt(m['peak_rss_mb'], '.1f')} | {fmt(m['wall_s'], '.2f')} | "
            f"{fmt(m['startup_s'], '.2f')} | {fmt(ratio, '.2f')} |"
        )
    return "\n".join(lines)


def setting_notes(
    runs: dict[str, list[dict[str, Any]]],
    med: dict[str, Any],
    parity: Any,
    n: int,
    *,
    pinned: bool,
    latency_ms: float,
    concurrency: int,
    replicas: int,
) -> list[str]:
    def each(key: str) -> str:
        return f"ceiling {[r[key] for r in runs['ceiling']]}, gen {[r[key] for r in runs['gen']]}"

    def both(key: str) -> str:
        return f"ceiling {fmt(med['ceiling'][key], '.0%')}, gen {fmt(med['gen'][key], '.0%')}"

    noisy = max(med["ceiling"]["other_cpu_busy"] or 0, med["gen"]["other_cpu_busy"] or 0) > 0.10
    bad = [
        (name, r["rc"], r["rows"]) for name, rs in runs.items() for r in rs if r["rc"] != 0 or r["rows"] != n
    ]
    sims = (
        "simulator CPU busy" if replicas == 1 else f"the {replicas} simulators' CPU busy (summed, one core)"
    )
    whose = "simulator's" if replicas == 1 else "simulators'"
    ideal = math.ceil(n / concurrency) * latency_ms / 1000
    notes = [
        f"rows per run: {each('rows')}" + (f" -- PROBLEM (client, exit status, rows): {bad}" if bad else ""),
        f"client CPU busy (CPU s / wall s): {both('client_cpu_busy')}; "
        f"{sims} meanwhile: {both('sim_cpu_busy')}",
        f"ideal (latency only, {min(concurrency, n)} always in flight): {ideal:.2f} wall s, "
        f"{min(concurrency, n) / (latency_ms / 1000):,.0f} rows/s"
        if latency_ms > 0
        else "ideal wall s: 0 (no latency): rows/s is CPU work only",
        f"other processes' CPU use on the clients' CPU(s) meanwhile: {both('other_cpu_busy')}"
        + (" -- WARNING: the machine was not quiet; wall-clock figures are inflated" if noisy else ""),
        f"requests the simulator{'s' if replicas > 1 else ''} answered per run: {each('sim_requests')}",
        f"request parity (run 1: same simulated answer per task id): "
        f"{parity['identical']:,}/{parity['ceiling_rows']:,}",
        "gen's own run stats (run 1): " + orjson.dumps(runs["gen"][0].get("gen_stats")).decode(),
    ]
    if replicas > 1:
        notes.insert(
            4,
            "requests per simulator process (run 1): "
            f"ceiling {runs['ceiling'][0]['sim_requests_per_replica']}, "
            f"gen {runs['gen'][0]['sim_requests_per_replica']}",
        )
    overflows = [r["listen_overflows"] for rs in runs.values() for r in rs if r.get("listen_overflows")]
    if overflows:
        notes.append(
            f"WARNING: the kernel's listen queues overflowed during these runs ({each('listen_overflows')} "
            "connections turned away, TcpExt ListenOverflows+ListenDrops, all processes on the machine): "
            "a refused SYN is retried after ~1 s, which inflates wall s"
        )
    if pinned and max(med["ceiling"]["sim_cpu_busy"] or 0, med["gen"]["sim_cpu_busy"] or 0) > 0.85:
        notes.append(
            f"WARNING: the {whose} core is near saturation: "
            "rows/s here may be the simulator's limit rather than the client's"
        )
    return notes


# --------------------------------------------------------------------------- main

# The defaults, and the "one process feeds many replicas" preset (--replica-setting): 50 ms, 1,000 in
# flight over 4 `gen sim` processes. Its ideal is 1000 / 0.05 s = 20,000 rows/s, far beyond one Python
# process, so the setting is CPU-bound: 10,000 tasks keep each run several seconds long.
DEFAULT = {"tasks": 5000, "latency_ms": [0.0, 200.0], "concurrency": [64, 100], "replicas": [1]}
REPLICA_SETTING = {"tasks": 10000, "latency_ms": [50.0], "concurrency": [1000], "replicas": [4]}


def main() -> int:
    ap = argparse.ArgumentParser(description="gen vs a bare-client ceiling, on the simulator.")
    ap.add_argument(
        "-n",
        "--tasks",
        type=int,
        help="tasks per run (default 5000; 10000 with --replica-setting)",
    )
    ap.add_argument("--prompt", type=Path, default=ROOT / "prompts" / "quickstart.toml")
    ap.add_argument("--latency-ms", type=float, nargs="+", help="one per setting (default: 0 200)")
    ap.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        help="in flight, one per latency (default: 64 100)",
    )
    ap.add_argument(
        "--replicas",
        type=int,
        nargs="+",
        help="`gen sim` processes per setting, all given to both clients: one value for every setting "
        "or one per latency (default: 1)",
    )
    ap.add_argument(
        "--replica-setting",
        action="store_true",
        help="run only the 'one process feeds many replicas' setting: 50 ms, 1000 in flight, 4 `gen sim` "
        "processes, 10,000 tasks unless -n says otherwise",
    )
    ap.add_argument("--repeats", type=int, default=3, help="runs of each client per setting; medians shown")
    ap.add_argument(
        "--warmup", type=int, default=300, help="tasks of one unmeasured run of each client first (0: none)"
    )
    ap.add_argument("--no-pin", action="store_true", help="do not pin the simulator and the clients to CPUs")
    ap.add_argument(
        "--gen-ref",
        metavar="REF",
        help="benchmark gen as committed at this git ref (e.g. HEAD), not the working tree",
    )
    ap.add_argument(
        "--gen-src",
        type=Path,
        metavar="DIR",
        help="benchmark the gen package found in DIR/gen instead of the installed one",
    )
    ap.add_argument("--json", type=Path, metavar="OUT", help="write every figure to this JSON file")
    ap.add_argument("--keep", type=Path, metavar="DIR", help="keep outputs and logs under DIR")
    args = ap.parse_args()
    args.prompt = args.prompt.resolve()
    if args.replica_setting:
        given = [
            f
            for f, v in (
                ("--latency-ms", args.latency_ms),
                ("--concurrency", args.concurrency),
                ("--replicas", args.replicas),
            )
            if v is not None
        ]
        if given:
            ap.error(f"--replica-setting fixes the setting; drop {', '.join(given)}")
    preset = REPLICA_SETTING if args.replica_setting else DEFAULT
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if len(args.latency_ms) != len(args.concurrency):
        ap.error("--latency-ms and --concurrency need the same number of values")
    if len(args.replicas) == 1:
        args.replicas = args.replicas * len(args.latency_ms)
    if len(args.replicas) != len(args.latency_ms):
        ap.error("--replicas takes one value, or one per latency")
    if args.tasks < 1 or args.repeats < 1 or min(args.replicas) < 1:
        ap.error("--tasks, --repeats and --replicas must be at least 1")

    usable = len(os.sched_getaffinity(0))
    sim_cpus, client_cpus, pin_note = plan_cpus(not args.no_pin)
    if sim_cpus is not None:
        os.sched_setaffinity(0, sim_cpus)  # the driver only polls and waits: keep it off the clients' CPUs
    work_ctx = tempfile.TemporaryDirectory(prefix="gen-bench-") if args.keep is None else None
    work = Path(work_ctx.name) if work_ctx else args.keep
    work.mkdir(parents=True, exist_ok=True)
    global CHILD_CWD
    CHILD_CWD = work
    gen_source = "the installed package (" + str(ROOT / "gen") + ", working tree)"
    if args.gen_ref:
        use_gen_source(export_ref(args.gen_ref, work / "gen-src"))
        rev = ["git", "-C", str(ROOT), "rev-parse", "--short", args.gen_ref]
        gen_source = (
            f"git {args.gen_ref} ({subprocess.run(rev, capture_output=True, text=True).stdout.strip()})"
        )
    elif args.gen_src:
        use_gen_source(args.gen_src.resolve())
        gen_source = str(args.gen_src.resolve())
    spec, samples, facts = build_spec(args.prompt, args.tasks)

    print(
        f"# gen throughput vs ceiling: {args.tasks:,} tasks of {args.prompt.name} "
        f"({facts['inputs']} inputs x samples {samples}, limit {args.tasks}; schema {facts['schema']})"
    )
    print(f"# gen under test: {gen_source}")
    print(f"# {pin_note}")
    print(
        f"# medians of {args.repeats} run(s) per client, clients alternating; "
        f"python {sys.version.split()[0]}, "
        f"{usable} usable CPU(s)\n"
    )

    results: dict[str, Any] = {
        "config": {
            **vars(args),
            "prompt": str(args.prompt),
            "json": str(args.json),
            "keep": str(args.keep),
            "gen_src": str(args.gen_src),
            "gen_under_test": gen_source,
            "pinning": pin_note,
            **facts,
        },
        "settings": [],
    }
    t_start = time.perf_counter()
    summary = []
    try:
        settings = zip(args.latency_ms, args.concurrency, args.replicas, strict=True)
        for i, (lat, conc, reps) in enumerate(settings):
            sim = SimGroup(reps, lat, facts["model"], sim_cpus, work, str(i))
            try:
                if args.warmup and i == 0:  # first process runs pay for cold caches and .pyc files
                    w = min(args.warmup, args.tasks)
                    run_ceiling(spec, w, conc, sim, client_cpus, work, f"{i}-warmup")
                    run_gen(args.prompt, samples, w, conc, sim, client_cpus, work, f"{i}-warmup")
                runs: dict[str, list[dict[str, Any]]] = {"ceiling": [], "gen": []}
                parity = None
                for rep in range(args.repeats):
                    order = ("ceiling", "gen") if rep % 2 == 0 else ("gen", "ceiling")
                    for name in order:
                        tag = f"{i}-{rep}"
                        if name == "ceiling":
                            r = run_ceiling(spec, args.tasks, conc, sim, client_cpus, work, tag)
                        else:
                            r = run_gen(args.prompt, samples, args.tasks, conc, sim, client_cpus, work, tag)
                        runs[name].append(r)
                    if rep == 0:  # same requests in => same simulated answers out, per task id
                        a = read_responses(runs["ceiling"][0]["_files"])
                        b = read_responses(runs["gen"][0]["_files"])
                        same = sum(1 for k, v in a.items() if b.get(k) == v)
                        parity = {"ceiling_rows": len(a), "gen_rows": len(b), "identical": same}
                    for name in order:  # outputs are not needed past this point
                        for f in runs[name][-1].pop("_files"):
                            if args.keep is None:
                                f.unlink(missing_ok=True)
                med = {name: medians(rs) for name, rs in runs.items()}
                ratio = med["gen"]["rows_per_s"] / med["ceiling"]["rows_per_s"]
                summary.append((lat, conc, reps, ratio))

                print(f"## latency {lat:g} ms, {conc} in flight{replicas_words(reps)}\n")
                print(table(med))
                print()
                notes = setting_notes(
                    runs,
                    med,
                    parity,
                    args.tasks,
                    pinned=sim_cpus is not None,
                    latency_ms=lat,
                    concurrency=conc,
                    replicas=reps,
                )
                for note in notes:
                    print(f"- {note}")
                print()
                results["settings"].append(
                    {
                        "latency_ms": lat,
                        "concurrency": conc,
                        "replicas": reps,
                        "median": med,
                        "gen_rows_per_s_ratio": ratio,
                        "parity": parity,
                        "runs": runs,
                    }
                )
            finally:
                sim.stop()
    finally:
        if work_ctx is not None:
            work_ctx.cleanup()

    line = "; ".join(
        f"{ratio:.2f}x at {lat:g} ms ({conc} in flight{replicas_words(reps)})"
        for lat, conc, reps, ratio in summary
    )
    print(
        f"**gen rows/s as a fraction of the ceiling: {line}.** "
        f"(benchmark took {time.perf_counter() - t_start:.0f} s)"
    )
    results["summary"] = [
        {"latency_ms": lat, "concurrency": c, "replicas": reps, "gen_rows_per_s_ratio": r}
        for lat, c, reps, r in summary
    ]
    if args.json:
        args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2, default=str))
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
