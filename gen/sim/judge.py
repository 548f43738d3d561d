"""The simulator as an LLM judge (SimConfig.judge): deterministic verdicts, so tests can count them.

A request is a judge request when its last user message shows two answers between `<answer_a>` and
`<answer_b>` tags (as gen/prompts/judge.md does); any other request is answered as usual. Modes:

    longer    the answer with more words wins; the same number of words: TIE
    longer_a  as longer, but the same number of words: A (a judge biased to the first position)
    first     always A (a judge that only follows the position)
    garbage   a reply without a verdict line (the unparseable judge)

With `long` (SimConfig.long_after: after its first `long_after` ok requests) the verdict line comes after
a rationale of about 390 tokens (under the 512 max_tokens gen's judge asks for): a judge whose later
verdicts cost far more than its first ones.
"""

from __future__ import annotations

import re
from typing import Any

MODES = ("longer", "longer_a", "first", "garbage")
_A = re.compile(r"<answer_a>(.*?)</answer_a>", re.S)
_B = re.compile(r"<answer_b>(.*?)</answer_b>", re.S)
GARBAGE = "Both answers have merits; it depends on what the user values most."
RATIONALE = " ".join(["The two answers differ in length, in detail and in how they are structured."] * 20)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # Anthropic content blocks
        return " ".join(b.get("text", "") for b in content if isinstance(b, dict))
    return ""


def answers(messages: list[Any]) -> tuple[str, str] | None:
    """(answer A, answer B) of a judge request, or None when it is not one."""
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        return None
    text = _text(users[-1].get("content"))
    a, b = _A.search(text), _B.search(text)
    if a is None or b is None:
        return None
    return a.group(1).strip(), b.group(1).strip()


def reply(messages: list[Any], mode: str, garbage: bool = False, long: bool = False) -> str | None:
    """The judge's reply to `messages` in `mode` (`garbage`: a reply without a verdict this time; `long`:
    the verdict after a long rationale); None when the request is not a judge request."""
    pair = answers(messages)
    if pair is None:
        return None
    if garbage or mode == "garbage":
        return GARBAGE
    if mode == "first":
        verdict = "A"
    else:
        la, lb = len(pair[0].split()), len(pair[1].split())
        verdict = "A" if la > lb else "B" if lb > la else ("A" if mode == "longer_a" else "TIE")
    why = f"{RATIONALE}\n" if long else ""
    return f"{why}Answer {verdict} is the better one here.\nVERDICT: {verdict}"
