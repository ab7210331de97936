"""Building a :class:`Request` from one ensemble entry of the config, so every proposer asks the same way and
the request key (and with it resume and replay) does not depend on who built it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kernelcraft.llm.models import DEFAULT_API, is_reasoning_model
from kernelcraft.llm.types import Message, Request

MessageLike = Message | tuple[str, str] | Mapping[str, str]


def as_messages(messages: Iterable[MessageLike]) -> tuple[Message, ...]:
    """Messages as Message objects; (role, content) pairs and {"role", "content"} dicts are accepted."""
    out = []
    for m in messages:
        if isinstance(m, Message):
            out.append(m)
        elif isinstance(m, Mapping):
            out.append(Message(m["role"], m["content"]))  # type: ignore[arg-type]
        else:
            role, content = m
            out.append(Message(role, content))  # type: ignore[arg-type]
    for m in out:
        if m.role not in ("system", "user", "assistant"):
            raise ValueError(f"message role {m.role!r} is not allowed; roles are system, user, assistant")
    return tuple(out)


def request_for(entry: Mapping[str, Any], messages: Iterable[MessageLike], *, purpose: str,
                tags: Mapping[str, Any] | None = None, sample: int = 0, json_schema: dict[str, Any] | None = None,
                seed: int | None = None) -> Request:
    """The request one ensemble entry (``models.ideas[i]`` / ``models.implement[i]``) makes for these messages.
    A reasoning model's temperature is dropped here, not only on the wire, so the key reflects what is sent."""
    provider = entry["provider"]
    model = entry["model"]
    effort = entry.get("reasoning_effort")
    temperature = entry.get("temperature")
    if is_reasoning_model(provider, model, effort):
        temperature = None
    return Request(
        provider=provider, model=model, messages=as_messages(messages),
        api=entry.get("api") or DEFAULT_API.get(provider, "chat"), base_url=entry.get("base_url"),
        temperature=temperature, max_output_tokens=entry.get("max_output_tokens"), reasoning_effort=effort,
        json_schema=json_schema, seed=seed, sample=sample, purpose=purpose, tags=dict(tags or {}),
        api_key_env=entry.get("api_key_env"),
    )
