"""Bad seed tables and templates: found before the first request (one line, exit 2), or a reject.

Every run here goes through the real CLI against the simulator on loopback; "before paying" means the
simulator saw no request at all.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gen.cli import main


def _recipe(tmp_path: Path, user: str = "About {{ topic }}", seed: str | None = "rows.jsonl") -> Path:
    path = tmp_path / "p.toml"
    text = (
        'name = "t"\nversion = "1"\nintended_use = "research"\n'
        '[teacher]\nprovider = "openai"\nmodel = "gen-sim-1"\nlicense = "mit"\n'
        f"[messages]\nuser = {json.dumps(user)}\n"
    )
    text += f'[seed]\npath = "{seed}"\n' if seed else '[variables]\ntopic = ["a", "b", "c"]\n'
    path.write_text(text)
    return path


def _run(tmp_path: Path, prompt: Path, sim, capsys) -> tuple[int, str]:
    out = tmp_path / "out"
    code = main(["run", str(prompt), "--base-url", sim.base_url, "--output", str(out), "--no-progress"])
    return code, capsys.readouterr().err


def _one_line_exit_2(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def _rejects(tmp_path: Path) -> list[dict]:
    return pq.read_table(tmp_path / "out" / "rejects").to_pylist()


def _jsonl(rows: list[object]) -> bytes:
    return b"\n".join(json.dumps(r).encode() for r in rows) + b"\n"


def test_a_bad_jsonl_line_far_down_is_found_before_any_request(tmp_path: Path, sim_server, capsys) -> None:
    sim = sim_server()
    rows = _jsonl([{"topic": f"t{i}"} for i in range(3000)]).splitlines(keepends=True)
    rows[2001] = b'{"topic": "broken\n'
    (tmp_path / "rows.jsonl").write_bytes(b"".join(rows))
    code, err = _run(tmp_path, _recipe(tmp_path), sim, capsys)
    _one_line_exit_2(code, err, "rows.jsonl", "line 2002", "invalid JSON")
    assert sim.stats()["requests"] == 0


def test_a_jsonl_line_that_is_not_an_object(tmp_path: Path, sim_server, capsys) -> None:
    sim = sim_server()
    (tmp_path / "rows.jsonl").write_bytes(_jsonl([{"topic": "a"}, {"topic": "b"}, ["c"]]))
    code, err = _run(tmp_path, _recipe(tmp_path), sim, capsys)
    _one_line_exit_2(code, err, "rows.jsonl", "line 3", "JSON object")
    assert sim.stats()["requests"] == 0


def test_a_latin1_csv_row_is_one_line_naming_it(tmp_path: Path, sim_server, capsys) -> None:
    sim = sim_server()
    lines = [b"topic,audience"] + [f"t{i},kids".encode() for i in range(2500)]
    lines[1910] = "caf\u00e9,kids".encode("latin-1")  # line 1911 of the file
    (tmp_path / "rows.csv").write_bytes(b"\n".join(lines) + b"\n")
    code, err = _run(tmp_path, _recipe(tmp_path, seed="rows.csv"), sim, capsys)
    _one_line_exit_2(code, err, "rows.csv", "line 1911", "UTF-8")
    assert sim.stats()["requests"] == 0


@pytest.mark.parametrize(
    ("bad", "needle"),
    [("t9,kids,extra", "3 fields"), ("t9", "1 field")],
)
def test_a_csv_row_with_the_wrong_number_of_fields(
    tmp_path: Path, sim_server, capsys, bad: str, needle: str
) -> None:
    sim = sim_server()
    lines = ["topic,audience"] + [f"t{i},kids" for i in range(20)]
    lines[10] = bad
    (tmp_path / "rows.csv").write_text("\n".join(lines) + "\n")
    code, err = _run(tmp_path, _recipe(tmp_path, seed="rows.csv"), sim, capsys)
    _one_line_exit_2(code, err, "rows.csv", "line 11", needle, "header has 2")
    assert sim.stats()["requests"] == 0


def test_a_csv_header_with_a_bom_is_read_without_it(tmp_path: Path, sim_server, capsys) -> None:
    sim = sim_server()
    (tmp_path / "rows.csv").write_bytes(b"\xef\xbb\xbftopic,audience\nt1,kids\nt2,adults\n")
    code, err = _run(tmp_path, _recipe(tmp_path, seed="rows.csv"), sim, capsys)
    assert code == 0, err
    vars_ = [json.loads(r["vars"]) for r in pq.read_table(tmp_path / "out" / "data").to_pylist()]
    assert sorted(v["topic"] for v in vars_) == ["t1", "t2"]
    assert all(set(v) == {"topic", "audience"} for v in vars_)


def test_a_jsonl_file_with_a_bom_is_read(tmp_path: Path, sim_server, capsys) -> None:
    sim = sim_server()
    (tmp_path / "rows.jsonl").write_bytes(b"\xef\xbb\xbf" + _jsonl([{"topic": "a"}, {"topic": "b"}]))
    code, err = _run(tmp_path, _recipe(tmp_path), sim, capsys)
    assert code == 0, err
    assert pq.read_table(tmp_path / "out" / "data").num_rows == 2


def test_a_corrupt_parquet_seed_is_found_before_any_request(tmp_path: Path, sim_server, capsys) -> None:
    sim = sim_server()
    path = tmp_path / "rows.parquet"
    pq.write_table(
        pa.table({"topic": [f"t{i}" * 50 for i in range(20_000)]}),
        path,
        row_group_size=5_000,
        compression="zstd",
    )
    data = bytearray(path.read_bytes())
    meta = pq.ParquetFile(path).metadata
    last = meta.row_group(meta.num_row_groups - 1).column(0)
    start = last.dictionary_page_offset or last.data_page_offset
    middle = start + last.total_compressed_size // 2
    data[middle : middle + 64] = b"\xff" * 64  # the last row group's pages, not the footer
    path.write_bytes(bytes(data))
    code, err = _run(tmp_path, _recipe(tmp_path, seed="rows.parquet"), sim, capsys)
    _one_line_exit_2(code, err, "rows.parquet", "cannot read past row 15,000")
    assert sim.stats()["requests"] == 0


@pytest.mark.parametrize(
    "template",
    [
        "{{ 1 / n }}",  # ZeroDivisionError
        "{{ '%d' % topic }}",  # TypeError: a number is required
        "{{ '{:d}'.format(topic) }}",  # ValueError: unknown format code
        "{{ d.k }}",  # UndefinedError: this row's d has no k
    ],
    ids=["zero-division", "percent-format", "format-method", "undefined"],
)
def test_a_render_failure_for_one_input_is_a_reject(
    tmp_path: Path, sim_server, capsys, template: str
) -> None:
    sim = sim_server()
    (tmp_path / "rows.jsonl").write_bytes(
        _jsonl(
            [
                {"topic": 1, "n": 1, "d": {"k": 1}},
                {"topic": "x", "n": 0, "d": {}},
                {"topic": 3, "n": 2, "d": {"k": 3}},
            ]
        )
    )
    code, err = _run(tmp_path, _recipe(tmp_path, "Q " + template), sim, capsys)
    assert code == 0, err
    assert "Traceback" not in err
    rejects = _rejects(tmp_path)
    assert [r["reason"] for r in rejects] == ["render_error"] and rejects[0]["error"]
    assert json.loads(rejects[0]["vars"])["topic"] == "x"
    assert pq.read_table(tmp_path / "out" / "data").num_rows == 2
    # A resume does not trip over it again: everything is done.
    code = main(
        ["run", str(tmp_path / "p.toml"), "--base-url", sim.base_url, "--output", str(tmp_path / "out")]
    )
    assert code == 0 and "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "template",
    [
        "{{ 1 / 0 }}",
        "{{ range(1e8) | list }}",
        "{{ range(10**8) | list | length }}",
        "{{ 'x' * 10**8 }}",
        "{{ ['x'] * 10**8 }}",
        "{{ 10 ** (10 ** 10) }}",  # jinja2 groups `**` from the left
        "{{ '%100000000d' % 1 }}",
        "{{ 'x'.ljust(10**8) }}",
        "{{ 'x' | center(10**8) }}",
        "{{ '{:>100000000}'.format('x') }}",
    ],
    ids=["zero", "range-float", "range-big", "str-repeat", "list-repeat", "power", "percent-width"]
    + ["ljust", "center", "format-width"],
)
def test_a_template_that_fails_on_every_input_is_one_line_exit_2(
    tmp_path: Path, sim_server, capsys, template: str
) -> None:
    sim = sim_server()
    code, err = _run(tmp_path, _recipe(tmp_path, "Q " + template + " {{ topic }}", seed=None), sim, capsys)
    _one_line_exit_2(code, err, "p.toml", "rendering the first input failed")
    assert sim.stats()["requests"] == 0


def test_a_values_file_with_a_bom_is_read_without_it(tmp_path: Path) -> None:
    from gen.config import load_prompt_file
    from gen.templates import Expansion

    (tmp_path / "topics.txt").write_bytes(b"\xef\xbb\xbfalpha\nbeta\n")
    path = tmp_path / "p.toml"
    path.write_text(
        'name = "t"\nversion = "1"\n[messages]\nuser = "{{ topic }}"\n'
        '[variables]\ntopic = { file = "topics.txt" }\n'
    )
    tasks = list(Expansion(load_prompt_file(path), None).tasks())
    assert [t.messages[0]["content"] for t in tasks] == ["alpha", "beta"]
