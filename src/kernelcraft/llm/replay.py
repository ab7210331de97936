"""Answers from a recorded run (``llm.replay``), found by exact request key or, failing that, by labels.

Prompts of later rounds quote measured times and speedups, which differ a little from run to run, so a replayed
round-2 prompt is rarely byte-identical to the recorded one and its key misses. What identifies a call across
runs is where it sits in the search: provider, model, API, purpose (ideas, implement, repair), tags (problem,
round, idea, parent, attempt...), sample and seed. When the exact key misses, a recorded call with exactly the same
labels (and no other with them) answers instead, so the replayed run gets the same candidates, byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

from kernelcraft.llm.settings import replay_transcripts
from kernelcraft.llm.transcripts import TranscriptStore, request_record
from kernelcraft.llm.types import Request

_LABEL_FIELDS = ("provider", "model", "api", "purpose", "tags", "sample", "seed")


def label_key(request: dict[str, Any]) -> str:
    """Digest of a request's place in the search (a stored request record or ``asdict`` of a Request)."""
    blob = json.dumps({k: request.get(k) for k in _LABEL_FIELDS}, sort_keys=True, separators=(",", ":"),
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class ReplaySource:
    def __init__(self, run_root: str | Path) -> None:
        self.run_root = Path(run_root)
        self.store = TranscriptStore(replay_transcripts(run_root))
        self._labels: dict[str, list[str]] | None = None
        self._lock = threading.Lock()

    def _index(self) -> dict[str, list[str]]:
        with self._lock:
            if self._labels is None:
                labels: dict[str, list[str]] = {}
                for path in sorted(self.store.root.glob("??/*.json")):
                    record = self.store.load(path.stem)
                    if record is not None and isinstance(record.get("request"), dict):
                        labels.setdefault(label_key(record["request"]), []).append(record["key"])
                self._labels = labels
            return self._labels

    def find(self, request: Request, key: str) -> tuple[dict[str, Any], str] | None:
        """(recorded transcript, "key" | "labels"), or None when the recorded run has no answer for it."""
        record = self.store.load(key)
        if record is not None:
            return record, "key"
        matches = self._index().get(label_key(request_record(request)), [])
        if len(matches) != 1:
            return None
        record = self.store.load(matches[0])
        return (record, "labels") if record is not None else None
