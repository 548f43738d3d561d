"""`gen report OUTPUT`: one self-contained HTML page (`OUTPUT/report.html`) with the figures people look
at before training on a dataset: the funnel, rejects, duplicates, lengths, labels, cost and time,
provenance (with `gen audit`'s verdict) and evaluations.

No network, no CDN, no JavaScript library: figures are inline SVG (gen/report_plots.py, matplotlib,
imported on the first figure only), tables are HTML, and the page's one small script only marks figures
that did not render (what the browser test reads). The data comes from one streaming pass over the
committed shards (gen/report_stats.py). Everything the teacher wrote is escaped (Jinja2 autoescape).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from gen.card import write_card
from gen.errors import ConfigError
from gen.ledger import load_manifest
from gen.manifest import FORMAT
from gen.outdir import NOT_AN_OUTPUT, OutputDir
from gen.report_stats import TOKEN_COLUMNS, ReportData, categorical_fields, collect
from gen.shards import atomic_write_bytes, committed_shards

MAX_BYTES = 5_000_000  # the page's size limit (issue 17): the examples are cut to fit under it
DOMINANT = 0.8  # a class holding more of a split than this is flagged
DIVERGENT = 0.15  # train and eval further apart than this (total variation distance) are flagged
MAX_TABLE = 50  # classes listed per label table (the figure shows 30)
MAX_EVALS = 10  # evaluation reports drawn (the newest); older ones are named
MIN_EVAL_ROWS = 30  # below this many eval rows, the train/eval comparison is noise: not flagged
_DAMAGED = (KeyError, TypeError, AttributeError, ValueError)  # what a malformed manifest raises when read
SECTIONS = ("funnel", "rejects", "duplicates", "lengths", "labels", "cost", "provenance", "evaluations")


@dataclass(slots=True)
class ReportResult:
    path: Path
    bytes: int
    findings: list[str]  # gen audit's, empty when clean
    state: str | None  # why the output may be incomplete (still being written, stopped), or None
    figures: int
    notes: list[str] = field(default_factory=list)


def write_report(out_dir: str | Path, *, audit: bool = True) -> ReportResult:
    """Build OUTPUT/report.html. Raises ConfigError (one line) for a directory that is not a gen output."""
    out = Path(out_dir)
    manifest = _manifest(out)
    state = _state(out, manifest)
    findings, notes = _audit(out) if audit else ([], ["gen audit was not run (--no-audit)"])
    on_disk = set(committed_shards(out))
    entries = manifest.get("shards")
    # A malformed list is the audit's finding (at the top of the page); the shards on disk are read then.
    listed = (
        [e["path"] for e in entries if isinstance(e, dict) and e.get("path") in on_disk]
        if isinstance(entries, list)
        else sorted(on_disk)
    )
    data = collect(out, manifest, listed)
    page, figures = render(data, findings=findings, state=state, notes=notes)
    body = page.encode()
    atomic_write_bytes(OutputDir(out).report, body)
    if manifest.get("status") != "running":  # a live run rewrites the card itself
        try:
            write_card(out, manifest, headline(data, findings))
        except _DAMAGED:  # a manifest too damaged for a card: the audit's findings say why
            pass
    return ReportResult(OutputDir(out).report, len(body), findings, state, figures, notes + data.unreadable)


def headline(data: ReportData, findings: list[str]) -> list[str]:
    """The lines the dataset card gets from the report: lengths, label warnings, the audit's verdict."""
    lines = []
    completion = data.tokens.get("completion_tokens")
    if completion:
        ordered = sorted(completion.items())
        total = sum(completion.values())
        seen, median = 0, 0
        for value, n in ordered:
            seen += n
            if seen * 2 >= total:
                median = value
                break
        lines.append(f"completion tokens per row: median {median:,}, max {ordered[-1][0]:,}")
    warnings = [w for name, per in sorted(data.labels.items()) for w in _label_warnings(name, per, list(
        Counter(c for counts in per.values() for c in counts)))]  # fmt: skip
    lines += [f"label warning: {w}" for w in warnings[:5]]
    lines.append(
        "gen audit: clean" if not findings else f"gen audit: {len(findings)} finding(s), see the report"
    )
    return lines


def _manifest(out: Path) -> dict[str, Any]:
    if not out.is_dir():
        raise ConfigError(out, "no such directory")
    try:
        manifest = load_manifest(out)
    except (OSError, ValueError) as e:
        raise ConfigError(OutputDir(out).manifest, f"unreadable: {e}") from None
    if manifest is None:
        raise ConfigError(out, NOT_AN_OUTPUT)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ConfigError(OutputDir(out).manifest, f"not a {FORMAT} manifest: not a gen output directory")
    return manifest


def _state(out: Path, m: dict[str, Any]) -> str | None:
    """Why the page may not show the whole dataset, or None for a finished output."""
    layout = OutputDir(out)
    status = m.get("status")
    journal = layout.journal_root
    pending = journal.is_dir() and any(p.is_file() for p in journal.rglob("*"))
    if status == "running" or layout.locks():
        return (
            f"This output is still being written, or its run was killed (status {status!r}): the page "
            f"shows what was committed when it was made, as of {m.get('updated_at')}."
        )
    if status != "complete":
        return (
            f"The run stopped before finishing (status {status!r}): the page shows what is committed; "
            + ("answers journaled but not yet in a shard are not in it; " if pending else "")
            + "run the same `gen run` command again to finish."
        )
    return None


def _audit(out: Path) -> tuple[list[str], list[str]]:
    from gen.audit import audit

    try:
        report = audit(out)
    except ConfigError as e:
        return [str(e)], []
    except Exception as e:  # the audit itself failed on some input: a finding, not a traceback
        return [f"gen audit could not finish: {type(e).__name__}: {str(e)[:200]}"], []
    return [str(f) for f in report.findings], list(report.notes)


def render(data: ReportData, *, findings: list[str], state: str | None, notes: list[str]) -> tuple[str, int]:
    """The page, and how many figures it holds."""
    from gen import report_plots as plots

    m = data.manifest
    ctx: dict[str, Any] = {"findings": findings, "state": state, "notes": notes + data.unreadable}
    ctx["title"] = str(_part(m, "template").get("name", data.out_dir.name))
    ctx["out_dir"] = str(data.out_dir)
    ctx["generated"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    ctx["funnel"], ctx["funnel_figs"] = _funnel(data, plots)
    ctx["rejects"] = _rejects(data, plots)
    ctx["duplicates"] = _duplicates(data, plots)
    ctx["lengths"] = _lengths(data, plots)
    ctx["labels"] = _labels(data, plots)
    ctx["cost"] = _cost(data, plots)
    ctx["provenance"] = _provenance(data, findings)
    ctx["evaluations"] = _evaluations(data, plots)
    page = _template().render(**ctx)
    if len(page.encode()) > MAX_BYTES:  # cannot happen with the caps in report_stats; say so if it does
        ctx["notes"] = [*ctx["notes"], "examples left out: the page would exceed 5 MB"]
        ctx["rejects"]["examples"] = {}
        ctx["duplicates"]["examples"] = {}
        page = _template().render(**ctx)
    return page, page.count('<figure class="plot"')


def _funnel(data: ReportData, plots: Any) -> tuple[dict[str, Any], list[str]]:
    s = data.splits
    rejects, duplicates = s["rejects"], s["duplicates"]
    kept = s["train"] + s["eval"]
    tasks = kept + rejects + duplicates
    answered = tasks - data.rejects_without_answer
    valid = kept + duplicates
    stages = [
        ("tasks decided", tasks),
        ("answered", answered),
        ("valid", valid),
        ("kept", kept),
        ("  train", s["train"]),
        ("  eval", s["eval"]),
    ]
    lost = [(f"rejected: {r}", n) for r, n in data.reject_reasons.most_common()]
    lost += [(f"duplicate: {k}", n) for k, n in data.duplicate_kinds.most_common()]
    figs = [plots.bars([x for x, _ in stages], [n for _, n in stages], title="from tasks to rows")]
    if lost:
        figs.append(
            plots.bars([x for x, _ in lost], [n for _, n in lost], title="where the rest went", colour="bad")
        )
    pct = (lambda n: f"{100 * n / tasks:.1f}%") if tasks else (lambda n: "-")
    return {
        "stages": [(x.strip(), n, pct(n)) for x, n in stages],
        "lost": [(x, n, pct(n)) for x, n in lost],
    }, figs


def _rejects(data: ReportData, plots: Any) -> dict[str, Any]:
    reasons = data.reject_reasons.most_common()
    fig = (
        plots.bars([r for r, _ in reasons], [n for _, n in reasons], title="rejects by reason", colour="bad")
        if reasons
        else None
    )
    examples = dict(data.reject_examples)
    return {"total": data.splits["rejects"], "reasons": reasons, "figure": fig, "examples": examples}


def _duplicates(data: ReportData, plots: Any) -> dict[str, Any]:
    kinds = data.duplicate_kinds.most_common()
    dedup = _part(data.manifest, "dedup")
    near = dedup.get("near") if isinstance(dedup.get("near"), dict) else {}
    return {
        "total": data.splits["duplicates"],
        "kinds": kinds,
        "on": dedup.get("on"),
        "threshold": (near or {}).get("threshold"),
        "examples": dict(data.duplicate_examples),
    }


def _lengths(data: ReportData, plots: Any) -> dict[str, Any]:
    figs = []
    for column in TOKEN_COLUMNS:
        counts = data.tokens.get(column)
        if counts:
            figs.append(plots.histogram(counts, title=column.replace("_", " "), xlabel="tokens per row"))
    if data.reasoning_chars:
        figs.append(plots.histogram(data.reasoning_chars, title="reasoning text", xlabel="characters"))
    for name, counts in sorted(data.lengths.items()):
        if counts:
            figs.append(plots.histogram(counts, title=f"output field `{name}`", xlabel="characters"))
    if data.attempts:
        keys = sorted(data.attempts)
        figs.append(
            plots.bars(
                [f"{k} ask(s)" for k in keys], [data.attempts[k] for k in keys], title="attempts per row"
            )
        )
    absent = [c for c in data.token_columns_absent if c not in ("prompt_tokens", "completion_tokens")]
    return {"figures": figs, "absent": absent, "finish": data.finish_reasons.most_common()}


def _labels(data: ReportData, plots: Any) -> dict[str, Any]:
    declared = categorical_fields(data.manifest) or {}
    fields = []
    for name, per in sorted(data.labels.items()):
        counts = Counter[str]()
        for c in per.values():
            counts.update(c)
        classes = [c for c, _ in counts.most_common()]
        for c in declared.get(name) or ():
            if c not in counts:
                classes.append(c)  # a declared class the teacher never chose: shown at 0%
        warnings = _label_warnings(name, per, classes)
        train, ev = per.get("train", Counter()), per.get("eval", Counter())
        fields.append(
            {
                "name": name,
                "figure": plots.grouped_shares(name, per, classes),
                "warnings": warnings,
                "table": [(c, train.get(c, 0), ev.get(c, 0)) for c in classes[:MAX_TABLE]],
                "more": max(0, len(classes) - MAX_TABLE),
            }
        )
    return {
        "fields": fields,
        "source": data.categorical_from,
        "has_schema": bool(data.manifest.get("schema")),
    }


def _label_warnings(name: str, per: dict[str, Counter[str]], classes: list[str]) -> list[str]:
    out = []
    for split in ("train", "eval"):
        counts = per.get(split)
        total = sum(counts.values()) if counts else 0
        if not total or (split == "eval" and total < MIN_EVAL_ROWS):
            continue
        top, n = counts.most_common(1)[0]
        if len(classes) > 1 and n / total > DOMINANT:
            out.append(
                f"{name}: `{top}` is {100 * n / total:.0f}% of {split}: a student may learn to always say it"
            )
        unused = [c for c in classes if not counts.get(c)]
        if split == "train" and unused:
            out.append(f"{name}: never `{'`, `'.join(unused[:5])}` in train")
    train, ev = per.get("train"), per.get("eval")
    nt, ne = (sum(train.values()) if train else 0), (sum(ev.values()) if ev else 0)
    if nt and ne >= MIN_EVAL_ROWS:
        tvd = 0.5 * sum(abs(train.get(c, 0) / nt - ev.get(c, 0) / ne) for c in set(train) | set(ev))
        if tvd > DIVERGENT:
            out.append(
                f"{name}: train and eval differ markedly (total variation {tvd:.2f}): "
                "eval scores will mislead"
            )
    elif nt and ne:
        out.append(f"{name}: only {ne} eval rows, too few to compare with train")
    return out


def _cost(data: ReportData, plots: Any) -> dict[str, Any]:
    m = data.manifest
    usage = m.get("usage") if isinstance(m.get("usage"), dict) else {}
    runs = [r for r in m.get("runs") or [] if isinstance(r, dict)]
    totals = Counter[str]()
    for r in runs:
        for key in ("requests", "retries", "throttled", "repairs"):  # the usage table has the rest
            if isinstance(r.get(key), int | float):
                totals[key] += r[key]
    wall = sum(r.get("wall_time_s") or 0 for r in runs if isinstance(r.get("wall_time_s"), int | float))
    kept = data.splits["train"] + data.splits["eval"]
    cost = m.get("cost_usd")
    rows_from_data = {
        c: sum(k * v for k, v in data.tokens[c].items()) for c in TOKEN_COLUMNS if c in data.tokens
    }
    figure = plots.rate_over_time(data.seconds) if data.seconds else None
    return {
        "usage": [(k, v) for k, v in usage.items() if isinstance(v, int | float | str)],
        "cost": cost,
        "per_1k": (cost / kept * 1000) if isinstance(cost, int | float) and kept else None,
        "kept_tokens": rows_from_data,
        "counters": totals.most_common(),
        "wall": wall,
        "rate": kept / wall if wall else None,
        "runs": [
            (
                r.get("run_id"),
                r.get("status"),
                r.get("rows"),
                r.get("rejects"),
                r.get("retries"),
                r.get("wall_time_s"),
            )
            for r in runs
        ],  # fmt: skip
        "figure": figure,
    }


def _provenance(data: ReportData, findings: list[str]) -> dict[str, Any]:
    m = data.manifest
    t, tpl, prompt = _part(m, "teacher"), _part(m, "template"), _part(m, "prompt_file")
    review = _part(m, "licence_review")
    licence = _part(review, "licence")
    return {
        "rows": [
            (
                "teacher",
                f"{t.get('provider')} / {t.get('model')}"
                + (f" (server reports {', '.join(t['served_models'])})" if t.get("served_models") else ""),
            ),
            ("licence of the outputs", t.get("license")),
            ("intended use", m.get("intended_use")),
            ("licence decision", review.get("decision") or "not recorded"),
            (
                "terms consulted",
                f"{licence.get('source')} ({licence.get('source_date') or 'undated'})"
                if licence.get("source")
                else None,
            ),
            (
                "template",
                f"{tpl.get('name')} version {tpl.get('version')} (sha256 {str(tpl.get('sha256'))[:16]})",
            ),
            (
                "prompt file",
                f"{prompt.get('path')} (sha256 {str(prompt.get('sha256'))[:16]})",
            ),
            ("schema", _part(m, "schema").get("ref") or "none (free text)"),
            ("sampling", orjson.dumps(m.get("sampling")).decode()),
            ("generator", f"gen {m.get('generator_version')}, row schema {m.get('row_schema_version', 1)}"),
            (
                "run",
                f"{m.get('run_id')}, status {m.get('status')}, "
                f"created {m.get('created_at')}, updated {m.get('updated_at')}",
            ),
            ("dedup", _part(m, "dedup").get("on")),
        ],  # fmt: skip
        "obligations": review.get("obligations") or [],
        "reasons": review.get("reasons") or [],
        "acknowledged": review.get("acknowledged"),
        "attribution": licence.get("attribution"),
        "verdict": "clean" if not findings else f"{len(findings)} finding(s)",
    }


def _part(m: dict[str, Any], key: str) -> dict[str, Any]:
    """A section of the manifest, or {} where it is missing or malformed (the audit says which)."""
    value = m.get(key)
    return value if isinstance(value, dict) else {}


def _evaluations(data: ReportData, plots: Any) -> dict[str, Any]:
    """Each `gen eval` report.json, read generically: scalars as a table, any name -> {estimate, interval}
    mapping as a figure with intervals, any confusion matrix as a heat map."""
    shown = []
    older = [ev["name"] for ev in data.evals[:-MAX_EVALS]]  # names sort by time: the newest are drawn
    for ev in data.evals[-MAX_EVALS:]:
        view = _walk_eval(ev["report"])
        figs = [plots.intervals(*zip(*g, strict=True), title=path) for path, g in view["intervals"]]
        figs += [
            plots.confusion(mx, labels, title=f"confusion: {path}") for path, labels, mx in view["confusions"]
        ]
        shown.append({"name": ev["name"], "path": ev["path"], "scalars": view["scalars"], "figures": figs})
    return {"reports": shown, "problems": data.eval_problems, "older": older}


_POINT = ("agreement", "value", "estimate", "accuracy", "mean", "rate", "score", "f1")
_INTERVAL = (("lo", "hi"), ("low", "high"), ("lower", "upper"), ("ci_low", "ci_high"), ("ci_lo", "ci_hi"))


def _point(d: dict[str, Any]) -> tuple[float, float | None, float | None] | None:
    v = next((d[k] for k in _POINT if _number(d.get(k))), None)
    if v is None:
        return None
    lo = hi = None
    for key in ("ci", "interval", "ci95"):
        pair = d.get(key)
        if isinstance(pair, list | tuple) and len(pair) == 2 and all(_number(x) for x in pair):
            lo, hi = pair
    for a, b in _INTERVAL:
        if _number(d.get(a)) and _number(d.get(b)):
            lo, hi = d[a], d[b]
    return float(v), lo, hi


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _walk_eval(report: dict[str, Any]) -> dict[str, Any]:
    view: dict[str, Any] = {"scalars": [], "intervals": [], "confusions": []}

    def walk(obj: Any, path: str, depth: int) -> None:
        if depth > 6:
            return
        if isinstance(obj, dict):
            labels, matrix = obj.get("labels"), obj.get("matrix")
            if (
                isinstance(labels, list)
                and isinstance(matrix, list)
                and all(
                    isinstance(r, list) and len(r) == len(labels) and all(_number(x) for x in r)
                    for r in matrix
                )
                and len(matrix) == len(labels)
                and 0 < len(labels) <= 40
            ):
                view["confusions"].append((path or "report", [str(x) for x in labels], matrix))
                return
            if (
                "confusion" in path.rsplit(".", 1)[-1]
                and obj
                and all(isinstance(r, dict) and r and all(map(_number, r.values())) for r in obj.values())
            ):  # {teacher label: {student label: count}}
                names = sorted({*obj, *(k for r in obj.values() for k in r)}, key=str)[:40]
                matrix = [
                    [obj.get(a, {}).get(b, 0) if _number(obj.get(a, {}).get(b, 0)) else 0 for b in names]
                    for a in names
                ]
                view["confusions"].append((path, names, matrix))
                return
            points = {k: _point(v) for k, v in obj.items() if isinstance(v, dict)}
            if len(points) >= 1 and all(p is not None for p in points.values()) and len(points) == len(obj):
                view["intervals"].append((path or "report", [(k, *p) for k, p in points.items()][:40]))
            for k, v in obj.items():
                walk(v, f"{path}.{k}" if path else str(k), depth + 1)
        elif isinstance(obj, list):
            for i, v in enumerate(obj[:20]):
                if isinstance(v, dict | list):
                    walk(v, f"{path}[{i}]", depth + 1)
        elif len(view["scalars"]) < 80 and (isinstance(obj, str | bool) or _number(obj) or obj is None):
            view["scalars"].append((path, obj if not isinstance(obj, str) else obj[:200]))

    walk(report, "", 0)
    return view


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _template() -> Any:
    import jinja2
    import markupsafe

    def finalize(value: Any) -> Any:  # control characters are invalid in HTML: shown as "?"
        if isinstance(value, str) and not isinstance(value, markupsafe.Markup):
            return _CONTROL.sub("?", value)
        return value

    env = jinja2.Environment(
        finalize=finalize,
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = _fmt
    env.globals["sections"] = SECTIONS
    return env.from_string((Path(__file__).parent / "report.html.j2").read_text())


__all__ = ["SECTIONS", "ReportResult", "write_report"]
