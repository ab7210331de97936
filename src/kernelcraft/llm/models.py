"""Facts about providers and models that more than one module needs: default endpoints and key variables, which
models reason (and so take no temperature), and the API each provider speaks."""

from __future__ import annotations

import re

# Providers LLMClient calls over HTTP; offline is the in-process proposer, replay is a mode (llm.replay).
API_PROVIDERS = ("openai", "gemini", "openai_compatible")
# Environment variables holding a provider's key, first match wins (an entry's api_key_env replaces these).
DEFAULT_KEY_ENV = {"openai": ("OPENAI_API_KEY",), "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
                   "openai_compatible": ()}
DEFAULT_API = {"openai": "chat", "openai_compatible": "chat", "gemini": "generate_content"}
ALLOWED_APIS = {"openai": ("chat", "responses"), "openai_compatible": ("chat", "responses"),
                "gemini": ("generate_content",)}
# OpenAI's reasoning families: they reject temperature and budget output with max_completion_tokens.
_REASONING_NAME = re.compile(r"^(o1|o3|o4|gpt-5)([-.]|$)")


def is_reasoning_model(provider: str, model: str, reasoning_effort: str | None = None) -> bool:
    """OpenAI-style reasoning: an o1/o3/o4/gpt-5 model name, or any entry that sets a reasoning effort."""
    if provider not in ("openai", "openai_compatible"):
        return False
    return reasoning_effort is not None or bool(_REASONING_NAME.match(model.rsplit("/", 1)[-1]))


def key_env_names(entry: dict) -> tuple[str, ...]:
    """Where the key of one ensemble entry (or request) is looked up."""
    own = entry.get("api_key_env")
    return (own,) if own else DEFAULT_KEY_ENV.get(entry["provider"], ())


def needs_key(provider: str) -> bool:
    """Local OpenAI-compatible servers (vLLM, Ollama, llama.cpp) take any key or none."""
    return provider in ("openai", "gemini")
