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

import functools
import math
import string
from collections import Counter, _count_elements  # type: ignore[attr-defined]
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import compress, count
from operator import ne
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
_PUNCT_BYTES = string.punctuation.encode()


def normalise_text(s: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    return " ".join(_tokens(s))


def _tokens(s: str) -> list[str]:
    """`normalise_text(s).split()`, without joining and splitting again. Two strings normalise to the
    same text exactly when their token lists are equal (no token holds whitespace)."""
    if s.isascii():
        # The same tokens, faster: for ASCII text casefold() is lower(), and deleting the punctuation
        # bytes (all ASCII) is what str.translate does, at a fraction of its cost. Split after decoding:
        # str.split() also splits at \x1c-\x1f, which bytes.split() does not.
        text = s.lower().encode().translate(None, _PUNCT_BYTES).decode()
        return [w for w in text.split() if w not in _ARTICLES]
    return [w for w in s.casefold().translate(_PUNCT).split() if w not in _ARTICLES]


def token_f1(student: str, teacher: str) -> float:
    """Token F1 of two strings after `normalise_text` (1.0 when both are empty)."""
    return _f1(_tokens(student), _tokens(teacher))


def _f1(a: list[str], b: list[str]) -> float:
    if a == b:  # the same tokens (the common case for a student that learned well): no counting
        return 1.0
    if not a or not b:
        return float(a == b)
    # common = sum over tokens of min(count in a, count in b). Tokens equal at the same place from the
    # start or from the end are common tokens (found in C, by map and compress): only the middles
    # between them are counted, which for a student close to its teacher are a token or two.
    n = min(len(a), len(b))
    head = next(compress(count(), map(ne, a, b)), n)
    tail = min(next(compress(count(), map(ne, reversed(a), reversed(b))), n), n - head)
    common = head + tail
    # The middles, counted in a plain dict by Counter's own C helper (Counter() itself costs as much
    # again in Python-level calls).
    counts: dict[str, int] = {}
    _count_elements(counts, a[head : len(a) - tail])
    get = counts.get
    for w in b[head : len(b) - tail]:
        k = get(w)
        if k:
            counts[w] = k - 1
            common += 1
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
    # At k = 0 (k = n) the bound is exactly 0 (1); the formula leaves float noise there (2.8e-17).
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


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
                ts, tt = _tokens(s), _tokens(t)
                match[spec.name] = ts == tt
                f1[spec.name] = _f1(ts, tt)
        else:
            match[spec.name] = _same(s, t)
            if spec.kind == "text":
                f1[spec.name] = float(match[spec.name])
    agrees = s_obj is not None and all(match[name] for name in _agreement_fields(tuple(specs)))
    return RowScore(match, f1, agrees)


def identical_score(specs: Sequence[FieldSpec]) -> RowScore:
    """`score_row` of a student answer that is the teacher's, object for object (the caller checked that
    the two validated answers serialise to the same JSON and that it is an object): every field matches,
    every text field has F1 1.0, the row agrees. Skips the per-field work for the common case."""
    return RowScore({s.name: True for s in specs}, {s.name: 1.0 for s in specs if s.kind == "text"}, True)


@functools.cache
def _categorical(specs: tuple[FieldSpec, ...]) -> tuple[str, ...]:
    return tuple(s.name for s in specs if s.kind == "categorical")


@functools.cache
def _agreement_fields(specs: tuple[FieldSpec, ...]) -> tuple[str, ...]:
    """The fields a row must match to agree: the categorical ones, or every one when there are none."""
    return _categorical(specs) or tuple(s.name for s in specs)


def score_text(teacher: str, student: str | None) -> RowScore:
    """A free-text answer (no schema): the whole answer as one text field named `answer`."""
    if student is None:
        return RowScore({"answer": False}, {"answer": 0.0}, False)
    ts, tt = _tokens(student), _tokens(teacher)
    return RowScore({"answer": ts == tt}, {"answer": _f1(ts, tt)}, ts == tt)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b) and not (_is_number(a) and _is_number(b)):
        return False
    if type(a) is type(b) and type(a) in (str, bool, int):  # as JSON: equal exactly when equal
        return bool(a == b)
    return orjson.dumps(a, option=orjson.OPT_SORT_KEYS) == orjson.dumps(b, option=orjson.OPT_SORT_KEYS)


# ---------------------------------------------------------------------------------- aggregates


@dataclass(slots=True)
class Confusion:
    """Teacher label -> student label -> count, for one categorical field."""

    counts: dict[str, Counter[str]] = field(default_factory=dict)

    def add(self, teacher: str, student: str) -> None:
        row = self.counts.get(teacher)
        if row is None:  # not setdefault: that would build a Counter on every call
            row = self.counts[teacher] = Counter()
        row[student] += 1

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
    matched: Counter[str] = field(default_factory=Counter)  # per field, of the rows `add` took
    f1: dict[str, list[float]] = field(default_factory=dict)
    confusion: dict[str, Confusion] = field(default_factory=dict)
    categorical: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _same: int = field(default=0, init=False, repr=False, compare=False)  # rows added by add_same
    _text_f1: tuple[list[float], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.categorical = _categorical(tuple(self.specs))
        # The F1 lists of the text fields, made now in the schema's order (as `add` would make them)
        self._text_f1 = tuple(self.f1.setdefault(s.name, []) for s in self.specs if s.kind == "text")

    def add(self, score: RowScore, teacher: Any, student: Any | None) -> None:
        self.rows += 1
        self.agreed += score.agrees
        for name, ok in score.match.items():
            self.matched[name] += ok
        for name, value in score.f1.items():
            self.f1.setdefault(name, []).append(value)
        t_obj = teacher if isinstance(teacher, dict) else {}
        s_obj = student if isinstance(student, dict) else None
        for name in self.categorical:
            t = label(t_obj.get(name))
            s = INVALID if s_obj is None else t if s_obj is t_obj else label(s_obj.get(name))
            confusion = self.confusion.get(name)
            if confusion is None:
                confusion = self.confusion[name] = Confusion()
            confusion.add(t, s)

    def add_same(self, teacher: dict[str, Any]) -> None:
        """`add(identical_score(specs), teacher, teacher)`: a student answer that is the teacher's, object
        for object (the caller checked it), counted without the per-field loop over a RowScore."""
        self.rows += 1
        self.agreed += 1
        self._same += 1  # a match in every field: added to `matched` where it is read (fields())
        for values in self._text_f1:
            values.append(1.0)
        for name in self.categorical:
            value = teacher.get(name)
            t = value if type(value) is str else label(value)
            confusion = self.confusion.get(name)
            if confusion is None:
                confusion = self.confusion[name] = Confusion()
            confusion.add(t, t)

    def fields(self) -> dict[str, dict[str, Any]]:
        out = {}
        for spec in self.specs:
            entry: dict[str, Any] = {
                "kind": spec.kind,
                "match": Rate(self.matched[spec.name] + self._same, self.rows).as_dict(),
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
