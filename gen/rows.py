"""The row contract, in one place: the columns of `data/`, `rejects/` and `duplicates/` rows.

Each record (`Row`, `Reject`, `Duplicate`) is a TypedDict whose fields are annotated with a `Col`: its
Arrow type (by name), whether gen may leave it null, and the line the README's column table shows. From
these come the Arrow schemas gen.shards writes (and checks rows against), the provenance columns
gen.audit requires, and the README's table (tests/test_rows.py renders it and compares).

Rows stay plain dicts at run time (a TypedDict is a dict: no construction cost on the hot path); the
types are for the reader and the type checker. This module imports nothing heavy: Arrow types are named
here and only gen.shards, the one pyarrow importer, turns them into pyarrow types, so a run does not
pay for pyarrow before its first rows are converted.

Adding, removing or retyping a column is a new row schema: bump `ROW_SCHEMA_VERSION`. It is recorded in
the manifest and is part of the recipe fingerprint, so an output written with another version is not
resumed into (mixed schemas in one dataset); `--new-version` starts a new version beside it.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Final, NotRequired, TypedDict, get_type_hints

ROW_SCHEMA_VERSION: Final = 2
"""The version of the columns below. A manifest without `row_schema_version` was written with 1.
Version 2 added `cached_tokens` (prompt caching); `reasoning`, `reasoning_tokens` and `logprobs` in data
rows, `reasoning_content` in every message struct; in rejects, `reasoning` and `reference` (answer
verification)."""

# Arrow type names gen.shards knows (see shards._arrow_type).
STRING, INT32, INT64, TIMESTAMP, MESSAGES = "string", "int32", "int64", "timestamp_ms_utc", "messages"
LOGPROBS = "logprobs"  # list<struct<token: string, logprob: float, top: list<struct<token, logprob>>>>

SAME = ""
"""A column's `doc` when the README describes it together with the column before it (one table row)."""


@dataclass(frozen=True, slots=True)
class Col:
    """One column: its Arrow type by name; `nullable=False` when gen never writes null there (checked by
    shards.row_problem; the Parquet fields stay nullable, as they always were); `provenance` when audit
    requires a value in every data row; `doc`, the README's line for it."""

    type: str
    doc: str = SAME
    nullable: bool = True
    provenance: bool = False


@dataclass(frozen=True, slots=True)
class Column:
    """A column as the schemas, checks and docs use it (generated from a record's annotations)."""

    name: str
    type: str
    nullable: bool
    provenance: bool
    doc: str


class Message(TypedDict):
    role: str
    content: str
    reasoning_content: NotRequired[str | None]  # the trace, with reasoning_format = "field"


class Alternative(TypedDict):
    token: str
    logprob: float


class TokenLogprob(TypedDict):
    token: str
    logprob: float
    top: list[Alternative]


Timestamp = int | datetime  # epoch milliseconds (the run) or an aware datetime (the merge pass)


class Row(TypedDict):
    """A row of `data/` (the train and eval splits)."""

    id: Annotated[
        str,
        Col(
            STRING,
            "sha256 of (prompt-file hash, template name, variables, sample index): the same input gets "
            "the same id in every run",
            nullable=False,
            provenance=True,
        ),
    ]
    messages: Annotated[
        list[Message],
        Col(
            MESSAGES,
            "`[{role, content, reasoning_content}]`: the rendered system and user messages, then the "
            "assistant's answer (the validated JSON, compact), with its trace as `reasoning_format` says",
        ),
    ]
    response: Annotated[
        str, Col(STRING, "the teacher's raw text (an inline `<think>` trace taken out)", nullable=False)
    ]
    output: Annotated[str | None, Col(STRING, "the validated JSON (a JSON string; null without a schema)")]
    reasoning: Annotated[str | None, Col(STRING, "the teacher's reasoning trace; null when it gave none")]
    reasoning_tokens: Annotated[
        int | None,
        Col(
            INT64,
            "the teacher's reasoning tokens, as it reported them (null where it does not), also without a "
            "trace (OpenAI's o-series reason unseen)",
        ),
    ]
    logprobs: Annotated[
        list[TokenLogprob] | None,
        Col(
            LOGPROBS,
            "`[{token, logprob, top: [{token, logprob}]}]`: the answer's tokens with the top-K "
            "alternatives, with `logprobs = K` in `[sampling]`; null otherwise",
        ),
    ]
    vars: Annotated[str, Col(STRING, "the input variables (JSON)", provenance=True)]
    sample: Annotated[int, Col(INT32, "sample index within the input")]
    split: Annotated[str, Col(STRING, "`train` or `eval`")]
    template: Annotated[
        str,
        Col(STRING, "the prompt file's name and version; hash of the templates and schema", provenance=True),
    ]
    template_version: Annotated[str, Col(STRING, provenance=True)]
    template_sha256: Annotated[str, Col(STRING, provenance=True)]
    prompt_sha256: Annotated[str, Col(STRING, "hash of the prompt file's bytes", provenance=True)]
    teacher_provider: Annotated[str, Col(STRING, "who wrote the row and under which terms", provenance=True)]
    teacher_model: Annotated[str, Col(STRING, provenance=True)]
    teacher_license: Annotated[str, Col(STRING, provenance=True)]
    sampling: Annotated[str, Col(STRING, "the sampling parameters (JSON)", provenance=True)]
    prompt_tokens: Annotated[int, Col(INT64, "usage the teacher reported, summed over re-asks")]
    completion_tokens: Annotated[int, Col(INT64)]
    cached_tokens: Annotated[
        int,
        Col(
            INT64,
            "of `prompt_tokens`, those the teacher read from its prompt cache (OpenAI's and vLLM's "
            "`cached_tokens`, Anthropic's `cache_read_input_tokens`), summed over re-asks",
        ),
    ]
    finish_reason: Annotated[str | None, Col(STRING, "as the teacher reported it")]
    attempts: Annotated[int, Col(INT32, "asks it took (1 = valid at once)")]
    created_at: Annotated[Timestamp, Col(TIMESTAMP, "UTC timestamp", provenance=True)]
    run_id: Annotated[str, Col(STRING, "the run and the gen version", provenance=True)]
    generator_version: Annotated[str, Col(STRING, provenance=True)]


class Reject(TypedDict):
    """A row of `rejects/`: a task that gave no row, and why."""

    id: Annotated[str, Col(STRING, "the task's id (as a row's)", nullable=False)]
    reason: Annotated[
        str, Col(STRING, "why: `invalid_json`, `teacher_error`, `truncated`, ...", nullable=False)
    ]
    error: Annotated[str, Col(STRING, "the validator's or the teacher's message")]
    response: Annotated[str | None, Col(STRING, "the last reply, if any")]
    reasoning: Annotated[str | None, Col(STRING, "the last reply's reasoning trace, if any")]
    reference: Annotated[
        str | None, Col(STRING, "what a `verification_failed` answer was checked against ([verify])")
    ]
    vars: Annotated[str, Col(STRING, "the input variables (JSON)")]
    sample: Annotated[int, Col(INT32, "sample index within the input")]
    template: Annotated[str, Col(STRING, "the prompt file's name")]
    teacher_model: Annotated[str, Col(STRING, "the model asked")]
    attempts: Annotated[int, Col(INT32, "asks made")]
    created_at: Annotated[Timestamp, Col(TIMESTAMP, "UTC timestamp")]
    run_id: Annotated[str, Col(STRING, "the run")]


class Duplicate(TypedDict):
    """A row of `duplicates/`: a row removed as a duplicate, kept so nothing disappears without a trace."""

    id: Annotated[str, Col(STRING, "the removed row's id")]
    duplicate_of: Annotated[
        str,
        Col(
            STRING,
            "the first 16 hex digits of the id of the row it duplicates; for `contaminated`, the match: "
            "`FILE#ROW: N-GRAM` or `eval ID: N-GRAM`",
        ),
    ]
    kind: Annotated[str, Col(STRING, "`exact`, `near` or `contaminated`")]
    output: Annotated[str | None, Col(STRING, "its output (its response without a schema)")]
    vars: Annotated[str, Col(STRING, "the input variables (JSON)")]
    created_at: Annotated[Timestamp, Col(TIMESTAMP, "UTC timestamp")]
    run_id: Annotated[str, Col(STRING, "the run")]


def columns_of(record: type) -> tuple[Column, ...]:
    """The columns of a record, in order, from its annotations."""
    out = []
    for name, hint in get_type_hints(record, include_extras=True).items():
        (col,) = (m for m in hint.__metadata__ if isinstance(m, Col))
        out.append(Column(name, col.type, col.nullable, col.provenance, col.doc))
    return tuple(out)


RECORDS: Final[dict[str, type]] = {"train": Row, "eval": Row, "rejects": Reject, "duplicates": Duplicate}
"""split (the folder's kind) -> the record its shards hold."""

COLUMNS: Final[dict[str, tuple[Column, ...]]] = {split: columns_of(r) for split, r in RECORDS.items()}
"""split -> its columns, in the order the shards store them."""

PROVENANCE: Final = tuple(c.name for c in COLUMNS["train"] if c.provenance)
"""Columns audit requires a value in, in every data row."""


def reject_row(
    *,
    id: str,
    reason: str,
    error: str,
    response: str | None,
    vars: str,
    sample: int,
    template: str,
    teacher_model: str,
    attempts: int,
    created_at: Timestamp,
    run_id: str,
    reasoning: str | None = None,
    reference: str | None = None,
) -> Reject:
    """A task that gave no row (the run's rejects); `reference`: what a failed answer was checked against."""
    return {
        "id": id,
        "reason": reason,
        "error": error,
        "response": response,
        "reasoning": reasoning,
        "reference": reference,
        "vars": vars,
        "sample": sample,
        "template": template,
        "teacher_model": teacher_model,
        "attempts": attempts,
        "created_at": created_at,
        "run_id": run_id,
    }


def duplicate_row(
    row: dict[str, Any], kept: str, kind: str, *, created_at: Timestamp, run_id: str
) -> Duplicate:
    """The trace of `row` (a data row, or its `id`, `output`, `response` and `vars`) removed as a
    duplicate of the row whose id starts with `kept`; `kind` is "exact" or "near"."""
    return {
        "id": row["id"],
        "duplicate_of": kept,
        "kind": kind,
        "output": row["output"] if row["output"] is not None else row["response"],
        "vars": row["vars"],
        "created_at": created_at,
        "run_id": run_id,
    }


def markdown_table(split: str = "train") -> str:
    """The README's column table of a split: one line per column, or per run of columns described together."""
    lines = ["| column | meaning |", "| --- | --- |"]
    groups: list[tuple[list[str], str]] = []
    for c in COLUMNS[split]:
        if c.doc == SAME and groups:
            groups[-1][0].append(c.name)
        else:
            groups.append(([c.name], c.doc))
    lines += [f"| {', '.join(f'`{n}`' for n in names)} | {doc} |" for names, doc in groups]
    return "\n".join(lines)


def column_list(split: str) -> str:
    """A split's column names as the README lists them inline: "`id`, `reason`, ..."."""
    return ", ".join(f"`{c.name}`" for c in COLUMNS[split])


__all__ = [
    "COLUMNS",
    "PROVENANCE",
    "RECORDS",
    "ROW_SCHEMA_VERSION",
    "Col",
    "Column",
    "Duplicate",
    "Reject",
    "Row",
    "column_list",
    "columns_of",
    "duplicate_row",
    "markdown_table",
    "reject_row",
]
