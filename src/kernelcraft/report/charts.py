"""Inline SVG charts for the report: hand-written SVG so the page needs no JS, fonts or plotting library.

The trajectory chart answers the question a kernel engineer asks first: did the search actually climb,
and by how much compared with what eager and torch.compile already give? So speedup is on a log axis
(2x up and 2x down look the same), every candidate is a point (the spread shows whether the best is an
outlier), failures are counted rather than hidden, and the eager / torch.compile baselines are drawn in.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from kernelcraft.report.table import DUPLICATE_PREFIX, as_bool, as_float, as_int, speedup_text

# Geometry (viewBox units; the SVG scales to the page width).
_W, _H = 760, 330
_LEFT, _RIGHT, _TOP = 58, 24, 34
_PLOT_BOTTOM = 250  # bottom of the speedup area
_FAIL_TOP, _FAIL_BOTTOM = 262, 288  # band for failed/incorrect candidates
_AXIS_Y = 306  # x tick labels

_C_POINT = "#2563eb"
_C_BEST = "#f59e0b"
_C_LINE = "#0f172a"
_C_FAIL = "#dc2626"
_C_EAGER = "#64748b"
_C_COMPILE = "#7c3aed"
_C_GRID = "#e2e8f0"

_MAX_CROSSES_PER_ROUND = 40  # beyond this the band is a smear; the count label carries the number


def _tick_label(v: float) -> str:
    return f"{v:g}×"


def _nice_ticks(lo: float, hi: float) -> list[float]:
    """Log-axis ticks at round numbers: the coarsest mantissa set that still gives at least 4 ticks."""
    mantissa_sets = (
        (1.0,),
        (1.0, 2.0, 5.0),
        (1.0, 1.5, 2.0, 3.0, 5.0, 7.0),
        (1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0),
        tuple(1.0 + 0.1 * i for i in range(90)),
    )
    best: list[float] = []
    for mantissas in mantissa_sets:
        ticks = []
        for exp in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1):
            for m in mantissas:
                v = round(m * 10.0**exp, 10)
                if lo <= v <= hi:
                    ticks.append(v)
        ticks = sorted(set(ticks))
        if len(ticks) > 12:
            break  # finer sets only get denser
        best = ticks
        if len(ticks) >= 4:
            break
    return best


def _jitter(key: str, width: float) -> float:
    """Deterministic horizontal offset in [-width, width] so identical rounds don't stack on one pixel.

    Derived from the candidate id, not a RNG, so the same run always renders byte-identical SVG.
    """
    h = zlib.crc32(key.encode("utf-8")) / 0xFFFFFFFF
    return (2.0 * h - 1.0) * width


def _split_candidates(
    candidates: Sequence[Mapping[str, Any]],
) -> tuple[list[dict], Counter, dict[int, list[str]]]:
    """Plotted points (correct, with a measured speedup), failure counts per round, and the failures' ids.

    The ids only key the crosses' jitter and are capped per round; the counts are always complete.
    """
    points: list[dict] = []
    failed: Counter = Counter()
    failed_ids: dict[int, list[str]] = {}
    for i, c in enumerate(candidates):
        rnd = as_int(c.get("round"))
        if rnd is None or rnd < 1:
            continue
        if str(c.get("reject_reason") or "").startswith(DUPLICATE_PREFIX):
            continue  # the same code as an earlier candidate, not evaluated again: neither a point nor a failure
        cid = str(c.get("candidate_id") or f"#{i}")
        speedup = as_float(c.get("speedup_eager"))
        if as_bool(c.get("correct")) and speedup is not None and speedup > 0:
            points.append({"round": rnd, "speedup": speedup, "id": cid, "idea": str(c.get("idea") or "")})
            continue
        failed[rnd] += 1
        bucket = failed_ids.setdefault(rnd, [])
        if len(bucket) < _MAX_CROSSES_PER_ROUND:
            bucket.append(cid)
    return points, failed, failed_ids


def trajectory_svg(problem: dict) -> str:
    """Speedup-vs-eager by round for one problem, as an inline <svg> string (no JS, no external refs).

    Correct candidates are filled points, failed/incorrect ones small crosses in a band under the plot with a
    count per round, the best-so-far is a line, and dashed lines mark eager (1x) and torch.compile. Missing
    data (no rounds, no correct candidate, no compile time) yields a chart that says so rather than an error.
    """
    if not isinstance(problem, Mapping):
        raise TypeError(f"trajectory_svg needs a problem dict, got {type(problem).__name__}")
    rounds = [r for r in (problem.get("rounds") or []) if isinstance(r, Mapping)]
    candidates = [c for c in (problem.get("candidates") or []) if isinstance(c, Mapping)]
    points, failed, crosses = _split_candidates(candidates)

    eager_ms = as_float(problem.get("eager_ms"))
    compile_ms = as_float(problem.get("compile_ms"))
    compile_speedup = eager_ms / compile_ms if eager_ms and compile_ms and compile_ms > 0 else None

    bsf: list[tuple[int, float]] = []
    for r in rounds:
        rnd, s = as_int(r.get("round")), as_float(r.get("best_so_far_speedup_eager"))
        if rnd is not None and rnd >= 1 and s is not None and s > 0:
            bsf.append((rnd, s))
    bsf.sort()

    round_numbers = [as_int(r.get("round")) for r in rounds] + [p["round"] for p in points] + list(failed)
    n_rounds = max([r for r in round_numbers if r is not None and r >= 1] + [0])

    best = problem.get("best") if isinstance(problem.get("best"), Mapping) else None
    best_id = str(best.get("candidate_id")) if best and best.get("candidate_id") is not None else None

    title = f"Speedup vs eager by round for {problem.get('id', 'problem')}"
    if n_rounds == 0:  # a short strip, not an empty 330-unit frame
        return (
            f'<svg class="trajectory" viewBox="0 0 {_W} 56" width="100%" role="img" '
            f'xmlns="http://www.w3.org/2000/svg" font-family="system-ui, -apple-system, Segoe UI, Roboto, '
            f'Helvetica, Arial, sans-serif"><title>{escape(title)}</title>'
            f'<rect x="0" y="0" width="{_W}" height="56" fill="#ffffff"/>'
            f'<text x="{_W / 2:.1f}" y="33" text-anchor="middle" fill="#64748b" font-size="14">'
            f"No rounds finished yet</text></svg>"
        )
    out: list[str] = [
        f'<svg class="trajectory" viewBox="0 0 {_W} {_H}" width="100%" role="img" '
        f'xmlns="http://www.w3.org/2000/svg" font-family="system-ui, -apple-system, Segoe UI, Roboto, '
        f'Helvetica, Arial, sans-serif" font-size="11">',
        f"<title>{escape(title)}</title>",
        f'<rect x="0" y="0" width="{_W}" height="{_H}" fill="#ffffff"/>',
    ]
    out += _legend(compile_speedup, has_best=best_id is not None)

    values = [p["speedup"] for p in points] + [s for _, s in bsf] + [1.0]
    if compile_speedup:
        values.append(compile_speedup)
    lo, hi = min(values) / 1.15, max(values) * 1.15
    if hi / lo < 2.0:  # keep a sensible minimum span so tiny differences don't look dramatic
        mid = math.sqrt(lo * hi)
        lo, hi = mid / math.sqrt(2.0), mid * math.sqrt(2.0)
    llo, lhi = math.log10(lo), math.log10(hi)

    def y_of(v: float) -> float:
        return _PLOT_BOTTOM - (math.log10(v) - llo) / (lhi - llo) * (_PLOT_BOTTOM - _TOP)

    plot_w = _W - _LEFT - _RIGHT

    def x_of(r: float) -> float:
        return _LEFT + (r - 0.5) / n_rounds * plot_w

    # Grid and y ticks.
    for t in _nice_ticks(lo, hi):
        y = y_of(t)
        out.append(f'<line x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="{_C_GRID}"/>')
        out.append(
            f'<text x="{_LEFT - 6}" y="{y + 3.5:.1f}" text-anchor="end" fill="#475569">'
            f"{_tick_label(t)}</text>"
        )
    # Plot frame, failure band and x ticks.
    out.append(
        f'<rect x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{_PLOT_BOTTOM - _TOP}" fill="none" '
        f'stroke="#cbd5e1"/>'
    )
    out.append(
        f'<rect x="{_LEFT}" y="{_FAIL_TOP}" width="{plot_w}" height="{_FAIL_BOTTOM - _FAIL_TOP}" '
        f'fill="#fef2f2" stroke="#fecaca"/>'
    )
    out.append(
        f'<text x="{_LEFT - 6}" y="{(_FAIL_TOP + _FAIL_BOTTOM) / 2 + 3.5:.1f}" text-anchor="end" '
        f'fill="{_C_FAIL}">failed</text>'
    )
    for r in range(1, n_rounds + 1):
        x = x_of(r)
        if r > 1:
            xb = x_of(r - 0.5)
            out.append(
                f'<line x1="{xb:.1f}" x2="{xb:.1f}" y1="{_TOP}" y2="{_FAIL_BOTTOM}" stroke="{_C_GRID}" '
                f'stroke-dasharray="2 3"/>'
            )
        out.append(f'<text x="{x:.1f}" y="{_AXIS_Y}" text-anchor="middle" fill="#475569">{r}</text>')
    out.append(
        f'<text x="{_LEFT + plot_w / 2:.1f}" y="{_AXIS_Y + 18}" text-anchor="middle" fill="#334155">'
        f"round</text>"
    )
    out.append(
        f'<text transform="translate(14 {(_TOP + _PLOT_BOTTOM) / 2:.1f}) rotate(-90)" text-anchor="middle" '
        f'fill="#334155">speedup vs eager (log)</text>'
    )

    # Baselines: eager (1x) and torch.compile.
    out += _baselines(y_of, compile_speedup)

    # Failed / incorrect candidates: crosses in the band, with a count per round.
    half_band = (_FAIL_BOTTOM - _FAIL_TOP) / 2 - 5
    jitter_w = plot_w / n_rounds * 0.3
    for rnd, ids in sorted(crosses.items()):
        for cid in ids:
            x = x_of(rnd) + _jitter(cid, jitter_w)
            y = (_FAIL_TOP + _FAIL_BOTTOM) / 2 + _jitter(cid + "/y", half_band)
            out.append(
                f'<path d="M{x - 2.5:.1f},{y - 2.5:.1f}l5,5m0,-5l-5,5" stroke="{_C_FAIL}" '
                f'stroke-width="1.2" opacity="0.7"/>'
            )
        out.append(
            f'<text x="{x_of(rnd) + plot_w / n_rounds * 0.48:.1f}" y="{_FAIL_BOTTOM - 3}" text-anchor="end" '
            f'fill="{_C_FAIL}" font-size="10.5" font-weight="700">{failed[rnd]}</text>'
        )

    # Correct candidates.
    for p in points:
        x = x_of(p["round"]) + _jitter(p["id"], jitter_w)
        y = y_of(p["speedup"])
        tip = f'{p["id"]}: {speedup_text(p["speedup"])} vs eager'
        if p["idea"]:
            tip += f' — {p["idea"]}'
        is_best = best_id is not None and p["id"] == best_id
        if is_best:
            style = f'r="5.5" fill="{_C_BEST}" fill-opacity="1" stroke="#92400e" stroke-width="1.2"'
        else:
            style = f'r="3.2" fill="{_C_POINT}" fill-opacity="0.55" stroke="#1e40af" stroke-width="0.6"'
        out.append(
            f'<circle class="pt" cx="{x:.1f}" cy="{y:.1f}" {style}><title>{escape(tip)}</title></circle>'
        )

    # Best-so-far line.
    if bsf:
        pts = " ".join(f"{x_of(r):.1f},{y_of(s):.1f}" for r, s in bsf)
        out.append(f'<polyline points="{pts}" fill="none" stroke="{_C_LINE}" stroke-width="2"/>')
        for r, s in bsf:
            out.append(
                f'<rect x="{x_of(r) - 3:.1f}" y="{y_of(s) - 3:.1f}" width="6" height="6" fill="{_C_LINE}">'
                f"<title>best so far after round {r}: {escape(speedup_text(s))}</title></rect>"
            )
        r_last, s_last = bsf[-1]
        out.append(
            f'<text x="{x_of(r_last) + 8:.1f}" y="{y_of(s_last) - 6:.1f}" fill="{_C_LINE}" '
            f'font-weight="600" paint-order="stroke" stroke="#ffffff" stroke-width="3">'
            f"{escape(speedup_text(s_last))}</text>"
        )
    elif not points:
        out.append(
            f'<text x="{_LEFT + plot_w / 2:.1f}" y="{_TOP + 0.3 * (_PLOT_BOTTOM - _TOP):.1f}" '
            f'text-anchor="middle" '
            f'fill="#64748b" font-size="13" paint-order="stroke" stroke="#ffffff" stroke-width="4">'
            f"No correct candidate yet</text>"
        )
    out.append("</svg>")
    return "".join(out)


def _legend(compile_speedup: float | None, has_best: bool) -> list[str]:
    """A one-line legend across the top of the chart (symbol drawn at x, label to its right)."""
    y = 16
    entries: list[tuple[str, str, int]] = [
        (f'<circle cx="{{x}}" cy="{y}" r="3.5" fill="{_C_POINT}" fill-opacity="0.55" stroke="#1e40af" '
         f'stroke-width="0.6"/>', "correct candidate", 128),
        (f'<circle cx="{{x}}" cy="{y}" r="5" fill="{_C_BEST}" stroke="#92400e" stroke-width="1.2"/>',
         "best kernel", 90),
        (f'<path d="M{{xm}},{y - 3}l6,6m0,-6l-6,6" stroke="{_C_FAIL}" stroke-width="1.4"/>',
         "failed / incorrect (count per round)", 215),
        (f'<line x1="{{xm}}" x2="{{xp}}" y1="{y}" y2="{y}" stroke="{_C_LINE}" stroke-width="2"/>',
         "best so far", 92),
        (f'<line x1="{{xm}}" x2="{{xp}}" y1="{y}" y2="{y}" stroke="{_C_EAGER}" stroke-width="1.5" '
         f'stroke-dasharray="4 3"/>', "eager", 62),
    ]
    if not has_best:
        del entries[1]
    if compile_speedup:
        entries.append(
            (f'<line x1="{{xm}}" x2="{{xp}}" y1="{y}" y2="{y}" stroke="{_C_COMPILE}" stroke-width="1.5" '
             f'stroke-dasharray="6 3"/>', "torch.compile", 100)
        )
    out: list[str] = []
    x = _LEFT
    for symbol, label, width in entries:
        out.append(symbol.replace("{x}", str(x)).replace("{xm}", str(x - 7)).replace("{xp}", str(x + 7)))
        out.append(f'<text x="{x + 12}" y="{y + 4}" fill="#334155">{escape(label)}</text>')
        x += width
    return out


def _baselines(y_of: Any, compile_speedup: float | None) -> list[str]:
    """Dashed eager and torch.compile lines, labels nudged apart when the two lines nearly coincide."""
    out: list[str] = []
    y_eager = y_of(1.0)
    y_comp = y_of(compile_speedup) if compile_speedup else None
    # When the two lines are within a label's height, label the upper one above and the lower one below.
    close = y_comp is not None and abs(y_comp - y_eager) < 14
    eager_is_upper = y_comp is None or y_eager <= y_comp
    x_end = _W - _RIGHT - 4
    out.append(
        f'<line x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{y_eager:.1f}" y2="{y_eager:.1f}" stroke="{_C_EAGER}" '
        f'stroke-width="1.5" stroke-dasharray="4 3"/>'
    )
    ly = y_eager + 12 if close and not eager_is_upper else y_eager - 4
    out.append(
        f'<text x="{x_end}" y="{ly:.1f}" text-anchor="end" fill="{_C_EAGER}" paint-order="stroke" '
        f'stroke="#ffffff" stroke-width="3">eager 1×</text>'
    )
    if y_comp is not None and compile_speedup is not None:
        out.append(
            f'<line x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{y_comp:.1f}" y2="{y_comp:.1f}" '
            f'stroke="{_C_COMPILE}" stroke-width="1.5" stroke-dasharray="6 3"/>'
        )
        ly = y_comp + 12 if close and eager_is_upper else y_comp - 4
        out.append(
            f'<text x="{x_end}" y="{ly:.1f}" text-anchor="end" fill="{_C_COMPILE}" paint-order="stroke" '
            f'stroke="#ffffff" stroke-width="3">torch.compile {escape(speedup_text(compile_speedup))}</text>'
        )
    return out
