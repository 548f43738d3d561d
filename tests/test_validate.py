from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gen.schema import load_schema
from gen.validate import check, extract_json, repair_messages

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fact():
    return load_schema("schemas/quickstart.py:Fact", base_dir=ROOT, where=ROOT / "x.toml")


@pytest.fixture(scope="module")
def qa():
    return load_schema("schemas/passage_qa.json", base_dir=ROOT, where=ROOT / "x.toml")


GOOD = {"topic": "tides", "fact": "The Moon pulls the sea.", "difficulty": "easy"}


def test_plain_json(fact) -> None:
    v = check(orjson.dumps(GOOD).decode(), fact)
    assert v.ok and v.output == GOOD and orjson.loads(v.output_json) == GOOD


def test_fenced_json_is_extracted(fact) -> None:
    text = "Here you go:\n```json\n" + orjson.dumps(GOOD).decode() + "\n```\nAnything else?"
    assert check(text, fact).output == GOOD


def test_json_inside_prose(fact) -> None:
    assert check("Sure! " + orjson.dumps(GOOD).decode() + " Hope it helps.", fact).output == GOOD


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("no json here", "invalid_json"),
        ('{"topic": "tides", "fact": ', "invalid_json"),
        ('{"topic": "tides", "fact": "x", "difficulty": "trivial"}', "schema_validation"),
        ('{"topic": "tides", "fact": "x", "difficulty": "easy", "extra": 1}', "schema_validation"),
    ],
)
def test_failures_carry_reason_and_error(fact, text: str, reason: str) -> None:
    v = check(text, fact)
    assert not v.ok and v.reason == reason and v.error


def test_json_schema_file(qa) -> None:
    good = {
        "question": "How many days of leave?",
        "answer": "25",
        "evidence": "25 days",
        "difficulty": "easy",
    }
    assert check(orjson.dumps(good).decode(), qa).output == good
    bad = check(orjson.dumps({**good, "question": "short"}).decode(), qa)
    assert bad.reason == "schema_validation" and "question" in bad.error


def test_no_schema_accepts_text_but_not_empty() -> None:
    assert check("hello", None).ok
    assert check("  ", None).reason == "empty"


def test_repair_conversation_keeps_the_original_and_adds_the_error() -> None:
    msgs = [{"role": "user", "content": "q"}]
    out = repair_messages(msgs, "bad", "difficulty: Input should be 'easy'")
    assert out[0] == msgs[0] and out[1] == {"role": "assistant", "content": "bad"}
    assert "difficulty" in out[2]["content"] and msgs == [{"role": "user", "content": "q"}]


_TEXT = st.text(
    st.characters(blacklist_characters="`", blacklist_categories=("Cs",)), max_size=10
)  # a ``` inside a value ends any fence


@given(st.dictionaries(_TEXT, st.integers(-(2**63), 2**63 - 1) | _TEXT, max_size=5))
def test_extract_json_round_trips_objects_in_any_wrapping(obj: dict) -> None:
    text = orjson.dumps(obj).decode()
    for wrapped in (text, f"```json\n{text}\n```", f"Answer: {text}"):
        assert orjson.loads(extract_json(wrapped)) == obj
