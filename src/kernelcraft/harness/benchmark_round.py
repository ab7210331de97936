"""The benchmark stage (each verified kernel timed interleaved with the eager reference in its own child) and the
baseline stage (the reference eager and under torch.compile)."""

from __future__ import annotations

from pathlib import Path

from kernelcraft.context import RunContext
from kernelcraft.harness.timing import hidden_work
from kernelcraft.harness.worker import Worker
from kernelcraft.progress import report


def _bench_seed(ctx: RunContext, round_: int) -> int:
    return ctx.seed * 1_000_003 + 7 * round_ + 1


def benchmark_candidates(ctx: RunContext, problem: str, round_: int, candidates: list[dict],
                         verified: dict[str, dict], timeout: float, threads: int = 1) -> dict:
    bcfg = ctx.config["benchmark"]
    todo = [c for c in candidates if verified.get(c["id"], {}).get("correct")]
    results: dict[str, dict] = {}
    if todo:
        tmp = ctx.root / "tmp"
        with Worker(env=ctx.worker_env(gpu=True, threads=threads), work_dir=tmp) as worker:
            for cand in todo:
                log = ctx.log_path("candidates", problem, f"round_{round_}", f"{cand['id']}.benchmark.log")
                outcome = worker.call("time", {
                    "problem": ctx.problem_path(problem), "size": ctx.size,
                    "candidate": str(Path(ctx.root) / cand["path"]), "device": ctx.device,
                    "weight_seed": ctx.seed, "seed": _bench_seed(ctx, round_),
                    "warmup": int(bcfg["warmup"]), "iters": int(bcfg["iters"]),
                }, timeout, log=log)
                if not outcome.ok:
                    results[cand["id"]] = {"timed": False, "reason": outcome.reason}
                    continue
                results[cand["id"]] = judge_timing(outcome.result) | {"wall_s": round(outcome.wall_s, 3)}
    timed = [r for r in results.values() if r.get("timed")]
    best = max((r["speedup_eager"] or 0 for r in timed), default=None)
    msg = f"{len(timed)} timed" + (f", best {best:.2f}x vs eager" if best else "")
    report(problem, round_, "benchmark", msg)
    return {"device": ctx.device, "results": results}


# A measured time this far below the floor is impossible, not fast (the floor itself is measured, so allow noise).
FLOOR_SLACK = 0.9


def judge_timing(result: dict) -> dict:
    """Turn one timing child's measurements into the benchmark record, rejecting impossible times."""
    c, e = result["candidate"], result["eager"]
    wall = result.get("wall", {}).get("candidate", c)
    floor = result.get("floor_ms")
    record = {
        "timed": True, "reason": None,
        "time_ms": c["median_ms"], "time_iqr_ms": c["iqr_ms"],
        "eager_ms": e["median_ms"], "eager_iqr_ms": e["iqr_ms"],
        "speedup_eager": e["median_ms"] / c["median_ms"] if c["median_ms"] > 0 else None,
        "wall_ms": wall["median_ms"], "floor_ms": floor,
        "pct_of_floor": (100.0 * floor / c["median_ms"]) if (floor and c["median_ms"] > 0) else None,
        "bandwidth_gbs": result.get("bandwidth_gbs"),
        "samples": c["n"], "input_sets": result.get("input_sets"),
    }
    if hidden_work(c["median_ms"], wall["median_ms"]):
        record.update(timed=False, reason=(
            f"work outside the timed stream: {wall['median_ms']:.4g} ms on the wall clock, "
            f"{c['median_ms']:.4g} ms between the stream's events"))
    elif floor and result.get("enforce_floor") and c["median_ms"] < FLOOR_SLACK * floor:
        record.update(timed=False, reason=(
            f"impossible time: {c['median_ms']:.4g} ms is below the speed-of-light floor of {floor:.4g} ms "
            f"(bytes moved / measured copy bandwidth)"))
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
            "torch_compile": bool(bcfg["torch_compile"]),
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
