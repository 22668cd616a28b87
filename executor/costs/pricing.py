"""Model prices in USD per million tokens, so limits, budgets and digests can speak in money.

Costs are whole nano-dollars (int): a price with up to three decimals per million tokens is
exact per token, and sums of ints do not drift the way sums of floats do. An unknown model
has no price: its tokens are counted and its cost is unknown (None), never guessed as $0."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_HALF_UP, Decimal

from executor.agents.llm_reply import Usage
from executor.config.schema import Price

NANOS_PER_USD = 1_000_000_000
# USD per million tokens is micro-dollars per token; nano-dollars per token are 1000x that.
_NANOS_PER_TOKEN_PER_PRICE_UNIT = 1_000


def _p(prompt: str, completion: str) -> Price:
    return Price(prompt=Decimal(prompt), completion=Decimal(completion))


# Public list prices; `prices:` in nightcrew.yaml adds models and overrides these.
PRICES: dict[str, Price] = {
    "gpt-4.1": _p("2.00", "8.00"),
    "gpt-4.1-mini": _p("0.40", "1.60"),
    "gpt-4.1-nano": _p("0.10", "0.40"),
    "gpt-4o": _p("2.50", "10.00"),
    "gpt-4o-mini": _p("0.15", "0.60"),
    "o3": _p("2.00", "8.00"),
    "o4-mini": _p("1.10", "4.40"),
}


def price_table(overrides: Mapping[str, Price] = {}) -> dict[str, Price]:
    return PRICES | dict(overrides)


def price_of(model: str, prices: Mapping[str, Price] = PRICES) -> Price | None:
    """`openai/gpt-4.1` (a gateway's spelling) is priced as `gpt-4.1` unless listed itself."""
    return prices.get(model) or prices.get(model.rsplit("/", 1)[-1])


def cost_nanos(price: Price | None, usage: Usage) -> int | None:
    if price is None:
        return None
    exact = usage.prompt_tokens * price.prompt + usage.completion_tokens * price.completion
    return int((exact * _NANOS_PER_TOKEN_PER_PRICE_UNIT).to_integral_value(ROUND_HALF_UP))


def cost_usd(model: str, usage: Usage, prices: Mapping[str, Price] = PRICES) -> float | None:
    nanos = cost_nanos(price_of(model, prices), usage)
    return None if nanos is None else nanos / NANOS_PER_USD


def to_nanos(dollars: Decimal | float) -> int:
    return int((Decimal(str(dollars)) * NANOS_PER_USD).to_integral_value(ROUND_HALF_UP))


def usd(nanos: int, places: int = 2) -> str:
    """`$1.23`: rounded half up to cents (or `places`), from the exact amount."""
    step = Decimal(1).scaleb(-places)
    amount = (Decimal(nanos) / NANOS_PER_USD).quantize(step, ROUND_HALF_UP)
    return f"${amount:,}"


def cost_text(nanos: int, unpriced_tokens: int, places: int = 2) -> str:
    """What a task cost, honest about tokens of models without a price."""
    if not unpriced_tokens:
        return usd(nanos, places)
    unknown = f"cost unknown for {unpriced_tokens:,} tokens"
    return unknown if not nanos else f"{usd(nanos, places)} + {unknown}"
