"""Spending limits: --max-usd (priced from a shipped table, overridable) and --max-tokens."""

from __future__ import annotations

import fnmatch
import tomllib
from dataclasses import dataclass
from pathlib import Path

from gen.errors import ConfigError

PRICES = Path(__file__).with_name("prices.toml")


@dataclass(frozen=True, slots=True)
class Price:
    input: float  # USD per million prompt tokens
    output: float  # USD per million completion tokens

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1e6

    def scaled(self, factor: float) -> Price:
        """This price times `factor` (a batch API's discount)."""
        return Price(self.input * factor, self.output * factor)


def load_prices(path: Path = PRICES) -> list[tuple[str, Price]]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        return [
            (str(e["pattern"]).lower(), Price(float(e["input"]), float(e["output"]))) for e in data["price"]
        ]
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as e:
        raise ConfigError(path, f"not a price table: {e}") from None


def price_for(model: str, *, table: list[tuple[str, Price]] | None = None) -> Price | None:
    name = model.lower().rsplit("/", 1)[-1]
    for pattern, price in table if table is not None else load_prices():
        if fnmatch.fnmatchcase(name, pattern):
            return price
    return None


class Budget:
    """What the dataset has cost so far (across resumed runs) against the limits the user set."""

    def __init__(
        self,
        *,
        max_usd: float | None,
        max_tokens: int | None,
        price: Price | None,
        spent_usd: float = 0.0,
        spent_tokens: int = 0,
    ) -> None:
        self.max_usd = max_usd
        self.max_tokens = max_tokens
        self.price = price
        self.spent_usd = spent_usd
        self.spent_tokens = spent_tokens

    def charge(self, prompt_tokens: int, completion_tokens: int, *, price: Price | None = None) -> None:
        """Count a request's usage, at `price` when it has one of its own (a batch run's online
        fallback), else at the run's."""
        self.spent_tokens += prompt_tokens + completion_tokens
        price = price or self.price
        if price is not None:
            self.spent_usd += price.cost(prompt_tokens, completion_tokens)

    def exhausted(self, *, reserved_tokens: int = 0) -> str | None:
        """Why no further request may leave, or None. `reserved_tokens` covers requests in flight."""
        if self.max_tokens is not None and self.spent_tokens + reserved_tokens >= self.max_tokens:
            return f"token budget reached: {self.spent_tokens:,} of {self.max_tokens:,} tokens spent"
        if self.max_usd is not None and self.price is not None:
            reserved = self.price.cost(reserved_tokens, 0)
            if self.spent_usd + reserved >= self.max_usd:
                return f"spending budget reached: ${self.spent_usd:,.4f} of ${self.max_usd:,.2f} spent"
        return None
