"""The verify stage: run each compiled candidate in its own child on fresh inputs, compare in this process.

This process computes the reference outputs itself and never imports candidate code; the child only hands back
tensors in a file loaded with ``weights_only=True``. Trials use seeds that differ per round and per trial, so a
candidate cannot learn the inputs it will be judged on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from kernelcraft import layout
from kernelcraft.context import RunContext
from kernelcraft.harness import trials
from kernelcraft.harness.audit import judge
from kernelcraft.harness.compare import Verdict, compare_trial, merge_verdicts
from kernelcraft.harness.static_checks import check_source
from kernelcraft.harness.worker import Worker
from kernelcraft.progress import report


class Reference:
    """The reference's outputs (and the inputs that produced them) for each trial, computed once per job in this
    trusted process; the reference never runs in a candidate's process, so there is no reference output memory
    for a candidate to read."""

    def __init__(self, ctx: RunContext, problem: str, plan: list[dict]) -> None:
        import torch

        from kernelcraft.harness.tasks import flatten_outputs

        self.problem = ctx.load_problem(problem)
        model = self.problem.make_reference(ctx.seed, ctx.device)
        self.trials = []
        for spec in plan:
            inputs = trials.make_inputs(self.problem, spec, ctx.device)
            with torch.no_grad():
                outs = [o.detach().clone() for o in flatten_outputs(model(*inputs))]
            self.trials.append((inputs, outs))
        self.output_bytes = sum(o.numel() * o.element_size() for o in self.trials[0][1]) if self.trials else 0


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


def verify_candidates(ctx: RunContext, problem: str, round_: int, candidates: list[dict],
                      compiled: dict[str, dict], timeout: float, threads: int = 1) -> dict:
    """Verify every compiled candidate, one child at a time. (Several at once was measured on the H100: no
    consistent gain once each child finds its CUDA context ready, see zygote.py's spare, while contention made
    every candidate's own wall time longer.)"""
    import torch

    tol = ctx.config["tolerance"]
    atol, rtol = float(tol["atol"]), float(tol["rtol"])
    policy = ctx.config["verify"]["pytorch_compute"]
    plan = trials.trial_plan(ctx.seed, problem, round_, int(ctx.config["verify"]["trials"]))
    # On the GPU, outputs are read in place through CUDA IPC instead of being copied out through a file.
    share = ctx.device == "cuda"
    # Each candidate as built: a compile repair's file when the compile stage repaired it.
    todo = [c | {"path": layout.evaluated_path(c, compiled[c["id"]])} for c in candidates
            if compiled.get(c["id"], {}).get("compiled")]
    results: dict[str, dict] = {}
    tmp = ctx.root / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env = ctx.worker_env(gpu=True, threads=threads)
    runnable = []
    for cand in todo:
        static = check_source((Path(ctx.root) / cand["path"]).read_text(errors="replace"))
        if static:
            results[cand["id"]] = Verdict(False, static).as_dict() | {"wall_s": 0.0}
        else:
            runnable.append(cand)
    worker = Worker(env=env, work_dir=tmp)
    if runnable:
        worker.start()  # its imports overlap the reference's computation below
    clock = time.perf_counter
    t0 = clock()
    ref = Reference(ctx, problem, plan) if runnable else None
    job = {"reference_s": round(clock() - t0, 3)}

    def judge_trials(got: list[dict]) -> Verdict:
        assert ref is not None
        verdict = merge_verdicts([
            compare_trial(t["outputs"], t["meta"], outs, inputs, t["inputs_after"],
                          torch.device(ctx.device).type, atol, rtol)
            for t, (inputs, outs) in zip(got, ref.trials, strict=True)
        ])
        extra = _audit_reasons(got, policy)
        if extra:
            verdict.reasons = extra + verdict.reasons
            verdict.correct = False
            verdict.passes_strict = False
        return verdict

    def verify_one(cand: dict) -> dict:
        assert ref is not None
        path = Path(ctx.root) / cand["path"]
        out_file = tmp / f"{problem}-r{round_}-{cand['id']}.outputs.pt"
        log = ctx.log_path("candidates", problem, f"round_{round_}", f"{cand['id']}.verify.log")
        kwargs = {
            "problem": ctx.problem_path(problem), "size": ctx.size, "candidate": str(path),
            "device": ctx.device, "weight_seed": ctx.seed, "plan": plan, "out": str(out_file),
            "poison_bytes": ref.output_bytes, "share": share,
        }
        if share:
            outcome = worker.call("outputs", kwargs, timeout, log=log,
                                  on_result=lambda result: _judge_shared(result, judge_trials))
            if outcome.ok:
                verdict = outcome.result.get("handled") or Verdict(False, ["no outputs were handed over"])
            else:
                verdict = Verdict(False, [outcome.reason or "failed"])
        else:
            outcome = worker.call("outputs", kwargs, timeout, log=log)
            if not outcome.ok:
                verdict = Verdict(False, [outcome.reason or "failed"])
            else:
                try:
                    verdict = judge_trials(torch.load(out_file, weights_only=True, map_location="cpu"))
                except Exception as exc:  # a malformed result file is the candidate's failure
                    verdict = Verdict(False, [f"unreadable outputs: {type(exc).__name__}: {exc}"[:300]])
        out_file.unlink(missing_ok=True)
        return verdict.as_dict() | {"wall_s": round(outcome.wall_s, 3), "released_s": outcome.released_s}

    try:
        for cand in runnable:
            results[cand["id"]] = verify_one(cand)
    finally:
        worker.close()
    job |= {"worker_ready_s": worker.ready_s and round(worker.ready_s, 3), "total_s": round(clock() - t0, 3)}
    results = {c["id"]: results[c["id"]] | {"path": c["path"]} for c in todo}  # later stages use this file
    ok = sum(r["correct"] for r in results.values())
    report(problem, round_, "verify", f"{ok}/{len(results)} correct ({len(candidates)} candidates)")
    return {"tolerance": {"atol": atol, "rtol": rtol}, "pytorch_compute": policy, "trials": plan,
            "results": results, "job": job}
