"""The manifest (`OUTPUT/manifest.json`): what the output holds and how it was made.

It is rewritten after every checkpoint, atomically, from the writer thread, so it always lists exactly
the shards on disk. On resume, `check_compatible` refuses to mix answers to a changed recipe.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gen import __version__
from gen.errors import ConfigError
from gen.outdir import MANIFEST
from gen.rows import ROW_SCHEMA_VERSION
from gen.shards import ShardInfo

FORMAT = "gen-manifest/1"


@dataclass(frozen=True, slots=True)
class RunSnapshot:
    """What a manifest says, as plain data taken at one instant: filled by a run (Run.snapshot) or by
    the cluster driver from its partitions' manifests, turned into manifest.json by `build_manifest()`. Every
    field is a manifest value as written (JSON-ready); nothing here refers back to a run."""

    run_id: str
    status: str
    created_at: str
    updated_at: str
    prompt_file: dict[str, Any]  # path, sha256
    template: dict[str, Any]  # name, version, sha256, description
    schema: dict[str, Any] | None  # ref, name, sha256
    provider: str
    model: str
    served_models: list[str]
    license: str | None
    base_urls: list[str | None]  # as recorded (no credentials), empty where the provider records none
    launched: list[dict[str, Any]]  # the servers gen started
    seed: dict[str, Any] | None  # path, license
    intended_use: Any
    licence_review: dict[str, Any]
    sampling: dict[str, Any]
    samples: int
    limit: int | None
    eval_fraction: float
    lineage: Any
    shards: list[ShardInfo]
    dedup: dict[str, Any]
    usage: dict[str, Any]
    cost_usd: float | None
    journal_committed: list[str]  # segments whose every entry this manifest counts
    runs: list[dict[str, Any]]  # every run of the output, this one last (see run_entry)
    partition: dict[str, Any] | None = None  # a partition's scope (index, count, limit, samples)
    cluster: dict[str, Any] | None = None  # the merged manifest's cluster section
    verification: dict[str, Any] | None = None  # [verify]: the check and its tries per template
    reasoning_format: str = "field"  # how traces enter `messages` (gen.reasoning.REASONING_FORMATS)


def run_entry(run_id: str, status: str, wall_time_s: float, stats: dict[str, Any]) -> dict[str, Any]:
    """One run's entry in `runs`: its id, status, version, wall time and counters (RunStats.as_dict)."""
    return {
        "run_id": run_id,
        "status": status,
        "generator_version": __version__,
        "wall_time_s": round(wall_time_s, 3),
        **stats,
    }


def build_manifest(snap: RunSnapshot) -> dict[str, Any]:
    """The manifest (the content of manifest.json) of a snapshot; keys in the order they are written."""
    return {
        "format": FORMAT,
        "row_schema_version": ROW_SCHEMA_VERSION,
        "run_id": snap.run_id,
        "status": snap.status,
        "created_at": snap.created_at,
        "updated_at": snap.updated_at,
        "generator_version": __version__,
        "prompt_file": snap.prompt_file,
        "template": snap.template,
        "schema": snap.schema,
        "teacher": {
            "provider": snap.provider,
            "model": snap.model,
            "served_models": snap.served_models,
            "license": snap.license,
            "base_urls": snap.base_urls,
            "launched": snap.launched,
        },
        "seed": snap.seed,
        "intended_use": snap.intended_use,
        "licence_review": snap.licence_review,
        "sampling": snap.sampling,
        "reasoning_format": snap.reasoning_format,
        "samples": snap.samples,
        "limit": snap.limit,  # with samples, the task set a complete output decides (audit)
        "eval_fraction": snap.eval_fraction,
        "lineage": snap.lineage,
        "shards": [s.as_dict() for s in snap.shards],
        "totals": totals(snap.shards),
        "dedup": snap.dedup,
        **({"verification": snap.verification} if snap.verification is not None else {}),
        "usage": snap.usage,
        "cost_usd": snap.cost_usd,
        # Segments whose every entry this manifest counts: a resumed run skips them if a crash left
        # them behind (between this write and their deletion).
        "journal_committed": snap.journal_committed,
        "runs": snap.runs,
        **({"partition": snap.partition} if snap.partition is not None else {}),
        **({"cluster": snap.cluster} if snap.cluster is not None else {}),
    }


def totals(shards: list[ShardInfo]) -> dict[str, int]:
    per_split = Counter[str]()
    for s in shards:
        per_split[s.split] += s.rows
    return {
        "rows": per_split["train"] + per_split["eval"],
        "train": per_split["train"],
        "eval": per_split["eval"],
        "rejects": per_split["rejects"],
        "duplicates": per_split["duplicates"],
    }


def recipe_fingerprint(m: dict[str, Any]) -> dict[str, Any]:
    """The parts of a manifest that must match for a resumed run to add to the same dataset. A manifest
    without `row_schema_version` was written before it was recorded, with version 1's columns."""
    return {
        "row schema": row_schema_version(m),
        "prompt file": m["prompt_file"]["sha256"],
        "template": m["template"]["sha256"],
        "schema": (m.get("schema") or {}).get("sha256"),
        "teacher provider": m["teacher"]["provider"],
        "teacher model": m["teacher"]["model"],
        "teacher licence": m["teacher"]["license"],
        # how traces enter `messages`: one dataset holds one shape (before it was recorded: "field")
        "reasoning format": m.get("reasoning_format", "field"),
    }


def check_compatible(out_dir: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    """Raise ConfigError naming what changed since the output was begun."""
    if old.get("format") != FORMAT:
        raise ConfigError(out_dir, f"{MANIFEST} is not a {FORMAT} manifest; choose another --output")
    if (was := row_schema_version(old)) != row_schema_version(new):
        raise ConfigError(  # `was` comes from a file: shown as a short repr, never a multi-line value
            out_dir,
            f"holds rows of row schema version {repr(was)[:20]}, this gen writes version "
            f"{row_schema_version(new)}: pass --new-version to start a new version beside it",
        )
    before, now = recipe_fingerprint(old), recipe_fingerprint(new)
    changed = [f"{k} ({_short(before[k])} -> {_short(now[k])})" for k in before if before[k] != now[k]]
    if changed:
        raise ConfigError(
            out_dir,
            "holds a dataset made with a different recipe: "
            + ", ".join(changed)
            + "; pass --new-version to start a new version beside it",
        )


def row_schema_version(m: dict[str, Any]) -> Any:
    """The row-schema version a manifest's rows were written with (1 when it does not say)."""
    return m.get("row_schema_version", 1)


def _short(v: Any) -> str:
    s = str(v)
    return s[:12] if len(s) == 64 else s


def next_version_dir(out_dir: Path) -> Path:
    """`outputs/name` -> `outputs/name-v2` (or the next free version)."""
    base, _, number = out_dir.name.rpartition("-v")
    if base and number.isdigit():
        stem, n = base, int(number) + 1
    else:
        stem, n = out_dir.name, 2
    while (out_dir.parent / f"{stem}-v{n}").exists():
        n += 1
    return out_dir.parent / f"{stem}-v{n}"
