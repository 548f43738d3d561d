"""The dedup chain (gen.dedup.Deduplicator): exact, then near, behind one `check_batch()`.

The run's batched check, journal replay and the cluster merge pass all decide through it, so these pin
what it promises: a batch is decided as one row at a time would be, in order; each removal names the
step that made it; a new method is one module plus a registration; and the merge pass's Parquet rewrite
is gen.shards' (the chain and cluster touch no Parquet of their own).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from test_boundaries import imports

from gen import RunOptions, run
from gen.dedup import STEPS, Batch, Decision, Deduplicator, register_step
from gen.shards import rewrite_without, write_rows

GEN = Path(__file__).resolve().parent.parent / "gen"
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho".split()


def _row(i: int, answer: str, ticket: str = "") -> dict[str, Any]:
    ticket = ticket or f"ticket {i}"
    return {
        "id": f"{i:016x}" + "0" * 48,  # the id prefix (16 hex digits) is what a decision names
        "messages": [{"role": "user", "content": ticket}, {"role": "assistant", "content": answer}],
        "output": None,
        "response": answer,
        "vars": json.dumps({"t": ticket}),
    }


def _text(rnd: random.Random, n: int = 60) -> str:
    return " ".join(rnd.choices(WORDS, k=n))


def _rows(seed: int) -> list[dict[str, Any]]:
    """Answers with exact copies (case and spacing changed) and near copies (one word changed)."""
    rnd = random.Random(seed)
    texts = [_text(rnd) for _ in range(6)]
    rows = []
    for i in range(40):
        t = rnd.choice(texts)
        kind = rnd.random()
        if kind < 0.3:
            t = "  " + t.upper()  # an exact copy once folded
        elif kind < 0.6:
            words = t.split()
            words[rnd.randrange(len(words))] = "sigma"  # a near copy
            t = " ".join(words)
        rows.append(_row(i, t))
    return rows


@pytest.mark.parametrize("seed", range(3))
def test_a_batch_is_decided_as_one_row_at_a_time(seed: int) -> None:
    rows = _rows(seed)
    whole = Deduplicator(on="output", threshold=0.8).check_batch(rows)
    one = Deduplicator(on="output", threshold=0.8)
    singly = [one.check_batch([r])[0] for r in rows]
    assert whole == singly
    kinds = {d.kind for d in whole if d is not None}
    assert kinds == {"exact", "near"}, kinds  # the draw has both, so both steps are exercised
    assert whole[0] is None  # the first row has nothing to duplicate


def test_a_decision_names_its_step_and_the_kept_row() -> None:
    rnd = random.Random(1)
    a, b = _text(rnd), _text(rnd)
    near_a = a.replace(a.split()[3], "sigma", 1)
    d = Deduplicator(on="output", threshold=0.8)
    out = d.check_batch([_row(0, a), _row(1, b), _row(2, a.upper()), _row(3, near_a), _row(4, near_a)])
    kept0 = f"{0:016x}"
    # Row 4 is an exact copy of row 3, which near removed: a row new to a step is remembered by it.
    assert out == [
        None,
        None,
        Decision("exact", kept0),
        Decision("near", kept0),
        Decision("exact", f"{3:016x}"),
    ]
    assert d.counts == {"exact": 2, "near": 1}
    assert d.as_dict()["near_examples"][0]["duplicate_of"] == kept0


def test_steps_restrict_the_chain_and_drain_runs_what_follows_exact() -> None:
    rnd = random.Random(2)
    a = _text(rnd)
    near_a = a.replace(a.split()[5], "sigma", 1)
    d = Deduplicator(on="output", threshold=0.8)
    assert d.check_batch([_row(0, a), _row(1, near_a)], steps=("exact",)) == [None, None]
    assert len(d.near) == 0  # the near step saw nothing
    d.offer("train", _row(2, near_a.upper()))  # the run checked exact already: near only
    [(split, row, found)] = d.drain()
    assert (split, row["id"][:16], found) == ("train", f"{2:016x}", None)  # near's index was empty
    assert d.check_batch([_row(3, near_a)]) == [Decision("exact", f"{1:016x}")]


def test_without_near_the_chain_is_exact_alone() -> None:
    d = Deduplicator(on="output", near=False)
    assert d.names == ["exact"] and d.near is None and d.as_dict()["near"] is None
    assert d.check_batch([_row(0, "x y z"), _row(1, "X  y z")]) == [None, Decision("exact", f"{0:016x}")]
    d.offer("eval", _row(2, "w"))
    assert [f for _, _, f in d.drain()] == [None]


class LengthStep:
    """A dedup method the chain does not know: one row per answer length (a test's own module)."""

    name = "length"

    def __init__(self, **_: Any) -> None:
        self.seen: dict[int, str] = {}

    def row_key(self, row: dict[str, Any]) -> int:
        return len(row["response"])

    def check_batch(self, ids: Sequence[str], keys: Sequence[Any]) -> list[str | None]:
        out = []
        for tid, n in zip(ids, keys, strict=True):
            out.append(self.seen.get(n))
            self.seen.setdefault(n, tid[:16])
        return out

    def remember(self, ids: Sequence[str], keys: Sequence[Any]) -> None:
        self.check_batch(ids, keys)

    def describe(self) -> dict[str, Any] | None:
        return None


def test_a_new_method_is_a_module_and_a_registration() -> None:
    register_step("length", f"{__name__}:LengthStep")
    try:
        d = Deduplicator(on="output", steps=["exact", "length"])
        d.remember(Batch([f"{9:016x}" + "0" * 48], {"length": [3]}))
        out = d.check_batch([_row(0, "abc"), _row(1, "abcd"), _row(2, "ABCD"), _row(3, "wxyz")])
        assert out == [
            Decision("length", f"{9:016x}"),
            None,
            Decision("exact", f"{1:016x}"),
            Decision("length", f"{1:016x}"),
        ]
        assert d.counts["length"] == 2
    finally:
        STEPS.pop("length")
    with pytest.raises(ValueError, match="unknown dedup step"):
        Deduplicator(steps=["exact", "length"])


def test_exact_and_near_do_not_import_each_other_and_cluster_no_pyarrow() -> None:
    near = imports(GEN / "near_dedup.py")
    assert not any(m == "gen.dedup" or m.startswith("gen.dedup.") for m in near), near
    assert "gen.near_dedup" not in imports(GEN / "dedup.py")  # named in the registry, imported on use
    assert not any(m.split(".")[0] == "pyarrow" for m in imports(GEN / "cluster.py"))


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A real output's data shard: 12 distinct examples."""
    tmp = tmp_path_factory.mktemp("chain")
    (tmp / "p.toml").write_text(
        'name = "ch"\nversion = "1"\nintended_use = "research"\n[teacher]\nlicense = "mit"\n'
        '[messages]\nuser = "Say something about ticket {{ n }}"\n'
        f"[variables]\nn = {list(range(12))}\n"
    )
    out = tmp / "o"
    run(tmp / "p.toml", RunOptions(output=out, progress=False))
    [rel] = [f"data/{p.name}" for p in sorted((out / "data").glob("*.parquet"))]
    return out, rel


@pytest.mark.parametrize("on", ["example", "output", "input"])
def test_read_keys_gives_the_keys_check_batch_makes_from_rows(shard: tuple[Path, str], on: str) -> None:
    out, rel = shard
    rows = pq.read_table(out / rel).to_pylist()
    d = Deduplicator(on=on)  # type: ignore[arg-type]
    batch = d.read_keys(out, rel)
    assert batch.ids == [r["id"] for r in rows] and len(batch) == len(rows) > 0
    for name in d.names:
        assert batch.keys[name] == d.keys(name, rows)
    # The shard's rows, indexed, are what a second copy of them duplicates, by the exact step.
    d.remember(batch)
    decisions = Deduplicator(on=on).check_batch(rows)  # a fresh chain: the shard has no duplicates
    assert decisions == [None] * len(rows)
    assert all(x is not None and x.kind == "exact" for x in d.check_batch(rows))


def test_rewrite_without_keeps_the_rest_and_returns_the_removed(shard: tuple[Path, str]) -> None:
    out, rel = shard
    before = pq.read_table(out / rel).to_pylist()
    gone, info = rewrite_without(out, rel, {1, 4}, "data/train-00000-m.parquet")
    assert [g["id"] for g in gone] == [before[1]["id"], before[4]["id"]]
    assert set(gone[0]) == {"id", "output", "response", "vars"}
    assert info is not None and info.rows == len(before) - 2 and info.split == "train"
    after = pq.read_table(out / info.path).to_pylist()
    assert after == [r for j, r in enumerate(before) if j not in (1, 4)]
    assert pq.read_table(out / rel).num_rows == len(before)  # the old shard is left for the caller
    gone, info = rewrite_without(out, rel, set(range(len(before))), "data/train-00001-m.parquet")
    assert len(gone) == len(before) and info is None and not (out / "data/train-00001-m.parquet").exists()


def test_write_rows_commits_a_shard_of_the_split_its_path_names(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from gen.rows import duplicate_row

    row = {"id": "a" * 64, "output": None, "response": "r", "vars": "{}"}
    dup = duplicate_row(row, "b" * 16, "near", created_at=datetime.now(UTC), run_id="r")
    info = write_rows(tmp_path, "duplicates/duplicates-merge-00000.parquet", [dup])
    assert info.split == "duplicates" and info.rows == 1
    back = pq.read_table(tmp_path / info.path).to_pylist()
    assert back[0]["kind"] == "near" and back[0]["duplicate_of"] == "b" * 16
