"""Near-duplicate removal inside a run, across resumed runs, and against other outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from gen import RunOptions, run
from gen.dedup import Deduplicator, near_text

A = (
    "the quarterly invoice for the team workspace was charged twice to the same company card on the third of "
    "march and the customer wants a refund of the second charge before the end of the week because their "
    "finance department closes the books on friday and cannot reconcile a duplicate payment without a credit "
    "note from us that lists both transaction numbers"
)
A_EDITED = A.replace("wants", "needs")  # one word of 60 changed: Jaccard of word 3-grams about 0.90
B = "the mobile app crashes on start after the last update and no workaround from the help centre works"


def _recipe(tmp_path: Path, n: int) -> Path:
    (tmp_path / "s.json").write_text(json.dumps({
        "type": "object", "properties": {"summary": {"enum": [A, A_EDITED, B]}},
        "required": ["summary"], "additionalProperties": False,
    }))  # fmt: skip
    (tmp_path / "p.toml").write_text(
        'name = "nd"\nversion = "1"\nintended_use = "research"\nschema = "s.json"\n'
        '[teacher]\nlicense = "mit"\n[messages]\nuser = "Summarise ticket {{ n }}"\n'
        f"[variables]\nn = {list(range(n))}\n"
        # Different tickets, the same summaries: duplicates only when the answer alone is compared.
        '[dedup]\non = "output"\n'
    )
    return tmp_path / "p.toml"


def _kept(out: Path) -> list[str]:
    return [json.loads(r)["summary"] for f in sorted((out / "data").glob("*.parquet"))
            for r in pq.read_table(f, columns=["output"])["output"].to_pylist()]  # fmt: skip


def _dups(out: Path) -> list[dict]:
    return [r for f in sorted((out / "duplicates").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def test_near_duplicates_are_removed_and_recorded(tmp_path: Path) -> None:
    out = tmp_path / "o"
    result = run(_recipe(tmp_path, 40), RunOptions(output=out, progress=False))
    kept = _kept(out)
    assert sorted(kept) in (sorted([A, B]), sorted([A_EDITED, B]))
    dups = _dups(out)
    kinds = {d["kind"] for d in dups}
    assert kinds == {"exact", "near"} and len(dups) == 38 == result.stats.duplicates
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dedup"]["near_removed"] >= 1 and manifest["dedup"]["near_examples"]
    assert manifest["totals"]["duplicates"] == 38
    kept_ids = {
        r
        for f in (out / "data").glob("*.parquet")
        for r in pq.read_table(f, columns=["id"])["id"].to_pylist()
    }
    # duplicate_of names the row it duplicates; following the chain always ends at a kept row.
    by_prefix = {d["id"][:16]: d["duplicate_of"] for d in dups}
    kept_prefixes = {k[:16] for k in kept_ids}
    for d in dups:
        target, hops = d["duplicate_of"], 0
        while target not in kept_prefixes and hops < 5:
            target, hops = by_prefix[target], hops + 1
        assert target in kept_prefixes


def test_without_near_dedup_both_variants_stay(tmp_path: Path) -> None:
    out = tmp_path / "o"
    run(_recipe(tmp_path, 40), RunOptions(output=out, progress=False, no_near_dedup=True))
    assert sorted(_kept(out)) == sorted([A, A_EDITED, B])


def test_dedup_holds_across_resumed_runs_and_against_other_outputs(tmp_path: Path) -> None:
    prompt = _recipe(tmp_path, 40)
    out = tmp_path / "o"
    run(prompt, RunOptions(output=out, progress=False, limit=8))
    run(prompt, RunOptions(output=out, progress=False))
    assert len(_kept(out)) == 2
    other = tmp_path / "other"
    (tmp_path / "q").mkdir()
    prompt2 = _recipe(tmp_path / "q", 12)
    run(prompt2, RunOptions(output=other, progress=False, dedup_against=[out]))
    assert _kept(other) == []


def test_near_text_compares_values_not_keys() -> None:
    assert near_text('{"a": "x y", "b": {"c": ["z", 1]}}', "raw") == "x y z 1"
    assert near_text('{"a": "x", "summary": "s t"}', "raw", "summary") == "s t"
    assert near_text(None, "free text") == "free text"


def test_deduplicator_decides_in_arrival_order() -> None:
    d = Deduplicator(threshold=0.8, on="output")
    rows = [
        {"id": f"{i:032x}", "output": json.dumps({"s": t}), "response": ""}
        for i, t in enumerate([A, B, A_EDITED])
    ]
    for r in rows:
        d.offer("train", r)
    decided = d.drain()
    assert [m and m.kept for _, _, m in decided] == [None, None, f"{0:016x}"]
