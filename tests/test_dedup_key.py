"""What dedup compares: the training example (input turns + answer) by default, or `[dedup] on`.

Classification is the case that matters: 200 distinct tickets share 4 labels, and every one of them
is a training example; only samples of one input that came out the same, or near-identical examples,
are duplicates.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import rows_in

from gen import RunOptions, run
from gen.audit import audit
from gen.cli import main
from gen.shards import sha256_file

CATEGORIES = ["billing", "bug", "account", "how_to"]
WORDS = (
    "invoice refund login password board card automation webhook calendar slack export import mobile "
    "desktop sso okta seat plan upgrade downgrade receipt tax charge crash sync notification search "
    "filter label comment attachment archive restore delete invite owner admin token api limit error "
    "timeout slow page report chart widget template"
).split()
# A long fixed instruction, as real distillation prompts have: it is the same in every example, so it
# must not make every pair of examples look alike.
SYSTEM = " ".join(
    f"rule {i}: read the ticket carefully and choose the single best category." for i in range(40)
)


def _tickets(n: int, seed: int = 0) -> list[str]:
    rnd = random.Random(seed)
    return [f"ticket {i}: " + " ".join(rnd.choices(WORDS, k=24)) for i in range(n)]


def _recipe(
    folder: Path,
    tickets: list[str],
    *,
    categories: list[str] = CATEGORIES,
    samples: int = 1,
    name: str = "triage",
    dedup: str = "",
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "s.json").write_text(json.dumps({
        "type": "object", "properties": {"category": {"enum": categories}},
        "required": ["category"], "additionalProperties": False,
    }))  # fmt: skip
    (folder / "tickets.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in tickets))
    (folder / "p.toml").write_text(
        f'name = "{name}"\nversion = "1"\nintended_use = "research"\nschema = "s.json"\n'
        f"samples = {samples}\n"
        '[teacher]\nlicense = "mit"\n'
        f'[messages]\nsystem = "{SYSTEM}"\nuser = "Classify this ticket.\\n\\n{{{{ body }}}}"\n'
        '[seed]\npath = "tickets.jsonl"\nlicense = "cc0-1.0"\n' + (f"[dedup]\n{dedup}\n" if dedup else "")
    )
    return folder / "p.toml"


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _body(row: dict) -> str:
    return json.loads(row["vars"])["body"]


def test_a_classification_recipe_keeps_every_distinct_input(tmp_path: Path) -> None:
    out = tmp_path / "o"
    result = run(_recipe(tmp_path, _tickets(200)), RunOptions(output=out, progress=False))
    rows = rows_in(out)
    assert len(rows) == 200 and result.stats.duplicates == 0
    assert len({_body(r) for r in rows}) == 200
    assert len({r["output"] for r in rows}) == 4  # 4 labels, 200 examples: the same answer is the signal
    m = _manifest(out)
    assert m["dedup"]["on"] == "example" and m["totals"]["duplicates"] == 0
    assert audit(out).clean


def test_repeated_identical_samples_of_one_input_keep_one(tmp_path: Path) -> None:
    out = tmp_path / "o"
    prompt = _recipe(tmp_path, _tickets(10), categories=["billing"], samples=5)
    result = run(prompt, RunOptions(output=out, progress=False))
    rows, dups = rows_in(out), rows_in(out, "duplicates")
    assert sorted(_body(r) for r in rows) == sorted(_tickets(10))  # one of each input
    assert len(dups) == 40 == result.stats.duplicates and {d["kind"] for d in dups} == {"exact"}
    kept = {r["id"][:16]: r for r in rows}
    for d in dups:  # each removed for the kept sample of its own input
        assert kept[d["duplicate_of"]]["vars"] == d["vars"]


def test_samples_of_one_input_keep_each_distinct_answer(tmp_path: Path) -> None:
    out = tmp_path / "o"
    run(_recipe(tmp_path, _tickets(8), samples=12), RunOptions(output=out, progress=False))
    rows, dups = rows_in(out), rows_in(out, "duplicates")
    kept = Counter((r["vars"], r["output"]) for r in rows)
    assert max(kept.values()) == 1  # no input holds the same answer twice
    removed = {(d["vars"], d["output"]) for d in dups}
    assert removed <= set(kept)  # and every answer removed is one its input kept
    assert len(rows) + len(dups) == 96 and len(rows) > 8


def test_near_identical_examples_go(tmp_path: Path) -> None:
    long_ticket = _tickets(1, seed=1)[0] + " " + " ".join(random.Random(2).choices(WORDS, k=60))
    edited = long_ticket.replace("ticket 0:", "ticket 0 (resent):", 1)  # a few words of 90
    other = _tickets(1, seed=3)[0]
    out = tmp_path / "o"
    result = run(
        _recipe(tmp_path, [long_ticket, edited, other], categories=["bug"]),
        RunOptions(output=out, progress=False),
    )
    rows, dups = rows_in(out), rows_in(out, "duplicates")
    assert len(rows) == 2 and other in {_body(r) for r in rows}
    assert [d["kind"] for d in dups] == ["near"] and result.stats.duplicates == 1
    assert _manifest(out)["dedup"]["near_removed"] == 1


def test_on_output_restores_the_old_behaviour(tmp_path: Path) -> None:
    out = tmp_path / "o"
    result = run(
        _recipe(tmp_path, _tickets(200), dedup='on = "output"'), RunOptions(output=out, progress=False)
    )
    rows = rows_in(out)
    assert sorted(r["output"] for r in rows) == sorted(
        json.dumps({"category": c}, separators=(",", ":")) for c in CATEGORIES
    )
    assert result.stats.duplicates == 196 and _manifest(out)["dedup"]["on"] == "output"
    assert audit(out).clean


def test_on_input_keeps_one_answer_per_input(tmp_path: Path) -> None:
    out = tmp_path / "o"
    run(
        _recipe(tmp_path, _tickets(20), samples=3, dedup='on = "input"'),
        RunOptions(output=out, progress=False),
    )
    rows = rows_in(out)
    assert sorted(_body(r) for r in rows) == sorted(_tickets(20))
    assert _manifest(out)["dedup"]["on"] == "input"


def test_an_unknown_key_is_a_configuration_error(tmp_path: Path, capsys) -> None:
    prompt = _recipe(tmp_path, _tickets(3), dedup='on = "answer"')
    assert main(["run", str(prompt), "--output", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dedup.on" in err[0] and "p.toml" in err[0]


def _as_old_gen_wrote_it(out: Path) -> None:
    """Make an output look as gen wrote it before `[dedup] on` existed: no `on` in the manifest."""
    m = _manifest(out)
    del m["dedup"]["on"]
    (out / "manifest.json").write_bytes(orjson.dumps(m))


def test_a_resumed_old_key_output_keeps_the_old_key(tmp_path: Path, capsys) -> None:
    prompt = _recipe(tmp_path, _tickets(200))
    out = tmp_path / "o"
    # The first part as an old gen made it: deduplicated by output text, the manifest without `on`.
    run(prompt, RunOptions(output=out, progress=False, limit=60, dedup_on="output"))
    assert len(rows_in(out)) <= 4
    _as_old_gen_wrote_it(out)
    capsys.readouterr()
    result = run(prompt, RunOptions(output=out, progress=False))
    assert "deduplicated by output" in capsys.readouterr().err
    rows = rows_in(out)
    assert len({r["output"] for r in rows}) == len(rows) <= 4  # not mixed: still one row per answer
    assert result.stats.rows + result.stats.duplicates == 140
    m = _manifest(out)
    assert m["dedup"]["on"] == "output" and m["status"] == "complete"
    assert audit(out).clean


def test_a_resumed_output_deduplicates_against_committed_examples(tmp_path: Path) -> None:
    prompt = _recipe(tmp_path, _tickets(10), categories=["billing"], samples=4)
    out = tmp_path / "o"
    run(prompt, RunOptions(output=out, progress=False, limit=13))
    run(prompt, RunOptions(output=out, progress=False))
    assert sorted(_body(r) for r in rows_in(out)) == sorted(_tickets(10))
    assert len(rows_in(out, "duplicates")) == 30


def test_dedup_against_another_output_uses_this_runs_key(tmp_path: Path) -> None:
    tickets = _tickets(150)
    other = tmp_path / "other"
    run(_recipe(tmp_path / "a", tickets[:100], categories=["billing"], name="older"),
        RunOptions(output=other, progress=False))  # fmt: skip
    assert len(rows_in(other)) == 100
    out = tmp_path / "o"
    result = run(
        _recipe(tmp_path / "b", tickets[50:], categories=["billing"], name="newer"),
        RunOptions(output=out, progress=False, dedup_against=[other]),
    )
    # Tickets 50..99 got the same answer in the other output: duplicates. 100..149 are new inputs.
    assert sorted(_body(r) for r in rows_in(out)) == sorted(tickets[100:])
    assert result.stats.duplicates == 50


def test_dedup_against_an_output_without_the_key_columns_says_so(tmp_path: Path, capsys) -> None:
    other = tmp_path / "other"
    (other / "data").mkdir(parents=True)
    table = pa.table(
        {"id": ["0" * 32], "output": ['{"category": "bug"}'], "response": ['{"category": "bug"}']}
    )
    pq.write_table(table, other / "data" / "train-00000.parquet")
    prompt = _recipe(tmp_path, _tickets(3))
    code = main(
        ["run", str(prompt), "--output", str(tmp_path / "o"), "--no-progress", "--dedup-against", str(other)]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train-00000.parquet" in err[0] and "messages" in err[0]
    assert 'on = "output"' in err[0]
    assert not list((tmp_path / "o").glob("data/*.parquet"))


def test_audit_checks_duplicates_by_the_recorded_key(tmp_path: Path) -> None:
    out = tmp_path / "o"
    run(
        _recipe(tmp_path, _tickets(20), categories=["billing", "bug"]), RunOptions(output=out, progress=False)
    )
    assert audit(out).clean
    # The same rows, checked by the key an old output was made with (output text), are duplicates.
    _as_old_gen_wrote_it(out)
    found = [f.problem for f in audit(out).findings]
    assert found and all("exact duplicate" in p and "by output" in p for p in found)
    assert len(found) == 18


def test_audit_finds_an_example_kept_twice(tmp_path: Path) -> None:
    out = tmp_path / "o"
    run(
        _recipe(tmp_path, _tickets(20), samples=2, categories=["billing"]),
        RunOptions(output=out, progress=False),
    )
    m = _manifest(out)
    entry = next(s for s in m["shards"] if s["split"] == "train")
    path = out / entry["path"]
    table = pq.read_table(path)
    rows = table.to_pylist()
    by_prefix = {r["id"][:16]: r for r in rows}
    dup = next(d for d in rows_in(out, "duplicates") if d["duplicate_of"] in by_prefix)
    twin = by_prefix[dup["duplicate_of"]]
    # A second sample of the same input with the same answer, consistent in every provenance column.
    rows.append({**twin, "id": dup["id"], "sample": 1 - twin["sample"]})
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)
    dshard = next(s for s in m["shards"] if s["split"] == "duplicates")
    dtable = pq.read_table(out / dshard["path"])
    dtable = dtable.filter(pa.array([i != dup["id"] for i in dtable.column("id").to_pylist()]))
    pq.write_table(dtable, out / dshard["path"])
    for s, p in ((entry, path), (dshard, out / dshard["path"])):
        s.update(sha256=sha256_file(p), bytes=p.stat().st_size, rows=pq.ParquetFile(p).metadata.num_rows)
    m["totals"]["train"] += 1
    m["totals"]["rows"] += 1
    m["totals"]["duplicates"] -= 1
    (out / "manifest.json").write_bytes(orjson.dumps(m))
    found = [f.problem for f in audit(out).findings]
    assert len(found) == 1 and "exact duplicate" in found[0] and "by example" in found[0], found


@pytest.mark.parametrize("on", ["example", "input"])
def test_near_text_of_an_example_leaves_out_the_fixed_template(on: str) -> None:
    from gen.dedup import Deduplicator

    d = Deduplicator(on=on)
    row = {"output": '{"category": "bug"}', "response": "", "vars": '{"body": "the app crashes"}'}
    item = d.near_item(row)
    assert item == (("the app crashes", "bug") if on == "example" else "the app crashes")


def test_an_example_is_near_only_when_input_and_answer_both_are() -> None:
    from gen.near_dedup import NearDedup

    ticket = _tickets(1, seed=5)[0] + " " + " ".join(random.Random(6).choices(WORDS, k=400))
    resent = ticket.replace("ticket 0:", "ticket 0 (resent):", 1)
    answer = " ".join(random.Random(7).choices(WORDS, k=40))

    def near(a: tuple[str, str], b: tuple[str, str]) -> bool:
        return NearDedup().add_pairs([a, b], ["a", "b"]) == [None, "a"]

    assert near((ticket, "billing"), (resent, "billing"))  # near-identical input, same label
    assert not near((ticket, "billing"), (ticket, "bug"))  # a long input outweighs no label
    assert not near((ticket, answer), ("something else entirely", answer))
    assert near(("short", answer), ("short", answer.replace(answer.split()[20], "x", 1)))
    assert near(("", answer), ("", answer)) and not near(("", "a b c d"), ("", "e f g h"))


def test_a_killed_run_resumes_with_the_example_key(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    tickets = _tickets(60)
    prompt = _recipe(tmp_path, tickets, categories=["billing", "bug"], samples=3)
    with prompt.open("a") as f:
        f.write("[sim]\nlatency_ms = 20\n")
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "gen", "run", str(prompt), "--output", str(out), "--no-progress",
           "--max-concurrency", "4"]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # kill once answers are journaled and not all are done
        entries = sum(p.read_bytes().count(b"\n") for p in out.glob("journal/*.jsonl"))
        if entries >= 20:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(out.glob("journal/*.jsonl"))
    assert subprocess.run(cmd, stderr=subprocess.DEVNULL, env=os.environ.copy()).returncode == 0
    rows, dups = rows_in(out), rows_in(out, "duplicates")
    kept = Counter((r["vars"], r["output"]) for r in rows)
    assert max(kept.values()) == 1 and {(d["vars"], d["output"]) for d in dups} <= set(kept)
    assert {_body(r) for r in rows} == set(tickets) and len(rows) + len(dups) == 180
    assert audit(out).clean


def test_the_cluster_driver_settles_one_key_for_all_partitions(tmp_path: Path, capsys) -> None:
    from gen.cluster import _dedup_on
    from gen.errors import ConfigError
    from gen.pipeline import prepare

    prepared = prepare(_recipe(tmp_path, _tickets(3)), RunOptions(output=tmp_path / "o", executor="ray"))
    assert _dedup_on(prepared, None, {0: None, 1: None}) == "example"  # a new output: the prompt file's
    old = {"dedup": {"exact_removed": 0}}  # a partition begun before `on` existed
    assert _dedup_on(prepared, None, {0: old, 1: None}) == "output"  # partition 1 starts with it too
    assert "deduplicated by output" in capsys.readouterr().err
    assert _dedup_on(prepared, {"dedup": {"on": "input"}}, {0: None}) == "input"  # the merged manifest's
    with pytest.raises(ConfigError, match="different keys"):
        _dedup_on(prepared, None, {0: old, 1: {"dedup": {"on": "example"}}})
