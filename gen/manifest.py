"""The manifest (`OUTPUT/manifest.json`): what the output holds and how it was made.

It is rewritten after every checkpoint, atomically, from the writer thread, so it always lists exactly
the shards on disk. On resume, `check_compatible` refuses to mix answers to a changed recipe.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from gen.errors import ConfigError
from gen.outdir import MANIFEST
from gen.shards import ShardInfo

FORMAT = "gen-manifest/1"


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
