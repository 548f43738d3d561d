"""`gen audit` reads shards a record batch at a time, only the columns its checks need, and compares on
Arrow arrays: its findings are those of checking every row as Python values, in the same order, across
batch boundaries; its id and dedup-key sets answer as dicts read in order would."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gen import RunOptions, run
from gen import audit as audit_module
from gen.audit import _Ids, _Kept, audit

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "prompts" / "quickstart.toml"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stream") / "qs"
    run(QUICKSTART, RunOptions(output=out, progress=False, shard_rows=60))
    return out


@pytest.fixture
def copy(dataset: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(dataset, tmp_path / "copy"))


def _train(out: Path) -> list[Path]:
    return sorted((out / "data").glob("train-*.parquet"))


def _set(path: Path, name: str, edits: dict[int, Any]) -> None:
    table = pq.read_table(path)
    values = table.column(name).to_pylist()
    for i, v in edits.items():
        values[i] = v(values[i]) if callable(v) else v
    field = table.schema.field(name)
    column = pa.array(values, field.type)
    pq.write_table(table.set_column(table.schema.get_field_index(name), field, column), path)


def _findings(out: Path) -> list[str]:
    return [str(f) for f in audit(out).findings]


def _tamper(out: Path) -> None:
    """A bit of everything, in rows past the first batch of 7 (and in two shards)."""
    first, second = _train(out)[:2]
    _set(first, "teacher_model", {9: "gpt-4o"})
    _set(first, "template_version", {10: "9"})
    _set(first, "vars", {11: lambda v: v.replace("a", "b", 1)})
    _set(first, "split", {12: "eval", 13: None})
    _set(first, "created_at", {14: None})
    _set(first, "output", {15: "{nope", 16: None})
    _set(first, "messages", {17: lambda m: [*m[:-1], {**m[-1], "content": "other"}], 18: None, 19: []})
    _set(first, "run_id", {20: "r-elsewhere"})
    _set(first, "id", {21: None, 22: lambda i: i.upper()})
    _set(second, "id", {3: lambda i: i.upper()})
    # an exact duplicate of an earlier row (another shard's), under its own id
    answer = pq.read_table(first).slice(2, 1).to_pylist()[0]
    _set(second, "messages", {5: answer["messages"]})
    _set(second, "output", {5: answer["output"]})
    shutil.copy(second, out / "data" / "train-00099.parquet")  # every id of it twice


def test_findings_match_a_row_by_row_audit_across_batches(copy: Path, monkeypatch) -> None:
    _tamper(copy)
    monkeypatch.setattr(audit_module, "_BATCH", 7)  # many batches a shard: rows named across them
    fast = _findings(copy)
    monkeypatch.setattr(audit_module, "_typed", lambda schema, split: False)  # every row as a dict
    assert fast == _findings(copy)
    shard = _train(copy)[0].name
    for expected in (
        f"{shard} row 9: teacher_model 'gpt-4o' is not the manifest's teacher",
        f"{shard} row 10: template_version is '9', the manifest says '1'",
        f"{shard} row 11: id does not match its inputs",
        f"{shard} row 12: split 'eval' does not follow from its inputs",
        f"{shard} row 13: split None does not follow from its inputs",
        f"{shard} row 14: provenance incomplete: created_at missing",
        f"{shard} row 15: output is not valid JSON",
        f"{shard} row 17: the assistant message differs from the validated output",
        f"{shard} row 18: messages do not end with the answer",
        f"{shard} row 19: messages do not end with the answer",
        f"{shard} row 20: run_id 'r-elsewhere' is not a run of this dataset",
        f"{shard} row 21: row without an id",
        "is an exact duplicate by example of id",
        "train-00099.parquet row 3: id ",
        "appears twice (also in data/train-00001.parquet)",
    ):
        assert any(expected in f for f in fast), (expected, fast)


def test_missing_or_empty_messages_are_findings_not_a_traceback(copy: Path) -> None:
    shard = _train(copy)[0]
    _set(shard, "messages", {0: None, 1: []})
    found = _findings(copy)
    for row in (0, 1):
        where = f"data/{shard.name} row {row}"
        assert f"{where}: the assistant message differs from the validated output" in found
        assert f"{where}: messages do not end with the answer" in found


def test_a_null_message_inside_the_list_is_checked_row_by_row(copy: Path) -> None:
    shard = _train(copy)[0]
    _set(shard, "messages", {4: lambda m: [None, *m[1:]]})
    found = _findings(copy)
    assert f"data/{shard.name} row 4: messages do not end with the answer" in found


def test_a_shard_of_other_types_is_checked_as_python_values(copy: Path) -> None:
    shard = _train(copy)[0]
    table = pq.read_table(shard)
    samples = pa.array([str(s) for s in table.column("sample").to_pylist()])
    pq.write_table(table.set_column(table.schema.get_field_index("sample"), "sample", samples), shard)
    assert [f for f in _findings(copy) if "sha256" not in f] == []  # str(sample) hashes the same


def _reference_ids(shards: list[list[Any]]) -> list[dict[int, int]]:
    seen: dict[Any, int] = {}
    out = []
    for number, ids in enumerate(shards):
        also = {}
        for j, tid in enumerate(ids):
            if not isinstance(tid, str):
                continue
            if tid in seen:
                also[j] = seen[tid]
            seen[tid] = number
        out.append(also)
    return out


def _some_ids(rng: random.Random, n: int) -> list[Any]:
    pool = [f"{rng.getrandbits(128):032x}" for _ in range(12)] + ["x", "ABC", "0" * 32, "0" * 31 + "1"]
    pool += [pool[0].upper(), None, 5]
    return [rng.choice(pool) for _ in range(n)]


@pytest.mark.parametrize("seed", range(20))
def test_the_id_set_answers_as_a_dict_read_in_order(seed: int) -> None:
    rng = random.Random(seed)
    shards = [_some_ids(rng, rng.randint(0, 15)) for _ in range(5)]
    ids = _Ids()
    assert [ids.add(s, n) for n, s in enumerate(shards)] == _reference_ids(shards)
    recipe = _some_ids(rng, 30)
    recipe = [t if isinstance(t, str) else "y" for t in recipe]
    found, missing = ids.decide(recipe[:10])
    more, missing2 = ids.decide(recipe[10:])
    present = {t for s in shards for t in s if isinstance(t, str)}
    assert found + more == len({t for t in recipe if t in present})
    assert set(missing + missing2) == {t for t in recipe if t not in present}


@pytest.mark.parametrize("seed", range(20))
def test_the_kept_key_set_answers_as_a_dict_read_in_order(seed: int) -> None:
    rng = random.Random(seed)
    kept, seen = _Kept(), {}
    for _ in range(5):
        ids = _some_ids(rng, rng.randint(0, 15))
        rows = sorted(rng.sample(range(len(ids)), rng.randint(0, len(ids))))
        digests = [rng.choice([0, 1, 2**64 - 1, 7, 2**63]) for _ in rows]
        expected = {}
        for row, d in zip(rows, digests, strict=True):
            if d in seen:
                expected[row] = seen[d]
            else:
                seen[d] = str(ids[row])
        assert kept.add(digests, rows, ids) == expected
