"""A resume walks past the tasks earlier runs decided without rendering their inputs again."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import all_task_ids, ids_in
from test_resume import _recipe

from gen import RunOptions, run
from gen.templates import Expansion


def test_a_resume_renders_only_the_inputs_it_asks(tmp_path: Path, sim_server, monkeypatch) -> None:
    sim = sim_server()
    prompt = _recipe(tmp_path, n=60, samples=2)
    out = tmp_path / "out"
    opts = dict(base_url=sim.base_url, output=out, progress=False, max_concurrency=4)
    run(prompt, RunOptions(**opts, limit=80))  # 40 inputs decided, 20 left
    asked = sim.stats()["requests"]

    rendered: list[str] = []
    render = Expansion.render

    def counting(self, variables):
        rendered.append(json.dumps(variables, sort_keys=True))
        return render(self, variables)

    monkeypatch.setattr(Expansion, "render", counting)
    result = run(prompt, RunOptions(**opts))
    # The first input, rendered once when the prompt file is checked, and the 20 inputs asked now.
    assert len(rendered) == 1 + 20
    assert sorted(set(rendered[1:])) == sorted(json.dumps({"n": n}) for n in range(40, 60))
    assert result.stats.skipped == 80
    assert sim.stats()["requests"] - asked >= 40
    kept = ids_in(out, "data") + ids_in(out, "duplicates") + ids_in(out, "rejected")
    assert sorted(kept) == sorted(all_task_ids(prompt))


def test_the_expansion_gives_the_ids_and_splits_task_id_and_split_of_define(tmp_path: Path) -> None:
    from gen.config import load_prompt_file
    from gen.templates import canonical_json, split_of, task_id

    prompt = load_prompt_file(_recipe(tmp_path, n=300, samples=3))
    expansion = Expansion(prompt, None)
    tasks = list(expansion.tasks())
    assert len(tasks) == 900
    for t in tasks:
        assert t.id == task_id(prompt.sha256, prompt.spec.name, t.vars_json, t.sample)
        assert t.split == split_of(t.vars_json, prompt.spec.eval_fraction)
        assert t.vars_json == canonical_json(json.loads(t.vars_json))
    assert {t.split for t in tasks} == {"train", "eval"}
    # Unrendered (refused by keep) or not, an input's ids and split are the same.
    kept = {t.id for t in tasks[::7]}
    assert [(t.id, t.split) for t in expansion.tasks(keep=kept.__contains__)] == [
        (t.id, t.split) for t in tasks
    ]
