"""Command line: argument parsing and exit codes only; the work is done by the public API."""

from __future__ import annotations

import argparse
import atexit
import errno
import math
import os
import sys
import threading
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from gen import __version__
from gen.reasoning import REASONING_FORMATS

EXIT_OK, EXIT_ABORTED, EXIT_CONFIG, EXIT_BUDGET, EXIT_GATE = 0, 1, 2, 3, 4
INTENDED_USES = ("research", "internal", "commercial-model", "competing-model")


class _Parser(argparse.ArgumentParser):
    """argparse with abbreviations off (`--sample 3` must not mean `--samples 3`) and every usage
    error on one line naming the flag and the problem (`gen run: error: argument --samples: ...`),
    exit 2. Subcommand parsers are of this class too (argparse builds them with the parent's)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(**kwargs)
        self.subcommands: dict[str, _Parser] = {}

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {message}\n")


def _limit_flags(p: argparse.ArgumentParser, *, request_timeout: float | None = None) -> None:
    """How requests are sent, the same for `run`, `refresh` and `eval`: concurrency, pacing, retries,
    timeouts, reply bounds, the vLLM launcher's shape. `request_timeout` is eval's fixed default (a
    run derives its own from max_tokens when None)."""
    p.add_argument("--max-concurrency", type=int, metavar="N", help="requests in flight (default 64)")
    p.add_argument("--rpm", type=float, metavar="R", help="requests per minute, paced smoothly")
    p.add_argument("--tpm", type=float, metavar="T", help="tokens per minute (prompt + completion)")
    p.add_argument("--max-retries", type=int, default=6, metavar="N", help="retries per request on 429/5xx")
    p.add_argument(
        "--max-pause",
        type=float,
        default=60.0,
        metavar="S",
        help="longest wait a 429's Retry-After or a rate-limit reset may impose, in seconds (default 60)",
    )
    p.add_argument(
        "--request-timeout",
        type=float,
        default=request_timeout,
        metavar="S",
        help="seconds per request (default 600, or max_tokens at 20 tokens/s when that is longer)"
        if request_timeout is None
        else f"seconds per request (default {request_timeout:g})",
    )
    p.add_argument("--connect-timeout", type=float, default=10.0, metavar="S", help="seconds to connect")
    p.add_argument(
        "--max-reply-bytes",
        type=int,
        metavar="N",
        help="refuse (and retry) a reply larger than this (default: from the request's max_tokens)",
    )
    p.add_argument(
        "--no-model-check",
        action="store_true",
        help="do not require the model in the server's /v1/models list (for servers that do not list it)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--grace-period",
        type=float,
        default=30.0,
        metavar="S",
        help="on Ctrl-C or SIGTERM, seconds to let in-flight requests finish (default 30)",
    )
    p.add_argument("--tensor-parallel-size", type=int, metavar="N", help="vllm: GPUs per replica")
    p.add_argument("--max-model-len", type=int, metavar="N", help="vllm: context length")


def _teacher_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by `run` and `refresh`: the teacher, limits, budgets, licence review, output."""
    _limit_flags(p)
    p.add_argument(
        "--provider", help="openai | anthropic | vllm | sim (default: the prompt file's, else sim)"
    )
    p.add_argument(
        "--base-url",
        action="append",
        metavar="URL",
        help="the server's base URL, e.g. http://localhost:8000/v1; repeat it for several replicas",
    )
    p.add_argument(
        "--data-parallel-size", type=int, metavar="N", help="vllm: engine copies inside one server"
    )
    p.add_argument("--replicas", type=int, metavar="N", help="vllm: servers to launch, each on its own GPUs")
    p.add_argument("--gpu-memory-utilization", type=float, metavar="F", help="vllm: share of GPU memory")
    p.add_argument("--dtype", help="vllm: weights dtype (auto, bfloat16, ...)")
    p.add_argument(
        "--vllm-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="vllm: an extra argument for `vllm serve`, verbatim (repeatable; write --vllm-arg=--flag)",
    )
    p.add_argument(
        "--license", help="licence id of the teacher's outputs (Hugging Face ids: apache-2.0, llama3.1)"
    )
    p.add_argument(
        "--api-key-env", metavar="VAR", help="name of the environment variable holding the API key"
    )
    p.add_argument("--output", type=Path, metavar="DIR", help="output directory")
    p.add_argument("--shard-rows", type=int, default=50_000, metavar="N", help="rows per Parquet shard")
    p.add_argument("--max-usd", type=_usd, metavar="USD", help="stop once the dataset has cost this much")
    p.add_argument(
        "--max-tokens", type=int, metavar="N", help="stop once the dataset has used this many tokens"
    )
    p.add_argument(
        "--price-in", type=_usd, metavar="USD", help="USD per million prompt tokens (overrides table)"
    )
    p.add_argument("--price-out", type=_usd, metavar="USD", help="USD per million completion tokens")
    p.add_argument(
        "--price-cached-in", type=_usd, metavar="USD", help="USD per million prompt tokens read from cache"
    )
    p.add_argument(
        "--price-cache-write", type=_usd, metavar="USD", help="USD per million prompt tokens cache-written"
    )
    p.add_argument(
        "--intended-use",
        choices=INTENDED_USES,
        help="what the data is for; checked against the teacher's licence before any request",
    )
    p.add_argument(
        "--acknowledge-licence-conflict",
        action="store_true",
        help="go ahead although the licence review found a conflict (recorded in the manifest)",
    )
    p.add_argument("--licences", type=Path, metavar="FILE", help="your licence registry, consulted first")
    p.add_argument(
        "--reasoning-format",
        choices=REASONING_FORMATS,
        help="how a reasoning trace enters `messages` (overrides the prompt file's reasoning_format)",
    )
    p.add_argument(
        "--thinking-budget",
        type=int,
        metavar="N",
        help="Anthropic extended thinking with this token budget (overrides [sampling] thinking_budget)",
    )
    p.add_argument("--no-near-dedup", action="store_true", help="remove exact duplicates only")
    p.add_argument(
        "--near-threshold", type=float, metavar="J", help="Jaccard above which rows are near duplicates"
    )
    p.add_argument(
        "--dedup-against",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="also drop rows that duplicate this other output's rows (repeatable)",
    )
    p.add_argument(
        "--decontaminate-against",
        action="append",
        default=[],
        metavar="FILE",
        help="drop train rows sharing a word n-gram with this eval set or benchmark (JSONL, CSV or "
        "Parquet; a path or a quoted glob; repeatable; columns as [decontaminate] columns)",
    )


def _eval_flags(e: argparse.ArgumentParser) -> None:
    e.add_argument("dataset", type=Path, metavar="OUTPUT", nargs="?", help="the dataset (a gen output)")
    e.add_argument("--student-model", metavar="NAME", help="the student model's name, as its server lists it")
    e.add_argument(
        "--student-base-url",
        action="append",
        metavar="URL",
        help="the student's OpenAI-compatible server, e.g. http://localhost:8001/v1 (repeatable)",
    )
    e.add_argument(
        "--student-provider",
        help="openai | anthropic | vllm | sim (default: openai with --student-base-url)",
    )
    e.add_argument("--student-api-key-env", metavar="VAR", help="environment variable holding its API key")
    e.add_argument("--split", default="eval", help="train | eval | all (default: eval, the held-out split)")
    e.add_argument("--limit", type=int, metavar="N", help="only the first N rows of the split")
    e.add_argument(
        "--tolerance", type=float, default=1e-9, metavar="X", help="numbers within X of the teacher's agree"
    )
    e.add_argument("--min-agreement", type=float, metavar="F", help="exit 4 when agreement is below F")
    e.add_argument(
        "--min-valid", type=float, metavar="F", help="exit 4 when the first-answer valid rate is below F"
    )
    e.add_argument("--student-price-in", type=_usd, metavar="USD", help="USD per million prompt tokens")
    e.add_argument("--student-price-out", type=_usd, metavar="USD", help="USD per million completion tokens")
    e.add_argument(
        "--student-gpu-hour-usd",
        type=_usd,
        metavar="USD",
        help="price a self-hosted student per GPU-hour of this evaluation's wall time",
    )
    e.add_argument("--resume", type=Path, metavar="EVAL_DIR", help="finish an interrupted evaluation")
    e.add_argument(
        "--inputs",
        type=Path,
        metavar="PROMPT_FILE",
        help="fresh inputs: a prompt file with the dataset's template and schema (the teacher answers too)",
    )
    e.add_argument(
        "--teacher-base-url", action="append", metavar="URL", help="--inputs: the teacher's server"
    )
    e.add_argument("--teacher-api-key-env", metavar="VAR", help="--inputs: the teacher's API key variable")
    e.add_argument(
        "--max-usd",
        type=_usd,
        metavar="USD",
        help="stop what gen pays for at this cost: --inputs' teacher, then the judge (free text)",
    )
    e.add_argument(
        "--judge-model",
        metavar="NAME",
        help="free text: the LLM judge's model (default: the dataset's teacher, from its manifest)",
    )
    e.add_argument(
        "--judge-base-url", metavar="URL", help="free text: the judge's server (default: the teacher's)"
    )
    e.add_argument(
        "--judge-provider",
        help="free text: openai | anthropic | vllm | sim (default: the teacher's; openai with a URL if sim)",
    )
    e.add_argument(
        "--judge-api-key-env", metavar="VAR", help="free text: environment variable of the judge's key"
    )
    e.add_argument(
        "--judge-prompt",
        type=Path,
        metavar="FILE",
        help="free text: replace the judge's prompt (gen/prompts/judge.md)",
    )
    e.add_argument(
        "--no-judge", action="store_true", help="free text: no LLM judge (exact match and token F1 only)"
    )
    e.add_argument(
        "--compare",
        nargs=2,
        type=Path,
        metavar=("EVAL_DIR_A", "EVAL_DIR_B"),
        help="print what changed between two finished evaluations, field by field",
    )
    e.add_argument("--json", action="store_true", help="print the report (or the comparison) as JSON")
    _limit_flags(e, request_timeout=600.0)


def _run_flags(r: argparse.ArgumentParser) -> None:
    """The flags of `run`, which `plan` takes too."""
    r.add_argument("prompt_file", type=Path)
    r.add_argument("--model", help="the teacher model name")
    r.add_argument("--samples", type=int, metavar="K", help="completions per input")
    r.add_argument("--limit", type=int, metavar="N", help="only the first N tasks")
    r.add_argument(
        "--new-version",
        action="store_true",
        help="the recipe changed: write a new version of the dataset beside the old one",
    )
    r.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="local: this process (default); ray: partitions on a Ray cluster (pip install 'gen[ray]')",
    )
    r.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="ray: the cluster to join (auto, ray://HOST:10001); default: start Ray on this machine",
    )
    r.add_argument(
        "--merge",
        choices=("driver", "scaleout"),
        default="driver",
        help="ray: deduplicate across partitions on the driver (default), or in Ray tasks "
        "(scaleout: no process holds the whole output's indexes)",
    )
    r.add_argument(
        "--partitions",
        type=int,
        metavar="N",
        help="ray: split the tasks into N partitions by id hash (default: as before, else one per URL)",
    )
    r.add_argument(
        "--batch",
        action="store_true",
        help="send the requests through the provider's batch API (openai, anthropic): half price, "
        "results within 24 h; run the same command again to collect batches submitted earlier",
    )
    r.add_argument("--cancel", action="store_true", help="with --batch: cancel the batches submitted")
    r.add_argument(
        "--batch-fallback",
        choices=("batch", "online"),
        default="batch",
        help="with --batch: send requests that failed or expired in a batch again in a later batch "
        "(default) or online at once",
    )
    r.add_argument("--batch-size", type=int, metavar="N", help="with --batch: requests per batch at most")
    r.add_argument(
        "--batch-poll",
        type=float,
        default=10.0,
        metavar="S",
        help="with --batch: seconds before the first poll of a batch; the wait grows while it runs",
    )
    _teacher_flags(r)


def _parser() -> _Parser:
    parser = _Parser(prog="gen", description="Synthetic data for distillation, from prompt files.")
    parser.add_argument("--version", action="version", version=f"gen {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks (or set GEN_DEBUG=1)")
    # Checked in _parse(): an unknown flag is reported before a missing command.
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")

    r = sub.add_parser("run", help="generate (or resume) a dataset from a prompt file")
    _run_flags(r)

    pl = sub.add_parser("plan", help="tasks, tokens, cost and time of a run, before any paid request")
    _run_flags(pl)
    pl.add_argument(
        "--pilot",
        type=int,
        metavar="N",
        help="first run N real tasks into the output (a later run skips them) and extrapolate from them",
    )
    pl.add_argument("--json", action="store_true", help="print the plan as JSON")

    f = sub.add_parser("refresh", help="regenerate a dataset's inputs with a new teacher, as a new version")
    f.add_argument("dataset", type=Path, metavar="OUTPUT")
    f.add_argument("--model", required=True, help="the new teacher model")
    _teacher_flags(f)

    a = sub.add_parser(
        "audit", help="verify an output directory: checksums, provenance, ids, licence decision"
    )
    a.add_argument("dataset", type=Path, metavar="OUTPUT")
    a.add_argument("--json", action="store_true", help="print the report as JSON")

    e = sub.add_parser("eval", help="test a student against the dataset's teacher (exit 4: the gate failed)")
    _eval_flags(e)
    rp = sub.add_parser("report", help="write OUTPUT/report.html: the figures to look at before training")
    rp.add_argument("dataset", type=Path, metavar="OUTPUT")
    rp.add_argument("--open", action="store_true", help="open the page in the default browser")
    rp.add_argument(
        "--no-audit", action="store_true", help="skip gen audit's checks (most of the time on a large output)"
    )

    d = sub.add_parser("diff", help="compare two versions of a dataset")
    d.add_argument("old", type=Path)
    d.add_argument("new", type=Path)
    d.add_argument("--json", action="store_true", help="print the comparison as JSON")

    s = sub.add_parser("sim", help="serve the simulated teacher (OpenAI protocol) on loopback")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=_port, default=8000, help="0 picks a free port")
    s.add_argument("--model", default="gen-sim-1")
    s.add_argument("--latency-ms", type=float, default=0.0)
    s.add_argument("--latency-jitter-ms", type=float, default=0.0)
    s.add_argument("--rate-429", type=float, default=0.0, help="fraction of requests answered 429")
    s.add_argument("--retry-after", type=float, default=1.0, dest="retry_after_s", help="Retry-After seconds")
    s.add_argument("--rate-500", type=float, default=0.0)
    s.add_argument("--rate-503", type=float, default=0.0)
    s.add_argument("--rate-invalid-json", type=float, default=0.0)
    s.add_argument("--rate-fenced-json", type=float, default=0.0)
    s.add_argument("--rate-drop", type=float, default=0.0, help="fraction of connections dropped unanswered")
    s.add_argument("--rate-truncated", type=float, default=0.0, help="fraction of answers cut off (length)")
    s.add_argument("--rpm", type=int, default=None, help="requests-per-minute limit (429 beyond it)")
    s.add_argument(
        "--batch-delay", type=float, default=0.0, dest="batch_delay_s", help="seconds until a batch ends"
    )
    s.add_argument("--batch-rate-failed", type=float, default=0.0, help="fraction failing")
    s.add_argument("--batch-rate-expired", type=float, default=0.0, help="fraction expiring")
    s.add_argument("--seed", type=int, default=0, help="seed of the fault draws")
    s.add_argument(
        "--cache-min-tokens", type=int, default=1024, help="shortest prompt prefix the simulated cache keeps"
    )
    s.add_argument(
        "--cache-ttl", type=float, default=300.0, dest="cache_ttl_s", help="seconds a cached prefix lives"
    )
    s.add_argument("--cache-entries", type=int, default=10_000, help="cached prefixes kept (LRU)")
    s.add_argument(
        "--perturb-share",
        type=float,
        default=0.0,
        help="play a student: change this share of answers (picked by a hash of the request's seed)",
    )
    s.add_argument(
        "--perturb-field", default="*", help="the top-level field a changed answer changes (*: every one)"
    )
    s.add_argument(
        "--reasoning",
        choices=("reasoning_content", "reasoning", "think-tags", "hidden"),
        help="answer as a reasoning teacher, sending the trace this way (Anthropic path: when asked)",
    )
    s.add_argument("--reasoning-tokens", type=int, default=200, metavar="N", help="a trace's mean length")
    s.add_argument("--answer-text", metavar="TEXT", help="this fixed text as every free-text answer")
    s.add_argument(
        "--judge",
        metavar="MODE",
        help="play a judge of two answers: longer | longer_a | first | garbage (gen eval on free text)",
    )
    s.add_argument(
        "--api-key-env", metavar="VAR", help="require this environment variable's value as the API key"
    )
    for p in sub.choices.values():
        # SUPPRESS: a subcommand without --debug must not reset a `gen --debug CMD` to False.
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    parser.subcommands = dict(sub.choices)
    return parser


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line; a usage error exits 2 with one line from the parser it concerns."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # argparse would blame the top-level parser; the flag belongs to the subcommand's unless it
        # came before the subcommand.
        tokens = list(sys.argv[1:] if argv is None else argv)
        at = tokens.index(args.command) if args.command in tokens else len(tokens)
        owner = parser if tokens.index(extra[0]) < at else parser.subcommands[args.command]
        owner.error(f"unrecognized arguments: {' '.join(extra)} (see {owner.prog} --help)")
    if args.command is None:
        parser.error(f"the following arguments are required: command (one of {', '.join(COMMANDS)})")
    return args


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port (0 to 65535; 0 picks a free one)")
    return port


def _usd(value: str) -> float:
    """An amount of money: a finite number, 0 or more. nan made every budget check false (no limit)."""
    try:
        usd = float(value)
    except ValueError:
        usd = math.nan
    if not (math.isfinite(usd) and usd >= 0):
        raise argparse.ArgumentTypeError(f"{value} is not an amount in USD (a finite number, 0 or more)")
    return usd


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        from gen.errors import ConfigError

        raise ConfigError(None, f"{name} must be at least 1")


def _options(args: argparse.Namespace):  # -> RunOptions (imported lazily: keeps `gen --help` fast)
    from gen.config import RunOptions

    for flag in (
        "max_concurrency",
        "samples",
        "limit",
        "shard_rows",
        "max_tokens",
        "partitions",
        "max_reply_bytes",
        "batch_size",
    ):
        _positive("--" + flag.replace("_", "-"), getattr(args, flag, None))
    executor = getattr(args, "executor", "local")
    if executor != "ray" and (getattr(args, "partitions", None) or getattr(args, "ray_address", None)):
        from gen.errors import ConfigError

        raise ConfigError(None, "--partitions and --ray-address need --executor ray")
    if executor != "ray" and getattr(args, "merge", "driver") != "driver":
        from gen.errors import ConfigError

        raise ConfigError(None, "--merge scaleout needs --executor ray")
    if not 0 < args.max_pause < math.inf:
        from gen.errors import ConfigError

        raise ConfigError(None, f"--max-pause must be a positive number of seconds, got {args.max_pause:g}")
    return RunOptions(
        executor=executor,
        partitions=getattr(args, "partitions", None),
        ray_address=getattr(args, "ray_address", None),
        merge=getattr(args, "merge", "driver"),
        provider=args.provider,
        base_url=args.base_url,
        model=args.model,
        license=args.license,
        api_key_env=args.api_key_env,
        max_concurrency=args.max_concurrency,
        samples=getattr(args, "samples", None),
        limit=getattr(args, "limit", None),
        output=args.output,
        shard_rows=args.shard_rows,
        max_retries=args.max_retries,
        no_model_check=args.no_model_check,
        max_pause_s=args.max_pause,
        request_timeout_s=args.request_timeout,
        reasoning_format=getattr(args, "reasoning_format", None),
        thinking_budget=getattr(args, "thinking_budget", None),
        connect_timeout_s=args.connect_timeout,
        max_reply_bytes=args.max_reply_bytes,
        progress=not args.no_progress,
        rpm=args.rpm,
        tpm=args.tpm,
        max_usd=args.max_usd,
        max_tokens=args.max_tokens,
        price_in=args.price_in,
        price_out=args.price_out,
        price_cached_in=args.price_cached_in,
        price_cache_write=args.price_cache_write,
        grace_s=args.grace_period,
        new_version=getattr(args, "new_version", False),
        intended_use=args.intended_use,
        acknowledge_licence=args.acknowledge_licence_conflict,
        licences=args.licences,
        no_near_dedup=args.no_near_dedup,
        near_threshold=args.near_threshold,
        dedup_against=args.dedup_against,
        decontaminate_against=args.decontaminate_against,
        batch=getattr(args, "batch", False),
        batch_cancel=getattr(args, "cancel", False),
        batch_fallback=getattr(args, "batch_fallback", "batch"),
        batch_size=getattr(args, "batch_size", None),
        batch_poll_s=getattr(args, "batch_poll", 10.0),
        vllm={
            k: v
            for k, v in {
                "tensor_parallel_size": args.tensor_parallel_size,
                "data_parallel_size": args.data_parallel_size,
                "replicas": args.replicas,
                "max_model_len": args.max_model_len,
                "gpu_memory_utilization": args.gpu_memory_utilization,
                "dtype": args.dtype,
                "extra_args": args.vllm_arg or None,
            }.items()
            if v is not None
        },
    )


def _execute(prepared, again: str) -> int:
    from gen.pipeline import run_prepared

    return _exit_status(run_prepared(prepared), again)


def _exit_status(result, again: str) -> int:
    from gen.pipeline import summary

    print(summary(result), file=sys.stderr)
    s = result.stats
    if result.status == "complete" and s.tasks and not (s.rows or s.duplicates or s.skipped or s.replayed):
        # Every task this run was given became a reject, and the output holds nothing from before.
        reasons = ", ".join(f"{r}: {n:,}" for r, n in s.reject_reasons.most_common())
        print(
            f"gen: kept nothing: {s.rejects:,} rejects ({reasons}) and no rows; each reject's reason, "
            f"error and raw answer are in {result.output_dir}/rejects/",
            file=sys.stderr,
        )
        return EXIT_ABORTED
    if result.status == "complete":
        return EXIT_OK
    if result.status == "cancelled":  # gen run --batch --cancel did what it was asked
        print(f"gen: {result.message}; run `{again}` to submit the rest again.", file=sys.stderr)
        return EXIT_OK
    if result.status == "budget":
        print(
            f"gen: {result.message}. Committed. Raise the limit and run `{again}` to continue.",
            file=sys.stderr,
        )
        return EXIT_BUDGET
    print(f"gen: {result.message or result.status}. Committed; run `{again}` to resume.", file=sys.stderr)
    return 128 + result.signal if result.signal else EXIT_ABORTED


def _run(args: argparse.Namespace) -> int:
    from gen.executors import executor_for

    opts = _options(args)
    executor = executor_for(opts.executor)  # the one choice; Ray missing is a ConfigError before any request
    result = executor.run(args.prompt_file, opts)
    return _exit_status(
        result,
        f"gen run {args.prompt_file} --output {result.output_dir}{_given_teacher(opts)}"
        f"{executor.resume_flags(opts)}",
    )


def _given_teacher(opts: Any) -> str:
    """The teacher flags a run was given (not the key: the name of its variable), for the command that
    resumes it: without them it would ask the prompt file's teacher, which may not hold its batches."""
    import shlex

    from gen.errors import redact

    urls = [opts.base_url] if isinstance(opts.base_url, str) else list(opts.base_url or [])
    flags = [("--provider", opts.provider), ("--model", opts.model)]
    flags += [("--base-url", redact(u)) for u in urls] + [("--api-key-env", opts.api_key_env)]
    return "".join(f" {flag} {shlex.quote(str(value))}" for flag, value in flags if value)


def _plan(args: argparse.Namespace) -> int:
    import json

    from gen.plan import make_plan

    _positive("--pilot", args.pilot)
    plan = make_plan(args.prompt_file, _options(args), pilot=args.pilot)
    print(json.dumps(plan.as_dict(), indent=2) if args.json else plan.render())
    return EXIT_OK


def _refresh(args: argparse.Namespace) -> int:
    from gen.prepare import prepare_refresh

    prepared = prepare_refresh(args.dataset, _options(args))
    again = f"gen run {prepared.prompt.path} --output {prepared.out_dir} --model {args.model}"
    return _execute(prepared, again)


def _audit(args: argparse.Namespace) -> int:
    import json

    from gen.audit import audit

    report = audit(args.dataset)
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.render())
    return EXIT_OK if report.clean else EXIT_ABORTED


def _report(args: argparse.Namespace) -> int:
    from gen.errors import GenError
    from gen.report import write_report

    try:
        result = write_report(args.dataset, audit=not args.no_audit)
    except (GenError, OSError):
        raise
    except Exception as e:  # input the page's readers did not foresee: one line, the traceback on --debug
        if args.debug or os.environ.get("GEN_DEBUG") == "1":
            raise
        print(f"gen report: cannot report on {args.dataset}: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_ABORTED
    print(
        f"gen: wrote {result.path} ({result.bytes / 1e6:.2f} MB, {result.figures} figures)", file=sys.stderr
    )
    if result.state:
        print(f"gen report: {result.state}", file=sys.stderr)
    if args.open:
        import webbrowser

        webbrowser.open(result.path.resolve().as_uri())
    if result.findings:
        print(
            f"gen report: gen audit found {len(result.findings)} problem(s) in {args.dataset}, "
            f"first: {result.findings[0]}; the page lists them first, in red",
            file=sys.stderr,
        )
        return EXIT_ABORTED
    return EXIT_OK


def _diff(args: argparse.Namespace) -> int:
    import json

    from gen.compare import diff, render

    d = diff(args.old, args.new)
    print(json.dumps(d, indent=2) if args.json else render(d))
    return EXIT_OK


EVAL_GC_THRESHOLD = 20_000  # gen eval's youngest-generation collection threshold (see _eval)


def _eval(args: argparse.Namespace) -> int:
    import json

    from gen.errors import ConfigError

    if args.compare:
        from gen.eval_report import render_comparison
        from gen.evaluation import compare_evals

        c = compare_evals(*args.compare)
        print(json.dumps(c, indent=2) if args.json else render_comparison(c))
        return EXIT_OK
    if args.dataset is None:
        raise ConfigError("gen eval", "give the dataset (OUTPUT), or --compare EVAL_DIR_A EVAL_DIR_B")
    if not args.student_model:
        raise ConfigError("--student-model", "required: the student model's name, as its server lists it")
    for flag in ("limit", "max_concurrency", "max_reply_bytes"):
        _positive("--" + flag.replace("_", "-"), getattr(args, flag))
    import gc

    # No cyclic collection from here until the split is read (see below): importing the evaluation's
    # modules makes tens of thousands of long-lived objects too, which the collector walked ~80 times.
    thresholds = gc.get_threshold()
    gc.disable()
    from gen.eval_report import summary_line
    from gen.evaluation import EvalOptions, prepare_eval, run_eval

    opts = EvalOptions(
        student_model=args.student_model,
        student_provider=args.student_provider,
        student_base_url=args.student_base_url,
        student_api_key_env=args.student_api_key_env,
        student_price_in=args.student_price_in,
        student_price_out=args.student_price_out,
        student_gpu_hour_usd=args.student_gpu_hour_usd,
        split=args.split,
        limit=args.limit,
        tolerance=args.tolerance,
        min_agreement=args.min_agreement,
        min_valid=args.min_valid,
        resume=args.resume,
        inputs=args.inputs,
        teacher_base_url=args.teacher_base_url,
        teacher_api_key_env=args.teacher_api_key_env,
        max_usd=args.max_usd,
        judge_model=args.judge_model,
        judge_provider=args.judge_provider,
        judge_base_url=args.judge_base_url,
        judge_api_key_env=args.judge_api_key_env,
        judge_prompt=args.judge_prompt,
        no_judge=args.no_judge,
        max_concurrency=args.max_concurrency,
        rpm=args.rpm,
        tpm=args.tpm,
        max_retries=args.max_retries,
        max_pause_s=args.max_pause,
        request_timeout_s=args.request_timeout,
        connect_timeout_s=args.connect_timeout,
        max_reply_bytes=args.max_reply_bytes,
        no_model_check=args.no_model_check,
        grace_s=args.grace_period,
        progress=not args.no_progress,
        vllm={
            k: v
            for k, v in {
                "tensor_parallel_size": args.tensor_parallel_size,
                "max_model_len": args.max_model_len,
            }.items()
            if v is not None
        },
    )
    from gen.errors import FatalTeacherError
    from gen.pipeline import OutputError

    # Reading the split builds tens of thousands of acyclic objects (rows, their messages) that live
    # until the evaluation ends: the cyclic collector would walk them while they are built and again in
    # every full collection of the run (a few % of the evaluation's CPU). So no collection while they
    # are built, then they are frozen (out of the collector's sight) until the evaluation is over. The
    # evaluation makes little cyclic garbage, and what it keeps (rows waiting for the shard writer,
    # outcomes) is acyclic too: the youngest generation is collected every EVAL_GC_THRESHOLD
    # allocations rather than every 700 (Python's default), which walked them 150 times for 5,000 rows.
    try:
        try:
            plan = prepare_eval(args.dataset, opts)
        finally:
            gc.freeze()
            gc.set_threshold(max(thresholds[0], EVAL_GC_THRESHOLD), *thresholds[1:])
            gc.enable()
        result = run_eval(plan)
    except FatalTeacherError as e:  # main() would call the student "the teacher"
        print(f"gen eval: aborted, the student refused: {e}", file=sys.stderr)
        return EXIT_ABORTED
    except OutputError as e:  # main() would say "run the same command again": a new evaluation, paid again
        if not plan.eval_dir.is_dir():  # removed: nothing was answered, so the same command is the way
            raise
        print(
            f"gen eval: aborted: cannot write to {e.out_dir}: {e.error.strerror or e.error}. Every answer "
            f"received is kept; free space and resume with `gen eval {args.dataset} --student-model "
            f"{args.student_model} ... --resume {plan.eval_dir}`.",
            file=sys.stderr,
        )
        return EXIT_ABORTED
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
    if result.report is None:
        print(
            f"gen eval: {result.message or result.status}. Committed; resume with `gen eval {args.dataset} "
            f"--student-model {args.student_model} ... --resume {result.eval_dir}`.",
            file=sys.stderr,
        )
        if result.status == "budget" and result.signal is None:  # as gen run: the budget ran out
            return EXIT_BUDGET
        return 128 + result.signal if result.signal else EXIT_ABORTED
    data = result.report.data
    if args.json:
        print(json.dumps(data, indent=2))
    print(summary_line(data, result.eval_dir), file=sys.stderr)
    return EXIT_GATE if result.report.passed is False else EXIT_OK


def _sim(args: argparse.Namespace) -> int:
    from gen.errors import ConfigError
    from gen.sim import SimConfig, serve

    fields = (
        "model",
        "latency_ms",
        "latency_jitter_ms",
        "rate_429",
        "retry_after_s",
        "rate_500",
        "rate_503",
        "rate_invalid_json",
        "rate_fenced_json",
        "rate_drop",
        "rate_truncated",
        "rpm",
        "seed",
        "cache_min_tokens",
        "cache_ttl_s",
        "cache_entries",
        "perturb_share",
        "perturb_field",
        "batch_delay_s",
        "batch_rate_failed",
        "batch_rate_expired",
        "reasoning",
        "reasoning_tokens",
        "answer_text",
        "judge",
    )
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise ConfigError("gen sim", f"environment variable {args.api_key_env} is not set")
    try:
        config = SimConfig(**{f: getattr(args, f) for f in fields}, api_key=api_key)
    except ValueError as e:
        raise ConfigError("gen sim", str(e)) from None
    try:
        serve(config, host=args.host, port=args.port)
    except OSError as e:  # before anything was served: a flag to fix, not an aborted run
        if e.errno == errno.EADDRINUSE:
            problem = f"--port {args.port} is taken on {args.host}: choose another (0 picks a free one)"
        else:
            problem = f"cannot listen on {args.host}:{args.port}: {e.strerror or e}"
        raise ConfigError("gen sim", problem) from None
    return EXIT_OK


COMMANDS = {
    "run": _run,
    "plan": _plan,
    "refresh": _refresh,
    "eval": _eval,
    "audit": _audit,
    "report": _report,
    "diff": _diff,
    "sim": _sim,
}


def _limit_malloc_arenas() -> None:
    """glibc gives each thread that allocates its own 64 MiB malloc arena; gen's few threads (the shard
    writer, the seed counter) then hold memory the main thread freed. Two arenas keep RSS flat at no
    measurable cost. Must run before any thread starts; does nothing off glibc."""
    if sys.platform.startswith("linux") and "MALLOC_ARENA_MAX" not in os.environ:
        from gen.prctl import M_ARENA_MAX, mallopt

        mallopt(M_ARENA_MAX, 2)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `gen` console script; returns the exit status."""
    from gen.errors import ConfigError, FatalTeacherError, GenError

    _limit_malloc_arenas()
    args = _parse(argv)
    debug = args.debug or os.environ.get("GEN_DEBUG") == "1"
    try:
        return COMMANDS[args.command](args)
    except ConfigError as e:
        if debug:  # the traceback, then the same line and exit status as without --debug
            traceback.print_exc()
        print(f"gen: error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except FatalTeacherError as e:
        if debug:  # the traceback, then the same line and exit status as without --debug
            traceback.print_exc()
        print(f"gen: run aborted, the teacher refused: {e}", file=sys.stderr)
        return EXIT_ABORTED
    # OSError: the output could not be prepared or written; nothing committed was touched.
    except (GenError, OSError) as e:
        if debug:  # the traceback, then the same line and exit status as without --debug
            traceback.print_exc()
        print(f"gen: run aborted: {e}", file=sys.stderr)
        return EXIT_ABORTED
    except KeyboardInterrupt:  # before the run installed its own handler
        print("gen: interrupted", file=sys.stderr)
        return 130


def console() -> NoReturn:
    """The `gen` console script: main(), then an exit that skips the interpreter's teardown.

    By the time main() returns, everything gen writes is closed (shards, journal, manifest, card).
    What normal exit would still do is free every module and object one by one: about 0.4 s of CPU
    with pyarrow, numpy, pydantic and aiohttp loaded, a tenth of a 5,000-row run. atexit handlers
    (the vLLM launcher's stop, Ray's shutdown) still run. A live non-daemon thread means work may be
    unfinished: then the normal exit runs, which waits for it. Not for a verification thread
    (gen.pipeline's "gen-verify" pool): its pool is shut down by then, so one still alive is stuck in the
    user's `[verify] python` function, whose verdict nobody is waiting for."""
    code = main()
    main_thread = threading.main_thread()
    if any(
        t is not main_thread and not t.daemon and not t.name.startswith("gen-verify")
        for t in threading.enumerate()
    ):
        sys.exit(code)
    atexit._run_exitfuncs()  # noqa: SLF001 (the documented handlers, run as normal exit would)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    console()
