"""The compile stage: build every candidate of a round on CPU cores, in parallel, each in its own child process.

One job per (problem, round) rather than per candidate: a fresh Python + torch process costs more than a fast-path
build (~1 s against 0.04-0.3 s), so the job starts a few warm zygotes once and forks a child per candidate. A
``load_inline`` build (~80 s) still gets one core per candidate through the same pool.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kernelcraft.context import RunContext
from kernelcraft.harness.worker import Worker
from kernelcraft.progress import report


def compile_candidates(ctx: RunContext, problem: str, round_: int, candidates: list[dict], workers: int,
                       timeout: float) -> dict[str, dict]:
    """Build each candidate; a failure is a result with its reason, never an exception. A candidate the implement
    stage already failed (``failure``: the model's reply held no usable file) or found to duplicate an earlier one
    (``duplicate_of``) is recorded as not built, with that reason, without building it."""
    results: dict[str, dict] = {}
    for cand in candidates:
        skip = cand.get("failure") or (f"duplicate of {cand['duplicate_of']}" if cand.get("duplicate_of") else None)
        if skip:
            results[cand["id"]] = {"compiled": False, "reason": skip, "build_s": 0.0, "kernels": []}
    candidates = [c for c in candidates if c["id"] not in results]
    if not candidates:
        report(problem, round_, "compile", f"0/{len(results)} built")
        return results
    local = threading.local()
    pool_workers: list[Worker] = []
    lock = threading.Lock()
    env = ctx.worker_env(gpu=False, threads=1)

    def build(cand: dict) -> tuple[str, dict]:
        worker = getattr(local, "worker", None)
        if worker is None:
            worker = local.worker = Worker(env=env, work_dir=ctx.root / "tmp")
            with lock:
                pool_workers.append(worker)
        log = ctx.log_path("candidates", problem, f"round_{round_}", f"{cand['id']}.compile.log")
        outcome = worker.call("build", {"candidate": str(Path(ctx.root) / cand["path"])}, timeout, log=log)
        return cand["id"], {
            "compiled": outcome.ok,
            "reason": None if outcome.ok else outcome.reason,
            "build_s": round(outcome.wall_s, 4),
            "kernels": outcome.result.get("kernels", []) if outcome.ok else [],
        }

    # Each pool worker owns a zygote (one torch import, ~1.3 s of CPU): never more of them than cores or candidates.
    workers = max(1, min(workers, len(candidates), len(os.sched_getaffinity(0))))
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for cid, res in pool.map(build, candidates):
                results[cid] = res
    finally:
        for w in pool_workers:
            w.close()
    ok = sum(r["compiled"] for r in results.values())
    report(problem, round_, "compile", f"{ok}/{len(results)} built")
    return results
