"""Output schema for prompts/ticket_triage.toml: triage of one support ticket.

Every field is required and extra keys are forbidden, so the JSON Schema that
pydantic produces is accepted by OpenAI-style ``json_schema.strict`` mode.
"""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Triage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    category: Literal["billing", "bug", "account", "feature_request", "how_to", "outage"] = Field(
        description="The single category that best fits the ticket."
    )
    priority: Literal["low", "medium", "high", "urgent"] = Field(
        description="How quickly support must respond, following the priority rules."
    )
    product_area: str = Field(
        description="The part of the product concerned, e.g. 'boards', 'automations', 'invoices', 'sso'."
    )
    summary: str = Field(
        max_length=200,
        description="One neutral sentence, at most 200 characters, saying what the customer needs.",
    )
    needs_human: bool = Field(
        description="True when an agent must act (refunds, data loss, security, legal, angry escalations)."
    )
