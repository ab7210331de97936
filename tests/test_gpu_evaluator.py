"""The evaluator on the GPU: outputs read through CUDA IPC, poisoned output memory, and work hidden on another
stream. Skipped without a CUDA GPU."""

import pytest
import torch

from kernelcraft.config import load_config, merge
from kernelcraft.context import RunContext
from kernelcraft.harness.build.compile_round import compile_candidates
from kernelcraft.harness.build.gpu import detect_cuda_arch
from kernelcraft.harness.evaluate_round import evaluate_candidates

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

REFERENCE = '''
import torch
import torch.nn as nn

class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        return torch.relu(x)

def get_inputs():
    return [torch.randn(4096, 8192)]

def get_init_inputs():
    return []
'''

HEADER = '''
import torch
import torch.nn as nn
from kernelcraft.harness.build import cuda_kernel

SRC = r"""
extern "C" __global__ void relu_k(const float* x, float* y, long long n, long long limit) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i < n && i < limit) y[i] = fmaxf(x[i], 0.f);
}
extern "C" __global__ void spin(float* y, long long n, long long reps) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i < n) { float v = y[i]; for (long long r = 0; r < reps; ++r) v = v * 1.0000001f; y[i] = v; }
}
"""
relu_k = cuda_kernel(SRC, "relu_k")
spin = cuda_kernel(SRC, "spin")

def relu(x, limit=None):
    y = torch.empty_like(x)
    n = x.numel()
    relu_k(grid=((n + 255) // 256,), block=(256,), args=(x, y, n, n if limit is None else limit))
    return y
'''

CANDIDATES = {
    "honest": "class ModelNew(nn.Module):\n    def forward(self, x):\n        return relu(x)\n",
    "unwritten_half": ("class ModelNew(nn.Module):\n    def forward(self, x):\n"
                       "        return relu(x, limit=x.numel() // 2)\n"),
    "torch_relu": "class ModelNew(nn.Module):\n    def forward(self, x):\n        return torch.relu(x)\n",
    "hidden_stream": '''
class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()
        self.side = torch.cuda.Stream()  # made here: the module is also imported where there is no GPU (compile)

    def forward(self, x):
        y = relu(x)
        scratch = torch.empty_like(x)
        # More work that starts once the timed stream's part is done, on a stream its end event does not see.
        done = torch.cuda.Event()
        done.record()
        with torch.cuda.stream(self.side):
            self.side.wait_event(done)
            spin(grid=((x.numel() + 255) // 256,), block=(256,), args=(scratch, x.numel(), 4000))
        return y
''',
    "switches_when_timed": '''
class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return relu(x) if self.calls <= 30 else torch.zeros_like(x)
''',
    "late_switch_to_pytorch": '''
class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return relu(x) if self.calls <= 60 else torch.relu(x)
''',
    "slows_the_reference": '''
_relu = torch.relu


def _slow_relu(x):
    for _ in range(3):
        _relu(x)
    return _relu(x)


torch.relu = _slow_relu  # in the candidate's own process: the reference it would slow runs elsewhere


class ModelNew(nn.Module):
    def forward(self, x):
        return relu(x)
''',
    "slow_to_launch": '''
class ModelNew(nn.Module):
    """Honest, with about 0.1 ms of host work before its one launch (argument checks, shape arithmetic)."""

    def forward(self, x):
        acc = 0
        for k in range(3000):
            acc += k & 7
        return relu(x) if acc >= 0 else x
''',
    "stale_output": '''
class ModelNew(nn.Module):
    """Honest for 60 calls, then a spin of its own and unwritten memory that may hold an earlier answer."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls <= 60:
            return relu(x)
        y = torch.empty_like(x)
        scratch = torch.empty(1 << 20, device=x.device)
        spin(grid=(4096,), block=(256,), args=(scratch, 1 << 20, 2000))
        return y
''',
}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_eval")
    ref = tmp / "relu_ref.py"
    ref.write_text(REFERENCE)
    config = load_config(overrides={"run": "gpu-eval", "backend": "cuda"})
    resolved = {"backend": "cuda", "size": "full", "cuda_arch": detect_cuda_arch(),
                "problems": {"relu_ref": str(ref)}}
    ctx = RunContext.from_config(merge(config, {"_resolved": resolved}), results=tmp / "results")
    entries = []
    for name, body in CANDIDATES.items():
        path = tmp / f"{name}.py"
        path.write_text(HEADER + body)
        entries.append({"id": name, "path": str(path)})
    built = compile_candidates(ctx, "relu_ref", 1, entries, 4, 120)
    assert all(b["compiled"] for b in built.values()), {k: b["reason"] for k, b in built.items()}
    # The run-time defences are under test here: the source allow-list (which refuses the side stream) steps aside.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("kernelcraft.harness.verify.verify_round.check_source", lambda source: [])
        verified, timed = evaluate_candidates(ctx, "relu_ref", 1, entries, built)
    return verified["results"], timed["results"]


def test_an_honest_cuda_kernel_is_verified_through_ipc_and_timed_near_the_floor(evaluated):
    verified, timed = evaluated
    assert verified["honest"]["correct"] is True, verified["honest"]["reasons"]
    assert timed["honest"]["timed"] is True, timed["honest"]["reason"]
    assert 20 < timed["honest"]["pct_of_floor"] <= 112


def test_output_elements_the_kernel_never_writes_read_as_poison(evaluated):
    verified, _ = evaluated
    assert "NaN/Inf values where the reference is finite" in " ".join(verified["unwritten_half"]["reasons"])


def test_pytorch_doing_the_work_is_rejected_on_the_gpu(evaluated):
    verified, _ = evaluated
    assert "no compiled kernel ran" in " ".join(verified["torch_relu"]["reasons"])


def test_work_hidden_on_another_stream_is_rejected_by_the_timer(evaluated):
    verified, timed = evaluated
    assert verified["hidden_stream"]["correct"] is True, verified["hidden_stream"]["reasons"]
    assert timed["hidden_stream"]["timed"] is False, timed["hidden_stream"]
    assert timed["hidden_stream"]["reason"].startswith("work outside the timed stream")


def test_a_kernel_that_changes_once_timed_is_rejected_through_ipc(evaluated):
    verified, timed = evaluated
    assert verified["switches_when_timed"]["correct"] is True  # verification makes fewer than 30 calls
    assert timed["switches_when_timed"]["timed"] is False, timed["switches_when_timed"]
    # Zeros are also faster than the floor allows; whatever else is said, the changed outputs are named.
    assert "outputs of timed calls differ from the reference (output: max error above tolerance" in (
        timed["switches_when_timed"]["reason"])



def test_a_late_switch_to_pytorch_is_caught_by_the_audit_of_timed_calls(evaluated):
    verified, timed = evaluated
    assert verified["late_switch_to_pytorch"]["correct"] is True
    assert timed["late_switch_to_pytorch"]["timed"] is False
    assert "timed calls: part of the work is done by PyTorch (aten.relu)" in timed["late_switch_to_pytorch"]["reason"]


def test_unwritten_memory_returned_while_timed_holds_no_earlier_answer(evaluated):
    verified, timed = evaluated
    assert verified["stale_output"]["correct"] is True
    assert timed["stale_output"]["timed"] is False
    # Earlier outputs were poisoned once timed, and no reference ran in its process: what it returns is not an answer.
    assert "outputs of timed calls differ from the reference (output" in timed["stale_output"]["reason"]


def test_a_candidate_that_patches_the_reference_op_does_not_change_the_eager_time(evaluated):
    # Timed in the candidate's process, its "eager" relu would have been four relus.
    _, timed = evaluated
    assert timed["slows_the_reference"]["timed"] is True, timed["slows_the_reference"]
    assert timed["slows_the_reference"]["eager_ms"] < 1.1 * timed["honest"]["eager_ms"]


def test_a_side_stream_is_refused_from_the_source():
    from kernelcraft.harness.verify.static_checks import check_source

    reasons = " | ".join(check_source(HEADER + CANDIDATES["hidden_stream"]))
    assert "which runs work on a stream other than the one the kernel is timed on" in reasons


def test_host_time_before_the_first_launch_is_not_timed_as_kernel_time(evaluated):
    # The GPU sleep queued ahead of each timed call covers the candidate's own launch time (measured under the
    # audit), as do_bench's queue of calls would: the events time the kernel, not the host, and do not jitter with it.
    verified, timed = evaluated
    assert verified["slow_to_launch"]["correct"] is True
    slow, honest = timed["slow_to_launch"], timed["honest"]
    assert slow["timed"] is True, slow
    assert slow["time_ms"] < 1.1 * honest["time_ms"], (slow["time_ms"], honest["time_ms"])
    assert slow["time_iqr_ms"] < 0.1 * slow["time_ms"]
