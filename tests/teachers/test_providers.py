"""The provider registry: each provider resolves, a new one is one registration, an unknown one one line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from gen import RunOptions, run
from gen.config import load_prompt_file, resolve_teacher
from gen.errors import ConfigError
from gen.limits import spent_budget
from gen.teachers import providers
from gen.teachers.providers import ProviderSpec

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "prompts" / "quickstart.toml"


@pytest.fixture
def compat() -> Iterator[ProviderSpec]:
    """A provider no module knows: the OpenAI client under another name, with its own rate headers."""
    spec = providers.register(
        ProviderSpec(
            name="compat",
            client="gen.teachers.openai:OpenAIChat",
            rate_limit_headers=(("x-compat-remaining", "x-compat-reset"),),
            records_base_urls=True,
        )
    )
    yield spec
    providers.unregister("compat")


@pytest.mark.parametrize("name", ["openai", "anthropic", "vllm", "sim"])
def test_every_shipped_provider_resolves_to_a_client_speaking_the_teacher_protocol(name: str) -> None:
    spec = providers.get(name)
    assert spec.name == name and spec.mode == "request"
    cls = spec.client_class()
    for method in ("complete", "models", "list_models", "close"):
        assert callable(getattr(cls, method, None)), f"{cls.__name__} lacks {method}()"
    prompt = load_prompt_file(QUICKSTART)
    base_url = None if spec.launcher or spec.default_base_url else "http://127.0.0.1:9/v1"
    teacher = resolve_teacher(prompt, RunOptions(provider=name, base_url=base_url, model="m"))
    assert teacher.provider == name
    assert teacher.base_urls or spec.launches(teacher.base_urls)  # a URL to ask, or gen starts one


def test_launchers_and_settings_load_from_the_registrys_dotted_paths() -> None:
    for path in (
        f"{providers.SIM_MODULE}:SimServer",
        f"{providers.SIM_MODULE}:SimConfig",
        f"{providers.VLLM_MODULE}:VLLMServer",
        f"{providers.VLLM_MODULE}:VLLMSettings",
    ):
        assert isinstance(providers.load(path), type), path


def test_what_the_registry_says_each_shipped_provider_does() -> None:
    sim, vllm = providers.get("sim"), providers.get("vllm")
    assert sim.launches(()) and sim.launches(("http://h/v1",))  # the simulator has no URL to give
    assert vllm.launches(()) and not vllm.launches(("http://h/v1",)) and vllm.uses_gpus
    assert providers.get("anthropic").default_base_url == "https://api.anthropic.com/v1"
    assert not providers.get("openai").launches(())
    assert {n for n in providers.names() if providers.get(n).records_base_urls} == {"openai", "anthropic"}


def test_unknown_provider_is_one_line_listing_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        providers.get("bard", where="p.toml")
    assert str(e.value) == "p.toml: unknown provider 'bard' (known: openai, anthropic, vllm, sim)"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gen",
            "run",
            str(QUICKSTART),
            "--provider",
            "bard",
            "--output",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"gen: error: {QUICKSTART}: unknown provider 'bard' (known: openai, anthropic, vllm, sim)"
    ]
    assert not (tmp_path / "o").exists()


def test_a_registered_name_is_refused_twice_and_a_batch_provider_is_refused_before_any_request(
    compat: ProviderSpec,
) -> None:
    with pytest.raises(ValueError, match="registered already"):
        providers.register(ProviderSpec(name="compat", client="gen.teachers.openai:OpenAIChat"))
    providers.register(ProviderSpec(name="batchy", client="gen.teachers.openai:OpenAIChat", mode="batch"))
    try:
        with pytest.raises(ConfigError, match="'batchy' is a batch provider"):
            resolve_teacher(
                load_prompt_file(QUICKSTART), RunOptions(provider="batchy", base_url="http://h/v1")
            )
    finally:
        providers.unregister("batchy")


def test_a_provider_added_in_one_registration_runs_end_to_end_against_the_simulator(
    compat: ProviderSpec, sim_server, tmp_path: Path
) -> None:
    sim = sim_server()
    with pytest.raises(ConfigError, match="provider 'compat' needs a base URL"):
        resolve_teacher(load_prompt_file(QUICKSTART), RunOptions(provider="compat"))
    out = tmp_path / "out"
    result = run(
        QUICKSTART, RunOptions(provider="compat", base_url=sim.base_url, output=out, progress=False, limit=12)
    )
    assert result.status == "complete" and result.stats.rows == 12
    rows = [r for f in sorted((out / "data").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert len(rows) == 12 and {r["teacher_provider"] for r in rows} == {"compat"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["teacher"]["provider"] == "compat"
    assert manifest["teacher"]["base_urls"] == [sim.base_url]  # records_base_urls, as its spec says
    assert "gen-sim-1" in manifest["teacher"]["served_models"]


def test_rate_limit_headers_are_read_for_every_registered_provider(compat: ProviderSpec) -> None:
    assert spent_budget({"x-compat-remaining": "0", "x-compat-reset": "2s"}) == ("x-compat-reset", 2.0)
    assert spent_budget({"x-compat-remaining": "5", "x-compat-reset": "2s"}) is None
    providers.unregister("compat")
    assert spent_budget({"x-compat-remaining": "0", "x-compat-reset": "2s"}) is None
    providers.register(compat)


def test_no_module_but_the_registry_tests_a_provider_by_name() -> None:
    """The seam holds: a provider name compared outside gen/teachers/providers.py is an if-chain back."""
    chain = re.compile(r"provider\)?\s*(==|!=|not in|in)\s*[(\"']")
    found = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in sorted((ROOT / "gen").rglob("*.py"))
        if path.name != "providers.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if chain.search(line)
    ]
    assert found == []
