"""Hostile review of the day's changes (rev11b): what gen now accepts and refuses. Each test here failed
on the code before its fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import rows_in
from test_walk11 import _prompt, _run

from gen.config import load_prompt_file
from gen.errors import ConfigError


def _sampling(tmp_path: Path, sampling: str) -> Path:
    path = tmp_path / "p.toml"
    path.write_text(
        'name = "s"\nversion = "1"\n[teacher]\nprovider = "openai"\nmodel = "m"\n'
        f'[messages]\nuser = "hi"\n[sampling]\n{sampling}\n'
    )
    return path


@pytest.mark.parametrize("line", ["temperature = inf", "repetition_penalty = inf"])
def test_an_infinite_sampling_value_is_refused(tmp_path: Path, line: str) -> None:
    # orjson sends inf as null: the teacher used its default, silently, while every row recorded inf.
    with pytest.raises(ConfigError) as e:
        load_prompt_file(_sampling(tmp_path, line))
    assert line.split()[0] in str(e.value) and "\n" not in str(e.value)


def test_a_stop_list_of_non_strings_is_told_a_list_of_strings_is_wanted(tmp_path: Path) -> None:
    # It said "should be a valid string" alone, as if a list were not allowed.
    with pytest.raises(ConfigError) as e:
        load_prompt_file(_sampling(tmp_path, "stop = [1]"))
    assert "list" in str(e.value).partition("sampling.stop = [1]: ")[2]


@pytest.mark.parametrize("value", ["parsed", "hidden", "raw", "deepseek", "none", "auto"])
def test_a_server_s_own_reasoning_format_passes_through_sampling(tmp_path: Path, value: str) -> None:
    # Groq (parsed, hidden, raw) and llama.cpp's server (deepseek, none, auto) take `reasoning_format`
    # as a request parameter: refused as gen's misplaced top-level key, though gen's takes none of these.
    spec = load_prompt_file(_sampling(tmp_path, f'reasoning_format = "{value}"')).spec
    assert spec.sampling == {"reasoning_format": value} and spec.reasoning_format == "field"


def test_gen_s_own_reasoning_format_below_sampling_is_still_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="top-level key"):
        load_prompt_file(_sampling(tmp_path, 'reasoning_format = "drop"'))


# (what the simulator answers, references it passes, references it fails)
NUMBERS = [
    ("\\boxed{0.5}", [".5", "\\frac12", "\\dfrac12", "1/2"], ["5", "12"]),
    ("\\boxed{-5}", ["\u22125", "-5"], ["5"]),
    ("\\boxed{3}", ["3.", "3"], ["-3"]),
    ("\\boxed{-0.5}", ["-.5", "\u22120.5", "-\\frac12"], ["0.5", "5"]),
    # a unit mark on one number: degrees and dollars (the MATH set's 75^\circ, \$18.90)
    ("\\boxed{30}", ["30^\\circ", "30^{\\circ}", "\\$30", "$30^\\circ$"], ["31"]),
    # the answer's side: .5 is not 5, a unicode minus is a minus, \frac12 is a half
    ("\\boxed{.5}", ["0.5"], ["5"]),
    ("\\boxed{\u22125}", ["-5"], ["5"]),
    ("\\boxed{\\frac12}", ["0.5"], ["12"]),
]


@pytest.mark.parametrize(("answer", "good", "bad"), NUMBERS)
def test_numeric_reads_plain_spellings_of_one_number(
    tmp_path: Path, answer: str, good: list[str], bad: list[str]
) -> None:
    # `3.`, `.5`, a unicode minus (U+2212) and `\frac12` are one number each: as references they were
    # refused as "not a number" (every input's reject, before f4967df read as 3, 5, +5 and 12), and as
    # answers `.5` was read as 5, `−5` as 5 and `\frac12` as 12.
    answer_text = answer.replace("\\", "\\\\")
    prompt = _prompt(
        tmp_path,
        [*good, *bad],
        verify='reference = "{{ answer }}"\nmethod = "numeric"',
        sim=f'answer_text = "So the answer is {answer_text}."',
    )
    out = tmp_path / "o"
    _run(prompt, out)
    kept = sorted(json.loads(r["vars"])["answer"] for r in rows_in(out))
    assert kept == sorted(good), [r["error"] for r in rows_in(out, "rejects")]


def _verify(tmp_path: Path, verify: str, top: str = "") -> Path:
    path = tmp_path / "v.toml"
    path.write_text(
        f'name = "v"\nversion = "1"\n{top}\n[teacher]\nprovider = "openai"\nmodel = "m"\n'
        f'[messages]\nuser = "hi"\n[verify]\nreference = "42"\n{verify}\n'
    )
    return path


@pytest.mark.parametrize(
    ("verify", "top", "key"),
    [
        ("tolerance = true", "", "tolerance"),
        ('tolerance = "0.5"', "", "tolerance"),
        ("timeout_s = true", "", "timeout_s"),
        ('timeout_s = "5"', "", "timeout_s"),
        ("", "max_attempts = true", "max_attempts"),
    ],
)
def test_verify_numbers_and_max_attempts_are_numbers_not_bools_or_text(
    tmp_path: Path, verify: str, top: str, key: str
) -> None:
    # As max_samples and samples (0b580d8): `tolerance = true` was read as 1.0 (every answer within 1
    # of the reference passed), `timeout_s = true` as one second, `max_attempts = true` as 1 (no retry).
    with pytest.raises(ConfigError, match=key):
        load_prompt_file(_verify(tmp_path, verify, top))


def test_verify_numbers_still_take_toml_integers_and_floats(tmp_path: Path) -> None:
    spec = load_prompt_file(_verify(tmp_path, "tolerance = 0\ntimeout_s = 30", "max_attempts = 5")).spec
    assert (spec.verify.tolerance, spec.verify.timeout_s, spec.max_attempts) == (0, 30, 5)
