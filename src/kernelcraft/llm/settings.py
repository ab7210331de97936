"""The ``llm:`` section of the config (plus ``prices:``) as the client reads it, with the shipped defaults for
keys a hand-built settings dict leaves out."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kernelcraft import layout

DEFAULTS: dict[str, Any] = {
    "concurrency": 4,
    "timeout_s": 600.0,
    "max_retries": 4,
    "backoff_s": 2.0,
    "max_backoff_s": 60.0,
    "budget_usd": None,
    "repair_attempts": 1,
    "replay": None,
    "fallback": "offline",
    "prices": {},
}


def llm_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """What :class:`~kernelcraft.llm.client.LLMClient` takes: the ``llm:`` section with ``prices`` added."""
    return {**DEFAULTS, **dict(config.get("llm") or {}), "prices": dict(config.get("prices") or {})}


def normalise(settings: Mapping[str, Any]) -> dict[str, Any]:
    out = {**DEFAULTS, **dict(settings)}
    out["prices"] = dict(out.get("prices") or {})
    return out


def replay_transcripts(replay: str | Path) -> Path:
    """The transcripts folder of the recorded run ``llm.replay`` points at, or a one-line error."""
    root = Path(replay)
    folder = layout.transcripts_dir(root)
    if not folder.is_dir() and not (root / "manifest.json").is_file():  # a run that made no model calls has none
        raise ValueError(f"config key 'llm.replay': {str(replay)!r} holds no transcripts folder; point it at a "
                         f"recorded run folder such as results/<run>")
    return folder
