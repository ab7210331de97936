"""The timed calls' inputs: every timed call sees contents no earlier call saw, in the same buffers.

Why: with one input set (KernelBench's sizes leave room for no more) every timed call used to get the same
values, so a kernel that keys a cache on a sample of its inputs' contents computed once and then only copied its
answer, and with a spin to stay above the speed-of-light floor it could claim the speedup of a kernel it never
ran (a compute-bound matmul's floor is far below any fp32 kernel's time). Before each timed call, outside the timed
region, the call's set is moved from its previous random halving to a new one (verify/trials.rehalve: exact, in
place, no memory beside the set), drawn from the call's index: a cache keyed on contents misses every time, and
one keyed on pointers returns a stale answer the parent's check finds. The parent makes the checked call's
inputs the same way, from the same seeds, on its own copy of the set.
"""

from __future__ import annotations

from typing import Any

from kernelcraft.harness.verify.trials import rehalve


class CallInputs:
    """The input sets of one timing, renewed per call (``for_call``) and returned to their base (``restore``)."""

    def __init__(self, sets: list, seed: int) -> None:
        self.sets = sets
        self.seed = int(seed)
        self._drawn: list[int | None] = [None] * len(sets)

    def _seed(self, call: int) -> int:
        return (self.seed * 1_000_003 + 7919 * (call + 1)) % 2**62

    def for_call(self, call: int) -> Any:
        """The inputs of timed call ``call`` (0-based over the whole timing): its set, halved at random afresh."""
        k = call % len(self.sets)
        seed = self._seed(call)
        rehalve(self.sets[k], self._drawn[k], seed)
        self._drawn[k] = seed
        return self.sets[k]

    def restore(self) -> None:
        """Every set back to its base values (exactly: each element was only halved)."""
        for k, drawn in enumerate(self._drawn):
            if drawn is not None:
                rehalve(self.sets[k], drawn, None)
                self._drawn[k] = None
