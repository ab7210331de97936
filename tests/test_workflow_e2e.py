"""The real workflow, end to end, on the CPU backend: 2 problems x 2 rounds x 2 ideas x 2 implementations.

Runs Snakemake itself (no mocks) in a temporary directory and checks what a user gets: the report, the
candidates table with DESIGN.md's columns, and at least one correct, timed candidate per problem.
"""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import browser
import pytest
import yaml

from kernelcraft.report.table import CANDIDATE_COLUMNS

REPO = Path(__file__).resolve().parents[1]
PROBLEMS = ["softmax_4096x65536", "relu_4096x32768"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config.update({"run": "e2e", "rounds": 2, "ideas_per_round": 2, "implementations_per_idea": 2, "top_k": 2,
                   "backend": "cpu"})
    config["problems"].update({"builtin": PROBLEMS, "size": "small"})
    config["benchmark"].update({"iters": 5, "warmup": 1, "min_time_ms": 5})
    config["verify"]["trials"] = 2
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    snakemake = shutil.which("snakemake", path=str(Path(sys.executable).parent))
    proc = subprocess.run(
        [snakemake, "-s", str(REPO / "workflow" / "Snakefile"), "--configfile", "config.yaml", "--cores", "2",
         "--resources", "gpu=1"],
        cwd=work, capture_output=True, text=True, timeout=1500,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    (work / "snakemake.stderr").write_text(proc.stderr)
    return work / "results" / "e2e"


@pytest.mark.slow
def test_the_workflow_writes_a_self_contained_report(run_dir):
    html = (run_dir / "report.html").read_text()
    for problem in PROBLEMS:
        assert problem in html
    assert "<svg" in html
    assert 'src="http' not in html and "href=\"http" not in html


@pytest.mark.slow
@pytest.mark.skipif(browser.chromium() is None, reason="no Chromium on PATH (.ci/run installs Debian's chromium)")
def test_the_report_loads_in_a_real_browser_with_no_error_no_request_and_every_chart_drawn(run_dir):
    report = run_dir / "report.html"
    page = browser.load(report, run_dir / "report.png", browser.CHARTS_JS)
    assert page.errors == []
    assert page.requests == [report.resolve().as_uri()]  # the page itself, nothing from any network
    assert len(page.facts) == len(PROBLEMS)
    assert all(w > 100 and h > 50 and marks > 0 for w, h, marks in page.facts), page.facts
    assert (run_dir / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_the_candidates_table_has_the_design_columns_and_one_row_per_candidate(run_dir):
    with open(run_dir / "candidates.csv") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == CANDIDATE_COLUMNS
        rows = list(reader)
    assert len(rows) == 2 * 2 * 2 * 2  # problems x rounds x ideas x implementations
    assert {r["problem"] for r in rows} == set(PROBLEMS)
    assert {r["round"] for r in rows} == {"1", "2"}


@pytest.mark.slow
def test_the_per_problem_table_is_written_beside_the_report_as_csv_and_parquet(run_dir):
    import pandas as pd

    table = pd.read_parquet(run_dir / "problems.parquet")
    assert sorted(table["problem"]) == sorted(PROBLEMS) and table["correct"].all()
    assert list(pd.read_csv(run_dir / "problems.csv")["problem"]) == list(table["problem"])


@pytest.mark.slow
def test_every_problem_has_a_correct_timed_candidate(run_dir):
    with open(run_dir / "candidates.csv") as fh:
        rows = list(csv.DictReader(fh))
    for problem in PROBLEMS:
        good = [r for r in rows if r["problem"] == problem and r["correct"] == "true" and r["time_ms"]]
        assert good, f"no correct, timed candidate for {problem}"
        assert all(float(r["time_ms"]) > 0 and float(r["speedup_eager"]) > 0 for r in good)


@pytest.mark.slow
def test_round_two_is_seeded_by_round_one_and_never_repeats_an_idea(run_dir):
    for problem in PROBLEMS:
        r1 = json.loads((run_dir / problem / "round_1" / "ideas.json").read_text())
        r2 = json.loads((run_dir / problem / "round_2" / "ideas.json").read_text())
        sel1 = json.loads((run_dir / problem / "round_1" / "select.json").read_text())
        assert {s["id"] for s in r2["seeds"]} == {s["id"] for s in sel1["seeds"]}
        first = {(i["parent"], i["text"]) for i in r1["ideas"]}
        assert all((i["parent"], i["text"]) not in first for i in r2["ideas"])


@pytest.mark.slow
def test_the_manifest_records_versions_backend_and_config(run_dir):
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["backend"] == "cpu" and manifest["size"] == "small"
    assert manifest["packages"]["torch"] and manifest["packages"]["snakemake"] == "9.27.1"
    assert manifest["config"]["rounds"] == 2
    assert manifest["started"] <= manifest["finished"] and manifest["host"]
    assert len(manifest["config_sha256"]) == 64 and manifest["git"]["commit"]


@pytest.mark.slow
def test_progress_lines_name_the_problem_round_and_pass_counts(run_dir):
    err = (run_dir.parent.parent / "snakemake.stderr").read_text()
    assert "softmax_4096x65536 round 2 verify:" in err
    assert "correct (4 candidates)" in err
