"""Hostile review of the issue 14 acceptance fixes (rev10): each test here failed on the code it names."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gen.shards import ShardWriter, parquet_rows, row_problem


def _prompt(tmp_path: Path, *, head: str = "", verify: str = "", sampling: str = "") -> Path:
    (tmp_path / "seeds.jsonl").write_text(
        "".join(json.dumps({"q": f"What is {n} + {n}?", "answer": str(2 * n)}) + "\n" for n in range(4))
    )
    path = tmp_path / "p.toml"
    path.write_text(
        f'{head}name = "rev"\nversion = "1"\nintended_use = "research"\nsamples = 1\nmax_attempts = 1\n'
        '[teacher]\nprovider = "openai"\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "gen-sim-1"\n'
        'license = "apache-2.0"\n'
        f"[sampling]\n{sampling}\n"
        '[messages]\nuser = "{{ q }}"\n'
        '[seed]\npath = "seeds.jsonl"\n'
        f"{'[verify]' if verify else ''}\n{verify}\n"
    )
    return path


def _run(tmp_path: Path, prompt: Path, sim, out: str = "o") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gen", "run", str(prompt), "--base-url", sim.base_url, "--output", out,
         "--no-progress"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip


def test_logprobs_of_an_empty_inline_think_block_are_not_kept(tmp_path: Path, sim_server) -> None:
    # Qwen3 with thinking off, served without a reasoning parser, opens every reply with an empty
    # "<think>\n\n</think>\n\n" and sends logprobs for those tokens too. The block is taken out of the
    # answer (a blank trace is none), but the logprobs were trimmed only when a trace was found: the
    # column held the tags' tokens, misaligned with `response`.
    from helpers import rows_in

    sim = sim_server(reasoning="think-tags", reasoning_text="")
    prompt = _prompt(tmp_path, sampling="logprobs = 2")
    proc = _run(tmp_path, prompt, sim)
    assert proc.returncode == 0, proc.stderr
    rows = rows_in(tmp_path / "o")
    assert len(rows) == 4
    for r in rows:
        assert r["reasoning"] is None and "think>" not in r["response"]
        tokens = "".join(t["token"] for t in r["logprobs"])
        assert "think>" not in tokens and tokens.strip() == r["response"], tokens[:80]


@pytest.mark.parametrize(
    "logprobs",
    [
        [{"token": "4", "logprob": -0.1, "top": None}],  # no alternatives: a null list
        [{"token": "4", "logprob": -0.1}],  # no `top` at all
        [None, {"token": "4", "logprob": -0.1, "top": [{"token": "5", "logprob": -2.0}]}],
    ],
)
def test_a_row_the_row_check_passes_is_written_whatever_its_logprobs_shape(tmp_path: Path, logprobs) -> None:
    # row_problem's contract: a row that passes never fails the Parquet write. The journal is read as
    # untrusted and its rows pass through row_problem on resume; the logprob count added to the shard
    # writer's bound read t["top"] of each entry, so a null `top` (or entry) that the check passes and
    # Arrow stores raised in ShardWriter.add (TypeError, KeyError) and stopped the resume.
    from test_reasoning_dedup import rows_in_one

    row = {**rows_in_one(tmp_path), "logprobs": logprobs}
    assert row_problem("train", row) is None

    async def go() -> None:
        writer = ShardWriter(tmp_path / "w")
        writer.add("train", row)
        await writer.close()

    asyncio.run(go())
    ((back),) = [r for shard in (tmp_path / "w" / "data").rglob("*.parquet") for r in parquet_rows(shard)]
    assert len(back["logprobs"]) == len(logprobs)


_PYDANTIC = """
from pydantic import BaseModel, Field


class Out(BaseModel):
    working: str
    answer: int = Field(alias="Answer")
"""


@pytest.mark.parametrize(
    "schema",
    [
        # a pydantic model with an alias: the schema lists "Answer", the validated output (model_dump_json)
        # holds "answer", the name `field` must give
        "pydantic",
        # properties given in part by allOf beside `properties`
        {
            "type": "object",
            "properties": {"working": {"type": "string"}},
            "allOf": [{"properties": {"answer": {"type": "integer"}}}],
        },
        # properties the schema allows beyond those it lists
        {"type": "object", "properties": {"working": {"type": "string"}}, "additionalProperties": True},
        {"type": "object", "properties": {"working": {}}, "patternProperties": {"^ans": {"type": "integer"}}},
    ],
    ids=["pydantic-alias", "allOf", "additionalProperties", "patternProperties"],
)
def test_a_field_the_output_can_have_is_not_refused(tmp_path: Path, sim_server, schema) -> None:
    # The [verify] field check (a typo is one line before any request) read the schema's `properties`
    # alone: a field the output does hold, named by a prompt file that ran before, was refused (exit 2).
    if schema == "pydantic":
        (tmp_path / "m.py").write_text(_PYDANTIC)
        ref = "m.py:Out"
    else:
        (tmp_path / "s.json").write_text(json.dumps(schema))
        ref = "s.json"
    prompt = _prompt(
        tmp_path,
        head=f'schema = "{ref}"\n',
        verify='reference = "{{ answer }}"\nmethod = "json-field"\nfield = "answer"',
    )
    sim = sim_server()
    proc = _run(tmp_path, prompt, sim)
    assert proc.returncode != 2 and "[verify]" not in proc.stderr, proc.stderr
    assert sim.stats()["requests"] > 0
    if schema == "pydantic":  # the output holds the field under the name `field` gives
        from helpers import rows_in

        rejects = rows_in(tmp_path / "o", "rejects") if (tmp_path / "o" / "rejects").exists() else []
        decided = rows_in(tmp_path / "o") + rejects
        assert len(decided) == 4 and not [r for r in rejects if "no field" in (r["error"] or "")]
