"""`gen diff OLD NEW`: what changed between two versions of a dataset (a refresh with a new teacher, say)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import orjson

from gen.errors import ConfigError
from gen.ledger import load_manifest
from gen.outdir import NOT_AN_OUTPUT
from gen.shards import read_columns


def _load(out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    manifest = load_manifest(out)
    if manifest is None:
        raise ConfigError(out, NOT_AN_OUTPUT)
    outputs: dict[str, Any] = {}
    for shard in manifest["shards"]:
        if shard["split"] not in ("train", "eval"):
            continue
        cols = read_columns(out, shard["path"], ["id", "output", "response"])
        for tid, output, response in zip(cols["id"], cols["output"], cols["response"], strict=True):
            outputs[tid] = orjson.loads(output) if output is not None else response
    return manifest, outputs


def _length(value: Any) -> int:
    return len(value) if isinstance(value, str) else len(orjson.dumps(value))


def diff(old_dir: str | Path, new_dir: str | Path) -> dict[str, Any]:
    """Rows, reject rates, output lengths and field-by-field agreement on the inputs both versions share."""
    old_m, old = _load(Path(old_dir))
    new_m, new = _load(Path(new_dir))
    common = sorted(old.keys() & new.keys())
    fields: dict[str, list[int]] = {}
    exact = 0
    for tid in common:
        a, b = old[tid], new[tid]
        exact += a == b
        if isinstance(a, dict) and isinstance(b, dict):
            for key in a.keys() | b.keys():
                agree = fields.setdefault(key, [0, 0])
                agree[0] += a.get(key) == b.get(key)
                agree[1] += 1

    def side(m: dict[str, Any], outputs: dict[str, Any]) -> dict[str, Any]:
        t = m["totals"]
        asked = t["rows"] + t["rejects"] + t["duplicates"]
        lengths = [_length(v) for v in outputs.values()]
        return {
            "teacher": f"{m['teacher']['provider']}:{m['teacher']['model']}",
            "licence": m["teacher"]["license"],
            "rows": t["rows"],
            "rejects": t["rejects"],
            "reject_rate": round(t["rejects"] / asked, 4) if asked else 0.0,
            "duplicates": t["duplicates"],
            "output_chars_mean": round(statistics.fmean(lengths), 1) if lengths else 0.0,
            "output_chars_median": statistics.median(lengths) if lengths else 0,
        }

    return {
        "warnings": [w for w in (_recipe_warning(old_m, new_m),) if w],
        "old": {"path": str(old_dir), **side(old_m, old)},
        "new": {"path": str(new_dir), **side(new_m, new)},
        "lineage": new_m.get("lineage"),
        "common_inputs": len(common),
        "only_old": len(old.keys() - new.keys()),
        "only_new": len(new.keys() - old.keys()),
        "identical_outputs": round(exact / len(common), 4) if common else None,
        "field_agreement": {k: round(v[0] / v[1], 4) for k, v in sorted(fields.items())},
    }


def _recipe_warning(old_m: dict[str, Any], new_m: dict[str, Any]) -> str | None:
    """One line when the outputs were made from different templates or schemas (a refresh keeps both)."""

    def recipe(m: dict[str, Any]) -> tuple[str, str, str | None]:
        return m["template"]["name"], m["template"]["sha256"], (m.get("schema") or {}).get("sha256")

    a, b = recipe(old_m), recipe(new_m)
    if a == b:
        return None
    what = f"template {a[0]} ({a[1][:12]}) vs {b[0]} ({b[1][:12]})"
    if a[2] != b[2]:
        what += ", different schemas"
    return f"the two outputs come from different recipes ({what}): their outputs may not be comparable"


def render(d: dict[str, Any]) -> str:
    o, n = d["old"], d["new"]
    lines = [
        f"gen diff {o['path']} -> {n['path']}",
        *(f"warning: {w}" for w in d.get("warnings", [])),
        "| | old | new |",
        "| --- | --- | --- |",
    ]
    for key in ("teacher", "licence", "rows", "rejects", "reject_rate", "duplicates", "output_chars_mean",
                "output_chars_median"):  # fmt: skip
        lines.append(f"| {key} | {o[key]} | {n[key]} |")
    if d["common_inputs"]:
        lines.append(
            f"shared inputs: {d['common_inputs']} (only old: {d['only_old']}, only new: {d['only_new']}); "
            f"identical outputs: {d['identical_outputs']}"
        )
    else:
        lines.append(
            f"shared inputs: none: the two outputs share no inputs (only old: {d['only_old']}, "
            f"only new: {d['only_new']}), so no output can be compared"
        )
    if d["field_agreement"]:
        lines.append("agreement by field (share of shared inputs with the same value):")
        lines += [f"  {k}: {v:.1%}" for k, v in d["field_agreement"].items()]
    return "\n".join(lines)
