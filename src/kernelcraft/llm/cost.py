"""Prices and the cost of one call. Prices come from the config's ``prices:`` table (USD per million input and
output tokens, keyed by model name); a model without a price has an unknown cost (None), which is only allowed
when no ``llm.budget_usd`` is set (checked with the config)."""

from __future__ import annotations

from collections.abc import Mapping

from kernelcraft.llm.types import Usage


def price_of(model: str, prices: Mapping[str, Mapping[str, float]]) -> Mapping[str, float] | None:
    """Exact model names only: a dated snapshot or a "-pro" variant can cost ten times its base model."""
    return prices.get(model)


def cost_usd(model: str, usage: Usage, prices: Mapping[str, Mapping[str, float]]) -> float | None:
    """Input at the input price, output (reasoning/thinking tokens included, as billed) at the output price."""
    price = price_of(model, prices)
    if price is None:
        return None
    return (usage.input_tokens * float(price["input"]) + usage.output_tokens * float(price["output"])) / 1e6


def missing_prices(entries: list[dict], prices: Mapping[str, Mapping[str, float]]) -> list[dict]:
    """Ensemble entries that make paid calls but have no price (offline entries cost nothing)."""
    return [e for e in entries if e["provider"] != "offline" and price_of(e["model"], prices) is None]
