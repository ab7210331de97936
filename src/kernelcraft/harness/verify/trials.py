"""The verification trials: which inputs a candidate is judged on, reproduced identically by the trusted parent
(for the reference) and by the candidate's child (for the candidate).

Why several kinds: a kernel can pass on the problem's own U/N(0,1) inputs while being wrong, by returning a
near-constant that is within tolerance there (softmax over 65536 columns is ~1.5e-5 everywhere), or by caching
outputs keyed on input pointers or a call counter. So trials vary the distribution (shifted and scaled, uniform),
refill the same buffers with new contents, and repeat a check late, after many calls.
"""

from __future__ import annotations

import hashlib
from typing import Any

DISTRIBUTIONS = ("problem", "scaled", "uniform")
LATE_CALLS = 8


def trial_plan(seed: int, problem: str, round_: int, trials: int) -> list[dict]:
    """``trials`` trials plus a late one. Trial 1 reuses trial 0's buffers with new contents; the late trial
    reuses the last buffers after LATE_CALLS extra calls. Seeds differ per run seed, problem and round."""
    digest = hashlib.sha256(f"verify|{seed}|{problem}|{round_}".encode()).digest()
    base = int.from_bytes(digest[:4], "little")
    plan = []
    for k in range(trials):
        plan.append({"seed": base + 7919 * k, "dist": DISTRIBUTIONS[k % len(DISTRIBUTIONS)],
                     "reuse": k == 1, "warm_calls": 0})
    plan.append({"seed": base + 7919 * trials, "dist": "scaled", "reuse": True, "warm_calls": LATE_CALLS})
    return plan


def _seeded(t: Any, seed: int, index: int) -> Any:
    """``t`` overwritten in place with U[0, 1) values from ``seed``; each input of a call its own stream, so two
    inputs of the same shape never hold the same values (A @ B would not tell A from B)."""
    import torch

    gen = torch.Generator(device=t.device).manual_seed(seed + 7 * index)
    return t.uniform_(0.0, 1.0, generator=gen)


def _transform(t: Any, dist: str, seed: int, index: int) -> Any:
    """In place: at KernelBench's sizes an input is several GB, and a transformed copy next to it would double
    the inputs' memory in both processes."""
    import torch

    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or dist == "problem":
        return t
    if dist == "scaled":
        return t.mul_(8.0).add_(2.0)
    return _seeded(t, seed, index)


def make_inputs(problem: Any, spec: dict, device: str) -> list:
    """Fresh inputs for a trial: the problem's get_inputs() under the trial seed, then the distribution."""
    import torch

    with torch.no_grad():
        return [_transform(t, spec["dist"], spec["seed"], i)
                for i, t in enumerate(problem.make_inputs(spec["seed"], device))]


def refill(buffers: list, fresh: list) -> list:
    """Copy ``fresh`` contents into the existing tensors (same pointers, new values); non-tensors are replaced.

    The fresh set exists beside the buffers until copied (at KernelBench's sizes, the child's peak for problems
    whose outputs are small). Renewing the buffers in place instead, with U[0, 1) values, was measured to let
    near-constant outputs, pointer and call-count caches and half-written outputs through (softmax of values in
    [2, 10] is below 1e-2 everywhere): the problem's own distribution, shifted and scaled, is what catches them."""
    import torch

    out = []
    with torch.no_grad():
        for old, new in zip(buffers, fresh, strict=True):
            if isinstance(old, torch.Tensor) and isinstance(new, torch.Tensor) and old.shape == new.shape:
                old.copy_(new)
                out.append(old)
            else:
                out.append(new)
    return out
