"""What several test modules read back from a prompt file or an output directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from gen.config import load_prompt_file
from gen.ledger import read_journal
from gen.schema import load_schema
from gen.templates import Expansion


def all_task_ids(prompt: Path) -> set[str]:
    """Every task id the prompt file expands to: what a finished dataset must account for."""
    p = load_prompt_file(prompt)
    schema = load_schema(p.spec.schema_, base_dir=p.base_dir, where=p.path) if p.spec.schema_ else None
    return {t.id for t in Expansion(p, schema).tasks()}


def ids_in(out: Path, folder: str) -> list[str]:
    """The ids of every shard in one folder of an output (data, rejects, duplicates), in shard order."""
    return [
        i
        for f in sorted((out / folder).glob("*.parquet"))
        for i in pq.read_table(f, columns=["id"])["id"].to_pylist()
    ]


def rows_in(out: Path, folder: str = "data") -> list[dict]:
    """Every row of every shard in one folder of an output (data, rejects, duplicates), in shard order."""
    return [r for f in sorted((out / folder).glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def journaled_answers(out: Path, partition: int | None = None) -> int:
    """Answers in an output's journal now (its other lines are reservations of requests sent)."""
    for _ in range(10):
        try:
            return sum(1 for _ in read_journal(out, partition))
        except FileNotFoundError:  # a segment deleted by a checkpoint while it was read: read again
            continue
    return 0


class FakeTime:
    """A clock and a sleep that only move when slept: limiter and retry tests without real waiting."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def reasked_tasks(journal: Path | None) -> set[str]:
    """Tasks with a re-ask journaled under `journal` (a reservation carrying the usage of an answer
    before it); lines a running gen is still writing are skipped."""
    import json

    found: set[str] = set()
    for path in journal.rglob("*.jsonl") if journal is not None and journal.exists() else []:
        for line in path.read_bytes().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "q" in entry and "u" in entry:
                found.add(entry["q"])
    return found


def settled_requests(sim: Any) -> int:
    """The simulator's request count once requests a killed client had sent have all reached it."""
    count = sim.stats()["requests"]
    while True:
        time.sleep(0.3)
        now = sim.stats()["requests"]
        if now == count:
            return count
        count = now


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, waiting for its parent to reap it, does not)."""
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state


def child_ends_with_parent(script: str, find_child: Callable[[subprocess.Popen[str]], int]) -> bool:
    """Run `script` as a parent process (gen importable, its own session, stdout a text pipe), find the
    child it started with `find_child(parent)`, SIGKILL the parent: whether the child ended within 20 s.
    Both are killed in the end, whatever happens."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    child = 0
    try:
        child = find_child(parent)
        parent.kill()
        parent.wait(30)
        deadline = time.monotonic() + 20
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        return not alive(child)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(30)
        if child and alive(child):
            os.kill(child, signal.SIGKILL)
        parent.stdout.close()  # type: ignore[union-attr]


def killed_with_answers(proc: subprocess.Popen, out: Path, answers: int) -> Path:
    """SIGKILL the `gen run` child `proc` (writing to `out`) once its first journal segment holds
    `answers` answers, and return that segment; asserts that it did within 60 s and that no checkpoint
    had put any row in a shard by then."""
    deadline = time.monotonic() + 60
    segment = None
    while time.monotonic() < deadline and proc.poll() is None:
        found = list((out / "journal").glob("*.jsonl"))
        if found and found[0].read_bytes().count(b'"r":{') >= answers:
            segment = found[0]
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert segment is not None and not ids_in(out, "data"), "no checkpoint should have happened yet"
    return segment


# The structured answer the batch tests ask the simulator for (its `answer` long enough to be re-asked
# when a perturbed reply shortens it).
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "minLength": 40}, "score": {"type": "integer"}},
    "required": ["answer", "score"],
    "additionalProperties": False,
}


def batch_recipe(
    tmp_path: Path, n: int, name: str = "batched", user: str = "Explain item {{ n }} in detail."
) -> Path:
    """A prompt file of `n` tasks asking the OpenAI-compatible simulator for ANSWER_SCHEMA answers."""
    (tmp_path / "answer.json").write_text(json.dumps(ANSWER_SCHEMA))
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f'name = "{name}"\nversion = "1"\nintended_use = "research"\nschema = "answer.json"\n'
        "eval_fraction = 0.1\n[sampling]\nmax_tokens = 120\n"
        '[teacher]\nprovider = "openai"\nmodel = "gen-sim-1"\nlicense = "apache-2.0"\n'
        f'[messages]\nuser = "{user}"\n[variables]\nn = {list(range(n))}\n'
    )
    return path


def explain_recipe(tmp_path: Path, n: int, *, max_tokens: int, name: str = "explain") -> Path:
    """`p.toml`: `n` free-text tasks ("Explain item N in detail.") for the OpenAI-compatible simulator,
    with `max_tokens`, what a reservation counts."""
    path = tmp_path / "p.toml"
    path.write_text(
        f'name = "{name}"\nversion = "1"\nintended_use = "research"\n'
        f"[sampling]\nmax_tokens = {max_tokens}\n"
        '[teacher]\nprovider = "openai"\nmodel = "gen-sim-1"\nlicense = "apache-2.0"\n'
        '[messages]\nuser = "Explain item {{ n }} in detail."\n'
        f"[variables]\nn = {list(range(n))}\n"
    )
    return path
