"""Spending limits: --max-usd (priced from a shipped table, overridable) and --max-tokens."""

from __future__ import annotations

import dataclasses
import fnmatch
import tomllib
from dataclasses import dataclass
from pathlib import Path

from gen.errors import ConfigError

PRICES = Path(__file__).with_name("prices.toml")


@dataclass(frozen=True, slots=True)
class Price:
    """A model's prices, USD per million tokens. `prompt_tokens` always counts every input token, cached
    or not: of them, `cached` were read from the provider's prompt cache (billed at `cached_input`) and
    `written` were written to it (billed at `cache_write`; Anthropic's cache writes cost more than input).
    A rate left None is the plain input price."""

    input: float  # USD per million prompt tokens
    output: float  # USD per million completion tokens
    cached_input: float | None = None  # USD per million prompt tokens read from the cache
    cache_write: float | None = None  # USD per million prompt tokens written to the cache
    cache_min_tokens: int | None = None  # the shortest prefix the provider caches
    batch_discount: float = 1.0  # the share of the online price its batch API bills (0.5: half)

    def cost(self, prompt_tokens: int, completion_tokens: int, cached: int = 0, written: int = 0) -> float:
        cached_rate = self.input if self.cached_input is None else self.cached_input
        write_rate = self.input if self.cache_write is None else self.cache_write
        plain = max(prompt_tokens - cached - written, 0)
        return (
            plain * self.input + cached * cached_rate + written * write_rate + completion_tokens * self.output
        ) / 1e6

    def scaled(self, factor: float) -> Price:
        """Every rate times `factor` (a batch API's discount, or its inverse)."""

        def times(rate: float | None) -> float | None:
            return None if rate is None else rate * factor

        return dataclasses.replace(
            self,
            input=self.input * factor,
            output=self.output * factor,
            cached_input=times(self.cached_input),
            cache_write=times(self.cache_write),
        )

    def saved(self, cached: int, written: int = 0) -> float:
        """What caching saved against billing every prompt token at the input price (negative when
        cache writes cost more than the reads saved)."""
        return self.cost(cached + written, 0) - self.cost(cached + written, 0, cached, written)


def list_price(price: Price | None, *, batch: bool) -> Price | None:
    """The online (list) price of a run priced at `price`: a batch run's price is the batch price
    (gen.prepare scaled it by the batch discount), what its online fallback is not billed at."""
    if not batch or price is None or not price.batch_discount:
        return price
    return price.scaled(1 / price.batch_discount)


def _price(e: dict) -> Price:
    def rate(key: str) -> float | None:
        return None if e.get(key) is None else float(e[key])

    minimum = e.get("cache_min_tokens")
    return Price(
        float(e["input"]),
        float(e["output"]),
        rate("cached_input"),
        rate("cache_write"),
        None if minimum is None else int(minimum),
        float(e.get("batch_discount", 1.0)),
    )


def load_prices(path: Path = PRICES) -> list[tuple[str, Price]]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        return [(str(e["pattern"]).lower(), _price(e)) for e in data["price"]]
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

    def charge(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        cached: int = 0,
        written: int = 0,
        *,
        price: Price | None = None,
    ) -> None:
        """Count a request's usage: `cached` and `written` are the prompt tokens read from and written
        to the provider's cache (part of `prompt_tokens`), priced at their own rates; at `price` when it
        has one of its own (a batch run's online fallback), else at the run's."""
        self.spent_tokens += prompt_tokens + completion_tokens
        price = price or self.price
        if price is not None:
            self.spent_usd += price.cost(prompt_tokens, completion_tokens, cached, written)

    def exhausted(self, *, reserved_tokens: int = 0, reserved_usd: float | None = None) -> str | None:
        """Why no further request may leave, or None. `reserved_tokens` covers requests in flight;
        `reserved_usd`, when given, is what they cost (else they are priced at the input rate)."""
        if self.max_tokens is not None and self.spent_tokens + reserved_tokens >= self.max_tokens:
            return f"token budget reached: {self.spent_tokens:,} of {self.max_tokens:,} tokens spent"
        if self.max_usd is not None and self.price is not None:
            reserved = self.price.cost(reserved_tokens, 0) if reserved_usd is None else reserved_usd
            if self.spent_usd + reserved >= self.max_usd:
                return f"spending budget reached: ${self.spent_usd:,.4f} of ${self.max_usd:,.2f} spent"
        return None
