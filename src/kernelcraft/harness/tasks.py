"""What a candidate child process does: build, run for verification, or time. Executed only inside children forked
by the zygote (zygote.py); every function returns plain JSON data (and may write a tensor file the parent loads
with ``weights_only=True``)."""

from __future__ import annotations

from typing import Any

import torch as _torch

from kernelcraft.harness import timing  # noqa: F401 - binds the clocks before any candidate is imported
from kernelcraft.harness.candidate import load_candidate

# Bound when the zygote imports this module, before any candidate runs: a candidate that patches these names
# later cannot change how its outputs are copied out or saved.
_clone = _torch.Tensor.clone
_detach = _torch.Tensor.detach
_to = _torch.Tensor.to
_save = _torch.save

# Exported CUDA tensors stay referenced here until the parent releases this child (see transfer.py).
_KEEP: list = []

_MAX_ERROR_CHARS = 600
CPU_FLOOR_MIN_BYTES = 256 * 2**20


def describe_error(exc: BaseException) -> str:
    """One line: exception type and the first line of its message (CUDA errors, OOM, build logs alike)."""
    from kernelcraft.harness.build import BuildError

    if isinstance(exc, BuildError):
        head = "compile error"
    else:
        head = type(exc).__name__
    message = str(exc).strip()
    lines = [ln for ln in message.splitlines() if ln.strip()]
    if isinstance(exc, BuildError):
        text = "; ".join(lines[:4])
    else:
        text = lines[0] if lines else ""
    out = f"{head}: {text}" if text else head
    return out[:_MAX_ERROR_CHARS]


def _sync(device: str) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def instantiate(cls: type, init_inputs: list, seed: int, device: str) -> Any:
    """Build Model or ModelNew the way KernelBench does: the same seed right before construction, so both hold the
    same weights."""
    import torch

    torch.manual_seed(seed)
    return cls(*init_inputs).to(device).eval()


def flatten_outputs(out: Any) -> list:
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, list | tuple) and all(isinstance(o, torch.Tensor) for o in out):
        return list(out)
    raise TypeError(f"forward returned {type(out).__name__}, expected a tensor or a tuple of tensors")


def task_build(candidate: str) -> dict:
    from kernelcraft.harness.build import build_stats

    load_candidate(candidate)
    return {"kernels": build_stats()}


def _init_device(device: str) -> float:
    """Create this child's CUDA context up front (seconds taken): a phase of its own in the timings, rather than
    hidden inside whichever call touches the GPU first."""
    import torch

    t = timing._perf_counter()
    if str(device).startswith("cuda"):
        torch.cuda.init()
        torch.empty(1, device=device)
        torch.cuda.synchronize()
    return timing._perf_counter() - t


def _poison(device: str, nbytes: int) -> None:
    """Fill a block as large as the expected outputs with NaN and free it: the caching allocator hands that block
    to the candidate's next allocation, so any output element the candidate does not write reads as NaN."""
    import torch

    if not str(device).startswith("cuda") or nbytes <= 0:
        return
    block = torch.empty(nbytes // 4 + 1, dtype=torch.float32, device=device)
    block.fill_(float("nan"))
    del block


def task_outputs(problem: str, size: str, candidate: str, device: str, weight_seed: int, plan: list[dict],
                 out: str, poison_bytes: int = 0, share: bool = False) -> dict:
    """Run the candidate on each trial of ``plan`` (see trials.py) and hand over its outputs, its inputs
    afterwards and an audit of what its forward did (PyTorch operators, kernel launches, extension calls,
    aliasing): through CUDA IPC when ``share`` (the child then waits for the parent's release), else saved to
    ``out``."""
    import torch

    from kernelcraft.harness import trials as trial_inputs
    from kernelcraft.harness.audit import aliased_inputs, recorder
    from kernelcraft.harness.build import launch_counts, reset_launch_counts
    from kernelcraft.problems import load_problem

    t_start = timing._perf_counter()
    phases = {"cuda_init_s": _init_device(device)}
    prob = load_problem(problem, size)
    module = load_candidate(candidate)
    model = instantiate(module.ModelNew, prob.init_inputs(), weight_seed, device)
    _sync(device)
    phases["load_s"] = timing._perf_counter() - t_start - phases["cuda_init_s"]
    results = []
    inputs: list | None = None
    clock = timing._perf_counter
    spent = {"inputs_s": 0.0, "warm_s": 0.0, "forward_s": 0.0, "keep_s": 0.0}
    for spec in plan:
        t = clock()
        fresh = trial_inputs.make_inputs(prob, spec, device)
        _sync(device)
        spent["inputs_s"] += clock() - t
        if spec.get("reuse") and inputs is not None:
            t = clock()
            with torch.no_grad():
                for _ in range(int(spec.get("warm_calls", 0))):
                    model(*inputs)
            inputs = trial_inputs.refill(inputs, fresh)
            _sync(device)
            spent["warm_s"] += clock() - t
        else:
            inputs = fresh
        _poison(device, poison_bytes)
        reset_launch_counts()
        t = clock()
        with recorder() as rec, torch.no_grad():
            result = model(*inputs)
        _sync(device)
        spent["forward_s"] += clock() - t
        t = clock()
        outs = flatten_outputs(result)
        if share:
            kept_outs = [_clone(_detach(o)) for o in outs if o.is_cuda]
            kept_inputs = [_clone(_detach(t)) if isinstance(t, torch.Tensor) else None for t in inputs]
            _KEEP.extend(kept_outs + kept_inputs)
        else:
            kept_outs = [_to(_detach(o), "cpu", copy=True) for o in outs]
            kept_inputs = [_to(_detach(t), "cpu", copy=True) if isinstance(t, torch.Tensor) else None
                           for t in inputs]
        results.append({
            "meta": [{"shape": list(o.shape), "dtype": str(o.dtype), "device": o.device.type} for o in outs],
            "outputs": kept_outs,
            "inputs_after": kept_inputs,
            "audit": {"torch_ops": dict(rec.ops), "launches": launch_counts(),
                      "extension_calls": dict(rec.extension_calls), "aliased_inputs": aliased_inputs(outs, inputs)},
        })
        _sync(device)
        spent["keep_s"] += clock() - t
    phases.update(spent)
    _sync(device)
    t_trials = timing._perf_counter()
    phases["trials_s"] = t_trials - t_start - phases["load_s"] - phases["cuda_init_s"]
    if share:
        from kernelcraft.harness.transfer import export_cuda

        if any(len(r["outputs"]) != len(r["meta"]) for r in results):
            raise TypeError("forward returned a tensor that is not on the GPU")
        for r in results:
            r["outputs"] = [export_cuda(o) for o in r["outputs"]]
            r["inputs_after"] = [export_cuda(t) if t is not None else None for t in r["inputs_after"]]
        phases["export_s"] = timing._perf_counter() - t_trials
        return {"trials": results, "phases": phases}
    _save(results, out)
    return {"trials": len(results), "phases": phases}


def _input_sets(prob: Any, seed: int, device: str, max_sets: int = 3) -> list:
    """Several input sets to rotate through, as many as fit in a quarter of free memory (at least one)."""
    import torch

    first = prob.make_inputs(seed, device)
    nbytes = _nbytes(first)
    if str(device).startswith("cuda"):
        free, _ = torch.cuda.mem_get_info()
        budget = free // 4
    else:
        budget = 2 * 2**30
    count = max(1, min(max_sets, budget // max(nbytes, 1)))
    return [first] + [prob.make_inputs(seed + k, device) for k in range(1, count)]


def _nbytes(tensors: Any) -> int:
    import torch

    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def task_time(problem: str, size: str, candidate: str, device: str, weight_seed: int, seed: int, warmup: int,
              iters: int, min_time_ms: float = 0.0, flops: int = 0, share: bool = False,
              out: str | None = None) -> dict:
    """Time the candidate interleaved with the eager reference on the same rotating inputs, and measure the
    speed-of-light floor for this footprint (``flops``, counted by the parent, gives its compute part).

    The candidate's outputs from its last timed call on each input set are handed to the parent (CUDA IPC when
    ``share``, else saved to ``out``), which checks them against its own reference."""
    import torch

    from kernelcraft.harness.timing import copy_bandwidth, interleaved, summarize
    from kernelcraft.problems import load_problem

    clock = timing._perf_counter
    phases = {"cuda_init_s": _init_device(device)}
    t = clock()
    prob = load_problem(problem, size)
    ref = prob.make_reference(weight_seed, device)
    sets = _input_sets(prob, seed, device)
    with torch.no_grad():
        out_bytes = _nbytes(flatten_outputs(ref(*sets[0])))
    _sync(device)
    phases["setup_s"] = clock() - t
    footprint = _nbytes(sets[0]) + out_bytes
    cuda = str(device).startswith("cuda")
    # Peak memory bandwidth from a copy far larger than any cache. On a GPU the L2 is flushed before every timed
    # call, so the floor holds at any size; a CPU footprint that fits in its caches can legitimately beat a
    # DRAM floor, so there the floor is measured and enforced only for footprints beyond any last-level cache.
    enforce = cuda or footprint > CPU_FLOOR_MIN_BYTES
    t = clock()
    bandwidth = copy_bandwidth((512 if cuda else 128) * 2**20, device) if enforce else None
    # The compute floor needs the device's peak: measured only where the problem does enough arithmetic for it
    # to matter, and only on the GPU (a busy CPU would under-measure its peak and flag honest kernels).
    peak = matmul_peak(device) if cuda and flops > 0 else None
    phases["floor_s"] = clock() - t
    t = clock()
    module = load_candidate(candidate)
    cand = instantiate(module.ModelNew, prob.init_inputs(), weight_seed, device)
    _sync(device)
    phases["load_s"] = clock() - t
    t = clock()
    kept: dict[str, dict[int, Any]] = {"candidate": {}}
    samples, walls = interleaved({"candidate": lambda xs: cand(*xs), "eager": lambda xs: ref(*xs)},
                                 sets, device, warmup, iters, min_time_ms, capture=kept, trusted="eager")
    phases["timing_s"] = clock() - t
    n_sets = len(sets)
    del sets
    timed_outputs = []
    for k, got in sorted(kept.pop("candidate").items()):
        outs = flatten_outputs(got)
        timed_outputs.append({"set": k, "seed": seed + k,
                              "meta": [{"shape": list(o.shape), "dtype": str(o.dtype), "device": o.device.type}
                                       for o in outs], "outputs": outs})
    if share:
        from kernelcraft.harness.transfer import export_cuda

        for t_out in timed_outputs:
            if not all(o.is_cuda for o in t_out["outputs"]):
                raise TypeError("forward returned a tensor that is not on the GPU")
            _KEEP.extend(t_out["outputs"])
            t_out["outputs"] = [export_cuda(o) for o in t_out["outputs"]]
    else:
        if out:
            _save(timed_outputs, out)
        timed_outputs = [{k: v for k, v in t_out.items() if k != "outputs"} for t_out in timed_outputs]
    doc: dict[str, Any] = {name: summarize(s) for name, s in samples.items()}
    memory_floor = footprint / bandwidth * 1e3 if bandwidth else None
    compute_floor = flops / peak * 1e3 if peak else None
    floors = [f for f in (memory_floor, compute_floor) if f]
    doc.update({
        "wall": {name: summarize(s) for name, s in walls.items()},
        "timed_outputs": timed_outputs, "input_sets": n_sets, "footprint_bytes": footprint, "flops": flops,
        "bandwidth_gbs": bandwidth / 1e9 if bandwidth else None, "peak_tflops": peak / 1e12 if peak else None,
        "floor_ms": max(floors) if floors else None,
        "floor_kind": None if not floors else ("compute" if compute_floor == max(floors) else "memory"),
        "enforce_floor": enforce, "phases": phases,
    })
    return doc


def reference_flops(prob: Any) -> int:
    """FLOPs of one forward of the problem's reference, counted on the meta device (no memory, no GPU) by the
    trusted parent; 0 when the reference cannot run on meta (data-dependent shapes), which leaves only the
    memory floor."""
    try:
        model = prob.make_reference(0, "meta")
        inputs = prob.make_inputs(0, "meta")
        return count_flops(model, inputs)
    except Exception:  # noqa: BLE001 - no compute floor is a safe answer; a wrong one is not
        return 0


def count_flops(model: Any, inputs: list) -> int:
    """Floating-point operations of one reference forward, as PyTorch's FLOP counter sees them (matmuls,
    convolutions, attention; elementwise work counts as zero, so memory is those problems' floor)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model(*inputs)
    return int(counter.get_total_flops())


def matmul_peak(device: str, n: int = 8192) -> float:
    """FLOP/s of a large half-precision matmul (the fastest dense arithmetic a kernel could use within a loose
    tolerance), best of a few calls: what the device's arithmetic delivers, for the compute floor."""
    import torch

    a = torch.randn(n, n, device=device, dtype=torch.float16)
    b = torch.randn(n, n, device=device, dtype=torch.float16)
    best = float("inf")
    for _ in range(5):
        start_ev, end_ev = timing._Event(enable_timing=True), timing._Event(enable_timing=True)
        timing._record(start_ev)
        torch.mm(a, b)
        timing._record(end_ev)
        timing._synchronize()
        best = min(best, timing._elapsed(start_ev, end_ev))
    return 2 * n**3 / (best / 1e3)


def task_baseline(problem: str, size: str, device: str, weight_seed: int, seed: int, warmup: int, iters: int,
                  torch_compile: bool, min_time_ms: float = 0.0) -> dict:
    """Time the reference eager and under torch.compile, interleaved; a compile failure is recorded, not fatal."""
    import torch

    from kernelcraft.harness.timing import interleaved, summarize
    from kernelcraft.problems import load_problem

    prob = load_problem(problem, size)
    ref = prob.make_reference(weight_seed, device)
    sets = _input_sets(prob, seed, device)
    contenders = {"eager": lambda xs: ref(*xs)}
    compile_error = None
    if torch_compile:
        try:
            compiled = torch.compile(ref)
            with torch.no_grad():
                compiled(*sets[0])
            _sync(device)
            contenders["compile"] = lambda xs: compiled(*xs)
        except Exception as exc:  # inductor needs a compiler toolchain; record why it is missing
            compile_error = describe_error(exc)
    samples, _ = interleaved(contenders, sets, device, warmup, iters, min_time_ms)
    out: dict[str, Any] = {name: summarize(s) for name, s in samples.items()}
    out["compile_error"] = compile_error
    out["input_sets"] = len(sets)
    out["input_bytes"] = _nbytes(sets[0])
    return out


TASKS = {"build": task_build, "outputs": task_outputs, "time": task_time, "baseline": task_baseline}


def run(task: str, kwargs: dict) -> dict:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}")
    return TASKS[task](**kwargs)
