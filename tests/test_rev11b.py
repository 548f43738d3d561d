"""Hostile review of the day's changes (rev11b): what gen now accepts and refuses. Each test here failed
on the code before its fix."""

from __future__ import annotations

from pathlib import Path

import pytest

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
