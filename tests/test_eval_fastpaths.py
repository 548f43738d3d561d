"""The shortcuts `gen eval`'s comparison takes for speed give exactly what the general path gives.

(bench/eval_overhead.py measures the speed; these pin the equivalence the shortcuts rely on.)
"""

from __future__ import annotations

import copy
import gc
from pathlib import Path

import orjson
import pytest

from gen.cli import main
from gen.eval_compare import (
    _same,
    _tokens,
    field_specs,
    identical_score,
    normalise_text,
    score_row,
    token_f1,
)

SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"enum": ["a", "b"]},
        "ok": {"type": "boolean"},
        "n": {"type": "integer"},
        "x": {"type": "number"},
        "text": {"type": "string"},
        "maybe": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "items": {"type": "array"},
    },
}

ANSWERS = [
    {"label": "a", "ok": True, "n": 3, "x": 0.5, "text": "The cat sat.", "maybe": None, "items": [1, 2]},
    {"label": "b", "ok": False, "n": -1, "x": -0.0, "text": "", "maybe": "An owl", "items": []},
    {"label": "a"},  # fields absent
]


@pytest.mark.parametrize("answer", ANSWERS)
def test_identical_answer_scores_as_score_row_does(answer: dict) -> None:
    specs = field_specs(SCHEMA)
    general = score_row(specs, answer, copy.deepcopy(answer))
    fast = identical_score(specs)
    assert (fast.match, fast.f1, fast.agrees) == (general.match, general.f1, general.agrees)


def test_same_is_json_equality_of_like_typed_values() -> None:
    values = [1, 1.0, 2, 2.5, 0.0, -0.0, True, False, 0, "a", "", "ü", None, [1], {"a": 1}]

    def number(v: object) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    for a in values:
        for b in values:
            comparable = type(a) is type(b) or (number(a) and number(b))
            as_json = orjson.dumps(a, option=orjson.OPT_SORT_KEYS) == orjson.dumps(
                b, option=orjson.OPT_SORT_KEYS
            )
            assert _same(a, b) == (comparable and as_json), (a, b)


@pytest.mark.parametrize(
    "text",
    ["The  cat, sat!", "an\u00a0apple\tand\nA pear", "", "   ", "Straße STRASSE", "a an the", "x-y z"],
)
def test_tokens_are_the_normalised_text_split(text: str) -> None:
    assert _tokens(text) == normalise_text(text).split()


def test_token_f1_counts_repeated_tokens_once_each() -> None:
    assert token_f1("x y y z", "y y y w") == 0.5  # 2 common tokens of 4 and of 4
    assert token_f1("a b b c", "b b b d") == pytest.approx(4 / 7)  # "a" is an article: 2 of 3, 2 of 4
    assert token_f1("x y", "z") == 0.0
    assert token_f1("the", "an") == 1.0  # both empty after normalising


def test_eval_cli_leaves_the_collector_as_it_found_it(tmp_path: Path) -> None:
    """`gen eval` freezes what it reads for the evaluation; in-process callers of main() get the collector
    back enabled and with nothing frozen, also when the evaluation stops on bad input."""
    code = main(
        [
            "eval",
            str(tmp_path / "missing"),
            "--student-model",
            "s",
            "--student-base-url",
            "http://127.0.0.1:9/v1",
        ]
    )
    assert code == 2
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0
