"""At most N calls in flight per provider across every process of a run.

Snakemake runs several ideas/implement jobs at once, each in its own process, and each may use a thread pool;
the provider's rate limit is shared by all of them. N slot files under ``transcripts/.slots/`` are the
semaphore: a call holds an ``fcntl`` lock on one of them (``flock`` locks belong to the open file, so threads of
one process exclude each other as well as other processes), and a process that dies releases its slot with its
file descriptors.
"""

from __future__ import annotations

import fcntl
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kernelcraft import layout


class Slots:
    def __init__(self, run_root: str | Path, name: str, n: int, poll_s: float = 0.02) -> None:
        if n < 1:
            raise ValueError(f"llm.concurrency must be >= 1, got {n}")
        self.dir = layout.transcripts_dir(run_root) / ".slots"
        self.name = name
        self.n = n
        self.poll_s = poll_s

    def _try(self, index: int) -> int | None:
        fd = os.open(self.dir / f"{self.name}.{index}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    @contextmanager
    def hold(self) -> Iterator[int]:
        """Wait for a free slot and hold it for the duration of the ``with`` block; yields its index."""
        self.dir.mkdir(parents=True, exist_ok=True)
        rng = random.Random()
        while True:
            start = rng.randrange(self.n)
            for i in range(self.n):
                index = (start + i) % self.n
                fd = self._try(index)
                if fd is not None:
                    try:
                        yield index
                    finally:
                        os.close(fd)
                    return
            time.sleep(self.poll_s * (0.5 + rng.random()))
