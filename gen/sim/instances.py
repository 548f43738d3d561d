"""Schema-valid sample answers: random instances of a JSON Schema, in English-ish words.

The simulator answers structured-output requests with these. Each schema is compiled once into
generator functions (cached by its JSON text), so a request costs a walk of the compiled tree only.
"""

from __future__ import annotations

import copy
import math
import random
import re
import uuid
from collections.abc import Callable
from functools import lru_cache
from typing import Any
from urllib.parse import unquote

import orjson

__all__ = ["FENCE_INTROS", "VOCAB", "Gen", "compiled_sampler", "sample_from_schema", "sentences"]

# --------------------------------------------------------------------------- text

VOCAB = tuple(
    """
    the a an of to in for on with at by from about into over after before between under through during
    without within along across behind beyond near against among around and or but so yet because while
    although if when where which that this these those it its they their them we our you your he she his
    her one two three four five several many few most some each every other another same different new old
    good great small large long short high low early late young important public private local national
    real simple clear strong free full whole common special certain likely able open close human social
    data model system method result process value question answer problem example reason idea point fact
    group number part place case time year day week month hour world city country state company market
    service product price cost level rate change growth energy water food health school student teacher
    family community history science research study report paper book story word language music art game
    team player field area region network computer software program design test tool project plan policy
    law rule right power control support force interest chance choice risk effect impact role factor
    source type form kind order line list table record file page image map view light color sound voice
    move build create find give keep learn make need offer provide reach show start stop take try use
    work write read run grow help hold lead live meet pay play turn bring carry follow include allow
    explain describe improve reduce increase measure compare consider develop produce remain suggest
    quickly slowly carefully often always never usually rarely simply mostly nearly almost clearly
    river mountain forest garden ocean island valley road bridge station house window door table chair
    morning evening night summer winter spring autumn weather rain wind cloud sun moon star stone metal
    paper glass wood fire ice salt bread coffee tea fruit apple orange rice grain seed tree leaf flower
    doctor nurse driver farmer writer artist engineer manager worker friend neighbor parent child leader
    memory pattern signal structure balance pressure distance speed weight surface shape edge center
    """.split()
)
# Keys that name long free text get a sentence or two instead of a few words.
_LONG_KEYS = frozenset(
    "summary answer description text body explanation reason reasoning rationale content message details "
    "comment feedback response paragraph note abstract justification analysis critique fact question "
    "evidence quote sentence statement claim passage solution story context instruction".split()
)
FENCE_INTROS = (
    "Here is the JSON you asked for:",
    "Sure! Here's the result:",
    "Below is the requested object.",
    "Certainly. The answer follows.",
)


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choices(VOCAB, k=n))


def sentences(rng: random.Random, n_words: int) -> str:
    """`n_words` vocabulary words cut into capitalised sentences of 6 to 14 words."""
    words = rng.choices(VOCAB, k=n_words)
    out = []
    i = 0
    while i < n_words:
        j = min(n_words, i + rng.randint(6, 14))
        if n_words - j < 4:  # no stub sentences at the end
            j = n_words
        sentence = " ".join(words[i:j])
        out.append(sentence[0].upper() + sentence[1:] + ".")
        i = j
    return " ".join(out)


def _fit(s: str, rng: random.Random, lo: int, hi: int | None) -> str:
    """Pad with words to `lo` characters, then cut to `hi`, at a word boundary where one fits."""
    while len(s) < lo:
        s = f"{s} {_words(rng, 8)}" if s else _words(rng, 8)
    if hi is not None and len(s) > hi:
        cut = s[:hi]
        space = cut.rfind(" ")
        if space >= max(lo, 1):
            cut = cut[:space]
        stripped = cut.rstrip()
        s = stripped if len(stripped) >= lo else cut
    return s


def _is_long(key: str | None) -> bool:
    if not key:
        return False
    tokens = re.findall(r"[a-z]+", re.sub(r"([A-Z])", r" \1", key).lower())
    return any(t in _LONG_KEYS or t.rstrip("s") in _LONG_KEYS for t in tokens)


def _date(rng: random.Random) -> str:
    return f"{rng.randint(2015, 2025):04d}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def _clock(rng: random.Random) -> str:
    return f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"


_FORMATS: dict[str, Callable[[random.Random], str]] = {
    "date": _date,
    "date-time": lambda rng: f"{_date(rng)}T{_clock(rng)}Z",
    "time": lambda rng: f"{_clock(rng)}Z",
    "email": lambda rng: f"{rng.choice(VOCAB)}.{rng.choice(VOCAB)}@example.com",
    "idn-email": lambda rng: f"{rng.choice(VOCAB)}@example.com",
    "uri": lambda rng: f"https://{rng.choice(VOCAB)}.example.com/{rng.choice(VOCAB)}/{rng.choice(VOCAB)}",
    "iri": lambda rng: f"https://{rng.choice(VOCAB)}.example.com/{rng.choice(VOCAB)}",
    "url": lambda rng: f"https://{rng.choice(VOCAB)}.example.com/{rng.choice(VOCAB)}",
    "uri-reference": lambda rng: f"/{rng.choice(VOCAB)}/{rng.choice(VOCAB)}",
    "hostname": lambda rng: f"{rng.choice(VOCAB)}.example.com",
    "ipv4": lambda rng: f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
    "ipv6": lambda rng: f"fd00::{rng.getrandbits(16):x}:{rng.getrandbits(16):x}",
    "uuid": lambda rng: str(uuid.UUID(int=rng.getrandbits(128), version=4)),
    "duration": lambda rng: f"PT{rng.randint(1, 59)}M",
}


# --------------------------------------------------------------------------- schemas

Gen = Callable[[random.Random, int], Any]  # (rng, depth) -> a value

_SOFT_DEPTH = 5  # past this depth, recursion ends where the schema allows: null branches, fewest items
_HARD_DEPTH = 40  # past this, the schema has no finite instance
_P_NULL = 0.15  # chance of the null branch of an Optional: mostly real values, some nulls
_P_DEFAULT = 0.1  # chance of answering a field's default
_ANNOTATIONS = frozenset(
    "title description default examples deprecated readOnly writeOnly $comment $schema $id".split()
    + ["$defs", "definitions"]
)


def sample_from_schema(schema: dict[str, Any] | bool, rng: random.Random) -> Any:
    """A value valid against the JSON Schema `schema`, drawn from `rng` (same rng state, same value).

    Handles what pydantic v2's `model_json_schema()` emits and common hand-written schemas: types
    (one or a list), properties (all emitted, required or not), additionalProperties, enum, const,
    anyOf/oneOf (one branch) and allOf (merged), local `$ref`s (`#/$defs/...`, `#/definitions/...`),
    numeric bounds, string and array lengths, the usual formats and defaults. `pattern` is not
    honoured. Raises ValueError for schemas it cannot satisfy or does not understand.
    """
    return compiled_sampler(orjson.dumps(schema))(rng, 0)


@lru_cache(maxsize=512)
def compiled_sampler(schema_json: bytes) -> Gen:
    # Keyed by the schema's JSON text: the server sees a fresh dict per request for the same schema.
    schema = orjson.loads(schema_json)
    return _Compiler(schema).compile(schema, None)


def _as_list(t: str | list[str]) -> list[str]:
    return t if isinstance(t, list) else [t]


def _meet_types(a: str | list[str], b: str | list[str]) -> str | list[str]:
    la, lb = _as_list(a), _as_list(b)
    out = [t for t in la if t in lb]
    if "integer" not in out and (
        ("integer" in la and "number" in lb) or ("integer" in lb and "number" in la)
    ):
        out.append("integer")
    if not out:
        raise ValueError(f"allOf demands both type {a!r} and type {b!r}")
    return out[0] if len(out) == 1 else out


_TIGHTER_MIN = frozenset({"minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties"})
_TIGHTER_MAX = frozenset({"maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties"})


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """The intersection of two schemas, for the keywords where one can be computed; else `b` wins."""
    out = dict(a)
    for k, v in b.items():
        if k not in out:
            out[k] = v
            continue
        old = out[k]
        if k == "properties":
            out[k] = {**old, **{p: {"allOf": [old[p], s]} if p in old else s for p, s in v.items()}}
        elif k == "required":
            out[k] = list(dict.fromkeys([*old, *v]))
        elif k == "type":
            out[k] = _meet_types(old, v)
        elif k == "enum":
            out[k] = [x for x in old if x in v]
        elif k in _TIGHTER_MIN and not isinstance(old, bool) and not isinstance(v, bool):
            out[k] = max(old, v)
        elif k in _TIGHTER_MAX and not isinstance(old, bool) and not isinstance(v, bool):
            out[k] = min(old, v)
        else:
            out[k] = v
    return out


class _Compiler:
    """Turns a schema into a tree of closures once, so sampling does no keyword lookups."""

    def __init__(self, root: Any) -> None:
        self.root = root
        self.refs: dict[tuple[str, str | None], Gen] = {}

    def compile(self, node: Any, key: str | None) -> Gen:
        if node is True or node == {}:
            return self._any()
        if node is False:
            raise ValueError("schema `false` admits no value")
        if not isinstance(node, dict):
            raise ValueError(f"not a JSON Schema: {node!r}")
        gen = self._compile(node, key)
        if "default" in node and self._default_fits(node):
            default, inner = node["default"], gen

            def gen(rng: random.Random, depth: int) -> Any:
                if rng.random() < _P_DEFAULT:
                    return copy.deepcopy(default)
                return inner(rng, depth)

        return gen

    def _compile(self, node: dict[str, Any], key: str | None) -> Gen:
        if "$ref" in node:
            rest = {k: v for k, v in node.items() if k != "$ref" and k not in _ANNOTATIONS}
            if rest:
                return self.compile({"allOf": [{"$ref": node["$ref"]}, rest]}, key)
            return self._ref(node["$ref"], key)
        if "const" in node:
            const = node["const"]
            return lambda rng, depth: copy.deepcopy(const)
        if "enum" in node:
            values = list(node["enum"])
            if not values:
                raise ValueError("empty enum admits no value")
            return lambda rng, depth: rng.choice(values)
        if "allOf" in node:
            return self.compile(self._merge_all(node), key)
        for keyword in ("anyOf", "oneOf"):
            if keyword in node:
                rest = {k: v for k, v in node.items() if k != keyword and k not in _ANNOTATIONS}
                branches = node[keyword]
                if rest:
                    branches = [{"allOf": [rest, b]} for b in branches]
                return self._union(branches, key)
        t = node.get("type")
        if node.get("nullable") is True:  # OpenAPI 3.0 spelling of Optional
            base = {k: v for k, v in node.items() if k not in ("nullable", "default")}
            return self._union([base, {"type": "null"}], key)
        if isinstance(t, list):
            if not t:
                raise ValueError("empty type list admits no value")
            base = {k: v for k, v in node.items() if k != "default"}
            return self._union([{**base, "type": one} for one in t], key)
        if t is None:
            t = _infer_type(node)
        builder = {
            "object": self._object,
            "array": self._array,
            "string": self._string,
            "integer": self._integer,
            "number": self._number,
            "boolean": lambda node, key: lambda rng, depth: rng.random() < 0.5,
            "null": lambda node, key: lambda rng, depth: None,
        }.get(t)
        if builder is None:
            raise ValueError(f"unknown type {t!r}")
        return builder(node, key)

    # -- references and combinators

    def _resolve(self, ref: str) -> Any:
        if not ref.startswith("#"):
            raise ValueError(f"only local $refs are supported, got {ref!r}")
        node = self.root
        try:
            for part in ref[1:].split("/")[1:]:
                part = unquote(part).replace("~1", "/").replace("~0", "~")
                node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError, TypeError):
            raise ValueError(f"unresolvable $ref {ref!r}") from None
        return node

    def _ref(self, ref: str, key: str | None) -> Gen:
        memo_key = (ref, key)
        if memo_key in self.refs:
            return self.refs[memo_key]
        # Recursive schemas refer to themselves: publish a forwarder before compiling the target.
        cell: list[Gen] = []
        self.refs[memo_key] = forward = lambda rng, depth: cell[0](rng, depth)
        cell.append(self.compile(self._resolve(ref), key))
        return forward

    def _flatten(self, node: Any) -> dict[str, Any]:
        """`node` with its top-level $ref and allOf merged in, ready for `_merge`."""
        if node is True:
            return {}
        if not isinstance(node, dict):
            raise ValueError(f"cannot merge schema {node!r}")
        if "$ref" in node:
            rest = {k: v for k, v in node.items() if k != "$ref"}
            return _merge(self._flatten(self._resolve(node["$ref"])), rest)
        if "allOf" in node:
            return self._merge_all(node)
        return node

    def _merge_all(self, node: dict[str, Any]) -> dict[str, Any]:
        merged = {k: v for k, v in node.items() if k != "allOf"}
        for sub in node["allOf"]:
            merged = _merge(merged, self._flatten(sub))
        return merged

    def _is_null(self, node: Any) -> bool:
        if isinstance(node, dict) and "$ref" in node and len(node) == 1:
            node = self._resolve(node["$ref"])
        return isinstance(node, dict) and (
            node.get("type") == "null" or ("const" in node and node["const"] is None)
        )

    def _union(self, branches: list[Any], key: str | None) -> Gen:
        if not branches:
            raise ValueError("empty anyOf/oneOf admits no value")
        # We cannot honour `pattern`; avoid such branches when another will do (pydantic's Decimal).
        usable = [b for b in branches if not (isinstance(b, dict) and "pattern" in b)] or branches
        compiled = [(b, self.compile(b, key)) for b in usable]
        nulls = [g for b, g in compiled if self._is_null(b)]
        others = [g for b, g in compiled if not self._is_null(b)]
        # Deep in a recursive schema, prefer branches that stop the recursion.
        terminal = nulls or [g for b, g in compiled if not (isinstance(b, dict) and "$ref" in b)] or others

        def gen(rng: random.Random, depth: int) -> Any:
            if depth >= _SOFT_DEPTH:
                return rng.choice(terminal)(rng, depth)
            if nulls and (not others or rng.random() < _P_NULL):
                return nulls[0](rng, depth)
            return rng.choice(others)(rng, depth)

        return gen

    def _default_fits(self, node: dict[str, Any]) -> bool:
        # pydantic does not validate defaults, so a model may declare one its own schema rejects.
        from jsonschema import Draft202012Validator  # only needed when compiling; keep imports light

        probe = {k: v for k, v in node.items() if k != "default"}
        if isinstance(self.root, dict):
            for defs in ("$defs", "definitions"):
                if defs in self.root:
                    probe.setdefault(defs, self.root[defs])
        try:
            return bool(Draft202012Validator(probe).is_valid(node["default"]))
        except Exception:  # an unresolvable ref or a schema jsonschema rejects: just never use it
            return False

    # -- types

    def _any(self) -> Gen:
        return lambda rng, depth: _words(rng, rng.randint(1, 3))

    def _object(self, node: dict[str, Any], key: str | None) -> Gen:
        props: dict[str, Any] = node.get("properties") or {}
        fields = [(name, self.compile(sub, name)) for name, sub in props.items()]
        missing = [r for r in node.get("required", ()) if r not in props]
        extra = node.get("additionalProperties", True)
        extra_gen = self.compile(extra, None) if extra is not False else self._any()
        names = node.get("propertyNames")
        name_gen = (
            self.compile(names, None) if isinstance(names, dict) else lambda rng, depth: rng.choice(VOCAB)
        )
        base = len(fields) + len(missing)
        lo_extra = max(0, node.get("minProperties", 0) - base)
        hi_extra = 0
        if extra is not False:
            if base == 0:  # a free-form object (dict[str, X]): a few entries
                lo_extra = max(lo_extra, 1)
                hi_extra = max(lo_extra, 3)
            else:
                hi_extra = lo_extra
            if "maxProperties" in node:
                hi_extra = min(hi_extra, max(0, node["maxProperties"] - base))
                lo_extra = min(lo_extra, hi_extra)

        def gen(rng: random.Random, depth: int) -> Any:
            if depth > _HARD_DEPTH:
                raise ValueError("schema has no finite instance (required recursion)")
            d = depth + 1
            out = {name: g(rng, d) for name, g in fields}
            for name in missing:
                out[name] = extra_gen(rng, d)
            if hi_extra:
                n = rng.randint(lo_extra, hi_extra) if depth < _SOFT_DEPTH else lo_extra
                for _ in range(10 * n):
                    if n <= 0:
                        break
                    name = name_gen(rng, d)
                    if isinstance(name, str) and name not in out:
                        out[name] = extra_gen(rng, d)
                        n -= 1
            return out

        return gen

    def _array(self, node: dict[str, Any], key: str | None) -> Gen:
        items = node.get("items")
        prefix_schemas = node.get("prefixItems", [])
        if isinstance(items, list):  # draft-07 tuple form
            prefix_schemas, items = items, node.get("additionalItems")
        prefix = [self.compile(s, key) for s in prefix_schemas]
        if items is None:
            item_gen = None if prefix else self._any()
        elif items is False:
            item_gen = None
        else:
            item_gen = self.compile(items, key)
        lo = node.get("minItems")
        hi = node.get("maxItems")
        if lo is not None and hi is not None and hi < lo:
            raise ValueError(f"maxItems {hi} < minItems {lo}")
        deep = lo or 0
        if lo is None:
            lo = len(prefix) if prefix else 1
            if hi is not None:
                lo = min(lo, hi)
        if hi is None:
            hi = max(lo, 4) if item_gen is not None else max(lo, len(prefix))
        if item_gen is None:
            if lo > len(prefix):
                raise ValueError(f"minItems {lo} but only {len(prefix)} items allowed")
            hi = min(hi, len(prefix))
        unique = node.get("uniqueItems") is True

        def gen(rng: random.Random, depth: int) -> Any:
            d = depth + 1
            n = rng.randint(lo, hi) if depth < _SOFT_DEPTH else deep
            out = [p(rng, d) for p in prefix[:n]]
            if item_gen is None:
                return out
            if not unique:
                out.extend(item_gen(rng, d) for _ in range(n - len(out)))
                return out
            seen = {orjson.dumps(x, option=orjson.OPT_SORT_KEYS) for x in out}
            for _ in range(10 * n + 10):
                if len(out) >= n:
                    break
                x = item_gen(rng, d)
                k = orjson.dumps(x, option=orjson.OPT_SORT_KEYS)
                if k not in seen:
                    seen.add(k)
                    out.append(x)
            return out

        return gen

    def _string(self, node: dict[str, Any], key: str | None) -> Gen:
        lo = node.get("minLength", 0)
        hi = node.get("maxLength")
        if hi is not None and hi < lo:
            raise ValueError(f"maxLength {hi} < minLength {lo}")
        fmt = _FORMATS.get(node.get("format", ""))
        if fmt is not None:
            return lambda rng, depth: fmt(rng)
        if _is_long(key):
            return lambda rng, depth: _fit(sentences(rng, rng.randint(10, 40)), rng, lo, hi)
        return lambda rng, depth: _fit(_words(rng, rng.randint(1, 4)), rng, lo, hi)

    def _integer(self, node: dict[str, Any], key: str | None) -> Gen:
        lo_f, hi_f = _bounds(node)
        lo = math.ceil(lo_f) if lo_f is not None else None
        hi = math.floor(hi_f) if hi_f is not None else None
        ex_lo, ex_hi = _exclusive(node)
        if ex_lo is not None:
            lo = max(lo, math.floor(ex_lo) + 1) if lo is not None else math.floor(ex_lo) + 1
        if ex_hi is not None:
            hi = min(hi, math.ceil(ex_hi) - 1) if hi is not None else math.ceil(ex_hi) - 1
        lo, hi = _default_range(lo, hi)
        step = node.get("multipleOf")
        if isinstance(step, int) and step > 0:
            k_lo, k_hi = -((-lo) // step), hi // step
            if k_lo > k_hi:
                raise ValueError(f"no multiple of {step} in [{lo}, {hi}]")
            return lambda rng, depth: rng.randint(k_lo, k_hi) * step
        if lo > hi:
            raise ValueError(f"no integer in [{lo}, {hi}]")
        return lambda rng, depth: rng.randint(lo, hi)

    def _number(self, node: dict[str, Any], key: str | None) -> Gen:
        lo_i, hi_i = _bounds(node)
        ex_lo, ex_hi = _exclusive(node)
        lo_all = [x for x in (lo_i, ex_lo) if x is not None]
        hi_all = [x for x in (hi_i, ex_hi) if x is not None]
        lo, hi = _default_range(max(lo_all) if lo_all else None, min(hi_all) if hi_all else None)
        if lo > hi or (lo == hi and (lo == ex_lo or hi == ex_hi)):
            raise ValueError(f"no number in [{lo}, {hi}]")
        step = node.get("multipleOf")
        if step:
            k_lo, k_hi = math.ceil(lo / step), math.floor(hi / step)
            return lambda rng, depth: rng.randint(k_lo, k_hi) * step

        def ok(x: float) -> bool:
            return lo <= x <= hi and x != ex_lo and x != ex_hi

        def gen(rng: random.Random, depth: int) -> float:
            x = round(rng.uniform(lo, hi), 2)  # two decimals read like real data
            return x if ok(x) else (lo + hi) / 2

        return gen


def _infer_type(node: dict[str, Any]) -> str:
    if any(k in node for k in ("properties", "additionalProperties", "required", "patternProperties")):
        return "object"
    if any(k in node for k in ("items", "prefixItems", "minItems", "maxItems")):
        return "array"
    if any(k in node for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")):
        return "number"
    return "string"


def _bounds(node: dict[str, Any]) -> tuple[float | None, float | None]:
    """Inclusive bounds, with draft-4's boolean exclusive flags left to `_exclusive`."""
    lo, hi = node.get("minimum"), node.get("maximum")
    if node.get("exclusiveMinimum") is True:
        lo = None
    if node.get("exclusiveMaximum") is True:
        hi = None
    return lo, hi


def _exclusive(node: dict[str, Any]) -> tuple[float | None, float | None]:
    ex_lo, ex_hi = node.get("exclusiveMinimum"), node.get("exclusiveMaximum")
    if isinstance(ex_lo, bool):
        ex_lo = node.get("minimum") if ex_lo else None
    if isinstance(ex_hi, bool):
        ex_hi = node.get("maximum") if ex_hi else None
    return ex_lo, ex_hi


def _default_range(lo: Any, hi: Any) -> tuple[Any, Any]:
    """Unbounded sides get a plausible span of 100 (counts, scores, ages)."""
    if lo is None and hi is None:
        return 0, 100
    if lo is None:
        return hi - 100, hi
    if hi is None:
        return lo, lo + 100
    return lo, hi
