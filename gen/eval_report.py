"""An evaluation's report (`gen eval`): the typed object the API returns, the gate's verdict, report.md,
the dataset card's Evaluation section, the summary line, and the comparison of two evaluations
(`gen eval --compare A B`). Works on report.json's plain data; no pyarrow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

SMALL_SAMPLE = 30  # below this many rows the report says the intervals are wide, in words


@dataclass(frozen=True, slots=True)
class RateFigure:
    """k of n with its 95% interval."""

    k: int
    n: int
    rate: float | None
    ci95: tuple[float, float] | None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RateFigure:
        ci = d.get("ci95")
        return cls(int(d["k"]), int(d["n"]), d.get("rate"), (ci[0], ci[1]) if ci else None)


@dataclass(frozen=True, slots=True)
class FieldFigure:
    """One field of the answer: how often the student matched the teacher, and (text) its token F1."""

    name: str
    kind: str
    match: RateFigure
    token_f1: float | None
    token_f1_ci95: tuple[float, float] | None
    confusion: dict[str, Any] | None  # labels, matrix (teacher rows x student columns), per_class


@dataclass(frozen=True, slots=True)
class JudgeFigure:
    """A free-text evaluation's LLM judge: who judged, each verdict's count, and win / tie / loss /
    non-loss (win + tie) over the decided rows, each with its 95% interval (gen.eval_judge.RULE)."""

    model: str
    counts: dict[str, int]
    win: RateFigure
    tie: RateFigure
    loss: RateFigure
    non_loss: RateFigure

    @classmethod
    def from_dict(cls, d: Any) -> JudgeFigure | None:
        if not isinstance(d, dict):
            return None
        return cls(
            d["model"],
            dict(d["counts"]),
            *(RateFigure.from_dict(d[k]) for k in ("win", "tie", "loss", "non_loss")),
        )


@dataclass(frozen=True, slots=True)
class EvalReport:
    """A finished evaluation (report.json as typed data; `data` holds every figure as written)."""

    eval_dir: Path
    student: str
    teacher: str
    split: str
    rows: int
    agreement: RateFigure
    valid: RateFigure
    first_answer_valid: RateFigure
    fields: dict[str, FieldFigure]
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    student_tokens_per_row: float
    student_cost_per_1000_rows_usd: float | None
    teacher_cost_per_1000_rows_usd: float | None
    passed: bool | None  # the gate's verdict; None when no gate was set
    verdict: str
    data: dict[str, Any]
    judge: JudgeFigure | None = None  # free text: the LLM judge's verdicts

    @classmethod
    def from_dict(cls, eval_dir: Path, d: dict[str, Any]) -> EvalReport:
        fields = {}
        for name, f in d["fields"].items():
            f1 = f.get("token_f1") or {}
            ci = f1.get("ci95")
            fields[name] = FieldFigure(
                name,
                f["kind"],
                RateFigure.from_dict(f["match"]),
                f1.get("mean"),
                (ci[0], ci[1]) if ci else None,
                f.get("confusion"),
            )
        cost = d["cost_per_1000_rows_usd"]
        return cls(
            eval_dir=eval_dir,
            student=d["student"]["model"],
            teacher=d["teacher"]["model"],
            split=d["split"],
            rows=d["rows"],
            agreement=RateFigure.from_dict(d["agreement"]),
            valid=RateFigure.from_dict(d["valid"]),
            first_answer_valid=RateFigure.from_dict(d["first_answer_valid"]),
            fields=fields,
            latency_p50_ms=d["latency_ms"]["p50"],
            latency_p95_ms=d["latency_ms"]["p95"],
            student_tokens_per_row=d["tokens_per_row"]["student"]["total"],
            student_cost_per_1000_rows_usd=cost["student"],
            teacher_cost_per_1000_rows_usd=cost["teacher"],
            passed=d["gate"]["passed"],
            verdict=d["gate"]["verdict"],
            data=d,
            judge=JudgeFigure.from_dict(d.get("judge")),
        )


def gate_verdict(d: dict[str, Any], min_agreement: float | None, min_valid: float | None) -> dict[str, Any]:
    """PASS when every threshold set is met by the point estimate; FAIL names each one missed. With an
    LLM judge (free text), --min-agreement is met by the judge's non-loss rate (win + tie)."""
    missed = []
    if min_agreement is not None:
        judged = isinstance(d.get("judge"), dict)
        rate = (d["judge"]["non_loss"] if judged else d["agreement"])["rate"] or 0.0
        if rate < min_agreement:
            what = "judge non-loss" if judged else "agreement"
            missed.append(f"{what} {rate:.1%} < --min-agreement {min_agreement:g}")
    if min_valid is not None:
        rate = d["first_answer_valid"]["rate"] or 0.0
        if rate < min_valid:
            missed.append(f"first-answer valid {rate:.1%} < --min-valid {min_valid:g}")
    gated = min_agreement is not None or min_valid is not None
    return {
        "min_agreement": min_agreement,
        "min_valid": min_valid,
        "passed": (not missed) if gated else None,
        "verdict": ("FAIL" if missed else "PASS") if gated else "no gate",
        "missed": missed,
    }


def pct(rate: dict[str, Any]) -> str:
    """`10/12 = 83.3% [55.2%, 95.3%]`."""
    if not rate.get("n"):
        return "no rows"
    ci = rate.get("ci95")
    interval = f" [{ci[0]:.1%}, {ci[1]:.1%}]" if ci else ""
    return f"{rate['k']:,}/{rate['n']:,} = {rate['rate']:.1%}{interval}"


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.1f} ms"


def _usd(v: float | None) -> str:
    return "unpriced" if v is None else f"${v:,.4f}"


def summary_line(d: dict[str, Any], eval_dir: Path) -> str:
    """The one line `gen eval` ends with: the figures a gate looks at, and the verdict."""
    gate = d["gate"]
    verdict = gate["verdict"].upper() if gate["passed"] is not None else "no gate set"
    missed = f" ({'; '.join(gate['missed'])})" if gate["missed"] else ""
    if d["rows"] and d["valid"]["k"] == 0:
        missed += "; the student gave no valid answer"
    judge = d.get("judge")
    judged = (
        f"judge {judge_counts(judge)}, non-loss {pct(judge['non_loss'])}, " if isinstance(judge, dict) else ""
    )
    return (
        f"gen eval: {d['student']['model']} vs {d['teacher']['model']}, "
        f"{d['split']} split ({d['rows']:,} rows): {judged}"
        f"agreement {pct(d['agreement'])}, first-answer valid {pct(d['first_answer_valid'])}, "
        f"p50 {_ms(d['latency_ms']['p50'])} -> {eval_dir}; verdict: {verdict}{missed}"
    )


def judge_counts(j: dict[str, Any]) -> str:
    """`win/tie/loss 3/9/0` (and the rows the judge could not decide, when there are any)."""
    c = j["counts"]
    text = f"win/tie/loss {c['win']}/{c['tie']}/{c['loss'] + c.get('no_answer', 0)}"
    undecided = [f"{c[k]} {k}" for k in ("unparseable", "error") if c.get(k)]
    return text + (f" ({', '.join(undecided)})" if undecided else "")


def _judge_lines(j: dict[str, Any]) -> list[str]:
    c = j["counts"]
    where = f" at {j['base_url']}" if j.get("base_url") else ", started by gen"
    return [
        "## Judge",
        "",
        f"Free-text answers judged by `{j['model']}` ({j['provider']}{where}), prompt `{j['prompt']}` "
        f"(sha256 `{j['prompt_sha256'][:12]}`): {j['rule']}.",
        "",
        "| verdict for the student | rows (95% interval) |",
        "| --- | --- |",
        f"| win | {pct(j['win'])} |",
        f"| tie | {pct(j['tie'])} |",
        f"| loss | {pct(j['loss'])}"
        + (f", {c['no_answer']} without a valid answer" if c.get("no_answer") else "")
        + " |",
        f"| non-loss (win + tie) | {pct(j['non_loss'])} |",
        f"| unparseable / error (left out) | {c['unparseable']} / {c['error']} |",
        "",
    ]


def render_markdown(d: dict[str, Any]) -> str:
    """report.md: the human summary of one evaluation."""
    n = d["rows"]
    lines = [
        f"# Evaluation {d['eval_id']}",
        "",
        f"- student: `{d['student']['model']}` ({d['student']['provider']}); "
        f"teacher: `{d['teacher']['model']}` ({d['teacher']['provider']})",
        f"- dataset: `{d['dataset']['path']}` (manifest sha256 `{d['dataset']['manifest_sha256']}`)",
        f"- split: `{d['split']}`, {n:,} rows" + (f" (limit {d['limit']:,})" if d.get("limit") else ""),
    ]
    if n < SMALL_SAMPLE:
        lines.append(
            f"- **{n} rows is a small sample**: every figure below carries a wide 95% interval; "
            "read the interval, not the percentage"
        )
    if n and d["valid"]["k"] == 0:
        lines.append(
            "- **the student gave no valid answer**: every answer failed the schema (see `answers/rejects/`)"
        )
    gate = d["gate"]
    lines += [
        f"- verdict: **{gate['verdict']}**" + (f" ({'; '.join(gate['missed'])})" if gate["missed"] else ""),
        "",
        "## Summary",
        "",
        "| figure | value (95% interval) |",
        "| --- | --- |",
        f"| agreement ({d['agreement_rule']}) | {pct(d['agreement'])} |",
        f"| schema-valid on the first answer | {pct(d['first_answer_valid'])} |",
        f"| valid after re-asks | {pct(d['valid'])} |",
        f"| student tokens per row | {d['tokens_per_row']['student']['total']:,.1f} |",
        f"| teacher tokens per row | {d['tokens_per_row']['teacher']['total']:,.1f} |",
        f"| latency p50 / p95 per request | {_ms(d['latency_ms']['p50'])} / {_ms(d['latency_ms']['p95'])} |",
        f"| student cost per 1,000 rows | {_usd(d['cost_per_1000_rows_usd']['student'])} "
        f"({d['cost_per_1000_rows_usd']['student_basis']}) |",
        f"| teacher cost per 1,000 rows | {_usd(d['cost_per_1000_rows_usd']['teacher'])} |",
    ]
    if "judge" in d["cost_per_1000_rows_usd"]:  # a judged evaluation: the judge's requests too
        lines.append(
            f"| judge cost per 1,000 rows | {_usd(d['cost_per_1000_rows_usd']['judge'])} "
            f"({d['cost_per_1000_rows_usd']['judge_basis']}) |"
        )
    lines.append("")
    judge = d.get("judge")
    if isinstance(judge, dict):
        lines += _judge_lines(judge)
    elif isinstance(judge, str):
        lines += [f"Free-text answers: {judge} (token F1 and exact match below).", ""]
    lines += ["## Fields", "", "| field | kind | match (95% interval) | token F1 (95% interval) |"]
    lines.append("| --- | --- | --- | --- |")
    for name, f in d["fields"].items():
        f1 = f.get("token_f1")
        f1_text = ""
        if f1 and f1.get("mean") is not None:
            f1_text = f"{f1['mean']:.3f} [{f1['ci95'][0]:.3f}, {f1['ci95'][1]:.3f}]"
        lines.append(f"| `{name}` | {f['kind']} | {pct(f['match'])} | {f1_text} |")
    for name, f in d["fields"].items():
        conf = f.get("confusion")
        if not conf:
            continue
        labels = conf["labels"]
        lines += ["", f"### `{name}`: confusion (rows: teacher, columns: student)", ""]
        lines.append("| teacher \\ student | " + " | ".join(f"`{x}`" for x in labels) + " |")
        lines.append("| --- " * (len(labels) + 1) + "|")
        for label, row in zip(labels, conf["matrix"], strict=True):
            lines.append(f"| `{label}` | " + " | ".join(str(c) for c in row) + " |")
        lines += ["", "| class | support | precision | recall |", "| --- | --- | --- | --- |"]
        for label, c in conf["per_class"].items():
            lines.append(f"| `{label}` | {c['support']} | {pct(c['precision'])} | {pct(c['recall'])} |")
    lines.append("")
    return "\n".join(lines)


def card_section(reports: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """The dataset card's "Evaluation" section: one line per finished evaluation (`evals/NAME`)."""
    if not reports:
        return []
    lines = [
        "## Evaluation",
        "",
        "Students evaluated against this dataset's teacher with `gen eval` (95% intervals):",
        "",
        "| evaluation | student | split (rows) | agreement | judge (free text) | first-answer valid "
        "| verdict |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, d in reports:
        try:
            j = d.get("judge")
            judged = f"{judge_counts(j)}; non-loss {pct(j['non_loss'])}" if isinstance(j, dict) else ""
            lines.append(
                f"| [{name}](evals/{name}/report.md) | `{d['student']['model']}` "
                f"| {d['split']} ({d['rows']}) | {pct(d['agreement'])} | {judged} "
                f"| {pct(d['first_answer_valid'])} | {d['gate']['verdict']} |"
            )
        except (KeyError, TypeError):
            lines.append(f"| [{name}](evals/{name}/) | unreadable report.json | | | | | |")
    lines.append("")
    return lines


def compare_reports(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """What changed from evaluation `a` to `b`: each headline figure and each field's match rate, with
    both intervals and the difference, plus what differs between the two setups."""

    def figure(da: dict[str, Any] | None, db: dict[str, Any] | None) -> dict[str, Any]:
        ra = da.get("rate") if da else None
        rb = db.get("rate") if db else None
        return {
            "a": da,
            "b": db,
            "change": None if ra is None or rb is None else rb - ra,
            # Wilson intervals that do not overlap: a difference the sample sizes can vouch for.
            "clear": bool(da and db and da.get("ci95") and db.get("ci95"))
            and (da["ci95"][1] < db["ci95"][0] or db["ci95"][1] < da["ci95"][0]),
        }

    names = list(a["fields"]) + [n for n in b["fields"] if n not in a["fields"]]
    ja = a.get("judge") if isinstance(a.get("judge"), dict) else None
    jb = b.get("judge") if isinstance(b.get("judge"), dict) else None
    setup = {}
    for key, get in (
        ("student", lambda d: d["student"]["model"]),
        ("teacher", lambda d: d["teacher"]["model"]),
        ("split", lambda d: f"{d['split']} ({d['rows']} rows)"),
        ("dataset", lambda d: d["dataset"]["path"]),
    ):
        setup[key] = {"a": get(a), "b": get(b), "changed": get(a) != get(b)}
    if ja or jb:

        def judge_of(j: dict[str, Any] | None) -> str:
            return f"{j['model']} (prompt {j['prompt_sha256'][:12]})" if j else "none"

        setup["judge"] = {"a": judge_of(ja), "b": judge_of(jb), "changed": judge_of(ja) != judge_of(jb)}
    return {
        "a": a["eval_id"],
        "b": b["eval_id"],
        "setup": setup,
        "agreement": figure(a["agreement"], b["agreement"]),
        "first_answer_valid": figure(a["first_answer_valid"], b["first_answer_valid"]),
        "valid": figure(a["valid"], b["valid"]),
        "judge": {k: figure((ja or {}).get(k), (jb or {}).get(k)) for k in ("win", "tie", "loss", "non_loss")}
        if ja or jb
        else {},
        "fields": {
            n: figure(
                (a["fields"].get(n) or {}).get("match"),
                (b["fields"].get(n) or {}).get("match"),
            )
            for n in names
        },
    }


def render_comparison(c: dict[str, Any]) -> str:
    """`gen eval --compare`'s table."""
    lines = [f"gen eval --compare: A = {c['a']}, B = {c['b']}"]
    for key, s in c["setup"].items():
        mark = "changed" if s["changed"] else "same"
        lines.append(f"  {key}: {s['a']} -> {s['b']} ({mark})")
    lines.append("")
    lines.append(f"  {'figure':<28} {'A':<34} {'B':<34} change")

    def row(name: str, f: dict[str, Any]) -> str:
        a = pct(f["a"]) if f["a"] else "absent"
        b = pct(f["b"]) if f["b"] else "absent"
        change = "" if f["change"] is None else f"{f['change'] * 100:+.1f} pts"
        if f["change"] is not None:
            change += " (intervals apart)" if f["clear"] else " (within the intervals)"
        return f"  {name:<28} {a:<34} {b:<34} {change}"

    lines.append(row("agreement", c["agreement"]))
    lines.append(row("first-answer valid", c["first_answer_valid"]))
    lines.append(row("valid after re-asks", c["valid"]))
    for name, f in (c.get("judge") or {}).items():
        lines.append(row(f"judge {name.replace('_', '-')}", f))
    for name, f in c["fields"].items():
        lines.append(row(f"field {name}", f))
    return "\n".join(lines)
