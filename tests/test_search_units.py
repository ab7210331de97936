"""Small pieces of the search: ensemble shares, timing statistics, the results layout."""

import pytest

from kernelcraft import layout
from kernelcraft.harness.timing.protocol import summarize
from kernelcraft.search.ensemble import split_by_weight


def test_ensemble_shares_follow_weights_and_add_up():
    entries = [{"weight": 3}, {"weight": 1}]
    assert split_by_weight(8, entries) == [6, 2]
    assert split_by_weight(3, [{"weight": 1}, {"weight": 1}]) == [2, 1]
    assert sum(split_by_weight(7, [{"weight": 0.2}, {"weight": 0.5}, {"weight": 0.3}])) == 7


def test_timing_summary_reports_median_and_interquartile_range():
    s = summarize([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s["median_ms"] == 3.0
    assert s["iqr_ms"] == 2.0
    assert s["min_ms"] == 1.0 and s["n"] == 5


def test_results_root_is_derived_from_an_output_path():
    assert str(layout.results_root("out/res/myrun/p/round_1/ideas.json", "myrun")) == "out/res"
    with pytest.raises(ValueError, match="not inside a run folder"):
        layout.results_root("elsewhere/x.json", "myrun")


def test_stage_files_follow_the_documented_layout():
    assert str(layout.stage_file("results/r", "softmax", 3, "verify")) == "results/r/softmax/round_3/verify.json"
    with pytest.raises(ValueError, match="unknown stage"):
        layout.stage_file("results/r", "softmax", 3, "verfy")
