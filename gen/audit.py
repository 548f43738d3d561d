"""`gen audit OUTPUT`: verify an output directory against its manifest, row by row.

Checks: every shard's sha256 and row count; no shard missing and none unlisted; every row's provenance
complete and consistent with the manifest; no id twice; no two kept rows the same by the dedup key the
manifest records (`dedup.on`); ids and splits reproducible from the recorded inputs; the licence
decision consistent with the intended use; and, for an output whose manifest says complete, that it
decides every task of its recipe (rows + rejects + duplicates = tasks: each id of the prompt file's task
set, within the recorded --limit, is in some shard). It then breaks the data down by teacher, licence,
template and split, and lists the obligations the user must honour when publishing a student.
Each finished evaluation under evals/ is checked too: its report was made against this manifest, its
results name rows of the dataset, and a judged one's judge.jsonl holds the verdicts it counted.
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
    seen_ids = _Ids()
    dedup = _dedup_of(report, manifest)
    kept = _Kept()
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
            schema, num_rows, batches = read_checked(path, _READ.get(split, []), _BATCH)
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
        ids = [tid for b in batches for tid in b.column("id").to_pylist()]
        also = seen_ids.add(ids, number)  # rows whose id was read before
        for batch, start in _starts(batches):
            _audit_batch(report, expect, shard, batch, start, ids[start : start + batch.num_rows], also)
        if dedup is not None and split in ("train", "eval"):
            _audit_dedup_shard(report, dedup, shard, batches, ids, kept)
        if split in ("train", "eval"):
            _audit_index(report, rel, sha256_file(path) if entry is None else entry.get("sha256"))

    _audit_totals(report, manifest, listed)
    _audit_complete(report, manifest, seen_ids)
    _audit_licence(report, manifest)
    _audit_evals(report, out, manifest)
    return report


def _audit_index(report: AuditReport, rel: str, sha256: str | None) -> None:
    """A shard's persisted dedup index (gen.dedup_index), when there is one: whole, and made for this
    shard. Not a finding: the data is sound either way, and a resume rebuilds a bad index."""
    from gen import dedup_index

    problem = dedup_index.check(report.out_dir, rel, sha256 or "")
    if problem is not None:
        path = OutputDir(report.out_dir).dedup_index(rel).relative_to(report.out_dir)
        report.notes.append(f"{path}: {problem}; the next resume rebuilds it from {rel}")


def _audit_evals(report: AuditReport, out: Path, m: dict[str, Any]) -> None:
    """Each finished `gen eval` (evals/NAME/report.json): made against this manifest (its sha256), and
    its results, as many as the report says, name only rows of the dataset (with fresh inputs,
    `--inputs`: none of its ids), each once."""
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
        if isinstance(data.get("judge"), dict):
            _audit_verdicts(report, out, path.parent, data["judge"], results, set(ids))
        seen: set[str] = set()
        for i, tid in enumerate(ids):
            if tid in seen:  # one row counted twice weighs double in every figure of the report
                report.add(rel, i, f"id {tid} is evaluated twice")
            seen.add(tid)
            if fresh and tid in every:
                report.add(rel, i, f"id {tid} is in the dataset, yet evaluated as a fresh input")
            elif not fresh and tid not in kept:
                report.add(rel, i, f"id {tid} is not a row of the dataset")


# A judged evaluation's verdicts (gen.eval_judge.VerdictLog, gen.judge.VERDICTS): judge.jsonl also has
# `error` lines (what a pair that erred cost; no verdict, a gen before them wrote none); results.parquet's
# `judge` also says `error`, `no_answer` (the judge not asked) or null.
_KEPT_VERDICTS = ("win", "tie", "loss", "unparseable")


def _audit_verdicts(
    report: AuditReport,
    out: Path,
    eval_dir: Path,
    judge: dict[str, Any],
    results: Path,
    evaluated: set[str],
) -> None:
    """A judged evaluation's judge.jsonl: every line an intact verdict (or `error` line) of a row it
    evaluated (a line a crash cut short is skipped, as gen eval skips it: a note), the verdicts it
    counted, row by row in results.parquet's `judge` and in total in report.json's counts, are the ones
    the file holds for the report's judge (its provider, model and prompt), and report.json's judge
    tokens are the sum of that judge's lines' `u` (at least that sum for a file of a gen that kept no
    `u`, or no `error` lines where the report counts `error` pairs: such a report counted tokens the file
    does not hold)."""
    from gen.eval_judge import line_usage, usage_ok

    log = eval_dir / "judge.jsonl"
    rel = str(log.relative_to(out))
    try:
        column = pq.read_table(results, columns=["id", "judge"]).to_pydict()
    except Exception as e:  # a judged evaluation's results.parquet has a `judge` column
        report.add(str(results.relative_to(out)), None, f"no readable `judge` column: {e}")
        return
    counted = {t: v for t, v in zip(column["id"], column["judge"], strict=True) if v in _KEPT_VERDICTS}
    counts = judge.get("counts") if isinstance(judge.get("counts"), dict) else {}
    for verdict in _KEPT_VERDICTS:
        n = sum(v == verdict for v in counted.values())
        if counts.get(verdict) != n:
            report.add(
                str(eval_dir.relative_to(out) / "report.json"),
                None,
                f"report.json counts {counts.get(verdict)} {verdict} verdicts, results.parquet {n}",
            )
    try:
        lines = log.read_bytes().splitlines()
    except FileNotFoundError:
        if counted:
            report.add(rel, None, f"missing: the report counts {len(counted)} verdicts of the judge")
        return
    except OSError as e:
        report.add(rel, None, f"unreadable: {e}")
        return
    key = f"{judge.get('provider')}:{judge.get('model')}:{judge.get('prompt_sha256')}"
    held: dict[str, str] = {}
    summed = [0, 0]
    complete = True  # every line of the judge has its `u`
    error_lines = 0
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            report.notes.append(f"{rel}: line {i + 1} cut short (skipped, as gen eval skips it)")
            continue
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("id"), str)
            or entry.get("verdict") not in (*_KEPT_VERDICTS, "error")
        ):
            report.add(rel, i, f"not a verdict gen writes: {line[:120]!r}")
            continue
        if "u" in entry and not usage_ok(entry["u"]):  # gen eval counts none of it: tokens unaccounted
            report.add(rel, i, f"its `u` is not two token counts: {str(entry['u'])[:80]}")
        if entry["id"] not in evaluated:
            report.add(rel, i, f"id {entry['id']} is not a row of this evaluation")
        elif entry.get("judge") == key:  # another judge's (a resume with another prompt) is not counted
            u = line_usage(entry)
            summed[0] += u[0]
            summed[1] += u[1]
            complete = complete and "u" in entry
            error_lines += entry["verdict"] == "error"
            if entry["verdict"] != "error":  # an `error` line is what a pair cost, not its verdict
                held[entry["id"]] = entry["verdict"]  # the last line of an id is the one gen eval reads
    for tid, verdict in counted.items():
        if held.get(tid) != verdict:
            found = held.get(tid) or "no verdict of the report's judge"
            report.add(rel, None, f"id {tid}: results.parquet says {verdict}, judge.jsonl {found}")
    # A report that counts `error` pairs while the file has no `error` line: they cost nothing, or a gen
    # that kept no `error` lines wrote it (its report counted them all the same): a lower bound then.
    complete = complete and (error_lines > 0 or "error" not in column["judge"])
    tokens = judge.get("tokens")
    if isinstance(tokens, dict) and "prompt" in tokens:  # a report of a gen that priced no judge has none
        stated = [tokens.get("prompt"), tokens.get("completion")]
        if not all(type(n) is int for n in stated) or (
            stated != summed if complete else stated[0] < summed[0] or stated[1] < summed[1]
        ):
            report.add(
                str(eval_dir.relative_to(out) / "report.json"),
                None,
                f"report.json states the judge's tokens as {stated[0]} prompt / {stated[1]} completion, "
                f"judge.jsonl's lines of that judge sum to {summed[0]} / {summed[1]}",
            )


# What the checks read of each kind of shard. Every page of every column is still decoded (a corrupt one
# is a finding, as before), but only these columns are kept, in Arrow form, and turned into Python values
# column by column where a check needs them: a million rows as Python dicts took most of the audit's time
# and memory.
_DATA_READ = [
    "id",
    *(c for c in PROVENANCE if c != "id"),
    *("split", "sample", "output", "messages", "reasoning", "response"),
]
_BATCH = 8192  # rows a record batch: the Python values of one batch's columns are alive at a time
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


def _canonical(tid: Any) -> bytes | None:
    """The 16 bytes of one of gen's ids (32 lowercase hex digits); None for any other value."""
    if type(tid) is not str or len(tid) != 32:
        return None
    try:
        raw = bytes.fromhex(tid)
    except ValueError:
        return None
    return raw if raw.hex() == tid else None  # fromhex also takes upper case and spaces


class _Ids:
    """Every id read so far, with the shard (its number in the audit's order) that held it last.

    gen's ids are kept as 16 bytes in a sorted numpy array, beside an int32 array of shards: about 20
    bytes an id, where a dict of strings took ten times that. Any other id (a hand-edited shard) is kept
    as itself in a dict; the two never hold equal ids. A shard's ids are added at once, and which rows
    repeat an id read before (earlier in the same shard included) is decided as reading them one by one
    in order would."""

    def __init__(self) -> None:
        self.keys = np.empty(0, dtype="S16")
        self.last = np.empty(0, dtype=np.int32)
        self.other: dict[str, int | None] = {}
        self.done: Any = None  # per key: decided a task of the recipe (_audit_complete)

    def __len__(self) -> int:
        return len(self.keys) + len(self.other)

    def add(self, ids: list[Any], shard: int) -> dict[int, int]:
        """Record a shard's ids (its rows', in order; a row whose id is not a string has none). Returns
        {row: the shard that held its id last} for every row whose id was read before."""
        also: dict[int, int] = {}
        raw, rows = [], []
        for j, tid in enumerate(ids):
            key = _canonical(tid)
            if key is not None:
                raw.append(key)
                rows.append(j)
            elif isinstance(tid, str):
                last = self.other.get(tid)
                if last is not None:
                    also[j] = last
                self.other[tid] = shard
        if not raw:
            return also
        keys = np.frombuffer(b"".join(raw), dtype="S16")
        unique, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        pos = np.searchsorted(self.keys, unique)
        found = np.zeros(len(unique), dtype=bool)
        if len(self.keys):
            found = self.keys[np.minimum(pos, len(self.keys) - 1)] == unique
        index = np.arange(len(keys))
        repeat = first[inverse] != index  # an earlier row of this shard has it
        earlier = found[inverse] & ~repeat  # the first of this shard, and an earlier shard's
        for j in index[repeat]:
            also[rows[j]] = shard
        for j, last in zip(index[earlier], self.last[pos[inverse[earlier]]], strict=True):
            also[rows[j]] = int(last)
        self.last[pos[found]] = shard
        self.keys = np.insert(self.keys, pos[~found], unique[~found])
        self.last = np.insert(self.last, pos[~found], shard)
        return also

    def decide(self, tids: list[str]) -> tuple[int, list[str]]:
        """For a chunk of the recipe's ids: how many are ids read here and not counted before (each
        counted once: two identical inputs share an id), and those that are not read here."""
        if self.done is None:
            self.done = np.zeros(len(self.keys), dtype=bool)
        found, missing, raw, canonical = 0, [], [], []
        for tid in tids:
            key = _canonical(tid)
            if key is not None:
                raw.append(key)
                canonical.append(tid)
            elif tid in self.other:
                if self.other[tid] is not None:
                    self.other[tid] = None
                    found += 1
            else:
                missing.append(tid)
        if raw:
            keys = np.frombuffer(b"".join(raw), dtype="S16")
            pos = np.minimum(np.searchsorted(self.keys, keys), max(len(self.keys) - 1, 0))
            hit = self.keys[pos] == keys if len(self.keys) else np.zeros(len(keys), dtype=bool)
            fresh = np.unique(pos[hit][~self.done[pos[hit]]])
            self.done[fresh] = True
            found += len(fresh)
            missing += [tid for tid, h in zip(canonical, hit, strict=True) if not h]
        return found, missing


class _Kept:
    """The exact dedup key (8 bytes, as the run computed it) of every kept row so far, with the id of
    the row that kept it: numpy arrays, sorted by key (gen's ids as 16 bytes; any other id as an index
    into a list of strings)."""

    def __init__(self) -> None:
        self.digests = np.empty(0, dtype=np.uint64)
        self.ids = np.empty(0, dtype="S16")
        self.names = np.empty(0, dtype=np.int32)  # -1: the id is `ids`; else an index into `other`
        self.other: list[str] = []

    def _name(self, tid: Any) -> tuple[bytes, int]:
        key = _canonical(tid)
        if key is not None:
            return key, -1
        self.other.append(str(tid))
        return b"", len(self.other) - 1

    def _text(self, raw: bytes, name: int) -> str:
        return self.other[name] if name >= 0 else raw.ljust(16, b"\0").hex()

    def add(self, digests: list[int], rows: list[int], ids: list[Any]) -> dict[int, str]:
        """Record a shard's kept rows (their exact keys, in row order, and row numbers; `ids`: the
        shard's ids). Returns {row: id of the earlier row it duplicates} for each row whose key was
        kept before, the first row holding a key being the one kept."""
        if not digests:
            return {}
        keys = np.array(digests, dtype=np.uint64)
        unique, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        pos = np.searchsorted(self.digests, unique)
        found = np.zeros(len(unique), dtype=bool)
        if len(self.digests):
            found = self.digests[np.minimum(pos, len(self.digests) - 1)] == unique
        dup: dict[int, str] = {}
        index = np.arange(len(keys))
        for j in index[found[inverse] | (first[inverse] != index)]:
            u = inverse[j]
            if found[u]:  # kept in an earlier shard
                dup[rows[j]] = self._text(self.ids[pos[u]], int(self.names[pos[u]]))
            else:  # kept earlier in this shard
                dup[rows[j]] = str(ids[rows[first[u]]])
        new = [self._name(ids[rows[j]]) for j in first[~found]]
        at = pos[~found]
        self.digests = np.insert(self.digests, at, unique[~found])
        self.ids = np.insert(self.ids, at, np.array([r for r, _ in new], dtype="S16"))
        self.names = np.insert(self.names, at, np.array([n for _, n in new], dtype=np.int32))
        return dup


def _see(report: AuditReport, shard: _Read, i: int, tid: Any, also: dict[int, int]) -> bool:
    """The id check of row i: False (and a finding) for a row without an id."""
    if not isinstance(tid, str):
        report.add(shard.rel, i, "row without an id")
        return False
    last = also.get(i)
    if last is not None:
        report.add(shard.rel, i, f"id {tid} appears twice (also in {shard.order[last]})")
    return True


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
    ids: list[Any],
    also: dict[int, int],
) -> None:
    """Check the rows of one record batch (`ids`: theirs; `also`: `_Ids.add`'s answer for the shard),
    in order, as `_audit_rows` does, with the comparisons every row passes made on Arrow arrays; Python
    values are built only for what each row needs hashed or parsed, and for the rows a check flags."""
    if _by_rows(shard, batch):
        _audit_rows(report, expect, shard, batch.to_pylist(), start, also)
        return
    rel, split, col = shard.rel, shard.split, batch.column
    if split not in ("train", "eval"):  # rejects and duplicates: their ids only
        counted = sum(_see(report, shard, start + j, tid, also) for j, tid in enumerate(ids))
        if split == "rejects":
            report.rejects += counted
        elif split == "duplicates":
            report.duplicates += counted
        return
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
    for j in range(n):
        i = start + j
        if not _see(report, shard, i, ids[j], also):
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


def _audit_rows(
    report: AuditReport,
    expect: _Expect,
    shard: _Read,
    rows: list[dict[str, Any]],
    start: int,
    also: dict[int, int],
) -> None:
    """`_audit_batch` for rows as Python dicts: the checks as written, for shards of other types."""
    rel, split = shard.rel, shard.split
    for j, row in enumerate(rows):
        i = start + j
        if not _see(report, shard, i, row.get("id"), also):
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


def _audit_dedup_shard(
    report: AuditReport,
    dedup: Deduplicator,
    shard: _Read,
    batches: list[Any],
    ids: list[Any],
    kept: _Kept,
) -> None:
    """No two kept rows may be exact duplicates by the output's key (near ones are a matter of degree).
    The keys of a shard's rows are computed first, then compared with every kept row's at once; the
    findings come in row order, as comparing row by row gives them."""
    digests: list[int] = []
    rows: list[int] = []
    broken: list[int] = []  # rows whose messages do not end with an answer
    for batch, start in _starts(batches):
        digest = _digests_by_rows if _by_rows(shard, batch) else _digests
        digest(dedup, batch, start, digests, rows, broken)
    found = {i: "messages do not end with the answer" for i in broken}
    for i, first in kept.add(digests, rows, ids).items():
        found[i] = f"id {ids[i]} is an exact duplicate by {dedup.on} of id {first}, which was kept"
    for i in sorted(found):
        report.add(shard.rel, i, found[i])


def _digests(
    dedup: Deduplicator, batch: Any, start: int, digests: list[int], rows: list[int], broken: list[int]
) -> None:
    """The exact keys of a batch's rows, the message fields read as two flat string columns, not as a
    dict per message."""
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
    for j in range(n):
        a, b = int(offsets[j]) - base, int(offsets[j + 1]) - base
        if not valid[j] or b == a:
            broken.append(start + j)
            continue
        # the answer as the run keyed it: the output, else the text (the message may hold the trace)
        answer = outputs[j] if outputs[j] is not None else responses[j]  # type: ignore[index]
        try:
            pairs = zip(roles[a : b - 1], contents[a : b - 1], strict=True)
            digests.append(dedup.exact_digest(pairs, answer, traces[j] if traces else None))
        except (TypeError, KeyError, IndexError):
            broken.append(start + j)
            continue
        rows.append(start + j)


def _digests_by_rows(
    dedup: Deduplicator, batch: Any, start: int, digests: list[int], rows: list[int], broken: list[int]
) -> None:
    """`_digests` for rows as Python dicts."""
    for j, row in enumerate(batch.to_pylist()):
        try:
            messages = row["messages"]
            messages[-1]["content"]  # noqa: B018 (a row must end with its answer)
            answer = row["output"] if row.get("output") is not None else row["response"]
            digests.append(dedup.message_digest(messages[:-1], answer, row.get("reasoning")))
        except (TypeError, KeyError, IndexError):
            broken.append(start + j)
            continue
        rows.append(start + j)


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


def _audit_complete(report: AuditReport, m: dict[str, Any], seen_ids: _Ids) -> None:
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
        while chunk := list(itertools.islice(ids, 65_536)):
            # Counted once: two identical inputs share an id (one task).
            decided, absent = seen_ids.decide(chunk)
            found += decided
            missing.update(absent)
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
