"""Gemini through the official ``google-genai`` SDK (``models.generate_content``).

The SDK's retries are off (one attempt) for the same reason as OpenAI's: :mod:`kernelcraft.llm.retry` owns them.
Thinking tokens are billed as output, so they are added to ``output_tokens`` and also reported on their own.
"""

from __future__ import annotations

from typing import Any

from kernelcraft.llm.providers.base import (
    ProviderError,
    ProviderResult,
    connection_error,
    malformed_error,
    status_error,
    timeout_error,
)
from kernelcraft.llm.retry import parse_retry_after
from kernelcraft.llm.types import Request, Usage

_FINISH = {"STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter", "RECITATION": "content_filter",
           "BLOCKLIST": "content_filter", "PROHIBITED_CONTENT": "content_filter", "SPII": "content_filter",
           "IMAGE_SAFETY": "content_filter"}
# reasoning_effort as a thinking budget in tokens (Gemini 2.5 thinks by budget, not by named effort).
THINKING_BUDGET = {"none": 0, "minimal": 128, "low": 1024, "medium": 8192, "high": 24576, "xhigh": 32768,
                   "max": 32768}


def generate_params(request: Request) -> dict[str, Any]:
    """Keyword arguments of ``models.generate_content``: system messages become the system instruction and the
    assistant role is Gemini's ``model``."""
    from google.genai import types

    system = "\n\n".join(m.content for m in request.messages if m.role == "system")
    contents = [types.Content(role="model" if m.role == "assistant" else "user", parts=[types.Part(text=m.content)])
                for m in request.messages if m.role != "system"]
    config: dict[str, Any] = {}
    if system:
        config["system_instruction"] = system
    if request.temperature is not None:
        config["temperature"] = request.temperature
    if request.max_output_tokens is not None:
        config["max_output_tokens"] = request.max_output_tokens
    if request.seed is not None:
        config["seed"] = request.seed
    if request.reasoning_effort is not None:
        config["thinking_config"] = types.ThinkingConfig(thinking_budget=THINKING_BUDGET[request.reasoning_effort])
    if request.json_schema is not None:
        # response_json_schema takes standard JSON Schema; response_schema only Gemini's OpenAPI subset.
        config["response_mime_type"] = "application/json"
        config["response_json_schema"] = request.json_schema
    return {"model": request.model, "contents": contents, "config": types.GenerateContentConfig(**config)}


def translate(err: Exception, timeout_s: float) -> ProviderError:
    import httpx2
    from google.genai import errors

    if isinstance(err, errors.APIError):
        response = getattr(err, "response", None)
        headers = getattr(response, "headers", None)
        return status_error(int(err.code or 0), str(err.message or err.status or err), parse_retry_after(headers))
    if isinstance(err, httpx2.TimeoutException):
        return timeout_error(timeout_s)
    if isinstance(err, httpx2.TransportError):
        return connection_error(f"{type(err).__name__}: {err}")
    return malformed_error(f"{type(err).__name__}: {err}")


def _usage(meta: Any) -> Usage:
    if meta is None:
        return Usage()
    thoughts = int(meta.thoughts_token_count or 0)
    return Usage(input_tokens=int(meta.prompt_token_count or 0),
                 output_tokens=int(meta.candidates_token_count or 0) + thoughts, reasoning_tokens=thoughts)


def parse(response: Any) -> ProviderResult:
    raw = response.model_dump(mode="json", exclude_none=True, exclude={"sdk_http_response"})
    usage = _usage(response.usage_metadata)
    if not response.candidates:
        blocked = getattr(response.prompt_feedback, "block_reason", None) if response.prompt_feedback else None
        if blocked is None:
            raise malformed_error("generateContent reply without candidates")
        return ProviderResult("", "content_filter", usage, raw)
    candidate = response.candidates[0]
    parts = (candidate.content.parts if candidate.content else None) or []
    text = "".join(p.text for p in parts if p.text and not p.thought)
    reason = candidate.finish_reason.value if candidate.finish_reason is not None else "STOP"
    return ProviderResult(text, _FINISH.get(str(reason), "other"), usage, raw)


class GeminiProvider:
    def __init__(self, provider: str, api_key: str | None, base_url: str | None, timeout_s: float) -> None:
        from google import genai
        from google.genai import types

        options = types.HttpOptions(base_url=base_url, timeout=int(timeout_s * 1000),
                                    retry_options=types.HttpRetryOptions(attempts=1))
        self.timeout_s = timeout_s
        self.client = genai.Client(api_key=api_key, http_options=options)

    def call(self, request: Request) -> ProviderResult:
        try:
            response = self.client.models.generate_content(**generate_params(request))
        except Exception as err:  # every SDK fault becomes a reply, never a crashed workflow
            raise translate(err, self.timeout_s) from err
        try:
            return parse(response)
        except ProviderError:
            raise
        except Exception as err:  # a body the SDK accepted but that lacks what we read
            raise malformed_error(f"{type(err).__name__}: {err}") from err
