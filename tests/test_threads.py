"""How many cores each rule's jobs ask for: on the cuda backend a build never takes the cores a GPU job needs (so the
GPU evaluates while the next candidates build) and leaves cores for the model-calling jobs; on the cpu backend the
timing and build jobs each take every core, so nothing runs beside a timing."""

import pytest

from kernelcraft.threads import GPU_JOB_THREADS, build_threads, eval_threads


@pytest.mark.parametrize("cores", [3, 4, 8, 16, 64, 128])
def test_on_cuda_a_build_job_and_a_gpu_job_fit_beside_each_other_with_cores_left_over(cores):
    build, gpu = build_threads("cuda", cores), eval_threads("cuda", cores)
    assert gpu == GPU_JOB_THREADS == 2
    assert build + gpu <= cores
    assert build <= cores // 2


def test_on_cuda_the_usual_core_counts_give_these_builds():
    assert [build_threads("cuda", c) for c in (1, 2, 4, 8, 16, 64)] == [1, 1, 2, 4, 8, 32]
    assert eval_threads("cuda", 1) == 1  # never more than there are


@pytest.mark.parametrize("cores", [1, 2, 8, 16])
def test_on_cpu_timing_and_build_jobs_each_take_every_core(cores):
    assert eval_threads("cpu", cores) == cores
    assert build_threads("cpu", cores) == cores


@pytest.mark.parametrize("backend", ["cuda", "cpu"])
def test_build_workers_set_in_the_config_is_what_a_build_job_asks_for(backend):
    assert build_threads(backend, 16, workers=5) == 5
