"""`gen audit`: an output whose manifest says complete must decide every task of its recipe.

Rows + rejects + duplicates = tasks, for the task set the recipe, --limit and samples define; on one
machine and for a Ray output. The outputs here are consistent in every other respect (checksums,
counts, totals), as the Ray bug of issue 11 left them: only completeness gives them away.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from helpers import all_task_ids, ids_in

from gen import RunOptions, run
from gen.audit import audit
from gen.cli import main
from gen.ledger import load_manifest, manifest_path, partition_of
from gen.manifest import totals
from gen.pipeline import Run, prepare, run_loop
from gen.shards import ShardInfo


def _recipe(tmp_path: Path, values: list[int], name: str = "ac") -> Path:
    (tmp_path / "p.toml").write_text(
        f'name = "{name}"\nversion = "1"\nintended_use = "research"\neval_fraction = 0.1\n'
        '[teacher]\nprovider = "openai"\nmodel = "gen-sim-1"\nlicense = "apache-2.0"\n'
        '[messages]\nuser = "Explain item {{ n }} in detail."\n'
        f"[variables]\nn = {values}\n"
    )
    return tmp_path / "p.toml"


def _opts(out: Path, url: str, **kw) -> RunOptions:
    return RunOptions(base_url=url, output=out, progress=False, max_concurrency=4, **kw)


def _drop_a_shard(out: Path) -> int:
    """Delete one train shard and rewrite the manifest consistently; the number of rows gone."""
    m = json.loads((out / "manifest.json").read_text())
    victim = next(s for s in m["shards"] if s["split"] == "train")
    (out / victim["path"]).unlink()
    m["shards"] = [s for s in m["shards"] if s is not victim]
    m["totals"] = totals(
        [ShardInfo(s["path"], s["split"], s["rows"], s["sha256"], s["bytes"]) for s in m["shards"]]
    )
    (out / "manifest.json").write_text(json.dumps(m))
    return victim["rows"]


def test_a_complete_output_missing_tasks_is_a_finding(tmp_path, sim_server, capsys) -> None:
    prompt = _recipe(tmp_path, list(range(120)))
    sim = sim_server()
    out = tmp_path / "o"
    assert run(prompt, _opts(out, sim.base_url, shard_rows=20)).status == "complete"
    assert audit(out).clean
    gone = _drop_a_shard(out)
    report = audit(out)
    problems = [str(f) for f in report.findings]
    assert problems == [
        next(p for p in problems if f"{gone} of the recipe's 120 tasks are in no shard" in p)
    ], problems
    assert f"decide {120 - gone}" in problems[0] and "Run the same command again" in problems[0]
    assert main(["audit", str(out)]) == 1
    assert "status is complete, yet" in capsys.readouterr().out

    m = json.loads((out / "manifest.json").read_text())
    m["status"] = "interrupted"  # an unfinished output may lack tasks: that is what resume is for
    (out / "manifest.json").write_text(json.dumps(m))
    assert audit(out).clean


def test_limit_samples_and_identical_inputs_define_the_task_set(tmp_path, sim_server) -> None:
    sim = sim_server()
    limited = tmp_path / "limited"
    prompt = _recipe(tmp_path, list(range(50)))
    assert run(prompt, _opts(limited, sim.base_url, limit=30, samples=2)).status == "complete"
    assert json.loads((limited / "manifest.json").read_text())["limit"] == 30
    assert audit(limited).clean, audit(limited).render()

    twice = tmp_path / "twice"  # two identical inputs are one task, asked once
    (tmp_path / "t").mkdir()
    prompt = _recipe(tmp_path / "t", [1, 1, 2, 3, 3])
    assert run(prompt, _opts(twice, sim.base_url)).status == "complete"
    assert len(ids_in(twice, "data")) == 3
    assert audit(twice).clean, audit(twice).render()


def test_completeness_is_skipped_with_a_note_when_the_recipe_is_gone(tmp_path, sim_server) -> None:
    prompt = _recipe(tmp_path, list(range(40)))
    sim = sim_server()
    out = tmp_path / "o"
    run(prompt, _opts(out, sim.base_url, shard_rows=10))
    _drop_a_shard(out)
    prompt.write_text(prompt.read_text() + "\n# edited\n")
    report = audit(out)
    assert report.clean and report.notes == [
        f"completeness not checked: the prompt file {prompt} changed since the run"
    ]
    assert "note: completeness not checked" in report.render()
    prompt.unlink()
    assert audit(out).clean and "no such prompt file" in audit(out).notes[0]

    m = json.loads((out / "manifest.json").read_text())
    del m["limit"]  # written before gen recorded --limit
    (out / "manifest.json").write_text(json.dumps(m))
    assert audit(out).notes == ["completeness not checked: the manifest does not record --limit"]


async def _cancelled(prompt: Path, opts: RunOptions, out: Path) -> None:
    task = asyncio.create_task(Run(prepare(prompt, opts)).execute())
    deadline = time.monotonic() + 30
    while (
        not list((out / "journal").rglob("*.jsonl"))
        or sum(len(p.read_bytes().splitlines()) for p in (out / "journal").rglob("*.jsonl")) < 10
    ):
        assert time.monotonic() < deadline and not task.done()
        await asyncio.sleep(0.005)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_a_ray_output_merged_from_a_partition_wrongly_marked_complete_is_a_finding(
    tmp_path, sim_server
) -> None:
    """The state issue 11's bug left: p000 said complete with 12 rows; the driver merged it."""
    pytest.importorskip("ray")
    from gen.cluster import run_cluster

    prompt = _recipe(tmp_path, list(range(200)))
    sim = sim_server(latency_ms=30)
    out = tmp_path / "o"
    asyncio.run(_cancelled(prompt, _opts(out, sim.base_url, partition=(0, 2)), out))
    assert (
        run_loop(Run(prepare(prompt, _opts(out, sim.base_url, partition=(1, 2)))).execute()).status
        == "complete"
    )
    p0 = load_manifest(out, 0)
    assert p0["status"] == "interrupted"
    manifest_path(out, 0).write_text(json.dumps({**p0, "status": "complete"}))  # what the old code wrote

    # Both partitions "complete": the driver starts none (Ray is not even started) and merges.
    result = run_cluster(
        prompt, RunOptions(executor="ray", partitions=2, base_url=sim.base_url, output=out, progress=False)
    )
    assert result.status == "complete" and result.skipped_partitions == [0, 1]
    missing = {i for i in all_task_ids(prompt) if partition_of(i, 2) == 0} - set(ids_in(out, "data"))
    problems = [str(f) for f in audit(out).findings]
    assert len(problems) == 1 and f"{len(missing)} of the recipe's 200 tasks" in problems[0], problems
    assert f"(partition 0: {len(missing)} missing)" in problems[0]


def test_a_refresh_must_hold_every_input_of_the_dataset_it_refreshed(tmp_path, sim_server) -> None:
    prompt = _recipe(tmp_path, list(range(60)))
    sim = sim_server()
    old = tmp_path / "old"
    run(prompt, _opts(old, sim.base_url, limit=40))
    new = tmp_path / "new"
    code = main(["refresh", str(old), "--model", "gen-sim-1", "--base-url", sim.base_url,
                 "--output", str(new), "--shard-rows", "10", "--no-progress"])  # fmt: skip
    assert code == 0
    report = audit(new)
    assert report.clean and not report.notes, report.render()  # its task set: the 40 ids of `old`
    gone = _drop_a_shard(new)
    problems = [str(f) for f in audit(new).findings]
    assert len(problems) == 1 and f"{gone} of the recipe's 40 tasks are in no shard" in problems[0], problems
