"""The verification trials: which inputs a candidate is judged on, reproduced identically by the trusted parent
(for the reference) and by the candidate's child (for the candidate).

Why several kinds: a kernel can pass on the problem's own U/N(0,1) inputs while being wrong, by returning a
near-constant that is within tolerance there (softmax over 65536 columns is ~1.5e-5 everywhere), or by caching
outputs keyed on input pointers or a call counter. So trials vary the distribution (shifted and scaled, uniform),
renew the same buffers' contents in place, and repeat a check late, after many calls.
"""

from __future__ import annotations

import hashlib
from typing import Any

LATE_CALLS = 8


def _dists(trials: int) -> list[str]:
    """Each regular trial's distribution: U[0, 1) first, then the problem's own, then (renewing that trial's
    buffers) the problem's shifted and scaled, then alternately the problem's own and scaled. A reuse trial starts
    from the previous trial's values, and U[0, 1) values are a weak start (softmax of them, or of them shifted and
    scaled, is near-constant): so uniform comes first, never right before a reuse."""
    if trials <= 1:
        return ["problem"][:trials]
    return ["uniform", "problem"] + ["scaled" if k % 2 == 0 else "problem" for k in range(2, trials)]


def trial_plan(seed: int, problem: str, round_: int, trials: int) -> list[dict]:
    """``trials`` trials plus a late one. Trial 2 renews trial 1's buffers in place (scaled); the late trial renews
    the last buffers after LATE_CALLS extra calls (scaled, or as they are where the last trial already was).
    Seeds differ per run seed, problem and round."""
    digest = hashlib.sha256(f"verify|{seed}|{problem}|{round_}".encode()).digest()
    base = int.from_bytes(digest[:4], "little")
    dists = _dists(trials)
    plan = [{"seed": base + 7919 * k, "dist": d, "reuse": k == 2, "warm_calls": 0} for k, d in enumerate(dists)]
    late = "problem" if dists and dists[-1] == "scaled" else "scaled"
    plan.append({"seed": base + 7919 * trials, "dist": late, "reuse": True, "warm_calls": LATE_CALLS})
    return plan


def on_problem_inputs(plan: list[dict], kinds: set[str] | dict) -> list[dict]:
    """The plan with every trial of a distribution in ``kinds`` drawn from the problem's own distribution instead:
    for a reference that refuses those inputs (probabilities shifted out of [0, 1]) there is nothing to compare
    a candidate with on them."""
    return [s | {"dist": "problem"} if s["dist"] in kinds else s for s in plan]


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


def renew(buffers: list, spec: dict) -> list:
    """New contents in the same buffers, made in place: every floating input element is halved or kept, at
    random (from the trial seed; halving is exact, and keeps zeros, signs and any triangular or banded structure
    the problem's inputs have), then the trial's distribution is applied.

    A pointer- or call-count-keyed cache returns its stale answer for about half the elements, and the problem's
    own distribution, shifted and scaled, still catches near-constant outputs (renewing with U[0, 1) values did
    not: softmax of values in [2, 10] is below 1e-2 everywhere). Made slice by slice, the new contents need no
    second set of inputs beside the first: a fresh set copied in was the child's peak at KernelBench's sizes for
    problems whose outputs are small (a sum over 6 GB of inputs)."""
    rehalve(buffers, None, spec["seed"])
    return [_transform(t, spec["dist"], spec["seed"], i) for i, t in enumerate(buffers)]


def rehalve(buffers: list, undo: int | None, seed: int | None) -> None:
    """In place: undo the random halving drawn from ``undo`` (double what it halved), then halve at random from
    ``seed`` (either may be None). Exact for normal floats, so any sequence of these leaves each element its base
    value times 1 or 1/2, and two processes that draw from the same seeds hold the same values."""
    import torch

    from kernelcraft.harness.verify import device_kernels

    with torch.no_grad():
        for i, t in enumerate(buffers):
            # (a broadcast view, stride 0, cannot be written element by element: it keeps its values)
            if not (isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() and 0 not in t.stride()):
                continue
            if device_kernels.takes_to_renew(t):
                device_kernels.rehalve(t, None if undo is None else undo + 7 * i,
                                       None if seed is None else seed + 7 * i)
                continue
            gens = [None if s is None else torch.Generator(device=t.device).manual_seed(s + 7 * i)
                    for s in (undo, seed)]
            flat = t.view(-1) if t.is_contiguous() else None
            parts = [t] if flat is None else [flat[k:k + RENEW_SLICE] for k in range(0, flat.numel(), RENEW_SLICE)]
            for part in parts:
                for gen, factor in zip(gens, (2.0, 0.5), strict=True):
                    if gen is not None:
                        part.mul_(_factors(part, gen, factor))


# Elements renewed at a time: the random mask of one slice is the only temporary.
RENEW_SLICE = 1 << 22


def _factors(like: Any, gen: Any, factor: float) -> Any:
    """``factor`` or 1.0 per element of ``like``, each with probability one half."""
    import torch

    coin = torch.rand(like.shape, generator=gen, device=like.device) < 0.5
    return torch.where(coin, factor, 1.0).to(like.dtype)


def trial_inputs(problem: Any, plan: list[dict], k: int, device: str) -> list:
    """The inputs of trial ``k`` as the candidate's process has them: fresh, or (a reuse trial) the previous
    trial's, renewed in place. The trusted parent remakes them this way for the reference."""
    spec = plan[k]
    if spec.get("reuse") and k > 0:
        return renew(trial_inputs(problem, plan, k - 1, device), spec)
    return make_inputs(problem, spec, device)
