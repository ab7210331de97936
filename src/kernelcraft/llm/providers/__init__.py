"""The provider registry: which adapter serves which ``provider`` of a request."""

from __future__ import annotations

from collections.abc import Callable

from kernelcraft.llm.providers.base import Provider, ProviderError, ProviderResult

__all__ = ["Provider", "ProviderError", "ProviderResult", "make_provider", "REGISTRY"]


def _openai(provider: str, api_key: str | None, base_url: str | None, timeout_s: float) -> Provider:
    from kernelcraft.llm.providers.openai_api import OpenAIProvider

    return OpenAIProvider(provider, api_key, base_url, timeout_s)


def _gemini(provider: str, api_key: str | None, base_url: str | None, timeout_s: float) -> Provider:
    from kernelcraft.llm.providers.gemini_api import GeminiProvider

    return GeminiProvider(provider, api_key, base_url, timeout_s)


# Adapters import their SDK lazily: a run that uses one provider never pays for importing the other.
REGISTRY: dict[str, Callable[[str, str | None, str | None, float], Provider]] = {
    "openai": _openai,
    "openai_compatible": _openai,
    "gemini": _gemini,
}


def make_provider(provider: str, api_key: str | None, base_url: str | None, timeout_s: float) -> Provider:
    try:
        factory = REGISTRY[provider]
    except KeyError:
        allowed = ", ".join(REGISTRY)
        raise ValueError(f"provider {provider!r} is not called over HTTP; HTTP providers are {allowed}") from None
    return factory(provider, api_key, base_url, timeout_s)
