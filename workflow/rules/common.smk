# Shared settings: values resolved once per run (backend, sizes, problems), path helpers for input functions.
import os

from snakemake.exceptions import WorkflowError

from kernelcraft import layout, threads
from kernelcraft.context import RESOLVED_KEY, resolve_or_exit

config[RESOLVED_KEY] = resolve_or_exit(config)

RUN = str(layout.run_dir("results", config["run"]))
PROBLEMS = list(config[RESOLVED_KEY]["problems"])
# Problems some configured model may write kernels for; the others get only their baseline.
SEARCHED = list(config[RESOLVED_KEY]["searched"])
ROUNDS = list(range(1, int(config["rounds"]) + 1))
BACKEND = config[RESOLVED_KEY]["backend"]
# The cores one job may use: all of --cores locally (so a CPU timing job never shares them with another); under a
# cluster executor (no total core count) those of a node like this one, so a job never asks for more than a node has.
def node_cores():
    try:
        return workflow.cores
    except WorkflowError:  # a cluster executor: every job is on a node of its own
        return os.cpu_count() or 1


CORES = node_cores()
# GPU jobs and build jobs share the cores so that the GPU never waits on a build (kernelcraft.threads).
EVAL_THREADS = threads.eval_threads(BACKEND, CORES)
BUILD_THREADS = threads.build_threads(BACKEND, CORES, int(config["build"]["workers"]))
# GPU rules take one GPU on the cuda backend (locally a unit of --resources gpu=N, under Slurm --gpus=1); on the
# CPU backend they take none, and EVAL_THREADS keeps two timing jobs off the same cores.
GPU_PER_JOB = 1 if BACKEND == "cuda" else 0


wildcard_constraints:
    problem="[A-Za-z0-9][A-Za-z0-9_.-]*",
    round="[0-9]+",


def stage(name):
    """Output path pattern of a per-(problem, round) stage."""
    return f"{RUN}/{{problem}}/round_{{round}}/{name}.json"


def previous(name, wildcards):
    r = int(wildcards.round)
    return [str(layout.stage_file(RUN, wildcards.problem, r - 1, name))] if r > 1 else []


def earlier_ideas(wildcards):
    return [str(layout.stage_file(RUN, wildcards.problem, r, "ideas")) for r in range(1, int(wildcards.round))]


def job_log(name):
    return f"{RUN}/logs/{{problem}}/round_{{round}}/{name}.log"


def job_benchmark(name):
    """Snakemake's per-job record of wall time and memory (bench/scheduling.py: the time jobs spend outside)."""
    return f"{RUN}/benchmarks/{{problem}}/round_{{round}}/{name}.tsv"
