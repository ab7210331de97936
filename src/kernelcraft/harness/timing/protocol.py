"""Timing protocol (DESIGN.md §5): device events around each call, warm-up first, L2 flushed before every timed
call, input sets rotated. A candidate is timed in blocks in its own process (:class:`BlockTimer`), alternating
with the reference's blocks in the trusted parent; the baseline's trusted contenders are timed interleaved in one
process (:func:`interleaved`). The CPU backend follows the same protocol with a wall clock.

Defences, since the timed candidate runs in the process that times it:
* the clocks and event methods are bound here, when the zygote imports this module, before any candidate code
  runs: a candidate that later patches ``time.perf_counter`` or ``torch.cuda.Event.elapsed_time`` patches names
  this module no longer looks up;
* after every CUDA sample's end event, the host clock times the wait for the whole device to go idle: work hidden
  on another stream (which the current stream's events do not see) shows up as a wall time far above the event
  time;
* :func:`copy_bandwidth` measures what a plain copy achieves for the same footprint, so a time below
  (bytes in + bytes out) / bandwidth — the speed-of-light floor — can be rejected as impossible.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

_perf_counter = time.perf_counter
_synchronize = torch.cuda.synchronize
_Event = torch.cuda.Event
_record = torch.cuda.Event.record
_elapsed = torch.cuda.Event.elapsed_time
_event_sync = torch.cuda.Event.synchronize
_gpu_sleep = torch.cuda._sleep
_fill = torch.Tensor.fill_
_is_floating = torch.Tensor.is_floating_point

# Upper bound on timed calls per contender however short the kernel (do_bench-like minimum work otherwise).
MAX_ITERS = 2000
# Longest GPU sleep queued ahead of a timed call to hide the host's launch latency.
PREROLL_MAX_MS = 1.0
# Wall time may exceed event time by launch and synchronisation latency; more than this is hidden work.
HIDDEN_WORK_MIN_MS = 0.1
HIDDEN_WORK_FRACTION = 0.5


def summarize(samples_ms: Sequence[float]) -> dict[str, float | int]:
    """Median and interquartile range: robust to the odd preempted sample, unlike mean and stddev."""
    ordered = sorted(samples_ms)
    if len(ordered) >= 4:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1, q3 = ordered[0], ordered[-1]
    return {"median_ms": statistics.median(ordered), "iqr_ms": q3 - q1, "min_ms": ordered[0], "n": len(ordered)}


def flush_buffer(device: Any) -> Any:
    """A buffer twice the size of the device's L2: writing it leaves nothing of a previous call in the cache."""
    props = torch.cuda.get_device_properties(device)
    size = max(int(getattr(props, "L2_cache_size", 50 * 2**20)), 2**20) * 2
    return torch.empty(size // 4, dtype=torch.int32, device=device)


def lendable_flush_buffer(device: Any) -> tuple[Any, Any]:
    """A flush buffer the trusted parent may lend to a candidate's process, and the memory pool it lives in (None
    when it may not be lent). CUDA IPC maps a whole allocator segment, not just one tensor: a buffer carved out of
    a segment the parent's other tensors share (reference outputs, input sets) would hand the candidate those too.
    So the buffer is allocated in a pool of its own, and lent only if the pool holds that one block."""
    try:
        pool = torch.cuda.MemPool()
        with torch.cuda.use_mem_pool(pool):
            buf = flush_buffer(device)
        segments = pool.snapshot()
        blocks = [b for seg in segments for b in seg.get("blocks", [])
                  if str(b.get("state", "")).startswith("active")]
        if len(segments) == 1 and len(blocks) == 1:
            return buf, pool
        del buf
    except Exception:  # noqa: BLE001 - an allocator without private pools: the candidate's process flushes with its own
        pass
    return flush_buffer(device), None


class _L2Flusher:
    """Writes a buffer twice the size of L2 so each timed call starts with a cold cache, as a real model would.
    The buffer may be one the trusted parent lends through CUDA IPC: its contents are never read, so one buffer
    serves both processes instead of 2x the L2 in each."""

    def __init__(self, device: Any, buffer: Any = None) -> None:
        self._buf = flush_buffer(device) if buffer is None else buffer

    def __call__(self) -> None:
        self._buf.zero_()


def timed_iterations(iters: int, min_time_ms: float, per_call_ms: float) -> int:
    """At least ``iters`` timed calls, and enough that the fastest contender accumulates ``min_time_ms`` of timed
    work (as triton's do_bench does with its ``rep``): a 20 us kernel timed 20 times is 0.4 ms of signal, at the
    mercy of clock ramps and one-off stalls; capped at MAX_ITERS."""
    if min_time_ms <= 0 or per_call_ms <= 0:
        return iters
    return int(min(max(iters, math.ceil(min_time_ms / per_call_ms)), max(iters, MAX_ITERS)))


def interleaved(contenders: dict[str, Callable[[Any], Any]], input_sets: Sequence[Any], device: str,
                warmup: int, iters: int, min_time_ms: float = 0.0) -> tuple[dict[str, list[float]],
                                                                            dict[str, list[float]]]:
    """Time trusted contenders (the baseline's eager and torch.compile) round-robin in one process (``iters``
    times, or more: see :func:`timed_iterations`), rotating through ``input_sets``, each call timed as
    :meth:`BlockTimer.call` times it. Warm-up is ``warmup`` rounds and, when ``min_time_ms`` is set, at least a
    quarter of it in work, so clocks have ramped up before the first timed call.

    Returns (device-time samples, wall-time samples) in ms per contender; on the CPU both are the wall clock.
    Every contender sees the same input set in the same iteration, and the order of contenders alternates
    between iterations so none always runs first.
    """
    names = list(contenders)
    samples: dict[str, list[float]] = {n: [] for n in names}
    walls: dict[str, list[float]] = {n: [] for n in names}
    cuda = str(device).startswith("cuda")
    with torch.no_grad():
        per_call = dict.fromkeys(names, math.inf)
        launch = dict.fromkeys(names, math.inf)
        warm_ms = 0.0
        i = 0
        while i < warmup or (min_time_ms > 0 and warm_ms < min_time_ms / 4 and i < MAX_ITERS):
            for name in names:
                t0 = _perf_counter()
                contenders[name](input_sets[i % len(input_sets)])
                launch[name] = min(launch[name], (_perf_counter() - t0) * 1e3)
                if cuda:
                    _synchronize()
                ms = (_perf_counter() - t0) * 1e3
                per_call[name] = min(per_call[name], ms)
                warm_ms += ms
            i += 1
        iters = timed_iterations(iters, min_time_ms, min(per_call.values()) if i else 0.0)
        timer = BlockTimer(device, max(launch.values()) if i else PREROLL_MAX_MS)
        for i in range(iters):
            inputs = input_sets[i % len(input_sets)]
            for name in names if i % 2 == 0 else names[::-1]:
                event_ms, wall_ms, out = timer.call(contenders[name], inputs)
                samples[name].append(event_ms)
                walls[name].append(wall_ms)
                del out
    return samples, walls


# Calls per contender are timed in about this many blocks, the reference's (in the trusted parent) alternating with the
# candidate's (in its own process), so drift between the two processes' blocks cancels in the medians.
BLOCKS = 4


def warm_up(fn: Callable[[Any], Any], input_sets: Sequence[Any], device: str, warmup: int,
            min_time_ms: float = 0.0) -> dict[str, float]:
    """Untimed calls until ``warmup`` calls and a quarter of ``min_time_ms`` of work are done, so clocks have
    ramped and caches are built. Returns the fastest call (ms, synchronised) and the fastest host launch (ms):
    what sizes the timed work and, for the reference, the GPU sleep queued before each timed call."""
    cuda = str(device).startswith("cuda")
    per_call = launch = math.inf
    spent = 0.0
    i = 0
    with torch.no_grad():
        while i < warmup or (min_time_ms > 0 and spent < min_time_ms / 4 and i < MAX_ITERS):
            t0 = _perf_counter()
            out = fn(input_sets[i % len(input_sets)])
            launch = min(launch, (_perf_counter() - t0) * 1e3)
            if cuda:
                _synchronize()
            ms = (_perf_counter() - t0) * 1e3
            per_call = min(per_call, ms)
            spent += ms
            del out
            i += 1
    return {"per_call_ms": per_call if i else 0.0, "launch_ms": launch if i else PREROLL_MAX_MS, "calls": i}


def poison(out: Any) -> None:
    """Overwrite a call's outputs once they are no longer needed, outside the timed region: the caching allocator
    hands that memory to the next call, so a kernel that returns fresh memory without writing it (hoping it still
    holds an earlier call's answer) returns NaN instead."""
    if isinstance(out, torch.Tensor):
        if out.numel():
            _fill(out, float("nan") if _is_floating(out) else -7)
    elif isinstance(out, list | tuple):
        for o in out:
            poison(o)


class BlockTimer:
    """Times one contender's calls block by block under the protocol of :func:`interleaved`: L2 flushed and a
    GPU sleep queued before each call, device events around it, the host's wait for the whole device after it;
    input sets rotated by the global call index, so two processes timing the same sets stay in step."""

    def __init__(self, device: str, launch_ms: float, flush_with: Any = None) -> None:
        self.cuda = str(device).startswith("cuda")
        self.device = device
        self._lent = flush_with
        self._flush: _L2Flusher | None = None
        if self.cuda:
            _synchronize()
            self._start, self._end = _Event(enable_timing=True), _Event(enable_timing=True)
            self._preroll = _preroll_cycles(launch_ms)

    def release(self) -> None:
        """Free the flush buffer (made again by the next call) unless it was lent: a buffer of twice the L2 held
        beside a block's outputs between blocks was a fixed cost of the process's peak."""
        self._flush = None

    def call(self, fn: Callable[[Any], Any], inputs: Any) -> tuple[float, float, Any]:
        """One timed call: (event ms, wall ms, its outputs)."""
        if not self.cuda:
            t0 = _perf_counter()
            out = fn(inputs)
            ms = (_perf_counter() - t0) * 1e3
            return ms, ms, out
        # The previous call ended with a device-wide sync, so the GPU would start this one the moment it is
        # launched and the events would include the host's launch latency (measured: +10% on a 0.1 ms kernel). The
        # flush and a short GPU sleep are queued first: the host gets ahead of the GPU, as it does in a real model
        # and in triton's do_bench, which queues all its calls.
        if self._flush is None:
            self._flush = _L2Flusher(self.device, self._lent)
        self._flush()
        _gpu_sleep(self._preroll)
        _record(self._start)
        out = fn(inputs)
        _record(self._end)
        _event_sync(self._end)
        # The whole device, not just the stream: work the timed stream's events did not see (another stream's)
        # shows up as time between the end event and the device becoming idle.
        t_end = _perf_counter()
        _synchronize()
        event_ms = _elapsed(self._start, self._end)
        return event_ms, event_ms + (_perf_counter() - t_end) * 1e3, out

    def block(self, fn: Callable[[Any], Any], input_sets: Sequence[Any], first: int, count: int,
              keep: int | None = None, inputs_for: Callable[[int], Any] | None = None
              ) -> tuple[list[float], list[float], Any]:
        """Calls ``first`` .. ``first + count - 1``; returns (event ms, wall ms, outputs of call ``keep``). Every
        other call's outputs are poisoned (:func:`poison`) once timed. ``inputs_for(i)``, when given, makes call
        ``i``'s inputs (outside the timed region; see call_inputs.py), else the sets rotate as they are."""
        samples: list[float] = []
        walls: list[float] = []
        kept = None
        with torch.no_grad():
            for i in range(first, first + count):
                inputs = inputs_for(i) if inputs_for is not None else input_sets[i % len(input_sets)]
                event_ms, wall_ms, out = self.call(fn, inputs)
                samples.append(event_ms)
                walls.append(wall_ms)
                if i == keep:
                    kept = out
                else:
                    poison(out)
                del out
            if self.cuda:
                _synchronize()
        self.release()
        return samples, walls, kept


def block_length(fraction: float, mean: float) -> int:
    """Calls in the next timed block, from the parent's draw: any of 1 .. 2*mean - 1, each as likely. The block's
    last call is the one handed over and checked, so where a block ends is where the check falls: a candidate
    cannot tell, while it runs a call, whether that call will be checked (each block's length is drawn after the
    previous one was handed over), and with the checked output the last one made, no second output is ever held
    beside it (at KernelBench's sizes, a GB of the candidate's process)."""
    longest = max(1, round(2 * mean) - 1)
    return 1 + min(max(int(fraction * longest), 0), longest - 1)


def _preroll_cycles(launch_ms: float) -> int:
    """GPU clock cycles to sleep before each timed call: twice a trusted host launch time (plus a margin), at
    most PREROLL_MAX_MS, converted with the clock rate measured by timing a known sleep."""
    start_ev, end_ev = _Event(enable_timing=True), _Event(enable_timing=True)
    probe = 1_000_000
    _record(start_ev)
    _gpu_sleep(probe)
    _record(end_ev)
    _synchronize()
    cycles_per_ms = probe / max(_elapsed(start_ev, end_ev), 1e-3)
    return int(cycles_per_ms * min(2 * launch_ms + 0.02, PREROLL_MAX_MS))


def hidden_work(event_ms: float, wall_ms: float) -> bool:
    """Whether the wall clock saw much more work than the timed stream's events did."""
    return wall_ms - event_ms > max(HIDDEN_WORK_MIN_MS, HIDDEN_WORK_FRACTION * wall_ms)


def probe_bytes(footprint_bytes: int, cuda: bool) -> int:
    """Size of the copy's source (and of its destination) for :func:`copy_bandwidth`: on the GPU the copy moves
    about the problem's own footprint (between 64 MiB and 1 GiB in all), so the floor is what memory delivers for
    that much data and the probe never needs more memory than the problem itself does."""
    if not cuda:
        return 128 * 2**20
    return int(min(512 * 2**20, max(32 * 2**20, footprint_bytes // 2)))


def copy_bandwidth(nbytes: int, device: str, iters: int = 10) -> float:
    """Bytes per second (read + written) of a plain device copy of ``nbytes``, under the same protocol as the
    timed calls (L2 flushed on CUDA): what memory delivers for this footprint."""
    n = max(nbytes // 4, 1024)
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    cuda = str(device).startswith("cuda")
    flush = _L2Flusher(device) if cuda else None
    best = float("inf")
    for _ in range(iters + 2):
        if cuda:
            flush()
            _synchronize()
            start_ev, end_ev = _Event(enable_timing=True), _Event(enable_timing=True)
            _record(start_ev)
            dst.copy_(src)
            _record(end_ev)
            _synchronize()
            ms = _elapsed(start_ev, end_ev)
        else:
            t0 = _perf_counter()
            dst.copy_(src)
            ms = (_perf_counter() - t0) * 1e3
        best = min(best, ms)
    return 2 * n * 4 / (best / 1e3)


def matmul_peak(device: str, m: int = 4096, k: int = 8192, n: int = 4096) -> float:
    """FLOP/s of a large half-precision matmul (the fastest dense arithmetic a kernel could use within a loose
    tolerance), best of a few calls: what the device's arithmetic delivers, for the compute floor. The shape does as
    much work as 8192^3 / 4 (enough to reach the device's peak) with 160 MB of operands instead of 384 MB: it is
    measured before the job holds anything else, and at that size it never sets the job's peak memory."""
    a = torch.randn(m, k, device=device, dtype=torch.float16)
    b = torch.randn(k, n, device=device, dtype=torch.float16)
    best = float("inf")
    for _ in range(5):
        start_ev, end_ev = _Event(enable_timing=True), _Event(enable_timing=True)
        _record(start_ev)
        torch.mm(a, b)
        _record(end_ev)
        _synchronize()
        best = min(best, _elapsed(start_ev, end_ev))
    return 2 * m * k * n / (best / 1e3)


# On a CPU, a footprint that fits in its caches can legitimately beat a DRAM floor: enforce it only beyond this.
CPU_FLOOR_MIN_BYTES = 256 * 2**20


def speed_of_light(footprint_bytes: int, flops: int, device: str) -> dict[str, Any]:
    """The fastest any kernel could run one forward: max(bytes moved / measured copy bandwidth, FLOPs / measured
    matmul peak). Measured once per job in the trusted parent, where no candidate code can touch the copy or the
    matmul it is measured with. On a GPU the L2 is flushed before every timed call, so the floor holds at any
    size; the compute part only on the GPU, and only where the problem does arithmetic worth counting (a busy
    CPU would under-measure its peak and flag honest kernels)."""
    cuda = str(device).startswith("cuda")
    enforce = cuda or footprint_bytes > CPU_FLOOR_MIN_BYTES
    bandwidth = copy_bandwidth(probe_bytes(footprint_bytes, cuda), device) if enforce else None
    peak = matmul_peak(device) if cuda and flops > 0 else None
    memory_floor = footprint_bytes / bandwidth * 1e3 if bandwidth else None
    compute_floor = flops / peak * 1e3 if peak else None
    floors = [f for f in (memory_floor, compute_floor) if f]
    return {
        "floor_ms": max(floors) if floors else None,
        "floor_kind": None if not floors else ("compute" if compute_floor == max(floors) else "memory"),
        "enforce_floor": enforce, "footprint_bytes": footprint_bytes, "flops": flops,
        "bandwidth_gbs": bandwidth / 1e9 if bandwidth else None, "peak_tflops": peak / 1e12 if peak else None,
    }
