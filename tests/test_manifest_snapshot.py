"""gen.manifest builds manifest.json from a plain-data snapshot (RunSnapshot), not from a Run: a snapshot
filled from plain values gives a real run's keys, and one filled from a real manifest gives it back byte
for byte (manifest.json is written with sorted keys)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from gen import RunOptions, run
from gen.manifest import RunSnapshot, build_manifest, run_entry
from gen.shards import ShardInfo, write_json

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "prompts" / "quickstart.toml"


def _snapshot_of(m: dict[str, Any]) -> RunSnapshot:
    """A snapshot holding a manifest's values (the inverse of build_manifest, for the comparison)."""
    t = m["teacher"]
    return RunSnapshot(
        run_id=m["run_id"],
        status=m["status"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        prompt_file=m["prompt_file"],
        template=m["template"],
        schema=m["schema"],
        provider=t["provider"],
        model=t["model"],
        served_models=t["served_models"],
        license=t["license"],
        base_urls=t["base_urls"],
        launched=t["launched"],
        seed=m["seed"],
        intended_use=m["intended_use"],
        licence_review=m["licence_review"],
        sampling=m["sampling"],
        samples=m["samples"],
        limit=m["limit"],
        eval_fraction=m["eval_fraction"],
        lineage=m["lineage"],
        shards=[ShardInfo(**s) for s in m["shards"]],
        dedup=m["dedup"],
        usage=m["usage"],
        cost_usd=m["cost_usd"],
        journal_committed=m["journal_committed"],
        runs=m["runs"],
        partition=m.get("partition"),
        cluster=m.get("cluster"),
        reasoning_format=m["reasoning_format"],
    )


def _plain() -> RunSnapshot:
    """A snapshot of plain values, no run behind it."""
    return RunSnapshot(
        run_id="r1",
        status="complete",
        created_at="2026-01-01T00:00:00+00:00",
        updated_at="2026-01-01T00:01:00+00:00",
        prompt_file={"path": "p.toml", "sha256": "0" * 64},
        template={"name": "t", "version": "1", "sha256": "1" * 64, "description": ""},
        schema=None,
        provider="sim",
        model="gen-sim-1",
        served_models=["gen-sim-1"],
        license="apache-2.0",
        base_urls=[],
        launched=[],
        seed=None,
        intended_use="research",
        licence_review={"decision": "ok"},
        sampling={"temperature": 0.7},
        samples=1,
        limit=10,
        eval_fraction=0.0,
        lineage=None,
        shards=[ShardInfo("data/train-00000.parquet", "train", 9, "2" * 64, 100)],
        dedup={"exact_removed": 1, "near_removed": 0},
        usage={"prompt_tokens": 5, "completion_tokens": 7},
        cost_usd=None,
        journal_committed=[],
        runs=[run_entry("r1", "complete", 1.23456, {"rows": 9})],
    )


@pytest.fixture(scope="module")
def real_manifest(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, dict[str, Any]]:
    out = tmp_path_factory.mktemp("snap") / "o"
    run(QUICKSTART, RunOptions(output=out, progress=False, limit=20))
    raw = (out / "manifest.json").read_bytes()
    return raw, json.loads(raw)


def test_a_snapshot_of_plain_values_gives_a_real_runs_keys(real_manifest) -> None:
    _, real = real_manifest
    built = build_manifest(_plain())
    assert set(built) == set(real)
    assert set(built["teacher"]) == set(real["teacher"])
    assert built["totals"] == {"rows": 9, "train": 9, "eval": 0, "rejects": 0, "duplicates": 0}
    assert built["runs"][0]["wall_time_s"] == 1.235 and built["runs"][0]["rows"] == 9
    assert set(built["runs"][0]) == {"run_id", "status", "generator_version", "wall_time_s", "rows"}
    assert set(real["runs"][-1]) >= {"run_id", "status", "generator_version", "wall_time_s", "rows"}


def test_a_real_manifest_is_rebuilt_from_its_snapshot_byte_for_byte(real_manifest, tmp_path: Path) -> None:
    raw, real = real_manifest
    write_json(tmp_path / "m.json", build_manifest(_snapshot_of(real)))
    assert (tmp_path / "m.json").read_bytes() == raw


def test_partition_and_cluster_sections_come_last_and_only_when_set() -> None:
    snap = _plain()
    assert "partition" not in build_manifest(snap) and "cluster" not in build_manifest(snap)
    scoped = dataclasses.replace(
        snap, partition={"index": 0, "count": 2}, cluster={"executor": "ray", "partitions": 2}
    )
    assert list(build_manifest(scoped))[-2:] == ["partition", "cluster"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.status = "crashed"  # type: ignore[misc]
