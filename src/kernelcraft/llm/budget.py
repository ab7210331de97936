"""The run's cost ledger and budget: ``results/<run>/transcripts/ledger.jsonl``.

Every call outcome appends one line under an ``fcntl`` lock, so the parallel Snakemake jobs of a run (separate
processes) share one budget: a job reads what all jobs have spent before it makes a call. The check happens
before each call, so up to ``llm.concurrency`` calls already in flight can finish past the cap; no call starts
after it.

Statuses: ``answered`` (a call that returned; its tokens and cost count), ``cached`` (answered from a stored
transcript, resume or replay: no call, no cost), ``failed`` (no answer after retries), ``refused`` (no call made:
budget reached, no recorded answer in replay, no key).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kernelcraft import layout
from kernelcraft.llm.locking import append_jsonl, read_jsonl
from kernelcraft.llm.transcripts import now_iso
from kernelcraft.llm.types import Reply, Request

LEDGER = "ledger.jsonl"
STATUSES = ("answered", "cached", "failed", "refused")


def ledger_path(run_root: str | Path) -> Path:
    return layout.transcripts_dir(run_root) / LEDGER


def record(run_root: str | Path, request: Request, reply: Reply, status: str) -> None:
    if status not in STATUSES:
        raise ValueError(f"unknown ledger status {status!r}; statuses are {', '.join(STATUSES)}")
    paid = status == "answered"
    append_jsonl(ledger_path(run_root), {
        "time": now_iso(), "key": reply.key, "status": status,
        "provider": request.provider, "model": request.model, "purpose": request.purpose,
        "problem": request.tags.get("problem"), "round": request.tags.get("round"),
        "input_tokens": reply.usage.input_tokens if paid else 0,
        "output_tokens": reply.usage.output_tokens if paid else 0,
        "reasoning_tokens": reply.usage.reasoning_tokens if paid else 0,
        "cost_usd": reply.cost_usd if paid else 0.0,
        "cost_known": reply.cost_usd is not None or not paid,
        "latency_s": round(reply.latency_s, 4), "attempts": reply.attempts, "error": reply.error,
    })


def entries(run_root: str | Path) -> list[dict[str, Any]]:
    return read_jsonl(ledger_path(run_root))


def spent_usd(run_root: str | Path) -> float:
    """USD spent by every job of the run so far (calls whose model has no price count as 0)."""
    return sum(float(e.get("cost_usd") or 0.0) for e in entries(run_root) if e.get("status") == "answered")


def _empty() -> dict[str, Any]:
    return {"calls": 0, "cached_calls": 0, "failed_calls": 0, "refused_calls": 0, "input_tokens": 0,
            "output_tokens": 0, "reasoning_tokens": 0, "cost_usd": 0.0, "cost_known": True}


def _add(bucket: dict[str, Any], e: dict[str, Any]) -> None:
    status = e.get("status")
    if status == "answered":
        bucket["calls"] += 1
        for k in ("input_tokens", "output_tokens", "reasoning_tokens"):
            bucket[k] += int(e.get(k) or 0)
        bucket["cost_usd"] += float(e.get("cost_usd") or 0.0)
        bucket["cost_known"] = bucket["cost_known"] and bool(e.get("cost_known", True))
    elif status in STATUSES:
        bucket[f"{status}_calls"] += 1


def summarise(lines: Iterable[dict[str, Any]]) -> dict[str, Any]:
    total = _empty()
    per: dict[str, dict[str, dict[str, Any]]] = {"per_problem": {}, "per_model": {}, "per_purpose": {}}
    for e in lines:
        _add(total, e)
        labels = {"per_problem": e.get("problem") or "(none)", "per_model": f"{e.get('provider')}/{e.get('model')}",
                  "per_purpose": e.get("purpose") or "(none)"}
        for group, label in labels.items():
            _add(per[group].setdefault(str(label), _empty()), e)
    return {"total": total, **per}


def usage_summary(run_root: str | Path) -> dict[str, Any]:
    """Tokens, cost and call counts of a run, in total and per problem (``request.tags["problem"]``), per model
    (``provider/model``) and per purpose (ideas, implement, repair...), for the report. ``calls`` and the token
    and cost sums cover calls made in this run; answers reused from transcripts count as ``cached_calls``.
    ``cost_known`` is False where some call's model had no price."""
    return summarise(entries(run_root))
