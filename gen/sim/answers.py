"""The simulator as a teacher with a reference to get right (`[sim] answer_from`, `wrong_share`).

gen fills `SimConfig.answers` (the key of an input's first user message -> its reference, see
gen.verify.sim_answers); the simulator then ends each answer to such an input with that reference, in
`\\boxed{}` (in field `answer_field` of a JSON answer), except for a `wrong_share` of requests, where the
reference is perturbed. Which requests are wrong is a pure function of the request's salt (the seed it
sent, on the OpenAI path) and the input (`is_wrong`), so tests can tell in advance which answers fail.
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Any

from gen.sim.instances import sentences

_INTEGER = re.compile(r"-?\d+")


def prompt_key(messages: list[Any]) -> str:
    """The key of a conversation: a hash of its first user message (re-asks keep it)."""
    for m in messages:
        if isinstance(m, dict) and m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, list):  # content parts / blocks: their text
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            return hashlib.sha256(str(content).encode()).hexdigest()[:32]
    return ""


def is_wrong(salt: bytes, key: str, share: float) -> bool:
    """Whether the simulator answers the input `key` wrongly for a request with `salt` (the OpenAI
    path's salt is `str(seed).encode()`)."""
    if share <= 0:
        return False
    digest = hashlib.sha256(b"gen-sim-wrong\0" + salt + b"\0" + key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def perturb(reference: str) -> str:
    """A wrong answer close to `reference`: an integer plus one, else the reference plus one."""
    s = reference.strip()
    if _INTEGER.fullmatch(s):
        return str(int(s) + 1)
    return f"{s}+1"


def answer_for(messages: list[Any], salt: bytes, answers: dict[str, str], share: float) -> str | None:
    """The final answer the simulator gives to this conversation, or None when it has no reference."""
    key = prompt_key(messages)
    reference = answers.get(key)
    if reference is None:
        return None
    return perturb(reference) if is_wrong(salt, key, share) else reference


def reasoned_text(answer: str, rng: random.Random) -> str:
    """A free-text answer: some working, then the final answer boxed."""
    return (
        f"Let me work through this step by step. {sentences(rng, rng.randint(20, 40))}\n\n"
        f"So the final answer is \\boxed{{{answer}}}."
    )


def with_answer(value: Any, field: str | None, answer: str) -> Any:
    """A JSON answer (`value`, drawn from the schema) with `answer` in its `field`, typed as the drawn
    value was (a number stays a number)."""
    if field is None or not isinstance(value, dict) or field not in value:
        return value
    drawn = value[field]
    typed: Any = answer
    try:
        if isinstance(drawn, int) and not isinstance(drawn, bool):
            typed = int(answer)
        elif isinstance(drawn, float):
            typed = float(answer)
    except ValueError:
        pass
    return {**value, field: typed}


__all__ = ["answer_for", "is_wrong", "perturb", "prompt_key", "reasoned_text", "with_answer"]
