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


def _errors(out: Any, ref: Any, atol: float) -> tuple[float, float]:
    import torch

    diff = (out.double() - ref.double()).abs()
    if diff.numel() == 0:
        return 0.0, 0.0
    # Relative error with |ref| floored at atol: near-zero references would otherwise dominate with noise.
    rel = diff / ref.double().abs().clamp_min(max(atol, torch.finfo(torch.float32).tiny))
    return float(diff.max()), float(rel.max())


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
            finite_ref = torch.isfinite(ref)
            bad = ~torch.isfinite(out) & finite_ref
            if bool(bad.any()):
                reasons.append(f"{tag} has {int(bad.sum())} NaN/Inf values where the reference is finite")
                continue
            a, r = _errors(out, ref, atol)
            max_abs, max_rel = max(max_abs, a), max(max_rel, r)
            strict = strict and bool(torch.allclose(out, ref, atol=STRICT_TOL, rtol=STRICT_TOL, equal_nan=True))
            if not torch.allclose(out, ref, atol=atol, rtol=rtol, equal_nan=True):
                reasons.append(f"{tag}: max error above tolerance (max abs {a:.3g}, atol={atol:g}, rtol={rtol:g})")
        else:
            mismatched = int((out != ref).sum())
            if mismatched:
                reasons.append(f"{tag}: {mismatched} elements differ from the reference")
                strict = False
    for k, (before, after) in enumerate(zip(inputs_before, inputs_after, strict=True)):
        if isinstance(before, torch.Tensor) and after is not None:
            after = after.to(before.device)
            if after.shape != before.shape or not torch.equal(after, before):
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
