"""The candidates table: one CSV row per candidate, the run's machine-readable record next to the HTML page.

The column set and order are a contract (DESIGN.md §3, "Run outputs"): external scripts read the CSV by
position as often as by name, so the order never changes and unknown keys never leak in as extra columns.
The value coercions here are shared with the report because rows reach the report either straight from the
search (Python values) or back from a CSV (strings), and both must render the same.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

CANDIDATE_COLUMNS = (
    "problem", "round", "candidate_id", "parent", "idea", "model", "compiled", "correct",
    "reject_reason", "time_ms", "eager_ms", "compile_ms", "speedup_eager", "speedup_compile", "max_rel_err",
    # Extras after the contract's columns (their positions stay put): whether the code evaluated is a model's
    # repair (of a compile error, or of a reply the implement stage sent back).
    "repaired",
)

# The reject reason of a candidate whose code normalises to an earlier candidate's: it was not evaluated again,
# which is not a failure (the report counts duplicates apart from failures).
DUPLICATE_PREFIX = "duplicate of "

_INT_COLUMNS = frozenset({"round"})
_BOOL_COLUMNS = frozenset({"compiled", "correct", "repaired"})
_FLOAT_COLUMNS = frozenset(
    {"time_ms", "eager_ms", "compile_ms", "speedup_eager", "speedup_compile", "max_rel_err"}
)


def format_cell(value: Any) -> str:
    """One CSV cell: None -> empty, bools -> true/false, floats to at most 6 significant digits.

    Six significant digits is finer than any timing we can resolve (run-to-run spread is ~1 %), and keeps
    the file diff-friendly across re-runs instead of carrying 17-digit float noise.
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format(value, ".6g")
    return str(value)


def write_candidates_csv(rows: Iterable[Mapping[str, Any]], out: Path) -> None:
    """Write one row per candidate with exactly CANDIDATE_COLUMNS, in that order, plus a header row.

    Keys missing from a row become empty cells (a failed compile has no time); keys outside the column set
    are ignored, so callers can pass their richer per-candidate dicts unchanged.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(CANDIDATE_COLUMNS)
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise TypeError(
                    f"candidate row {i} is a {type(row).__name__}, not a dict; pass one dict per candidate "
                    f"keyed by CANDIDATE_COLUMNS"
                )
            writer.writerow([format_cell(row.get(col)) for col in CANDIDATE_COLUMNS])
    tmp.replace(out)  # a half-written CSV must never look like a finished one to Snakemake


def as_float(value: Any) -> float | None:
    """A finite float from a number or numeric string; None for None, empty, NaN, inf or bools."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        value = value.strip()
        if not value:
            return None
        try:
            value = float(value)
        except ValueError:
            return None
    if not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def as_bool(value: Any) -> bool | None:
    """A bool from a bool or a CSV cell ("true"/"false", "1"/"0"); None when absent or unrecognised."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
    return None


def as_int(value: Any) -> int | None:
    """An int from an int or integral number/string; None otherwise."""
    f = as_float(value)
    if f is None or not f.is_integer():
        return None
    return int(f)


def read_candidates_csv(path: Path) -> list[dict[str, Any]]:
    """Read a candidates CSV back into typed dicts (the inverse of write_candidates_csv).

    Empty cells come back as None, booleans as bools, numbers as int/float, so a summary built from the CSV
    renders exactly like one built from the search's own records.
    """
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != CANDIDATE_COLUMNS:
            raise ValueError(
                f"{path}: header is {reader.fieldnames}, expected {list(CANDIDATE_COLUMNS)}; "
                f"regenerate it with write_candidates_csv"
            )
        rows = []
        for raw in reader:
            row: dict[str, Any] = {}
            for col in CANDIDATE_COLUMNS:
                cell = raw[col]
                if cell == "":
                    row[col] = None
                elif col in _INT_COLUMNS:
                    row[col] = as_int(cell)
                elif col in _BOOL_COLUMNS:
                    row[col] = as_bool(cell)
                elif col in _FLOAT_COLUMNS:
                    row[col] = float(cell)
                else:
                    row[col] = cell
            rows.append(row)
    return rows


def speedup_text(v: float) -> str:
    """Speedup label: 1.59×, 12.3×, 150× — two decimals is as fine as a ~1 % timing spread supports. Shared by
    the page's tables and its charts so both say the same number."""
    if v >= 100:
        return f"{v:.0f}×"
    if v >= 10:
        return f"{v:.1f}×"
    if v >= 0.095:
        return f"{v:.2f}×"
    return f"{v:.2g}×"
