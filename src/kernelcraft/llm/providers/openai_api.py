"""OpenAI and OpenAI-compatible endpoints through the official ``openai`` SDK: chat completions and responses.

The SDK's own retries are off (``max_retries=0``): :mod:`kernelcraft.llm.retry` owns retrying so that every
attempt is counted, its wait recorded and Retry-After honoured the same way for every provider.
"""

from __future__ import annotations

import json
from typing import Any

from kernelcraft.llm.models import is_reasoning_model
from kernelcraft.llm.providers.base import (
    ProviderError,
    ProviderResult,
    connection_error,
    malformed_error,
    one_line,
    status_error,
    timeout_error,
)
from kernelcraft.llm.retry import parse_retry_after
from kernelcraft.llm.types import Request, Usage

# Local servers ignore the key, but the SDK insists on one.
PLACEHOLDER_KEY = "no-key-needed"

_CHAT_FINISH = {"stop": "stop", "length": "length", "content_filter": "content_filter"}
_INCOMPLETE = {"max_output_tokens": "length", "content_filter": "content_filter"}


def _schema_name(schema: dict) -> str:
    name = "".join(c if c.isalnum() or c in "_-" else "_" for c in str(schema.get("title") or "reply"))
    return name[:64] or "reply"


def chat_params(request: Request, compatible: bool) -> dict[str, Any]:
    """Keyword arguments of ``chat.completions.create`` for one request."""
    params: dict[str, Any] = {
        "model": request.model,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
    }
    reasoning = is_reasoning_model(request.provider, request.model, request.reasoning_effort)
    if reasoning:
        if request.reasoning_effort:
            params["reasoning_effort"] = request.reasoning_effort
    elif request.temperature is not None:
        params["temperature"] = request.temperature
    if request.max_output_tokens is not None:
        # max_tokens is deprecated on OpenAI and refused by reasoning models; local servers know it best.
        params["max_tokens" if compatible and not reasoning else "max_completion_tokens"] = request.max_output_tokens
    if request.seed is not None:
        params["seed"] = request.seed
    if request.json_schema is not None:
        params["response_format"] = {"type": "json_schema", "json_schema": {
            "name": _schema_name(request.json_schema), "schema": request.json_schema, "strict": False}}
    return params


def responses_params(request: Request) -> dict[str, Any]:
    """Keyword arguments of ``responses.create``: system messages become ``instructions``."""
    system = "\n\n".join(m.content for m in request.messages if m.role == "system")
    params: dict[str, Any] = {
        "model": request.model,
        "input": [{"role": m.role, "content": m.content} for m in request.messages if m.role != "system"],
    }
    if system:
        params["instructions"] = system
    if is_reasoning_model(request.provider, request.model, request.reasoning_effort):
        if request.reasoning_effort:
            params["reasoning"] = {"effort": request.reasoning_effort}
    elif request.temperature is not None:
        params["temperature"] = request.temperature
    if request.max_output_tokens is not None:
        params["max_output_tokens"] = request.max_output_tokens
    if request.json_schema is not None:
        params["text"] = {"format": {"type": "json_schema", "name": _schema_name(request.json_schema),
                                     "schema": request.json_schema, "strict": False}}
    return params


def _error_message(err: Any) -> str:
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return str(getattr(err, "message", None) or err)


def translate(err: Exception, timeout_s: float) -> ProviderError:
    """An SDK exception as a ProviderError (anything unknown is a malformed reply, never retried)."""
    import openai

    if isinstance(err, openai.APITimeoutError):
        return timeout_error(timeout_s)
    if isinstance(err, openai.APIConnectionError):
        cause = err.__cause__ or err
        return connection_error(f"{type(cause).__name__}: {cause}")
    if isinstance(err, openai.APIStatusError):
        return status_error(err.status_code, _error_message(err), parse_retry_after(err.response.headers))
    return malformed_error(f"{type(err).__name__}: {err}")


def _usage(usage: Any) -> Usage:
    if usage is None:
        return Usage()
    details = getattr(usage, "completion_tokens_details", None) or getattr(usage, "output_tokens_details", None)
    inp = getattr(usage, "prompt_tokens", None)
    out = getattr(usage, "completion_tokens", None)
    if inp is None:
        inp = getattr(usage, "input_tokens", 0)
        out = getattr(usage, "output_tokens", 0)
    return Usage(input_tokens=int(inp or 0), output_tokens=int(out or 0),
                 reasoning_tokens=int(getattr(details, "reasoning_tokens", 0) or 0))


def _raw(response: Any) -> dict[str, Any]:
    try:
        return json.loads(response.to_json())
    except Exception:  # the raw copy is a courtesy; the parsed fields are what matter
        return {}


def parse_chat(response: Any) -> ProviderResult:
    choices = getattr(response, "choices", None)
    if not choices:
        raise malformed_error("chat completion without choices")
    choice = choices[0]
    message = getattr(choice, "message", None)
    if message is None:
        raise malformed_error("chat completion choice without a message")
    finish = _CHAT_FINISH.get(str(choice.finish_reason), "other")
    text = message.content or ""
    if not text and getattr(message, "refusal", None):
        finish = "content_filter"
    return ProviderResult(text, finish, _usage(response.usage), _raw(response))


def parse_responses(response: Any) -> ProviderResult:
    if getattr(response, "output", None) is None:
        raise malformed_error("response without output")
    status = getattr(response, "status", None)
    if status == "incomplete":
        reason = getattr(getattr(response, "incomplete_details", None), "reason", None)
        finish = _INCOMPLETE.get(str(reason), "other")
    elif status in (None, "completed"):
        finish = "stop"
    else:
        finish = "other"
    return ProviderResult(response.output_text, finish, _usage(response.usage), _raw(response))


class OpenAIProvider:
    """One endpoint: api.openai.com (``openai``) or a self-hosted server by base URL (``openai_compatible``)."""

    def __init__(self, provider: str, api_key: str | None, base_url: str | None, timeout_s: float) -> None:
        import openai

        if provider == "openai_compatible" and not base_url:
            raise ValueError("provider openai_compatible needs base_url, e.g. http://localhost:8000/v1")
        self.compatible = provider == "openai_compatible"
        self.timeout_s = timeout_s
        self.client = openai.OpenAI(api_key=api_key or PLACEHOLDER_KEY, base_url=base_url, timeout=timeout_s,
                                    max_retries=0)

    def call(self, request: Request) -> ProviderResult:
        try:
            if request.api == "responses":
                response = self.client.responses.create(**responses_params(request))
            else:
                response = self.client.chat.completions.create(**chat_params(request, self.compatible))
        except Exception as err:  # every SDK fault becomes a reply, never a crashed workflow
            raise translate(err, self.timeout_s) from err
        if isinstance(response, str):  # the SDK hands back a non-JSON body as text
            raise malformed_error(f"body is not JSON: {one_line(response, 120)!r}")
        return parse_responses(response) if request.api == "responses" else parse_chat(response)
