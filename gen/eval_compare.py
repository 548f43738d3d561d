"""How a student's answers compare with its teacher's, field by field, with 95% intervals (`gen eval`).

The kind of each top-level field of the output's JSON schema decides how it is compared:

    categorical  boolean, integer, enum, const: exact. Each gets a confusion matrix against the
                 teacher's labels and per-class precision and recall (a student that learned the
                 majority class shows there, not in its accuracy).
    number       within `tolerance` (absolute) of the teacher's value.
    text         normalised exact match (case, punctuation, articles and spacing folded, as SQuAD
                 does) and token F1.
    other        arrays and objects: exact, as canonical JSON.

A row agrees when every categorical field matches (every field, when the schema has none). An answer
that never validated counts as a miss in every field, and as `(invalid)` in the confusion matrices.
Rates carry a Wilson interval; mean F1 a bootstrap one (1,000 resamples, a fixed seed: the same data
gives the same interval), or from 2,000 rows on the normal interval, which it then matches.
Plain Python and numpy; no pyarrow.
"""

from __future__ import annotations

import math
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

Kind = Literal["categorical", "number", "text", "other"]
INVALID = "(invalid)"  # the student's label when its answer never validated
Z95 = 1.959963984540054
BOOTSTRAP_RESAMPLES = 1000
NORMAL_FROM = 2000  # bootstrap_mean: a sample this large takes the normal interval


@dataclass(frozen=True, slots=True)
class FieldSpec:
    name: str
    kind: Kind


def field_specs(schema: Any) -> list[FieldSpec]:
    """The top-level fields of a JSON schema and how each is compared, in the schema's order."""
    if not isinstance(schema, dict):
        return []
    specs = []
    for name, node in (schema.get("properties") or {}).items():
        specs.append(FieldSpec(name, _kind(schema, node)))
    return specs


def _resolve(root: dict[str, Any], node: Any) -> dict[str, Any]:
    ref = node.get("$ref") if isinstance(node, dict) else None
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return target if isinstance(target, dict) else {}
    return node if isinstance(node, dict) else {}


def _kind(root: dict[str, Any], node: Any) -> Kind:
    node = _resolve(root, node)
    branches = node.get("anyOf") or node.get("oneOf")
    if isinstance(branches, list):  # Optional[X]: the kind of X
        kinds = {_kind(root, b) for b in branches if _resolve(root, b).get("type") != "null"}
        return kinds.pop() if len(kinds) == 1 else "other"
    if "enum" in node or "const" in node:
        return "categorical"
    t = node.get("type")
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), None)
    if t in ("boolean", "integer"):
        return "categorical"
    if t == "number":
        return "number"
    if t == "string":
        return "text"
    return "other"


# ---------------------------------------------------------------------------------- text similarity

_ARTICLES = frozenset(("a", "an", "the"))
_PUNCT = str.maketrans("", "", string.punctuation)


def normalise_text(s: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    return " ".join(w for w in s.casefold().translate(_PUNCT).split() if w not in _ARTICLES)


def token_f1(student: str, teacher: str) -> float:
    """Token F1 of two strings after `normalise_text` (1.0 when both are empty)."""
    return _f1(normalise_text(student).split(), normalise_text(teacher).split())


def _f1(a: list[str], b: list[str]) -> float:
    if a == b:  # the same tokens (the common case for a student that learned well): no counting
        return 1.0
    if not a or not b:
        return float(a == b)
    common = sum((Counter(a) & Counter(b)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(b)
    return 2 * precision * recall / (precision + recall)


# ---------------------------------------------------------------------------------- intervals


@dataclass(frozen=True, slots=True)
class Rate:
    """k of n, with its 95% Wilson interval (None when n is 0)."""

    k: int
    n: int

    @property
    def value(self) -> float | None:
        return self.k / self.n if self.n else None

    @property
    def interval(self) -> tuple[float, float] | None:
        return wilson(self.k, self.n)

    def as_dict(self) -> dict[str, Any]:
        lo_hi = self.interval
        return {
            "k": self.k,
            "n": self.n,
            "rate": self.value,
            "ci95": list(lo_hi) if lo_hi else None,
            "method": "wilson",
        }


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of k successes in n trials."""
    if n <= 0:
        return None
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_mean(values: Sequence[float], *, seed: int = 0) -> dict[str, Any]:
    """The mean of `values` with a 95% percentile-bootstrap interval; from NORMAL_FROM values on, the
    normal (central-limit) interval, which the bootstrap's matches there at a fraction of the cost."""
    n = len(values)
    if n == 0:
        return {"mean": None, "n": 0, "ci95": None, "method": "bootstrap"}
    import numpy as np

    data = np.asarray(values, dtype=np.float64)
    if data.min() == data.max():  # every resample of constant data has the same mean
        v = float(data[0])
        return {"mean": v, "n": n, "ci95": [v, v], "method": "bootstrap"}
    if n >= NORMAL_FROM:
        mean, half = float(data.mean()), Z95 * float(data.std(ddof=1)) / math.sqrt(n)
        return {"mean": mean, "n": n, "ci95": [mean - half, mean + half], "method": "normal"}
    rng = np.random.default_rng(seed)
    means = np.empty(BOOTSTRAP_RESAMPLES)
    step = max(1, 4_000_000 // n)  # resamples per chunk: bounded memory for a large split
    for start in range(0, BOOTSTRAP_RESAMPLES, step):
        stop = min(BOOTSTRAP_RESAMPLES, start + step)
        idx = rng.integers(0, n, size=(stop - start, n), dtype=np.int32 if n < 2**31 else np.int64)
        means[start:stop] = data[idx].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean": float(data.mean()), "n": n, "ci95": [float(lo), float(hi)], "method": "bootstrap"}


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100), linear between ranks; None for no values."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


# ---------------------------------------------------------------------------------- per row


def label(value: Any) -> str:
    """A categorical value as a confusion-matrix label: strings as they are, others as JSON."""
    if isinstance(value, str):
        return value
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


@dataclass(slots=True)
class RowScore:
    """How one student answer compares with the teacher's: per field, whether it matches and (text
    fields) its token F1; `agrees` as the module docstring defines it."""

    match: dict[str, bool]
    f1: dict[str, float]
    agrees: bool


def score_row(
    specs: Sequence[FieldSpec],
    teacher: Any,
    student: Any | None,
    *,
    tolerance: float = 1e-9,
) -> RowScore:
    """Compare the parsed teacher answer with the student's (None: the student's never validated)."""
    match: dict[str, bool] = {}
    f1: dict[str, float] = {}
    t_obj = teacher if isinstance(teacher, dict) else {}
    s_obj = student if isinstance(student, dict) else None
    for spec in specs:
        t = t_obj.get(spec.name)
        if s_obj is None:
            match[spec.name] = False
            if spec.kind == "text":
                f1[spec.name] = 0.0
            continue
        s = s_obj.get(spec.name)
        if spec.kind == "number" and _is_number(s) and _is_number(t):
            match[spec.name] = abs(float(s) - float(t)) <= tolerance
        elif spec.kind == "text" and isinstance(s, str) and isinstance(t, str):
            if s == t:
                match[spec.name], f1[spec.name] = True, 1.0
            else:
                ns, nt = normalise_text(s), normalise_text(t)
                match[spec.name] = ns == nt
                f1[spec.name] = _f1(ns.split(), nt.split())
        else:
            match[spec.name] = _same(s, t)
            if spec.kind == "text":
                f1[spec.name] = float(match[spec.name])
    categorical = [s.name for s in specs if s.kind == "categorical"] or [s.name for s in specs]
    agrees = s_obj is not None and all(match[name] for name in categorical)
    return RowScore(match, f1, agrees)


def score_text(teacher: str, student: str | None) -> RowScore:
    """A free-text answer (no schema): the whole answer as one text field named `answer`."""
    if student is None:
        return RowScore({"answer": False}, {"answer": 0.0}, False)
    ns, nt = normalise_text(student), normalise_text(teacher)
    return RowScore({"answer": ns == nt}, {"answer": _f1(ns.split(), nt.split())}, ns == nt)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b) and not (_is_number(a) and _is_number(b)):
        return False
    return orjson.dumps(a, option=orjson.OPT_SORT_KEYS) == orjson.dumps(b, option=orjson.OPT_SORT_KEYS)


# ---------------------------------------------------------------------------------- aggregates


@dataclass(slots=True)
class Confusion:
    """Teacher label -> student label -> count, for one categorical field."""

    counts: dict[str, Counter[str]] = field(default_factory=dict)

    def add(self, teacher: str, student: str) -> None:
        self.counts.setdefault(teacher, Counter())[student] += 1

    def classes(self) -> list[str]:
        """Every label seen, the teacher's first (by frequency), `(invalid)` last."""
        seen: Counter[str] = Counter()
        for t, row in self.counts.items():
            seen[t] += sum(row.values())
        ordered = [c for c, _ in seen.most_common()]
        for row in self.counts.values():
            for s in row:
                if s not in ordered and s != INVALID:
                    ordered.append(s)
        if any(INVALID in row for row in self.counts.values()):
            ordered.append(INVALID)
        return ordered

    def per_class(self) -> dict[str, dict[str, Any]]:
        """Per teacher class: precision (of the student's answers of that label, how many the teacher
        gave too) and recall (of the teacher's, how many the student gave), each a Rate."""
        out = {}
        for c in self.classes():
            if c == INVALID:
                continue
            tp = self.counts.get(c, Counter())[c]
            support = sum(self.counts.get(c, Counter()).values())
            predicted = sum(row[c] for row in self.counts.values())
            out[c] = {
                "support": support,
                "precision": Rate(tp, predicted).as_dict(),
                "recall": Rate(tp, support).as_dict(),
            }
        return out

    def as_dict(self) -> dict[str, Any]:
        classes = self.classes()
        return {
            "labels": classes,
            "matrix": [[self.counts.get(t, Counter())[s] for s in classes] for t in classes],
            "per_class": self.per_class(),
        }


@dataclass(slots=True)
class Comparison:
    """The running totals of a comparison: add rows with `add`, read figures with `as_dict`."""

    specs: list[FieldSpec]
    rows: int = 0
    agreed: int = 0
    matched: Counter[str] = field(default_factory=Counter)
    f1: dict[str, list[float]] = field(default_factory=dict)
    confusion: dict[str, Confusion] = field(default_factory=dict)

    def add(self, score: RowScore, teacher: Any, student: Any | None) -> None:
        self.rows += 1
        self.agreed += score.agrees
        for name, ok in score.match.items():
            self.matched[name] += ok
        for name, value in score.f1.items():
            self.f1.setdefault(name, []).append(value)
        for spec in self.specs:
            if spec.kind != "categorical":
                continue
            t = teacher.get(spec.name) if isinstance(teacher, dict) else None
            s = student.get(spec.name) if isinstance(student, dict) else None
            self.confusion.setdefault(spec.name, Confusion()).add(
                label(t), INVALID if not isinstance(student, dict) else label(s)
            )

    def fields(self) -> dict[str, dict[str, Any]]:
        out = {}
        for spec in self.specs:
            entry: dict[str, Any] = {
                "kind": spec.kind,
                "match": Rate(self.matched[spec.name], self.rows).as_dict(),
            }
            if spec.kind == "text":
                entry["token_f1"] = bootstrap_mean(self.f1.get(spec.name, []))
            if spec.kind == "categorical" and spec.name in self.confusion:
                entry["confusion"] = self.confusion[spec.name].as_dict()
            out[spec.name] = entry
        return out

    def agreement(self) -> Rate:
        return Rate(self.agreed, self.rows)


def free_text_specs() -> list[FieldSpec]:
    """The one pseudo-field a free-text comparison has."""
    return [FieldSpec("answer", "text")]
