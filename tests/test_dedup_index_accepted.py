"""A data shard's persisted dedup index is made from the keys its rows were checked with when they were
accepted (gen.dedup_index.AcceptedKeys), not by reading the shard back and hashing every row again
(issue 16: that cost ~0.045 CPU ms a row in the writer thread), and it is byte for byte the index the
read-back path (`dedup_index.build`) makes, live and for rows a resume replays from the journal."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from helpers import ids_in, journaled_answers
from test_resume import _gen

from gen import RunOptions, dedup_index, run
from gen.dedup import Deduplicator
from gen.outdir import OutputDir

A = (
    "the quarterly invoice for the team workspace was charged twice to the same company card on the third of "
    "march and the customer wants a refund of the second charge before the end of the week"
)
B = "the mobile app crashes on start after the last update and no workaround from the help centre works"


DETAILS = [
    " ".join(
        f"{w}{(i * 7 + j) % 31}" for j, w in enumerate("note about the case with word and more of it".split())
    )
    for i in range(30)
]


def _recipe(tmp_path: Path, n: int, *, samples: int = 2, dedup: str = "") -> Path:
    """Answers drawn from few texts (the simulator picks enum values): exact duplicates by answer, and near
    ones (a summary and its one-word edit with the same detail); samples of one input share it."""
    schema = {
        "type": "object",
        "properties": {
            "summary": {"enum": [A, A.replace("wants", "needs"), B, B.replace("last", "latest")]},
            "detail": {"enum": DETAILS},
            "score": {"enum": [1, 2, 3]},
        },
        "required": ["summary", "detail", "score"],
        "additionalProperties": False,
    }
    (tmp_path / "answer.json").write_text(json.dumps(schema))
    (tmp_path / "p.toml").write_text(
        f'name = "idx"\nversion = "1"\nintended_use = "research"\nschema = "answer.json"\n'
        f"samples = {samples}\neval_fraction = 0.2\n"
        '[teacher]\nprovider = "openai"\nmodel = "gen-sim-1"\nlicense = "apache-2.0"\n'
        '[messages]\nuser = "Explain item {{ n }} in detail."\n'
        f"[variables]\nn = {list(range(n))}\n" + (f"[dedup]\n{dedup}\n" if dedup else "")
    )
    return tmp_path / "p.toml"


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 7 rows, so that shards of 20-40 rows begin and end inside blocks and span several."""
    monkeypatch.setattr(dedup_index.AcceptedKeys, "BLOCK", 7)


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The shards `dedup_index.build` (the read-back path) is run on in this process; it still runs."""
    called: list[str] = []
    real = dedup_index.build

    def counted(dedup, out_dir, rel):  # noqa: ANN001, ANN202
        called.append(rel)
        return real(dedup, out_dir, rel)

    monkeypatch.setattr(dedup_index, "build", counted)
    return called


def _data_shards(out: Path) -> list[dict]:
    manifest = json.loads((out / "manifest.json").read_text())
    return [s for s in manifest["shards"] if s["split"] in ("train", "eval")]


def _same_as_read_back(out: Path, dedup: Deduplicator, scratch: Path) -> int:
    """Assert each data shard's segment file equals the one `build` makes from the shard; the rows."""
    settings = dedup_index.settings_of(dedup)
    rows = 0
    for s in _data_shards(out):
        dedup_index.write(scratch, s["path"], s["sha256"], settings, dedup_index.build(dedup, out, s["path"]))
        written = OutputDir(out).dedup_index(s["path"]).read_bytes()
        assert written == OutputDir(scratch).dedup_index(s["path"]).read_bytes(), s["path"]
        rows += s["rows"]
    return rows


@pytest.mark.parametrize(
    ("dedup", "near"),
    [
        ("", True),  # on = "example", exact + near
        ('on = "output"', True),
        ('on = "input"', True),
        ("near = false", False),  # exact only
        ('on = "output"\nnear = false', False),
    ],
)
def test_a_run_writes_its_indexes_from_the_keys_it_checked(
    tmp_path: Path, sim_server, builds: list[str], dedup: str, near: bool
) -> None:
    prompt = _recipe(tmp_path, 90, dedup=dedup)
    sim = sim_server()
    out = tmp_path / "o"
    result = run(prompt, RunOptions(base_url=sim.base_url, output=out, progress=False, shard_rows=25))
    assert result.status == "complete"
    manifest = json.loads((out / "manifest.json").read_text())
    if "on" in dedup:  # by answer or by input, the samples of an input collide
        assert manifest["dedup"]["exact_removed"] >= 1
    if 'on = "output"' in dedup and near:
        assert manifest["dedup"]["near_removed"] >= 1  # rows kept by exact, then removed by near
    assert builds == []  # no shard was read back
    on = next((line.split('"')[1] for line in dedup.splitlines() if line.startswith("on")), "example")
    rows = _same_as_read_back(out, Deduplicator(on=on, near=near), tmp_path / "scratch")
    assert rows == len(ids_in(out, "data")) >= 2


def test_rows_a_resume_replays_from_the_journal_get_their_index_from_their_keys(
    tmp_path: Path, sim_server, builds: list[str]
) -> None:
    prompt = _recipe(tmp_path, 300)
    sim = sim_server(latency_ms=5)
    out = tmp_path / "o"
    proc = _gen(prompt, out, sim.base_url, "--max-concurrency", "8", "--shard-rows", "100000")
    deadline = time.monotonic() + 30
    while journaled_answers(out) < 80 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert journaled_answers(out) >= 80 and not ids_in(out, "data"), "no checkpoint should have happened"
    result = run(prompt, RunOptions(base_url=sim.base_url, output=out, progress=False, shard_rows=40))
    assert result.status == "complete" and result.stats.replayed >= 80 and result.stats.duplicates >= 1
    assert builds == []
    assert _same_as_read_back(out, Deduplicator(on="example"), tmp_path / "scratch") == len(
        ids_in(out, "data")
    )


def test_a_shard_with_rows_of_unknown_keys_is_read_back(
    tmp_path: Path, sim_server, builds: list[str]
) -> None:
    """Where the keys a row was kept with are not known (here every 7th row's are lost, as on a path that
    does not capture them), its shard is read back: the index is right either way."""
    prompt = _recipe(tmp_path, 60)
    sim = sim_server()
    out = tmp_path / "o"
    real = Deduplicator.take_keys
    calls = {"n": 0}

    def some_unknown(self, task_id):  # noqa: ANN001, ANN202
        calls["n"] += 1
        got = real(self, task_id)
        return None if calls["n"] % 7 == 0 else got  # every 7th row's keys lost

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Deduplicator, "take_keys", some_unknown)
        result = run(prompt, RunOptions(base_url=sim.base_url, output=out, progress=False, shard_rows=20))
    assert result.status == "complete"
    shards = [s["path"] for s in _data_shards(out)]
    assert builds and set(builds) <= set(shards)
    assert _same_as_read_back(out, Deduplicator(on="example"), tmp_path / "scratch") == len(
        ids_in(out, "data")
    )
