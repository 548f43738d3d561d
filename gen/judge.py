"""The free-text judge: an LLM compares the student's answer with the teacher's, pairwise, both ways.

For each pair the judge is asked twice with the same conversation: first with the teacher's answer as
A and the student's as B, then swapped, so a judge that favours a position cancels out. Each reply must
end with a strict verdict line (`VERDICT: A`, `VERDICT: B` or `VERDICT: TIE`, case-insensitive, on the
last non-empty line); a reply without one is asked again (`max_attempts` asks in all per order), then
that order counts as unparseable. The two orders' outcomes for the student (+1 preferred, 0 tie, -1 the
teacher preferred) make the pair's verdict (`combine`):

    win   the sum is positive: the student wins both orders, or wins one and ties the other
    loss  the sum is negative: the teacher wins both, or wins one and ties the other
    tie   the sum is zero: a tie both times, or one order each (a judge that follows the position)
    unparseable  an order gave no verdict after its asks (a pair is never decided on one order, so the
                 second order is then not asked)
    error the judge could not be asked (a request failed after its retries; 401/403 is raised instead)

The judge's replies are untrusted text: nothing but the verdict line is read from them.

The prompt ships as gen/prompts/judge.md (in the wheel): a Jinja2 template (sandboxed) rendered with
`conversation` (the turns the teacher was given, one `ROLE: content` block each), `answer_a` and
`answer_b`; it is sent as one user message. `prompt_path` replaces it; a template that uses another
variable or does not parse is a ConfigError naming the file.

The calls go through a gen.teachers client (any `Teacher`: a provider's client, or one wrapped in
gen.limits.LimitedTeacher so the run's rpm/tpm/concurrency apply) with gen.retry's policy. This module
creates no asyncio task (only the pipeline does): `judge_pair` judges one pair, and `judge_pairs` goes
through a list in order; concurrency comes from the caller's workers calling `judge_pair`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
from jinja2.sandbox import SandboxedEnvironment

from gen.errors import ConfigError, FatalTeacherError, TeacherError
from gen.retry import RetryPolicy, with_retries
from gen.teachers.base import Teacher

VERDICTS = ("win", "tie", "loss", "unparseable", "error")
VARIABLES = frozenset({"conversation", "answer_a", "answer_b"})
# max_tokens: a verdict needs few tokens; it bounds what a request may cost (--max-usd reserves it).
DEFAULT_SAMPLING: Mapping[str, Any] = {"temperature": 0.0, "max_tokens": 512}
_VERDICT = re.compile(r"^\s*\**\s*verdict\s*\**\s*:\s*\**\s*(a|b|tie)\s*\**\s*\.?\s*$", re.IGNORECASE)


def default_prompt_path() -> Path:
    """Where the shipped judge prompt is (inside the installed package)."""
    return Path(str(resources.files("gen") / "prompts" / "judge.md"))


@dataclass(frozen=True, slots=True)
class Pair:
    """One comparison: the turns the teacher was given (system and user; a last assistant turn, the
    recorded answer of a data row's `messages`, is left out), the teacher's answer and the student's."""

    messages: Sequence[Mapping[str, str]]
    teacher: str
    student: str


@dataclass(frozen=True, slots=True)
class JudgePrompt:
    """A loaded judge prompt: `render(messages, answer_a, answer_b)` gives the request's messages."""

    path: Path
    template: jinja2.Template

    def render(
        self, messages: Sequence[Mapping[str, str]], answer_a: str, answer_b: str
    ) -> list[dict[str, str]]:
        if messages and messages[-1].get("role") == "assistant":  # a data row's messages: its answer last
            messages = messages[:-1]
        turns = (f"{m.get('role', 'user').upper()}: {_defuse(m.get('content', ''))}" for m in messages)
        conversation = "\n\n".join(turns)
        text = self.template.render(
            conversation=conversation, answer_a=_defuse(answer_a), answer_b=_defuse(answer_b)
        )
        return [{"role": "user", "content": text}]


_TAG = re.compile(r"<(/?)\s*(answer_a|answer_b|conversation)\s*>", re.IGNORECASE)


def _defuse(text: str) -> str:
    """The text with the prompt's own tags broken (a zero-width space after the `<`), so an answer cannot
    close its block and open a forged one: the student's and teacher's answers are untrusted too."""
    return _TAG.sub(lambda m: f"<{m.group(1)}\u200b{m.group(2)}>", text)


def load_prompt(path: str | Path | None = None) -> JudgePrompt:
    """The judge prompt at `path` (default: the shipped one). ConfigError naming the file when it cannot
    be read, does not parse, or uses a variable other than conversation, answer_a, answer_b."""
    p = Path(path) if path is not None else default_prompt_path()
    try:
        source = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(p, f"judge prompt cannot be read: {getattr(e, 'strerror', None) or e}") from None
    env = SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)
    try:
        unknown = sorted(jinja2.meta.find_undeclared_variables(env.parse(source)) - VARIABLES)
        template = env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise ConfigError(p, f"judge prompt: template syntax error on line {e.lineno}: {e.message}") from None
    if unknown:
        raise ConfigError(
            p, f"judge prompt uses unknown variable {unknown[0]!r} (known: {', '.join(sorted(VARIABLES))})"
        )
    if "answer_a" not in source or "answer_b" not in source:
        raise ConfigError(p, "judge prompt must show both answers ({{ answer_a }} and {{ answer_b }})")
    return JudgePrompt(p, template)


def request_reservation(
    messages: Sequence[Mapping[str, str]], sampling: Mapping[str, Any] | None = None
) -> tuple[int, int]:
    """What one judge request may cost at most, as (prompt, completion) tokens: its prompt estimated as
    `gen run` estimates a teacher's (gen.limits.estimate_tokens) and the request's max_tokens."""
    from gen.limits import estimate_tokens, max_completion

    return estimate_tokens(list(messages), 0), max_completion(
        DEFAULT_SAMPLING if sampling is None else sampling
    )


def pair_reservation(
    pair: Pair, prompt: JudgePrompt, sampling: Mapping[str, Any] | None = None
) -> tuple[int, int]:
    """What `judge_pair` may cost at most when each order is asked once: its two requests' reservations
    (`request_reservation`) summed; a request asked again costs one more request's reservation."""
    total = (0, 0)
    for answer_a, answer_b in ((pair.teacher, pair.student), (pair.student, pair.teacher)):
        p, c = request_reservation(prompt.render(pair.messages, answer_a, answer_b), sampling)
        total = (total[0] + p, total[1] + c)
    return total


def parse_verdict(reply: str) -> str | None:
    """ "A", "B" or "TIE" from the reply's last non-empty line when it is a verdict line; else None."""
    lines = [line for line in reply.splitlines() if line.strip()]
    if not lines:
        return None
    m = _VERDICT.match(lines[-1])
    return m.group(1).upper() if m else None


def combine(first: int | None, second: int | None) -> str:
    """The pair's verdict from the student's outcome in each order (+1, 0, -1; None: unparseable)."""
    if first is None or second is None:
        return "unparseable"
    total = first + second
    return "win" if total > 0 else "loss" if total < 0 else "tie"


async def _ask(
    client: Teacher,
    messages: list[dict[str, str]],
    *,
    seed: int,
    sampling: Mapping[str, Any],
    max_attempts: int,
    policy: RetryPolicy,
) -> str | None:
    """The verdict ("A", "B", "TIE") of one order, asking again while the reply has none; None when
    `max_attempts` replies had none. TeacherError propagates once gen.retry's retries are spent."""
    for attempt in range(max_attempts):
        comp = await with_retries(
            lambda s=seed + attempt: client.complete(messages, seed=s, sampling=sampling), policy
        )
        verdict = parse_verdict(comp.text)
        if verdict is not None:
            return verdict
    return None


async def judge_pair(
    pair: Pair,
    *,
    client: Teacher,
    prompt: JudgePrompt,
    seed: int = 0,
    sampling: Mapping[str, Any] | None = None,
    max_attempts: int = 3,
    retry_policy: RetryPolicy | None = None,
) -> str:
    """One pair's verdict for the student: "win", "tie", "loss", "unparseable" or "error" (see the
    module's docstring). Two requests at least, one per order. FatalTeacherError (401/403) is raised."""
    sampling = DEFAULT_SAMPLING if sampling is None else sampling
    policy = retry_policy or RetryPolicy()
    outcomes: list[int | None] = []
    # Order 1: teacher as A, student as B; order 2 swapped. The student's outcome in each.
    orders = ((pair.teacher, pair.student, "B"), (pair.student, pair.teacher, "A"))
    for answer_a, answer_b, student_is in orders:
        messages = prompt.render(pair.messages, answer_a, answer_b)
        try:
            v = await _ask(
                client, messages, seed=seed, sampling=sampling, max_attempts=max_attempts, policy=policy
            )
        except FatalTeacherError:
            raise
        except TeacherError:
            return "error"
        if v is None:  # the pair cannot be decided on one order: the other is not asked
            return "unparseable"
        outcomes.append(0 if v == "TIE" else 1 if v == student_is else -1)
    return combine(outcomes[0], outcomes[1])


async def judge_pairs(
    pairs: Iterable[Pair],
    *,
    client: Teacher,
    model: str | None = None,
    prompt_path: str | Path | None = None,
    seed: int = 0,
    sampling: Mapping[str, Any] | None = None,
    max_attempts: int = 3,
    retry_policy: RetryPolicy | None = None,
) -> list[str]:
    """The verdict of each pair, in order (see `judge_pair`). `client` is bound to the judge's model
    (`model` is only named in errors); `prompt_path` replaces the shipped prompt (checked before the
    first request: ConfigError). The pairs are judged one after another: for concurrency call
    `judge_pair` from the pipeline's workers."""
    prompt = load_prompt(prompt_path)
    out: list[str] = []
    for i, pair in enumerate(pairs):
        try:
            out.append(
                await judge_pair(
                    pair,
                    client=client,
                    prompt=prompt,
                    seed=seed + 2 * i * max_attempts,
                    sampling=sampling,
                    max_attempts=max_attempts,
                    retry_policy=retry_policy,
                )
            )
        except FatalTeacherError as e:
            raise ConfigError(f"judge {model}" if model else "judge", f"refused the request: {e}") from None
    return out


def tally(verdicts: Iterable[str]) -> dict[str, int]:
    """Counts of each verdict (every one of VERDICTS, zeros included)."""
    counts = dict.fromkeys(VERDICTS, 0)
    for v in verdicts:
        counts[v] += 1
    return counts


async def check_judge_reachable(client: Any, model: str, *, check_model: bool = True) -> list[str]:
    """Before any request to the student: the judge answers its model listing and lists `model`
    (gen.teachers.checks.check_teacher). Raises ConfigError (exit 2), one line that says it is the judge
    that cannot be reached, a refused key (401/403) included; returns the models it lists."""
    from gen.teachers.checks import check_teacher

    try:
        return await check_teacher(client, model, check_model=check_model)
    except ConfigError as e:
        raise ConfigError(f"judge {e.where}" if e.where else "judge", e.problem) from None
    except FatalTeacherError as e:
        raise ConfigError(f"judge {getattr(client, 'base_url', '')}".strip(), f"refused: {e}") from None


def open_judge(
    provider: str,
    base_url: str,
    model: str,
    *,
    api_key: str | None = None,
    max_connections: int = 8,
    request_timeout_s: float = 600.0,
    connect_timeout_s: float = 10.0,
) -> Any:
    """A client for the judge from the provider registry (free text: no schema). Close it when done."""
    from gen.teachers import providers

    cls = providers.get(provider).client_class()
    return cls(
        base_url,
        model,
        api_key=api_key,
        schema=None,
        strict=False,
        max_connections=max_connections,
        request_timeout_s=request_timeout_s,
        connect_timeout_s=connect_timeout_s,
        max_reply_bytes=None,
    )
