from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gen.config import load_prompt_file
from gen.templates import Expansion, split_of

ROOT = Path(__file__).resolve().parents[1]


def _expansion(tmp_path: Path, body: str, samples: int | None = None) -> Expansion:
    path = tmp_path / "p.toml"
    path.write_text('name = "t"\nversion = "1"\n' + body)
    return Expansion(load_prompt_file(path), None, samples=samples)


def test_cross_product_of_lists_files_and_seed_rows(tmp_path: Path) -> None:
    (tmp_path / "tones.txt").write_text("calm\n\nangry\n")
    (tmp_path / "seed.csv").write_text("city,country\nParis,France\nLima,Peru\n")
    exp = _expansion(
        tmp_path,
        'samples = 2\n[messages]\nsystem = "S {{ tone }}"\nuser = "{{ city }} in {{ country }}, {{ n }}"\n'
        '[variables]\ntone = { file = "tones.txt" }\nn = [1, 2, 3]\n[seed]\npath = "seed.csv"\n',
    )
    tasks = list(exp.tasks())
    assert len(tasks) == exp.count() == 2 * 2 * 3 * 2
    assert len({t.id for t in tasks}) == len(tasks)
    assert tasks[0].messages == [
        {"role": "system", "content": "S calm"},
        {"role": "user", "content": "Paris in France, 1"},
    ]
    assert [t.sample for t in tasks[:2]] == [0, 1]


def test_ids_are_stable_and_depend_on_inputs(tmp_path: Path) -> None:
    body = '[messages]\nuser = "{{ x }}"\n[variables]\nx = ["a", "b"]\n'
    ids1 = [t.id for t in _expansion(tmp_path, body).tasks()]
    ids2 = [t.id for t in _expansion(tmp_path, body).tasks()]
    assert ids1 == ids2
    ids3 = [t.id for t in _expansion(tmp_path, body.replace('"{{ x }}"', '"Q: {{ x }}"')).tasks()]
    assert set(ids1).isdisjoint(ids3)


def test_jsonl_and_parquet_seeds_stream(tmp_path: Path) -> None:
    pq.write_table(pa.table({"q": [f"q{i}" for i in range(10_000)]}), tmp_path / "seed.parquet")
    exp = _expansion(tmp_path, '[messages]\nuser = "{{ q }}"\n[seed]\npath = "seed.parquet"\n')
    it = exp.tasks()
    assert next(it).messages[0]["content"] == "q0"
    assert exp.count() == 10_000
    (tmp_path / "seed.jsonl").write_text('{"q": "x"}\n\n{"q": "y"}\n')
    exp = _expansion(tmp_path, '[messages]\nuser = "{{ q }}"\n[seed]\npath = "seed.jsonl"\n')
    assert [t.messages[0]["content"] for t in exp.tasks()] == ["x", "y"] and exp.count() == 2


def test_sandbox_blocks_unsafe_attribute_access(tmp_path: Path) -> None:
    from gen.errors import ConfigError

    with pytest.raises(ConfigError, match="rendering the first input failed"):
        _expansion(
            tmp_path,
            '[messages]\nuser = "{{ x.__class__.__mro__[1].__subclasses__() }}"\n[variables]\nx = ["a"]\n',
        )


def test_eval_split_is_by_input_so_samples_never_straddle(tmp_path: Path) -> None:
    exp = _expansion(
        tmp_path,
        'eval_fraction = 0.3\n[messages]\nuser = "{{ x }}"\n[variables]\nx = ' + str(list(range(200))) + "\n",
        samples=3,
    )
    by_input: dict[str, set[str]] = {}
    for t in exp.tasks():
        by_input.setdefault(t.vars_json, set()).add(t.split)
    assert all(len(s) == 1 for s in by_input.values())
    share = sum(s == {"eval"} for s in by_input.values()) / len(by_input)
    assert 0.15 < share < 0.45
    assert split_of('{"x":1}', 0.0) == "train"


def test_shipped_prompt_files_expand() -> None:
    from gen.schema import load_schema

    for name in ("quickstart", "ticket_triage", "passage_qa"):
        prompt = load_prompt_file(ROOT / "prompts" / f"{name}.toml")
        schema = load_schema(prompt.spec.schema_, base_dir=prompt.base_dir, where=prompt.path)
        exp = Expansion(prompt, schema)
        tasks = list(exp.tasks())
        assert len(tasks) == exp.count() and len(tasks) >= 100
        assert all(t.messages for t in tasks)
