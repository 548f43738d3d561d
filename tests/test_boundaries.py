"""shared/DESIGN.md's module boundaries, read from the source: gen/teachers/ holds clients only.

The teacher clients sit under the producer, not beside it: they must not reach up into the run
(pipeline, shards, dedup, the journal) nor across into the simulator or the launchers, which are
tools that stand in for or start a teacher, not clients.
"""

from __future__ import annotations

import ast
from pathlib import Path

GEN = Path(__file__).resolve().parent.parent / "gen"
TEACHERS = GEN / "teachers"

# What a client module may not import (a module or anything under it).
FORBIDDEN = ("gen.sim", "gen.launchers", "gen.pipeline", "gen.shards", "gen.dedup", "gen.ledger")
# What only a server or a launcher needs: a client that imports these is one of them in disguise.
SERVER_SIDE = ("aiohttp.web", "subprocess")


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path = GEN.parent) -> set[str]:
    """Every module `path` imports, at any depth (function-local imports too), relative ones resolved.

    `from X import Y` counts as both X and X.Y, since Y may be a submodule (`from gen import sim`).
    """
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _hits(found: set[str], prefixes: tuple[str, ...]) -> set[str]:
    return {m for m in found if any(m == p or m.startswith(p + ".") for p in prefixes)}


def test_teacher_clients_import_neither_the_run_nor_the_simulator_nor_the_launchers() -> None:
    modules = sorted(TEACHERS.rglob("*.py"))
    assert len(modules) >= 5, "gen/teachers/ not found where expected"
    bad = {str(p.relative_to(GEN.parent)): sorted(_hits(imports(p), FORBIDDEN)) for p in modules}
    assert {k: v for k, v in bad.items() if v} == {}


def test_teachers_holds_no_server_and_no_launcher() -> None:
    bad = {
        str(p.relative_to(GEN.parent)): sorted(_hits(imports(p), SERVER_SIDE)) for p in TEACHERS.rglob("*.py")
    }
    assert {k: v for k, v in bad.items() if v} == {}


def test_the_import_scan_sees_what_it_must(tmp_path: Path) -> None:
    """The scanner itself: relative, aliased and function-local imports are all found."""
    pkg = tmp_path / "gen" / "teachers"
    pkg.mkdir(parents=True)
    probe = pkg / "probe.py"
    probe.write_text(
        "from .. import sim\n"
        "from ..launchers.vllm import VLLMServer\n"
        "def f():\n"
        "    import gen.ledger as journal\n"
        "    from aiohttp import web\n"
    )
    found = imports(probe, tmp_path)
    assert _hits(found, FORBIDDEN) == {
        "gen.sim",
        "gen.launchers.vllm",
        "gen.launchers.vllm.VLLMServer",
        "gen.ledger",
    }
    assert _hits(found, SERVER_SIDE) == {"aiohttp.web"}


def test_only_the_shard_writer_and_the_audit_import_pyarrow() -> None:
    users = {str(p.relative_to(GEN)) for p in GEN.rglob("*.py") if _hits(imports(p), ("pyarrow",))}
    assert users == {"shards.py", "audit.py"}


# The launcher shields its own stop (a second Ctrl-C must not leave a vLLM server behind): the one task
# made outside the pipeline, and it never outlives the await that made it.
TASK_MAKERS_ALLOWED = {"pipeline.py", "launchers/vllm.py"}


def test_only_the_pipeline_creates_asyncio_tasks() -> None:
    makers = set()
    for path in GEN.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr in ("create_task", "ensure_future"):
                makers.add(str(path.relative_to(GEN)))
    assert makers <= TASK_MAKERS_ALLOWED, makers - TASK_MAKERS_ALLOWED
    assert "pipeline.py" in makers
