"""The evaluator's GPU kernels: the comparator gives the figures of the PyTorch path it replaces, for every dtype
it takes (what it does not take falls back to that path); the in-place renewal halves exactly and undoes exactly."""

import pytest
import torch

from kernelcraft.harness.verify import compare, device_kernels, trials

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _both(out, ref, atol=1e-2, rtol=1e-2, monkeypatch=None):
    fast = compare._compare_floats(out, ref, atol, rtol)
    monkeypatch.setattr(device_kernels, "takes_floats", lambda a, b: False)
    slow = compare._compare_floats(out, ref, atol, rtol)
    monkeypatch.undo()
    return fast, slow


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_the_kernel_gives_the_pytorch_paths_figures(dtype, monkeypatch):
    gen = torch.Generator(device="cuda").manual_seed(0)
    ref = torch.randn(3_000_017, device="cuda", generator=gen).to(dtype)
    out = ref + (torch.randn(ref.shape, device="cuda", generator=gen) * 1e-3).to(dtype)
    out[17] = ref[17] + 0.5  # one element far off
    fast, slow = _both(out, ref, monkeypatch=monkeypatch)
    assert fast["ok"] is slow["ok"] is False and fast["strict"] is slow["strict"] is False
    assert fast["bad"] == slow["bad"] == 0
    assert fast["max_abs"] == pytest.approx(slow["max_abs"], rel=1e-6)
    assert fast["max_rel"] == pytest.approx(slow["max_rel"], rel=1e-6)
    out[17] = ref[17]
    fast, slow = _both(out, ref, atol=0.1, rtol=0.1, monkeypatch=monkeypatch)
    assert fast["ok"] is slow["ok"] is True


def test_non_finite_values_are_judged_as_the_pytorch_path_judges_them(monkeypatch):
    ref = torch.ones(1000, device="cuda")
    ref[5] = float("inf")
    out = ref.clone()
    fast, slow = _both(out, ref, monkeypatch=monkeypatch)
    assert fast == slow and fast["ok"] and fast["strict"]  # an infinite reference matched exactly
    out[5] = 1.0
    out[7] = float("nan")
    out[9] = float("-inf")
    fast, slow = _both(out, ref, monkeypatch=monkeypatch)
    assert fast["bad"] == slow["bad"] == 2 and fast["ok"] is slow["ok"] is False
    assert fast["max_abs"] == slow["max_abs"] == float("inf")


def test_bitwise_differences_are_counted_for_every_width():
    for dtype in (torch.bool, torch.int16, torch.float32, torch.int64):
        a = torch.zeros(1_000_003, device="cuda", dtype=dtype)
        b = a.clone()
        b[[0, 500_000, 1_000_002]] = 1
        assert compare._mismatches(a, b) == 3, dtype
    x = torch.full((10,), float("nan"), device="cuda")
    assert compare._mismatches(x, x.clone()) == 0  # an input left alone is unchanged, NaN or not


def test_non_contiguous_tensors_take_the_pytorch_path():
    ref = torch.randn(64, 64, device="cuda")
    assert not device_kernels.takes(ref.t(), ref)
    v = compare.compare_trial([ref.t().contiguous().t()], [{"shape": [64, 64], "dtype": "torch.float32",
                                                            "device": "cuda"}], [ref], [], [], "cuda", 1e-2, 1e-2)
    assert v.correct and v.max_abs_err == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_the_renewal_kernel_halves_at_random_and_undoes_exactly(dtype):
    base = (torch.rand(1_000_003, device="cuda") + 0.5).to(dtype)
    assert device_kernels.takes_to_renew(base)
    x = base.clone()
    trials.rehalve([x], None, 5)
    ratio = (x.double() / base.double())
    assert bool(((ratio == 0.5) | (ratio == 1.0)).all())
    assert 0.49 < float((ratio == 0.5).double().mean()) < 0.51
    trials.rehalve([x], 5, 9)  # from one draw to another: still the base halved or kept, a new pattern
    again = x.double() / base.double()
    assert bool(((again == 0.5) | (again == 1.0)).all()) and not torch.equal(again, ratio)
    trials.rehalve([x], 9, None)
    assert torch.equal(x, base)


def test_the_parent_and_the_candidates_process_renew_alike_on_the_gpu():
    from kernelcraft.harness.timing.call_inputs import CallInputs

    base = [torch.randn(256, 1024, device="cuda"), torch.arange(7, device="cuda")]
    child = CallInputs([[t.clone() for t in base]], seed=3)
    for call in range(5):
        got = child.for_call(call)[0].clone()
    parent = CallInputs([[t.clone() for t in base]], seed=3)
    assert torch.equal(parent.for_call(4)[0], got)
    parent.restore()
    assert torch.equal(parent.sets[0][0], base[0])


def test_the_flush_buffer_lent_to_a_candidate_is_alone_in_its_segment():
    # CUDA IPC maps a whole allocator segment: the lent buffer must share it with nothing of the parent's.
    from kernelcraft.harness.sandbox.transfer import export_cuda
    from kernelcraft.harness.timing.protocol import lendable_flush_buffer

    others = [torch.empty(n, device="cuda") for n in (1 << 10, 1 << 20, 1 << 24)]
    del others[1]  # a freed block in the default pool that a buffer could otherwise be carved from
    buf, pool = lendable_flush_buffer("cuda")
    assert pool is not None
    (segment,) = pool.snapshot()
    assert segment["total_size"] < buf.numel() * buf.element_size() + 2 * 2**20
    assert export_cuda(buf)["storage_offset_bytes"] == 0


_ADOPT_THEN_FORK = """
import os, sys
from kernelcraft.harness.sandbox import zygote
from kernelcraft.harness.verify import device_kernels
zygote._adopt_device_kernels()
assert device_kernels._kernels, "the zygote adopted no kernels"
pid = os.fork()
if pid == 0:
    import torch
    x = torch.arange(1000, device="cuda", dtype=torch.float32)
    y = x.clone()
    y[3] += 1
    assert device_kernels.count_differing(x, y) == 1  # the adopted image, loaded and run in the child
    os._exit(0)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_a_zygote_with_the_evaluators_kernels_still_forks_children_that_use_cuda(tmp_path):
    """NVRTC initialises the CUDA driver when it compiles: a zygote that compiled in its own process would fork
    children whose CUDA init fails. The compile runs in a throwaway child; the zygote keeps the image only."""
    import os
    import subprocess
    import sys

    major, minor = torch.cuda.get_device_capability()
    env = dict(os.environ, KERNELCRAFT_CUDA_ARCH=f"sm_{major}{minor}")
    done = subprocess.run([sys.executable, "-c", _ADOPT_THEN_FORK], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
