"""Scheduling overhead per job: the time a round's jobs spend outside their own work, locally and under Slurm.

One problem, one round of 8 (4 ideas x 2 implementations) or 32 (8 x 4) candidates, CPU backend at small sizes,
the offline proposer: the chain ideas -> implement -> compile -> evaluate -> select -> manifest -> report runs one
job after another (the baseline beside it). Every job records its own wall time (Snakemake's `benchmark:` files
under results/<run>/benchmarks/), so

    overhead per job = (workflow wall - sum of the chain's job times) / jobs in the chain

is what the executor adds per job: Snakemake's start-up and DAG, job submission, waiting in the queue, status
polling, and the gap before the next job starts. With --executor slurm it runs through workflow/profiles/slurm on a
one-node cluster this bench starts itself (tests/slurm/start_cluster.sh; root, slurm-wlm and munge).

Usage: python bench/scheduling.py [--executor local|slurm] [--candidates 8 32]
Prints one JSON object per run.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"
CHAIN = ("ideas", "implement", "compile", "evaluate", "select")
SHAPES = {8: (4, 2), 32: (8, 4)}


def job_seconds(tsv: Path) -> float:
    with tsv.open() as fh:
        return float(next(csv.DictReader(fh, delimiter="\t"))["s"])


def run(executor: str, candidates: int) -> dict:
    ideas, impls = SHAPES[candidates]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = yaml.safe_load((REPO / "config.yaml").read_text())
        config.update({"run": "sched", "rounds": 1, "ideas_per_round": ideas, "implementations_per_idea": impls,
                       "backend": "cpu"})
        config["problems"].update({"builtin": ["relu_4096x32768"], "size": "small"})
        config["benchmark"].update({"iters": 5, "warmup": 1, "min_time_ms": 5})
        config["verify"]["trials"] = 2
        (work / "config.yaml").write_text(yaml.safe_dump(config))
        cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--configfile", "config.yaml"]
        if executor == "slurm":
            small = ["runtime=10", "mem_mb=1000"]
            cmd += ["--workflow-profile", str(REPO / "workflow" / "profiles" / "slurm"), "--jobs", "4",
                    "--default-resources", "slurm_partition=debug", *small, "--set-resources",
                    *(f"{rule}:{r}" for rule in ("compile", "baseline", "evaluate") for r in small),
                    "--slurm-no-account", "--slurm-status-command", "squeue",
                    "--slurm-init-seconds-before-status-checks", "2"]
        else:
            cmd += ["--cores", "2", "--resources", "gpu=1"]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            sys.exit(done.stderr[-3000:])
        bench = work / "results" / "sched" / "benchmarks"
        chain = [job_seconds(bench / "relu_4096x32768" / "round_1" / f"{n}.tsv") for n in CHAIN]
        chain += [job_seconds(bench / f"{n}.tsv") for n in ("manifest", "report")]
        return {"benchmark": "scheduling_overhead", "executor": executor, "candidates": candidates,
                "jobs": len(chain) + 1, "wall_s": round(wall, 1), "chain_jobs_s": round(sum(chain), 1),
                "overhead_per_job_s": round((wall - sum(chain)) / len(chain), 2),
                "baseline_job_s": round(job_seconds(bench / "relu_4096x32768" / "baseline.tsv"), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executor", choices=("local", "slurm"), default="local")
    parser.add_argument("--candidates", type=int, nargs="+", choices=sorted(SHAPES), default=[8, 32])
    args = parser.parse_args()
    cluster = None
    if args.executor == "slurm":
        cluster = Path(tempfile.mkdtemp(prefix="kc-slurm-"))
        subprocess.run(["bash", str(REPO / "tests" / "slurm" / "start_cluster.sh"), str(cluster)], check=True,
                       capture_output=True)
    try:
        for n in args.candidates:
            print(json.dumps(run(args.executor, n)), flush=True)
    finally:
        if cluster is not None:
            subprocess.run(["bash", str(REPO / "tests" / "slurm" / "stop_cluster.sh"), str(cluster)],
                           capture_output=True)


if __name__ == "__main__":
    main()
