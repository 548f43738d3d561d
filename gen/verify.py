"""Answer verification (`[verify]`): each answer is checked against a reference rendered from its input,
and what fails becomes a reject (`verification_failed`) instead of a row.

`Verifier` is built (and every configuration problem raised as a ConfigError) before any request: the
reference template's variables, the `python` verifier's import, the `math` extra. `Verifier.check` is
synchronous, CPU-bound and thread-safe; the pipeline runs it off the event loop.

Methods (`method`):
- `exact`: the answer equals the reference after normalisation (case, whitespace, `$...$`, a trailing
  period; the content of the last `\\boxed{}` when the answer has one);
- `numeric`: the answer's last number (in the last `\\boxed{}` when there is one) is within `tolerance`
  of the reference's;
- `math`: Hugging Face's math-verify (LaTeX, `\\boxed{}`, fractions, sets), the optional `math` extra,
  in a process of its own with time limits (gen.verify_math); integers and answers equal after
  normalisation are decided without it;
- `json-field`: one field of the validated output (`field`, dotted) equals the reference read as JSON
  (`42`, `true`, `"text"`; a reference that is not JSON is a string);
- `python = "FILE.py:function"`: the user's `function(output, reference, row) -> bool`, where `output`
  is the answer (the validated output as a Python value, or the text; its `field` when one is named),
  `reference` the rendered reference and `row` the input variables (a dict); it runs in a process of its
  own (gen.verify_python), and a call that takes over `timeout_s` fails that answer.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import jinja2
import jinja2.meta
import orjson

from gen.config import PromptFile, VerifySpec
from gen.errors import ConfigError
from gen.schema import Schema
from gen.templates import Expansion
from gen.verify_math import MathWorker
from gen.verify_python import NOT_A_VERDICT, PythonWorker, VerifierRaised, VerifierTimeout

VERIFICATION_FAILED = "verification_failed"
"""The reject reason of an answer that did not pass (or whose check raised)."""

MATH_EXTRA = "pip install 'gen[math]' (or: pip install math-verify)"
_SHOWN = 200  # characters of an answer or reference quoted in a reject's error
_MATH_TAIL = (
    1_000  # without a \boxed{}, math-verify reads only the answer's end: its cost must not grow with it
)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One answer's verdict: whether it passed, the reference it was compared with, and why not."""

    ok: bool
    reference: str | None
    error: str | None = None


class _Fail(Exception):
    """An answer that cannot be compared (no such field, no number): fails with this message."""


class Verifier:
    """A prompt file's `[verify]` table, checked and ready: `check()` decides one answer."""

    def __init__(
        self, spec: VerifySpec, prompt: PromptFile, expansion: Expansion, schema: Schema | None, samples: int
    ) -> None:
        where = prompt.path
        self.spec = spec
        self.method = _method(spec, where)
        if spec.max_samples is not None and spec.max_samples < samples:
            raise ConfigError(
                where, f"[verify] max_samples ({spec.max_samples}) is below samples ({samples}): "
                "it is the most answers tried per input, samples the most kept",
            )  # fmt: skip
        if self.method == "json-field" and not spec.field:
            raise ConfigError(
                where, '[verify] method "json-field" needs field = "NAME" (the output\'s field)'
            )
        if spec.field and schema is None:
            raise ConfigError(
                where, "[verify] field names a field of the output, but the prompt file has no schema"
            )
        if spec.field and schema is not None:  # a typo: every answer paid for, then failed
            _check_field(spec.field, _output_schema(schema), where)
        available = set(expansion.variables) | (set(expansion.seed.columns) if expansion.seed else set())
        try:
            ast = expansion.env.parse(spec.reference)
            # compiling finds what parsing does not (an unknown filter or test: TemplateAssertionError)
            # a null value renders as "", not jinja's "None" (which an answer "None" would match)
            env = expansion.env.overlay(finalize=_none_as_empty)
            self._reference = env.from_string(spec.reference)
        except jinja2.TemplateSyntaxError as e:
            raise ConfigError(where, f"[verify] reference: template syntax error: {e.message}") from None
        missing = sorted(jinja2.meta.find_undeclared_variables(ast) - available - set(expansion.env.globals))
        if missing:
            known = ", ".join(sorted(available)) or "none"
            raise ConfigError(
                where, f"[verify] reference: unknown variable {missing[0]!r} (defined: {known})"
            )
        self._python: PythonWorker | None = None
        if self.method == "python":
            assert spec.python is not None
            _load_function(spec.python, prompt, where)  # a file that cannot be used: one line, now
            file_part, _, name = spec.python.partition(":")
            self._python = PythonWorker(str(prompt.resolve(file_part).resolve()), name, spec.timeout_s)
        self._math_worker: MathWorker | None = None
        if self.method == "math":
            _import_math_verify(where)
            self._math_worker = MathWorker()
        self._compare: Callable[[Any, str], None] = {
            "exact": self._exact,
            "numeric": self._numeric,
            "math": self._math,
            "json-field": _json_field,
        }.get(self.method, self._exact)

    def close(self) -> None:
        """Stop the math-verify or `python` verifier process, if one was started (a later check starts
        another)."""
        if self._math_worker is not None:
            self._math_worker.close()
        if self._python is not None:
            self._python.close()

    def _math(self, value: Any, reference: str) -> None:
        assert self._math_worker is not None
        _math(value, reference, self._math_worker.equal)

    def describe(self) -> dict[str, Any]:
        """What the manifest records of the check."""
        s = self.spec
        out: dict[str, Any] = {"method": self.method, "reference": s.reference, "field": s.field}
        if self.method == "numeric":
            out["tolerance"] = s.tolerance
        if s.python:
            out["python"] = s.python
            out["timeout_s"] = s.timeout_s
        out["max_samples"] = s.max_samples
        return out

    def reference(self, vars_json: str) -> str:
        return self._reference.render(orjson.loads(vars_json))

    def unusable(self, vars_json: str) -> Outcome | None:
        """The failed outcome of every answer to an input whose reference cannot check any (it does not
        render, it is empty and no `python` function, which may not need one, decides, or `numeric` has
        no one finite number to compare), else None:
        such an input is a reject before any request is paid for (gen.pipeline, gen.batching)."""
        usable = self._usable_reference(vars_json)
        return usable if isinstance(usable, Outcome) else None

    def _usable_reference(self, vars_json: str) -> str | Outcome:
        """The rendered reference, or the failed outcome `unusable` gives (one render for both)."""
        try:
            reference = self.reference(vars_json)
        except Exception as e:
            return Outcome(False, None, f"the reference did not render: {type(e).__name__}: {e}")
        if not reference.strip() and self._python is None:
            return Outcome(False, reference, EMPTY_REFERENCE)
        if self.method == "numeric" and _only_number(_final(reference)) is None:
            why = f"the reference {_quote(reference)} is not a number (math compares expressions)"
            return Outcome(False, reference, why)
        return reference

    def check(self, text: str, output_json: str | None, vars_json: str) -> Outcome:
        """Decide one answer: `text` the answer's text, `output_json` the validated output (or None),
        `vars_json` the input variables. Never raises: a reference that does not render or a verifier
        that raises is a failed answer, with the error."""
        reference = self._usable_reference(vars_json)
        if isinstance(reference, Outcome):
            return reference
        try:
            value = _answer(text, output_json, self.spec.field)
            if self._python is not None:
                output = value
                if self.spec.field is None and output_json is not None:
                    output = orjson.loads(output_json)
                try:
                    ok = self._python.call(output, reference, orjson.loads(vars_json))
                except VerifierTimeout:
                    raise _Fail(
                        f"the verifier {self.spec.python} gave no verdict within {self.spec.timeout_s:g} s "
                        "([verify] timeout_s)"
                    ) from None
                except VerifierRaised as e:
                    if e.kind == NOT_A_VERDICT:
                        returned = f"returned {e.message}, not True or False"
                        raise _Fail(f"the verifier {self.spec.python} {returned}") from None
                    said = f": {e.message[:_SHOWN]}" if e.message else ""  # sys.exit() has no message
                    return Outcome(False, reference, f"the verifier raised {e.kind}{said}")
                if not ok:
                    raise _Fail(f"the verifier {self.spec.python} said no to {_quote(output)}")
            else:
                self._compare(value, reference)
        except _Fail as e:
            return Outcome(False, reference, str(e))
        except (
            Exception
        ) as e:  # the user's verifier (or math-verify) raised: this answer fails, the run goes on
            return Outcome(False, reference, f"the verifier raised {type(e).__name__}: {str(e)[:_SHOWN]}")
        return Outcome(True, reference)

    def _exact(self, value: Any, reference: str) -> None:
        got = _normalise(_final(_as_text(value)))
        if got != _normalise(_final(reference)):
            raise _Fail(f"answer {_quote(got)} is not the reference {_quote(reference)}")

    def _numeric(self, value: Any, reference: str) -> None:
        ref = _only_number(_final(reference))
        assert ref is not None  # check() took such a reference for unusable before it came here
        got = _number(_final(_as_text(value)))
        if got is None:
            raise _Fail(f"the answer holds no number (reference {_quote(reference)})")
        if not abs(got - ref) <= self.spec.tolerance:
            raise _Fail(
                f"answer {got:g} differs from the reference {ref:g} by more than {self.spec.tolerance:g}"
            )


EMPTY_REFERENCE = "the reference is empty: this input has no value to check the answer against"


def _none_as_empty(value: Any) -> Any:
    return "" if value is None else value


def _output_schema(schema: Schema) -> dict[str, Any]:
    """The JSON Schema of the validated output `field` is read from: a pydantic model's output is its
    model_dump_json, with field names (not aliases, unless serialize_by_alias) and computed fields."""
    if schema.model is None:
        return schema.json_schema
    by_alias = bool(schema.model.model_config.get("serialize_by_alias", False))
    try:
        return schema.model.model_json_schema(mode="serialization", by_alias=by_alias)
    except Exception:  # the user's model: then nothing is checked
        return {}


# Keywords that let an object hold properties its `properties` does not list (with a truthy value).
_MORE_PROPERTIES = (
    "additionalProperties", "patternProperties", "unevaluatedProperties", "allOf", "anyOf", "oneOf",
    "$ref", "$dynamicRef", "if", "dependentSchemas", "dependencies",
)  # fmt: skip


def _check_field(field: str, json_schema: dict[str, Any], where: Any) -> None:
    """ConfigError when the schema lists an object's properties and `field` (dotted) names one it does
    not list; a level the schema does not describe that simply (no `properties`, or a keyword that
    allows others: additionalProperties, allOf, $ref, ...) is not checked further."""
    level: Any = json_schema
    for i, part in enumerate(field.split(".")):
        kind = _not_an_object(level)
        if kind is not None:  # an array or a number: no key of it can be read (field is object keys)
            at = repr(".".join(field.split(".")[:i])) if i else "the output"
            why = f"{at} is {kind} in the schema, with no fields"
            raise ConfigError(where, f"[verify] field {field!r}: {why}")
        properties = level.get("properties") if isinstance(level, dict) else None
        if not isinstance(properties, dict) or not properties:
            return
        if any(level.get(k) not in (None, False) for k in _MORE_PROPERTIES):
            return
        if part not in properties:
            known = ", ".join(properties)
            at = f" of {'.'.join(field.split('.')[:i])!r}" if i else ""
            raise ConfigError(
                where,
                f"[verify] field {field!r}: the schema has no property {part!r}{at} (properties: {known})",
            )
        level = properties[part]


def _not_an_object(level: Any) -> str | None:
    """The type a schema level gives its value when that can only be something other than an object
    (`array`, `integer`, ...), else None (an object, or what the schema does not say simply)."""
    if not isinstance(level, dict) or any(level.get(k) not in (None, False) for k in _MORE_PROPERTIES):
        return None
    kind = level.get("type")
    kinds = [kind] if isinstance(kind, str) else kind if isinstance(kind, list) else None
    if not kinds or "object" in kinds or not all(isinstance(k, str) for k in kinds):
        return None
    return " or ".join(kinds)


def _method(spec: VerifySpec, where: Any) -> str:
    if spec.python is not None:
        if spec.method not in (None, "python"):
            raise ConfigError(
                where, f'[verify] python = ... is a method of its own; drop method = "{spec.method}"'
            )
        return "python"
    if spec.method == "python":
        raise ConfigError(where, '[verify] method "python" needs python = "FILE.py:function"')
    return spec.method or "exact"


def _load_function(ref: str, prompt: PromptFile, where: Any) -> Callable[..., Any]:
    """`FILE.py:function`, relative to the prompt file; ConfigError (one line) when it cannot be used."""
    file_part, _, name = ref.partition(":")
    if not file_part.endswith(".py") or not name:
        raise ConfigError(where, f"[verify] python {ref!r}: expected FILE.py:function")
    path = prompt.resolve(file_part)
    if not path.is_file():
        raise ConfigError(where, f"[verify] python {ref!r}: no such file {path}")
    module_name = f"gen_verify_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(where, f"[verify] python {ref!r}: cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        with contextlib.redirect_stdout(sys.stderr):  # gen's stdout is its own (`gen plan --json`)
            spec.loader.exec_module(module)
    except BaseException as e:  # the user's module can raise anything, SystemExit included: one line
        sys.modules.pop(module_name, None)
        first = str(e).splitlines()[0] if str(e) else ""
        raise ConfigError(
            where, f"[verify] python {ref!r}: import failed: {type(e).__name__}: {first}"
        ) from None
    function = getattr(module, name, None)
    if not callable(function):
        raise ConfigError(where, f"[verify] python {ref!r}: {path.name} has no function {name!r}")
    return function


def _import_math_verify(where: Any) -> None:
    try:
        import math_verify  # noqa: F401
    except ImportError:
        raise ConfigError(
            where, f'[verify] method "math" needs the math-verify package: {MATH_EXTRA}'
        ) from None


# --------------------------------------------------------------------------- answers


def _answer(text: str, output_json: str | None, field: str | None) -> Any:
    """What is compared: the named field of the validated output, the output, or the answer's text."""
    if field is None:
        return text
    if output_json is None:
        raise _Fail(f"no validated output to read field {field!r} from")
    value: Any = orjson.loads(output_json)
    for part in field.split("."):
        if not isinstance(value, dict) or part not in value:
            raise _Fail(f"the output has no field {field!r}")
        value = value[part]
    return value


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _quote(value: Any) -> str:
    s = _as_text(value)
    return repr(s if len(s) <= _SHOWN else s[:_SHOWN] + "...")


_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


def _final(text: str) -> str:
    """The content of the last `\\boxed{...}` (braces matched), else the text."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return text
    start = starts[-1]
    depth = 1
    for i in range(start, len(text)):
        c = text[i]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
    return text[start:]  # unclosed: what follows


_SPACES = re.compile(r"\s+")


def _normalise(s: str) -> str:
    # a typeset minus (U+2212) is a minus, as `numeric` reads it
    s = _SPACES.sub(" ", s).strip().rstrip(".").rstrip().replace("\u2212", "-")
    while len(s) >= 2 and s[0] == "$" and s[-1] == "$":  # "$8$." as "$8.$": the period either side
        s = s[1:-1].strip().rstrip(".").rstrip()
    return s.casefold()


# `3.` and `.5` are numbers too (read as 3 and 5 they passed 5 against .5)
_NUMBER = re.compile(r"-?(?:\d+(?:,\d{3})*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?(?:\s*/\s*-?\d+(?:\.\d+)?)?")


_LATEX_FRACTION = re.compile(r"\\[dt]?frac\s*\{\s*(-?\d+(?:\.\d+)?)\s*\}\s*\{\s*(-?\d+(?:\.\d+)?)\s*\}")
_LATEX_DIGITS = re.compile(r"\\[dt]?frac(\d)(\d)")  # \frac12: TeX's one-digit arguments need no braces


def _plain(text: str) -> str:
    """`text` with TeX fractions as `n/d` and a unicode minus (U+2212) as `-`: \\frac{1}{2} is 1/2, not
    its last number, 2, and \\frac12 not 12; −5 is not 5."""
    return _LATEX_DIGITS.sub(r"\1/\2", _LATEX_FRACTION.sub(r"\1/\2", text)).replace("\u2212", "-")


def _number(text: str) -> float | None:
    """The last number in `text` (`1,234.5`, `-3e2`, `7/2`, `\\frac{7}{2}`), or None."""
    found = _NUMBER.findall(_plain(text))
    if not found:
        return None
    raw = found[-1].replace(",", "").replace(" ", "")
    try:
        if "/" in raw:
            # float, not Fraction: Fraction("1e999999999") builds a billion-digit integer (hours)
            num, den = raw.split("/")
            value = float(num) / float(den) if float(den) != 0 else math.nan
        else:
            value = float(raw)
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    return value if math.isfinite(value) else None


# A degree sign or a dollar on one number (the MATH set's `75^\circ`, `\$18.90`) leaves it one number.
_UNIT_MARK = re.compile(r"^\\\$\s*|\s*\^\s*(?:\\circ|\{\s*\\circ\s*\})$")


def _only_number(text: str) -> float | None:
    """`text` as one number (`42`, `+5`, `1,234.5`, `7/2`, `\\frac{7}{2}`, `$-3e2$`), else None: a
    reference such as `9\\pi`, `5\\sqrt{2}` or `\\{2, 3\\}` is not its last number (that would pass 9,
    `3\\sqrt{2}`, 3)."""
    bare = _plain(text).strip().strip("$").strip()
    bare = _UNIT_MARK.sub("", bare).removeprefix("+")
    return _number(bare) if _NUMBER.fullmatch(bare) else None


_GROUPED = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_RATIONAL = re.compile(
    r"(?P<sign>-?)(?:(?P<int>\d+)|(?P<dec>\d*\.\d+)|(?P<n>\d+)/(?P<d>\d+)"
    r"|\\[dt]?frac\{(?P<fn>\d+)\}\{(?P<fd>\d+)\}|\\[dt]?frac(?P<sn>\d)(?P<sd>\d))"
)


def _rational(s: str) -> tuple[Fraction, bool] | None:
    """A plain number's value (`42`, `-0.75`, `3/4`, `\\frac{3}{4}`, `\\frac34`, `1,000`), and whether it
    is exact (no decimal point); None for anything else."""
    if len(s) > 100:
        return None
    s = s.replace(" ", "")
    if _GROUPED.fullmatch(s):  # 1,000,000: thousands separators, not a list
        s = s.replace(",", "")
    m = _RATIONAL.fullmatch(s)
    if m is None:
        return None
    sign = -1 if m["sign"] else 1
    if m["int"] is not None:
        return Fraction(sign * int(m["int"])), True
    if m["dec"] is not None:
        return sign * Fraction(m["dec"]), False
    num, den = (
        (m["n"], m["d"]) if m["n"] is not None else (m["fn"], m["fd"]) if m["fn"] else (m["sn"], m["sd"])
    )
    if int(den) == 0:
        return None
    return sign * Fraction(int(num), int(den)), True


def _math(value: Any, reference: str, equal: Callable[[str, str], bool]) -> None:
    """`math`: equal as text or as integers is decided here; anything else as math-verify (`equal`) says."""
    text = _as_text(value)
    final = _final(text)
    boxed = final is not text
    got, want = _normalise(final), _normalise(_final(reference))
    if got == want:
        return
    a, b = _rational(got), _rational(want)  # most answers are numbers: no sympy for them
    if a is not None and b is not None:
        if a[0] == b[0]:
            return
        if a[1] and b[1]:  # both exact (no decimal point): unequal for math-verify too
            raise _Fail(f"answer {_quote(got)} is not the reference {_quote(reference)}")
    if not equal(f"\\boxed{{{final}}}" if boxed else text[-_MATH_TAIL:], reference):
        raise _Fail(
            f"answer {_quote(final if boxed else got)} is not the reference {_quote(reference)} (math-verify)"
        )


def _json_field(value: Any, reference: str) -> None:
    try:
        want: Any = orjson.loads(reference)
    except orjson.JSONDecodeError:
        want = reference
    if _json_equal(value, want):
        return
    raise _Fail(f"field value {_quote(value)} is not the reference {_quote(reference)}")


def _json_equal(got: Any, want: Any) -> bool:
    if isinstance(got, bool) or isinstance(want, bool):
        return got is want
    if isinstance(got, int | float) and isinstance(want, int | float):
        return got == want
    if isinstance(got, str) and isinstance(want, str):
        return _normalise(got) == _normalise(want)
    if isinstance(got, str) and isinstance(want, int | float):  # "42" for 42: the number a model wrote
        return _number(got) == want and _normalise(got).lstrip("-").replace(".", "").isdigit()
    return bool(got == want)


# --------------------------------------------------------------------------- the manifest's counters

CHECK_KEYS = ("tries", "verified", "failed", "first_tries", "first_verified")
"""Verification's counters in the manifest, per template: every decided task, those that passed and
failed the check, and the first tries (sample 0) among them, for pass@1."""


def tally(counts: dict[str, Any]) -> dict[str, Any]:
    """A template's counters as the manifest records them, with pass@1 and tries per kept row."""
    n = {k: int(counts.get(k) or 0) for k in CHECK_KEYS}
    n["pass_at_1"] = round(n["first_verified"] / n["first_tries"], 4) if n["first_tries"] else None
    n["tries_per_kept_row"] = round(n["tries"] / n["verified"], 4) if n["verified"] else None
    return n


def merge_verification(
    base: dict[str, Any] | None, parts: list[dict[str, Any] | None]
) -> dict[str, Any] | None:
    """The `verification` of a cluster run's manifest: `base` (the check) with the partitions' counters
    summed per template."""
    if base is None:
        return None
    per: dict[str, dict[str, int]] = {}
    for part in parts:
        for name, counts in ((part or {}).get("per_template") or {}).items():
            into = per.setdefault(name, dict.fromkeys(CHECK_KEYS, 0))
            for k in CHECK_KEYS:
                into[k] += int(counts.get(k) or 0)
    return {**base, "per_template": {name: tally(c) for name, c in per.items()}}


# --------------------------------------------------------------------------- the simulator's answers


def sim_answers(expansion: Expansion, variable: str) -> dict[str, str]:
    """For the simulator (`[sim] answer_from`): the key of each input's first user message -> the value
    of its `variable`, so the simulated teacher can answer with it (and `wrong_share` of times not)."""
    from gen.sim.answers import prompt_key

    known = set(expansion.variables) | (set(expansion.seed.columns) if expansion.seed else set())
    if variable not in known:
        raise ConfigError(expansion.prompt.path, f"[sim] answer_from: unknown variable {variable!r}")
    table: dict[str, str] = {}
    for task in expansion.tasks():
        if task.sample or task.messages is None:
            continue
        variables = orjson.loads(task.vars_json)
        if variable in variables:  # a seed row without it has no reference: [verify] rejects that input
            table[prompt_key(task.messages)] = _as_text(variables[variable])
    return table


__all__ = [
    "CHECK_KEYS",
    "MATH_EXTRA",
    "VERIFICATION_FAILED",
    "Outcome",
    "Verifier",
    "merge_verification",
    "sim_answers",
    "tally",
]
