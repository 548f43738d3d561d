"""The licence registry and the licence review: the shipped data, lookups, decisions, user overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gen.errors import ConfigError
from gen.provenance import (
    INTENDED_USES,
    UNKNOWN_LICENCE,
    Registry,
    load_registry,
    resolve_licence,
    review,
    review_teacher,
)


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry()


# ------------------------------------------------------------------------------------------ shipped data


def test_shipped_registry_loads_with_sources(registry: Registry) -> None:
    assert len(registry.licences) >= 20
    assert len(registry.sources) == 1
    assert registry.sources[0].path.endswith("licences.toml")
    assert len(registry.sources[0].sha256) == 64
    for licence in registry.licences:
        assert licence.source and licence.source_url.startswith("https://") and licence.source_date
    expected = {"llama3", "llama3.1", "llama3.2", "llama3.3", "gemma", "qwen", "qwen-research", "mrl"}
    expected |= {"apache-2.0", "mit", "cc-by-4.0", "cc-by-nc-4.0", "openrail"}
    expected |= {"api:openai", "api:anthropic", "api:google-gemini"}
    assert expected <= set(registry.ids())


def test_every_shipped_entry_is_reachable(registry: Registry) -> None:
    """No pattern is shadowed by an earlier entry: a model id spelled like the pattern finds its own entry."""
    for licence in registry.licences:
        for pattern in licence.model_patterns:
            plain = pattern.replace("*", "").replace("[0-9]", "1")
            assert registry.for_model(plain) is licence, pattern


@pytest.mark.parametrize(
    ("model", "licence_id"),
    [
        ("meta-llama/Meta-Llama-3-8B-Instruct", "llama3"),
        ("llama3:70b", "llama3"),
        ("meta-llama/Llama-3.1-8B-Instruct", "llama3.1"),
        ("llama3.1:8b", "llama3.1"),
        ("meta-llama/Llama-3.2-3B-Instruct", "llama3.2"),
        ("llama-3.3-70b-versatile", "llama3.3"),
        ("deepseek-ai/DeepSeek-R1-Distill-Llama-70B", "llama3.3"),
        ("deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "llama3.1"),
        ("deepseek-ai/DeepSeek-R1", "mit"),
        ("deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", "mit"),
        ("google/gemma-2-9b-it", "gemma"),
        ("google/gemma-3-27b-it", "gemma"),
        ("google/gemma-4-31b-it", "apache-2.0"),
        ("Qwen/Qwen2.5-72B-Instruct", "qwen"),
        ("Qwen/Qwen2.5-VL-72B-Instruct", "qwen"),
        ("qwen2.5:72b", "qwen"),
        ("Qwen/Qwen2.5-3B-Instruct", "qwen-research"),
        ("Qwen/Qwen2.5-Coder-3B-Instruct", "qwen-research"),
        ("qwen2.5:3b", "qwen-research"),
        ("Qwen/Qwen2.5-32B-Instruct", "apache-2.0"),
        ("Qwen/Qwen2.5-7B-Instruct", "apache-2.0"),
        ("Qwen/Qwen3-235B-A22B", "apache-2.0"),
        ("mistralai/Mistral-7B-Instruct-v0.3", "apache-2.0"),
        ("mistralai/Mixtral-8x22B-Instruct-v0.1", "apache-2.0"),
        ("mistralai/Mistral-Small-24B-Instruct-2501", "apache-2.0"),
        ("mistralai/Mistral-Large-Instruct-2411", "mrl"),
        ("mistralai/Ministral-8B-Instruct-2410", "mrl"),
        ("microsoft/phi-4", "mit"),
        ("microsoft/Phi-3-mini-4k-instruct", "mit"),
        ("openai/gpt-oss-120b", "apache-2.0"),
        ("gpt-4o", "api:openai"),
        ("openai/gpt-4.1-mini", "api:openai"),
        ("o3-mini", "api:openai"),
        ("claude-3-5-sonnet-20241022", "api:anthropic"),
        ("anthropic/claude-sonnet-4", "api:anthropic"),
        ("gemini-2.0-flash", "api:google-gemini"),
        ("deepseek-reasoner", "api:deepseek"),
    ],
)
def test_lookup_picks_the_right_entry(registry: Registry, model: str, licence_id: str) -> None:
    licence = registry.for_model(model)
    assert licence is not None, model
    assert licence.id == licence_id


@pytest.mark.parametrize("model", ["gen-sim-1", "qwen3-max", "Qwen/Qwen3.5-4B", "mistral-large-latest"])
def test_unverified_or_unknown_models_are_not_guessed(registry: Registry, model: str) -> None:
    assert registry.for_model(model) is None


def test_lookup_ignores_case_and_matches_the_last_segment(registry: Registry) -> None:
    assert registry.for_model("QWEN/QWEN2.5-72B-INSTRUCT").id == "qwen"  # type: ignore[union-attr]
    assert registry.for_model("openrouter/anthropic/claude-3-haiku").id == "api:anthropic"  # type: ignore[union-attr]


def test_get_prefers_the_generic_entry(registry: Registry) -> None:
    assert registry.get("apache-2.0").name == "Apache License 2.0"  # type: ignore[union-attr]
    assert registry.get("MIT").name == "MIT License"  # type: ignore[union-attr]
    assert registry.get("qwen").id == "qwen"  # type: ignore[union-attr]
    assert registry.get("bsd-3-clause") is None


# ------------------------------------------------------------------------------------------ review


def decisions(registry: Registry, model: str, given: str | None = None) -> dict[str, str]:
    return {use: review_teacher(registry, model, given, use, False).decision for use in INTENDED_USES}


OK, OBL, BLOCKED = "ok", "ok-with-obligations", "blocked"


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        # research, internal, commercial-model, competing-model
        ("Qwen/Qwen2.5-7B-Instruct", (OK, OK, OK, OK)),
        ("deepseek-ai/DeepSeek-R1", (OK, OK, OK, OK)),
        ("meta-llama/Llama-3.1-70B-Instruct", (OBL, OBL, OBL, OBL)),
        ("google/gemma-3-27b-it", (OBL, OBL, OBL, OBL)),
        ("Qwen/Qwen2.5-72B-Instruct", (OBL, OBL, OBL, OBL)),
        ("meta-llama/Meta-Llama-3-70B-Instruct", (BLOCKED, BLOCKED, BLOCKED, BLOCKED)),
        ("Qwen/Qwen2.5-3B-Instruct", (OBL, BLOCKED, BLOCKED, BLOCKED)),
        ("mistralai/Mistral-Large-Instruct-2411", (OBL, BLOCKED, BLOCKED, BLOCKED)),
        ("gpt-4o", (OBL, OBL, OBL, BLOCKED)),
        ("gemini-2.0-flash", (OBL, OBL, OBL, BLOCKED)),
        ("claude-3-5-sonnet-20241022", (BLOCKED, BLOCKED, BLOCKED, BLOCKED)),
    ],
)
def test_decision_per_intended_use(registry: Registry, model: str, expected: tuple[str, ...]) -> None:
    assert decisions(registry, model) == dict(zip(INTENDED_USES, expected, strict=True))


def test_unknown_licence_is_blocked(registry: Registry) -> None:
    r = review_teacher(registry, "gen-sim-1", None, "research", False)
    assert r.decision == "blocked" and r.blocked
    assert r.reasons == [UNKNOWN_LICENCE]
    assert r.licence_id is None


def test_given_licence_decides_for_a_model_the_registry_does_not_know(registry: Registry) -> None:
    r = review_teacher(registry, "gen-sim-1", "apache-2.0", "commercial-model", False)
    assert r.decision == "ok"
    assert r.licence_id == "apache-2.0"
    nc = review_teacher(registry, "my-org/private-model", "cc-by-nc-4.0", "commercial-model", False)
    assert nc.decision == "blocked"


def test_given_licence_missing_from_the_registry_is_blocked(registry: Registry) -> None:
    r = review_teacher(registry, "my-org/private-model", "bsd-3-clause", "research", False)
    assert r.decision == "blocked"
    assert "'bsd-3-clause' is not in the licence registry" in r.reasons[0]


def test_contradicting_licence_claim_blocks_and_the_registry_terms_apply(registry: Registry) -> None:
    r = review_teacher(registry, "claude-3-5-sonnet-20241022", "apache-2.0", "research", False)
    assert r.decision == "blocked"
    assert r.licence_id == "api:anthropic"
    assert "'apache-2.0' contradicts the licence registry" in r.reasons[0]
    # The Qwen trap: the 72B is not Apache-2.0 like its smaller siblings. Permitted by its own terms,
    # but the wrong claim still blocks until acknowledged.
    q = review_teacher(registry, "Qwen/Qwen2.5-72B-Instruct", "apache-2.0", "research", False)
    assert q.decision == "blocked" and q.licence_id == "qwen"
    assert review_teacher(registry, "Qwen/Qwen2.5-72B-Instruct", "QWEN", "research", False).decision == OBL


def test_acknowledged_conflict_proceeds_and_keeps_the_reasons(registry: Registry) -> None:
    r = review_teacher(registry, "meta-llama/Meta-Llama-3-8B-Instruct", None, "research", True)
    assert r.decision == "acknowledged-conflict"
    assert not r.blocked
    assert any("forbids using the teacher's outputs" in reason for reason in r.reasons)
    # Acknowledging when nothing conflicts changes nothing but is recorded.
    ok = review_teacher(registry, "Qwen/Qwen2.5-7B-Instruct", None, "research", True)
    assert ok.decision == "ok" and ok.acknowledged


def test_obligations_and_manifest_form(registry: Registry) -> None:
    r = review_teacher(registry, "meta-llama/Llama-3.3-70B-Instruct", "llama3.3", "commercial-model", False)
    assert r.decision == "ok-with-obligations"
    assert any('begins with "Llama"' in o for o in r.obligations)
    d = r.as_dict()
    json.dumps(d)  # the manifest is JSON
    assert d["licence_id"] == "llama3.3"
    assert d["licence"]["attribution"] == "Built with Llama"
    assert d["licence"]["source_url"].endswith("models/llama3_3/LICENSE")
    assert d["intended_use"] == "commercial-model" and d["acknowledged"] is False


def test_review_rejects_an_unknown_intended_use(registry: Registry) -> None:
    with pytest.raises(ValueError, match="unknown intended use"):
        review(registry.get("mit"), None, "fun", False)


def test_resolve_prefers_the_registry_over_the_given_id(registry: Registry) -> None:
    assert resolve_licence(registry, "gpt-4o", "mit").id == "api:openai"  # type: ignore[union-attr]
    assert resolve_licence(registry, "unknown/model", "mit").name == "MIT License"  # type: ignore[union-attr]
    assert resolve_licence(registry, "unknown/model", None) is None


# ------------------------------------------------------------------------------------------ user registries

USER = """
[[licence]]
id = "acme-internal"
name = "ACME model licence"
model_patterns = ["acme/*"]
train_other_models = "allowed"
competing_models = "allowed"
commercial_use = true
source = "ACME legal, memo 12"
source_url = "https://acme.example/legal/12"
source_date = "2026-01-01"

[[licence]]
id = "apache-2.0"
name = "Apache License 2.0 (our own Qwen2.5-72B fine-tune)"
model_patterns = ["acme-labs/qwen2.5-72b-*"]
train_other_models = "allowed"
competing_models = "allowed"
commercial_use = true
source = "our release"
source_url = "https://acme.example/release"
source_date = "2026-02-01"
"""


def test_user_registry_extends_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "licences.toml"
    path.write_text(USER)
    reg = load_registry(path)
    assert [s.path for s in reg.sources][0] == str(path)
    acme = reg.for_model("acme/teacher-1")
    assert acme is not None and acme.id == "acme-internal" and acme.origin == str(path)
    # The user's entry comes first, before the shipped Qwen 72B pattern that would match too.
    assert reg.for_model("acme-labs/Qwen2.5-72B-Instruct-ft").id == "apache-2.0"  # type: ignore[union-attr]
    # Shipped entries are still there.
    assert reg.for_model("Qwen/Qwen2.5-72B-Instruct").id == "qwen"  # type: ignore[union-attr]
    assert reg.get("acme-internal") is acme
    assert review_teacher(reg, "acme/teacher-1", None, "competing-model", False).decision == "ok"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[[licence]]\nid = 'x'\n", "missing key"),
        (
            USER.replace('commercial_use = true\nsource = "ACME', 'comercial = true\nsource = "ACME'),
            "unknown key",
        ),
        (
            USER.replace('train_other_models = "allowed"', 'train_other_models = "maybe"', 1),
            "train_other_models",
        ),
        ("[[licences]]\nid = 'x'\n", "unknown key 'licences'"),
        ("licence = [", "invalid TOML"),
        ("", "missing key 'licence'"),
    ],
    ids=["missing-keys", "typo", "bad-value", "bad-table", "bad-toml", "empty"],
)
def test_bad_user_registry_is_a_config_error_naming_the_file(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "bad-licences.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_registry(path)
    assert info.value.where == str(path)
    assert problem in info.value.problem


def test_bad_entry_is_named_by_position_and_id(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(USER.replace('train_other_models = "allowed"', 'train_other_models = "maybe"', 1))
    with pytest.raises(ConfigError, match=r"licence\[1\] \(id 'acme-internal'\): train_other_models"):
        load_registry(path)


def test_missing_user_registry_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such licence registry") as info:
        load_registry(tmp_path / "nope.toml")
    assert info.value.where == str(tmp_path / "nope.toml")
