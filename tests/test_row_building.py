"""Row building (`Run._data_row`, split out of `Run._process`): a valid answer's `data/` row carries
every column of gen.rows.Row, in its order, and passes the shard writer's row check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import get_type_hints

from gen import RunOptions
from gen.pipeline import Run, prepare
from gen.rows import Row
from gen.shards import row_problem
from gen.teachers.base import Completion
from gen.validate import Verdict


def _run(tmp_path: Path) -> Run:
    (tmp_path / "s.json").write_text(json.dumps({"type": "object", "properties": {"a": {"type": "string"}}}))
    (tmp_path / "p.toml").write_text(
        'name = "rb"\nversion = "3"\nintended_use = "research"\nschema = "s.json"\n'
        '[teacher]\nprovider = "openai"\nmodel = "gen-sim-1"\nlicense = "apache-2.0"\n'
        '[messages]\nuser = "Say {{ n }}."\n[variables]\nn = [1, 2]\n'
    )
    opts = RunOptions(base_url="http://127.0.0.1:9/v1", output=tmp_path / "out", progress=False)
    return Run(prepare(tmp_path / "p.toml", opts))


def test_a_data_row_has_the_row_modules_columns_and_passes_the_row_check(tmp_path: Path) -> None:
    run = _run(tmp_path)
    task = next(iter(run.p.expansion.tasks()))
    comp = Completion('{"a": "x"}', "stop", prompt_tokens=7, completion_tokens=3, model=None)
    verdict = Verdict(output_json='{"a":"x"}')
    row = run._data_row(task, comp, verdict, verdict.output_json, 20, 9, 0, 2)

    assert list(row) == list(get_type_hints(Row))
    assert row_problem(task.split, dict(row)) is None
    assert row["messages"][-1] == {"role": "assistant", "content": '{"a":"x"}'}
    assert row["messages"][:-1] == task.messages
    assert (row["prompt_tokens"], row["completion_tokens"], row["attempts"]) == (20, 9, 2)
    assert row["teacher_model"] == "gen-sim-1"  # the teacher named no model: the recipe's
    assert (row["template"], row["template_version"], row["run_id"]) == ("rb", "3", run.run_id)

    named = Completion("{}", "length", 1, 1, model="served-name")
    assert (
        run._data_row(task, named, Verdict(output_json="{}"), "{}", 1, 1, 0, 1)["teacher_model"]
        == "served-name"
    )
