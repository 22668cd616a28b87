"""Model prices in USD per million tokens (prompt, completion), so limits and digests can
speak in money. Unknown models are counted in tokens and their cost is unknown (None)."""

from __future__ import annotations

from executor.llm_reply import Usage

# Public list prices; a model missing here simply has no cost limit enforced.
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "o3": (2.00, 8.00),
    "o4-mini": (1.10, 4.40),
}


def cost_usd(
    model: str, usage: Usage, prices: dict[str, tuple[float, float]] = PRICES
) -> float | None:
    price = prices.get(model) or prices.get(model.rsplit("/", 1)[-1])
    if price is None:
        return None
    return (usage.prompt_tokens * price[0] + usage.completion_tokens * price[1]) / 1_000_000
