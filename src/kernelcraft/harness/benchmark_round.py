"""Timing, seen from the trusted parent: each verified kernel is timed interleaved with the eager reference in its
own child (evaluate_round.py drives it), and the baseline stage times the reference eager and under
torch.compile."""

from __future__ import annotations

from pathlib import Path

from kernelcraft.context import RunContext
from kernelcraft.harness.timing import hidden_work
from kernelcraft.harness.worker import Worker
from kernelcraft.progress import report


def _bench_seed(ctx: RunContext, round_: int) -> int:
    return ctx.seed * 1_000_003 + 7 * round_ + 1


class TimedOutputsCheck:
    """Compares what a candidate returned from its timed calls with the reference's outputs on the same inputs
    (re-created here from their seeds), in this trusted process: a kernel that is correct while verified but
    computes something else (or nothing) while timed is rejected."""

    def __init__(self, ctx: RunContext, problem: str) -> None:
        from kernelcraft.harness.tasks import reference_flops

        self.ctx = ctx
        self.prob = ctx.load_problem(problem)
        self._model = None
        # Counted here, from the trusted reference, once per job (the counter's first use costs ~1.4 s); only the
        # GPU has a compute floor (tasks.task_time says why).
        self.flops = reference_flops(self.prob) if ctx.device == "cuda" else 0

    def reasons(self, timed_outputs: list[dict]) -> list[str]:
        import torch

        from kernelcraft.harness.compare import compare_trial
        from kernelcraft.harness.tasks import flatten_outputs

        ctx, prob = self.ctx, self.prob
        if self._model is None:
            self._model = prob.make_reference(ctx.seed, ctx.device)
        tol = ctx.config["tolerance"]
        reasons: list[str] = []
        for got in timed_outputs:
            inputs = prob.make_inputs(got["seed"], ctx.device)
            with torch.no_grad():
                refs = flatten_outputs(self._model(*inputs))
            verdict = compare_trial(got["outputs"], got["meta"], refs, [], [], torch.device(ctx.device).type,
                                    float(tol["atol"]), float(tol["rtol"]))
            del inputs, refs
            for r in verdict.reasons:
                line = f"outputs of timed calls differ from the reference ({r})"
                if line not in reasons:
                    reasons.append(line)
        if not timed_outputs:
            reasons.append("no outputs of timed calls were handed over")
        return reasons


def _shared_reasons(result: dict, check: TimedOutputsCheck) -> list[str]:
    """Check a timing child's outputs while it still holds them (CUDA IPC), then drop every mapping."""
    import torch

    from kernelcraft.harness.transfer import import_cuda

    mapped = [t | {"outputs": [import_cuda(d) for d in t["outputs"]]} for t in result.get("timed_outputs", [])]
    try:
        reasons = check.reasons(mapped)
        torch.cuda.synchronize()
    finally:
        del mapped
        torch.cuda.ipc_collect()
    return reasons


class Timer:
    """Timing of one problem and round, seen from the trusted parent: what the child's timing part is asked to
    do, the speed-of-light floor (measured here, once per job), and the judgement of what the child hands back.
    Timed work never overlaps: one candidate is timed at a time, and only once every earlier candidate's process
    has exited (worker.py)."""

    def __init__(self, ctx: RunContext, problem: str, round_: int) -> None:
        self.ctx, self.problem, self.round = ctx, problem, round_
        self.share = ctx.device == "cuda"
        self.check = TimedOutputsCheck(ctx, problem)
        self.floor: dict = {}

    def prepare(self, footprint_bytes: int) -> None:
        from kernelcraft.harness.timing import speed_of_light

        self.floor = speed_of_light(footprint_bytes, self.check.flops, self.ctx.device)

    def task_args(self, out_file: Path) -> dict:
        bcfg = self.ctx.config["benchmark"]
        return {"seed": _bench_seed(self.ctx, self.round), "warmup": int(bcfg["warmup"]), "iters": int(bcfg["iters"]),
                "min_time_ms": float(bcfg["min_time_ms"]), "out": None if self.share else str(out_file)}

    def judge_handover(self, result: dict, out_file: Path) -> dict:
        """The benchmark record of one candidate from its child's timing result."""
        import torch

        if self.share:
            reasons = _shared_reasons(result, self.check)
        else:
            try:
                reasons = self.check.reasons(torch.load(out_file, weights_only=True, map_location="cpu"))
            except Exception as exc:  # a malformed result file is the candidate's failure
                reasons = [f"unreadable outputs of timed calls: {type(exc).__name__}: {exc}"[:300]]
        record = judge_timing(result, self.floor)
        if reasons:
            record.update(timed=False, reason="; ".join(([record["reason"]] if record["reason"] else []) + reasons))
        return record

    def doc(self, results: dict[str, dict]) -> dict:
        timed = [r for r in results.values() if r.get("timed")]
        best = max((r["speedup_eager"] or 0 for r in timed), default=None)
        msg = f"{len(timed)} timed" + (f", best {best:.2f}x vs eager" if best else "")
        report(self.problem, self.round, "benchmark", msg)
        return {"device": self.ctx.device, "floor": self.floor, "results": results}


# A measured time this far below the floor is impossible, not fast (the floor itself is measured, so allow noise).
FLOOR_SLACK = 0.9


def judge_timing(result: dict, floor: dict) -> dict:
    """Turn one timing child's measurements into the benchmark record, rejecting impossible times (``floor`` is
    timing.speed_of_light's measurement)."""
    c, e = result["candidate"], result["eager"]
    wall = result.get("wall", {}).get("candidate", c)
    floor_ms = floor.get("floor_ms")
    record = {
        "timed": True, "reason": None,
        "time_ms": c["median_ms"], "time_iqr_ms": c["iqr_ms"],
        "eager_ms": e["median_ms"], "eager_iqr_ms": e["iqr_ms"],
        "speedup_eager": e["median_ms"] / c["median_ms"] if c["median_ms"] > 0 else None,
        "wall_ms": wall["median_ms"], "floor_ms": floor_ms,
        "pct_of_floor": (100.0 * floor_ms / c["median_ms"]) if (floor_ms and c["median_ms"] > 0) else None,
        "bandwidth_gbs": floor.get("bandwidth_gbs"), "floor_kind": floor.get("floor_kind"),
        "flops": floor.get("flops"), "peak_tflops": floor.get("peak_tflops"),
        "samples": c["n"], "input_sets": result.get("input_sets"), "phases": result.get("phases"),
    }
    if hidden_work(c["median_ms"], wall["median_ms"]):
        record.update(timed=False, reason=(
            f"work outside the timed stream: {wall['median_ms']:.4g} ms on the wall clock, "
            f"{c['median_ms']:.4g} ms between the stream's events"))
    elif floor_ms and floor.get("enforce_floor") and c["median_ms"] < FLOOR_SLACK * floor_ms:
        basis = ("FLOPs / measured matmul peak" if floor.get("floor_kind") == "compute"
                 else "bytes moved / measured copy bandwidth")
        record.update(timed=False, reason=(
            f"impossible time: {c['median_ms']:.4g} ms is below the speed-of-light floor of {floor_ms:.4g} ms "
            f"({basis})"))
    return record


def baseline(ctx: RunContext, problem: str, timeout: float, threads: int = 1) -> dict:
    """Reference timings for the report; a failed torch.compile is recorded, never fatal."""
    bcfg = ctx.config["benchmark"]
    prob = ctx.load_problem(problem)
    with Worker(env=ctx.worker_env(gpu=True, threads=threads), work_dir=ctx.root / "tmp") as worker:
        outcome = worker.call("baseline", {
            "problem": ctx.problem_path(problem), "size": ctx.size, "device": ctx.device,
            "weight_seed": ctx.seed, "seed": _bench_seed(ctx, 0),
            "warmup": int(bcfg["warmup"]), "iters": int(bcfg["iters"]),
            "torch_compile": bool(bcfg["torch_compile"]), "min_time_ms": float(bcfg["min_time_ms"]),
        }, timeout, log=ctx.log_path("baseline", f"{problem}.log"))
    out = {"problem": problem, "op": prob.op, "size": ctx.size, "device": ctx.device,
           "eager_ms": None, "eager_iqr_ms": None, "compile_ms": None, "compile_iqr_ms": None,
           "compile_error": None, "error": None}
    if not outcome.ok:
        out["error"] = outcome.reason
        report(problem, None, "baseline", f"failed: {outcome.reason}")
        return out
    r = outcome.result
    out["eager_ms"], out["eager_iqr_ms"] = r["eager"]["median_ms"], r["eager"]["iqr_ms"]
    if "compile" in r:
        out["compile_ms"], out["compile_iqr_ms"] = r["compile"]["median_ms"], r["compile"]["iqr_ms"]
    out["compile_error"] = r.get("compile_error")
    out["input_bytes"] = r.get("input_bytes")
    msg = f"eager {out['eager_ms']:.4g} ms" + (
        f", torch.compile {out['compile_ms']:.4g} ms" if out["compile_ms"] else ", torch.compile not measured")
    report(problem, None, "baseline", msg)
    return out
