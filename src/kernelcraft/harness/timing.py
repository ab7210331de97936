"""Timing protocol (DESIGN.md §5): device events around each call, warm-up first, L2 flushed before every timed
call, input sets rotated, and all contenders timed interleaved in one process so that clock and thermal drift hit
them alike. The CPU backend follows the same protocol with a wall clock.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any


def summarize(samples_ms: Sequence[float]) -> dict[str, float | int]:
    """Median and interquartile range: robust to the odd preempted sample, unlike mean and stddev."""
    ordered = sorted(samples_ms)
    if len(ordered) >= 4:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1, q3 = ordered[0], ordered[-1]
    return {"median_ms": statistics.median(ordered), "iqr_ms": q3 - q1, "min_ms": ordered[0], "n": len(ordered)}


class _L2Flusher:
    """Writes a buffer twice the size of L2 so each timed call starts with a cold cache, as a real model would."""

    def __init__(self, device: Any) -> None:
        import torch

        props = torch.cuda.get_device_properties(device)
        size = max(int(getattr(props, "L2_cache_size", 50 * 2**20)), 2**20) * 2
        self._buf = torch.empty(size // 4, dtype=torch.int32, device=device)

    def __call__(self) -> None:
        self._buf.zero_()


def interleaved(contenders: dict[str, Callable[[Any], Any]], input_sets: Sequence[Any], device: str,
                warmup: int, iters: int) -> dict[str, list[float]]:
    """Time each contender ``iters`` times, round-robin, rotating through ``input_sets``; return ms samples.

    ``contenders`` map a name to a callable taking one input set. Every contender sees the same input set in the
    same iteration, and the order of contenders alternates between iterations so none always runs first.
    """
    import torch

    names = list(contenders)
    samples: dict[str, list[float]] = {n: [] for n in names}
    cuda = str(device).startswith("cuda")
    with torch.no_grad():
        for i in range(warmup):
            for name in names:
                contenders[name](input_sets[i % len(input_sets)])
        if cuda:
            torch.cuda.synchronize()
            flush = _L2Flusher(device)
            start_ev = torch.cuda.Event(enable_timing=True)
            end_ev = torch.cuda.Event(enable_timing=True)
        for i in range(iters):
            inputs = input_sets[i % len(input_sets)]
            order = names if i % 2 == 0 else names[::-1]
            for name in order:
                fn = contenders[name]
                if cuda:
                    flush()
                    torch.cuda.synchronize()
                    start_ev.record()
                    fn(inputs)
                    end_ev.record()
                    # Synchronise the whole device so no call's work overlaps the next contender's.
                    torch.cuda.synchronize()
                    samples[name].append(start_ev.elapsed_time(end_ev))
                else:
                    t0 = time.perf_counter()
                    fn(inputs)
                    samples[name].append((time.perf_counter() - t0) * 1e3)
    return samples
