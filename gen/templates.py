"""Sandboxed Jinja2 templates and the lazy expansion of a prompt file into tasks.

A task is one request to make: its id is stable across runs (hash of the prompt-file hash, the template,
the variables and the sample index), so a rerun or a resume recognises work already done.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import wraps
from typing import Any, Protocol

import jinja2
import jinja2.meta
import orjson
from jinja2.sandbox import SandboxedEnvironment, SecurityError

from gen.config import PromptFile
from gen.errors import ConfigError
from gen.schema import Schema
from gen.seeds import SeedTable, read_lines


@dataclass(slots=True)
class Task:
    id: str
    vars_json: str
    sample: int
    split: str
    messages: list[dict[str, str]] | None  # None when rendering failed
    render_error: str | None = None


class TaskSource(Protocol):
    """What a run draws its tasks from: a prompt file's Expansion, or recorded rows (gen eval)."""

    samples: int
    template_sha256: str

    def tasks(self, keep: Callable[[str], bool] | None = None) -> Iterator[Task]: ...

    def count(self) -> int: ...


def canonical_json(value: Any) -> str:
    """Key-sorted compact JSON: the form that ids and hashes are computed over."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=str).decode()


def task_id(prompt_sha256: str, template: str, vars_json: str, sample: int) -> str:
    h = hashlib.sha256(f"{prompt_sha256}\x1f{template}\x1f{vars_json}\x1f{sample}".encode())
    return h.hexdigest()[:32]


def split_of(vars_json: str, eval_fraction: float) -> str:
    """Deterministic held-out split, by the input variables only: samples of one input never straddle."""
    bucket = int.from_bytes(hashlib.sha256(vars_json.encode()).digest()[:8], "big") / 2**64
    return "eval" if bucket < eval_fraction else "train"


# The most characters (or items) one template expression may build. jinja2's sandbox bounds range() at
# 100,000 items but not repetition or padding: `'x' * 10**10` or `'%10000000000d' % 1` would allocate
# gigabytes (jinja2 even folds a constant one while compiling). A prompt this long fits no context.
MAX_SIZE = 10_000_000
_MAX_POWER_BITS = 1_000_000  # `10 ** 10 ** 10` would compute for ever
_PADDING_METHODS = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs"})
_PRINTF_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _too_big(what: str, size: int) -> SecurityError:
    return SecurityError(f"{what} would build {size:,} characters; the sandbox allows {MAX_SIZE:,}")


def _check_ints(what: str, values: Any) -> None:
    for v in values:
        if isinstance(v, int) and v > MAX_SIZE:
            raise _too_big(what, v)


def _check_printf(fmt: str, args: Any) -> None:
    """`fmt % args` with a width or precision beyond MAX_SIZE: refuse it before Python pads."""
    star = False
    for m in _PRINTF_SPEC.finditer(fmt):
        for group in m.groups():
            if group == "*":
                star = True
            elif group is not None and int(group) > MAX_SIZE:
                raise _too_big("a % format width", int(group))
    if star:
        _check_ints("a % format width", args if isinstance(args, tuple) else (args,))


def _check_format(fmt: str, args: Any, kwargs: Any) -> None:
    """The same for str.format's specs (`{:>100000000}`), nested ones (`{:{w}}`) by their values."""
    for _, _, spec, _ in string.Formatter().parse(fmt):
        if not spec:
            continue
        for digits in re.findall(r"\d+", spec):
            if int(digits) > MAX_SIZE:
                raise _too_big("a format width", int(digits))
        if "{" in spec:
            _check_ints("a format width", [*args, *kwargs.values()])


class _Sandbox(SandboxedEnvironment):
    """jinja2's sandbox, with bounds on what one expression may allocate (see MAX_SIZE)."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in ("center", "indent"):
            self.filters[name] = self._bounded_filter(name, self.filters[name])
        fmt = self.filters["format"]

        @wraps(fmt)
        def format_filter(value: Any, *args: Any, **kw: Any) -> str:
            _check_printf(str(value), kw or args)
            return fmt(value, *args, **kw)

        self.filters["format"] = format_filter

    @staticmethod
    def _bounded_filter(name: str, f: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(f)
        def bounded(value: Any, *args: Any, **kw: Any) -> Any:
            _check_ints(f"the {name} filter", [*args, *kw.values()])
            return f(value, *args, **kw)

        return bounded

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, str | bytes | list | tuple) and isinstance(n, int):
                    if len(seq) * n > MAX_SIZE:
                        raise _too_big("'*' repetition", len(seq) * n)
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
                if right * (abs(left).bit_length() - 1) > _MAX_POWER_BITS:
                    raise SecurityError(f"'**' would compute a number of over {_MAX_POWER_BITS:,} bits")
        elif operator == "%" and isinstance(left, str):
            _check_printf(left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # jinja2 names them so
        if isinstance(getattr(__obj, "__self__", None), str) and __obj.__name__ in _PADDING_METHODS:
            _check_ints(f"str.{__obj.__name__}", [*args, *kwargs.values()])
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapper = super().wrap_str_format(value)
        if wrapper is None:
            return None
        fmt = value.__self__

        @wraps(wrapper)
        def checked(*args: Any, **kwargs: Any) -> str:
            mapping = args[0] if value.__name__ == "format_map" and args else kwargs
            _check_format(fmt, () if value.__name__ == "format_map" else args, mapping)
            return wrapper(*args, **kwargs)

        return checked


def _render_error(e: Exception) -> str:
    return f"{type(e).__name__}: {e}"


class Expansion:
    """Everything needed to stream a prompt file's tasks; checking happens in the constructor."""

    def __init__(self, prompt: PromptFile, schema: Schema | None, *, samples: int | None = None) -> None:
        self.prompt = prompt
        spec = prompt.spec
        self.samples = samples or spec.samples
        self.env = _Sandbox(undefined=jinja2.StrictUndefined, autoescape=False)
        self.variables: dict[str, list[Any]] = {}
        for name, source in spec.variables.items():
            if isinstance(source, list):
                self.variables[name] = source
            else:
                self.variables[name] = read_lines(prompt.resolve(source.file), where=prompt.path, name=name)
        self.seed = SeedTable(prompt.resolve(spec.seed.path), where=prompt.path) if spec.seed else None
        available = set(self.variables)
        if self.seed is not None:
            clash = available & set(self.seed.columns)
            if clash:
                raise ConfigError(
                    prompt.path, f"variable {sorted(clash)[0]!r} is both in [variables] and a seed column"
                )
            available |= set(self.seed.columns)

        self.templates: list[tuple[str, jinja2.Template]] = []
        sources = [("system", spec.messages.system), ("user", spec.messages.user)]
        for role, source in sources:
            if source is None:
                continue
            try:
                ast = self.env.parse(source)
                # compiling finds what parsing does not (an unknown filter or test: TemplateAssertionError)
                template = self.env.from_string(source)
            except jinja2.TemplateSyntaxError as e:
                raise ConfigError(
                    prompt.path, f"messages.{role}: template syntax error on line {e.lineno}: {e.message}"
                ) from None
            missing = sorted(jinja2.meta.find_undeclared_variables(ast) - available - set(self.env.globals))
            if missing:
                known = ", ".join(sorted(available)) or "none"
                raise ConfigError(
                    prompt.path, f"messages.{role}: unknown variable {missing[0]!r} (defined: {known})"
                )
            self.templates.append((role, template))

        self.template_sha256 = hashlib.sha256(
            canonical_json(
                {
                    "system": spec.messages.system,
                    "user": spec.messages.user,
                    "schema": schema.json_schema if schema else None,
                }
            ).encode()
        ).hexdigest()
        # Every seed row is read once now (one streaming pass), so a bad line is found before any
        # request is sent, not after thousands of paid ones.
        if self.seed is not None:
            self.seed.validate()
        # Render the first input now, so a bad template fails before any request is sent. Any exception:
        # a template that cannot render its first input (1/0, a bad format, a sandbox bound) is bad input.
        first = next(self._inputs(), None)
        if first is None:
            raise ConfigError(prompt.path, "expands to no tasks")
        try:
            self.render(first)
        except Exception as e:
            raise ConfigError(prompt.path, f"rendering the first input failed: {_render_error(e)}") from None

    def _inputs(self, skip: int = 0) -> Iterator[dict[str, Any]]:
        """Every input from the `skip`-th on: the skipped ones cost a step of itertools (seed rows are
        still read), not a dict each."""
        # Lazy all the way: a cross product of ten million combinations is never built as a list.
        names = list(self.variables)
        lists = list(self.variables.values())
        rows: Iterator[dict[str, Any]] = self.seed.rows() if self.seed else iter([{}])
        per_row = 1
        for values in lists:
            per_row *= len(values)
        if skip and per_row:
            rows = itertools.islice(rows, skip // per_row, None)
        first = skip % per_row if per_row else 0
        for row in rows:
            combos: Iterator[tuple[Any, ...]] = itertools.product(*lists)
            if first:
                combos, first = itertools.islice(combos, first, None), 0
            for values in combos:
                combo = dict(zip(names, values, strict=True))
                yield {**row, **combo} if row else combo

    def inputs(self) -> Iterator[dict[str, Any]]:
        """Every input (its variables), lazily, in task order; each gives `samples` tasks."""
        return self._inputs()

    def inputs_with_splits(self) -> Iterator[tuple[str, str]]:
        """(vars JSON, split) of every input, in task order, rendering nothing."""
        fraction = self.prompt.spec.eval_fraction
        for variables in self._inputs():
            vars_json = canonical_json(variables)
            yield vars_json, split_of(vars_json, fraction)

    def render(self, variables: dict[str, Any]) -> list[dict[str, str]]:
        return [{"role": role, "content": tpl.render(variables)} for role, tpl in self.templates]

    def count(self) -> int:
        """Total tasks; reads the whole seed table, so call it off the event loop."""
        combos = 1
        for values in self.variables.values():
            combos *= len(values)
        rows = self.seed.count() if self.seed else 1
        return rows * combos * self.samples

    def tasks(self, keep: Callable[[str], bool] | None = None, start: int = 0) -> Iterator[Task]:
        """Stream every task, lazily, in a stable order; from position `start` on (gen.decided: a resume
        past the tasks an output decided).

        With `keep`, an input none of whose task ids it keeps is not rendered (its tasks come without
        messages): a partition of a cluster run, or a refresh of a subset, pays only for the ids.
        """
        skip, first = divmod(start, self.samples)
        # task_id and split_of, inlined (the same expressions): a resume walks every done input, ~1 us each.
        head = f"{self.prompt.sha256}\x1f{self.prompt.spec.name}\x1f"
        fraction = self.prompt.spec.eval_fraction
        samples = range(self.samples)
        sha256, dumps, from_bytes = hashlib.sha256, orjson.dumps, int.from_bytes
        options = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS
        for variables in self._inputs(skip):
            vars_bytes = dumps(variables, option=options, default=str)  # canonical_json, as bytes
            vars_json = vars_bytes.decode()
            split = (
                "eval" if from_bytes(sha256(vars_bytes).digest()[:8], "big") / 2**64 < fraction else "train"
            )
            ids = [sha256(f"{head}{vars_json}\x1f{sample}".encode()).hexdigest()[:32] for sample in samples]
            lo = 0
            if first:  # the input `start` falls in: its samples before `first` are decided
                lo, first = first, 0
            if keep is not None and not any(map(keep, ids[lo:] if lo else ids)):
                for sample, tid in enumerate(ids):
                    if sample >= lo:
                        yield Task(tid, vars_json, sample, split, None, None)
                continue
            try:
                messages: list[dict[str, str]] | None = self.render(variables)
                error = None
            except Exception as e:  # a row that lacks a column, 1/0, a bad format...: reject, go on
                messages, error = None, _render_error(e)
            for sample, tid in enumerate(ids):
                if sample >= lo:
                    yield Task(tid, vars_json, sample, split, messages, error)
