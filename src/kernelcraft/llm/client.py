"""LLMClient: the one way the workflow asks a model, with resume, replay, budget, concurrency and retries.

Order of business for each request (its key is the digest of everything that determines the answer):

1. a transcript of this run holds the answer: return it (``cached``), no call;
2. replay mode (``llm.replay``): answer only from the recorded run's transcripts, by key or by the call's labels
   (:mod:`kernelcraft.llm.replay`), copied into this run so the new run is complete on its own; a miss is an
   error reply, never a live call;
3. ``llm.budget_usd`` reached (by any job of the run): error reply, no call;
4. wait for one of ``llm.concurrency`` slots of the provider (shared by all processes of the run);
5. call the provider, retrying 429/5xx/timeouts/connection errors with backoff and Retry-After;
6. store the transcript (only calls that returned) and append the outcome to the cost ledger.

Provider faults never raise: they come back as a :class:`Reply` with ``error`` set, so one bad call costs one
candidate and the workflow goes on.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kernelcraft.llm import budget
from kernelcraft.llm.cost import cost_usd
from kernelcraft.llm.models import API_PROVIDERS, key_env_names, needs_key
from kernelcraft.llm.providers import Provider, ProviderError, ProviderResult, make_provider
from kernelcraft.llm.replay import ReplaySource
from kernelcraft.llm.retry import Outcome, RetryPolicy, call_with_retries
from kernelcraft.llm.settings import normalise
from kernelcraft.llm.slots import Slots
from kernelcraft.llm.transcripts import TranscriptStore, now_iso, reply_from_record, request_record
from kernelcraft.llm.types import Reply, Request


class LLMClient:
    """``settings`` is the config's ``llm:`` section plus ``prices`` (see :func:`kernelcraft.llm.llm_settings`).
    ``sleep`` and ``rng`` are injectable so tests can record backoff waits instead of spending them."""

    def __init__(self, run_root: str | Path, settings: Mapping[str, Any], *,
                 env: Mapping[str, str] = os.environ, sleep: Callable[[float], None] = time.sleep,
                 rng: random.Random | None = None) -> None:
        self.run_root = Path(run_root)
        self.settings = normalise(settings)
        self.env = env
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.store = TranscriptStore.for_run(self.run_root)
        replay = self.settings["replay"]
        self.replay = ReplaySource(replay) if replay else None
        self.policy = RetryPolicy(int(self.settings["max_retries"]), float(self.settings["backoff_s"]),
                                  float(self.settings["max_backoff_s"]))
        self.timeout_s = float(self.settings["timeout_s"])
        self.concurrency = int(self.settings["concurrency"])
        self._providers: dict[tuple[str, str | None, str | None], Provider] = {}
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}

    @classmethod
    def from_config(cls, run_root: str | Path, config: Mapping[str, Any], **kwargs: Any) -> LLMClient:
        from kernelcraft.llm.settings import llm_settings

        return cls(run_root, llm_settings(config), **kwargs)

    # -- public -------------------------------------------------------------------------------------------------

    def complete(self, request: Request) -> Reply:
        key = request.key()
        with self._key_lock(key):  # the same request twice at once: the second one finds the first's answer
            return self._complete(request, key)

    def complete_many(self, requests: list[Request]) -> list[Reply]:
        """All requests, answered in parallel (bounded by ``llm.concurrency`` per provider), in input order."""
        if not requests:
            return []
        providers = {r.provider for r in requests}
        workers = max(1, min(len(requests), self.concurrency * len(providers)))
        if workers == 1:
            return [self.complete(r) for r in requests]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llm") as pool:
            return list(pool.map(self.complete, requests))

    def spent_usd(self) -> float:
        return budget.spent_usd(self.run_root)

    # -- steps ----------------------------------------------------------------------------------------------------

    def _complete(self, request: Request, key: str) -> Reply:
        stored = self.store.load(key)
        if stored is not None:
            return self._cached(request, stored)
        if self.replay is not None:
            found = self.replay.find(request, key)
            if found is None:
                return self._refuse(request, key, f"replay: no recorded answer for this request in "
                                                  f"{self.replay.run_root}")
            recorded, how = found
            copy = recorded | {"key": key, "request": request_record(request), "replayed_from":
                               str(self.replay.run_root), "replay_match": how, "recorded_key": recorded["key"]}
            self.store.save(copy)
            return self._cached(request, copy)
        if request.provider not in API_PROVIDERS:
            return self._refuse(request, key, f"provider {request.provider!r} is not called over HTTP; "
                                              f"HTTP providers are {', '.join(API_PROVIDERS)}")
        api_key, missing = self._api_key(request)
        if missing:
            return self._refuse(request, key, f"{request.provider}/{request.model}: no API key; set {missing}")
        if (refusal := self._over_budget()) is not None:
            return self._refuse(request, key, refusal)
        try:
            provider = self._provider(request, api_key)
        except Exception as err:  # an SDK refusing its settings is this request's failure, not the workflow's
            return self._refuse(request, key, f"{request.provider}/{request.model}: {err}")
        # The slot is held through the retries' waits too: a rate-limited provider gets no extra calls meanwhile.
        with Slots(self.run_root, request.provider, self.concurrency).hold():
            if (refusal := self._over_budget()) is not None:  # other jobs may have spent while we waited
                return self._refuse(request, key, refusal)
            started = time.time()
            outcome = call_with_retries(lambda: provider.call(request), self.policy, sleep=self.sleep,
                                        rng=self.rng)
        if outcome.result is None:
            return self._failed(request, key, outcome)
        return self._answered(request, key, outcome, started)

    def _key_lock(self, key: str) -> threading.Lock:
        with self._lock:
            return self._key_locks.setdefault(key, threading.Lock())

    def _api_key(self, request: Request) -> tuple[str | None, str | None]:
        """(key, None), or (None, the variable to set) when the provider needs a key and none is set."""
        names = key_env_names({"provider": request.provider, "api_key_env": request.api_key_env})
        for name in names:
            if self.env.get(name):
                return self.env[name], None
        if needs_key(request.provider):
            return None, " or ".join(names)
        return None, None

    def _provider(self, request: Request, api_key: str | None) -> Provider:
        ident = (request.provider, request.base_url, api_key)
        with self._lock:
            if ident not in self._providers:
                self._providers[ident] = make_provider(request.provider, api_key, request.base_url, self.timeout_s)
            return self._providers[ident]

    def _over_budget(self) -> str | None:
        cap = self.settings["budget_usd"]
        if cap is None:
            return None
        spent = budget.spent_usd(self.run_root)
        if spent >= float(cap):
            return f"budget_usd reached: spent ${spent:.2f} of ${float(cap):.2f}; no new model calls"
        return None

    # -- outcomes -------------------------------------------------------------------------------------------------

    def _cached(self, request: Request, record: dict[str, Any]) -> Reply:
        reply = reply_from_record(record, cached=True)
        budget.record(self.run_root, request, reply, "cached")
        return reply

    def _refuse(self, request: Request, key: str, reason: str) -> Reply:
        reply = Reply(key=key, text=None, attempts=0, error=reason)
        budget.record(self.run_root, request, reply, "refused")
        return reply

    def _failed(self, request: Request, key: str, outcome: Outcome[ProviderResult]) -> Reply:
        err: ProviderError = outcome.error  # type: ignore[assignment]
        tries = f"{outcome.attempts} attempt" + ("s" if outcome.attempts != 1 else "")
        how = "not retried" if not err.retryable else f"gave up after {tries}"
        reason = f"{request.provider}/{request.model}: {err.reason} ({how})"
        reply = Reply(key=key, text=None, latency_s=outcome.latency_s, attempts=outcome.attempts, error=reason)
        self.store.log_failure(request, reason, outcome.failed_dicts())
        budget.record(self.run_root, request, reply, "failed")
        return reply

    def _answered(self, request: Request, key: str, outcome: Outcome[ProviderResult], started: float) -> Reply:
        result: ProviderResult = outcome.result  # type: ignore[assignment]
        cost = cost_usd(request.model, result.usage, self.settings["prices"])
        reply = Reply(key=key, text=result.text, finish_reason=result.finish_reason, usage=result.usage,
                      cost_usd=cost, latency_s=outcome.latency_s, attempts=outcome.attempts)
        self.store.save({
            "key": key, "time": now_iso(), "provider": request.provider, "model": request.model,
            "request": request_record(request),
            "reply": {"text": reply.text, "finish_reason": reply.finish_reason, "usage": vars(reply.usage).copy(),
                      "cost_usd": cost, "latency_s": round(outcome.latency_s, 4), "attempts": outcome.attempts,
                      "elapsed_s": round(time.time() - started, 4)},
            "failed_attempts": outcome.failed_dicts(),
            "raw_response": result.raw,
        })
        budget.record(self.run_root, request, reply, "answered")
        return reply
