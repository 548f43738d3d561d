"""An online run killed with a re-ask in flight, resumed with --batch: the re-ask's open reservation
(`"a"`: the answers before it) must not make a later batch run take the task's batch result for one a
batch run had judged and counted already. Each answer the simulator billed is counted once.

Real HTTP against the simulator (chat, then OpenAI Batch endpoints), `gen run` subprocesses killed with
SIGKILL.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import all_task_ids, batch_recipe, ids_in, journaled_answers, reasked_tasks, settled_requests

from gen.cli import main
from gen.ledger import Entry, journal_entries

TIMEOUT = 60


def _gen(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "gen", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait(cond, what: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"gen ended before {what}: {proc.communicate()[1]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)


def _logged(out: Path, kind: bytes) -> bool:
    try:
        return kind in (out / "batches.jsonl").read_bytes()
    except FileNotFoundError:
        return False


def _batch_of(out: Path, tasks: set[str]) -> str | None:
    """The name of a batch the log says was accepted ("bc") holding one of `tasks`, if any."""
    try:
        lines = [json.loads(line) for line in (out / "batches.jsonl").read_bytes().splitlines()]
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    holding = {e["bi"] for e in lines if "bi" in e and any(t in tasks for t, _, _ in e["t"])}
    return next((e["bc"] for e in lines if e.get("bc") in holding), None)


def test_online_reask_killed_then_batch_resumes_count_every_batch_answer(tmp_path: Path, sim_server) -> None:
    sim = sim_server(rate_invalid_json=0.5)
    prompt = batch_recipe(tmp_path, 400, "reask")
    out = tmp_path / "o"
    online = ["run", str(prompt), "--provider", "openai", "--base-url", sim.base_url, "--output", str(out),
              "--no-progress"]  # fmt: skip
    batch = [*online, "--batch", "--batch-poll", "0.05"]

    # 1. Online, killed with half the tasks journaled and re-asks (of invalid answers) in flight.
    proc = _gen(online)
    _wait(
        lambda: journaled_answers(out) >= 200 and reasked_tasks(out / "journal"), "answers and re-asks", proc
    )
    _kill(proc)
    assert not ids_in(out, "data"), "no checkpoint should have happened yet"
    entries = [e for e in journal_entries(out) if isinstance(e, Entry)]
    open_reasks = {e.task_id for e in entries if e.estimate is not None and e.answered}
    open_reasks -= {e.task_id for e in entries if e.split is not None}
    assert open_reasks, "a re-ask should have been in flight at the kill"
    # What run 1 counted: the usage its journal holds (its requests in flight count as reservations).
    counted = sum(e.usage[0] + e.usage[1] for e in entries)
    settled_requests(sim)
    time.sleep(0.5)  # the tokens of the last answers are counted as they are sent
    served_online = sim.stats()["prompt_tokens"] + sim.stats()["completion_tokens"]

    # 2. Resumed with --batch in small batches, killed once one holding such a task is accepted, before
    # any is collected (and, as a crash may, before its first checkpoint has committed the journal).
    sim.server.config.batch_delay_s = 30.0
    proc = _gen([*batch, "--batch-size", "5"])
    _wait(lambda: _batch_of(out, open_reasks), "a batch holding a task re-asked in run 1", proc)
    _kill(proc)
    assert not _logged(out, b'"bd"')

    # 3. Resumed with --batch again: collects those batches, and asks what is left in batches of its own.
    sim.server.config.batch_delay_s = 0.0
    assert main(batch) == 0
    ids = ids_in(out, "data") + ids_in(out, "rejects") + ids_in(out, "duplicates")
    assert sorted(ids) == sorted(all_task_ids(prompt))
    manifest = json.loads((out / "manifest.json").read_text())
    # Runs 2 and 3 sent everything in batches, and run 3 collected every one of them: each answer counted.
    sent = sim.server.batch_custom_ids
    assert len(sent) == len(set(sent))
    assert manifest["runs"][-1]["requests"] == len(sent)
    served = sim.stats()["prompt_tokens"] + sim.stats()["completion_tokens"]
    usage = manifest["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] == counted + served - served_online
