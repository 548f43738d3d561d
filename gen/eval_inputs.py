"""Fresh inputs for `gen eval --inputs PROMPT_FILE`: inputs that were never in the dataset, for drift.

The prompt file must ask what the dataset's recipe asks (the same system and user templates, the same
schema); its inputs (variables, seed rows) are new. An input is refused when one of its task ids, or the
variables its templates read, are in the dataset (any shard: kept, rejected or removed as a duplicate),
so a "fresh" set cannot leak what the student may have trained on. The teacher answers the rest through
an ordinary run (licence review, limits, budget) into the evaluation's `teacher/` folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2.meta
import orjson

from gen.config import PromptFile, RunOptions, load_prompt_file
from gen.errors import ConfigError
from gen.ledger import id_key
from gen.schema import Schema, load_schema
from gen.shards import read_columns
from gen.templates import Expansion, canonical_json


@dataclass(slots=True)
class FreshInputs:
    prompt: PromptFile
    schema: Schema | None
    ids: frozenset[int]  # id keys of the tasks to ask
    refused: int  # tasks refused: their id or input variables are in the dataset


def check_fresh(
    path: Path, dataset: Path, manifest: dict[str, Any], recipe: PromptFile, limit: int | None
) -> FreshInputs:
    """Load `path`, check it asks what the dataset's recipe asks, and pick its tasks not in the dataset.
    ConfigError (one line naming what differs) otherwise; sends nothing."""
    prompt = load_prompt_file(path)
    spec = prompt.spec
    schema = load_schema(spec.schema_, base_dir=prompt.base_dir, where=prompt.path) if spec.schema_ else None
    was = (manifest.get("schema") or {}).get("sha256")
    if was != (schema.sha256 if schema else None):
        raise ConfigError(
            path,
            "its schema differs from the dataset's (sha256 in the manifest): fresh inputs must be asked for "
            "the same answer",
        )
    for role in ("system", "user"):
        if getattr(spec.messages, role) != getattr(recipe.spec.messages, role):
            raise ConfigError(
                path,
                f"its messages.{role} template differs from the dataset's ({recipe.path}): fresh inputs "
                "need the same template, only new variables or seed rows",
            )
    expansion = Expansion(prompt, schema, samples=int(manifest.get("samples") or spec.samples))
    if expansion.template_sha256 != manifest["template"]["sha256"]:
        raise ConfigError(path, "its template differs from the dataset's (template sha256 in the manifest)")
    used = _used_variables(expansion, spec.messages)
    seen_ids, seen_vars = _dataset_inputs(dataset, manifest, used)
    keep: list[int] = []
    refused = 0
    for task in expansion.tasks(keep=lambda _: False):  # ids and variables only: nothing is rendered
        if task.id in seen_ids or _shown(task.vars_json, used) in seen_vars:
            refused += 1
            continue
        if limit is None or len(keep) < limit:
            keep.append(id_key(task.id))
    if not keep:
        raise ConfigError(
            path, f"every one of its {refused:,} inputs is in the dataset: nothing fresh to ask"
        )
    return FreshInputs(prompt, schema, frozenset(keep), refused)


def _used_variables(expansion: Expansion, messages: Any) -> frozenset[str]:
    """The variables the (system and user) templates read: the rest (a seed column the template does not
    use) change no prompt, so two inputs that agree on these ask the very same thing."""
    used: set[str] = set()
    for source in (messages.system, messages.user):
        if source:
            used |= jinja2.meta.find_undeclared_variables(expansion.env.parse(source))
    return frozenset(used)


def _shown(vars_json: str, used: frozenset[str]) -> str:
    """An input as its prompt shows it: its variables the templates read, canonical."""
    variables = orjson.loads(vars_json)
    if not isinstance(variables, dict):
        return vars_json
    return canonical_json({k: v for k, v in variables.items() if k in used})


def _dataset_inputs(
    dataset: Path, manifest: dict[str, Any], used: frozenset[str]
) -> tuple[set[str], set[str]]:
    ids: set[str] = set()
    variables: set[str] = set()
    for shard in manifest["shards"]:
        cols = read_columns(dataset, shard["path"], ["id", "vars"])
        ids.update(cols["id"])
        variables.update(_shown(v, used) for v in cols["vars"] if v is not None)
    return ids, variables


def teacher_options(
    manifest: dict[str, Any],
    fresh: FreshInputs,
    output: Path,
    *,
    base_url: str | list[str] | None,
    api_key_env: str | None,
    run: dict[str, Any],
) -> RunOptions:
    """The run that asks the dataset's teacher the fresh inputs (the manifest's provider and model)."""
    teacher = manifest.get("teacher") or {}
    return RunOptions(
        provider=teacher.get("provider"),
        model=teacher.get("model"),
        license=teacher.get("license"),
        base_url=base_url,
        api_key_env=api_key_env,
        output=output,
        samples=int(manifest.get("samples") or 1),
        intended_use=manifest.get("intended_use"),
        only_ids=fresh.ids,
        lineage={"kind": "eval-inputs", "dataset_run_id": manifest.get("run_id")},
        **run,
    )
