"""What a candidate child process does: build, run for verification, or time. Executed only inside children forked
by the zygote (zygote.py); every function returns plain JSON data (and may write a tensor file the parent loads
with ``weights_only=True``)."""

from __future__ import annotations

from collections.abc import Callable
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


def _load_model(prob: Any, candidate: str, weight_seed: int, device: str) -> Any:
    module = load_candidate(candidate)
    model = instantiate(module.ModelNew, prob.init_inputs(), weight_seed, device)
    _sync(device)
    return model


def _verification(prob: Any, model: Any, plan: list[dict], device: str, poison_bytes: int, share: bool,
                  out: str) -> dict:
    """Run the candidate on each trial of ``plan`` (see trials.py) and describe its outputs, its inputs
    afterwards and an audit of what its forward did (PyTorch operators, kernel launches, extension calls,
    aliasing): tensors are exported through CUDA IPC when ``share`` (kept alive in _KEEP until the parent has
    judged them), else saved to ``out``."""
    import torch

    from kernelcraft.harness import trials as trial_inputs
    from kernelcraft.harness.audit import aliased_inputs, recorder
    from kernelcraft.harness.build import launch_counts, reset_launch_counts

    t_start = timing._perf_counter()
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
    phases = dict(spent)
    _sync(device)
    t_trials = timing._perf_counter()
    phases["trials_s"] = t_trials - t_start
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


def task_evaluate(problem: str, size: str, candidate: str, device: str, weight_seed: int, plan: list[dict],
                  out: str, poison_bytes: int = 0, share: bool = False, timing_args: dict | None = None, *,
                  handover: Callable[[dict], dict]) -> dict:
    """One candidate, one process: its verification trials are handed to the parent, which judges them and
    replies; only when the parent says ``time`` is the candidate then timed (``timing_args``, see _timing) in
    the same process, so it is loaded, built and started once. The eager reference used for timing is built
    before any candidate code runs."""
    clock = timing._perf_counter
    # Absolute monotonic stamps (the parent's clock is the same one): where a candidate's wall time goes between
    # the two processes, for the job's phase timings.
    stamps = {"begin": clock()}
    phases = {"cuda_init_s": _init_device(device)}
    from kernelcraft.problems import load_problem

    t = clock()
    prob = load_problem(problem, size)
    ref = prob.make_reference(weight_seed, device) if timing_args is not None else None
    _sync(device)
    phases["problem_s"] = clock() - t
    t = clock()
    model = _load_model(prob, candidate, weight_seed, device)
    phases["load_s"] = clock() - t
    verified = _verification(prob, model, plan, device, poison_bytes, share, out)
    stamps["handover"] = clock()
    verified["phases"] = phases | verified["phases"]
    verified["stamps"] = stamps
    reply = handover(verified)
    _KEEP.clear()  # the parent has unmapped what it judged
    if ref is None or not reply.get("time"):
        return {"timed": False}
    stamps = {"replied": clock()}
    doc = _timing(prob, ref, model, device, share=share, **(timing_args or {}))
    return doc | {"stamps": stamps | {"end": clock()}}


def _input_sets(prob: Any, seed: int, device: str, max_sets: int = 3) -> list:
    """Several input sets to rotate through, as many as fit in a quarter of free memory (at least one)."""
    import torch

    first = prob.make_inputs(seed, device)
    nbytes = tensor_bytes(first)
    if str(device).startswith("cuda"):
        free, _ = torch.cuda.mem_get_info()
        budget = free // 4
    else:
        budget = 2 * 2**30
    count = max(1, min(max_sets, budget // max(nbytes, 1)))
    return [first] + [prob.make_inputs(seed + k, device) for k in range(1, count)]


def tensor_bytes(tensors: Any) -> int:
    """Bytes held by the tensors among ``tensors`` (other inputs, such as ints, hold none)."""
    import torch

    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def _timing(prob: Any, ref: Any, cand: Any, device: str, seed: int, warmup: int, iters: int,
            min_time_ms: float = 0.0, share: bool = False, out: str | None = None) -> dict:
    """Time the candidate interleaved with the eager reference on the same rotating input sets.

    The candidate's outputs from its last timed call on each input set are handed to the parent (CUDA IPC when
    ``share``, else saved to ``out``), which checks them against its own reference; the parent also holds the
    speed-of-light floor (measured in its own process, where no candidate runs)."""
    from kernelcraft.harness.timing import interleaved, summarize

    clock = timing._perf_counter
    phases: dict[str, float] = {}
    t = clock()
    sets = _input_sets(prob, seed, device)
    _sync(device)
    phases["setup_s"] = clock() - t
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
    doc.update({"timed": True, "wall": {name: summarize(s) for name, s in walls.items()},
                "timed_outputs": timed_outputs, "input_sets": n_sets, "phases": phases})
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
    """Floating-point operations of one reference forward, by PyTorch's own FLOP formulas (matmuls,
    convolutions, attention; elementwise work counts as zero, so memory is those problems' floor).

    Counted with a dispatch mode of our own rather than FlopCounterMode, whose first use imports all of
    torch._dynamo (0.8 s of every GPU evaluate job's start, before its first candidate)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class _Flops(TorchDispatchMode):
        total = 0

        @classmethod
        def _should_skip_dynamo(cls) -> bool:
            return False  # see the docstring: nothing here needs Dynamo

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func.overloadpacket)
            if formula is not None:
                self.total += int(formula(*args, **kwargs, out_val=out))
            return out

    with _Flops() as counter:
        model(*inputs)
    return counter.total


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
    out["input_bytes"] = tensor_bytes(sets[0])
    return out


TASKS = {"build": task_build, "evaluate": task_evaluate, "baseline": task_baseline}


def run(task: str, kwargs: dict, handover: Callable[[dict], dict] | None = None) -> dict:
    """Run one task; ``handover`` (the zygote's) is passed to tasks that hand results over midway."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}")
    if task == "evaluate":
        if handover is None:
            raise ValueError("the evaluate task needs a hand-over to the parent")
        return task_evaluate(**kwargs, handover=handover)
    return TASKS[task](**kwargs)
