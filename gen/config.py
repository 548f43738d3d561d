"""Prompt files (`prompts/*.toml`) and run options: loading, validation, path resolution.

A prompt file is validated with pydantic and forbids unknown keys, so a typo is an error naming the
file, not a silent default. Relative paths inside it resolve against the prompt file's directory.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gen.errors import ConfigError
from gen.reasoning import REASONING_FORMATS, ReasoningFormat
from gen.teachers import providers


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TeacherSpec(_Strict):
    """The prompt file's default teacher; every field can be overridden on the command line."""

    provider: str | None = None
    model: str | None = None
    base_url: str | list[str] | None = None  # several: one replica each, balanced
    license: str | None = None
    api_key_env: str | None = None
    max_concurrency: int | None = Field(default=None, ge=1)


class VLLMSpec(_Strict):
    """How gen launches `vllm serve` for provider "vllm" (see gen.launchers.vllm.VLLMSettings)."""

    replicas: int = Field(default=1, ge=1)  # one server per group of tensor_parallel_size GPUs
    tensor_parallel_size: int = Field(default=1, ge=1)
    data_parallel_size: int = Field(default=1, ge=1)
    max_model_len: int | None = Field(default=None, ge=1)
    gpu_memory_utilization: float | None = Field(default=None, gt=0.0, le=1.0)
    dtype: str | None = None
    max_num_seqs: int | None = Field(default=None, ge=1)
    extra_args: list[str] = Field(default_factory=list)
    startup_timeout_s: float = Field(default=900.0, gt=0)


class Messages(_Strict):
    system: str | None = None
    user: str


class FileVariable(_Strict):
    file: str


class SeedSpec(_Strict):
    path: str
    license: str | None = None


class DedupSpec(_Strict):
    """Duplicate removal: what is compared (`on`, see gen.dedup), and near-duplicate removal (exact
    duplicates are always removed)."""

    # "example": input turns + answer; "output": the answer alone; "input": the input turns alone.
    on: Literal["example", "output", "input"] = "example"
    near: bool = True
    threshold: float = Field(default=0.85, gt=0.0, le=1.0)  # Jaccard of word 3-grams
    field: str | None = None  # the answer's part of the near text: one top-level field, not all its text
    # Whether a reasoning trace is part of what is compared (gen.reasoning: a bounded sample of it for
    # the near check, a hash of it for the exact one); false compares the answers alone.
    reasoning: bool = True
    # The chain, in order (gen.dedup.resolve_steps): built-in names ("exact", "near") or a method of the
    # user's own as "module:Class" or "file.py:Class" (beside the prompt file). None: exact, then near.
    steps: list[str] | None = None


class DecontaminateFile(_Strict):
    """One file (or glob) to decontaminate against, with the text columns it is compared by."""

    path: str
    columns: list[str] | None = Field(default=None, min_length=1)


class DecontaminateSpec(_Strict):
    """`[decontaminate]`: remove train rows that share a word n-gram with eval sets or benchmark files
    (gen.decontaminate)."""

    # Paths or globs (relative to the prompt file), or {path, columns} tables for per-file columns.
    against: list[str | DecontaminateFile] = Field(default_factory=list)
    columns: list[str] | None = Field(default=None, min_length=1)  # default for every file: all strings
    ngram: int = Field(default=13, ge=1, le=1000)
    splits: bool = False  # also remove train rows sharing an n-gram with the dataset's own eval rows


class VerifySpec(_Strict):
    """`[verify]`: check each answer against a reference, keep what passes (gen.verify), and with
    `max_samples` sample an input again until `samples` answers pass."""

    reference: str  # a template over the input variables, e.g. "{{ answer }}"
    method: Literal["exact", "numeric", "math", "json-field", "python"] | None = None
    python: str | None = (
        None  # "verify.py:check", relative to the prompt file: (output, reference, row) -> bool
    )
    field: str | None = None  # the answer's field in the validated output (dotted); None: the answer text
    # `numeric`: the largest absolute difference that passes. strict: `true` read as 1.0 passed any answer
    # within 1 of the reference
    tolerance: float = Field(default=1e-6, ge=0.0, strict=True)
    # rejection sampling: tries per input at most. strict: `true` read as 1 turned it off unsaid, "3" as 3
    max_samples: int | None = Field(default=None, ge=1, strict=True)
    # `python`: seconds one call may take; then the answer fails. At most a day: a pipe's wait cannot take
    # inf or 1e300 (OverflowError on every call: each answer paid for, then rejected).
    timeout_s: float = Field(default=5.0, gt=0, le=86_400, strict=True)  # not `true` (1 s) nor "5"


class _KnownSampling(BaseModel):
    """The [sampling] keys every teacher API (OpenAI-compatible, vLLM, Anthropic) knows, with the types and
    ranges they take. A value outside them is refused by the teacher with a 400 on every request, so it is
    refused here, before any. Other keys (a server's own) pass through unchecked; `logprobs` and
    `thinking_budget` are checked with the teacher (gen.prepare.reasoning_settings)."""

    # strict: a float takes a TOML integer or float, never a bool or a string; finite: orjson sends inf
    # as null, which a teacher reads as its default (silently not applied)
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)
    temperature: Annotated[float, Field(ge=0)] | None = None  # OpenAI takes up to 2, vLLM more
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=-1)] | None = None  # vLLM: -1 (or 0) for all tokens
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    n: Annotated[int, Field(ge=1)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0)] | None = None
    stop: str | list[str] | None = None


class PromptSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    version: str
    description: str | None = None
    samples: int = Field(default=1, ge=1, strict=True)  # not `true` (read as 1) nor "3"
    schema_: str | None = Field(default=None, alias="schema")
    strict: bool = True
    eval_fraction: float = Field(default=0.05, ge=0.0, lt=1.0)
    intended_use: str | None = None  # research | internal | commercial-model | competing-model
    max_attempts: int = Field(default=3, ge=1, strict=True)  # not `true` (1: no retry) nor "3"
    keep_truncated: bool = False  # keep answers cut off at max_tokens as rows (default: reject `truncated`)
    # How a reasoning trace enters the assistant message of `messages` (gen.reasoning.REASONING_FORMATS).
    reasoning_format: ReasoningFormat = "field"
    teacher: TeacherSpec = TeacherSpec()
    sampling: dict[str, Any] = Field(default_factory=dict)
    messages: Messages
    variables: dict[str, list[Any] | FileVariable] = Field(default_factory=dict)
    seed: SeedSpec | None = None
    sim: dict[str, Any] = Field(default_factory=dict)  # gen.sim.SimConfig fields, checked there
    vllm: VLLMSpec = VLLMSpec()
    dedup: DedupSpec = DedupSpec()
    decontaminate: DecontaminateSpec = DecontaminateSpec()
    verify: VerifySpec | None = None

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int | float) else v

    @field_validator("sampling", mode="after")
    @classmethod
    def _known_sampling_types(cls, v: dict[str, Any]) -> dict[str, Any]:
        # Checked, not converted: the dict stays as written (an integer temperature stays an integer): it
        # is sent as it is and recorded in every row's `sampling` and in the run's fingerprint.
        try:
            _KnownSampling.model_validate(v)
        except ValidationError as e:
            errors = e.errors()
            key = errors[0]["loc"][0]
            if key == "stop":  # a union: its branches' messages say "a valid string" for [1]
                raise ValueError(
                    f"sampling.stop = {v[key]!r}: should be a string or a list of strings"
                ) from None
            raise ValueError(
                f"sampling.{key} = {v[key]!r}: {errors[0]['msg'].removeprefix('Input ')}"
            ) from None
        return v

    @field_validator("variables")
    @classmethod
    def _non_empty_lists(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name, values in v.items():
            if isinstance(values, list) and not values:
                raise ValueError(f"variable {name!r} has an empty list")
        return v


@dataclass(frozen=True, slots=True)
class PromptFile:
    """A loaded prompt file: the validated spec, where it lives, and the hash of its bytes."""

    path: Path
    spec: PromptSpec
    sha256: str

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def resolve(self, relative: str) -> Path:
        p = Path(relative).expanduser()
        return p if p.is_absolute() else self.base_dir / p


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(x) for x in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"unknown key {loc!r}"
    if first["type"] == "missing":
        return f"missing key {loc!r}"
    if first["type"] == "value_error":  # a validator's own message, which names what it checked
        return str(first["ctx"]["error"])
    return f"{loc}: {first['msg']}"


def parse_toml(raw: bytes, where: str | Path) -> dict[str, Any]:
    """A TOML document's data; ConfigError naming the file when it is not UTF-8 or not TOML."""
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(where, "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(where, f"invalid TOML: {e}") from None


# The tables whose keys are open ([sampling] goes into each request, [sim] to the simulator), where a
# top-level key written below the table's header (TOML puts it there) would pass unnoticed.
_OPEN_TABLES = ("sampling", "sim")
_TABLES = frozenset("teacher sampling messages variables seed sim vllm dedup decontaminate verify".split())


def _refuse_misplaced_keys(data: dict[str, Any], where: Path) -> None:
    top = {f.alias or n for n, f in PromptSpec.model_fields.items()} - _TABLES
    for table in _OPEN_TABLES:
        body = data.get(table)
        for key in body if isinstance(body, dict) else ():
            if key in top and not _a_server_s_own(table, key, body[key]):
                raise ConfigError(
                    where,
                    f"[{table}] {key}: a top-level key of the prompt file, not one of [{table}]'s (TOML puts "
                    "a key written below a [table] header in that table): move it above the first table",
                )


def _a_server_s_own(table: str, key: str, value: Any) -> bool:
    """Whether [sampling]'s `key` is a request parameter some teacher takes, with a value gen's own key
    of that name does not: Groq's `reasoning_format` ("parsed", "hidden", "raw") and llama.cpp
    server's ("deepseek", "none", "auto") are not gen's ("field", "think-tags", "drop")."""
    if table != "sampling" or key != "reasoning_format":
        return False
    return value not in REASONING_FORMATS


def load_prompt_file(path: str | Path) -> PromptFile:
    """Read and validate a prompt file. Raises ConfigError naming the file and the first problem."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(p, "no such prompt file") from None
    except OSError as e:
        raise ConfigError(p, f"cannot read: {e.strerror}") from None
    data = parse_toml(raw, p)
    _refuse_misplaced_keys(data, p)
    try:
        spec = PromptSpec.model_validate(data)
    except ValidationError as e:
        raise ConfigError(p, _describe(e)) from None
    return PromptFile(path=p, spec=spec, sha256=hashlib.sha256(raw).hexdigest())


@dataclass(kw_only=True, slots=True)
class RunOptions:
    """What `gen run` is asked to do. None means: take the prompt file's value, then the default."""

    provider: str | None = None
    base_url: str | list[str] | None = None
    model: str | None = None
    license: str | None = None
    api_key_env: str | None = None
    max_concurrency: int | None = None
    samples: int | None = None
    limit: int | None = None
    output: Path | None = None
    shard_rows: int = 50_000
    max_retries: int = 6
    no_model_check: bool = False  # do not require the model in the teacher's /models listing
    max_pause_s: float = 60.0  # the longest any 429 Retry-After or rate-limit reset may hold a request
    request_timeout_s: float | None = None  # None: DEFAULT_REQUEST_TIMEOUT_S, longer for long answers
    connect_timeout_s: float = 10.0
    max_reply_bytes: int | None = None  # a reply's size cap; None: derived from each request's max_tokens
    reasoning_format: str | None = None  # overrides the prompt file's reasoning_format
    thinking_budget: int | None = None  # overrides [sampling] thinking_budget (Anthropic extended thinking)
    progress: bool = True
    rpm: float | None = None
    tpm: float | None = None
    max_usd: float | None = None
    max_tokens: int | None = None
    price_in: float | None = None  # USD per million prompt tokens, overrides the shipped table
    price_out: float | None = None
    # Tasks reordered at a time so those sharing a prompt prefix leave together (gen.prefix; 1: none).
    dispatch_window: int = 1024
    # A cacheable prefix group's first request goes alone, the rest when it is answered (gen.prefix).
    prefix_gate: bool = True
    price_cached_in: float | None = None  # USD per million prompt tokens read from the provider's cache
    price_cache_write: float | None = None  # USD per million prompt tokens written to it
    grace_s: float = 30.0  # on Ctrl-C / SIGTERM, how long in-flight requests may finish
    new_version: bool = False
    intended_use: str | None = None
    acknowledge_licence: bool = False  # go ahead despite a licence conflict; recorded in the manifest
    licences: Path | None = None  # a user licence registry, consulted before the shipped one
    only_ids: frozenset[int] | None = None  # id keys to produce, no others (refresh: the same inputs)
    lineage: dict[str, Any] | None = None  # the dataset this run is a new version of
    vllm: dict[str, Any] = field(default_factory=dict)  # overrides of the prompt file's [vllm] table
    no_near_dedup: bool = False
    dedup: bool = True  # False: keep every answer (gen eval: no answer is a duplicate)
    near_threshold: float | None = None
    dedup_against: list[Path] = field(default_factory=list)  # other outputs whose rows count as kept
    # Files or globs (relative to the working directory) to decontaminate against, besides the prompt
    # file's [decontaminate] against; compared by its `columns`.
    decontaminate_against: list[str] = field(default_factory=list)
    # The dedup key of a new output instead of the prompt file's [dedup] on (the cluster driver sets it
    # for its partitions). An output being resumed always keeps the key it was begun with.
    dedup_on: str | None = None
    # Cluster runs (gen.cluster): `executor="ray"` splits the task space into `partitions` by id hash.
    executor: str = "local"  # "local" (this process) or "ray"
    partitions: int | None = None  # ray: how many (default: the output's earlier count, else one per URL)
    ray_address: str | None = None  # ray: "auto", "ray://host:10001", or None to start a local Ray
    merge: str = "driver"  # ray: the merge pass on the driver, or "scaleout": in Ray tasks (merge_scaleout)
    # (index, count): produce only tasks with int(id[:8], 16) % count == index, as partition `index` of a
    # cluster run: its own shards (data/train-p003-00000.parquet), journal and partitions/p003.json.
    partition: tuple[int, int] | None = None
    # Batch mode (gen.batching): the provider's batch API at its batch price; --cancel cancels the batches
    # submitted; failed or expired requests are sent again in a later batch or online; requests per
    # batch at most (and the provider's limit); the first wait between polls, in seconds.
    batch: bool = False
    batch_cancel: bool = False
    batch_fallback: str = "batch"
    batch_size: int | None = None
    batch_poll_s: float = 10.0


@dataclass(frozen=True, slots=True)
class Teacher:
    """The teacher a run resolved to, after flags override the prompt file."""

    provider: str
    model: str
    base_urls: tuple[str, ...]  # empty: gen starts the server itself (sim, vllm)
    license: str | None  # as given; the licence review settles the id that is recorded
    api_key_env: str | None
    max_concurrency: int


DEFAULT_MAX_CONCURRENCY = 64
DEFAULT_REQUEST_TIMEOUT_S = 600.0
# The slowest fill a request's deadline allows for when it grows with max_tokens: a reasoning model
# writing 30,000 tokens on a busy server (20 tokens/s per sequence) gets 25 minutes, not 10.
SLOWEST_TOKENS_PER_S = 20.0


def request_timeout(given: float | None, sampling: dict[str, Any]) -> float:
    """A request's deadline: `given` (--request-timeout), else DEFAULT_REQUEST_TIMEOUT_S or, when the
    sampling asks for more (max_tokens, a thinking budget), that many tokens at SLOWEST_TOKENS_PER_S."""
    if given is not None:
        return given
    tokens = 0
    for key in ("max_tokens", "max_completion_tokens", "thinking_budget"):
        value = sampling.get(key)
        if type(value) is int and value > 0:
            tokens = max(tokens, value)
    return max(DEFAULT_REQUEST_TIMEOUT_S, tokens / SLOWEST_TOKENS_PER_S)


def _check_base_url(url: str, where: str) -> None:
    """An http:// or https:// URL with a host, or a ConfigError naming the flag or the prompt file."""
    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 (raises ValueError for a port out of range or not a number)
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(
            where, f"{url!r} is not a URL gen can use: give http://HOST:PORT/... or https://HOST/..."
        )


def resolve_teacher(prompt: PromptFile, opts: RunOptions) -> Teacher:
    """Merge flags over the prompt file's teacher, and check the result is usable."""
    t = prompt.spec.teacher
    provider = opts.provider or t.provider or "sim"
    spec = providers.get(provider, where=prompt.path)
    if spec.mode != "request":
        raise ConfigError(
            prompt.path, f"provider {provider!r} is a {spec.mode} provider, which gen cannot run yet"
        )
    model = opts.model or t.model or spec.default_model
    if not model:
        raise ConfigError(prompt.path, "no teacher model: set [teacher] model or pass --model")
    given = opts.base_url or t.base_url or []
    base_urls = tuple(u.rstrip("/") for u in ([given] if isinstance(given, str) else given))
    for url in base_urls:
        _check_base_url(url, "--base-url" if opts.base_url else f"{prompt.path}: [teacher] base_url")
    if not base_urls and spec.default_base_url:
        base_urls = (spec.default_base_url,)
    if not base_urls and spec.launcher is None:
        raise ConfigError(
            prompt.path, f"provider {provider!r} needs a base URL: set [teacher] base_url or --base-url"
        )
    license_id = opts.license or t.license or spec.default_license
    return Teacher(
        provider=provider,
        model=model,
        base_urls=base_urls,
        license=license_id,
        api_key_env=opts.api_key_env or t.api_key_env,
        max_concurrency=opts.max_concurrency or t.max_concurrency or DEFAULT_MAX_CONCURRENCY,
    )
