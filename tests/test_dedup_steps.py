"""`[dedup] steps`: a dedup method of the user's own, chosen in the prompt file, that sees every row the
output holds, committed ones included, the same way the built-in steps do."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from helpers import rows_in

from gen import RunOptions, run

# One row per topic: a method gen does not ship, in a file beside the prompt file.
STEP = """
import json


class ByTopic:
    name = "by_topic"

    def __init__(self, **_):
        self.seen = {}

    def row_key(self, row):
        return json.loads(row["vars"])["topic"]

    def check_batch(self, ids, keys):
        out = []
        for tid, k in zip(ids, keys):
            out.append(self.seen.get(k))
            self.seen.setdefault(k, tid[:16])
        return out

    def remember(self, ids, keys):
        self.check_batch(ids, keys)

    def describe(self):
        return {"key": "topic"}
"""


def _recipe(tmp_path: Path, steps: str = '["exact", "near", "topic_step.py:ByTopic"]') -> Path:
    (tmp_path / "topic_step.py").write_text(STEP)
    (tmp_path / "p.toml").write_text(
        'name = "steps"\nversion = "1"\nintended_use = "research"\n'
        '[teacher]\nlicense = "mit"\n[messages]\nuser = "Ticket {{ n }} about {{ topic }}"\n'
        '[variables]\nn = [0, 1, 2, 3, 4, 5]\ntopic = ["billing", "login", "crash"]\n'
        f"[dedup]\nsteps = {steps}\n"
    )
    return tmp_path / "p.toml"


def _topics(out: Path) -> list[str]:
    return sorted(json.loads(r["vars"])["topic"] for r in rows_in(out))


def test_a_step_named_in_the_prompt_file_runs_in_the_chain(tmp_path: Path) -> None:
    out = tmp_path / "o"
    result = run(_recipe(tmp_path), RunOptions(output=out, progress=False))
    assert _topics(out) == ["billing", "crash", "login"]  # 18 inputs, 3 topics: one row each
    dups = rows_in(out, "duplicates")
    assert len(dups) == 15 == result.stats.duplicates and {d["kind"] for d in dups} == {"by_topic"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dedup"]["by_topic_removed"] == 15
    assert manifest["dedup"]["steps"] == ["exact", "near", "topic_step.py:ByTopic"]


def test_a_resumed_run_feeds_the_step_the_committed_rows(tmp_path: Path) -> None:
    prompt, out = _recipe(tmp_path), tmp_path / "o"
    run(prompt, RunOptions(output=out, progress=False, limit=4))
    assert _topics(out)  # something committed before the resume
    run(prompt, RunOptions(output=out, progress=False))
    assert _topics(out) == ["billing", "crash", "login"]  # no second row of a topic already committed


def test_an_unknown_or_broken_step_is_one_line_before_any_request(tmp_path: Path) -> None:
    for steps, says in [
        ('["exact", "nosuch"]', "nosuch"),
        ('["exact", "missing.py:Step"]', "missing.py"),
        ('["exact", "topic_step.py:Nope"]', "Nope"),
        ('["near"]', "exact"),
    ]:
        prompt = _recipe(tmp_path, steps)
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "gen",
                "run",
                str(prompt),
                "--output",
                str(tmp_path / "x"),
                "--no-progress",
            ],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "p.toml" in lines[0] and says in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr
        assert not (tmp_path / "x" / "data").exists()
