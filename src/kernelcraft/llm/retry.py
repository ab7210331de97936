"""Retries with exponential backoff and full jitter, honouring the server's Retry-After.

Providers rate-limit by answering 429 (and shed load with 5xx), usually saying how long to wait. Waiting less
earns another 429; waiting the full exponential schedule wastes the run's time. So: wait what the server asks
(capped at ``max_backoff_s``), else a uniformly random time up to ``backoff_s * 2**(n-1)`` (full jitter, which
spreads the retries of parallel jobs apart). The sleep function is injected so tests can record the waits
instead of spending them.
"""

from __future__ import annotations

import datetime as _dt
import email.utils
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Generic, TypeVar

from kernelcraft.llm.providers.base import ProviderError

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 4
    backoff_s: float = 2.0
    max_backoff_s: float = 60.0

    def delay(self, retry: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        if retry_after is not None:
            return min(max(0.0, retry_after), self.max_backoff_s)
        return rng.uniform(0.0, min(self.max_backoff_s, self.backoff_s * 2 ** (retry - 1)))


@dataclass
class Attempt:
    """One failed try, as kept in the transcript: what went wrong and how long we then waited."""

    attempt: int
    error: str
    kind: str
    status: int | None
    retryable: bool
    elapsed_s: float
    wait_s: float | None = None  # None: no retry followed


@dataclass
class Outcome(Generic[T]):
    result: T | None
    error: ProviderError | None
    attempts: int
    failed: list[Attempt] = field(default_factory=list)
    latency_s: float = 0.0  # duration of the last attempt

    def failed_dicts(self) -> list[dict[str, Any]]:
        return [asdict(a) for a in self.failed]


def parse_retry_after(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds the server asks us to wait: ``retry-after-ms``, or ``Retry-After`` as seconds or an HTTP-date."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.UTC)
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def call_with_retries(fn: Callable[[], T], policy: RetryPolicy, *, sleep: Callable[[float], None] = time.sleep,
                      rng: random.Random | None = None) -> Outcome[T]:
    """Call ``fn`` until it returns, raises a non-retryable :class:`ProviderError`, or ``max_retries`` retries
    are spent. Never raises a ProviderError; the last one is in the outcome."""
    rng = rng or random.Random()
    failed: list[Attempt] = []
    attempt = 0
    while True:
        attempt += 1
        start = time.monotonic()
        try:
            result = fn()
        except ProviderError as err:
            elapsed = time.monotonic() - start
            record = Attempt(attempt, err.reason, err.kind, err.status, err.retryable, round(elapsed, 4))
            failed.append(record)
            if not err.retryable or attempt > policy.max_retries:
                return Outcome(None, err, attempt, failed, elapsed)
            wait = policy.delay(attempt, err.retry_after, rng)
            record.wait_s = round(wait, 4)
            sleep(wait)
            continue
        return Outcome(result, None, attempt, failed, time.monotonic() - start)
