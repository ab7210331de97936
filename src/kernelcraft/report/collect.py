"""Gather a run's stage files into the report's summary and the candidates table (DESIGN.md §3 columns)."""

from __future__ import annotations

import datetime as _dt
from collections import Counter
from pathlib import Path
from typing import Any

from kernelcraft import layout
from kernelcraft.context import RunContext
from kernelcraft.jsonio import read_json
from kernelcraft.llm.budget import usage_summary
from kernelcraft.report.table import DUPLICATE_PREFIX


def _read(path: Path) -> dict | None:
    return read_json(path) if path.exists() else None


DUPLICATE = "duplicate"
# A model reply that held no usable candidate file (kernelcraft.search.replies), by what was wrong with it.
_MODEL_REPLY = (("truncated", "model reply: truncated"), ("refused", "model reply: refused"),
                ("no ```python code block", "model reply: no code"), ("no class modelnew", "model reply: no ModelNew"),
                ("syntax error", "model reply: syntax error"))


def reason_category(reason: str | None) -> str:
    """Group free-text reasons into causes for the failure counts (the full text stays in the table).

    ``duplicate of <id>`` is its own category, :data:`DUPLICATE`: the candidate's code is an earlier candidate's,
    so it was not evaluated again; it is not a failure."""
    if not reason:
        return "unknown"
    text = reason.lower()
    if text.startswith(DUPLICATE_PREFIX):
        return DUPLICATE
    if text.startswith("model call failed:"):
        if "budget_usd reached" in text:
            return "model call refused: budget reached"
        if "replay: no recorded answer" in text:
            return "model call refused: not in the replayed run"
        if ": no api key" in text:
            return "model call refused: no API key"
        return "model call failed"
    if text.startswith("model reply:"):
        return next((cat for needle, cat in _MODEL_REPLY if needle in text), "model reply: unusable")
    if text.startswith("compile error"):
        return "compile error"
    if text.startswith("timeout"):
        return "timeout"
    if text.startswith("crashed"):
        return "crash"
    if "max error above tolerance" in text:
        return "incorrect: error above tolerance"
    if "nan/inf" in text:
        return "incorrect: NaN/Inf"
    if "shape" in text or "dtype" in text or "returned" in text:
        return "incorrect: wrong shape/dtype/outputs"
    if "in place" in text:
        return "incorrect: modified inputs"
    if "out of memory" in text or "outofmemory" in text:
        return "out of memory"
    if "cuda error" in text or "illegal" in text:
        return "CUDA error"
    return reason.split(":", 1)[0][:60]


def _repaired(cand: dict, compiled: dict) -> bool:
    """Whether the code evaluated for a candidate is a model's answer to the repair prompt: a compile repair's
    file (the compile result names another file than the implement stage's), or a reply the implement stage had
    sent back before writing its file."""
    if not cand.get("path"):
        return False
    return layout.evaluated_path(cand, compiled) != cand["path"] or bool(cand.get("repairs"))


def _problem_rows(ctx: RunContext, problem: str,
                  compile_ms: float | None) -> tuple[list[dict], list[dict], dict[str, dict]]:
    """Table rows, per-round summaries, and every candidate by id (for lineage), from one pass over the files."""
    rows: list[dict] = []
    index: dict[str, dict] = {}
    rounds: list[dict] = []
    best_so_far: float | None = None
    best_eager: float | None = None
    for r in range(1, int(ctx.config["rounds"]) + 1):
        impl = _read(layout.stage_file(ctx.root, problem, r, "implement"))
        if impl is None:
            break
        comp = (_read(layout.stage_file(ctx.root, problem, r, "compile")) or {}).get("results", {})
        ver = (_read(layout.stage_file(ctx.root, problem, r, "verify")) or {}).get("results", {})
        ben = (_read(layout.stage_file(ctx.root, problem, r, "benchmark")) or {}).get("results", {})
        round_times = []
        for cand in impl["candidates"]:
            cid = cand["id"]
            c, v, b = comp.get(cid, {}), ver.get(cid, {}), ben.get(cid, {})
            repaired = _repaired(cand, c)
            index[cid] = cand | {"round": r, "speedup_eager": b.get("speedup_eager"),
                                 "path": layout.evaluated_path(cand, c), "repaired": repaired}
            compiled = bool(c.get("compiled"))
            correct = bool(v.get("correct")) if compiled else False
            reason = None
            if not compiled:
                reason = c.get("reason") or "not built"
            elif not correct:
                reason = "; ".join(v.get("reasons") or ["not verified"])
            elif not b.get("timed"):
                reason = b.get("reason") or "not timed"
            time_ms = b.get("time_ms") if b.get("timed") else None
            if time_ms is not None:
                round_times.append(time_ms)
            rows.append({
                "problem": problem, "round": r, "candidate_id": cid, "parent": cand["parent"],
                "idea": cand["idea"], "model": cand["model"], "compiled": compiled, "correct": correct,
                "reject_reason": reason, "time_ms": time_ms, "eager_ms": b.get("eager_ms"),
                "compile_ms": compile_ms, "speedup_eager": b.get("speedup_eager") if time_ms else None,
                "speedup_compile": (compile_ms / time_ms) if (time_ms and compile_ms) else None,
                "max_rel_err": v.get("max_rel_err"), "repaired": repaired,
            })
        sel = _read(layout.stage_file(ctx.root, problem, r, "select"))
        seeds = (sel or {}).get("seeds") or []
        if seeds:
            best_so_far, best_eager = seeds[0]["time_ms"], seeds[0].get("eager_ms")
        n_round = [x for x in rows if x["round"] == r]
        rounds.append({
            "round": r, "n_candidates": len(n_round), "n_compiled": sum(x["compiled"] for x in n_round),
            "n_correct": sum(x["correct"] for x in n_round),
            "best_round_ms": min(round_times) if round_times else None,
            "best_so_far_ms": best_so_far,
            "best_so_far_speedup_eager": (best_eager / best_so_far) if (best_so_far and best_eager) else None,
            "best_so_far_speedup_compile": (compile_ms / best_so_far) if (best_so_far and compile_ms) else None,
        })
    return rows, rounds, index


def _best(ctx: RunContext, problem: str, compile_ms: float | None, index: dict[str, dict]) -> dict | None:
    last = None
    for r in range(int(ctx.config["rounds"]), 0, -1):
        last = _read(layout.stage_file(ctx.root, problem, r, "select"))
        if last is not None:
            break
    if not last or not last.get("seeds"):
        return None
    best = last["seeds"][0]
    lineage = []
    node = index.get(best["id"])
    while node is not None:
        lineage.append(node)
        node = index.get(node.get("parent"))
    lineage.reverse()
    parent = index.get(best.get("parent"))
    verify = _read(layout.stage_file(ctx.root, problem, best["round"], "verify")) or {}
    ver = verify.get("results", {}).get(best["id"], {})
    return {
        "candidate_id": best["id"], "round": best["round"], "idea": best.get("idea"), "kind": best.get("kind"),
        "model": best.get("model"), "time_ms": best["time_ms"], "time_iqr_ms": best.get("time_iqr_ms"),
        "repaired": bool((index.get(best["id"]) or {}).get("repaired")),
        "speedup_eager": best.get("speedup_eager"),
        "speedup_compile": (compile_ms / best["time_ms"]) if compile_ms else None,
        "pct_of_floor": best.get("pct_of_floor"),
        "max_rel_err": ver.get("max_rel_err"),
        "source": (ctx.root / best["path"]).read_text(),
        "parent_id": best.get("parent") or "reference",
        "parent_source": (ctx.root / parent["path"]).read_text() if parent else None,
        "lineage": [{"candidate_id": n["id"], "round": n["round"], "idea": n["idea"],
                     "speedup_eager": n.get("speedup_eager")} for n in lineage],
    }


def _recognition(ctx: RunContext, problem: str) -> Any:
    """The planner's traced-graph recognition of ``problem`` (kept under results/.recognition), or None when the
    problem file is gone since the run: the report still renders."""
    from kernelcraft.problems.recognise import recognise_cached

    try:
        return recognise_cached(ctx.load_problem(problem), layout.recognition_dir(Path(ctx.root).parent))
    except Exception:  # noqa: BLE001
        return None


def _why_not_searched(ideas: dict, recognition: Any) -> str | None:
    """The proposer's own reason when an ideas job ran; else (the workflow planned no rounds) the recognition's."""
    if ideas.get("unsupported_reason"):
        return str(ideas["unsupported_reason"])
    return recognition.line() if recognition is not None and recognition.op is None else None


def collect(ctx: RunContext, manifest: dict | None = None) -> tuple[dict, list[dict]]:
    """The report summary and every candidate's table row. Model usage (tokens, cost, calls) comes from the run's
    cost ledger (:func:`kernelcraft.llm.usage_summary`), per problem and for the run, with the budget if set."""
    usage = usage_summary(ctx.root)
    problems = []
    all_rows: list[dict] = []
    for problem in ctx.problems:
        base = _read(layout.baseline_file(ctx.root, problem)) or {}
        compile_ms = base.get("compile_ms")
        rows, rounds, index = _problem_rows(ctx, problem, compile_ms)
        ideas = _read(layout.stage_file(ctx.root, problem, 1, "ideas")) or {}
        recognition = _recognition(ctx, problem)
        all_rows.extend(rows)
        causes = Counter(reason_category(r["reject_reason"]) for r in rows if not r["correct"])
        duplicates = causes.pop(DUPLICATE, 0)
        problems.append({
            "id": problem, "op": base.get("op"), "size": ctx.size,
            "eager_ms": base.get("eager_ms"), "eager_iqr_ms": base.get("eager_iqr_ms"),
            "compile_ms": compile_ms, "compile_iqr_ms": base.get("compile_iqr_ms"),
            "compile_error": base.get("compile_error") or base.get("error"),
            "family": f"{recognition.family}/{recognition.op}" if recognition and recognition.op else None,
            "supported": bool(ideas.get("supported", False)),
            "unsupported_reason": None if ideas.get("supported") else _why_not_searched(ideas, recognition),
            "rounds": rounds, "best": _best(ctx, problem, compile_ms, index),
            "candidates": rows, "failures": dict(causes.most_common()), "duplicates": duplicates,
            "usage": usage["per_problem"].get(problem),
        })
    gpus = (manifest or {}).get("gpus") or []
    device = gpus[0]["name"] if (ctx.backend == "cuda" and gpus) else (manifest or {}).get("cpu", "cpu")
    models = sorted({e["model"] for role in ctx.config["models"].values() for e in role})
    summary = {
        "run": ctx.config["run"],
        "generated_at": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "backend": ctx.backend, "device": device, "proposer": ", ".join(models),
        "tolerance": dict(ctx.config["tolerance"]), "rounds": int(ctx.config["rounds"]),
        "config": {k: v for k, v in ctx.config.items() if not k.startswith("_")},
        "manifest": manifest or {}, "problems": problems,
        "usage": {"total": usage["total"], "per_model": usage["per_model"], "per_purpose": usage["per_purpose"],
                  "budget_usd": (ctx.config.get("llm") or {}).get("budget_usd")},
    }
    return summary, all_rows
