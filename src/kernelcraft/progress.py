"""Progress lines for a person watching the run: which problem and round is running and how many passed.

Printed to stderr (Snakemake shows it live) and appended to results/<run>/progress.log for later reading.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

_log_file: Path | None = None
_quiet = False


def quiet(on: bool) -> None:
    """Silence stderr progress (for ``kernelcraft eval --json``, whose stdout is the machine-readable result)."""
    global _quiet
    _quiet = on


def set_log(path: str | Path | None) -> None:
    global _log_file
    _log_file = Path(path) if path else None
    if _log_file:
        _log_file.parent.mkdir(parents=True, exist_ok=True)


def report(problem: str, round_: int | None, stage: str, message: str) -> None:
    where = f"{problem} round {round_}" if round_ is not None else problem
    line = f"[kernelcraft] {time.strftime('%H:%M:%S')} {where} {stage}: {message}"
    if not _quiet:
        print(line, file=sys.stderr, flush=True)
    if _log_file:
        with open(_log_file, "a") as fh:
            fh.write(line + "\n")
