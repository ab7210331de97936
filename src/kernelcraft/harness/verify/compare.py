"""The comparator: decides whether a candidate's outputs match the reference. Runs only in the trusted parent.

Tolerance is elementwise, ``|out - ref| <= atol + rtol * |ref|`` on every element (torch.allclose's rule), and the
verdict at KernelBench's 1e-4 is recorded beside the configured one so both can be reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kernelcraft.harness.verify import device_kernels

STRICT_TOL = 1e-4


@dataclass
class Verdict:
    correct: bool
    reasons: list[str] = field(default_factory=list)
    max_abs_err: float | None = None
    max_rel_err: float | None = None
    passes_strict: bool | None = None
    phases: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return ({"phases": self.phases} if self.phases else {}) | {
            "correct": self.correct,
            "reasons": self.reasons,
            "max_abs_err": self.max_abs_err,
            "max_rel_err": self.max_rel_err,
            "passes_1e-4": self.passes_strict,
        }


# Elements compared at a time: the comparison's temporaries (a slice of each side in the working precision, the
# difference and masks: about eight slices' worth) stay a small share of the outputs whatever their size, instead of
# several copies of a multi-GB output. At most CHUNK (1 << 24 was about 0.8 GB of float64 temporaries, a third of the
# parent's peak on the H200, eval_memory.py), at least MIN_CHUNK (fewer, larger kernels for small outputs), and
# otherwise a SLICES-th of the output, so a 64 MB output does not pay a fixed 200 MB of temporaries.
CHUNK = 1 << 22
MIN_CHUNK = 1 << 18
SLICES = 32


def chunk_elements(numel: int) -> int:
    """Elements per slice for an output of ``numel`` elements."""
    return int(min(CHUNK, max(MIN_CHUNK, numel // SLICES)))


def _flat(t: Any) -> Any:
    return t.reshape(-1)


def _chunks(out: Any, ref: Any) -> Any:
    a, b = _flat(out), _flat(ref)
    step = chunk_elements(b.numel())
    for start in range(0, b.numel(), step):
        yield a[start:start + step], b[start:start + step]


def _working_dtype(dtype: Any) -> Any:
    """Single precision at least (half and bfloat16 are widened; float64 and complex stay as they are): the
    tolerances compared against (1e-4 and looser) are far above float32's rounding of a difference."""
    import torch

    return torch.promote_types(dtype, torch.float32)


def _compare_floats(out: Any, ref: Any, atol: float, rtol: float) -> dict[str, Any]:
    """Non-finite values where the reference is finite, max absolute and relative error (|ref| floored at atol:
    near-zero references would otherwise dominate with noise), and whether every element is within the
    configured and within the 1e-4 tolerance (torch.allclose's rule), slice by slice.

    The figures accumulate on the device and are read once at the end: reading them per slice synchronised the
    GPU about eight times a slice, and a GB-sized output has dozens of slices."""
    import torch

    if ref.numel() == 0:
        return {"bad": 0, "max_abs": 0.0, "max_rel": 0.0, "ok": True, "strict": True}
    floor = max(atol, torch.finfo(torch.float32).tiny)
    if device_kernels.takes_floats(out, ref):
        return device_kernels.compare_floats(out, ref, atol, rtol, floor, STRICT_TOL)
    work = _working_dtype(ref.dtype)
    acc = torch.zeros(5, dtype=torch.float64, device=ref.device)  # bad, max_abs, max_rel, not ok, not strict
    for o, r in _chunks(out, ref):
        o, r = o.to(work), r.to(work)
        finite_r = torch.isfinite(r)
        bad = (~torch.isfinite(o) & finite_r).sum()
        diff = (o - r).abs()
        same = (o == r) | (torch.isnan(o) & torch.isnan(r))
        diff = torch.where(same, torch.zeros_like(diff), diff)
        counted = finite_r & ~torch.isnan(diff)
        max_abs = torch.where(counted, diff, 0.0).amax()
        max_rel = torch.where(counted, diff / r.abs().clamp_min(floor), 0.0).amax()
        exact_where_infinite = (same | finite_r).all()  # an infinite reference is matched only exactly
        not_ok = ~(exact_where_infinite & (diff <= atol + rtol * r.abs()).all())
        not_strict = ~(exact_where_infinite & (diff <= STRICT_TOL + STRICT_TOL * r.abs()).all())
        step = torch.stack([bad.double(), max_abs.double(), max_rel.double(), not_ok.double(), not_strict.double()])
        acc = torch.stack([acc[0] + step[0], torch.maximum(acc[1], step[1]), torch.maximum(acc[2], step[2]),
                           torch.maximum(acc[3], step[3]), torch.maximum(acc[4], step[4])])
        del o, r, diff, same, finite_r, counted
    bad, max_abs, max_rel, not_ok, not_strict = acc.tolist()
    return {"bad": int(bad), "max_abs": max_abs, "max_rel": max_rel, "ok": not not_ok, "strict": not not_strict}


def _as_words(t: Any) -> Any:
    """``t``'s elements as unsigned-width integers of its element size (for bit-for-bit equality)."""
    import torch

    words = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}.get(t.element_size())
    return t.view(words) if words is not None else t


def _mismatches(out: Any, ref: Any) -> int:
    """Elements that differ bit for bit (a NaN left alone is no change), counted on the device and read once."""
    if device_kernels.takes(out, ref):
        return device_kernels.count_differing(out, ref)
    if out.dtype == ref.dtype:
        out, ref = _as_words(out), _as_words(ref)
    counts = [(o != r).sum() for o, r in _chunks(out, ref)]
    return int(sum(counts).item()) if counts else 0


def compare_trial(outputs: list, meta: list[dict], refs: list, inputs_before: list, inputs_after: list,
                  device_type: str, atol: float, rtol: float) -> Verdict:
    """Compare one trial's outputs with the reference's; every problem found is a named reason."""
    import torch

    reasons: list[str] = []
    if len(outputs) != len(refs):
        return Verdict(False, [f"returned {len(outputs)} outputs, the reference returns {len(refs)}"])
    max_abs = 0.0
    max_rel = 0.0
    strict = True
    for k, (out, m, ref) in enumerate(zip(outputs, meta, refs, strict=True)):
        tag = f"output {k}" if len(refs) > 1 else "output"
        if m["device"] != device_type:
            reasons.append(f"{tag} is on {m['device']}, expected {device_type}")
        if tuple(out.shape) != tuple(ref.shape):
            reasons.append(f"{tag} has shape {tuple(out.shape)}, expected {tuple(ref.shape)}")
            continue
        if out.dtype != ref.dtype:
            reasons.append(f"{tag} has dtype {out.dtype}, expected {ref.dtype}")
            continue
        out = out.to(ref.device)
        if out.is_floating_point() or out.is_complex():
            c = _compare_floats(out, ref, atol, rtol)
            if c["bad"]:
                reasons.append(f"{tag} has {c['bad']} NaN/Inf values where the reference is finite")
                continue
            max_abs, max_rel = max(max_abs, c["max_abs"]), max(max_rel, c["max_rel"])
            strict = strict and c["strict"]
            if not c["ok"]:
                reasons.append(f"{tag}: max error above tolerance (max abs {c['max_abs']:.3g}, atol={atol:g}, "
                               f"rtol={rtol:g})")
        else:
            mismatched = _mismatches(out, ref)
            if mismatched:
                reasons.append(f"{tag}: {mismatched} elements differ from the reference")
                strict = False
    for k, (before, after) in enumerate(zip(inputs_before, inputs_after, strict=True)):
        if isinstance(before, torch.Tensor) and after is not None:
            after = after.to(before.device)
            if after.shape != before.shape or after.dtype != before.dtype or _mismatches(after, before):
                reasons.append(f"modified input {k} in place")
    return Verdict(not reasons, reasons, max_abs, max_rel, strict and not reasons)


def merge_verdicts(verdicts: list[Verdict]) -> Verdict:
    """A candidate is correct only if every trial is; errors are the worst over trials."""
    reasons: list[str] = []
    for v in verdicts:
        for r in v.reasons:
            if r not in reasons:
                reasons.append(r)
    abs_errs = [v.max_abs_err for v in verdicts if v.max_abs_err is not None]
    rel_errs = [v.max_rel_err for v in verdicts if v.max_rel_err is not None]
    return Verdict(
        correct=bool(verdicts) and all(v.correct for v in verdicts),
        reasons=reasons,
        max_abs_err=max(abs_errs) if abs_errs else None,
        max_rel_err=max(rel_errs) if rel_errs else None,
        passes_strict=bool(verdicts) and all(bool(v.passes_strict) for v in verdicts),
    )
