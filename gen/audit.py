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

import orjson
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
from gen.shards import DATA_SCHEMA, committed_shards, read_columns, sha256_file, split_of_path
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
    seen_ids: dict[str, str] = {}
    dedup = _dedup_of(report, manifest)
    seen_keys: dict[int, str] = {}
    # Unlisted shards are read too: a Parquet reader pointed at data/ would load them with the rest.
    for rel in [*listed, *sorted(on_disk - set(listed))]:
        entry = listed.get(rel)
        path = out / rel
        if rel not in on_disk or not path.is_file():
            report.add(rel, None, "shard listed in the manifest is missing")
            continue
        if entry is not None and sha256_file(path) != entry.get("sha256"):
            report.add(rel, None, "sha256 differs from the manifest: changed after it was written")
        try:
            table = pq.read_table(path)
        except Exception as e:  # a corrupt file: report it as a finding, keep auditing the rest
            report.add(rel, None, f"unreadable Parquet: {e}")
            continue
        if entry is not None and table.num_rows != entry.get("rows"):
            report.add(rel, None, f"{table.num_rows} rows, the manifest says {entry.get('rows')}")
        split = split_of_path(rel)
        expected = COLUMNS.get(split)
        if expected is None or not {c.name for c in expected} <= set(table.column_names):
            report.add(rel, None, "columns differ from gen's schema for this folder")
            continue
        rows = table.to_pylist()
        _audit_rows(report, manifest, rel, split, rows, seen_ids)
        if dedup is not None and split in ("train", "eval"):
            _audit_dedup(report, dedup, rel, rows, seen_keys)
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


def _audit_rows(
    report: AuditReport,
    m: dict[str, Any],
    rel: str,
    split: str,
    rows: list[dict[str, Any]],
    seen_ids: dict[str, str],
) -> None:
    template = m["template"]
    teacher = m["teacher"]
    models = {teacher["model"], *teacher.get("served_models", [])}
    run_ids = {r["run_id"] for r in m.get("runs", [])} | {m.get("run_id")}
    prompt_sha = m["prompt_file"]["sha256"]
    fraction = m.get("eval_fraction", 0.05)
    for i, row in enumerate(rows):
        tid = row.get("id")
        if not isinstance(tid, str):
            report.add(rel, i, "row without an id")
            continue
        if tid in seen_ids:
            report.add(rel, i, f"id {tid} appears twice (also in {seen_ids[tid]})")
        seen_ids[tid] = rel
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
        checks = (
            ("template", template["name"]),
            ("template_version", template["version"]),
            ("template_sha256", template["sha256"]),
            ("prompt_sha256", prompt_sha),
            ("teacher_provider", teacher["provider"]),
            ("teacher_license", teacher["license"]),
        )
        for column, want in checks:
            if row[column] != want:
                report.add(rel, i, f"{column} is {row[column]!r}, the manifest says {want!r}")
        if row["teacher_model"] not in models:
            report.add(rel, i, f"teacher_model {row['teacher_model']!r} is not the manifest's teacher")
        if row["run_id"] not in run_ids:
            report.add(rel, i, f"run_id {row['run_id']!r} is not a run of this dataset")
        if task_id(prompt_sha, row["template"], row["vars"], row["sample"]) != tid:
            report.add(rel, i, "id does not match its inputs (vars, sample, template, prompt file)")
        if row["split"] != split or split_of(row["vars"], fraction) != split:
            report.add(rel, i, f"split {row['split']!r} does not follow from its inputs")
        try:
            output = orjson.loads(row["output"]) if row["output"] is not None else None
        except orjson.JSONDecodeError:
            report.add(rel, i, "output is not valid JSON")
            output = None
        if output is not None and m.get("schema"):
            # the answer as the recorded reasoning_format writes it (with a trace: think-tags around it)
            fmt = m.get("reasoning_format", "field")
            if (
                row["messages"][-1]["content"]
                != assistant_message(row["output"], row.get("reasoning"), fmt)["content"]
            ):
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


def _audit_dedup(
    report: AuditReport, dedup: Deduplicator, rel: str, rows: list[dict[str, Any]], seen: dict[int, str]
) -> None:
    """No two kept rows may be exact duplicates by the output's key (near ones are a matter of degree)."""
    for i, row in enumerate(rows):
        try:
            messages = row["messages"]
            messages[-1]["content"]  # noqa: B018 (a row must end with its answer)
            # the answer as the run keyed it: the output, else the text (the message may hold the trace)
            answer = row["output"] if row.get("output") is not None else row["response"]
            digest = dedup.message_digest(messages[:-1], answer, row.get("reasoning"))
        except (TypeError, KeyError, IndexError):
            report.add(rel, i, "messages do not end with the answer")
            continue
        first = seen.get(digest)
        if first is not None:
            report.add(
                rel,
                i,
                f"id {row.get('id')} is an exact duplicate by {dedup.on} of id {first}, which was kept",
            )
        else:
            seen[digest] = str(row.get("id"))


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


def _audit_complete(report: AuditReport, m: dict[str, Any], seen_ids: dict[str, Any]) -> None:
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
            if tid in seen_ids:
                # Counted once: two identical inputs share an id (one task). seen_ids is not read again.
                if seen_ids[tid] is not None:
                    seen_ids[tid] = None
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
