"""`gen eval` and `gen.evaluate()`: test a student against its teacher, on a split of its dataset.

An evaluation is a run whose teacher is the student: its tasks are the dataset's recorded rows (the
input turns of each row's `messages`, the recorded sampling, the same structured-output request), and
gen's own producer (gen.pipeline.Run: limits, retries, journal, resume, Ctrl-C) asks the student, with
deduplication off so that no answer is dropped. Then every answer is compared with the teacher's
(gen.eval_compare) and the figures are written:

    OUTPUT/evals/<student>-<UTC timestamp>/
      eval.json         what is being evaluated (written first: `--resume` reads it)
      teacher/          fresh inputs only (`--inputs`, gen.eval_inputs): the teacher's answers to them
      answers/          the student's answers: a gen output of their own (manifest, data, rejects, journal)
      requests.jsonl    each request's latency and tokens
      judge.jsonl       free text: the judge's verdict on each row (gen.eval_judge; `--resume` reuses them)
      results.parquet   one row per evaluated input (id, answers, per-field scores, latency, tokens)
      report.json       every figure with its 95% interval, identities, split, the dataset manifest's sha256
      report.md         the human summary (the dataset card's "Evaluation" section lists every one)

Nothing under the dataset's own shards or manifest is written; its card is re-rendered.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from gen.budget import Price, price_for
from gen.config import PromptFile, RunOptions, TeacherSpec, load_prompt_file, resolve_teacher
from gen.config import _check_base_url as check_base_url
from gen.errors import ConfigError, GenError
from gen.eval_compare import (
    Comparison,
    RowScore,
    field_specs,
    free_text_specs,
    identical_score,
    percentile,
    score_row,
    score_text,
)
from gen.eval_report import EvalReport, gate_verdict, render_markdown, summary_line
from gen.ledger import load_manifest
from gen.outdir import NOT_AN_OUTPUT, OutputDir
from gen.prepare import Prepared, check_api_key, prepare
from gen.provenance import Review
from gen.schema import Schema, load_schema
from gen.shards import (
    atomic_write_bytes,
    read_columns,
    sha256_file,
    write_eval_columns,
    write_json,
)
from gen.teachers import providers
from gen.templates import Task

if TYPE_CHECKING:  # fresh inputs and the judge are imported where used: a structured eval needs neither
    from gen.eval_judge import JudgeSpec
    from gen.judge import Pair

FORMAT = "gen-eval/1"
NOT_JUDGED = "not judged (--no-judge)"  # report.json's `judge` for free text evaluated without the judge
SPLITS = ("eval", "train", "all")
ANSWERS, REQUESTS, RESULTS, REPORT_JSON, REPORT_MD, SETTINGS, TEACHER = (
    "answers",
    "requests.jsonl",
    "results.parquet",
    "report.json",
    "report.md",
    "eval.json",
    "teacher",
)
_TEACHER_COLUMNS = ["id", "messages", "vars", "sample", "split", "output", "response"]
_TEACHER_USAGE = ["prompt_tokens", "completion_tokens"]
# Each student request of a row, by row id: (attempt, latency_ms, prompt_tokens, completion_tokens), as
# requests.jsonl holds them.
RequestLog = dict[str, Sequence[tuple[int, float | None, int, int]]]


@dataclass(kw_only=True, slots=True)
class EvalOptions:
    """What `gen eval` is asked to do; the flags of the same names."""

    student_model: str
    student_provider: str | None = None  # default: openai with a base URL; sim/vllm launch their own
    student_base_url: str | list[str] | None = None
    student_api_key_env: str | None = None
    student_price_in: float | None = None  # USD per million prompt tokens (default: the price table)
    student_price_out: float | None = None
    student_gpu_hour_usd: float | None = None  # a self-hosted student: priced by the eval's wall time
    split: str = "eval"
    limit: int | None = None
    tolerance: float = 1e-9  # numbers within this (absolute) of the teacher's agree
    min_agreement: float | None = None
    min_valid: float | None = None
    resume: Path | None = None  # an eval directory to finish
    # Fresh inputs (gen.eval_inputs): a prompt file with the dataset's template and schema and new
    # inputs; the dataset's teacher answers them first (its base URL and key, and a budget in USD).
    inputs: Path | None = None
    teacher_base_url: str | list[str] | None = None
    teacher_api_key_env: str | None = None
    max_usd: float | None = None  # what gen pays for: the fresh inputs' teacher, then the judge
    max_concurrency: int | None = None
    rpm: float | None = None
    tpm: float | None = None
    max_retries: int = 6
    max_pause_s: float = 60.0
    request_timeout_s: float = 600.0
    connect_timeout_s: float = 10.0
    max_reply_bytes: int | None = None
    no_model_check: bool = False
    grace_s: float = 30.0
    progress: bool = True
    vllm: dict[str, Any] = field(default_factory=dict)
    # Free text (no schema): the LLM judge (gen.eval_judge), each default the dataset's teacher as the
    # manifest records it; `judge_prompt` replaces gen/prompts/judge.md; `no_judge`: token F1 only.
    judge_model: str | None = None
    judge_provider: str | None = None
    judge_base_url: str | None = None
    judge_api_key_env: str | None = None
    judge_prompt: Path | None = None
    no_judge: bool = False


_JUDGE_FLAGS = {
    "judge_model": "--judge-model",
    "judge_provider": "--judge-provider",
    "judge_base_url": "--judge-base-url",
    "judge_api_key_env": "--judge-api-key-env",
    "judge_prompt": "--judge-prompt",
}


@dataclass(slots=True)
class EvalPlan:
    """An evaluation that passed every check: nothing has been sent yet."""

    dataset: Path
    manifest: dict[str, Any]
    manifest_sha256: str
    eval_dir: Path
    resumed: bool
    prepared: Prepared
    teacher_rows: list[dict[str, Any]]
    settings: dict[str, Any]
    opts: EvalOptions
    teacher_run: Prepared | None = None  # fresh inputs: the teacher's run, before the student's
    refused: int = 0  # fresh inputs refused: in the dataset already
    judge: JudgeSpec | None = None  # free text: the LLM judge (None: structured, or --no-judge)
    recipe: PromptFile | None = None  # the dataset's prompt file (a launched judge is started from it)


@dataclass(slots=True)
class EvalResult:
    """What `run_eval` did: the report when every row was answered, else how the run stopped."""

    eval_dir: Path
    status: str  # the run's: complete, interrupted, budget, aborted
    report: EvalReport | None
    message: str = ""
    signal: int | None = None


class RecordedTasks:
    """The tasks of an evaluation: the recorded input turns of each teacher row (a TaskSource)."""

    def __init__(self, rows: list[dict[str, Any]], *, samples: int, template_sha256: str) -> None:
        self.rows = rows
        self.samples = samples
        self.template_sha256 = template_sha256

    def tasks(self, keep: Callable[[str], bool] | None = None) -> Iterator[Task]:
        for r in self.rows:
            # The input turns as the teacher was sent them: role and content (_teacher_rows reads the
            # message structs without their `reasoning_content`, null on input turns, which no request
            # had). Every task gets its own list; nothing changes a message dict in place.
            yield Task(r["id"], r["vars"], r["sample"], r["split"], r["messages"][:-1])

    def count(self) -> int:
        return len(self.rows)


# ---------------------------------------------------------------------------------- preparing


def prepare_eval(dataset: str | Path, opts: EvalOptions) -> EvalPlan:
    """Load and check everything an evaluation needs. Raises ConfigError; sends no request."""
    out = Path(dataset)
    manifest = _load_manifest(out)
    if opts.split not in SPLITS:
        raise ConfigError("--split", f"must be one of {', '.join(SPLITS)}, got {opts.split!r}")
    for flag, value in (("--min-agreement", opts.min_agreement), ("--min-valid", opts.min_valid)):
        if value is not None and not 0.0 <= value <= 1.0:
            raise ConfigError(flag, f"must be a fraction in [0, 1], got {value:g}")
    if opts.limit is not None and opts.limit < 1:
        raise ConfigError("--limit", "must be at least 1")
    if opts.tolerance < 0:
        raise ConfigError("--tolerance", f"must be >= 0, got {opts.tolerance:g}")
    if opts.inputs is not None and opts.split != "eval":
        raise ConfigError("--split", "does not apply to --inputs: every fresh input is evaluated")
    prompt, schema = _recipe(out, manifest)
    judge = _judge(out, manifest, prompt, schema, opts)

    eval_dir, settings, resumed = _eval_dir(out, manifest, opts)
    try:
        plan = _plan(out, manifest, opts, prompt, schema, eval_dir, settings, resumed)
        plan.judge, plan.recipe = judge, prompt
        return plan
    except BaseException:
        if not resumed:  # prepare's writability probe (fresh inputs) may have made the folders
            shutil.rmtree(eval_dir, ignore_errors=True)
        raise


def _judge(
    out: Path, manifest: dict[str, Any], recipe: PromptFile, schema: Schema | None, opts: EvalOptions
) -> JudgeSpec | None:
    """The judge of a free-text dataset (None: a schema, or --no-judge). ConfigError for a judge flag
    that does not apply or is bad, and for --min-agreement without a judge."""
    given = [flag for name, flag in _JUDGE_FLAGS.items() if getattr(opts, name) is not None]
    if schema is not None:
        if given:
            raise ConfigError(
                given[0], f"{out} has a schema: its answers are compared field by field, not judged"
            )
        return None
    if opts.no_judge:
        if given:
            raise ConfigError(given[0], "does not go with --no-judge")
        if opts.min_agreement is not None:
            raise ConfigError(
                "--min-agreement",
                f"{out} holds free text (no schema): with --no-judge there is no agreement to gate on; "
                "gate on --min-valid, or let the judge run",
            )
        return None
    from gen.eval_judge import resolve_judge

    judge = resolve_judge(
        manifest,
        recipe,
        provider=opts.judge_provider,
        model=opts.judge_model,
        base_url=opts.judge_base_url,
        api_key_env=opts.judge_api_key_env,
        prompt=opts.judge_prompt,
    )
    priced = _teacher_price({"provider": judge.provider, "model": judge.model}) is not None
    if opts.max_usd is not None and not priced:
        raise ConfigError(
            "--max-usd",
            f"the judge {judge.model} has no price in the price table, so its cost cannot be bounded; "
            "name a priced --judge-model, or leave out --max-usd",
        )
    return judge


def _plan(
    out: Path,
    manifest: dict[str, Any],
    opts: EvalOptions,
    prompt: PromptFile,
    schema: Schema | None,
    eval_dir: Path,
    settings: dict[str, Any],
    resumed: bool,
) -> EvalPlan:
    teacher_run: Prepared | None = None
    refused = 0
    sampling = dict(manifest.get("sampling") or {})
    if settings.get("inputs"):
        from gen.eval_inputs import check_fresh, teacher_options

        fresh = check_fresh(Path(settings["inputs"]), out, manifest, prompt, settings["limit"])
        prompt, schema, refused = fresh.prompt, fresh.schema, fresh.refused
        rows: list[dict[str, Any]] = []  # filled by the teacher's run (run_eval)
        run = {
            "max_concurrency": opts.max_concurrency,
            "rpm": opts.rpm,
            "tpm": opts.tpm,
            "max_usd": opts.max_usd,
            "max_retries": opts.max_retries,
            "max_pause_s": opts.max_pause_s,
            "request_timeout_s": opts.request_timeout_s,
            "connect_timeout_s": opts.connect_timeout_s,
            "grace_s": opts.grace_s,
            "progress": opts.progress,
        }
        teacher_run = prepare(
            fresh.prompt.path,
            teacher_options(
                manifest,
                fresh,
                eval_dir / TEACHER,
                base_url=opts.teacher_base_url,
                api_key_env=opts.teacher_api_key_env,
                run=run,
            ),
        )
        sampling = dict(teacher_run.sampling)
    else:
        rows = _teacher_rows(out, manifest, settings["split"], settings["limit"])
        if not rows:
            raise ConfigError(
                out,
                f"the {settings['split']} split has no rows to evaluate on: try --split train or "
                "--split all, or --inputs PROMPT_FILE for fresh inputs",
            )
    student_prompt = dataclasses.replace(
        prompt, spec=prompt.spec.model_copy(update={"teacher": TeacherSpec()})
    )  # the student is not the recipe's teacher: no default of it may leak in
    run_opts = _run_options(opts, eval_dir / ANSWERS)
    student = resolve_teacher(student_prompt, run_opts)
    spec = providers.get(student.provider)
    if spec.check_prompt is not None:
        spec.check_prompt(student_prompt, student.model)
    api_key = None
    if student.api_key_env:
        api_key = os.environ.get(student.api_key_env)
        if not api_key:
            raise ConfigError(
                "--student-api-key-env", f"environment variable {student.api_key_env} is not set"
            )
        check_api_key(api_key, student.api_key_env)
    price = price_for(spec.price_key or student.model)
    if opts.student_price_in is not None or opts.student_price_out is not None:
        price = Price(opts.student_price_in or 0.0, opts.student_price_out or 0.0)
    review = Review(
        decision="ok",
        reasons=["evaluation: the student's answers are measured, not kept as training data"],
        obligations=[],
        licence_id=student.license,
        intended_use=manifest.get("intended_use") or "research",
        acknowledged=False,
    )
    answers = eval_dir / ANSWERS
    previous = load_manifest(answers) if resumed else None
    prepared = Prepared(
        student_prompt,
        schema,
        RecordedTasks(
            rows,
            samples=int(manifest.get("samples") or 1),
            template_sha256=manifest["template"]["sha256"],
        ),
        student,
        api_key,
        answers,
        run_opts,
        sampling,
        price,
        previous,
        {"kind": "eval", "dataset": str(out), "dataset_run_id": manifest.get("run_id")},
        review,
        [],
    )
    return EvalPlan(
        out,
        manifest,
        sha256_file(OutputDir(out).manifest),
        eval_dir,
        resumed,
        prepared,
        rows,
        settings,
        opts,
        teacher_run,
        refused,
    )


def _load_manifest(out: Path) -> dict[str, Any]:
    try:
        manifest = load_manifest(out)
    except (OSError, ValueError) as e:
        raise ConfigError(OutputDir(out).manifest, f"unreadable: {e}") from None
    if manifest is None:
        raise ConfigError(out, NOT_AN_OUTPUT)
    if not isinstance(manifest.get("shards"), list) or "prompt_file" not in manifest:
        raise ConfigError(OutputDir(out).manifest, "not a gen manifest (no shards or prompt_file)")
    return manifest


def _recipe(out: Path, manifest: dict[str, Any]) -> tuple[PromptFile, Schema | None]:
    """The prompt file the dataset was made from (its settings: strict, attempts, [sim], [vllm]) and the
    schema, which must be the one the teacher answered to."""
    recorded = Path(manifest["prompt_file"]["path"])
    try:
        prompt = load_prompt_file(recorded)
    except ConfigError as e:
        raise ConfigError(
            out,
            f"the prompt file its manifest records cannot be loaded ({e}); run gen eval where gen run ran",
        ) from None
    spec = prompt.spec
    schema = load_schema(spec.schema_, base_dir=prompt.base_dir, where=prompt.path) if spec.schema_ else None
    was = (manifest.get("schema") or {}).get("sha256")
    now = schema.sha256 if schema else None
    if was != now:
        raise ConfigError(
            spec.schema_ or prompt.path,
            "the output schema differs from the one the dataset was made with (sha256 in the manifest): "
            "the student would not be asked the same question",
        )
    return prompt, schema


def _safe_name(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", model.rsplit("/", 1)[-1]).strip("._") or "student"


def _eval_dir(out: Path, manifest: dict[str, Any], opts: EvalOptions) -> tuple[Path, dict[str, Any], bool]:
    """The evaluation's directory and settings: `--resume DIR`'s, checked against the flags, or new."""
    if opts.resume is not None:
        d = Path(opts.resume)
        try:
            settings = orjson.loads((d / SETTINGS).read_bytes())
        except (OSError, orjson.JSONDecodeError) as e:
            raise ConfigError("--resume", f"{d} is not an evaluation gen began ({SETTINGS}: {e})") from None
        if Path(settings.get("dataset", "")).resolve() != out.resolve():
            raise ConfigError("--resume", f"{d} evaluates {settings.get('dataset')}, not {out}")
        if settings.get("student_model") != opts.student_model:
            raise ConfigError(
                "--resume",
                f"{d} evaluates student {settings.get('student_model')!r}, not {opts.student_model!r}",
            )
        if (d / REPORT_JSON).exists():
            raise ConfigError("--resume", f"{d} is finished: its report.json is written")
        if settings.get("manifest_sha256") not in (None, sha256_file(OutputDir(out).manifest)):
            raise ConfigError(
                "--resume",
                f"{out} changed since {d} began (its manifest's sha256 differs): begin a new evaluation",
            )
        if opts.inputs is not None and str(opts.inputs) != settings.get("inputs"):
            raise ConfigError("--resume", f"{d} evaluates inputs {settings.get('inputs')}, not {opts.inputs}")
        return d, settings, True
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    base = OutputDir(out).evals / f"{_safe_name(opts.student_model)}-{stamp}"
    d, n = base, 1
    while d.exists():
        n += 1
        d = base.with_name(f"{base.name}-{n}")
    settings = {
        "format": FORMAT,
        "dataset": str(out),
        "student_model": opts.student_model,
        "split": "fresh" if opts.inputs is not None else opts.split,
        "limit": opts.limit,
        "inputs": str(opts.inputs) if opts.inputs is not None else None,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "manifest_sha256": sha256_file(OutputDir(out).manifest),
    }
    return d, settings, False


def _teacher_rows(out: Path, manifest: dict[str, Any], split: str, limit: int | None) -> list[dict[str, Any]]:
    """The dataset's kept rows of `split` (train, eval or all), in shard order, at most `limit`."""
    wanted = ("train", "eval") if split == "all" else (split,)
    # The raw `response` is the teacher's answer only where there is no schema (free text).
    columns = [c for c in _TEACHER_COLUMNS + _TEACHER_USAGE if c != "response" or not manifest.get("schema")]
    rows: list[dict[str, Any]] = []
    for shard in manifest.get("shards", []):
        if shard.get("split") not in wanted:
            continue
        cols = read_columns(out, shard["path"], columns, message_keys=("role", "content"), threads=False)
        names = list(cols)
        rows.extend(dict(zip(names, values, strict=True)) for values in zip(*cols.values(), strict=True))
        if limit is not None and len(rows) >= limit:
            del rows[limit:]
            return rows
    return rows


def _run_options(opts: EvalOptions, answers: Path) -> RunOptions:
    provider = opts.student_provider or ("openai" if opts.student_base_url else None)
    if provider is None:
        raise ConfigError(
            "--student-base-url",
            "where is the student served? give --student-base-url URL (an OpenAI-compatible server such "
            "as `vllm serve`), or --student-provider vllm|sim to have gen start it",
        )
    providers.get(provider, where="--student-provider")  # an unknown name, named by its flag
    urls = opts.student_base_url
    for url in [urls] if isinstance(urls, str) else urls or []:
        check_base_url(url, "--student-base-url")
    return RunOptions(
        provider=provider,
        base_url=opts.student_base_url,
        model=opts.student_model,
        api_key_env=opts.student_api_key_env,
        license="other",
        max_concurrency=opts.max_concurrency,
        output=answers,
        max_retries=opts.max_retries,
        no_model_check=opts.no_model_check,
        max_pause_s=opts.max_pause_s,
        request_timeout_s=opts.request_timeout_s,
        connect_timeout_s=opts.connect_timeout_s,
        max_reply_bytes=opts.max_reply_bytes,
        progress=opts.progress,
        rpm=opts.rpm,
        tpm=opts.tpm,
        grace_s=opts.grace_s,
        vllm=opts.vllm,
        no_near_dedup=True,
        dedup=False,
    )


# ---------------------------------------------------------------------------------- running


class _Requests:
    """Appends each student request's latency and tokens to requests.jsonl, and gives them by id in
    `by_id`: the report of an evaluation that was not resumed reads them there, not from the file (the
    same entries, without parsing them back).

    A request is only noted as it is answered (one tuple appended, on the event loop); its line is
    serialised with the others of a batch of WRITE_EVERY, in one write, so a crash may lose the last few
    latencies, never an answer, which the run's journal holds."""

    WRITE_EVERY = 64

    def __init__(self, path: Path) -> None:
        from gen.ledger import fresh_line

        start = fresh_line(path)  # a SIGKILL can cut the last line short
        self._f = open(path, "ab")  # noqa: SIM115 (closed by close())
        self._f.write(start)
        self._noted: list[tuple[str, int, float | None, int, int]] = []  # answered, not yet written
        # Each written request of this run: (row id, (attempt, latency_ms, prompt_tokens, completion_tokens)).
        # Tuples of plain values: they leave the cyclic collector's sight, and live until the report.
        self._written: list[tuple[str, tuple[int, float | None, int, int]]] = []

    def record(self, task: Task, comp: Any, attempt: int) -> None:
        noted = self._noted
        noted.append((task.id, attempt, comp.latency_s, comp.prompt_tokens, comp.completion_tokens))
        if len(noted) >= self.WRITE_EVERY:
            self._write()

    def _write(self) -> None:
        noted, self._noted = self._noted, []
        if not noted:
            return
        dumps, option, keep = orjson.dumps, orjson.OPT_APPEND_NEWLINE, self._written.append
        lines = []
        for tid, attempt, latency, prompt, completion in noted:
            latency_ms = None if latency is None else round(latency * 1000, 3)
            entry = {
                "id": tid,
                "attempt": attempt,
                "latency_ms": latency_ms,
                "prompt_tokens": prompt,
                "completion_tokens": completion,
            }
            lines.append(dumps(entry, option=option))
            keep((tid, (attempt, latency_ms, prompt, completion)))
        self._f.write(b"".join(lines))
        self._f.flush()

    @property
    def by_id(self) -> RequestLog:
        """Each row's requests, in the order they were answered (what `_request_log` reads back)."""
        self._write()
        by_id: dict[str, tuple[tuple[int, float | None, int, int], ...]] = {}
        get = by_id.get
        for tid, request in self._written:
            earlier = get(tid)
            by_id[tid] = (request,) if earlier is None else (*earlier, request)
        return by_id

    def close(self) -> None:
        try:
            self._write()
        finally:
            self._f.close()


def run_eval(plan: EvalPlan) -> EvalResult:
    """Ask the student (resuming what the eval directory holds), then compare and write the report."""
    from gen.eval_run import StudentRun
    from gen.pipeline import Run, run_loop

    if plan.judge is not None:
        # A judge that cannot be reached stops the evaluation before the student (or, with --inputs,
        # the teacher) gets any request, and before anything is written.
        run_loop(_check_judge(plan))
    plan.eval_dir.mkdir(parents=True, exist_ok=True)
    if not plan.resumed:
        write_json(plan.eval_dir / SETTINGS, plan.settings)
    if plan.teacher_run is not None:
        try:
            asked = run_loop(Run(plan.teacher_run).execute())
        except BaseException:
            if not plan.resumed and not OutputDir(plan.eval_dir / TEACHER).merged_manifest.exists():
                shutil.rmtree(plan.eval_dir, ignore_errors=True)
            raise
        if asked.status != "complete":
            return EvalResult(plan.eval_dir, asked.status, None, asked.message, asked.signal)
        teacher_dir = plan.eval_dir / TEACHER
        plan.teacher_rows.extend(_teacher_rows(teacher_dir, load_manifest(teacher_dir) or {}, "all", None))
        if not plan.teacher_rows:
            raise GenError(f"the teacher kept no answer to the fresh inputs: see {teacher_dir}/rejects/")
    requests = _Requests(plan.eval_dir / REQUESTS)
    run = StudentRun(plan.prepared)
    run.on_reply = requests.record
    try:
        result = run_loop(run.execute())
    except BaseException as e:
        requests.close()
        if not plan.resumed and not any(
            OutputDir(plan.eval_dir / d).merged_manifest.exists() for d in (ANSWERS, TEACHER)
        ):
            shutil.rmtree(plan.eval_dir, ignore_errors=True)  # nothing was answered: leave no trace
        if isinstance(e, ConfigError):
            raise _as_student(e) from None
        raise
    requests.close()
    if result.status != "complete":
        return EvalResult(plan.eval_dir, result.status, None, result.message, result.signal)
    try:
        # A resumed eval's requests.jsonl and shards hold earlier requests and answers too: read them.
        log = None if plan.resumed else requests.by_id
        outcomes = None if plan.resumed else run.outcomes
        report = write_report(
            plan, served=run.served_models, wall_s=result.wall_s, log=log, outcomes=outcomes
        )
    except KeyboardInterrupt:  # Ctrl-C while the judge was asked: its verdicts so far are in judge.jsonl
        from gen.eval_judge import VERDICTS_FILE

        message = f"interrupted while judging (the verdicts so far are kept in {VERDICTS_FILE})"
        return EvalResult(plan.eval_dir, "interrupted", None, message, signal.SIGINT)
    except Exception as e:
        from gen.eval_judge import JudgeBudgetSpent

        if not isinstance(e, JudgeBudgetSpent):
            raise
        return EvalResult(plan.eval_dir, "budget", None, str(e))
    return EvalResult(plan.eval_dir, "complete", report)


def _client_limits(opts: EvalOptions) -> dict[str, Any]:
    return {"request_timeout_s": opts.request_timeout_s, "connect_timeout_s": opts.connect_timeout_s}


async def _check_judge(plan: EvalPlan) -> None:
    from gen.eval_judge import check_reachable

    assert plan.judge is not None and plan.recipe is not None
    await check_reachable(
        plan.judge,
        plan.recipe,
        check_model=not plan.opts.no_model_check,
        max_connections=1,
        **_client_limits(plan.opts),
    )


# ---------------------------------------------------------------------------------- comparing


def _student_rows(answers: Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The student's outcome per id (a data row or a reject) and the answers' manifest."""
    m = load_manifest(answers) or {}
    found: dict[str, dict[str, Any]] = {}
    for shard in m.get("shards", []):
        if shard["split"] in ("train", "eval"):
            cols = read_columns(
                answers,
                shard["path"],
                ["id", "output", "response", "attempts", "prompt_tokens", "completion_tokens"],
            )
            valid = True
        elif shard["split"] == "rejects":
            cols = read_columns(answers, shard["path"], ["id", "reason", "response", "attempts"])
            valid = False
        else:
            continue
        names = [*cols, "valid"]
        for values in zip(*cols.values(), strict=True):
            found[values[0]] = dict(zip(names, (*values, valid), strict=True))
    return found, m


def _request_log(path: Path) -> RequestLog:
    """requests.jsonl read back (a resumed evaluation's: it holds the earlier runs' requests too)."""
    by_id: dict[str, list[tuple[int, float | None, int, int]]] = {}
    try:
        lines = path.read_bytes().splitlines()
    except OSError:
        return {}
    for line in lines:
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:  # a line a crash cut short
            continue
        by_id.setdefault(entry["id"], []).append(
            (entry["attempt"], entry.get("latency_ms"), entry["prompt_tokens"], entry["completion_tokens"])
        )
    return dict(by_id.items())


def _attempt(request: tuple[int, float | None, int, int]) -> int:
    return request[0]


def _parse(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


def _judge_free_text(
    plan: EvalPlan, pairs: list[tuple[str, Pair]], no_answer: int
) -> tuple[dict[str, Any], dict[str, str]] | None:
    """The LLM judge's verdicts on free-text answers: `pairs` of (row id, Pair of the conversation, the
    student's and the teacher's answer), `no_answer` rows the student gave no valid answer to. Returns
    report.json's `judge` (gen.eval_judge.figures: identity, counts, win / tie / loss / non-loss with
    95% Wilson intervals) and each row's verdict; None with --no-judge. Verdicts judge.jsonl holds from
    an interrupted run of this judge are reused, new ones appended as they arrive."""
    from gen.eval_judge import VERDICTS_FILE, VerdictLog, figures, judge_rows
    from gen.pipeline import run_loop

    if plan.judge is None:
        return None
    opts = plan.opts
    assert plan.recipe is not None
    log = VerdictLog(plan.eval_dir / VERDICTS_FILE, plan.judge)
    price = _teacher_price({"provider": plan.judge.provider, "model": plan.judge.model})
    # --max-usd bounds what gen pays for: the fresh inputs' teacher first, then the judge.
    teacher = load_manifest(plan.eval_dir / TEACHER) if plan.teacher_run is not None else None
    spent = float((teacher or {}).get("cost_usd") or 0.0)
    verdicts = run_loop(
        judge_rows(
            plan.judge,
            plan.recipe,
            pairs,
            log,
            max_concurrency=plan.prepared.teacher.max_concurrency,
            rpm=opts.rpm,
            tpm=opts.tpm,
            max_retries=opts.max_retries,
            max_pause_s=opts.max_pause_s,
            **_client_limits(opts),
            say=(lambda line: print(f"gen eval: {line}", file=sys.stderr)) if opts.progress else None,
            max_usd=opts.max_usd,
            spent_usd=spent,
            price=price,
        )
    )
    wanted = {tid for tid, _ in pairs}
    verdicts = {tid: v for tid, v in verdicts.items() if tid in wanted}
    # The judge's tokens: every pair judged for these rows, in this run or (judge.jsonl) an earlier one.
    used = [log.usage.get(tid, (0, 0)) for tid in verdicts]
    tokens = (sum(u[0] for u in used), sum(u[1] for u in used))
    return figures(plan.judge, verdicts, no_answer, tokens, price), verdicts


def write_report(
    plan: EvalPlan,
    *,
    served: list[str],
    wall_s: float,
    log: RequestLog | None = None,
    outcomes: dict[str, dict[str, Any]] | None = None,
) -> EvalReport:
    """Compare every answered row with the teacher's; write results.parquet, report.json, report.md and
    the dataset card's Evaluation section. `log`: each request's entry by row id, as requests.jsonl
    holds them (None: read the file); `outcomes`: the student's outcome by row id, as the answers'
    shards hold them (gen.eval_run.outcome; None: read the shards)."""
    schema = plan.prepared.schema
    specs = field_specs(schema.json_schema) if schema else free_text_specs()
    comparison = Comparison(specs)
    answers = plan.eval_dir / ANSWERS
    if outcomes is None:
        student, answers_manifest = _student_rows(answers)
    else:
        student, answers_manifest = outcomes, load_manifest(answers) or {}
    if log is None:
        log = _request_log(plan.eval_dir / REQUESTS)
    pairs: list[tuple[str, Pair]] = []
    no_answer = 0
    columns = [
        ("id", "string"),
        ("split", "string"),
        ("valid", "bool"),
        ("first_answer_valid", "bool"),
        ("attempts", "int64"),
        ("reason", "string"),
        ("student_response", "string"),
        ("student_output", "string"),
        ("teacher_output", "string"),
        ("agrees", "bool"),
        ("latency_ms", "float64"),
        ("prompt_tokens", "int64"),
        ("completion_tokens", "int64"),
    ]
    for spec in specs:
        columns.append((f"match.{spec.name}", "bool"))
        if spec.kind == "text":
            columns.append((f"f1.{spec.name}", "float64"))
    rows = plan.teacher_rows
    ids = [t["id"] for t in rows]
    outcome = [student.get(tid) for tid in ids]  # None: the student's run decided nothing for it
    oks = [s is not None and s["valid"] for s in outcome]
    scores: list[RowScore] = []
    score = scores.append
    same = identical_score(specs)
    if schema is None:
        from gen.judge import Pair
    tolerance = plan.opts.tolerance
    add, add_same = comparison.add, comparison.add_same
    # The comparison, row by row; every other column is built column by column below.
    for t, s, ok in zip(rows, outcome, oks, strict=True):
        if schema is not None:
            t_output = t["output"]
            t_answer = _parse(t_output)
            if ok and s["output"] == t_output and isinstance(t_answer, dict):
                # The student's validated answer is the teacher's, byte for byte (both were serialised
                # by the same schema): one parse, and score_row's result without its per-field work.
                score(same)
                add_same(t_answer)
            else:
                s_answer = _parse(s["output"]) if ok else None
                row_score = score_row(specs, t_answer, s_answer, tolerance=tolerance)
                score(row_score)
                add(row_score, t_answer, s_answer)
        else:
            t_answer = t["response"]
            s_answer = s["response"] if ok else None
            row_score = score_text(t_answer, s_answer)
            if s_answer is not None:
                pairs.append((t["id"], Pair(t["messages"], teacher=t_answer, student=s_answer)))
            else:
                no_answer += 1
            score(row_score)
            add(row_score, t_answer, s_answer)
    teacher_tokens = [
        sum(t["prompt_tokens"] or 0 for t in rows),
        sum(t["completion_tokens"] or 0 for t in rows),
    ]
    attempts = [None if s is None else s["attempts"] for s in outcome]
    first = [ok and a == 1 for ok, a in zip(oks, attempts, strict=True)]
    valid, first_valid = sum(oks), sum(first)
    # Each row's requests (attempt, latency_ms, prompt_tokens, completion_tokens): the first's latency,
    # the tokens of all; every latency counts for the percentiles.
    requests = [log.get(tid) for tid in ids]
    latency: list[float | None] = []
    prompt: list[int | None] = []
    completion: list[int | None] = []
    latencies: list[float] = []
    for r in requests:
        if r is None:
            latency.append(None)
            prompt.append(None)
            completion.append(None)
        elif len(r) == 1:
            ((_, first_ms, p, c),) = r
            latency.append(first_ms)
            prompt.append(p)
            completion.append(c)
            if first_ms is not None:
                latencies.append(first_ms)
        else:
            first_ms = min(r, key=_attempt)[1]
            latency.append(first_ms)
            prompt.append(sum(x[2] for x in r))
            completion.append(sum(x[3] for x in r))
            if first_ms is not None:
                latencies.extend(x[1] for x in r if x[1] is not None)
    results: dict[str, list[Any]] = {
        "id": ids,
        "split": [t["split"] for t in rows],
        "valid": oks,
        "first_answer_valid": [bool(f) for f in first],
        "attempts": attempts,
        "reason": [None if s is None else s.get("reason") for s in outcome],
        "student_response": [None if s is None else s.get("response") for s in outcome],
        "student_output": [s.get("output") if ok else None for s, ok in zip(outcome, oks, strict=True)],
        "teacher_output": [t["output"] if schema is not None else t["response"] for t in rows],
        "agrees": [sc.agrees for sc in scores],
        "latency_ms": latency,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
    }
    for spec in specs:
        name = spec.name
        results[f"match.{name}"] = [sc.match[name] for sc in scores]
        if spec.kind == "text":
            results[f"f1.{name}"] = [sc.f1.get(name) for sc in scores]

    judged = _judge_free_text(plan, pairs, no_answer) if schema is None else None
    if judged is not None:
        from gen.eval_judge import NO_ANSWER

        columns.append(("judge", "string"))
        results["judge"] = [
            judged[1].get(tid, NO_ANSWER if not ok else None)
            for tid, ok in zip(results["id"], results["valid"], strict=True)
        ]
    write_eval_columns(plan.eval_dir / RESULTS, results, columns)

    n = len(plan.teacher_rows)
    usage = answers_manifest.get("usage") or {}
    s_prompt, s_completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    teacher = plan.manifest.get("teacher") or {}
    teacher_price = _teacher_price(teacher)
    student_cost, basis = _student_cost(plan, s_prompt, s_completion, wall_s)
    opts = plan.opts
    data: dict[str, Any] = {
        "format": FORMAT,
        "eval_id": plan.eval_dir.name,
        "created_at": plan.settings.get("created_at"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "dataset": {
            "path": str(plan.dataset),
            "manifest_sha256": plan.manifest_sha256,
            "run_id": plan.manifest.get("run_id"),
            "template": (plan.manifest.get("template") or {}).get("name"),
            "template_version": (plan.manifest.get("template") or {}).get("version"),
        },
        "student": {
            "provider": plan.prepared.teacher.provider,
            "model": plan.prepared.teacher.model,
            "served_models": served,
            "base_urls": [u for u in (answers_manifest.get("teacher") or {}).get("base_urls") or []],
        },
        "teacher": {"provider": teacher.get("provider"), "model": teacher.get("model")},
        "split": plan.settings["split"],
        "inputs": plan.settings.get("inputs"),
        "refused_inputs": plan.refused,
        "rows": n,
        "limit": plan.settings.get("limit"),
        "schema": (plan.manifest.get("schema") or {}).get("ref"),
        "tolerance": opts.tolerance,
        "agreement": comparison.agreement().as_dict(),
        "agreement_rule": (
            "every categorical field matches"
            if any(s.kind == "categorical" for s in specs)
            else ("every field matches" if schema is not None else "normalised exact match of the answer")
        ),
        "valid": _rate(valid, n),
        "first_answer_valid": _rate(first_valid, n),
        "fields": comparison.fields(),
        "judge": judged[0] if judged is not None else (NOT_JUDGED if schema is None else None),
        "tokens_per_row": {
            "student": _per_row(s_prompt, s_completion, n),
            "teacher": _per_row(*teacher_tokens, n),
        },
        "latency_ms": {
            "requests": len(latencies),
            "p50": percentile(latencies, 50),
            "p95": percentile(latencies, 95),
        },
        "cost_per_1000_rows_usd": {
            "student": student_cost,
            "student_basis": basis,
            "teacher": None if teacher_price is None else teacher_price.cost(*teacher_tokens) / n * 1000,
            "teacher_basis": "price table" if teacher_price is not None else "unpriced",
            **_judge_cost(judged[0] if judged is not None else None, n),
        },
        "wall_s": round(wall_s, 6),
    }
    data["gate"] = gate_verdict(data, opts.min_agreement, opts.min_valid)
    report = EvalReport.from_dict(plan.eval_dir, data)
    write_json(plan.eval_dir / REPORT_JSON, data)
    atomic_write_bytes(plan.eval_dir / REPORT_MD, render_markdown(data).encode())
    _refresh_card(plan.dataset)
    return report


def _teacher_price(teacher: dict[str, Any]) -> Price | None:
    key = teacher.get("model") or ""
    if teacher.get("provider") in providers.names():
        key = providers.get(teacher["provider"]).price_key or key
    return price_for(key)


def _judge_cost(judge: dict[str, Any] | None, n: int) -> dict[str, Any]:
    """cost_per_1000_rows_usd's `judge` and `judge_basis` for a judged evaluation ({} otherwise): the
    judge's requests priced from the price table, per 1,000 evaluated rows."""
    if judge is None:
        return {}
    cost = judge["cost_usd"]
    return {
        "judge": None if cost is None else cost / n * 1000,
        "judge_basis": "price table" if cost is not None else "unpriced",
    }


def _rate(k: int, n: int) -> dict[str, Any]:
    from gen.eval_compare import Rate

    return Rate(k, n).as_dict()


def _per_row(prompt: int, completion: int, n: int) -> dict[str, float]:
    return {
        "prompt": prompt / n,
        "completion": completion / n,
        "total": (prompt + completion) / n,
    }


def _student_cost(plan: EvalPlan, prompt: int, completion: int, wall_s: float) -> tuple[float | None, str]:
    n = len(plan.teacher_rows)
    opts = plan.opts
    if opts.student_gpu_hour_usd is not None:
        cost = opts.student_gpu_hour_usd * wall_s / 3600 / n * 1000
        return cost, "--student-gpu-hour-usd x this evaluation's wall time"
    price = plan.prepared.price
    if price is None:
        return None, "unpriced: pass --student-price-in/out or --student-gpu-hour-usd"
    given = opts.student_price_in is not None or opts.student_price_out is not None
    return price.cost(prompt, completion) / n * 1000, "--student-price-in/out" if given else "price table"


def _refresh_card(dataset: Path) -> None:
    """Re-render the dataset card, whose Evaluation section lists every finished evaluation."""
    from gen.card import write_card

    manifest = load_manifest(dataset)
    if manifest is not None:
        write_card(dataset, manifest)


# ---------------------------------------------------------------------------------- the API


def evaluate(output_dir: str | Path, *, student: str, **options: Any) -> EvalReport:
    """Evaluate model `student` against the teacher of the dataset in `output_dir`; returns the report.

    `options` are EvalOptions' fields (student_base_url=..., split=..., min_agreement=...). Raises
    ConfigError for bad input, EvalInterrupted when the run stopped before every row was answered
    (resume with `resume=` its eval_dir); the gate's verdict is `report.passed`."""
    options.setdefault("progress", False)
    plan = prepare_eval(output_dir, EvalOptions(student_model=student, **options))
    result = run_eval(plan)
    if result.report is None:
        raise EvalInterrupted(result)
    return result.report


class EvalInterrupted(Exception):
    """The evaluation stopped before every row was answered; what arrived is committed."""

    def __init__(self, result: EvalResult) -> None:
        self.result = result
        super().__init__(
            f"evaluation {result.status} ({result.message or 'stopped'}): "
            f"resume with resume={result.eval_dir}"
        )


def _as_student(e: ConfigError) -> ConfigError:
    """A check of the run that asks the student (gen.teachers.checks) speaks of the teacher and of gen
    run's flags: say who it is about, and the flag of gen eval."""
    problem = e.problem.replace("the teacher", "the student")
    problem = problem.replace("pass --model ", "pass --student-model ")
    return ConfigError(f"student {e.where}" if e.where else "student", problem)


def compare_evals(a: str | Path, b: str | Path) -> dict[str, Any]:
    """Two finished evaluations' reports, field by field (gen.eval_report.compare_reports)."""
    from gen.eval_report import compare_reports

    reports = [(Path(d) / REPORT_JSON, _read_report(Path(d))) for d in (a, b)]
    for path, data in reports:  # a report is untrusted input (hand-edited, another version): one line
        try:
            if not isinstance(data.get("fields"), dict):
                raise TypeError("fields is not an object")
            compare_reports(data, data)
        except (KeyError, TypeError, AttributeError, ValueError, IndexError) as e:
            raise ConfigError(path, f"malformed report ({type(e).__name__}: {e})") from None
    return compare_reports(reports[0][1], reports[1][1])


def _read_report(d: Path) -> dict[str, Any]:
    try:
        data = orjson.loads((d / REPORT_JSON).read_bytes())
    except FileNotFoundError:
        raise ConfigError(d, f"no {REPORT_JSON}: not a finished evaluation") from None
    except (OSError, orjson.JSONDecodeError) as e:
        raise ConfigError(d / REPORT_JSON, f"unreadable: {e}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(d / REPORT_JSON, f"not a {FORMAT} report")
    return data


__all__ = [
    "EvalInterrupted",
    "EvalOptions",
    "EvalPlan",
    "EvalReport",
    "EvalResult",
    "compare_evals",
    "evaluate",
    "prepare_eval",
    "run_eval",
    "summary_line",
]
