"""What `gen report` shows, gathered from an output directory in one streaming pass (no plotting here).

Shards are read through gen/shards.py a record batch at a time, only the columns a section needs, so
memory does not grow with the number of rows: every distribution is a Counter of values (token counts,
lengths, labels, seconds of `created_at`), whose size is bounded by the range of the values, and the
examples are a uniform sample of a few of each kind (reservoir sampling). A million-row output is read
in about 4 s of CPU (bench/report_bench.py).
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from gen.outdir import OutputDir
from gen.shards import committed_shards, iter_column_batches, split_of_path

EXAMPLES = 3  # examples sampled per reject reason and per duplicate kind
EXAMPLE_CHARS = 1_500  # an example's text is cut here: the page stays small whatever the teacher wrote
MAX_CLASSES = 30  # a field with more distinct values than this is not categorical
SMALL_INT_RANGE = 20  # an integer field with a schema range this small is categorical
TOKEN_COLUMNS = ("prompt_tokens", "completion_tokens", "reasoning_tokens", "cached_tokens")
# `reasoning` (the teacher's reasoning text) and the token columns past the first two are read where an
# output has them (newer row schemas), skipped where it does not.
DATA_COLUMNS = (
    "id",
    "output",
    "response",
    "reasoning",
    "split",
    *TOKEN_COLUMNS,
    "attempts",
    "finish_reason",
    "created_at",
)


def clip(text: Any, limit: int = EXAMPLE_CHARS) -> str:
    """An example's text for the page: at most `limit` characters, saying how much was cut."""
    s = text if isinstance(text, str) else "" if text is None else str(text)
    return s if len(s) <= limit else s[:limit] + f"... [{len(s) - limit:,} more characters]"


@dataclass(slots=True)
class ReportData:
    """Everything the page shows, as plain data (counters, examples, the manifest)."""

    out_dir: Path
    manifest: dict[str, Any]
    splits: Counter[str] = field(default_factory=Counter)  # rows read per split (train, eval, ...)
    reject_reasons: Counter[str] = field(default_factory=Counter)
    reject_examples: dict[str, list[dict[str, str]]] = field(default_factory=lambda: defaultdict(list))
    rejects_without_answer: int = 0  # rejects the teacher never answered (no raw reply)
    duplicate_kinds: Counter[str] = field(default_factory=Counter)
    duplicate_examples: dict[str, list[dict[str, str]]] = field(default_factory=lambda: defaultdict(list))
    tokens: dict[str, Counter[int]] = field(default_factory=dict)  # column -> value -> rows
    token_columns_absent: list[str] = field(default_factory=list)
    attempts: Counter[int] = field(default_factory=Counter)
    reasoning_chars: Counter[int] = field(default_factory=Counter)  # characters of `reasoning`, where set
    finish_reasons: Counter[str] = field(default_factory=Counter)
    seconds: Counter[int] = field(default_factory=Counter)  # epoch second of created_at -> data rows
    lengths: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))  # field -> chars
    labels: dict[str, dict[str, Counter[str]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(Counter))
    )  # field -> split -> value -> rows
    categorical_from: str = "schema"  # "schema", or "inferred" (the schema could not be loaded)
    unreadable: list[str] = field(default_factory=list)  # shards skipped, with why
    rng: random.Random = field(default_factory=lambda: random.Random(0))  # the examples' sampling
    evals: list[dict[str, Any]] = field(default_factory=list)  # {"name", "report"} per OUTPUT/evals/*/
    eval_problems: list[str] = field(default_factory=list)


def collect(out_dir: Path, manifest: dict[str, Any], listed: list[str] | None = None) -> ReportData:
    """Read an output's committed shards (those the manifest lists, else every one on disk) once."""
    data = ReportData(out_dir, manifest)
    categorical = categorical_fields(manifest)
    if categorical is None:
        data.categorical_from = "inferred"
    shards = listed if listed is not None else committed_shards(out_dir)
    by_kind: dict[str, list[str]] = defaultdict(list)
    for rel in shards:
        by_kind[split_of_path(rel)].append(rel)
    wanted: dict[str, list[dict[str, str]]] = {}  # id prefix -> duplicate examples waiting for their row
    for rel in by_kind["duplicates"]:
        _read(
            data,
            rel,
            ["id", "duplicate_of", "kind", "output", "vars"],
            lambda b: _duplicates(data, b),
        )
    for example in (e for examples in data.duplicate_examples.values() for e in examples):
        if example["duplicate_of"]:
            wanted.setdefault(example["duplicate_of"], []).append(example)
    for rel in by_kind["rejects"]:
        _read(
            data, rel, ["id", "reason", "error", "response", "vars", "attempts"], lambda b: _rejects(data, b)
        )
    inferred: dict[str, dict[str, Counter[str]]] = {}
    seen_columns: set[str] = set()
    # The raw reply is read only where there is no validated output to read instead (no schema).
    columns = [c for c in DATA_COLUMNS if c != "response" or not manifest.get("schema")]
    for split in ("train", "eval"):
        for rel in by_kind[split]:
            _read(
                data,
                rel,
                columns,
                lambda b, s=split: _data(data, s, b, categorical, inferred, wanted, seen_columns),
            )
    data.token_columns_absent = [c for c in TOKEN_COLUMNS if c not in seen_columns]
    if categorical is None:
        _inferred_labels(data, inferred)
    if wanted:  # the row named was itself removed later (by the near step, after the exact one kept it)
        for rel in by_kind["duplicates"]:
            _read(data, rel, ["id", "kind", "output"], lambda b: _removed_kept(b, wanted))
    for example in (e for examples in data.duplicate_examples.values() for e in examples):
        example.setdefault("kept", "")
        example.setdefault("kept_note", "")
    data.evals, data.eval_problems = read_evals(out_dir)
    return data


def _read(data: ReportData, rel: str, columns: list[str], consume: Any) -> None:
    try:
        for batch in iter_column_batches(data.out_dir, rel, columns):
            consume(batch)
    except Exception as e:  # a corrupt or truncated shard: the page says which and why, the rest is read
        data.unreadable.append(f"{rel}: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}")


def _rows(batch: dict[str, list[Any]]) -> int:
    return len(next(iter(batch.values()))) if batch else 0


def _slot(data: ReportData, sample: list[Any], seen: int) -> int | None:
    """Reservoir sampling (algorithm R, seeded): where the `seen`-th item of a kind goes in its sample of
    EXAMPLES, or None. Every item has the same chance, whatever the size: examples come from the whole
    run, not its first minutes, and the same output gives the same page."""
    if len(sample) < EXAMPLES:
        return len(sample)
    j = data.rng.randrange(seen)
    return j if j < EXAMPLES else None


def _put(sample: list[Any], slot: int, item: Any) -> None:
    if slot == len(sample):
        sample.append(item)
    else:
        sample[slot] = item


def _duplicates(data: ReportData, b: dict[str, list[Any]]) -> None:
    n = _rows(b)
    data.splits["duplicates"] += n
    kinds = b.get("kind") or [None] * n
    for i, kind in enumerate(kinds):
        kind = kind or "unknown"
        data.duplicate_kinds[kind] += 1
        sample = data.duplicate_examples[kind]
        slot = _slot(data, sample, data.duplicate_kinds[kind])
        if slot is not None:
            example = {
                "id": str(b["id"][i]),
                "duplicate_of": str(b["duplicate_of"][i] or ""),
                "output": clip(b["output"][i]),
                "vars": clip(b["vars"][i], 300),
            }
            _put(sample, slot, example)


def _removed_kept(b: dict[str, list[Any]], wanted: dict[str, list[dict[str, str]]]) -> None:
    for i, rid in enumerate(b["id"]):
        for example in wanted.pop(rid[:16], ()) if rid else ():
            example["kept"] = clip(b["output"][i])
            example["kept_note"] = f"itself removed later, as a {b['kind'][i]} duplicate"


def _rejects(data: ReportData, b: dict[str, list[Any]]) -> None:
    n = _rows(b)
    data.splits["rejects"] += n
    for i in range(n):
        reason = b["reason"][i] or "unknown"
        data.reject_reasons[reason] += 1
        if b["response"][i] is None:
            data.rejects_without_answer += 1
        sample = data.reject_examples[reason]
        slot = _slot(data, sample, data.reject_reasons[reason])
        if slot is not None:
            _put(
                sample,
                slot,
                {
                    "id": str(b["id"][i]),
                    "error": clip(b["error"][i], 500),
                    "response": clip(b["response"][i]) if b["response"][i] is not None else "(no answer)",
                    "vars": clip(b["vars"][i], 300),
                    "attempts": str(b["attempts"][i]),
                },
            )


def _data(
    data: ReportData,
    split: str,
    b: dict[str, list[Any]],
    categorical: dict[str, list[str] | None] | None,
    inferred: dict[str, Any],
    wanted: dict[str, list[dict[str, str]]],
    seen_columns: set[str],
) -> None:
    n = _rows(b)
    data.splits[split] += n
    seen_columns.update(b)
    for column in TOKEN_COLUMNS:
        values = b.get(column)
        if values is not None:
            data.tokens.setdefault(column, Counter()).update(v for v in values if v is not None)
    data.attempts.update(v for v in b.get("attempts", ()) if v is not None)
    data.finish_reasons.update(v or "none" for v in b.get("finish_reason", ()))
    data.seconds.update(v // 1000 for v in b.get("created_at", ()) if v is not None)
    data.reasoning_chars.update(len(v) for v in b.get("reasoning", ()) if v)
    if wanted:
        for i, rid in enumerate(b["id"]):
            for example in wanted.pop(rid[:16], ()) if rid else ():
                kept = b["output"][i] if b["output"][i] is not None else b.get("response", [None] * n)[i]
                example["kept"] = clip(kept)
    outputs = b.get("output") or [None] * n
    responses = b.get("response") or [None] * n
    lengths = data.lengths
    labels = data.labels
    for out_text, response in zip(outputs, responses, strict=True):
        if out_text is None:  # no schema: the answer is free text
            lengths["response"][len(response or "")] += 1
            continue
        try:
            value = orjson.loads(out_text)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(value, dict):
            continue
        for name, v in value.items():
            if categorical is not None:
                if name in categorical:
                    labels[name][split][_label(v)] += 1
                elif isinstance(v, str):
                    lengths[name][len(v)] += 1
                continue
            # No schema to ask: booleans and fields with few distinct values are categorical.
            if isinstance(v, str):
                lengths[name][len(v)] += 1
            if isinstance(v, (str, bool, int)) and inferred.get(name, {}) is not None:
                inferred.setdefault(name, defaultdict(Counter))[split][_label(v)] += 1
    if categorical is None:  # checked once a batch: a field with too many distinct values is text
        for name, per in inferred.items():
            if per is not None and len(set().union(*per.values())) > MAX_CLASSES:
                inferred[name] = None


def _inferred_labels(data: ReportData, inferred: dict[str, Any]) -> None:
    """Fields inferred categorical are shown as labels, not as lengths."""
    for name, per in inferred.items():
        if per is not None:
            data.labels[name] = per
            data.lengths.pop(name, None)


def _label(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return "null" if v is None else str(v)


def categorical_fields(manifest: dict[str, Any]) -> dict[str, list[str] | None] | None:
    """The schema's categorical top-level fields (enums, booleans, small integer ranges) -> their
    classes (None: not enumerable, e.g. a boolean's are true/false); {} for an output without a schema;
    None when the schema cannot be loaded again as recorded (moved, or changed since the run)."""
    recorded = manifest.get("schema") or None
    if recorded is None:
        return {}
    if not isinstance(recorded, dict) or not isinstance(manifest.get("prompt_file"), dict):
        return None
    try:
        from gen.schema import load_schema

        base = Path((manifest.get("prompt_file") or {}).get("path", "")).parent
        schema = load_schema(recorded["ref"], base_dir=base, where=base)
        if schema.sha256 != recorded.get("sha256"):
            return None
        js = schema.json_schema
    except Exception:  # a schema file gone or changed: the page infers from the data instead
        return None
    defs = js.get("$defs") or js.get("definitions") or {}
    out: dict[str, list[str] | None] = {}
    for name, prop in (js.get("properties") or {}).items():
        classes = _classes(prop, defs)
        if classes is not False:
            out[name] = classes
    return out


def _classes(prop: Any, defs: dict[str, Any]) -> list[str] | None | bool:
    """A property's classes if it is categorical, False if it is not."""
    if not isinstance(prop, dict):
        return False
    ref = prop.get("$ref")
    if isinstance(ref, str) and ref.rsplit("/", 1)[-1] in defs:
        return _classes(defs[ref.rsplit("/", 1)[-1]], defs)
    if "enum" in prop:
        return [_label(v) for v in prop["enum"]]
    if "const" in prop:
        return [_label(prop["const"])]
    for key in ("anyOf", "oneOf"):
        if key in prop:  # Optional[Literal[...]]: the enum's classes and null
            parts = [_classes(p, defs) for p in prop[key]]
            if all(p is not False for p in parts):
                return [c for p in parts if isinstance(p, list) for c in p] or None
            return False
    kind = prop.get("type")
    if kind == "boolean":
        return ["true", "false"]
    if kind == "null":
        return ["null"]
    if kind == "integer" and isinstance(prop.get("minimum"), int) and isinstance(prop.get("maximum"), int):
        lo, hi = prop["minimum"], prop["maximum"]
        if 0 <= hi - lo <= SMALL_INT_RANGE:
            return [str(i) for i in range(lo, hi + 1)]
    return False


def read_evals(out_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Every OUTPUT/evals/*/report.json (written by `gen eval`), in name order, and one line per
    unreadable one."""
    found, problems = [], []
    root = OutputDir(out_dir).evals
    for path in sorted(root.glob("*/report.json")) if root.is_dir() else []:
        try:
            report = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as e:
            problems.append(f"{path.relative_to(out_dir)}: unreadable ({e})")
            continue
        if not isinstance(report, dict):
            problems.append(f"{path.relative_to(out_dir)}: not a JSON object")
            continue
        found.append({"name": path.parent.name, "path": str(path.relative_to(out_dir)), "report": report})
    return found, problems
