"""The run report and the candidates table: exact CSV contract, self-contained escaped HTML, robust charts."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import browser
import pytest

from kernelcraft import layout
from kernelcraft.context import RunContext
from kernelcraft.jsonio import write_json
from kernelcraft.llm import budget
from kernelcraft.llm.types import Message, Reply, Request, Usage
from kernelcraft.report import suite
from kernelcraft.report.charts import trajectory_svg
from kernelcraft.report.collect import collect, reason_category
from kernelcraft.report.render import (
    fmt_ms,
    fmt_ms_iqr,
    fmt_speedup,
    fmt_tokens,
    fmt_usd,
    render_report,
    speedup_class,
)
from kernelcraft.report.suite import problem_table
from kernelcraft.report.table import CANDIDATE_COLUMNS, read_candidates_csv, write_candidates_csv

TEMPLATES = Path(__file__).resolve().parents[1] / "workflow" / "templates"
PLANTED = "<script>alert('pwned')</script>"

PARENT_SRC = """import torch
import torch.nn as nn

class ModelNew(nn.Module):
    def forward(self, x):
        return softmax_rows(x, block=256)
"""
BEST_SRC = PARENT_SRC.replace("block=256", "block=1024, vec=4") + f"# {PLANTED}\n"


def _cand(problem: str, rnd: int, i: int, correct: bool, speedup: float | None, **kw) -> dict:
    eager = 1.43
    row = {
        "problem": problem, "round": rnd, "candidate_id": f"r{rnd}_i{i}_m0", "parent": "reference",
        "idea": f"idea {i}", "model": "offline", "compiled": correct or i % 2 == 0, "correct": correct,
        "reject_reason": None if correct else "incorrect: max error above tolerance",
        "time_ms": eager / speedup if speedup else None, "eager_ms": eager, "compile_ms": 1.06,
        "speedup_eager": speedup, "speedup_compile": 1.06 * speedup / eager if speedup else None,
        "max_rel_err": 1e-7 if correct else 0.3,
    }
    row.update(kw)
    return row


def synthetic_summary() -> dict:
    """Two problems: softmax with a best kernel, layernorm with no correct candidate and no compile time."""
    softmax_cands = [
        _cand("softmax_4096x65536", 1, 0, True, 1.21),
        _cand("softmax_4096x65536", 1, 1, False, None),
        _cand("softmax_4096x65536", 2, 0, True, 1.48, parent="r1_i0_m0", idea=f"tile rows {PLANTED}"),
        _cand("softmax_4096x65536", 2, 1, True, 0.82),
        _cand("softmax_4096x65536", 3, 0, True, 1.79, parent="r2_i0_m0"),
        _cand("softmax_4096x65536", 3, 1, False, None, reject_reason="compile error", compiled=False),
    ]
    layernorm_cands = [
        _cand("layernorm_16x64x256x256", 1, 0, False, None, eager_ms=8.15, compile_ms=None),
        _cand("layernorm_16x64x256x256", 1, 1, False, None, eager_ms=8.15, compile_ms=None,
              reject_reason="timeout"),
    ]
    return {
        "run": "default", "generated_at": "2026-11-25T12:00:00Z", "backend": "cuda",
        "device": "NVIDIA H100 80GB HBM3", "proposer": "offline", "tolerance": {"atol": 1e-2, "rtol": 1e-2},
        "rounds": 3,
        "config": {"rounds": 3, "ideas_per_round": 2, "problems": ["softmax", "layernorm"]},
        "manifest": {"git_commit": "abc123", "torch": "2.11.0"},
        "problems": [
            {
                "id": "softmax_4096x65536", "op": "softmax", "size": "full",
                "eager_ms": 1.43, "eager_iqr_ms": 0.01, "compile_ms": 1.06, "compile_iqr_ms": 0.01,
                "compile_error": None, "supported": True,
                "rounds": [
                    {"round": 1, "n_candidates": 2, "n_compiled": 2, "n_correct": 1, "best_round_ms": 1.18,
                     "best_so_far_ms": 1.18, "best_so_far_speedup_eager": 1.21,
                     "best_so_far_speedup_compile": 0.9},
                    {"round": 2, "n_candidates": 2, "n_compiled": 2, "n_correct": 2, "best_round_ms": 0.966,
                     "best_so_far_ms": 0.966, "best_so_far_speedup_eager": 1.48,
                     "best_so_far_speedup_compile": 1.1},
                    {"round": 3, "n_candidates": 2, "n_compiled": 1, "n_correct": 1, "best_round_ms": 0.8,
                     "best_so_far_ms": 0.8, "best_so_far_speedup_eager": 1.79,
                     "best_so_far_speedup_compile": 1.33},
                ],
                "best": {
                    "candidate_id": "r3_i0_m0", "round": 3, "idea": f"vectorised loads {PLANTED}",
                    "kind": "memory access", "model": "offline", "time_ms": 0.8, "time_iqr_ms": 0.01,
                    "speedup_eager": 1.79, "speedup_compile": 1.33, "max_rel_err": 1e-7,
                    "source": BEST_SRC, "parent_id": "r2_i0_m0", "parent_source": PARENT_SRC,
                    "lineage": [
                        {"candidate_id": "r1_i0_m0", "round": 1, "idea": "one block per row",
                         "speedup_eager": 1.21},
                        {"candidate_id": "r2_i0_m0", "round": 2, "idea": f"tile rows {PLANTED}",
                         "speedup_eager": 1.48},
                        {"candidate_id": "r3_i0_m0", "round": 3, "idea": "vectorised loads",
                         "speedup_eager": 1.79},
                    ],
                },
                "candidates": softmax_cands,
                "failures": {"compile error": 1, "incorrect: max error above tolerance": 1},
            },
            {
                "id": "layernorm_16x64x256x256", "op": "layernorm", "size": "full",
                "eager_ms": 8.15, "eager_iqr_ms": 0.02, "compile_ms": None, "compile_iqr_ms": None,
                "compile_error": "torch.compile disabled", "supported": False,
                "unsupported_reason": "no offline family fits: the graph holds cumsum(f32[16,64]) <b>",
                "rounds": [{"round": 1, "n_candidates": 2, "n_compiled": 1, "n_correct": 0,
                            "best_round_ms": None, "best_so_far_ms": None, "best_so_far_speedup_eager": None,
                            "best_so_far_speedup_compile": None}],
                "best": None,
                "candidates": layernorm_cands,
                "failures": {"incorrect: max error above tolerance": 1, "timeout": 1},
            },
        ],
    }


@pytest.fixture(scope="module")
def report_html(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("report") / "report.html"
    render_report(synthetic_summary(), out, TEMPLATES)
    return out.read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------- CSV


def test_csv_has_exactly_the_contract_columns_in_order(tmp_path):
    out = tmp_path / "candidates.csv"
    rows = [dict(_cand("p", 1, 0, True, 1.5), extra_key="ignored")]
    write_candidates_csv(rows, out)
    with out.open(newline="") as fh:
        header = next(csv.reader(fh))
    assert tuple(header) == CANDIDATE_COLUMNS
    assert "extra_key" not in out.read_text()


def test_csv_cells_none_empty_bools_lowercase_floats_six_significant_digits(tmp_path):
    out = tmp_path / "candidates.csv"
    row = {col: None for col in CANDIDATE_COLUMNS}
    row.update(problem="softmax", round=2, candidate_id="r2_i1_m0", compiled=True, correct=False,
               idea='has "quotes", commas\nand a newline', time_ms=0.123456789, max_rel_err=1.5e-7)
    write_candidates_csv([row], out)
    with out.open(newline="") as fh:
        cells = list(csv.DictReader(fh))[0]
    assert cells["compiled"] == "true" and cells["correct"] == "false"
    assert cells["time_ms"] == "0.123457"
    assert cells["max_rel_err"] == "1.5e-07"
    assert cells["eager_ms"] == "" and cells["parent"] == "" and cells["reject_reason"] == ""
    assert cells["round"] == "2"
    assert cells["idea"] == 'has "quotes", commas\nand a newline'


def test_csv_round_trips_typed_values(tmp_path):
    out = tmp_path / "candidates.csv"
    rows = [_cand("softmax", 1, 0, True, 1.25), _cand("softmax", 1, 1, False, None)]
    rows[0]["time_ms"] = 1.144  # exactly representable at 6 significant digits
    rows[0]["speedup_compile"] = 0.5
    write_candidates_csv(rows, out)
    back = read_candidates_csv(out)
    assert len(back) == 2
    assert back[0]["round"] == 1 and back[0]["correct"] is True and back[0]["compiled"] is True
    assert back[0]["time_ms"] == 1.144 and back[0]["speedup_eager"] == 1.25
    assert back[0]["speedup_compile"] == 0.5 and back[0]["max_rel_err"] == 1e-7
    assert back[1]["correct"] is False and back[1]["time_ms"] is None and back[1]["speedup_eager"] is None
    assert back[1]["reject_reason"] == "incorrect: max error above tolerance"


def test_csv_rejects_a_row_that_is_not_a_dict(tmp_path):
    with pytest.raises(TypeError, match="candidate row 1 is a list"):
        write_candidates_csv([{}, ["softmax", 1]], tmp_path / "c.csv")


# ---------------------------------------------------------------------------------------------- formatting


def test_number_formatting_is_engineer_friendly():
    assert fmt_ms(1.43) == "1.430"
    assert fmt_ms(0.8) == "0.8000"
    assert fmt_ms(266.04) == "266.0"
    assert fmt_ms(None) == "—"
    assert fmt_ms_iqr(1.43, 0.01) == "1.430 ± 0.010"
    assert fmt_speedup(1.589) == "1.59×"
    assert fmt_speedup(12.34) == "12.3×"
    assert fmt_speedup(None) == "—"
    assert [speedup_class(v) for v in (1.2, 0.8, 1.001, None)] == ["up", "down", "even", "even"]


# ---------------------------------------------------------------------------------------------- HTML


def test_report_names_every_problem_and_header_fields(report_html):
    for text in ("softmax_4096x65536", "layernorm_16x64x256x256", "NVIDIA H100 80GB HBM3", "offline",
                 "2026-11-25T12:00:00Z", "atol 0.01"):
        assert text in report_html


def test_report_shows_formatted_speedups_and_geomean(report_html):
    assert "1.79×" in report_html and "1.33×" in report_html
    assert re.search(r'class="num up"[^>]*>1\.79×</td>', report_html)
    assert ">0.8000 ± 0.0100</td>" in report_html  # the IQR takes the median's decimals
    # one problem with a correct kernel, so the geomean equals its speedup
    geomean = r"Geometric mean \(1 problem with a correct kernel\)</td>\s*<td[^>]*>1\.79×"
    assert re.search(geomean, report_html)


def test_report_handles_problem_without_correct_candidate_or_compile_time(report_html):
    section = report_html.split('id="p-layernorm_16x64x256x256"')[1]
    assert "timed but not searched: the offline proposer has no kernels for this problem" in section.lower()
    assert "no offline family fits: the graph holds cumsum(f32[16,64]) &lt;b&gt;" in section
    assert "torch.compile failed" in section


def test_report_embeds_an_svg_chart_per_problem(report_html):
    assert report_html.count("<svg") == 2


def test_report_is_self_contained(report_html):
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", report_html, re.I)
    assert "@import" not in report_html and not re.search(r"url\(\s*['\"]?(https?:)?//", report_html)
    assert "<link" not in report_html and "<script src" not in report_html


def test_report_escapes_planted_script_in_ideas_and_source(report_html):
    assert PLANTED not in report_html
    escaped = "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;"
    assert report_html.count(escaped) >= 3  # idea text, lineage, source listing / diff


def test_report_shows_diff_against_parent(report_html):
    assert '<span class="l d-del">-        return softmax_rows(x, block=256)</span>' in report_html
    assert '<span class="l d-add">+        return softmax_rows(x, block=1024, vec=4)</span>' in report_html


def test_report_colours_slowdowns_red_and_shows_lineage(report_html):
    assert re.search(r'class="num down"[^>]*>0\.90×</td>', report_html)  # round 1 best vs torch.compile
    section = report_html.split('id="p-softmax_4096x65536"')[1].split('id="p-layernorm')[0]
    lineage = section.split('<ol class="lineage">')[1].split("</ol>")[0]
    assert re.findall(r"<code>(r\d_i\d_m\d)</code>", lineage) == ["r1_i0_m0", "r2_i0_m0", "r3_i0_m0"]
    assert "one block per row" in lineage and "(1.21× over its parent)" in lineage


def test_report_flags_a_speedup_within_run_to_run_noise(tmp_path):
    summary = synthetic_summary()
    best = summary["problems"][0]["best"]
    best.update(time_ms=1.42, time_iqr_ms=0.02, speedup_eager=1.43 / 1.42)
    out = tmp_path / "report.html"
    render_report(summary, out, TEMPLATES)
    assert 'title="difference is smaller than the run-to-run spread">≈</span>' in out.read_text()


def test_report_flags_a_timing_spread_above_a_tenth_of_the_median(tmp_path):
    summary = synthetic_summary()
    summary["problems"][0]["best"].update(time_ms=0.2263, time_iqr_ms=0.0798)  # the LayerNorm figure of issue 9
    out = tmp_path / "report.html"
    render_report(summary, out, TEMPLATES)
    html = out.read_text()
    assert html.count("the interquartile range is 35% of the median: an unstable measurement") == 2  # KPI, details
    summary["problems"][0]["best"].update(time_iqr_ms=0.02)  # 8.8%: within what a kernel's own variation may be
    render_report(summary, out, TEMPLATES)
    assert "an unstable measurement" not in out.read_text()


def test_report_is_byte_identical_for_the_same_summary(tmp_path):
    a, b = tmp_path / "a.html", tmp_path / "b.html"
    render_report(synthetic_summary(), a, TEMPLATES)
    render_report(synthetic_summary(), b, TEMPLATES)
    assert a.read_bytes() == b.read_bytes()


def test_report_renders_with_minimal_summary(tmp_path):
    out = tmp_path / "report.html"
    render_report({"problems": [{"id": "empty"}]}, out, TEMPLATES)
    html = out.read_text()
    assert "empty" in html and "No rounds finished yet" in html


def test_report_bad_input_is_a_one_line_error(tmp_path):
    with pytest.raises(ValueError, match=r"summary\['problems'\]\[0\] must be a dict with an 'id'"):
        render_report({"problems": [{"op": "softmax"}]}, tmp_path / "r.html", TEMPLATES)
    with pytest.raises(FileNotFoundError, match="workflow/templates"):
        render_report({"problems": []}, tmp_path / "r.html", tmp_path)


# ---------------------------------------------------------------------------------------------- charts


def test_trajectory_zero_rounds_says_so():
    svg = trajectory_svg({"id": "p", "rounds": [], "candidates": []})
    assert svg.startswith("<svg") and svg.endswith("</svg>") and "No rounds finished yet" in svg


def test_trajectory_one_round_plots_points_and_best_so_far():
    problem = synthetic_summary()["problems"][0]
    problem["rounds"] = problem["rounds"][:1]
    problem["candidates"] = [c for c in problem["candidates"] if c["round"] == 1]
    svg = trajectory_svg(problem)
    assert svg.count('<circle class="pt"') == 1  # the one correct candidate of round 1
    assert "<polyline" in svg and "torch.compile 1.35×" in svg


def test_trajectory_no_correct_candidates_counts_failures():
    problem = synthetic_summary()["problems"][1]
    svg = trajectory_svg(problem)
    assert "No correct candidate yet" in svg
    assert "torch.compile" not in svg  # no compile time, no compile line
    assert svg.count('stroke="#dc2626" stroke-width="1.2"') == 2  # two failure crosses


def test_trajectory_escapes_idea_text_in_tooltips():
    problem = synthetic_summary()["problems"][0]
    svg = trajectory_svg(problem)
    assert "<script>" not in svg and "&lt;script&gt;" in svg


# ---------------------------------------------------------------------------------------------- browser


# Type "not searched" into the per-problem filter: the visible rows' problem ids.
FILTER_JS = ("(() => { const f = document.getElementById('summary-filter'); f.value = 'not searched'; "
             "f.dispatchEvent(new Event('input')); "
             "return Array.from(document.querySelectorAll('#summary-table tbody tr'))"
             ".filter(r => r.style.display !== 'none').map(r => r.cells[0].getAttribute('data-v')); })()")


@pytest.mark.skipif(browser.chromium() is None, reason="no Chromium on PATH (.ci/run installs Debian's chromium)")
def test_a_report_with_planted_markup_loads_in_chromium_with_no_error_no_request_and_every_chart_drawn(tmp_path):
    html = tmp_path / "report.html"
    render_report(synthetic_summary(), html, TEMPLATES)
    page = browser.load(html, tmp_path / "shot.png", browser.CHARTS_JS)
    assert page.errors == [] and page.requests == [html.resolve().as_uri()]
    assert len(page.facts) == 2 and all(w > 0 and h > 0 and marks > 0 for w, h, marks in page.facts)
    filtered = browser.load(html, tmp_path / "filtered.png", FILTER_JS)
    assert filtered.errors == [] and filtered.facts == ["layernorm_16x64x256x256"]
    assert (tmp_path / "shot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------- tokens and cost


def _usage(calls=0, cached=0, failed=0, refused=0, inp=0, out=0, reasoning=0, cost=0.0, known=True) -> dict:
    return {"calls": calls, "cached_calls": cached, "failed_calls": failed, "refused_calls": refused,
            "input_tokens": inp, "output_tokens": out, "reasoning_tokens": reasoning, "cost_usd": cost,
            "cost_known": known}


def usage_summary_with_budget(budget_usd: float | None, known: bool = True) -> dict:
    summary = synthetic_summary()
    o3 = _usage(calls=30, cached=4, inp=1_200_000, out=1_500_000, reasoning=900_000, cost=14.4)
    gemini = _usage(calls=20, failed=2, refused=3, inp=800_000, out=1_000_000, cost=11.0, known=known)
    total = {k: (o3[k] + gemini[k] if k != "cost_known" else known) for k in o3}
    summary["usage"] = {"total": total, "per_model": {"openai/o3": o3, "gemini/gemini-2.5-pro": gemini},
                        "per_purpose": {"ideas": _usage(calls=10, inp=100_000, out=50_000, cost=0.6),
                                        "implement": _usage(calls=40, cached=4, failed=2, refused=3, inp=1_900_000,
                                                            out=2_450_000, reasoning=900_000, cost=24.8)},
                        "budget_usd": budget_usd}
    summary["problems"][0]["usage"] = _usage(calls=50, cached=4, failed=2, refused=3, inp=2_000_000,
                                             out=2_500_000, reasoning=900_000, cost=25.4, known=known)
    return summary


def _render(tmp_path, summary) -> str:
    out = tmp_path / "report.html"
    render_report(summary, out, TEMPLATES)
    return out.read_text()


def _usage_card(html: str) -> str:
    return html.split('id="usage"')[1].split("</section>")[0]


def test_money_and_token_formatting():
    assert fmt_usd(41.273) == "$41.27" and fmt_usd(1234.5) == "$1,234.50"
    assert fmt_usd(0.0065) == "$0.0065" and fmt_usd(0) == "$0.0000" and fmt_usd(None) == "—"
    assert fmt_tokens(3012480) == "3,012,480" and fmt_tokens(None) == "—"


def test_report_shows_run_tokens_cost_calls_per_model_and_the_budget(tmp_path):
    card = _usage_card(_render(tmp_path, usage_summary_with_budget(100.0)))
    assert re.search(r'Cost</div>\s*<div class="value">\$25\.40</div>\s*<div class="sub">at the config', card)
    assert "$25.40 of $100.00" in card and "not reached" in card
    assert ">2,000,000<" in card and ">2,500,000<" in card and "900,000 of them reasoning" in card
    assert re.search(r'Calls</div>\s*<div class="value">50</div>\s*<div class="sub">4 cached · 2 failed · '
                     r"3 refused", card)
    # per model, most expensive first, and per purpose
    assert card.index("openai/o3") < card.index("gemini/gemini-2.5-pro")
    assert re.search(r"openai/o3</td><td class=\"num\">30</td><td class=\"num\">4</td>", card)
    assert ">implement</td>" in card and ">ideas</td>" in card


def test_report_shows_the_cost_and_calls_of_each_problem(tmp_path):
    html = _render(tmp_path, usage_summary_with_budget(None))
    section = html.split('id="p-softmax_4096x65536"')[1].split("<figure>")[0]
    assert "Model cost" in section and "$25.40" in section
    assert "50 calls (4 cached, 2 failed, 3 refused) · 2,000,000 in + 2,500,000 out tokens" in section
    # the other problem made no call, so it shows no cost box
    assert "Model cost" not in html.split('id="p-layernorm_16x64x256x256"')[1].split("<figure>")[0]
    assert "llm.budget_usd not set" in _usage_card(html)


def test_report_says_when_the_budget_was_reached(tmp_path):
    card = _usage_card(_render(tmp_path, usage_summary_with_budget(25.0)))
    assert '<div class="value down">$25.40 of $25.00</div>' in card
    assert "budget reached: no call was made after it" in card


def test_report_says_when_cost_is_incomplete_because_a_model_has_no_price(tmp_path):
    card = _usage_card(_render(tmp_path, usage_summary_with_budget(None, known=False)))
    assert "incomplete: some model has no price" in card
    gemini_row = card.split("gemini/gemini-2.5-pro")[1].split("</tr>")[0]
    assert "no price" in gemini_row and "no price" not in card.split("openai/o3")[1].split("</tr>")[0]


def test_report_of_a_run_without_model_calls_says_so(tmp_path):
    summary = synthetic_summary()
    summary["usage"] = {"total": _usage(), "per_model": {}, "per_purpose": {}, "budget_usd": 100.0}
    card = _usage_card(_render(tmp_path, summary))
    assert "No model calls" in card and "Cost</div>" not in card


@pytest.mark.parametrize(("reason", "category"), [
    ("duplicate of r1_i0_m0", "duplicate"),
    ("model call failed: openai/o3: HTTP 503: overloaded (gave up after 5 attempts)", "model call failed"),
    ("model call failed: gemini/gemini-2.5-pro: malformed response: bad JSON (not retried)", "model call failed"),
    ("model call failed: budget_usd reached: spent $100.20 of $100.00; no new model calls",
     "model call refused: budget reached"),
    ("model call failed: openai/o3: no API key; set OPENAI_API_KEY", "model call refused: no API key"),
    ("model call failed: replay: no recorded answer for this request in results/a",
     "model call refused: not in the replayed run"),
    ("model reply: truncated (finish_reason=length)", "model reply: truncated"),
    ("model reply: truncated (unterminated code block)", "model reply: truncated"),
    ("model reply: no ```python code block", "model reply: no code"),
    ("model reply: no class ModelNew at module level", "model reply: no ModelNew"),
    ("model reply: syntax error at line 3: invalid syntax", "model reply: syntax error"),
    ("compile error: relu.c:3: error: expected ';'", "compile error"),
])
def test_reasons_are_grouped_into_causes(reason, category):
    assert reason_category(reason) == category


def _write_run(root: Path, problem: str) -> None:
    """One round of four candidates: correct and timed, wrong, a duplicate of the first, a failed model call; and
    a ledger of three calls for the problem (two answered, one answered from its transcript)."""
    write_json(layout.baseline_file(root, problem), {"op": "relu", "eager_ms": 2.0, "eager_iqr_ms": 0.01,
                                                     "compile_ms": None})
    cands = [{"id": f"r1_i0_m{j}", "idea_id": "r1_i0", "idea": "block the loop", "kind": "memory access",
              "parent": "reference", "model": "openai/o3", "path": None} for j in range(4)]
    cands[0]["path"] = f"{problem}/round_1/candidates/r1_i0_m0.py"
    cands[1]["path"] = f"{problem}/round_1/candidates/r1_i0_m1.py"
    cands[2]["duplicate_of"] = "r1_i0_m0"
    cands[3]["failure"] = "model call failed: openai/o3: HTTP 503: busy (gave up after 2 attempts)"
    (root / cands[0]["path"]).parent.mkdir(parents=True)
    (root / cands[0]["path"]).write_text("class ModelNew: pass\n")
    write_json(layout.stage_file(root, problem, 1, "implement"), {"candidates": cands})
    write_json(layout.stage_file(root, problem, 1, "compile"), {"results": {
        "r1_i0_m0": {"compiled": True}, "r1_i0_m1": {"compiled": True},
        "r1_i0_m2": {"compiled": False, "reason": "duplicate of r1_i0_m0"},
        "r1_i0_m3": {"compiled": False, "reason": cands[3]["failure"]}}})
    write_json(layout.stage_file(root, problem, 1, "verify"), {"results": {
        "r1_i0_m0": {"correct": True, "max_rel_err": 0.0},
        "r1_i0_m1": {"correct": False, "reasons": ["max error above tolerance: 0.5"]}}})
    write_json(layout.stage_file(root, problem, 1, "benchmark"), {"results": {
        "r1_i0_m0": {"timed": True, "time_ms": 1.0, "eager_ms": 2.0, "speedup_eager": 2.0}}})
    write_json(layout.stage_file(root, problem, 1, "select"), {"seeds": [
        {"id": "r1_i0_m0", "round": 1, "path": cands[0]["path"], "parent": "reference", "idea": "block the loop",
         "time_ms": 1.0, "eager_ms": 2.0, "speedup_eager": 2.0}]})
    write_json(layout.stage_file(root, problem, 1, "ideas"), {"supported": True, "ideas": []})
    for k, status in enumerate(("answered", "answered", "cached")):
        request = Request("openai", "o3", (Message("user", f"call {k}"),), purpose="implement",
                          tags={"problem": problem, "round": 1})
        reply = Reply(key=request.key(), text="x", usage=Usage(1000, 400, 100), cost_usd=0.0052)
        budget.record(root, request, reply, status)


def test_collect_counts_duplicates_apart_from_failures_and_reads_usage_from_the_ledger(tmp_path):
    problem = "relu_small"
    root = tmp_path / "results" / "r"
    _write_run(root, problem)
    config = {"run": "r", "rounds": 1, "models": {"ideas": [{"provider": "openai", "model": "o3"}],
                                                  "implement": [{"provider": "openai", "model": "o3"}]},
              "tolerance": {"atol": 1e-2, "rtol": 1e-2}, "llm": {"budget_usd": 5.0}}
    ctx = RunContext(config=config, root=root, backend="cpu", size="small", cuda_arch=None,
                     problems={problem: "unused.py"})
    summary, rows = collect(ctx)
    (p,) = summary["problems"]
    assert [r["reject_reason"] for r in rows] == [
        None, "max error above tolerance: 0.5", "duplicate of r1_i0_m0", rows[3]["reject_reason"]]
    assert p["failures"] == {"incorrect: error above tolerance": 1, "model call failed": 1}
    assert p["duplicates"] == 1
    assert p["usage"] == {"calls": 2, "cached_calls": 1, "failed_calls": 0, "refused_calls": 0,
                          "input_tokens": 2000, "output_tokens": 800, "reasoning_tokens": 200,
                          "cost_usd": pytest.approx(0.0104), "cost_known": True}
    assert summary["usage"]["total"] == p["usage"] and summary["usage"]["budget_usd"] == 5.0
    assert list(summary["usage"]["per_model"]) == ["openai/o3"]
    html = _render(tmp_path, summary)
    failures = html.split("Failures by cause")[1].split("</div>")[0]
    assert "<tfoot><tr><td>Total</td><td class=\"num\">2</td>" in failures
    assert "1 duplicate: the same code as an earlier candidate" in failures and "<td>duplicate" not in failures
    assert "$0.0104 of $5.00" in _usage_card(html)


def test_a_problem_the_workflow_did_not_search_says_why_from_its_traced_graph(tmp_path):
    ref = tmp_path / "running_sum.py"
    ref.write_text("import torch\nimport torch.nn as nn\n\n\nclass Model(nn.Module):\n"
                   "    def forward(self, x):\n        return torch.cumsum(torch.exp(x), 1)\n\n\n"
                   "def get_inputs():\n    return [torch.randn(8, 9)]\n\n\ndef get_init_inputs():\n    return []\n")
    root = tmp_path / "results" / "r"
    config = {"run": "r", "rounds": 1, "models": {"ideas": [], "implement": []},
              "tolerance": {"atol": 1e-2, "rtol": 1e-2}, "llm": {"budget_usd": None}}
    ctx = RunContext(config=config, root=root, backend="cpu", size="full", cuda_arch=None,
                     problems={"running_sum": str(ref), "other": str(ref)})
    write_json(layout.stage_file(root, "other", 1, "ideas"),
               {"supported": False, "unsupported_reason": "the proposer's own reason", "ideas": []})
    summary, _ = collect(ctx)
    reasons = {p["id"]: p["unsupported_reason"] for p in summary["problems"]}
    assert reasons == {"running_sum": "no offline family fits: the graph holds exp(f32[8,9]) -> cumsum(f32[8,9])",
                       "other": "the proposer's own reason"}
    assert list((tmp_path / "results" / ".recognition").glob("running_sum-*.json"))


def test_a_duplicate_is_neither_a_point_nor_a_failure_in_the_chart():
    problem = synthetic_summary()["problems"][1]  # two failed candidates, no correct one
    dup = _cand("layernorm_16x64x256x256", 1, 2, False, None, reject_reason="duplicate of r1_i0_m0")
    before = trajectory_svg(problem)
    problem["candidates"].append(dup)
    after = trajectory_svg(problem)
    assert after == before and after.count('stroke="#dc2626" stroke-width="1.2"') == 2


# ---------------------------------------------------------------------------------------------- suite table


def _suite_summary() -> dict:
    def prob(pid, supported=True, best=None, failures=None, compile_ms=2.0):
        return {"id": pid, "family": "elementwise/pointwise", "op": None, "supported": supported, "eager_ms": 1.0,
                "compile_ms": compile_ms, "best": best, "failures": failures or {}, "unsupported_reason":
                None if supported else "no offline family fits: the graph holds cumsum(f32[8])"}
    return {"problems": [
        prob("a", best={"time_ms": 0.5, "speedup_eager": 2.0, "speedup_compile": 4.0, "pct_of_floor": 80.0,
                        "round": 2}),
        prob("b", best={"time_ms": 0.8, "speedup_eager": 1.25, "speedup_compile": 2.5, "round": 1}),
        prob("c", best={"time_ms": 2.0, "speedup_eager": 0.5, "speedup_compile": None, "round": 1},
             compile_ms=None),
        prob("d", failures={"compile error": 3, "timeout": 1}),
        prob("e", supported=False),
    ]}


def test_fast_p_counts_correct_kernels_faster_than_p_over_every_problem_and_the_geomean_only_correct_ones():
    table = problem_table(_suite_summary())
    assert list(table.columns) == list(suite.COLUMNS) and list(table["problem"]) == list("abcde")
    assert [suite.fast_p(table, p) for p in suite.P_VALUES] == [3 / 5, 2 / 5, 1 / 5, 0.0]
    assert [suite.fast_p(table, p, "compile") for p in suite.P_VALUES] == [3 / 5, 2 / 5, 2 / 5, 2 / 5]
    assert suite.geomean(table) == pytest.approx((2.0 * 1.25 * 0.5) ** (1 / 3))
    assert suite.geomean(table, "compile") == pytest.approx((4.0 * 2.5) ** 0.5)
    assert list(table["cause"]) == ["", "", "", "compile error",
                                    "not searched: no offline family fits: the graph holds cumsum(f32[8])"]
    assert suite.fast_p(table.iloc[:0], 1.0) is None and suite.geomean(table.iloc[3:]) is None


def test_fast_p_against_a_baseline_no_problem_measured_is_unknown_not_zero():
    table = problem_table(_suite_summary())
    table["speedup_compile"] = float("nan")  # a run with torch.compile off
    assert [suite.fast_p(table, p, "compile") for p in suite.P_VALUES] == [3 / 5, None, None, None]
    assert suite.geomean(table, "compile") is None and suite.fast_p(table, 1.0) == 2 / 5


def test_the_problem_table_is_written_as_csv_and_parquet_that_read_back_the_same(tmp_path):
    table = problem_table(_suite_summary())
    csv_path, parquet_path = suite.write_tables(table, tmp_path)
    import pandas as pd

    back = pd.read_parquet(parquet_path)
    pd.testing.assert_frame_equal(back, table, check_dtype=False)  # text columns may come back as object
    assert (back.dtypes[["eager_ms", "speedup_eager", "pct_of_floor"]] == "float64").all()
    assert pd.read_csv(csv_path)["speedup_eager"].tolist()[:3] == [2.0, 1.25, 0.5]


def test_the_report_shows_fast_p_and_the_family_and_cause_of_each_problem(tmp_path):
    html = _render(tmp_path, _suite_summary())
    metrics = html.split('id="suite-metrics"')[1].split("</table>")[0]
    eager = metrics.split("eager PyTorch")[1].split("</tr>")[0]
    assert [c.split(">")[-1] for c in eager.split("</td>")[1:5]] == ["60%", "40%", "20%", "0%"]
    row_d = html.split('data-v="d"')[1].split("</tr>")[0]
    assert "elementwise/pointwise" in row_d and "<td>compile error</td>" in row_d
    assert '<td class="num" data-v="80.0">80%</td>' in html.split('data-v="a"')[1].split("</tr>")[0]
