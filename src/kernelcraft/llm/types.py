"""The vocabulary shared by everything that talks to language models: what is asked, and what came back.

A :class:`Request` is everything that determines an answer (provider, model, endpoint, messages, sampling
parameters and a sample index), so its digest is the key under which the transcript is stored: asking the same
thing twice, in this run or after an interruption, finds the stored answer instead of paying for a new call. A
:class:`Reply` never raises for provider faults: a refused, failed or timed-out call is a Reply whose ``error``
says why, so one bad call costs one candidate, never the workflow.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant"]
PROVIDERS = ("openai", "gemini", "openai_compatible", "offline", "replay")


@dataclass(frozen=True)
class Message:
    role: Role
    content: str


@dataclass(frozen=True)
class Request:
    """One model call. ``sample`` distinguishes independent samples of the same prompt (implementation k of an
    idea), so they are different calls with different transcripts; ``purpose`` and ``tags`` only label the
    transcript (problem, round, idea...) and are not part of the key."""

    provider: str
    model: str
    messages: tuple[Message, ...]
    api: str = "chat"  # openai: chat | responses; gemini: generate_content
    base_url: str | None = None
    temperature: float | None = None
    max_output_tokens: int | None = None
    reasoning_effort: str | None = None
    json_schema: dict[str, Any] | None = None  # ask for structured output matching this JSON schema
    seed: int | None = None
    sample: int = 0
    purpose: str = ""
    tags: dict[str, Any] = field(default_factory=dict)
    # Which environment variable holds the API key (None: the provider's default). Where the key comes from does
    # not change the answer, so, like purpose and tags, it is not part of the key.
    api_key_env: str | None = None

    def key_material(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("purpose")
        d.pop("tags")
        d.pop("api_key_env")
        d["messages"] = [{"role": m.role, "content": m.content} for m in self.messages]
        return d

    def key(self) -> str:
        """sha256 of the canonical JSON of what determines the answer."""
        blob = json.dumps(self.key_material(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0  # included in output_tokens where the provider reports them separately


@dataclass
class Reply:
    """What a call produced. ``text`` is None exactly when ``error`` is set. ``finish_reason`` is normalised to
    stop | length | content_filter | other; ``length`` means the body was truncated. ``cached`` is True when the
    answer came from a stored transcript (resume or replay) and no call was made."""

    key: str
    text: str | None
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = None
    latency_s: float = 0.0
    attempts: int = 0
    cached: bool = False
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None
