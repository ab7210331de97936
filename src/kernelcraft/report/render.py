"""Render the run report: one self-contained HTML page from the run summary.

The page is for kernel engineers deciding whether the speedups are real, so next to every speedup it shows
the spread it was measured with, the tolerance and error it was verified at, what torch.compile already
gets, and the code (with its diff to the parent) that produced it. It must open from an archive years
later with no network, so everything is inline: CSS, SVG, and a few lines of optional JS for sorting.

The summary (built by the lead from the results directory) is normalised here into a view model with every
optional value resolved, so the template never has to guess and a missing number renders as a dash, not a
crash. Anything that came from a model (ideas, code, reasons) reaches the page only through Jinja's
autoescaping; the one piece of raw markup, the chart SVG, escapes its own text.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import yaml
from markupsafe import Markup

from kernelcraft.report.charts import trajectory_svg
from kernelcraft.report.suite import cause, metrics, problem_table
from kernelcraft.report.table import DUPLICATE_PREFIX, as_bool, as_float, as_int, speedup_text

TEMPLATE_NAME = "report.html.j2"
DASH = "—"


# ---------------------------------------------------------------------------------------------- formatting


def fmt_ms(value: Any) -> str:
    """Milliseconds to 4 significant digits with fixed decimals (1.430, 0.8000, 266.0), so columns align."""
    v = as_float(value)
    if v is None:
        return DASH
    if v == 0:
        return "0"
    decimals = _decimals_for(v)
    if decimals > 7:
        return f"{v:.3g}"
    return f"{v:.{decimals}f}"


def fmt_ms_iqr(value: Any, iqr: Any) -> str:
    """'1.430 ± 0.010': the median with its interquartile range at the same decimals as the median."""
    v = as_float(value)
    text = fmt_ms(v)
    q = as_float(iqr)
    if v is None or q is None:
        return text
    decimals = _decimals_for(v) if v else 3
    if decimals > 7:
        return f"{text} ± {q:.2g}"
    q_text = f"{q:.{decimals}f}"
    if q > 0 and float(q_text) == 0:
        q_text = "<" + f"{10.0 ** -decimals:.{decimals}f}"
    return f"{text} ± {q_text}"


def fmt_iqr(iqr: Any, median: Any) -> str:
    """An IQR on its own ('± 0.010'), at the decimals of the median it belongs to."""
    q = as_float(iqr)
    if q is None:
        return DASH
    m = as_float(median)
    if not m:
        return f"± {q:.2g}"
    return fmt_ms_iqr(m, q).split(" ", 1)[1]


def _decimals_for(v: float) -> int:
    return max(0, 3 - math.floor(math.log10(abs(v))))


def fmt_speedup(value: Any) -> str:
    """Speedups like 1.59×; two decimals is as fine as a ~1 % timing spread supports."""
    v = as_float(value)
    return DASH if v is None else speedup_text(v)


def speedup_class(value: Any) -> str:
    """CSS class: 'up' (> 1 as displayed), 'down' (< 1), 'even' (1.00× or unknown)."""
    v = as_float(value)
    if v is None:
        return "even"
    shown = as_float(fmt_speedup(v).rstrip("×"))
    if shown is None or shown == 1.0:
        return "even"
    return "up" if v > 1 else "down"


def fmt_err(value: Any) -> str:
    """Relative errors in scientific notation (1.2e-07): their magnitude is what matters."""
    v = as_float(value)
    if v is None:
        return DASH
    if v == 0:
        return "0"
    return f"{v:.1e}"


def fmt_num(value: Any) -> str:
    """A tolerance or other plain number, shortest form (0.01, 1e-05)."""
    v = as_float(value)
    return DASH if v is None else f"{v:g}"


def fmt_tokens(value: Any) -> str:
    """Token counts with thousands separators (3,012,480)."""
    v = as_int(value)
    return DASH if v is None else f"{v:,}"


def fmt_usd(value: Any) -> str:
    """US dollars: cents for a dollar or more ($41.27), four decimals below ($0.0065), as small calls cost."""
    v = as_float(value)
    if v is None:
        return DASH
    return f"${v:,.2f}" if abs(v) >= 1 else f"${v:.4f}"


def _text(value: Any) -> str:
    return "" if value is None else str(value)


# ---------------------------------------------------------------------------------------------- view model


def _slug(text: str, taken: set[str]) -> str:
    """An HTML id for a problem's section: safe characters only, unique within the page."""
    base = "p-" + (re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "problem")
    slug, n = base, 2
    while slug in taken:
        slug, n = f"{base}-{n}", n + 1
    taken.add(slug)
    return slug


def _ratio(num: float | None, den: float | None) -> float | None:
    return num / den if num is not None and den else None


def _dump(obj: Any) -> str:
    """YAML for config/manifest (readable, comment-free); plain JSON-able values only, str() for the rest."""
    if obj is None or obj == {}:
        return ""
    plain = json.loads(json.dumps(obj, default=str))
    return yaml.safe_dump(plain, sort_keys=False, allow_unicode=True, default_flow_style=False, width=100)


def _diff_lines(parent_source: str | None, source: str, parent_id: str, candidate_id: str) -> list[dict]:
    """A unified diff as (kind, text) lines for colouring; kinds: meta, hunk, add, del, ctx."""
    diff = difflib.unified_diff(
        (parent_source or "").splitlines(),
        source.splitlines(),
        fromfile=parent_id,
        tofile=candidate_id,
        lineterm="",
    )
    lines = []
    for line in diff:
        if line.startswith(("+++", "---")):
            kind = "meta"
        elif line.startswith("@@"):
            kind = "hunk"
        elif line.startswith("+"):
            kind = "add"
        elif line.startswith("-"):
            kind = "del"
        else:
            kind = "ctx"
        lines.append({"kind": kind, "text": line})
    return lines


def _best_view(best: Mapping[str, Any], eager_ms: float | None, compile_ms: float | None) -> dict[str, Any]:
    time_ms = as_float(best.get("time_ms"))
    speedup_eager = as_float(best.get("speedup_eager"))
    if speedup_eager is None:
        speedup_eager = _ratio(eager_ms, time_ms)
    speedup_compile = as_float(best.get("speedup_compile"))
    if speedup_compile is None:
        speedup_compile = _ratio(compile_ms, time_ms)
    candidate_id = _text(best.get("candidate_id")) or "best"
    parent_id = _text(best.get("parent_id")) or "reference"
    source = _text(best.get("source"))
    parent_source = best.get("parent_source")
    parent_source = None if parent_source is None else str(parent_source)

    lineage = []
    prev = 1.0
    for step in best.get("lineage") or []:
        if not isinstance(step, Mapping):
            continue
        s = as_float(step.get("speedup_eager"))
        lineage.append({
            "candidate_id": _text(step.get("candidate_id")),
            "round": as_int(step.get("round")),
            "idea": _text(step.get("idea")),
            "speedup_eager": s,
            "step_gain": _ratio(s, prev) if s is not None else None,
        })
        if s is not None:
            prev = s

    return {
        "candidate_id": candidate_id,
        "round": as_int(best.get("round")),
        "idea": _text(best.get("idea")),
        "kind": _text(best.get("kind")),
        "model": _text(best.get("model")),
        "repaired": bool(as_bool(best.get("repaired"))),
        "time_ms": time_ms,
        "time_iqr_ms": as_float(best.get("time_iqr_ms")),
        "wide_spread_pct": spread_pct(as_float(best.get("time_iqr_ms")), time_ms),
        "speedup_eager": speedup_eager,
        "speedup_compile": speedup_compile,
        "pct_of_floor": as_float(best.get("pct_of_floor")),
        "max_rel_err": as_float(best.get("max_rel_err")),
        "source_lines": source.splitlines(),
        "parent_id": parent_id,
        "has_parent_source": parent_source is not None,
        "diff": [] if parent_source is None else _diff_lines(parent_source, source, parent_id, candidate_id),
        "lineage": lineage,
    }


_USAGE_COUNTS = ("calls", "cached_calls", "failed_calls", "refused_calls", "input_tokens", "output_tokens",
                 "reasoning_tokens")


def _usage_view(usage: Any) -> dict[str, Any] | None:
    """One bucket of :func:`kernelcraft.llm.usage_summary` with every count an int; None when there is none or
    it records no call at all (an offline run)."""
    if not isinstance(usage, Mapping):
        return None
    view: dict[str, Any] = {k: as_int(usage.get(k)) or 0 for k in _USAGE_COUNTS}
    if not any(view[k] for k in ("calls", "cached_calls", "failed_calls", "refused_calls")):
        return None
    view["cost_usd"] = as_float(usage.get("cost_usd")) or 0.0
    view["cost_known"] = usage.get("cost_known") is not False
    return view


def _usage_table(groups: Any) -> list[dict[str, Any]]:
    rows = []
    for label, bucket in (groups or {}).items() if isinstance(groups, Mapping) else []:
        view = _usage_view(bucket)
        if view is not None:
            rows.append({"label": str(label)} | view)
    rows.sort(key=lambda r: (-r["cost_usd"], -r["calls"], r["label"]))
    return rows


def _run_usage_view(usage: Any) -> dict[str, Any] | None:
    """The run's model usage for the template: totals, per model and per purpose, and the budget."""
    if not isinstance(usage, Mapping):
        return None
    total = _usage_view(usage.get("total"))
    if total is None:
        return None
    budget = as_float(usage.get("budget_usd"))
    return total | {
        "per_model": _usage_table(usage.get("per_model")),
        "per_purpose": _usage_table(usage.get("per_purpose")),
        "budget_usd": budget,
        "budget_reached": budget is not None and total["cost_usd"] >= budget,
    }


# An interquartile range above this share of the median says the measurement, not the kernel, needs a look: the
# evaluator's timings run at 0.1-2% on an H200; a LayerNorm kernel once showed 35% because the timer's GPU sleep
# ended before the kernel's first launch.
WIDE_SPREAD = 0.10


def spread_pct(iqr: float | None, median: float | None) -> float | None:
    """The interquartile range as a percentage of the median, when it is above WIDE_SPREAD; else None."""
    if iqr is None or not median or iqr <= WIDE_SPREAD * median:
        return None
    return 100.0 * iqr / median


def _within_noise(a: float | None, a_iqr: float | None, b: float | None, b_iqr: float | None) -> bool:
    """True when two medians differ by less than the larger run-to-run spread (DESIGN.md §5: noise)."""
    if a is None or b is None:
        return False
    spread = max(a_iqr or 0.0, b_iqr or 0.0)
    return spread > 0 and abs(a - b) < spread


def _candidate_view(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "round": as_int(row.get("round")),
        "candidate_id": _text(row.get("candidate_id")),
        "parent": _text(row.get("parent")),
        "idea": _text(row.get("idea")),
        "model": _text(row.get("model")),
        "compiled": as_bool(row.get("compiled")),
        "correct": as_bool(row.get("correct")),
        "reject_reason": _text(row.get("reject_reason")),
        "duplicate": _text(row.get("reject_reason")).startswith(DUPLICATE_PREFIX),
        "repaired": bool(as_bool(row.get("repaired"))),
        "time_ms": as_float(row.get("time_ms")),
        "speedup_eager": as_float(row.get("speedup_eager")),
        "speedup_compile": as_float(row.get("speedup_compile")),
        "max_rel_err": as_float(row.get("max_rel_err")),
    }


def _problem_view(problem: Mapping[str, Any], taken: set[str]) -> dict[str, Any]:
    pid = str(problem["id"])
    eager_ms, compile_ms = as_float(problem.get("eager_ms")), as_float(problem.get("compile_ms"))
    eager_iqr, compile_iqr = as_float(problem.get("eager_iqr_ms")), as_float(problem.get("compile_iqr_ms"))

    rounds = []
    for r in problem.get("rounds") or []:
        if not isinstance(r, Mapping):
            continue
        rounds.append({
            "round": as_int(r.get("round")),
            "n_candidates": as_int(r.get("n_candidates")),
            "n_compiled": as_int(r.get("n_compiled")),
            "n_correct": as_int(r.get("n_correct")),
            "best_round_ms": as_float(r.get("best_round_ms")),
            "best_so_far_ms": as_float(r.get("best_so_far_ms")),
            "best_so_far_speedup_eager": as_float(r.get("best_so_far_speedup_eager")),
            "best_so_far_speedup_compile": as_float(r.get("best_so_far_speedup_compile")),
        })

    candidates = [_candidate_view(c) for c in problem.get("candidates") or [] if isinstance(c, Mapping)]
    if candidates:
        n_total = len(candidates)
        n_correct = sum(1 for c in candidates if c["correct"])
    else:
        n_total = sum(r["n_candidates"] or 0 for r in rounds)
        n_correct = sum(r["n_correct"] or 0 for r in rounds)

    failures_in = problem.get("failures")
    if isinstance(failures_in, Mapping):
        failures = [(str(k), as_int(v) or 0) for k, v in failures_in.items()]
    else:  # derive from the rows when the lead did not count them
        counts: dict[str, int] = {}
        for c in candidates:
            if not c["correct"] and not c["duplicate"]:
                reason = c["reject_reason"] or "unknown"
                counts[reason] = counts.get(reason, 0) + 1
        failures = list(counts.items())
    failures.sort(key=lambda kv: (-kv[1], kv[0]))

    best_in = problem.get("best")
    best = _best_view(best_in, eager_ms, compile_ms) if isinstance(best_in, Mapping) else None
    supported = problem.get("supported")
    return {
        "id": pid,
        "anchor": _slug(pid, taken),
        "op": _text(problem.get("op")),
        "size": _text(problem.get("size")),
        "supported": supported is not False,
        "unsupported_reason": _text(problem.get("unsupported_reason")),
        "family": _text(problem.get("family")),
        "cause": cause(dict(problem)),
        "eager_ms": eager_ms,
        "eager_iqr_ms": eager_iqr,
        "eager_wide_spread_pct": spread_pct(eager_iqr, eager_ms),
        "compile_ms": compile_ms,
        "compile_iqr_ms": compile_iqr,
        "compile_error": _text(problem.get("compile_error")),
        "compile_speedup": _ratio(eager_ms, compile_ms),
        "rounds": rounds,
        "n_rounds": len(rounds),
        "n_total": n_total,
        "n_correct": n_correct,
        "failures": failures,
        "n_failed": sum(n for _, n in failures),
        "n_duplicates": (as_int(problem.get("duplicates")) if problem.get("duplicates") is not None
                         else sum(1 for c in candidates if c["duplicate"])),
        "usage": _usage_view(problem.get("usage")),
        "best": best,
        "noise_vs_eager": best is not None
        and _within_noise(best["time_ms"], best["time_iqr_ms"], eager_ms, eager_iqr),
        "noise_vs_compile": best is not None
        and _within_noise(best["time_ms"], best["time_iqr_ms"], compile_ms, compile_iqr),
        "candidates": candidates,
        "svg": Markup(trajectory_svg(dict(problem))),  # charts.py escapes every text it emits
    }


def build_context(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The template's view model: normalised header, per-problem views and the cross-problem geomeans."""
    if not isinstance(summary, Mapping):
        raise TypeError(f"render_report needs the summary dict, got {type(summary).__name__}")
    problems_in = summary.get("problems") or []
    if not isinstance(problems_in, Sequence) or isinstance(problems_in, (str, bytes)):
        raise ValueError(
            f"summary['problems'] must be a list of problem dicts, got {type(problems_in).__name__}"
        )
    taken: set[str] = set()
    problems = []
    for i, p in enumerate(problems_in):
        if not isinstance(p, Mapping) or p.get("id") in (None, ""):
            raise ValueError(f"summary['problems'][{i}] must be a dict with an 'id'; got {p!r:.80}")
        problems.append(_problem_view(p, taken))

    with_best = [p for p in problems if p["best"] and p["best"]["speedup_eager"]]
    with_compile = [p for p in with_best if p["best"]["speedup_compile"]]
    suite = metrics(problem_table(summary))
    tolerance = summary.get("tolerance") if isinstance(summary.get("tolerance"), Mapping) else {}
    return {
        "run": _text(summary.get("run")) or "run",
        "generated_at": _text(summary.get("generated_at")),
        "backend": _text(summary.get("backend")),
        "device": _text(summary.get("device")),
        "proposer": _text(summary.get("proposer")),
        "atol": as_float(tolerance.get("atol")),
        "rtol": as_float(tolerance.get("rtol")),
        "rounds": as_int(summary.get("rounds")),
        "problems": problems,
        "n_with_best": len(with_best),
        "geomean_eager": suite["geomean"]["eager"],
        "n_with_compile": len(with_compile),
        "geomean_compile": suite["geomean"]["compile"],
        "suite": suite,
        "usage": _run_usage_view(summary.get("usage")),
        "config_text": _dump(summary.get("config")),
        "manifest_text": _dump(summary.get("manifest")),
    }


# ---------------------------------------------------------------------------------------------- rendering


def make_environment(template_dir: Path) -> jinja2.Environment:
    """Jinja with autoescape always on (candidate text is untrusted), StrictUndefined (typos fail loudly)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(
        ms=fmt_ms, ms_iqr=fmt_ms_iqr, iqr=fmt_iqr, speedup=fmt_speedup, speedup_class=speedup_class,
        err=fmt_err, num=fmt_num, tokens=fmt_tokens, usd=fmt_usd,
    )
    return env


def render_report(summary: dict, out: Path, template_dir: Path) -> None:
    """Render the run summary to one self-contained HTML file at `out` (written atomically)."""
    template_dir = Path(template_dir)
    if not (template_dir / TEMPLATE_NAME).is_file():
        raise FileNotFoundError(
            f"{template_dir / TEMPLATE_NAME} not found; pass the repository's workflow/templates directory"
        )
    context = build_context(summary)
    html = make_environment(template_dir).get_template(TEMPLATE_NAME).render(**context)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out)
