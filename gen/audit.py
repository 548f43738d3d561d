"""`gen audit OUTPUT`: verify an output directory against its manifest, row by row.

Checks: every shard's sha256 and row count; no shard missing and none unlisted; every row's provenance
complete and consistent with the manifest; no id twice; no two kept rows the same by the dedup key the
manifest records (`dedup.on`); ids and splits reproducible from the recorded inputs; the licence
decision consistent with the intended use; and, for an output whose manifest says complete, that it
decides every task of its recipe (rows + rejects + duplicates = tasks: each id of the prompt file's task
set, within the recorded --limit, is in some shard). It then breaks the data down by teacher, licence,
template and split, and lists the obligations the user must honour when publishing a student.
Each finished evaluation under evals/ is checked too: its report was made against this manifest, and
its results name rows of the dataset.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gen.config import load_prompt_file
from gen.dedup import KEYS, LEGACY_KEY, Deduplicator, reasoning_of
from gen.errors import ConfigError
from gen.ledger import load_manifest, partition_of
from gen.manifest import FORMAT
from gen.outdir import MANIFEST, NOT_AN_OUTPUT, OutputDir
from gen.provenance import load_registry, review_teacher
from gen.reasoning import assistant_message
from gen.rows import COLUMNS, PROVENANCE
from gen.shards import DATA_SCHEMA, committed_shards, read_checked, read_columns, sha256_file, split_of_path
from gen.templates import Expansion, split_of, task_id


class _Part(BaseModel):
    # strict: "12" is not a row count; extra keys allowed: audit checks only what it reads.
    model_config = ConfigDict(strict=True, extra="allow")


class _Shard(_Part):
    path: str
    split: str
    rows: int = Field(ge=0)
    sha256: str


class _Template(_Part):
    name: str
    version: str
    sha256: str


class _Teacher(_Part):
    provider: str
    model: str
    license: str
    served_models: list[str] = []


class _PromptFile(_Part):
    sha256: str


class _Run(_Part):
    run_id: str


class _Totals(_Part):
    rows: int
    train: int
    eval: int
    rejects: int
    duplicates: int


class _Registry(_Part):
    path: str | None = None


class _Licence(_Part):
    attribution: str | None = None


class _Review(_Part):
    decision: str
    intended_use: str | None
    acknowledged: bool
    reasons: list[str] = []
    obligations: list[str] = []
    licence: _Licence | None = None
    registries: list[_Registry] = []


class AuditedManifest(_Part):
    """The keys of a manifest that `gen audit` reads, with their types. A manifest that does not fit
    is a finding naming the key, not a traceback: it may have been edited by hand or by an attacker."""

    format: str
    run_id: str
    runs: list[_Run] = []
    shards: list[_Shard]
    template: _Template
    teacher: _Teacher
    prompt_file: _PromptFile
    totals: _Totals
    eval_fraction: float = Field(default=0.05, ge=0, le=1)
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    intended_use: str | None = None
    licence_review: _Review | None = None


def _manifest_problems(manifest: Any) -> list[str]:
    """One line per key of the manifest that is missing or of the wrong type; [] when it fits."""
    if not isinstance(manifest, dict):
        return [f"{MANIFEST} holds {type(manifest).__name__}, not a JSON object"]
    try:
        AuditedManifest.model_validate(manifest)
    except ValidationError as e:
        problems = []
        for err in e.errors(include_url=False):
            where = ".".join(str(part) for part in err["loc"])
            if err["type"] == "missing":
                problems.append(f"{where} is missing")
                continue
            found = repr(err["input"])
            found = found if len(found) <= 60 else found[:57] + "..."
            if err["type"] in ("model_type", "model_attributes_type", "dict_type"):
                should = "should be a JSON object"
            else:
                should = err["msg"].removeprefix("Input ").removeprefix("Value ")
            problems.append(f"{where} is {found}: {should}")
        return problems
    return []


@dataclass(slots=True)
class Finding:
    shard: str | None
    row: int | None
    problem: str

    def __str__(self) -> str:
        where = self.shard or "manifest"
        if self.row is not None:
            where += f" row {self.row}"
        return f"{where}: {self.problem}"


@dataclass(slots=True)
class AuditReport:
    out_dir: Path
    findings: list[Finding] = field(default_factory=list)
    rows: Counter[tuple[str, str, str, str, str]] = field(default_factory=Counter)
    rejects: int = 0
    duplicates: int = 0
    review: dict[str, Any] = field(default_factory=dict)
    dedup_on: str | None = None  # the key the output was deduplicated by, as its manifest records it
    notes: list[str] = field(default_factory=list)  # what could not be checked, and why (not findings)

    @property
    def clean(self) -> bool:
        return not self.findings

    def add(self, shard: str | None, row: int | None, problem: str, *, limit: int = 1000) -> None:
        if len(self.findings) < limit:  # a wholly rewritten dataset must not print a million lines
            self.findings.append(Finding(shard, row, problem))

    def as_dict(self) -> dict[str, Any]:
        return {
            "output": str(self.out_dir),
            "clean": self.clean,
            "findings": [{"shard": f.shard, "row": f.row, "problem": f.problem} for f in self.findings],
            "breakdown": [
                {"teacher_provider": k[0], "teacher_model": k[1], "teacher_license": k[2], "template": k[3],
                 "split": k[4], "rows": n}
                for k, n in sorted(self.rows.items())
            ],
            "rejects": self.rejects,
            "duplicates": self.duplicates,
            "dedup_on": self.dedup_on,
            "licence_review": self.review,
            "notes": self.notes,
        }  # fmt: skip

    def render(self) -> str:
        lines = [f"gen audit {self.out_dir}"]
        lines.append("| teacher | model | licence | template | split | rows |")
        lines.append("| --- | --- | --- | --- | --- | --- |")
        for (prov, model, lic, tpl, split), n in sorted(self.rows.items()):
            lines.append(f"| {prov} | {model} | {lic} | {tpl} | {split} | {n} |")
        lines.append(
            f"rejects: {self.rejects}, duplicates removed: {self.duplicates}"
            + (f" (deduplicated by {self.dedup_on})" if self.dedup_on else "")
        )
        r = self.review
        if r:
            lines.append(
                f"licence review: {r.get('decision')} for intended use {r.get('intended_use')!r}"
                + (" (conflict acknowledged by the user)" if r.get("acknowledged") else "")
            )
            for reason in r.get("reasons", []):
                lines.append(f"  reason: {reason}")
            obligations = r.get("obligations") or []
            if obligations:
                lines.append("obligations when you publish a student trained on this data:")
                lines += [f"  - {o}" for o in obligations]
            attribution = (r.get("licence") or {}).get("attribution")
            if attribution:
                lines.append(f"  - display: {attribution}")
        lines += [f"note: {n}" for n in self.notes]
        if self.clean:
            lines.append("clean: every shard, row, id and licence decision checks out")
        else:
            lines.append(f"{len(self.findings)} finding(s):")
            lines += [f"  {f}" for f in self.findings]
        return "\n".join(lines)


def audit(out_dir: str | Path) -> AuditReport:
    """Verify an output directory. Raises ConfigError when there is no manifest to verify against."""
    out = Path(out_dir)
    try:
        manifest = load_manifest(out)
    except (OSError, ValueError) as e:
        raise ConfigError(OutputDir(out).manifest, f"unreadable: {e}") from None
    if manifest is None and not OutputDir(out).manifest.exists():
        raise ConfigError(out, NOT_AN_OUTPUT)
    report = AuditReport(out)
    if isinstance(manifest, dict) and manifest.get("format") != FORMAT:
        report.add(None, None, f"manifest format is {manifest.get('format')!r}, expected {FORMAT!r}")
        return report
    problems = _manifest_problems(manifest)
    if problems:  # nothing below can be checked against a manifest that does not hold what it must
        for problem in problems:
            report.add(None, None, f"malformed: {problem}")
        return report

    listed = {s["path"]: s for s in manifest.get("shards", [])}
    on_disk = set(committed_shards(out))
    for rel in sorted(on_disk - set(listed)):
        report.add(rel, None, "shard on disk is not listed in the manifest (added after the fact?)")
    seen_ids: dict[int | str, int | None] = {}  # id key (_id_key) -> the index in `order` of its last shard
    dedup = _dedup_of(report, manifest)
    seen_keys: dict[int, int | str] = {}  # exact dedup key -> the id key of the row that kept it
    expect = _Expect.of(manifest)
    # Unlisted shards are read too: a Parquet reader pointed at data/ would load them with the rest.
    order = [*listed, *sorted(on_disk - set(listed))]
    for number, rel in enumerate(order):
        entry = listed.get(rel)
        path = out / rel
        if rel not in on_disk or not path.is_file():
            report.add(rel, None, "shard listed in the manifest is missing")
            continue
        if entry is not None and sha256_file(path) != entry.get("sha256"):
            report.add(rel, None, "sha256 differs from the manifest: changed after it was written")
        split = split_of_path(rel)
        try:  # every page of every column is decoded; only the columns the checks read are kept
            schema, num_rows, batches = read_checked(path, _READ.get(split, []))
        except Exception as e:  # a corrupt file: report it as a finding, keep auditing the rest
            report.add(rel, None, f"unreadable Parquet: {e}")
            continue
        if entry is not None and num_rows != entry.get("rows"):
            report.add(rel, None, f"{num_rows} rows, the manifest says {entry.get('rows')}")
        expected = COLUMNS.get(split)
        if expected is None or not {c.name for c in expected} <= set(schema.names):
            report.add(rel, None, "columns differ from gen's schema for this folder")
            continue
        shard = _Read(rel, number, split, order, _typed(schema, split))
        keys = [_audit_batch(report, expect, shard, b, start, seen_ids) for b, start in _starts(batches)]
        if dedup is not None and split in ("train", "eval"):
            for (batch, start), ids in zip(_starts(batches), keys, strict=True):
                _audit_dedup_batch(report, dedup, shard, batch, start, ids, seen_keys)

    _audit_totals(report, manifest, listed)
    _audit_complete(report, manifest, seen_ids)
    _audit_licence(report, manifest)
    _audit_evals(report, out, manifest)
    return report


def _audit_evals(report: AuditReport, out: Path, m: dict[str, Any]) -> None:
    """Each finished `gen eval` (evals/NAME/report.json): made against this manifest (its sha256), and
    its results, as many as the report says, name only rows of the dataset (with fresh inputs,
    `--inputs`: none of its ids)."""
    reports = sorted(OutputDir(out).evals.glob("*/report.json"))
    if not reports:
        return
    manifest_sha = sha256_file(OutputDir(out).manifest)
    kept: set[str] = set()
    every: set[str] = set()  # any shard's: a fresh input must be in none
    for shard in m["shards"]:
        if (out / shard["path"]).is_file():
            try:
                ids = read_columns(out, shard["path"], ["id"])["id"]
            except Exception:  # an unreadable shard is already a finding above
                continue
            every.update(ids)
            if shard.get("split") in ("train", "eval"):
                kept.update(ids)
    for path in reports:
        where = str(path.relative_to(out))
        try:
            data = orjson.loads(path.read_bytes())
            recorded = data["dataset"]["manifest_sha256"]
            rows = data["rows"]
            fresh = bool(data.get("inputs"))
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError) as e:
            report.add(where, None, f"unreadable evaluation report: {e}")
            continue
        if recorded != manifest_sha:
            report.add(
                where,
                None,
                "made against another manifest (its sha256 differs): the dataset changed after this "
                "evaluation; run gen eval again",
            )
        results = path.parent / "results.parquet"
        rel = str(results.relative_to(out))
        try:
            ids = pq.read_table(results, columns=["id"]).column("id").to_pylist()
        except Exception as e:  # missing or corrupt: a finding, the audit goes on
            report.add(rel, None, f"unreadable evaluation results: {e}")
            continue
        if len(ids) != rows:
            report.add(rel, None, f"{len(ids)} rows, its report.json says {rows}")
        for i, tid in enumerate(ids):
            if fresh and tid in every:
                report.add(rel, i, f"id {tid} is in the dataset, yet evaluated as a fresh input")
            elif not fresh and tid not in kept:
                report.add(rel, i, f"id {tid} is not a row of the dataset")


# What the checks read of each kind of shard. Every page of every column is still decoded (a corrupt one
# is a finding, as before), but only these columns are kept, in Arrow form, and turned into Python values
# column by column where a check needs them: a million rows as Python dicts took most of the audit's time
# and memory.
_DATA_READ = [
    "id",
    *(c for c in PROVENANCE if c != "id"),
    *("split", "sample", "output", "messages", "reasoning", "response"),
]
_READ = {"train": _DATA_READ, "eval": _DATA_READ, "rejects": ["id"], "duplicates": ["id"]}
# Data columns compared as Arrow strings; the rest of PROVENANCE need only not be null.
_STRINGS = (
    "id", "vars", "template", "template_version", "template_sha256", "prompt_sha256", "teacher_provider",
    "teacher_model", "teacher_license", "run_id", "split", "output", "reasoning", "response",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Expect:
    """What the manifest says every data row holds."""

    checks: tuple[tuple[str, str], ...]  # (column, the value the manifest records), in finding order
    models: frozenset[str]
    run_ids: frozenset[Any]
    prompt_sha: str
    fraction: float
    schema: bool
    fmt: Any

    @classmethod
    def of(cls, m: dict[str, Any]) -> _Expect:
        template, teacher, prompt_sha = m["template"], m["teacher"], m["prompt_file"]["sha256"]
        return cls(
            checks=(
                ("template", template["name"]),
                ("template_version", template["version"]),
                ("template_sha256", template["sha256"]),
                ("prompt_sha256", prompt_sha),
                ("teacher_provider", teacher["provider"]),
                ("teacher_license", teacher["license"]),
            ),
            models=frozenset({teacher["model"], *teacher.get("served_models", [])}),
            run_ids=frozenset({r["run_id"] for r in m.get("runs", [])} | {m.get("run_id")}),
            prompt_sha=prompt_sha,
            fraction=m.get("eval_fraction", 0.05),
            schema=bool(m.get("schema")),
            # the answer as the recorded reasoning_format writes it (with a trace: think-tags around it)
            fmt=m.get("reasoning_format", "field"),
        )


@dataclass(frozen=True, slots=True)
class _Read:
    """The shard being checked: its path, its place in the audit's order, its split, and whether its
    columns have the types gen writes (`_typed`)."""

    rel: str
    number: int
    split: str
    order: list[str]
    typed: bool


def _typed(schema: Any, split: str) -> bool:
    """Whether a shard's columns have the types gen writes, so that the checks can compare them as Arrow
    arrays. Any other shard (edited by hand or by another tool) is checked row by row as Python values."""
    if split not in ("train", "eval"):
        return True  # only ids are read, as Python values either way
    if any(schema.field(name).type != pa.string() for name in _STRINGS):
        return False
    messages = schema.field("messages").type
    if not pa.types.is_integer(schema.field("sample").type) or not pa.types.is_list(messages):
        return False
    if not pa.types.is_struct(messages.value_type):
        return False
    fields = {f.name: f.type for f in messages.value_type}
    return fields.get("role") == pa.string() and fields.get("content") == pa.string()


def _by_rows(shard: _Read, batch: Any) -> bool:
    """Whether a batch is checked row by row: a shard of other types, or a null message struct inside a
    list (the Arrow path reads message fields without their struct's nulls)."""
    if not shard.typed:
        return True
    return shard.split in ("train", "eval") and batch.column("messages").values.null_count > 0


def _starts(batches: list[Any]) -> Iterator[tuple[Any, int]]:
    """Each batch with the shard row number of its first row (findings name rows of the shard)."""
    start = 0
    for batch in batches:
        yield batch, start
        start += batch.num_rows


def _id_key(tid: str) -> int | str:
    """What the id sets hold for an id: gen's ids (32 lowercase hex digits) as a 128-bit int, a third
    less memory than the string; any other string as itself (an int never equals a str, so two ids
    share a key only when they are equal)."""
    if len(tid) == 32:
        try:
            key = int(tid, 16)
        except ValueError:
            return tid
        if f"{key:032x}" == tid:  # int() also takes upper case, "_" and "0x": those stay strings
            return key
    return tid


def _id_str(key: int | str) -> str:
    return f"{key:032x}" if isinstance(key, int) else key


def _see(
    report: AuditReport, shard: _Read, i: int, tid: Any, seen_ids: dict[int | str, int | None]
) -> int | str | None:
    """The id check of one row: its id key, or None (and a finding) for a row without an id."""
    if not isinstance(tid, str):
        report.add(shard.rel, i, "row without an id")
        return None
    key = _id_key(tid)
    last = seen_ids.get(key)
    if last is not None:
        report.add(shard.rel, i, f"id {tid} appears twice (also in {shard.order[last]})")
    seen_ids[key] = shard.number
    return key


def _np(array: Any) -> Any:
    """A boolean Arrow array (no nulls) as a numpy array."""
    return array.to_numpy(zero_copy_only=False)


def _last_contents(messages: Any) -> Any:
    """Each row's last message content as an Arrow string array: null for null or empty messages."""
    offsets = messages.offsets.to_numpy()
    valid = _np(messages.is_valid()) & (offsets[1:] > offsets[:-1])
    return messages.values.field("content").take(pa.array(offsets[1:] - 1, mask=~valid))


def _audit_batch(
    report: AuditReport,
    expect: _Expect,
    shard: _Read,
    batch: Any,
    start: int,
    seen_ids: dict[int | str, int | None],
) -> list[int | str | None]:
    """Check the rows of one record batch, in order, as `_audit_rows` does, with the comparisons every
    row passes made on Arrow arrays; Python values are built only for what each row needs hashed or
    parsed, and for the rows a comparison flags. Returns each row's id key (None: no id)."""
    if _by_rows(shard, batch):
        return _audit_rows(report, expect, shard, batch.to_pylist(), start, seen_ids)
    rel, split, col = shard.rel, shard.split, batch.column
    ids = col("id").to_pylist()
    if split not in ("train", "eval"):  # rejects and duplicates: their ids only
        keys = [_see(report, shard, start + j, tid, seen_ids) for j, tid in enumerate(ids)]
        counted = sum(k is not None for k in keys)
        if split == "rejects":
            report.rejects += counted
        elif split == "duplicates":
            report.duplicates += counted
        return keys
    n = batch.num_rows
    missing = np.zeros(n, dtype=bool)
    for c in PROVENANCE:
        if col(c).null_count:
            missing |= _np(col(c).is_null())
    # rows whose provenance differs from the manifest somewhere (nulls are `missing`, checked first)
    odd = np.zeros(n, dtype=bool)
    for c, want in expect.checks:
        odd |= _np(pc.not_equal(col(c), pa.scalar(want, pa.string())).fill_null(False))
    templates = col("template").to_pylist() if odd.any() else None
    for c, allowed in (("teacher_model", expect.models), ("run_id", expect.run_ids)):
        odd |= ~_np(pc.is_in(col(c), value_set=pa.array(sorted(allowed, key=str), pa.string())))
    wrong_split = _np(pc.not_equal(col("split"), pa.scalar(split, pa.string())).fill_null(True))
    vars_, samples = col("vars").to_pylist(), col("sample").to_pylist()
    outputs, models = col("output").to_pylist(), col("teacher_model").to_pylist()
    differs = _np(pc.not_equal(_last_contents(col("messages")), col("output")).fill_null(True))
    if expect.fmt == "think-tags" and col("reasoning").null_count < n:
        last, reasoning = _last_contents(col("messages")), col("reasoning")
        for j in np.flatnonzero(_np(reasoning.is_valid())):
            if outputs[j] is not None:
                want = assistant_message(outputs[j], reasoning[j].as_py(), expect.fmt)["content"]
                differs[j] = last[j].as_py() != want
    (_, name), provider, licence = expect.checks[0], expect.checks[4][1], expect.checks[5][1]
    keys: list[int | str | None] = []
    for j in range(n):
        i = start + j
        key = _see(report, shard, i, ids[j], seen_ids)
        keys.append(key)
        if key is None:
            continue
        if missing[j]:
            gone = [c for c in PROVENANCE if not col(c)[j].is_valid]
            report.add(rel, i, f"provenance incomplete: {', '.join(gone)} missing")
            continue
        tid, v = ids[j], vars_[j]
        if odd[j]:
            value = {c: col(c)[j].as_py() for c in (*(c for c, _ in expect.checks), "run_id")}
            for c, want in expect.checks:
                if value[c] != want:
                    report.add(rel, i, f"{c} is {value[c]!r}, the manifest says {want!r}")
            if models[j] not in expect.models:
                report.add(rel, i, f"teacher_model {models[j]!r} is not the manifest's teacher")
            if value["run_id"] not in expect.run_ids:
                report.add(rel, i, f"run_id {value['run_id']!r} is not a run of this dataset")
            group = (value["teacher_provider"], models[j], value["teacher_license"], value["template"], split)
        else:
            group = (provider, models[j], licence, name, split)
        if task_id(expect.prompt_sha, templates[j] if templates else name, v, samples[j]) != tid:
            report.add(rel, i, "id does not match its inputs (vars, sample, template, prompt file)")
        if wrong_split[j] or split_of(v, expect.fraction) != split:
            report.add(rel, i, f"split {col('split')[j].as_py()!r} does not follow from its inputs")
        if outputs[j] is not None:
            try:
                output = orjson.loads(outputs[j])
            except orjson.JSONDecodeError:
                report.add(rel, i, "output is not valid JSON")
                output = None
            if output is not None and expect.schema and differs[j]:
                report.add(rel, i, "the assistant message differs from the validated output")
        report.rows[group] += 1
    return keys


def _audit_rows(
    report: AuditReport,
    expect: _Expect,
    shard: _Read,
    rows: list[dict[str, Any]],
    start: int,
    seen_ids: dict[int | str, int | None],
) -> list[int | str | None]:
    """`_audit_batch` for rows as Python dicts: the checks as written, for shards of other types."""
    rel, split = shard.rel, shard.split
    keys: list[int | str | None] = []
    for j, row in enumerate(rows):
        i = start + j
        key = _see(report, shard, i, row.get("id"), seen_ids)
        keys.append(key)
        if key is None:
            continue
        tid = row["id"]
        if split == "rejects":
            report.rejects += 1
            continue
        if split == "duplicates":
            report.duplicates += 1
            continue
        missing = [c for c in PROVENANCE if row.get(c) is None]
        if missing:
            report.add(rel, i, f"provenance incomplete: {', '.join(missing)} missing")
            continue
        for column, want in expect.checks:
            if row[column] != want:
                report.add(rel, i, f"{column} is {row[column]!r}, the manifest says {want!r}")
        if row["teacher_model"] not in expect.models:
            report.add(rel, i, f"teacher_model {row['teacher_model']!r} is not the manifest's teacher")
        if row["run_id"] not in expect.run_ids:
            report.add(rel, i, f"run_id {row['run_id']!r} is not a run of this dataset")
        if task_id(expect.prompt_sha, row["template"], row["vars"], row["sample"]) != tid:
            report.add(rel, i, "id does not match its inputs (vars, sample, template, prompt file)")
        if row["split"] != split or split_of(row["vars"], expect.fraction) != split:
            report.add(rel, i, f"split {row['split']!r} does not follow from its inputs")
        try:
            output = orjson.loads(row["output"]) if row["output"] is not None else None
        except orjson.JSONDecodeError:
            report.add(rel, i, "output is not valid JSON")
            output = None
        if output is not None and expect.schema:
            try:
                last = row["messages"][-1]["content"]
            except (TypeError, KeyError, IndexError):  # no messages: no assistant message to match
                last = None
            if last != assistant_message(row["output"], row.get("reasoning"), expect.fmt)["content"]:
                report.add(rel, i, "the assistant message differs from the validated output")
        report.rows[
            (row["teacher_provider"], row["teacher_model"], row["teacher_license"], row["template"], split)
        ] += 1
    return keys


def _dedup_of(report: AuditReport, m: dict[str, Any]) -> Deduplicator | None:
    """The exact key the output was deduplicated by: `dedup.on`, or "output" for an output made before
    it was recorded. None (with a finding) when the manifest names no known key."""
    recorded = m.get("dedup")
    on = recorded.get("on", LEGACY_KEY) if isinstance(recorded, dict) else LEGACY_KEY
    if on not in KEYS:
        report.add(None, None, f"dedup.on is {on!r}, not one of {', '.join(KEYS)}")
        return None
    report.dedup_on = on
    # traces are part of the key where the manifest says so (an output made before they were: no)
    return Deduplicator(on=on, near=False, reasoning=reasoning_of(False, m))


def _audit_dedup_batch(
    report: AuditReport,
    dedup: Deduplicator,
    shard: _Read,
    batch: Any,
    start: int,
    keys: list[int | str | None],
    seen: dict[int, int | str],
) -> None:
    """No two kept rows may be exact duplicates by the output's key (near ones are a matter of degree).
    The message fields are read as two flat string columns, not as a dict per message."""
    if _by_rows(shard, batch):
        _audit_dedup(report, dedup, shard, batch.to_pylist(), start, keys, seen)
        return
    col, n = batch.column, batch.num_rows
    messages = col("messages")
    offsets = messages.offsets.to_numpy()
    valid = _np(messages.is_valid())
    base = int(offsets[0])
    turns = messages.values.slice(base, int(offsets[-1]) - base)
    roles, contents = turns.field("role").to_pylist(), turns.field("content").to_pylist()
    outputs = col("output").to_pylist()
    responses = col("response").to_pylist() if col("output").null_count else None
    traces = col("reasoning").to_pylist() if col("reasoning").null_count < n else None
    ids = col("id")
    for j in range(n):
        a, b = int(offsets[j]) - base, int(offsets[j + 1]) - base
        if not valid[j] or b == a:
            report.add(shard.rel, start + j, "messages do not end with the answer")
            continue
        # the answer as the run keyed it: the output, else the text (the message may hold the trace)
        answer = outputs[j] if outputs[j] is not None else responses[j]  # type: ignore[index]
        try:
            pairs = zip(roles[a : b - 1], contents[a : b - 1], strict=True)
            digest = dedup.exact_digest(pairs, answer, traces[j] if traces else None)
        except (TypeError, KeyError, IndexError):
            report.add(shard.rel, start + j, "messages do not end with the answer")
            continue
        _kept(report, dedup, shard, start + j, digest, keys[j], ids[j].as_py, seen)


def _kept(
    report: AuditReport,
    dedup: Deduplicator,
    shard: _Read,
    i: int,
    digest: int,
    key: int | str | None,
    tid: Any,
    seen: dict[int, int | str],
) -> None:
    """Remember a kept row's exact key, or (a finding) name the earlier row that has it. `tid` gives
    the row's id as read (called only for a finding)."""
    first = seen.get(digest)
    if first is not None:
        report.add(
            shard.rel,
            i,
            f"id {tid()} is an exact duplicate by {dedup.on} of id {_id_str(first)}, which was kept",
        )
    else:
        seen[digest] = key if key is not None else str(tid())


def _audit_dedup(
    report: AuditReport,
    dedup: Deduplicator,
    shard: _Read,
    rows: list[dict[str, Any]],
    start: int,
    keys: list[int | str | None],
    seen: dict[int, int | str],
) -> None:
    """`_audit_dedup_batch` for rows as Python dicts."""
    for j, row in enumerate(rows):
        try:
            messages = row["messages"]
            messages[-1]["content"]  # noqa: B018 (a row must end with its answer)
            # the answer as the run keyed it: the output, else the text (the message may hold the trace)
            answer = row["output"] if row.get("output") is not None else row["response"]
            digest = dedup.message_digest(messages[:-1], answer, row.get("reasoning"))
        except (TypeError, KeyError, IndexError):
            report.add(shard.rel, start + j, "messages do not end with the answer")
            continue
        _kept(report, dedup, shard, start + j, digest, keys[j], lambda r=row: r.get("id"), seen)


def _audit_totals(report: AuditReport, m: dict[str, Any], listed: dict[str, Any]) -> None:
    per_split = Counter[str]()
    for entry in listed.values():
        per_split[entry["split"]] += entry["rows"]
    totals = m.get("totals", {})
    for key, value in (
        ("train", per_split["train"]),
        ("eval", per_split["eval"]),
        ("rejects", per_split["rejects"]),
    ):
        if totals.get(key) != value:
            report.add(None, None, f"totals.{key} is {totals.get(key)}, the shards hold {value}")


def _audit_complete(report: AuditReport, m: dict[str, Any], seen_ids: dict[int | str, Any]) -> None:
    """A complete output decides every task of its recipe: each id is a row, a reject or a duplicate.

    The task set is expanded again from the prompt file the manifest names (ids only: nothing is
    rendered), within the recorded --limit and samples, and for a refresh the ids of the dataset it
    refreshed. Where that input is gone or changed, the check is skipped with a note.
    """
    if m.get("status") != "complete":
        return
    ids = _recipe_ids(report, m)
    if ids is None:
        return
    found = 0
    missing: set[str] = set()
    try:
        for tid in ids:
            key = _id_key(tid)
            if key in seen_ids:
                # Counted once: two identical inputs share an id (one task). seen_ids is not read again.
                if seen_ids[key] is not None:
                    seen_ids[key] = None
                    found += 1
            else:
                missing.add(tid)
    except Exception as e:  # a seed file that no longer reads: say so, do not guess
        report.notes.append(f"completeness not checked: {e}")
        return
    expected = found + len(missing)
    if not missing:
        return
    count = (m.get("cluster") or {}).get("partitions")
    where = ""
    if count:
        per = Counter(partition_of(t, count) for t in missing)
        where = " (" + ", ".join(f"partition {i}: {n} missing" for i, n in sorted(per.items())) + ")"
    report.add(
        None,
        None,
        f"status is complete, yet {len(missing):,} of the recipe's {expected:,} tasks are in no shard "
        f"(rows + rejects + duplicates decide {found:,}){where}; e.g. {', '.join(sorted(missing)[:3])}. "
        "Run the same command again to produce them",
    )


def _recipe_ids(report: AuditReport, m: dict[str, Any]) -> Iterator[str] | None:
    """The ids of the output's task set, in the order a run takes them; None (and a note) if unknown."""
    cluster = m.get("cluster") or {}
    scope = cluster.get("scope") if cluster else m
    if "limit" not in (scope or {}):
        report.notes.append("completeness not checked: the manifest does not record --limit")
        return None
    limit = scope["limit"]
    recorded = m.get("prompt_file") or {}
    try:
        prompt = load_prompt_file(recorded.get("path", ""))
        if prompt.sha256 != recorded.get("sha256"):
            report.notes.append(
                f"completeness not checked: the prompt file {recorded.get('path')} changed since the run"
            )
            return None
        expansion = Expansion(prompt, None, samples=m.get("samples"))  # the schema does not enter ids
    except Exception as e:  # ConfigError, or a seed file that no longer reads
        report.notes.append(f"completeness not checked: {e}")
        return None
    only: set[str] | None = None
    lineage = m.get("lineage") or {}
    if lineage.get("kind") == "refresh":
        only = _dataset_ids(Path(lineage.get("previous", "")))
        if only is None:
            report.notes.append(
                f"completeness not checked: {lineage.get('previous')}, the dataset it refreshed, is gone"
            )
            return None
    tasks = (t.id for t in expansion.tasks(keep=lambda _: False))
    ids = itertools.islice(tasks, limit) if limit is not None else tasks
    return (t for t in ids if only is None or t in only)


def _dataset_ids(out: Path) -> set[str] | None:
    try:
        m = load_manifest(out)
        if m is None:
            return None
        return {t for s in m["shards"] for t in read_columns(out, s["path"], ["id"])["id"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _audit_licence(report: AuditReport, m: dict[str, Any]) -> None:
    recorded = m.get("licence_review")
    if not recorded:
        report.add(None, None, "no licence review recorded: the run's licence was never checked")
        return
    report.review = recorded
    user_registries = [
        Path(src["path"])
        for src in recorded.get("registries", [])
        if src.get("path") and not str(src["path"]).endswith("gen/licences.toml")
    ]
    try:
        registry = load_registry(
            user_registries[0] if user_registries and user_registries[0].exists() else None
        )
        now = review_teacher(
            registry,
            m["teacher"]["model"],
            m["teacher"]["license"],
            recorded["intended_use"],
            recorded["acknowledged"],
        )
    except (ConfigError, ValueError, KeyError) as e:
        report.add(None, None, f"licence review cannot be repeated: {e}")
        return
    if recorded.get("decision") == "blocked":
        report.add(None, None, "the licence review blocked this run, yet it has data")
    if now.decision != recorded.get("decision"):
        report.add(
            None,
            None,
            f"licence decision was {recorded.get('decision')!r}, the registry now says {now.decision!r}"
            + (f": {'; '.join(now.reasons)}" if now.reasons else ""),
        )
    if recorded.get("intended_use") != m.get("intended_use"):
        report.add(None, None, "the intended use in the licence review differs from the manifest's")


__all__ = ["DATA_SCHEMA", "AuditReport", "Finding", "audit"]
