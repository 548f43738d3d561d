"""gen/outdir.py alone knows the output directory's layout: the README's layout comes from OutputDir, and
no other module in gen/ spells a path of it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from gen.outdir import OutputDir, parse_shard_name, shard_glob, split_of_path

GEN = Path(__file__).resolve().parent.parent / "gen"
README = GEN.parent / "README.md"


def test_the_layout_the_readme_documents_comes_from_outputdir(tmp_path: Path) -> None:
    out = OutputDir(tmp_path)
    rel = {name: str(getattr(out, name).relative_to(tmp_path)) for name in ("manifest", "card", "journal")}
    assert rel == {"manifest": "manifest.json", "card": "README.md", "journal": "journal"}
    assert out.shard_name("train", 3) == "data/train-00003.parquet"
    assert out.shard_name("eval", 0) == "data/eval-00000.parquet"
    assert out.shard_name("rejects", 0) == "rejects/rejects-00000.parquet"
    assert out.shard_name("duplicates", 12) == "duplicates/duplicates-00012.parquet"
    assert out.evals == tmp_path / "evals"
    assert shard_glob("train") == "data/train-*.parquet"
    readme = README.read_text()
    for documented in ("data/train-00000.parquet", "rejects/", "duplicates/", "journal/", "manifest.json"):
        assert documented in readme, documented

    part = OutputDir(tmp_path, 3)
    assert part.manifest == tmp_path / "partitions" / "p003.json"
    assert part.merged_manifest == tmp_path / "manifest.json"
    assert part.lock == tmp_path / "partitions" / "p003.lock"
    assert part.journal == tmp_path / "journal" / "p003"
    assert part.journal_root == tmp_path / "journal"
    assert part.shard_name("train", 1) == "data/train-p003-00001.parquet"
    assert re.search(r"partitions/p\d{3}\.json", README.read_text())
    with pytest.raises(ValueError):
        _ = out.lock  # only a partition holds one


def test_listings_see_only_what_their_writer_owns(tmp_path: Path) -> None:
    whole, p3 = OutputDir(tmp_path), OutputDir(tmp_path, 3)
    for split in ("train", "rejects", "duplicates"):
        whole.folder(split).mkdir(parents=True, exist_ok=True)
    names = [
        whole.shard_name("train", 0),
        p3.shard_name("train", 0),
        OutputDir(tmp_path, 4).shard_name("rejects", 2),
        "duplicates/duplicates-merge-00000.parquet",
        "data/train-p003-00001-m.parquet",  # rewritten by the merge pass: not the partition's own
        "data/notes.parquet",  # not a name gen writes
    ]
    for rel in names:
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "data" / ".train-p003-00002.parquet.tmp-77").write_bytes(b"")
    (tmp_path / "data" / ".train-00002.parquet.tmp-77").write_bytes(b"")
    (tmp_path / ".manifest.json.tmp-77").write_bytes(b"")

    assert whole.committed_shards() == [
        "data/train-00000.parquet",
        "data/train-p003-00000.parquet",
        "data/train-p003-00001-m.parquet",
        "duplicates/duplicates-merge-00000.parquet",
        "rejects/rejects-p004-00002.parquet",
    ]
    assert p3.committed_shards() == ["data/train-p003-00000.parquet"]
    assert sorted(p.name for p in p3.partial_files()) == [".train-p003-00002.parquet.tmp-77"]
    assert len(whole.partial_files()) == 3
    assert parse_shard_name("data/train-p003-00001-m.parquet").merge  # type: ignore[union-attr]
    assert split_of_path("rejects/rejects-p004-00002.parquet") == "rejects"

    whole.partitions_dir.mkdir()
    for name in ("p000.json", "p002.json", "pxyz.json", "p002.lock"):
        (whole.partitions_dir / name).write_text("{}")
    assert whole.partition_manifests() == [0, 2]
    assert [p.name for p in whole.locks()] == ["p002.lock"]


# What a module of gen/ other than outdir.py may not spell: a layout name joined onto a path
# (`out / "journal"`), or a string that names a layout path (`"manifest.json"`, `"data/..."`).
LAYOUT_NAMES = {
    *("manifest.json", "README.md", "journal", "partitions", "evals"),
    *("data", "rejects", "duplicates"),
}
LAYOUT_PATH = re.compile(r"manifest\.json|(^|\s)(data|rejects|duplicates|journal|partitions|evals)/|\.lock\b")
# Allowed, with the reason: none so far. Docstrings and comments may name the layout (they explain it).
ALLOWED: set[tuple[str, str]] = set()


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def layout_spellings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    skip = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            right = node.right
            if isinstance(right, ast.Constant) and isinstance(right.value, str):
                if right.value.split("/")[0] in LAYOUT_NAMES:
                    found.append(f"{path.name}:{node.lineno}: / {right.value!r}")
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            if node.value.value in LAYOUT_NAMES:  # a constant naming a layout folder: outdir's to keep
                found.append(f"{path.name}:{node.lineno}: = {node.value.value!r}")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            if LAYOUT_PATH.search(node.value):
                found.append(f"{path.name}:{node.lineno}: {node.value!r}")
    return found


def test_no_module_but_outdir_spells_the_layout() -> None:
    found = []
    for path in sorted(GEN.rglob("*.py")):
        if path.name == "outdir.py" and path.parent == GEN:
            continue
        for hit in layout_spellings(path):
            if not any(path.name == name and text in hit for name, text in ALLOWED):
                found.append(hit)
    assert found == []


def test_the_grep_sees_a_spelled_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        '"""Writes manifest.json (a docstring may say so)."""\n'
        'def f(out):\n    return out / "journal" / "p003", out / "manifest.json", f"{out}/x.lock"\n'
        'DIR = "partitions"\nCARD = "  path: data/train-*.parquet"\n'
    )
    assert sorted(hit.split(": ", 1)[1] for hit in layout_spellings(bad)) == [
        "'  path: data/train-*.parquet'",
        "'/x.lock'",
        "'manifest.json'",
        "/ 'journal'",
        "/ 'manifest.json'",
        "= 'partitions'",
    ]


def test_partial_files_are_the_temporaries_atomic_writes_leave(tmp_path: Path) -> None:
    """A crash between write and rename leaves `partial_path(final)`; the listings must find exactly
    those, and tell the merge pass's from a partition's."""
    from gen.outdir import partial_of_merge, partial_path

    whole = OutputDir(tmp_path)
    whole.folder("duplicates").mkdir(parents=True)
    whole.folder("train").mkdir()
    merge = partial_path(tmp_path / "duplicates/duplicates-merge-00000.parquet", 9)
    rewritten = partial_path(tmp_path / "data/train-p001-00000-m.parquet", 9)
    own = partial_path(tmp_path / OutputDir(tmp_path, 1).shard_name("train", 4), 9)
    card = partial_path(whole.card, 9)
    for p in (merge, rewritten, own, card):
        p.write_bytes(b"")
    assert sorted(whole.partial_files()) == sorted([merge, rewritten, own, card])
    # A partition's own include a merge-pass rewrite of its shard: garbage by then (the merge pass runs
    # only after every partition is done, and a crashed one is redone from the partition shards).
    assert sorted(OutputDir(tmp_path, 1).partial_files()) == sorted([rewritten, own])
    assert [p for p in (merge, rewritten, own) if partial_of_merge(p)] == [merge, rewritten]
