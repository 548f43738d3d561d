"""A run stopped from outside its own signal handling is never committed as complete.

The Ray failure (issue 11, item 10): when the driver dies, Ray sends each partition's worker SIGTERM,
whose handler raises SystemExit in the worker's main thread. That leaves the event loop, and
`asyncio.Runner` then cancels every task, the Run included. The Run took that cancellation for a
normal end, called itself complete and committed 12 of 200 rows with `status: complete`; the rerun
skipped both partitions and the merged dataset held 24 of 400 ids. These tests make that interleaving
on purpose: the Run's task is cancelled from outside while it is producing.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from helpers import all_task_ids, ids_in

from gen import RunOptions
from gen.audit import audit
from gen.ledger import load_manifest, partition_of
from gen.pipeline import Run, prepare, run_loop

SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "minLength": 40}, "score": {"type": "integer"}},
    "required": ["answer", "score"],
    "additionalProperties": False,
}


def _recipe(tmp_path: Path, n: int = 200) -> Path:
    (tmp_path / "s.json").write_text(json.dumps(SCHEMA))
    (tmp_path / "p.toml").write_text(
        'name = "kp"\nversion = "1"\nintended_use = "research"\nschema = "s.json"\neval_fraction = 0.1\n'
        '[teacher]\nprovider = "openai"\nmodel = "gen-sim-1"\nlicense = "apache-2.0"\n'
        '[messages]\nuser = "Explain item {{ n }} in detail."\n'
        f"[variables]\nn = {list(range(n))}\n"
    )
    return tmp_path / "p.toml"


def _everything(out: Path) -> list[str]:
    return ids_in(out, "data") + ids_in(out, "rejects") + ids_in(out, "duplicates")


def _journal_lines(out: Path) -> int:
    try:
        return sum(len(p.read_bytes().splitlines()) for p in (out / "journal").rglob("*.jsonl"))
    except FileNotFoundError:  # a segment dropped at a checkpoint meanwhile
        return 0


def _opts(out: Path, url: str, partition: tuple[int, int] | None) -> RunOptions:
    return RunOptions(
        base_url=url, output=out, progress=False, max_concurrency=4, shard_rows=1000, partition=partition
    )


async def _cancel_while_producing(prompt: Path, opts: RunOptions, out: Path) -> None:
    """Start a Run, cancel its task from outside once answers are journaled (what Runner does)."""
    run = Run(prepare(prompt, opts))
    task = asyncio.create_task(run.execute())
    deadline = time.monotonic() + 30
    while _journal_lines(out) < 10 and not task.done() and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    assert not task.done(), "the run finished before it could be cancelled: raise latency_ms"
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_a_partition_cancelled_from_outside_is_not_committed_complete(tmp_path, sim_server) -> None:
    prompt = _recipe(tmp_path)
    sim = sim_server(latency_ms=30)
    out = tmp_path / "o"
    opts = _opts(out, sim.base_url, (0, 2))
    asyncio.run(_cancel_while_producing(prompt, opts, out))
    pm = load_manifest(out, 0)
    assert pm is not None and pm["status"] != "complete", pm and pm["status"]
    share = {i for i in all_task_ids(prompt) if partition_of(i, 2) == 0}
    assert len(set(_everything(out))) < len(share)  # it really stopped early

    result = run_loop(Run(prepare(prompt, opts)).execute())  # the rerun finishes the partition
    assert result.status == "complete"
    assert load_manifest(out, 0)["status"] == "complete"
    assert sorted(_everything(out)) == sorted(share)


def test_a_one_machine_run_cancelled_from_outside_is_not_committed_complete(tmp_path, sim_server) -> None:
    prompt = _recipe(tmp_path)
    sim = sim_server(latency_ms=30)
    out = tmp_path / "o"
    asyncio.run(_cancel_while_producing(prompt, _opts(out, sim.base_url, None), out))
    m = load_manifest(out)
    assert m is not None and m["status"] != "complete", m and m["status"]
    report = audit(out)
    assert report.clean, report.render()  # an unfinished output is consistent, only not complete


WORKER = textwrap.dedent(
    """
    import signal, sys
    from pathlib import Path
    from gen import RunOptions
    from gen.pipeline import Run, prepare, run_loop

    def sigterm_handler(signum, frame):  # what a Ray worker's main loop installs
        sys.exit(1)

    signal.signal(signal.SIGTERM, sigterm_handler)
    prompt, out, url = sys.argv[1:4]
    opts = RunOptions(base_url=url, output=Path(out), progress=False, max_concurrency=4,
                      shard_rows=1000, partition=(1, 2))
    run_loop(Run(prepare(prompt, opts)).execute())
    """
)


def test_a_partition_worker_stopped_by_sigterm_is_not_committed_complete(tmp_path, sim_server) -> None:
    """A real process, as Ray runs a partition: SIGTERM raises SystemExit wherever the loop is."""
    prompt = _recipe(tmp_path)
    sim = sim_server(latency_ms=30)
    share = {i for i in all_task_ids(prompt) if partition_of(i, 2) == 1}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for attempt in range(3):  # where SystemExit lands varies: try a few moments
        out = tmp_path / f"o{attempt}"
        proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(prompt), str(out), sim.base_url],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while _journal_lines(out) < 10 + 5 * attempt and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert proc.poll() is None, "the worker finished before it could be stopped"
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        pm = load_manifest(out, 1)
        decided = set(_everything(out))
        assert pm is None or pm["status"] != "complete" or decided == share, (pm["status"], len(decided))
        assert len(decided) < len(share)
        opts = _opts(out, sim.base_url, (1, 2))
        assert run_loop(Run(prepare(prompt, opts)).execute()).status == "complete"
        assert sorted(_everything(out)) == sorted(share)


HOLD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from gen.cluster import _partition_lock

    with _partition_lock(Path(sys.argv[1]), 0):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
    """
)


def test_one_writer_per_partition_and_a_killed_holder_frees_it(tmp_path) -> None:
    """A rerun's partition waits while the killed driver's partition is still committing."""
    import pytest

    from gen.cluster import _partition_lock
    from gen.errors import GenError

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path), "0.8"], env=env, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "held"
    started = time.monotonic()
    with _partition_lock(tmp_path, 0, wait_s=30):  # waits for the holder to finish
        assert time.monotonic() - started >= 0.5  # the holder slept 0.8 s after taking it
        with pytest.raises(GenError, match=f"partition 0 is still being written by pid {os.getpid()}"):
            with _partition_lock(tmp_path, 0, wait_s=0.3):
                pass
        with _partition_lock(tmp_path, 1, wait_s=0.3):  # another partition: its own lock
            pass
    holder.communicate(timeout=30)

    killed = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path), "60"], env=env, stdout=subprocess.PIPE, text=True
    )
    assert killed.stdout.readline().strip() == "held"
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=30)
    with _partition_lock(tmp_path, 0, wait_s=5):  # the kernel let go of a dead holder's lock
        pass
