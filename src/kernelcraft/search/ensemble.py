"""The weighted model ensemble of the config: which model answers which share of a round's requests.

Shares are split by weight with the largest-remainder rule, so they are deterministic and add up exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any


def split_by_weight(total: int, entries: list[dict]) -> list[int]:
    """How many of ``total`` requests each entry gets, in proportion to its weight."""
    weights = [float(e.get("weight", 1)) for e in entries]
    norm = sum(weights)
    exact = [total * w / norm for w in weights]
    counts = [math.floor(x) for x in exact]
    order = sorted(range(len(entries)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def model_label(entry: dict) -> str:
    return f"{entry['provider']}/{entry['model']}"


def may_propose(models: dict, op: Callable[[], str | None], backend: str) -> bool:
    """Whether some configured model might propose kernels for a problem whose op ``op()`` says: decided at
    DAG-build time, so problems nobody can search cost only their baseline. ``op`` is called only when every model
    is the offline proposer (recognising a problem may trace it)."""
    for entry in (*models["ideas"], *models["implement"]):
        if entry["provider"] != "offline":
            return True
    from kernelcraft.search.offline import OfflineProposer

    return OfflineProposer.may_support(op(), backend)


def make_proposer(entry: dict, seed: int, *, client: Any = None, settings: Any = None,
                  repair_attempts: int = 1, tolerance: dict | None = None) -> Any:
    """The proposer object behind one ensemble entry: the offline proposer (told the run's ``tolerance``, as a
    model's prompt states it), or a model asked through ``client`` (an ``LLMClient``) with prompts rendered per
    ``settings`` (a ``PromptSettings``)."""
    if entry["provider"] == "offline":
        from kernelcraft.search.offline import OfflineProposer

        return OfflineProposer(seed, tolerance)
    if client is None or settings is None:
        raise ValueError(f"models: {model_label(entry)} needs a model client and prompt settings")
    from kernelcraft.search.llm_proposer import LLMProposer

    return LLMProposer(entry, client, settings, seed, repair_attempts=repair_attempts)
