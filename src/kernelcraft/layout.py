"""The results layout (DESIGN.md §3): the one place that knows where each stage writes.

Snakemake rules and the package both name files through these functions, so the DAG and the code that reads the
files cannot drift apart.

    results/<run>/manifest.json, candidates.csv, report.html
    results/<run>/<problem>/baseline.json
    results/<run>/<problem>/round_<r>/{ideas,implement,compile,verify,benchmark,select}.json
    results/<run>/<problem>/round_<r>/candidates/<candidate>.py, <candidate>.repair<k>.py (a compile repair)
    results/<run>/build/   kernel build cache shared by compile (CPU) and verify/benchmark (GPU) jobs
    results/<run>/logs/    one log per job, one per candidate process
    results/<run>/transcripts/<kk>/<key>.json   every model call, content-addressed by its request (resume, replay)
"""

from __future__ import annotations

from pathlib import Path

STAGES = ("ideas", "implement", "compile", "verify", "benchmark", "select")


def run_dir(results: str | Path, run: str) -> Path:
    return Path(results) / run


def recognition_dir(results: str | Path) -> Path:
    """Traced-graph recognitions of problem files (problems/recognise.py), shared by every run under ``results``."""
    return Path(results) / ".recognition"


def problem_dir(run_root: str | Path, problem: str) -> Path:
    return Path(run_root) / problem


def round_dir(run_root: str | Path, problem: str, round_: int) -> Path:
    return problem_dir(run_root, problem) / f"round_{int(round_)}"


def stage_file(run_root: str | Path, problem: str, round_: int, stage: str) -> Path:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    return round_dir(run_root, problem, round_) / f"{stage}.json"


def candidates_dir(run_root: str | Path, problem: str, round_: int) -> Path:
    return round_dir(run_root, problem, round_) / "candidates"


def repair_file(candidate_file: str | Path, candidate_id: str, attempt: int) -> Path:
    """Where the compile stage writes a model's repair of a candidate that failed to build: next to the original,
    which is never overwritten (the implement stage's record and its digest keep describing it)."""
    return Path(candidate_file).with_name(f"{candidate_id}.repair{int(attempt)}.py")


def evaluated_path(candidate: dict, result: dict | None) -> str | None:
    """The file a candidate was evaluated from, relative to the run root: the ``path`` a stage's result for it
    records (compile records the file it built, a repair's when one was needed, and verify carries it on), else
    the implement stage's file. Verify, benchmark, select and the report all ask here, so they judge, time, seed
    from and show the same code."""
    return (result or {}).get("path") or candidate.get("path")


def baseline_file(run_root: str | Path, problem: str) -> Path:
    return problem_dir(run_root, problem) / "baseline.json"


def build_dir(run_root: str | Path) -> Path:
    return Path(run_root) / "build"


def logs_dir(run_root: str | Path) -> Path:
    return Path(run_root) / "logs"


def transcripts_dir(run_root: str | Path) -> Path:
    return Path(run_root) / "transcripts"


def idea_id(round_: int, index: int) -> str:
    return f"r{round_}_i{index}"


def candidate_id(round_: int, idea_index: int, impl_index: int) -> str:
    return f"r{round_}_i{idea_index}_m{impl_index}"


def bank_candidate_id(round_: int, index: int) -> str:
    """A seed-bank kernel evaluated as a candidate of ``round_`` (search/seed_bank.py)."""
    return f"r{round_}_bank{index}"


def results_root(output: str | Path, run: str) -> Path:
    """The results folder that holds ``output``: rules derive it from their output paths, so nothing about
    where results live is hard-coded into a job."""
    for parent in Path(output).parents:
        if parent.name == run:
            return parent.parent
    raise ValueError(f"{output} is not inside a run folder named {run!r}")
