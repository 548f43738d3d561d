"""The reasoning teachers' terms in the shipped licence registry (issue 14 item 7): each with a source."""

from __future__ import annotations

import pytest

from gen.provenance import load_registry


@pytest.mark.parametrize(
    ("model", "licence_id", "name_has"),
    [
        ("deepseek-ai/DeepSeek-R1", "mit", "DeepSeek-R1"),
        ("deepseek-ai/DeepSeek-R1-0528", "mit", "DeepSeek-R1"),
        ("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "mit", "Qwen"),
        ("deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", "mit", "Qwen"),
        ("deepseek-ai/DeepSeek-R1-0528-Qwen3-8B", "mit", "Qwen"),
        ("deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "llama3.1", "Llama 3.1"),
        ("deepseek-ai/DeepSeek-R1-Distill-Llama-70B", "llama3.3", "Llama 3.3"),
        ("Qwen/Qwen3-32B", "apache-2.0", "Qwen3"),
        ("Qwen/Qwen3-235B-A22B", "apache-2.0", "Qwen3"),
        ("Qwen/QwQ-32B", "apache-2.0", "QwQ"),
        ("Qwen/QwQ-32B-Preview", "apache-2.0", "QwQ"),
        ("qwq:32b", "apache-2.0", "QwQ"),
        ("openai/gpt-oss-20b", "apache-2.0", "gpt-oss"),
        ("openai/gpt-oss-120b", "apache-2.0", "gpt-oss"),
    ],
)
def test_each_reasoning_teacher_has_its_terms_with_a_source(
    model: str, licence_id: str, name_has: str
) -> None:
    licence = load_registry().for_model(model)
    assert licence is not None, model
    assert licence.id == licence_id and name_has in licence.name
    assert licence.source_url.startswith("https://") and licence.source and licence.source_date
    assert licence.train_other_models in ("allowed", "conditional")


def test_the_distilled_qwen_models_name_the_qwen_terms_they_bring() -> None:
    licence = load_registry().for_model("deepseek-ai/DeepSeek-R1-Distill-Qwen-14B")
    assert licence is not None
    assert "Apache-2.0" in licence.note and "Qwen2.5-14B" in licence.note and "Qwen3-8B" in licence.note
    assert not licence.obligations  # they bind the weights' redistribution, not a student
