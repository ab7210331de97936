"""What every provider adapter returns or raises, so the retry layer and the client never see an SDK type.

An adapter turns one :class:`~kernelcraft.llm.types.Request` into one HTTP call through its official SDK and
translates the outcome: a :class:`ProviderResult` when the call returned a body (even a truncated or refused one:
that is an answer, stored and reused), or a :class:`ProviderError` saying whether trying again could help.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from kernelcraft.llm.types import Request, Usage

FINISH_REASONS = ("stop", "length", "content_filter", "other")


@dataclass
class ProviderResult:
    text: str
    finish_reason: str  # one of FINISH_REASONS
    usage: Usage
    raw: dict[str, Any] = field(default_factory=dict)  # the response body as JSON, kept in the transcript


class ProviderError(Exception):
    """A call that produced no usable answer. ``kind`` is status | timeout | connection | malformed | refused;
    ``retry_after`` is the server's Retry-After in seconds when it sent one."""

    def __init__(self, reason: str, *, kind: str, retryable: bool, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = one_line(reason)
        self.kind = kind
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after


class Provider(Protocol):
    """One configured endpoint (provider, base URL, key); ``call`` makes exactly one HTTP request."""

    def call(self, request: Request) -> ProviderResult: ...


def one_line(text: str, limit: int = 400) -> str:
    """Provider messages can be multi-line JSON dumps; transcripts and candidate reasons want one short line."""
    flat = re.sub(r"\s+", " ", str(text)).strip()
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def status_error(status: int, message: str, retry_after: float | None) -> ProviderError:
    """429, 408 and 5xx may succeed later; any other 4xx (bad request, bad key, no such model) never will."""
    retryable = status in (408, 429) or status >= 500
    return ProviderError(f"HTTP {status}: {message}", kind="status", retryable=retryable, status=status,
                         retry_after=retry_after if (status == 429 or status >= 500) else None)


def timeout_error(timeout_s: float) -> ProviderError:
    return ProviderError(f"timeout: no answer within {timeout_s:g} s (llm.timeout_s)", kind="timeout",
                         retryable=True)


def connection_error(detail: str) -> ProviderError:
    return ProviderError(f"connection error: {detail}", kind="connection", retryable=True)


def malformed_error(detail: str) -> ProviderError:
    """A 200 whose body cannot be read as the wire format: not retried (the provider may have billed it), not
    stored as an answer (so the next run asks again)."""
    return ProviderError(f"malformed response: {detail}", kind="malformed", retryable=False)
