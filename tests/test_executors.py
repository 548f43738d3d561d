"""The executor layer (gen/executors.py): local and Ray behind one interface, chosen once by name; the
cluster driver drives the producer through its public methods only; the pipeline does not import the
cluster driver; the CLI runs through the public API and never builds a `Run` itself."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import pytest
from test_boundaries import _hits, imports
from test_budget_crash import _recipe

import gen
from gen import RunOptions
from gen.errors import ConfigError
from gen.executors import EXECUTORS, Executor, LocalExecutor, RayExecutor, executor_for

GEN = Path(__file__).resolve().parent.parent / "gen"


def test_both_executors_are_registered_behind_one_interface() -> None:
    assert set(EXECUTORS) == {"local", "ray"}
    assert isinstance(executor_for("local"), LocalExecutor)
    assert isinstance(executor_for("ray"), RayExecutor)
    assert all(issubclass(e, Executor) and EXECUTORS[e.name] is e for e in EXECUTORS.values())
    assert gen.run is gen.executors.run and gen.run_async is gen.executors.run_async


def test_resume_flags_name_the_executor() -> None:
    assert executor_for("local").resume_flags(RunOptions()) == ""
    ray = RunOptions(executor="ray", ray_address="auto")
    assert executor_for("ray").resume_flags(ray) == " --executor ray --ray-address auto"


@pytest.mark.parametrize("entry", ["run", "run_async"])
def test_an_unknown_executor_is_one_clear_error_before_any_request(
    tmp_path: Path, sim_server, entry: str
) -> None:
    prompt = _recipe(tmp_path, n=3)
    sim = sim_server()
    out = tmp_path / "o"
    opts = RunOptions(base_url=sim.base_url, output=out, progress=False, executor="spark")
    with pytest.raises(ConfigError) as e:
        if entry == "run":
            gen.run(prompt, opts)
        else:
            asyncio.run(gen.run_async(prompt, opts))
    assert str(e.value) == "unknown executor 'spark' (known: local, ray)"
    assert sim.stats()["requests"] == 0 and not out.exists()


def test_the_local_executor_runs_the_whole_task_space_in_this_process(tmp_path: Path, sim_server) -> None:
    prompt = _recipe(tmp_path, n=6)
    sim = sim_server()
    results = []
    for name, call in (
        ("sync", lambda o: LocalExecutor().run(prompt, o)),
        ("async", lambda o: asyncio.run(LocalExecutor().run_async(prompt, o))),
    ):
        opts = RunOptions(base_url=sim.base_url, output=tmp_path / name, progress=False)
        results.append(call(opts))
    for r, name in zip(results, ("sync", "async"), strict=True):
        assert r.status == "complete" and r.output_dir == tmp_path / name
        assert r.stats.rows + r.stats.rejects + r.stats.duplicates == 6
        assert (tmp_path / name / "manifest.json").is_file()


def _run_private_names() -> set[str]:
    """The private names of `gen.pipeline.Run`: its `_methods` and the `self._attributes` it sets."""
    tree = ast.parse((GEN / "pipeline.py").read_text())
    run = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Run")
    names = {n.name for n in run.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    for node in ast.walk(run):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            names.add(node.attr)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def _private_uses(path: Path, private: set[str]) -> list[str]:
    """`x._name` in `path` for a private name of Run, on anything but `self` (the module's own classes)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr in private:
            if not (isinstance(node.value, ast.Name) and node.value.id == "self"):
                found.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
    return found


def test_the_cluster_driver_uses_only_public_methods_of_run() -> None:
    private = _run_private_names()
    assert {"_workers", "_process", "_ask"} <= private  # the scan sees Run's insides
    assert _private_uses(GEN / "cluster.py", private) == []


def test_the_private_use_scan_sees_what_it_must(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f(run):\n    run._workers.clear()\n    self._workers = 1\n    run.stop(2)\n")
    assert _private_uses(probe, _run_private_names()) == ["probe.py:2 run._workers"]


def test_the_pipeline_does_not_import_the_cluster_driver_nor_the_executors() -> None:
    assert _hits(imports(GEN / "pipeline.py", GEN.parent), ("gen.cluster", "gen.executors")) == set()


def test_the_cli_never_builds_a_run() -> None:
    tree = ast.parse((GEN / "cli.py").read_text())
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    imported = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert "Run" not in names and "Run" not in imported
    # Ray is the executor's business.
    assert _hits(imports(GEN / "cli.py", GEN.parent), ("gen.cluster",)) == set()
