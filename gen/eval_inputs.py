"""Fresh inputs for `gen eval --inputs PROMPT_FILE`: inputs that were never in the dataset, for drift.

The prompt file must ask what the dataset's recipe asks (the same system and user templates, the same
schema); its inputs (variables, seed rows) are new. An input is refused when one of its task ids, or its
input variables, are in the dataset (any shard: kept, rejected or removed as a duplicate), so a "fresh"
set cannot leak what the student may have trained on. The teacher answers the rest through an ordinary
run (licence review, limits, budget) into the evaluation's `teacher/` folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gen.config import PromptFile, RunOptions, load_prompt_file
from gen.errors import ConfigError
from gen.ledger import id_key
from gen.schema import Schema, load_schema
from gen.shards import read_columns
from gen.templates import Expansion


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
    seen_ids, seen_vars = _dataset_inputs(dataset, manifest)
    keep: list[int] = []
    refused = 0
    for task in expansion.tasks(keep=lambda _: False):  # ids and variables only: nothing is rendered
        if task.id in seen_ids or task.vars_json in seen_vars:
            refused += 1
            continue
        if limit is None or len(keep) < limit:
            keep.append(id_key(task.id))
    if not keep:
        raise ConfigError(
            path, f"every one of its {refused:,} inputs is in the dataset: nothing fresh to ask"
        )
    return FreshInputs(prompt, schema, frozenset(keep), refused)


def _dataset_inputs(dataset: Path, manifest: dict[str, Any]) -> tuple[set[str], set[str]]:
    ids: set[str] = set()
    variables: set[str] = set()
    for shard in manifest["shards"]:
        cols = read_columns(dataset, shard["path"], ["id", "vars"])
        ids.update(cols["id"])
        variables.update(v for v in cols["vars"] if v is not None)
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
