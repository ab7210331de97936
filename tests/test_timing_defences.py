"""Timing cannot be fooled: hidden work, impossible times and patched clocks are caught (CPU backend here; the
CUDA stream cross-check uses the same judge)."""

import sys
from pathlib import Path

import pytest

from kernelcraft.harness.evaluate_round import evaluate_candidates
from kernelcraft.harness.judge.speed import judge_timing

sys.path.insert(0, str(Path(__file__).parent))
from test_exploits import HEADER, _context  # noqa: E402


def _result(time_ms, wall_ms):
    stats = {"median_ms": time_ms, "iqr_ms": 0.01, "min_ms": time_ms, "n": 20}
    return {"candidate": stats, "eager": dict(stats, median_ms=2.0),
            "wall": {"candidate": dict(stats, median_ms=wall_ms)}, "input_sets": 3}


def _floor(floor_ms, enforce=True, kind="memory"):
    return {"floor_ms": floor_ms, "enforce_floor": enforce, "floor_kind": kind, "bandwidth_gbs": 3000.0}


def test_a_plausible_time_is_accepted_with_its_share_of_the_floor():
    record = judge_timing(_result(1.0, 1.02), _floor(0.5))
    assert record["timed"] is True and record["reason"] is None
    assert record["pct_of_floor"] == pytest.approx(50.0)
    assert record["speedup_eager"] == pytest.approx(2.0)


def test_work_hidden_from_the_timed_stream_is_rejected():
    record = judge_timing(_result(0.05, 1.5), _floor(0.01))
    assert record["timed"] is False
    assert record["reason"].startswith("work outside the timed stream: 1.5 ms on the wall clock")


def test_a_time_below_the_speed_of_light_floor_is_rejected_as_impossible():
    record = judge_timing(_result(0.1, 0.12), _floor(0.5))
    assert record["timed"] is False
    assert record["reason"].startswith("impossible time: 0.1 ms is below the speed-of-light floor of 0.5 ms")


def test_the_floor_is_not_enforced_where_caches_can_beat_it():
    assert judge_timing(_result(0.1, 0.12), _floor(0.5, enforce=False))["timed"] is True


HONEST = HEADER + '''
class ModelNew(nn.Module):
    def forward(self, x):
        return kernel_softmax(x)
'''

PATCHES_CLOCKS = HEADER + '''
import time
time.perf_counter = lambda: 0.0
torch.cuda.Event.elapsed_time = lambda *a, **k: 1e-6

class ModelNew(nn.Module):
    def forward(self, x):
        return kernel_softmax(x)
'''


def _benchmark(tmp_path, sources: dict[str, str]) -> dict[str, dict]:
    """Verify and time candidates through the evaluate stage on the CPU backend (each builds as it loads). Timing
    runs in full: the C softmax here is near 10x slower than eager on a CPU, and benchmark.stop_slower_than could
    stop it before a cheat's switch (after 60 calls) is reached."""
    ctx, problem = _context(tmp_path, "reject", benchmark={"stop_slower_than": 0})
    entries = []
    for name, src in sources.items():
        path = tmp_path / f"{name}.py"
        path.write_text(src)
        entries.append({"id": name, "path": str(path)})
    return evaluate_candidates(ctx, problem, 1, entries, dict.fromkeys(sources, {"compiled": True}))[1]["results"]


def test_patching_the_clocks_is_rejected_from_the_source():
    from kernelcraft.harness.verify.static_checks import check_source

    reasons = " | ".join(check_source(PATCHES_CLOCKS))
    assert "imports time" in reasons


@pytest.mark.slow
def test_a_candidate_that_patches_the_clocks_is_still_timed_truly(tmp_path, monkeypatch):
    # Past the source allow-list (as native code could be), the clocks are still bound before candidate code runs.
    monkeypatch.setattr("kernelcraft.harness.verify.verify_round.check_source", lambda source: [])
    results = _benchmark(tmp_path, {"honest": HONEST, "patches_clocks": PATCHES_CLOCKS})
    honest, patched = results["honest"], results["patches_clocks"]
    assert honest["timed"] and patched["timed"], (honest, patched)
    assert patched["time_ms"] > 0.3 * honest["time_ms"]


def honest_then(calls: int, doc: str, then: str) -> str:
    """A candidate that runs its own softmax kernel for its first ``calls`` calls (verification makes about a
    dozen), then ``then`` (the body of the rest of its forward)."""
    body = "\n".join(f"        {line}" if line else "" for line in then.strip("\n").splitlines())
    return HEADER + f'''
class ModelNew(nn.Module):
    """{doc}"""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls <= {calls}:
            return kernel_softmax(x)
{body}
'''


SWITCHES_WHEN_TIMED = honest_then(30, "Right for the first calls, zeros once timing has begun.",
                                  "return torch.zeros_like(x)")

WRONG_WHEN_TIMED = honest_then(
    30, "Right for the first calls, then a kernel of its own that writes a constant: a compiled kernel in every "
        "call, the wrong answer once timing has begun.", """
y = torch.empty_like(x)
fill(y, y.numel(), 0.5)
return y
""")


@pytest.mark.slow
def test_a_kernel_that_computes_something_else_while_timed_is_rejected(tmp_path):
    # Two defences: the audit sees calls with no compiled kernel (zeros from PyTorch), and the parent's check of
    # the timed calls' outputs sees a wrong answer from a kernel of the candidate's own.
    results = _benchmark(tmp_path, {"switches": SWITCHES_WHEN_TIMED, "wrong": WRONG_WHEN_TIMED, "honest": HONEST})
    assert results["honest"]["timed"] is True, results["honest"]
    assert results["switches"]["timed"] is False
    assert "timed calls: no compiled kernel ran in some calls" in results["switches"]["reason"]
    assert results["wrong"]["timed"] is False
    assert ("outputs of timed calls differ from the reference (output: max error above tolerance"
            in results["wrong"]["reason"])


def test_short_kernels_get_enough_timed_calls_for_the_minimum_timed_work():
    from kernelcraft.harness.timing.protocol import MAX_ITERS, timed_iterations

    assert timed_iterations(20, 100.0, 1.0) == 100  # 100 calls of 1 ms
    assert timed_iterations(20, 100.0, 10.0) == 20  # never fewer than asked for
    assert timed_iterations(20, 100.0, 0.001) == MAX_ITERS  # capped
    assert timed_iterations(20, 0.0, 0.001) == 20  # switched off


def test_the_compute_floor_is_named_when_it_is_the_binding_one():
    record = judge_timing(_result(0.1, 0.12), _floor(0.5, kind="compute"))
    assert record["reason"] == ("impossible time: 0.1 ms is below the speed-of-light floor of 0.5 ms "
                                "(FLOPs / measured matmul peak)")


def test_the_reference_flops_are_counted_for_matmul_and_zero_for_elementwise():
    import torch

    from kernelcraft.harness.sandbox.tasks import count_flops

    a, b = torch.randn(64, 32), torch.randn(32, 16)
    assert count_flops(lambda x, y: x @ y, [a, b]) == 2 * 64 * 32 * 16
    assert count_flops(lambda x: torch.relu(x), [a]) == 0


def test_the_parent_counts_reference_flops_on_the_meta_device_for_builtin_problems():
    from kernelcraft.harness.sandbox.tasks import reference_flops
    from kernelcraft.problems import builtin_dir, load_problem

    def flops(pid):
        return reference_flops(load_problem(builtin_dir() / f"{pid}.py", "full"))

    assert flops("matmul_4096") == 2 * 4096**3
    # AlexNet conv1: 96 filters of 3x11x11 over a 55x55 output, batch 100 (bias adds are not counted).
    assert flops("conv2d_alexnet") == 2 * 100 * 96 * 55 * 55 * 3 * 11 * 11
    assert flops("softmax_4096x65536") == 0


LATE_SWITCH_TO_PYTORCH = honest_then(
    60, "Its own kernel for the first 60 calls (all of verification), PyTorch's softmax afterwards: right values, "
        "someone else's work.", "return torch.softmax(x, dim=1)")

STALE_OUTPUT = honest_then(
    60, "Honest for 60 calls, then a spin of its own and fresh, unwritten memory, hoping the allocator hands back "
        "a block that still holds an earlier answer.", """
y = torch.empty_like(x)
spin(y, 20000)
return y
""")

SLOWS_THE_REFERENCE = HEADER + '''
_softmax = torch.softmax


def _slow_softmax(*args, **kwargs):
    for _ in range(19):
        _softmax(*args, **kwargs)
    return _softmax(*args, **kwargs)


torch.softmax = _slow_softmax


class ModelNew(nn.Module):
    def forward(self, x):
        return kernel_softmax(x)
'''


def test_slowing_the_reference_down_is_refused_from_the_source():
    from kernelcraft.harness.verify.static_checks import check_source

    assert any("assigns to torch.softmax" in r or "torch.softmax" in r for r in check_source(SLOWS_THE_REFERENCE))


@pytest.mark.slow
def test_adaptive_cheats_while_timed_are_rejected_and_the_reference_is_not_theirs(tmp_path, monkeypatch):
    # Past the source allow-list (as native code could be): the audit covers every timed call, the outputs of an
    # unpredictable timed call per block are checked, and the eager time comes from the parent.
    monkeypatch.setattr("kernelcraft.harness.verify.verify_round.check_source", lambda source: [])
    results = _benchmark(tmp_path, {"honest": HONEST, "late_switch": LATE_SWITCH_TO_PYTORCH,
                                    "stale_output": STALE_OUTPUT, "slows_reference": SLOWS_THE_REFERENCE})
    honest = results["honest"]
    assert honest["timed"] is True, honest
    late = results["late_switch"]
    assert late["timed"] is False
    assert "timed calls: part of the work is done by PyTorch (aten.softmax)" in late["reason"]
    stale = results["stale_output"]
    assert stale["timed"] is False
    # Earlier outputs were poisoned once timed and no reference ran in its process; what the allocator hands back
    # (NaN or other garbage, as it happens) is not an answer.
    assert "outputs of timed calls differ from the reference (output" in stale["reason"]
    slows = results["slows_reference"]
    assert slows["timed"] is True, slows
    # In the candidate's process its wrapper would make "eager" 20x slower; the trusted eager time is unaffected
    # (the bound leaves room for a busy CI machine; two CPU-bound processes beside it made one median 16x another).
    assert slows["eager_ms"] < 5 * honest["eager_ms"]


def test_timed_blocks_end_at_a_drawn_call_which_is_the_one_checked(tmp_path):
    # The checked call is a block's last, and the parent draws each block's length after the previous block was
    # handed over: any length from 1 to twice the mean, each as likely. (When the checked call came from a block's
    # first few calls only, the rest of a long block was never checked: a candidate counting its calls could
    # cheat there.)
    from types import SimpleNamespace

    from kernelcraft.harness.timing.benchmark_round import Timer
    from kernelcraft.harness.timing.protocol import block_length

    ctx, problem = _context(tmp_path, "reject")
    timer = Timer(ctx, problem, 1, SimpleNamespace(problem=None), "reject")
    mean = 125
    lengths = [block_length(timer.pick(), mean) for _ in range(4000)]
    assert min(lengths) == 1 and max(lengths) == 2 * mean - 1
    assert sum(lengths) / len(lengths) == pytest.approx(mean, rel=0.05)
    assert sum(n <= 25 for n in lengths) / len(lengths) == pytest.approx(0.1, abs=0.03)
    assert block_length(0.0, 1) == 1 and block_length(0.999, 1) == 1 and block_length(0.5, 2) == 2


CONTENT_CACHE = HEADER + '''
class ModelNew(nn.Module):
    """Computes once per distinct input contents (keyed on a sample of them), then hands out copies of its answer
    with a token kernel of its own: right values, none of the work, whenever the contents repeat."""

    def __init__(self):
        super().__init__()
        self.answers = {}

    def forward(self, x):
        key = tuple(x[0, :8].tolist()) + tuple(x[-1, -8:].tolist())
        if key not in self.answers:
            self.answers[key] = kernel_softmax(x)
        y = self.answers[key].clone()
        spin(y, 1)
        return y
'''


@pytest.mark.slow
def test_a_cache_keyed_on_input_contents_finds_nothing_to_reuse_while_timed(tmp_path, monkeypatch):
    # Every timed call's inputs are renewed in place (the same buffers, contents no earlier call saw), so a cache
    # keyed on contents computes on every call: it is timed doing the work. With the contents repeating, its copies
    # were timed as a kernel many times faster than the honest one.
    results = _benchmark(tmp_path, {"honest": HONEST, "content_cache": CONTENT_CACHE})
    honest, cached = results["honest"], results["content_cache"]
    assert honest["timed"], honest
    if cached["timed"]:
        assert cached["time_ms"] > 0.7 * honest["time_ms"], (cached["time_ms"], honest["time_ms"])
    else:  # its key (16 sampled elements) matched an earlier call's now and then, and a checked call got a stale answer
        assert cached["reason"].startswith("outputs of timed calls differ from the reference"), cached["reason"]


def test_each_timed_call_gets_new_contents_and_the_parent_remakes_them_exactly():
    import torch

    from kernelcraft.harness.timing.call_inputs import CallInputs

    base = [torch.randn(64, 128), torch.arange(5)]
    child = CallInputs([[t.clone() for t in base]], seed=11)
    parent = CallInputs([[t.clone() for t in base]], seed=11)
    seen = []
    for call in range(6):
        x, idx = child.for_call(call)
        assert torch.equal(idx, base[1])  # integer inputs keep their values
        ratio = x / base[0]
        assert bool(((ratio == 0.5) | (ratio == 1.0)).all())
        assert not any(torch.equal(x, s) for s in seen)  # contents no earlier call saw
        seen.append(x.clone())
    remade = parent.for_call(4)[0].clone()
    assert torch.equal(remade, seen[4])
    parent.restore()
    assert torch.equal(parent.sets[0][0], base[0])  # back to the base values, exactly
