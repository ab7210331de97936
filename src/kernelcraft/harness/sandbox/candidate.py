"""Importing candidate files. Only ever called inside a candidate child process (see zygote.py), never in the
process that compares or decides."""

from __future__ import annotations

import importlib.util
import itertools
import sys
import types
from pathlib import Path

_counter = itertools.count()


class CandidateError(Exception):
    """The candidate file does not meet the contract (DESIGN.md §3)."""


def load_candidate(path: str | Path) -> types.ModuleType:
    """Execute the candidate file as a fresh module; building its kernels happens here, at import."""
    path = Path(path)
    name = f"kernelcraft_candidate_{path.stem}_{next(_counter)}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise CandidateError(f"{path}: cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses/pickling inside candidates expect to find their module
    spec.loader.exec_module(module)
    if not isinstance(getattr(module, "ModelNew", None), type):
        raise CandidateError("defines no class ModelNew")
    return module
