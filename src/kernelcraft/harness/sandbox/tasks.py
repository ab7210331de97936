"""What a candidate child process does: build, run for verification, or time. Executed only inside children forked
by the zygote (zygote.py); every function returns plain JSON data (and may write a tensor file the parent loads
with ``weights_only=True``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch as _torch

import kernelcraft.harness.timing.protocol as timing  # noqa: F401 - binds the clocks before any candidate is imported
from kernelcraft.harness.sandbox.candidate import load_candidate

# Bound when the zygote imports this module, before any candidate runs: a candidate that patches these names
# later cannot change how its outputs are copied out or saved.
_detach = _torch.Tensor.detach
_save = _torch.save

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
    # Exactly the outputs' size: a larger block would not be reused for them and would cost a segment of its own.
    block = torch.empty((nbytes + 3) // 4, dtype=torch.float32, device=device)
    block.fill_(float("nan"))
    del block


def _load_model(prob: Any, candidate: str, weight_seed: int, device: str) -> Any:
    module = load_candidate(candidate)
    model = instantiate(module.ModelNew, prob.init_inputs(), weight_seed, device)
    _sync(device)
    return model


def _meta(outs: list) -> list[dict]:
    return [{"shape": list(o.shape), "dtype": str(o.dtype), "device": o.device.type} for o in outs]


def _hand_tensors(doc: dict, tensors: dict[str, list], share: bool, out: str) -> dict:
    """Attach tensors to a hand-over: CUDA IPC descriptions of the very tensors (no copies; they stay alive in the
    caller until the parent has replied), or one file the parent loads with ``weights_only=True``."""
    if share:
        from kernelcraft.harness.sandbox.transfer import export_cuda

        for key, items in tensors.items():
            if any(isinstance(t, _torch.Tensor) and not t.is_cuda for t in items):
                raise TypeError("forward returned a tensor that is not on the GPU")
            doc[key] = [export_cuda(t) if isinstance(t, _torch.Tensor) else None for t in items]
        return doc
    _save({key: [_detach(t) if isinstance(t, _torch.Tensor) else None for t in items]
           for key, items in tensors.items()}, out)
    return doc


def _verification(prob: Any, model: Any, audit: Any, plan: list[dict], device: str, poison_bytes: int,
                  share: bool, out: str, handover: Callable[[dict], dict]) -> tuple[dict, dict]:
    """Run the candidate on each trial of ``plan`` (see verify/trials.py) and hand each trial over as it completes: its
    outputs, its inputs afterwards (the tensors themselves, which the parent compares with its own copy) and the
    audit of the calls. One trial's tensors exist at a time. Returns the parent's last reply and phase timings."""
    import torch

    from kernelcraft.harness.verify import trials as trial_inputs

    clock = timing._perf_counter
    spent = {"inputs_s": 0.0, "warm_s": 0.0, "forward_s": 0.0, "handover_s": 0.0}
    inputs: list | None = None
    reply: dict = {}
    for k, spec in enumerate(plan):
        t = clock()
        if spec.get("reuse") and inputs is not None:
            with torch.no_grad():
                for _ in range(int(spec.get("warm_calls", 0))):
                    with audit.forward():
                        model(*inputs)
            _sync(device)
            spent["warm_s"] += clock() - t
            t = clock()
            inputs = trial_inputs.renew(inputs, spec)
        else:
            inputs = None  # the previous trial's inputs are freed before the next are made: one set at a time
            inputs = trial_inputs.make_inputs(prob, spec, device)
        _sync(device)
        spent["inputs_s"] += clock() - t
        _poison(device, poison_bytes)
        t = clock()
        with audit.forward(), torch.no_grad():
            result = model(*inputs)
        _sync(device)
        spent["forward_s"] += clock() - t
        t = clock()
        outs = flatten_outputs(result)
        doc = _hand_tensors({"trial": k, "meta": _meta(outs), "audit": audit.cut()},
                            {"outputs": outs, "inputs_after": inputs}, share, out)
        reply = handover(doc)
        del result, outs
        spent["handover_s"] += clock() - t
    return reply, spent


def task_evaluate(problem: str, size: str, candidate: str, device: str, weight_seed: int, plan: list[dict],
                  out: str, poison_bytes: int = 0, share: bool = False, timing_args: dict | None = None, *,
                  handover: Callable[[dict], dict]) -> dict:
    """One candidate, one process: each verification trial is handed to the parent, which judges it and replies;
    only if the parent's reply to the last trial says ``time`` is the candidate then timed, block by block, each
    block handed over too (the parent times the reference in its own process between the candidate's blocks).
    No reference runs here. The audit (judge/audit.py) records every call from before the candidate is imported."""
    from kernelcraft.harness.judge.audit import Audit

    clock = timing._perf_counter
    phases = {"cuda_init_s": _init_device(device)}
    from kernelcraft.problems import load_problem

    t = clock()
    prob = load_problem(problem, size)
    phases["problem_s"] = clock() - t
    audit = Audit()
    t = clock()
    model = _load_model(prob, candidate, weight_seed, device)
    phases["load_s"] = clock() - t
    reply, spent = _verification(prob, model, audit, plan, device, poison_bytes, share, out, handover)
    phases |= spent
    verify_peak = _peak_and_reset(device)
    if reply.get("time"):
        doc = _timing(prob, model, audit, device, share, out, reply, handover, **(timing_args or {}))
    else:
        doc = {"timed": False, "phases": {}}
    doc["phases"] = phases | doc["phases"]
    del model
    doc["memory"] = release_device_memory(device, verify_peak)
    return doc


def _peak_and_reset(device: str) -> tuple[int, int]:
    """This process's peak device memory so far (allocated, reserved), then fresh peaks for the next phase."""
    import torch

    if not str(device).startswith("cuda"):
        return 0, 0
    peaks = int(torch.cuda.max_memory_allocated()), int(torch.cuda.max_memory_reserved())
    torch.cuda.reset_peak_memory_stats()
    return peaks


def release_device_memory(device: str, verify_peak: tuple[int, int] = (0, 0)) -> dict:
    """This process's peak device memory (PyTorch's allocator: what it allocated, what it reserved; verification's
    and timing's apart, for the memory benchmark), then every cached block handed back to the driver. The parent
    kills this process without waiting once the result is in, and the next candidate starts meanwhile: memory still
    cached here would sit beside that candidate's (the figures are informational; a candidate could report
    anything)."""
    import torch

    if not str(device).startswith("cuda"):
        return {}
    timing_peak = int(torch.cuda.max_memory_allocated())
    peaks = {"peak_allocated_bytes": max(verify_peak[0], timing_peak), "verify_peak_bytes": verify_peak[0],
             "timing_peak_bytes": timing_peak,
             "peak_reserved_bytes": max(verify_peak[1], int(torch.cuda.max_memory_reserved()))}
    torch.cuda.empty_cache()
    return peaks


def input_sets(prob: Any, seed: int, device: str, count: int) -> list:
    """``count`` input sets to rotate through while timing (the parent decides how many fit)."""
    return [prob.make_inputs(seed + k, device) for k in range(max(1, count))]


# Input sets rotate while timing only where they are small: at KernelBench's sizes (GB tensors) a second set would
# be a second copy of the problem's inputs, in each of the two processes that time it.
ROTATION_BYTES = 64 * 2**20
MAX_SETS = 3


def rotation_sets(input_bytes: int) -> int:
    """How many input sets to rotate through: up to MAX_SETS while they stay within ROTATION_BYTES together."""
    return int(max(1, min(MAX_SETS, ROTATION_BYTES // max(input_bytes, 1))))


def tensor_bytes(tensors: Any) -> int:
    """Bytes held by the tensors among ``tensors`` (other inputs, such as ints, hold none)."""
    import torch

    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def _timing(prob: Any, model: Any, audit: Any, device: str, share: bool, out: str, order: dict,
            handover: Callable[[dict], dict], seed: int, warmup: int, iters: int, min_time_ms: float = 0.0) -> dict:
    """Time the candidate in blocks (protocol.BlockTimer) whose lengths the parent draws, one block at a time
    (protocol.block_length); each call's inputs are renewed in place first (call_inputs.py). After each block its
    samples, the outputs of its last call (so where the check falls is where the parent ended the block) and the
    audit of the block's calls are handed over; the parent checks them and times its reference before replying.
    The L2 is flushed with a buffer the parent lends (``order["flush"]``, CUDA IPC). The GPU sleep queued before
    each call covers the longer of the reference's launch time (measured by the parent, ``order["launch_ms"]``)
    and this candidate's own, measured in its warm-up under the audit, which adds host time to every launch: sized
    from the reference's alone, the sleep sometimes ended before a multi-kernel candidate's first launch, and the
    events then timed the host (LayerNorm on the H200: interquartile ranges of 10-50% of the median in the
    workflow, under 1% for the same kernels timed alone). Capped at protocol.PREROLL_MAX_MS."""
    from kernelcraft.harness.timing.call_inputs import CallInputs
    from kernelcraft.harness.timing.protocol import (
        BLOCKS,
        BlockTimer,
        block_length,
        poison,
        summarize,
        timed_iterations,
        warm_up,
    )

    clock = timing._perf_counter
    phases: dict[str, float] = {}
    t = clock()
    sets = input_sets(prob, seed, device, int(order.get("sets", 1)))
    lent = None
    if order.get("flush") and share:
        from kernelcraft.harness.sandbox.transfer import import_cuda

        lent = import_cuda(order["flush"])
    _sync(device)
    phases["setup_s"] = clock() - t

    def call(xs: list) -> Any:
        with audit.forward():
            return model(*xs)

    t = clock()
    warm = warm_up(call, sets, device, warmup, min_time_ms)
    total = timed_iterations(iters, min_time_ms, warm["per_call_ms"])
    timer = BlockTimer(device, max(float(order.get("launch_ms") or 0.0), warm["launch_ms"]), flush_with=lent)
    samples: list[float] = []
    walls: list[float] = []
    first, keep, b = 0, float(order.get("keep", 0.0)), 0
    per_call = CallInputs(sets, seed)
    while first < total:
        n = min(total - first, block_length(keep, total / BLOCKS))
        s, w, kept = timer.block(call, sets, first, n, keep=first + n - 1, inputs_for=per_call.for_call)
        samples += s
        walls += w
        outs = flatten_outputs(kept)
        doc = _hand_tensors({"block": b, "total": total, "samples": s, "walls": w,
                             "meta": _meta(outs), "audit": audit.cut()}, {"outputs": outs}, share, out)
        reply = handover(doc)
        poison(outs)
        del kept, outs
        first += n
        b += 1
        if reply.get("stop"):
            break
        keep = float(reply.get("keep", 0.0))
    del lent, timer
    phases["timing_s"] = clock() - t
    return {"timed": True, "candidate": summarize(samples), "wall": {"candidate": summarize(walls)},
            "input_sets": len(sets), "warmup_calls": warm["calls"], "phases": phases}


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

    from kernelcraft.harness.timing.protocol import interleaved, summarize
    from kernelcraft.problems import load_problem

    prob = load_problem(problem, size)
    ref = prob.make_reference(weight_seed, device)
    first = prob.make_inputs(seed, device)
    sets = [first] + input_sets(prob, seed, device, rotation_sets(tensor_bytes(first)))[1:]
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


def task_trial_inputs(problem: str, size: str, device: str, weight_seed: int, spec: dict) -> dict:
    """Whether the reference takes one kind of verification input (a trial's distribution). In a child of its own:
    a reference can refuse inputs with a device-side assert (binary cross-entropy of probabilities shifted out of
    [0, 1]), which leaves the process no CUDA context to judge anything with."""
    import torch

    from kernelcraft.harness.verify import trials
    from kernelcraft.problems import load_problem

    prob = load_problem(problem, size)
    ref = prob.make_reference(weight_seed, device)
    try:
        inputs = trials.make_inputs(prob, spec, device)
        with torch.no_grad():
            ref(*inputs)
        _sync(device)
    except Exception as exc:  # the reference's own refusal: the answer, not a failure of this task
        return {"takes": False, "reason": describe_error(exc)}
    return {"takes": True}


TASKS = {"build": task_build, "evaluate": task_evaluate, "baseline": task_baseline,
         "trial_inputs": task_trial_inputs}


def run(task: str, kwargs: dict, handover: Callable[[dict], dict] | None = None) -> dict:
    """Run one task; ``handover`` (the zygote's) is passed to tasks that hand results over midway."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}")
    if task == "evaluate":
        if handover is None:
            raise ValueError("the evaluate task needs a hand-over to the parent")
        return task_evaluate(**kwargs, handover=handover)
    return TASKS[task](**kwargs)
