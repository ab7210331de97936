"""The comparator: decides whether a candidate's outputs match the reference. Runs only in the trusted parent.

Tolerance is elementwise, ``|out - ref| <= atol + rtol * |ref|`` on every element (torch.allclose's rule), and the
verdict at KernelBench's 1e-4 is recorded beside the configured one so both can be reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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


# Elements compared at a time: the comparison's temporaries (float64 copies of a slice of each side, the difference
# and masks: about six slices' worth, 200 MB at this size) stay small whatever the output's size, instead of several
# copies of a multi-GB output. At 1 << 24 they were about 0.8 GB of the parent's peak (H200, eval_memory.py).
CHUNK = 1 << 22


def _flat(t: Any) -> Any:
    return t.reshape(-1)


def _chunks(out: Any, ref: Any) -> Any:
    a, b = _flat(out), _flat(ref)
    for start in range(0, b.numel(), CHUNK):
        yield a[start:start + CHUNK], b[start:start + CHUNK]


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
    acc = torch.zeros(5, dtype=torch.float64, device=ref.device)  # bad, max_abs, max_rel, not ok, not strict
    for o, r in _chunks(out, ref):
        o, r = o.double(), r.double()
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
        step = torch.stack([bad.double(), max_abs, max_rel, not_ok.double(), not_strict.double()])
        acc = torch.stack([acc[0] + step[0], torch.maximum(acc[1], step[1]), torch.maximum(acc[2], step[2]),
                           torch.maximum(acc[3], step[3]), torch.maximum(acc[4], step[4])])
        del o, r, diff, same, finite_r, counted
    bad, max_abs, max_rel, not_ok, not_strict = acc.tolist()
    return {"bad": int(bad), "max_abs": max_abs, "max_rel": max_rel, "ok": not not_ok, "strict": not not_strict}


def _mismatches(out: Any, ref: Any) -> int:
    """Elements that differ, counted on the device and read once."""
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
