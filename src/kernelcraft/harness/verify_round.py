"""The verify stage: run each compiled candidate in its own child on fresh inputs, compare in this process.

This process computes the reference outputs itself and never imports candidate code; the child only hands back
tensors in a file loaded with ``weights_only=True``. Trials use seeds that differ per round and per trial, so a
candidate cannot learn the inputs it will be judged on.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from kernelcraft.context import RunContext
from kernelcraft.harness.compare import Verdict, compare_trial, merge_verdicts
from kernelcraft.harness.worker import Worker
from kernelcraft.progress import report


def trial_seeds(seed: int, problem: str, round_: int, trials: int) -> list[int]:
    digest = hashlib.sha256(f"verify|{seed}|{problem}|{round_}".encode()).digest()
    base = int.from_bytes(digest[:4], "little")
    return [base + 7919 * k for k in range(trials)]


class Reference:
    """The reference's outputs (and the inputs that produced them) for each trial seed, computed once per job."""

    def __init__(self, ctx: RunContext, problem: str, seeds: list[int]) -> None:
        import torch

        from kernelcraft.harness.tasks import flatten_outputs

        self.problem = ctx.load_problem(problem)
        model = self.problem.make_reference(ctx.seed, ctx.device)
        self.trials = []
        for s in seeds:
            inputs = self.problem.make_inputs(s, ctx.device)
            with torch.no_grad():
                outs = [o.detach().clone() for o in flatten_outputs(model(*inputs))]
            self.trials.append((inputs, outs))


def verify_candidates(ctx: RunContext, problem: str, round_: int, candidates: list[dict],
                      compiled: dict[str, dict], timeout: float, threads: int = 1) -> dict:
    import torch

    tol = ctx.config["tolerance"]
    atol, rtol = float(tol["atol"]), float(tol["rtol"])
    seeds = trial_seeds(ctx.seed, problem, round_, int(ctx.config["verify"]["trials"]))
    todo = [c for c in candidates if compiled.get(c["id"], {}).get("compiled")]
    results: dict[str, dict] = {}
    if todo:
        ref = Reference(ctx, problem, seeds)
        tmp = ctx.root / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        with Worker(env=ctx.worker_env(gpu=True, threads=threads), work_dir=tmp) as worker:
            for cand in todo:
                out_file = tmp / f"{problem}-r{round_}-{cand['id']}.outputs.pt"
                log = ctx.log_path("candidates", problem, f"round_{round_}", f"{cand['id']}.verify.log")
                outcome = worker.call("outputs", {
                    "problem": ctx.problem_path(problem), "size": ctx.size,
                    "candidate": str(Path(ctx.root) / cand["path"]), "device": ctx.device,
                    "weight_seed": ctx.seed, "seeds": seeds, "out": str(out_file),
                }, timeout, log=log)
                if not outcome.ok:
                    verdict = Verdict(False, [outcome.reason or "failed"])
                else:
                    try:
                        trials = torch.load(out_file, weights_only=True, map_location="cpu")
                        verdict = merge_verdicts([
                            compare_trial(t["outputs"], t["meta"], outs, inputs, t["inputs_after"],
                                          torch.device(ctx.device).type, atol, rtol)
                            for t, (inputs, outs) in zip(trials, ref.trials, strict=True)
                        ])
                    except Exception as exc:  # a malformed result file is the candidate's failure
                        verdict = Verdict(False, [f"unreadable outputs: {type(exc).__name__}: {exc}"[:300]])
                out_file.unlink(missing_ok=True)
                results[cand["id"]] = verdict.as_dict() | {"wall_s": round(outcome.wall_s, 3)}
    ok = sum(r["correct"] for r in results.values())
    report(problem, round_, "verify", f"{ok}/{len(results)} correct ({len(candidates)} candidates)")
    return {"tolerance": {"atol": atol, "rtol": rtol}, "seeds": seeds, "results": results}

