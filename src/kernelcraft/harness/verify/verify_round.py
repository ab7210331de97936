"""Verification: each candidate runs on fresh inputs in its own child; this process compares, trial by trial.

This process computes the reference outputs itself and never imports candidate code; the child only hands back
tensors (mapped through CUDA IPC, or in a file loaded with ``weights_only=True``), one trial at a time. Trials use
seeds that differ per round and per trial, so a candidate cannot learn the inputs it will be judged on.
evaluate_round.py drives it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from kernelcraft.context import RunContext
from kernelcraft.harness.judge.audit import aliased_inputs, judge
from kernelcraft.harness.verify import trials
from kernelcraft.harness.verify.compare import Verdict, compare_trial
from kernelcraft.harness.verify.static_checks import check_source
from kernelcraft.progress import report

if TYPE_CHECKING:
    from kernelcraft.harness.sandbox.worker import Worker


def _widened(xs: list) -> list:
    """Floating-point tensors as float64 (integer ones, and anything else, as they are)."""
    import torch

    return [x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in xs]


class Reference:
    """The reference model, built once per job in this trusted process, and what one call of it holds. No
    reference runs in a candidate's process, so there is no reference output memory for a candidate to read;
    each trial's inputs and outputs are made here when that trial is judged and dropped after it, so memory does
    not grow with the number of trials.

    With ``verify.reference_precision: float64`` the outputs compared against are a float64 copy of the model's on
    the same inputs widened, rounded back to the outputs' own types: at K = 4096 the float32 reference's own
    summation errors are larger than 1e-4 near zero, so at that tolerance only a kernel that sums in the
    reference's exact order could pass against it, while against the exact outputs any accurate kernel does."""

    def __init__(self, ctx: RunContext, problem: str, plan: list[dict]) -> None:
        import torch

        from kernelcraft.harness.sandbox.tasks import flatten_outputs, tensor_bytes

        self.problem = ctx.load_problem(problem)
        self.device = ctx.device
        self.model = self.problem.make_reference(ctx.seed, ctx.device)
        self.input_bytes = self.output_bytes = 0
        self.wide: torch.nn.Module | None = None
        self.unwidened = ""  # why a float64 reference was asked for and could not be had
        self.out_dtypes: list = []
        if plan:
            inputs = trials.make_inputs(self.problem, plan[0], ctx.device)
            with torch.no_grad():
                outs = flatten_outputs(self.model(*inputs))
            self.input_bytes, self.output_bytes = tensor_bytes(inputs), tensor_bytes(outs)
            self.out_dtypes = [o.dtype for o in outs]
            if ctx.config["verify"].get("reference_precision", "native") == "float64":
                self._widen(inputs, outs)
            del inputs, outs
        self.param_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())

    def _widen(self, inputs: list, outs: list) -> None:
        """A float64 copy of the model, kept only if it runs on widened inputs and gives outputs of the same
        shapes (a forward that makes float32 tensors of its own, or an op without a float64 kernel, does not)."""
        import copy

        import torch

        from kernelcraft.harness.sandbox.tasks import flatten_outputs

        wide = copy.deepcopy(self.model).double()
        try:
            with torch.no_grad():
                got = flatten_outputs(wide(*_widened(inputs)))
            if [tuple(o.shape) for o in got] != [tuple(o.shape) for o in outs]:
                raise ValueError("its outputs' shapes differ from the model's")
        except Exception as exc:  # noqa: BLE001 - the reference's own code; it is compared in its own precision
            self.unwidened = f"{type(exc).__name__}: {exc}"[:200]
            return
        self.wide = wide

    @property
    def precision(self) -> str:
        """What candidates are compared against: "float64" with the widened copy, else "native"."""
        return "native" if self.wide is None else "float64"

    def outputs(self, inputs: list) -> list:
        """The outputs a candidate's are compared against on ``inputs`` (verification and the timed calls' checks
        alike): the model's, or its float64 copy's rounded to the model's output types."""
        import torch

        from kernelcraft.harness.sandbox.tasks import flatten_outputs

        with torch.no_grad():
            if self.wide is None:
                return flatten_outputs(self.model(*inputs))
            outs = flatten_outputs(self.wide(*_widened(inputs)))
            return [o.to(d) for o, d in zip(outs, self.out_dtypes, strict=True)]

    def trial(self, plan: list[dict], k: int) -> tuple[list, list]:
        """Inputs and reference outputs of trial ``k``, as the candidate's process made its inputs."""
        inputs = trials.trial_inputs(self.problem, plan, k, self.device)
        return inputs, self.outputs(inputs)


def _received(result: dict, share: bool, out_file: Path) -> dict:
    """The tensors a hand-over carries: mapped through CUDA IPC, or loaded from its file (weights only)."""
    import torch

    from kernelcraft.harness.sandbox.transfer import import_cuda

    if share:
        return {key: [import_cuda(d) if d is not None else None for d in result.get(key) or []]
                for key in ("outputs", "inputs_after") if key in result}
    return torch.load(out_file, weights_only=True, map_location="cpu")


def release_mappings(share: bool) -> None:
    """Drop every CUDA IPC mapping this process holds (after the tensors that used them are gone)."""
    if share:
        import torch

        torch.cuda.synchronize()
        torch.cuda.ipc_collect()


class Verifier:
    """Verification of one problem and round: the trial plan, the reference (built once, here), and the judgement
    of each trial a candidate's process hands over. Only this trusted process compares."""

    def __init__(self, ctx: RunContext, problem: str, round_: int) -> None:
        tol = ctx.config["tolerance"]
        self.ctx, self.problem, self.round = ctx, problem, round_
        self.atol, self.rtol = float(tol["atol"]), float(tol["rtol"])
        self.policy = ctx.config["verify"]["pytorch_compute"]
        self.plan = trials.trial_plan(ctx.seed, problem, round_, int(ctx.config["verify"]["trials"]))
        # On the GPU, outputs are read in place through CUDA IPC instead of being copied out through a file.
        self.share = ctx.device == "cuda"
        self.ref: Reference | None = None
        self.refused: dict[str, str] = {}  # trial distributions the reference refuses, and why

    def settle_inputs(self, worker: Worker) -> None:
        """Ask the reference, each in a child of its own, whether it takes each kind of trial input besides the
        problem's own; the trials of a kind it refuses (it raises) use the problem's own distribution. Asked by
        every job, before any candidate runs: an answer kept on disk is one a candidate's process could rewrite."""
        ctx = self.ctx
        for kind in sorted({s["dist"] for s in self.plan} - {"problem"}):
            spec = next(s for s in self.plan if s["dist"] == kind)
            outcome = worker.call("trial_inputs", {
                "problem": ctx.problem_path(self.problem), "size": ctx.size, "device": ctx.device,
                "weight_seed": ctx.seed, "spec": spec}, float(ctx.config["verify"]["timeout_s"]),
                log=ctx.log_path("verify", self.problem, f"round_{self.round}", f"trial_inputs_{kind}.log"))
            if not (outcome.ok and outcome.result.get("takes")):
                self.refused[kind] = (outcome.result.get("reason") if outcome.ok else outcome.reason) or "?"
                report(self.problem, self.round, "verify", f"the reference refuses {kind} inputs "
                       f"({self.refused[kind]}): those trials use the problem's own distribution")
        self.plan = trials.on_problem_inputs(self.plan, self.refused)

    def prepare(self) -> None:
        self.ref = Reference(self.ctx, self.problem, self.plan)
        if self.ref.unwidened:
            report(self.problem, self.round, "verify", f"the reference does not run in float64 "
                   f"({self.ref.unwidened}): candidates are compared against its native precision")

    def task_kwargs(self, candidate: Path, out_file: Path) -> dict:
        """The verification part of the child's ``evaluate`` task."""
        assert self.ref is not None
        return {"problem": self.ctx.problem_path(self.problem), "size": self.ctx.size, "candidate": str(candidate),
                "device": self.ctx.device, "weight_seed": self.ctx.seed, "plan": self.plan, "out": str(out_file),
                "poison_bytes": self.ref.output_bytes, "share": self.share}

    def judge_trial(self, result: dict, out_file: Path) -> Verdict:
        """One trial: the reference's outputs on the same inputs, made here, against what the child handed
        over; the child's inputs afterwards against this process's copy; aliasing of outputs and inputs; and the
        audit of the trial's calls."""
        assert self.ref is not None
        t0 = time.perf_counter()
        k = int(result["trial"])
        try:
            got = _received(result, self.share, out_file)
        except Exception as exc:  # a malformed hand-over is the candidate's failure
            return Verdict(False, [f"unreadable outputs: {type(exc).__name__}: {exc}"[:300]])
        try:
            inputs, refs = self.ref.trial(self.plan, k)
            verdict = compare_trial(got["outputs"], result["meta"], refs, inputs, got["inputs_after"],
                                    self.ctx.device, self.atol, self.rtol)
            extra = [f"output aliases input {i} (returns an input's memory)"
                     for i in aliased_inputs(got["outputs"], got["inputs_after"])]
            extra += judge(result.get("audit") or {}, self.policy)
            del inputs, refs
        finally:
            got.clear()
            release_mappings(self.share)
        if extra:
            verdict.reasons = extra + verdict.reasons
            verdict.correct = False
            verdict.passes_strict = False
        verdict.phases = {"judge_s": time.perf_counter() - t0}
        return verdict

    def doc(self, results: dict[str, dict], total: int) -> dict:
        ok = sum(r["correct"] for r in results.values())
        report(self.problem, self.round, "verify", f"{ok}/{len(results)} correct ({total} candidates)")
        ref = self.ref
        return {"tolerance": {"atol": self.atol, "rtol": self.rtol}, "pytorch_compute": self.policy,
                "reference_precision": ref.precision if ref else "native",
                "reference_float64_refused": ref.unwidened if ref else "", "trials": self.plan,
                "inputs_refused": self.refused, "results": results}


def static_verdict(ctx: RunContext, candidate: dict) -> Verdict | None:
    """A rejection from the source alone (checked before anything runs), else None."""
    reasons = check_source((Path(ctx.root) / candidate["path"]).read_text(errors="replace"))
    return Verdict(False, reasons) if reasons else None
