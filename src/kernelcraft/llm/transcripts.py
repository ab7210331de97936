"""The content-addressed transcript store: ``results/<run>/transcripts/<key[:2]>/<key>.json``.

A transcript holds everything about one call that returned (HTTP 200 with a body, even one later judged
unusable): the full request with its rendered prompts, the reply text, finish reason, usage, cost, latency, the
raw response and every failed attempt before it. Because the file name is the request's key, asking the same
thing again (after a kill, or in a later run pointed here by ``llm.replay``) finds it and makes no call. Calls
that failed after their retries are only logged (``failed.jsonl``), so the next run asks again.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from kernelcraft import layout
from kernelcraft.jsonio import write_json
from kernelcraft.llm.locking import append_jsonl
from kernelcraft.llm.types import Reply, Request, Usage

FAILED_LOG = "failed.jsonl"


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def request_record(request: Request) -> dict[str, Any]:
    """The request as stored: all fields, labels included, messages as role/content objects."""
    d = asdict(request)
    d["messages"] = [{"role": m.role, "content": m.content} for m in request.messages]
    return d


def reply_from_record(record: dict[str, Any], *, cached: bool) -> Reply:
    r = record["reply"]
    return Reply(key=record["key"], text=r["text"], finish_reason=r.get("finish_reason"),
                 usage=Usage(**r.get("usage", {})), cost_usd=r.get("cost_usd"), latency_s=r.get("latency_s", 0.0),
                 attempts=r.get("attempts", 1), cached=cached)


class TranscriptStore:
    """One run's transcripts folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @classmethod
    def for_run(cls, run_root: str | Path) -> TranscriptStore:
        return cls(layout.transcripts_dir(run_root))

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def load(self, key: str) -> dict[str, Any] | None:
        """The stored answer for ``key``, or None (also for a file that is not a readable transcript)."""
        try:
            record = json.loads(self.path(key).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("key") != key or "reply" not in record:
            return None
        return record

    def save(self, record: dict[str, Any]) -> Path:
        """Write atomically (tmp + os.replace): a kill leaves the old state or the whole new file."""
        path = self.path(record["key"])
        write_json(path, record)
        return path

    def log_failure(self, request: Request, error: str, attempts: list[dict[str, Any]]) -> None:
        append_jsonl(self.root / FAILED_LOG, {"time": now_iso(), "key": request.key(), "provider": request.provider,
                                              "model": request.model, "purpose": request.purpose,
                                              "tags": request.tags, "error": error, "attempts": attempts})

    def failures(self) -> list[dict[str, Any]]:
        from kernelcraft.llm.locking import read_jsonl

        return read_jsonl(self.root / FAILED_LOG)
