"""Verification: each candidate runs on fresh inputs in its own child; this process compares.

This process computes the reference outputs itself and never imports candidate code; the child only hands back
tensors (mapped through CUDA IPC, or in a file loaded with ``weights_only=True``). Trials use seeds that differ per
round and per trial, so a candidate cannot learn the inputs it will be judged on. evaluate_round.py drives it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from kernelcraft.context import RunContext
from kernelcraft.harness import trials
from kernelcraft.harness.audit import judge
from kernelcraft.harness.compare import Verdict, compare_trial, merge_verdicts
from kernelcraft.harness.static_checks import check_source
from kernelcraft.progress import report


class Reference:
    """The reference's outputs (and the inputs that produced them) for each trial, computed once per job in this
    trusted process; no reference runs in a candidate's process before or during its verification, so there is
    no reference output memory for a candidate to read."""

    def __init__(self, ctx: RunContext, problem: str, plan: list[dict]) -> None:
        import torch

        from kernelcraft.harness.tasks import flatten_outputs, tensor_bytes

        self.problem = ctx.load_problem(problem)
        model = self.problem.make_reference(ctx.seed, ctx.device)
        self.trials = []
        for spec in plan:
            inputs = trials.make_inputs(self.problem, spec, ctx.device)
            with torch.no_grad():
                outs = [o.detach().clone() for o in flatten_outputs(model(*inputs))]
            self.trials.append((inputs, outs))
        self.input_bytes, self.output_bytes = (tensor_bytes(self.trials[0][0]), tensor_bytes(self.trials[0][1])
                                               ) if self.trials else (0, 0)


def _audit_reasons(results: list[dict], policy: str) -> list[str]:
    reasons: list[str] = []
    for trial in results:
        audit = trial.get("audit") or {}
        for r in judge(audit.get("torch_ops") or {}, audit.get("launches") or {},
                       audit.get("extension_calls") or {}, policy):
            if r not in reasons:
                reasons.append(r)
        for i in audit.get("aliased_inputs") or []:
            r = f"output aliases input {i} (returns an input's memory)"
            if r not in reasons:
                reasons.append(r)
    return reasons


def _judge_shared(result: dict, judge_trials: Callable[[list[dict]], Verdict]) -> Verdict:
    """Map the child's exported tensors, judge them on the GPU, and drop every mapping before the child goes."""
    import torch

    from kernelcraft.harness.transfer import import_cuda

    t0 = time.perf_counter()
    got = []
    for t in result["trials"]:
        got.append(t | {
            "outputs": [import_cuda(d) for d in t["outputs"]],
            "inputs_after": [import_cuda(d) if d is not None else None for d in t["inputs_after"]],
        })
    t1 = time.perf_counter()
    try:
        verdict = judge_trials(got)
        torch.cuda.synchronize()
    finally:
        del got
        torch.cuda.ipc_collect()
    verdict.phases = dict(result.get("phases") or {}) | {"map_s": t1 - t0, "compare_s": time.perf_counter() - t1}
    return verdict


class Verifier:
    """Verification of one problem and round: the trial plan, the reference's outputs (computed once, here), and
    the judgement of what a candidate's child hands over. Only this trusted process compares."""

    def __init__(self, ctx: RunContext, problem: str, round_: int) -> None:
        tol = ctx.config["tolerance"]
        self.ctx, self.problem, self.round = ctx, problem, round_
        self.atol, self.rtol = float(tol["atol"]), float(tol["rtol"])
        self.policy = ctx.config["verify"]["pytorch_compute"]
        self.plan = trials.trial_plan(ctx.seed, problem, round_, int(ctx.config["verify"]["trials"]))
        # On the GPU, outputs are read in place through CUDA IPC instead of being copied out through a file.
        self.share = ctx.device == "cuda"
        self.ref: Reference | None = None

    def prepare(self) -> None:
        self.ref = Reference(self.ctx, self.problem, self.plan)

    def task_kwargs(self, candidate: Path, out_file: Path) -> dict:
        """The verification part of the child's ``evaluate`` task."""
        assert self.ref is not None
        return {"problem": self.ctx.problem_path(self.problem), "size": self.ctx.size, "candidate": str(candidate),
                "device": self.ctx.device, "weight_seed": self.ctx.seed, "plan": self.plan, "out": str(out_file),
                "poison_bytes": self.ref.output_bytes, "share": self.share}

    def judge_trials(self, got: list[dict]) -> Verdict:
        import torch

        assert self.ref is not None
        verdict = merge_verdicts([
            compare_trial(t["outputs"], t["meta"], outs, inputs, t["inputs_after"],
                          torch.device(self.ctx.device).type, self.atol, self.rtol)
            for t, (inputs, outs) in zip(got, self.ref.trials, strict=True)
        ])
        extra = _audit_reasons(got, self.policy)
        if extra:
            verdict.reasons = extra + verdict.reasons
            verdict.correct = False
            verdict.passes_strict = False
        return verdict

    def judge_handover(self, result: dict, out_file: Path) -> Verdict:
        """Judge what the child handed over: mapped through CUDA IPC, or loaded from its file (weights only)."""
        import torch

        if self.share:
            return _judge_shared(result, self.judge_trials)
        try:
            return self.judge_trials(torch.load(out_file, weights_only=True, map_location="cpu"))
        except Exception as exc:  # a malformed result file is the candidate's failure
            return Verdict(False, [f"unreadable outputs: {type(exc).__name__}: {exc}"[:300]])

    def doc(self, results: dict[str, dict], total: int) -> dict:
        ok = sum(r["correct"] for r in results.values())
        report(self.problem, self.round, "verify", f"{ok}/{len(results)} correct ({total} candidates)")
        return {"tolerance": {"atol": self.atol, "rtol": self.rtol}, "pytorch_compute": self.policy,
                "trials": self.plan, "results": results}


def static_verdict(ctx: RunContext, candidate: dict) -> Verdict | None:
    """A rejection from the source alone (checked before anything runs), else None."""
    reasons = check_source((Path(ctx.root) / candidate["path"]).read_text(errors="replace"))
    return Verdict(False, reasons) if reasons else None
