"""Sandboxed Jinja2 templates and the lazy expansion of a prompt file into tasks.

A task is one request to make: its id is stable across runs (hash of the prompt-file hash, the template,
the variables and the sample index), so a rerun or a resume recognises work already done.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jinja2
import jinja2.meta
import orjson
from jinja2.sandbox import SandboxedEnvironment

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


class Expansion:
    """Everything needed to stream a prompt file's tasks; checking happens in the constructor."""

    def __init__(self, prompt: PromptFile, schema: Schema | None, *, samples: int | None = None) -> None:
        self.prompt = prompt
        spec = prompt.spec
        self.samples = samples or spec.samples
        self.env = SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)
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
            self.templates.append((role, self.env.from_string(source)))

        self.template_sha256 = hashlib.sha256(
            canonical_json(
                {
                    "system": spec.messages.system,
                    "user": spec.messages.user,
                    "schema": schema.json_schema if schema else None,
                }
            ).encode()
        ).hexdigest()
        # Render the first input now, so a bad template fails before any request is sent.
        first = next(self._inputs(), None)
        if first is None:
            raise ConfigError(prompt.path, "expands to no tasks")
        try:
            self.render(first)
        except jinja2.TemplateError as e:
            raise ConfigError(prompt.path, f"rendering the first input failed: {e}") from None

    def _inputs(self) -> Iterator[dict[str, Any]]:
        # Lazy all the way: a cross product of ten million combinations is never built as a list.
        names = list(self.variables)
        lists = list(self.variables.values())
        rows: Iterator[dict[str, Any]] = self.seed.rows() if self.seed else iter([{}])
        for row in rows:
            for values in itertools.product(*lists):
                combo = dict(zip(names, values, strict=True))
                yield {**row, **combo} if row else combo

    def render(self, variables: dict[str, Any]) -> list[dict[str, str]]:
        return [{"role": role, "content": tpl.render(variables)} for role, tpl in self.templates]

    def count(self) -> int:
        """Total tasks; reads the whole seed table, so call it off the event loop."""
        combos = 1
        for values in self.variables.values():
            combos *= len(values)
        rows = self.seed.count() if self.seed else 1
        return rows * combos * self.samples

    def tasks(self, keep: Callable[[str], bool] | None = None) -> Iterator[Task]:
        """Stream every task, lazily, in a stable order.

        With `keep`, an input none of whose task ids it keeps is not rendered (its tasks come without
        messages): a partition of a cluster run, or a refresh of a subset, pays only for the ids.
        """
        name = self.prompt.spec.name
        sha = self.prompt.sha256
        fraction = self.prompt.spec.eval_fraction
        for variables in self._inputs():
            vars_json = canonical_json(variables)
            split = split_of(vars_json, fraction)
            if keep is not None:
                ids = [task_id(sha, name, vars_json, sample) for sample in range(self.samples)]
                if not any(map(keep, ids)):
                    for sample, tid in enumerate(ids):
                        yield Task(tid, vars_json, sample, split, None, None)
                    continue
            try:
                messages: list[dict[str, str]] | None = self.render(variables)
                error = None
            except jinja2.TemplateError as e:  # e.g. a JSONL row that lacks a column: reject, go on
                messages, error = None, f"{type(e).__name__}: {e}"
            for sample in range(self.samples):
                yield Task(task_id(sha, name, vars_json, sample), vars_json, sample, split, messages, error)
