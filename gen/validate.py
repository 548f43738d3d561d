"""Turning a teacher's reply into validated output: JSON extraction, schema validation, repair prompts."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from gen.schema import Schema, SchemaMismatch

_FENCE = re.compile(r"```(?:json|JSON)?[ \t]*\r?\n?(.*?)```", re.DOTALL)


def extract_json(text: str) -> str | None:
    """The JSON text inside a reply: the whole reply, a ```json fence, or the outermost {...} / [...]."""
    stripped = text.strip()
    if stripped[:1] in ("{", "["):
        return stripped
    m = _FENCE.search(text)
    if m:
        return m.group(1).strip()
    for open_, close in (("{", "}"), ("[", "]")):
        start, end = text.find(open_), text.rfind(close)
        if start != -1 and end > start:
            return text[start : end + 1]
    return None


@dataclass(slots=True)
class Verdict:
    """Either the validated output as compact JSON text, or a reason and an error message."""

    output_json: str | None = None
    reason: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None

    @property
    def output(self) -> Any:
        return orjson.loads(self.output_json) if self.output_json is not None else None


def check(text: str, schema: Schema | None, *, truncated: bool = False) -> Verdict:
    """Validate one reply. Without a schema, any non-empty text is a valid answer.

    `truncated`: the teacher stopped at max_tokens (finish_reason "length"); such a reply is rejected
    with reason `truncated` whatever its text, since a cut-off answer teaches a student to stop mid-way.
    """
    if truncated:
        return Verdict(reason="truncated", error="the reply was cut off at max_tokens (finish_reason length)")
    if schema is None:
        if not text.strip():
            return Verdict(reason="empty", error="the reply is empty")
        return Verdict()
    json_text = extract_json(text)
    if json_text is None:
        return Verdict(reason="invalid_json", error="the reply contains no JSON object")
    try:
        output_json = schema.validate(json_text)
    except orjson.JSONDecodeError as e:
        return Verdict(reason="invalid_json", error=f"the reply is not valid JSON: {e}")
    except SchemaMismatch as e:
        # pydantic reports JSON syntax errors as validation errors of type json_invalid
        reason = "invalid_json" if "Invalid JSON" in str(e) else "schema_validation"
        return Verdict(reason=reason, error=str(e))
    return Verdict(output_json=output_json)


def repair_messages(messages: list[dict[str, str]], reply: str, error: str) -> list[dict[str, str]]:
    """The conversation for a re-ask: the bad reply and what was wrong with it."""
    return [
        *messages,
        {"role": "assistant", "content": reply},
        {
            "role": "user",
            "content": f"Your reply was not valid: {error}\n"
            "Answer again with only the corrected JSON object, no other text.",
        },
    ]
