"""How many cores each rule's jobs ask Snakemake for.

Why these numbers: on the cuda backend the GPU is the scarce resource, and the builds that feed it run on the CPU.
A build job that asked for every core could never run beside a GPU job, so the GPU sat idle while the rounds'
candidates were built one problem at a time (H200, 25 level-1 problems at --cores 16: four minutes without a GPU
job before the first evaluate, then GPU and builds taking turns). There a build takes at most half the cores and
never those a GPU job holds, which leaves room for the jobs that call models. On the cpu backend the candidates'
timing computes with every core, so nothing may run beside it: timing and build jobs each take them all.
"""

from __future__ import annotations

# Threads of a GPU job on the cuda backend: its own process and the candidate process it drives.
GPU_JOB_THREADS = 2


def eval_threads(backend: str, cores: int) -> int:
    """Cores of a baseline or evaluate job."""
    return cores if backend == "cpu" else min(GPU_JOB_THREADS, cores)


def build_threads(backend: str, cores: int, workers: int = 0) -> int:
    """Cores of a compile job: ``workers`` when the config sets build.workers, else as the module docstring says."""
    if workers:
        return workers
    if backend == "cpu":
        return cores
    return max(1, min(cores - eval_threads(backend, cores), cores // 2))
