"""What a model call costs, for spans whose producer sent no cost.

Public list prices in US dollars per million tokens, as published by the providers (checked
2026-11; providers change them: TUNELAB_TRACING_PRICES_FILE adds or overrides entries). A model
name matches the longest entry it starts with, so "gpt-4o-2024-08-06" is priced as "gpt-4o"
and "gpt-4o-mini" as itself. Unknown models get no cost rather than a guess.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from services.common.remembered import Remembered


@dataclass(frozen=True)
class Price:
    input: float  # per million input tokens
    output: float  # per million output tokens
    cache_read: float | None = None  # per million cached input tokens read; None: input price
    cache_write: float | None = None  # per million input tokens written to the cache


BUILT_IN: dict[str, Price] = {
    "gpt-4o": Price(2.50, 10.00, 1.25),
    "gpt-4o-mini": Price(0.15, 0.60, 0.075),
    "gpt-4.1": Price(2.00, 8.00, 0.50),
    "gpt-4.1-mini": Price(0.40, 1.60, 0.10),
    "gpt-4.1-nano": Price(0.10, 0.40, 0.025),
    "o1": Price(15.00, 60.00, 7.50),
    "o3-mini": Price(1.10, 4.40, 0.55),
    "claude-3-5-sonnet": Price(3.00, 15.00, 0.30, 3.75),
    "claude-3-7-sonnet": Price(3.00, 15.00, 0.30, 3.75),
    "claude-sonnet-4": Price(3.00, 15.00, 0.30, 3.75),
    "claude-3-5-haiku": Price(0.80, 4.00, 0.08, 1.00),
    "claude-3-opus": Price(15.00, 75.00, 1.50, 18.75),
    "claude-opus-4": Price(15.00, 75.00, 1.50, 18.75),
    "gemini-1.5-pro": Price(1.25, 5.00),
    "gemini-1.5-flash": Price(0.075, 0.30),
    "gemini-2.0-flash": Price(0.10, 0.40, 0.025),
}


class PriceTable:
    def __init__(self, prices: dict[str, Price]) -> None:
        # Longest first: the first prefix that matches is the most specific.
        self._entries = sorted(prices.items(), key=lambda item: len(item[0]), reverse=True)
        # Model names come from producers: remembered, but boundedly.
        self.find = Remembered(self._find, 4096)

    @classmethod
    def load(cls, path: Path | None) -> PriceTable:
        prices = dict(BUILT_IN)
        if path is not None:
            raw = json.loads(path.read_text())
            for model, entry in raw.items():
                prices[str(model).lower()] = Price(**entry)
        return cls(prices)

    def _find(self, model: str) -> Price | None:
        name = model.lower().rpartition("/")[2]  # "openai/gpt-4o" is priced as "gpt-4o"
        return next((price for prefix, price in self._entries if name.startswith(prefix)), None)

    def cost(
        self,
        model: str,
        *,
        input_tokens: int,
        output_tokens: int,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> tuple[float, float] | None:
        """(input cost, output cost) in dollars, or None for a model not in the table.

        `input_tokens` counts every prompt token, cached ones included (as OpenAI reports it;
        the OpenTelemetry GenAI conventions say the same)."""
        price = self.find(model)
        if price is None:
            return None
        uncached = max(0, input_tokens - cache_read_tokens - cache_write_tokens)
        input_cost = (
            uncached * price.input
            + cache_read_tokens
            * (price.cache_read if price.cache_read is not None else price.input)
            + cache_write_tokens
            * (price.cache_write if price.cache_write is not None else price.input)
        ) / 1e6
        return input_cost, output_tokens * price.output / 1e6
