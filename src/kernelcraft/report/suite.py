"""A run's problems as one table, and the suite metrics KernelBench reports over it.

At a hundred problems the per-problem cards stop being readable; what a user compares across runs and papers is
the table (one row per problem: family, baselines, best kernel, share of the speed-of-light floor, why it failed or
was not searched) and KernelBench's fast_p: the share of *all* problems whose kernel is correct and more than p
times faster than the baseline (fast_0 is the share with a correct kernel at all), next to the geometric-mean
speedup over the problems with one. The table is a pandas DataFrame so that it is written, as CSV and Parquet,
exactly as the report shows it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import fastparquet
import pandas as pd

COLUMNS = ("problem", "family", "op", "searched", "correct", "eager_ms", "compile_ms", "best_ms", "speedup_eager",
           "speedup_compile", "pct_of_floor", "round", "cause")
P_VALUES = (0.0, 1.0, 1.5, 2.0)
AGAINST = ("eager", "compile")


def problem_table(summary: dict) -> pd.DataFrame:
    """One row per problem of a report summary (``report.collect``), in the summary's order."""
    rows = []
    for p in summary.get("problems", []):
        best = p.get("best") or {}
        why = cause(p)
        if why == "not searched":
            why += ": " + (p.get("unsupported_reason") or "no proposer supports it")
        rows.append({
            "problem": p["id"], "family": p.get("family") or "", "op": p.get("op") or "",
            "searched": bool(p.get("supported", True)), "correct": bool(best),
            "eager_ms": p.get("eager_ms"), "compile_ms": p.get("compile_ms"), "best_ms": best.get("time_ms"),
            "speedup_eager": best.get("speedup_eager"), "speedup_compile": best.get("speedup_compile"),
            "pct_of_floor": best.get("pct_of_floor"), "round": best.get("round"), "cause": why,
        })
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    for col in ("eager_ms", "compile_ms", "best_ms", "speedup_eager", "speedup_compile", "pct_of_floor"):
        table[col] = pd.to_numeric(table[col], errors="coerce").astype("float64")
    table["round"] = pd.to_numeric(table["round"], errors="coerce").astype("Int64")
    return table


def cause(problem: dict) -> str:
    """Why a problem has no kernel to show: "not searched", or its most common failure cause; "" when it has one."""
    if problem.get("supported") is False:
        return "not searched"
    if problem.get("best"):
        return ""
    failures = problem.get("failures")
    return next(iter(failures), "no candidate finished") if isinstance(failures, dict) and failures else \
        "no candidate finished"


def fast_p(table: pd.DataFrame, p: float, against: str = "eager") -> float | None:
    """KernelBench's fast_p: correct and speedup > p, over every problem of the table.

    None for no problems, and for p > 0 when no problem has that baseline at all (a run with torch.compile off):
    0 % would read as "never faster", which nothing measured says.
    """
    if table.empty:
        return None
    speedup = table[f"speedup_{against}"]
    if p > 0 and speedup.isna().all():
        return None
    hits = table["correct"] & (speedup > p) if p > 0 else table["correct"]
    return float(hits.fillna(False).sum()) / len(table)


def geomean(table: pd.DataFrame, against: str = "eager") -> float | None:
    """Geometric mean of the speedups of the problems with a correct kernel and a baseline to compare with."""
    values = table.loc[table["correct"], f"speedup_{against}"].dropna()
    values = values[values > 0]
    if values.empty:
        return None
    return float(math.exp(values.map(math.log).mean()))


def metrics(table: pd.DataFrame) -> dict[str, Any]:
    return {
        "problems": len(table), "searched": int(table["searched"].sum()), "correct": int(table["correct"].sum()),
        "fast_p": {a: {p: fast_p(table, p, a) for p in P_VALUES} for a in AGAINST},
        "geomean": {a: geomean(table, a) for a in AGAINST},
    }


def write_tables(table: pd.DataFrame, folder: str | Path) -> tuple[Path, Path]:
    """``problems.csv`` and ``problems.parquet`` in ``folder`` (next to the report)."""
    folder = Path(folder)
    csv, parquet = folder / "problems.csv", folder / "problems.parquet"
    table.to_csv(csv, index=False, float_format="%.6g")
    fastparquet.write(str(parquet), table, write_index=False)  # its own API: pandas is retiring engine="fastparquet"
    return csv, parquet
