"""Output schema for prompts/quickstart.toml: one short fact about a topic.

Every field is required and extra keys are forbidden, so the JSON Schema that
pydantic produces is accepted by OpenAI-style ``json_schema.strict`` mode.
"""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Fact(BaseModel):
    model_config = ConfigDict(extra="forbid")

    topic: str = Field(description="The topic the fact is about, copied from the request.")
    fact: str = Field(description="One true, self-contained sentence about the topic.")
    difficulty: Literal["easy", "medium", "hard"] = Field(
        description="How hard the fact is to understand for the requested audience."
    )
