"""Everything a run needs, loaded and checked before any request: the prompt file, its schema and
tasks, the teacher, the licence review, the API key, prices, and the state of the output directory."""

from __future__ import annotations

import dataclasses
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gen.batching import check_batch_options
from gen.batching import check_output as check_batch_output
from gen.budget import Price, price_for
from gen.config import PromptFile, RunOptions, Teacher, load_prompt_file, resolve_teacher
from gen.decontaminate import Decontamination, prepare_decontamination
from gen.errors import ConfigError
from gen.ledger import id_key, load_manifest
from gen.manifest import check_compatible, next_version_dir, recipe_fingerprint
from gen.outdir import NOT_AN_OUTPUT, OutputDir
from gen.provenance import INTENDED_USES, Review, load_registry, review_teacher
from gen.reasoning import REASONING_FORMATS
from gen.rows import ROW_SCHEMA_VERSION
from gen.schema import Schema, load_schema
from gen.shards import committed_shards, parse_shard_name, read_columns
from gen.teachers import providers
from gen.templates import Expansion, TaskSource
from gen.verify import Verifier


@dataclass(slots=True)
class Prepared:
    """A run that passed every check: nothing has been sent yet."""

    prompt: PromptFile
    schema: Schema | None
    expansion: TaskSource  # the prompt file's Expansion; gen eval's recorded tasks
    teacher: Teacher
    api_key: str | None
    out_dir: Path
    opts: RunOptions
    sampling: dict[str, Any]
    price: Price | None
    previous: dict[str, Any] | None  # the manifest of the output being resumed
    lineage: dict[str, Any] | None  # the dataset this one is a new version of
    review: Review
    registry_sources: list[dict[str, Any]]  # which licence registries (and versions) decided
    # The n-gram index of [decontaminate] / --decontaminate-against (gen.decontaminate), or None.
    decontamination: Decontamination | None = None
    verifier: Verifier | None = None  # the prompt file's [verify] table, checked
    # The recipe's gen.manifest.recipe_fingerprint: batch mode logs it with every batch.
    fingerprint: dict[str, Any] | None = None
    reasoning_format: str = "field"  # how a trace enters `messages` (gen.reasoning.REASONING_FORMATS)


def prepare(prompt_path: str | Path, opts: RunOptions) -> Prepared:
    """Load and check everything a run needs. Raises ConfigError; sends no request."""
    prompt = load_prompt_file(prompt_path)
    spec = prompt.spec
    if opts.near_threshold is not None and not 0.0 < opts.near_threshold <= 1.0:
        raise ConfigError("--near-threshold", f"must be in (0, 1], got {opts.near_threshold:g}")
    check_batch_options(opts)
    teacher = resolve_teacher(prompt, opts)
    check_batch_options(opts, teacher.provider)  # before the licence review: a flag to fix comes first
    review, registry_sources = licence_review(prompt, teacher, opts)
    teacher = dataclasses.replace(teacher, license=review.licence_id)
    schema = load_schema(spec.schema_, base_dir=prompt.base_dir, where=prompt.path) if spec.schema_ else None
    expansion = Expansion(prompt, schema, samples=opts.samples)
    verifier = Verifier(spec.verify, prompt, expansion, schema, expansion.samples) if spec.verify else None
    if (
        verifier is not None
        and spec.verify
        and spec.verify.max_samples
        and (opts.executor != "local" or opts.partition is not None)
    ):
        raise ConfigError(
            prompt.path,
            "[verify] max_samples: rejection sampling runs on one machine only (--executor local)",
        )
    if verifier is not None and spec.verify and spec.verify.max_samples and opts.batch:
        # A batch run sends each task once as a batch line: it would silently make one try per input.
        raise ConfigError(
            prompt.path,
            "[verify] max_samples: rejection sampling asks an input again until its answers pass, which "
            "--batch cannot do; run without --batch, or drop max_samples",
        )
    provider = providers.get(teacher.provider)
    if provider.check_prompt is not None:  # a typo in [sim] is bad input too: report it before anything runs
        provider.check_prompt(prompt, teacher.model)
    api_key = None
    if teacher.api_key_env:
        api_key = os.environ.get(teacher.api_key_env)
        if not api_key:
            raise ConfigError(
                prompt.path, f"environment variable {teacher.api_key_env} (the API key) is not set"
            )
        check_api_key(api_key, teacher.api_key_env)
    price = price_for(provider.price_key or teacher.model)
    if opts.price_in is not None or opts.price_out is not None:
        # The table's cache minimum and batch share still hold; the cache rates are the flags' (else
        # the plain input price: the table's would be for another input price).
        price = Price(
            opts.price_in or 0.0,
            opts.price_out or 0.0,
            opts.price_cached_in,
            opts.price_cache_write,
            price.cache_min_tokens if price else None,
            price.batch_discount if price else 1.0,
        )
    elif price is not None and (opts.price_cached_in is not None or opts.price_cache_write is not None):
        price = dataclasses.replace(
            price,
            cached_input=price.cached_input if opts.price_cached_in is None else opts.price_cached_in,
            cache_write=price.cache_write if opts.price_cache_write is None else opts.price_cache_write,
        )
    if opts.batch and price is not None:  # list prices (table or flags), billed at the batch discount
        price = price.scaled(price.batch_discount)
    if opts.max_usd is not None and price is None:
        raise ConfigError(
            prompt.path,
            f"--max-usd needs a price for model {teacher.model!r}: pass --price-in and --price-out",
        )

    sampling, reasoning_format = reasoning_settings(prompt, opts, provider)

    out_dir = Path(opts.output) if opts.output else Path("outputs") / spec.name
    if opts.partition is not None:
        index, count = opts.partition
        if not 0 <= index < count:
            raise ConfigError(None, f"partition {index} of {count} does not exist")
    previous = load_manifest_or_fail(out_dir, opts.partition[0] if opts.partition else None)
    lineage = opts.lineage
    recipe = _recipe(prompt, expansion, schema, teacher, reasoning_format)
    fingerprint = recipe_fingerprint(recipe)
    if previous is not None and opts.new_version and fingerprint != recipe_fingerprint(previous):
        lineage = {"previous": str(out_dir), "previous_run_id": previous.get("run_id")}
        out_dir = next_version_dir(out_dir)
        previous = None
    # Batches at the provider for another recipe, or for an online run: before the manifest's check,
    # which would name the recipe but not the batches.
    again = f"gen run {prompt.path} --output {out_dir}"
    check_batch_output(out_dir, fingerprint, batch=opts.batch, again=again)
    if previous is not None:
        check_compatible(out_dir, previous, recipe)
    if opts.executor == "local" and not opts.partition and _holds_cluster_run(out_dir, previous):
        raise ConfigError(out_dir, "holds a cluster run; resume it with --executor ray")
    _check_writable(out_dir)
    decontamination = prepare_decontamination(prompt, expansion, opts)
    return Prepared(
        prompt,
        schema,
        expansion,
        teacher,
        api_key,
        out_dir,
        opts,
        sampling,
        price,
        previous,
        lineage,
        review,
        registry_sources,
        decontamination,
        verifier,
        fingerprint,
        reasoning_format,
    )


MAX_LOGPROBS = 20  # what vLLM returns at most (OpenAI: 20 too)
MIN_THINKING_BUDGET = 1024  # Anthropic refuses a smaller budget_tokens


def thinking_refuses(sampling: dict[str, Any]) -> str | None:
    """What the Messages API refuses in `sampling` together with extended thinking (its 400s: only the
    default temperature 1, no top_k, top_p from 0.95 to 1), said in one line; None when it takes it."""
    temperature, top_p = sampling.get("temperature"), sampling.get("top_p")
    if temperature is not None and temperature != 1:
        return f"temperature = {temperature!r}: extended thinking (thinking_budget) takes only 1 (or none)"
    if sampling.get("top_k") is not None:
        return "top_k: extended thinking (thinking_budget) does not take it"
    if top_p is not None and not (isinstance(top_p, int | float) and 0.95 <= top_p <= 1):
        return f"top_p = {top_p!r}: extended thinking (thinking_budget) takes only 0.95 to 1 (or none)"
    return None


def reasoning_settings(
    prompt: PromptFile, opts: RunOptions, provider: providers.ProviderSpec
) -> tuple[dict[str, Any], str]:
    """The run's sampling (with --thinking-budget applied) and reasoning format (--reasoning-format over
    the prompt file's), checked: `logprobs = K` an integer in 1..20 on an OpenAI-protocol teacher,
    `thinking_budget` at least 1,024 and below max_tokens on an Anthropic one, with sampling the API
    takes beside thinking (thinking_refuses). ConfigError otherwise."""
    sampling = dict(prompt.spec.sampling)
    fmt = opts.reasoning_format or prompt.spec.reasoning_format
    if fmt not in REASONING_FORMATS:
        raise ConfigError("--reasoning-format", f"{fmt!r} is not one of {', '.join(REASONING_FORMATS)}")
    if opts.thinking_budget is not None:
        sampling["thinking_budget"] = opts.thinking_budget
    where = "--thinking-budget" if opts.thinking_budget is not None else f"{prompt.path}: [sampling]"
    anthropic = provider.client.endswith("AnthropicMessages")
    budget = sampling.get("thinking_budget")
    if budget is not None:
        if not anthropic:
            raise ConfigError(
                where,
                f"thinking_budget is Anthropic's extended thinking; provider {provider.name!r} does not "
                "take it (OpenAI-compatible reasoning teachers send their trace without being asked)",
            )
        if type(budget) is not int or budget < MIN_THINKING_BUDGET:
            raise ConfigError(
                where, f"thinking_budget must be an integer >= {MIN_THINKING_BUDGET}, got {budget!r}"
            )
        cap = sampling.get("max_tokens") or sampling.get("max_completion_tokens")
        if cap is not None and (type(cap) is not int or cap <= budget):
            raise ConfigError(
                where,
                f"max_tokens ({cap!r}) must be larger than thinking_budget ({budget}): thinking counts in it",
            )
        refused = thinking_refuses(sampling)
        if refused is not None:
            raise ConfigError(f"{prompt.path}: [sampling]", refused)
        if cap is None:
            # What the request asks for (budget + the answer's default): written here, so that the
            # budget's reservations, the limiter and `gen plan` count the thinking too (they count
            # max_tokens, else 1,024), and each row's `sampling` records what was sent.
            from gen.teachers.anthropic import max_tokens_of

            sampling["max_tokens"] = max_tokens_of(sampling)
    k = sampling.get("logprobs")
    if k is not None:
        where = f"{prompt.path}: [sampling] logprobs"
        if anthropic:
            raise ConfigError(where, f"provider {provider.name!r} (Anthropic Messages) returns no logprobs")
        if type(k) is not int or not 1 <= k <= MAX_LOGPROBS:
            raise ConfigError(
                where, f"must be an integer K in 1..{MAX_LOGPROBS} (top-K alternatives), got {k!r}"
            )
    return sampling, fmt


def check_api_key(key: str, variable: str) -> None:
    """Refuse a key that cannot go into an HTTP header as it is: a control character (a CR/LF would let
    the rest of the value inject headers) or a character outside latin-1. The message never shows it."""
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise ConfigError(
            f"environment variable {variable}",
            "the API key contains a control character (a CR, LF or the like; a trailing newline from a "
            "file?): refusing to send it in a header",
        )
    try:
        key.encode("latin-1")
    except UnicodeEncodeError:
        raise ConfigError(
            f"environment variable {variable}",
            "the API key contains characters outside latin-1, which an HTTP header cannot carry",
        ) from None


def licence_review(
    prompt: PromptFile, teacher: Teacher, opts: RunOptions
) -> tuple[Review, list[dict[str, Any]]]:
    """The review a run cannot skip: a known licence, compatible with the declared use, or acknowledged."""
    use = opts.intended_use or prompt.spec.intended_use
    if not use:
        raise ConfigError(
            prompt.path,
            "declare the intended use of the data: set intended_use in the prompt file or pass --intended-use"
            f" ({', '.join(INTENDED_USES)})",
        )
    if use not in INTENDED_USES:
        raise ConfigError(prompt.path, f"unknown intended use {use!r} (known: {', '.join(INTENDED_USES)})")
    registry = load_registry(opts.licences)
    review = review_teacher(registry, teacher.model, teacher.license, use, opts.acknowledge_licence)
    if review.blocked:
        raise ConfigError(
            prompt.path,
            "licence review stopped the run: "
            + "; ".join(review.reasons)
            + ". To go ahead anyway, pass --acknowledge-licence-conflict (it is recorded in the manifest)",
        )
    return review, [src.as_dict() for src in registry.sources]


def load_manifest_or_fail(out_dir: Path, partition: int | None = None) -> dict[str, Any] | None:
    try:
        return load_manifest(out_dir, partition)
    except (OSError, ValueError) as e:
        raise ConfigError(OutputDir(out_dir, partition).manifest, f"unreadable: {e}") from None


def _recipe(
    prompt: PromptFile, expansion: Expansion, schema: Schema | None, teacher: Teacher, reasoning_format: str
) -> dict[str, Any]:
    return {
        "reasoning_format": reasoning_format,
        "row_schema_version": ROW_SCHEMA_VERSION,
        "prompt_file": {"sha256": prompt.sha256},
        "template": {"sha256": expansion.template_sha256},
        "schema": {"sha256": schema.sha256} if schema else None,
        "teacher": {"provider": teacher.provider, "model": teacher.model, "license": teacher.license},
    }


def _holds_cluster_run(out_dir: Path, previous: dict[str, Any] | None) -> bool:
    if previous is not None:
        return bool(previous.get("cluster"))
    return OutputDir(out_dir).partitions_dir.is_dir() or any(
        (name := parse_shard_name(rel)) is not None and (name.partition is not None or name.merge)
        for rel in committed_shards(out_dir)
    )


def _check_writable(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".gen-probe-{os.getpid()}-{secrets.token_hex(4)}"  # unique across nodes too
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(out_dir, f"output directory is not writable: {e.strerror or e}") from None


def prepare_refresh(old_dir: str | Path, opts: RunOptions) -> Prepared:
    """Regenerate the inputs of an existing dataset with another teacher, as a new version beside it."""
    old = Path(old_dir)
    manifest = load_manifest_or_fail(old)
    if manifest is None:
        raise ConfigError(old, NOT_AN_OUTPUT)
    prompt_path = Path(manifest["prompt_file"]["path"])
    prompt = load_prompt_file(prompt_path)
    if prompt.sha256 != manifest["prompt_file"]["sha256"]:
        raise ConfigError(
            prompt_path,
            f"changed since {old} was made, so refresh cannot ask the same questions; restore it, "
            "or use gen run --new-version for a new recipe",
        )
    ids: set[int] = set()
    for shard in manifest["shards"]:
        ids.update(id_key(t) for t in read_columns(old, shard["path"], ["id"])["id"])
    opts = dataclasses.replace(
        opts,
        output=opts.output or next_version_dir(old),
        samples=opts.samples or manifest.get("samples"),
        intended_use=opts.intended_use or manifest.get("intended_use"),
        only_ids=frozenset(ids),
        lineage={
            "kind": "refresh",
            "previous": str(old),
            "previous_run_id": manifest.get("run_id"),
            "previous_teacher": manifest.get("teacher"),
        },
    )
    return prepare(prompt_path, opts)
