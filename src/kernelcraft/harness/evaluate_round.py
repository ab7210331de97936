"""The evaluate stage: every compiled candidate is verified and, when correct, timed, in one child process of its
own; all comparing, deciding and the reference's own timing happen in this process.

Why one child for both: verification and timing in two processes paid the process start, the candidate's load
and the process's exit twice per candidate, with the GPU idle throughout (measured on the H100: about a third of
each candidate's evaluation). The child hands its verification outputs over and waits; only if this process
accepts them is the candidate timed, so nothing about timing changes what verification decides. Timing starts only
once every earlier candidate's process has exited (sandbox/worker.py). The child hands over each verification trial and
each block of timed calls as it completes; this process judges it (and, between timed blocks, times the reference
itself) before the child goes on. Once the child's final result is in, it is killed without waiting for its exit,
which overlaps the next candidate's start.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from kernelcraft import layout
from kernelcraft.context import RunContext
from kernelcraft.harness.sandbox.worker import Worker
from kernelcraft.harness.sandbox.zygote import CUDA_SPARES
from kernelcraft.harness.verify.compare import Verdict, merge_verdicts

if TYPE_CHECKING:
    from kernelcraft.harness.timing.benchmark_round import Timer
    from kernelcraft.harness.verify.verify_round import Verifier


def evaluate_candidates(ctx: RunContext, problem: str, round_: int, candidates: list[dict],
                        compiled: dict[str, dict], *, time_kernels: bool = True,
                        threads: int = 1) -> tuple[dict, dict]:
    """Verify every compiled candidate and time the correct ones (only verify when ``time_kernels`` is false).
    Returns the verify stage's document and the benchmark stage's, as the workflow stores them."""
    clock = time.perf_counter
    # Each candidate as built: a compile repair's file when the compile stage repaired it.
    todo = [c | {"path": layout.evaluated_path(c, compiled[c["id"]])} for c in candidates
            if compiled.get(c["id"], {}).get("compiled")]
    worker = Worker(env=ctx.worker_env(gpu=True, threads=threads, spares=min(CUDA_SPARES, len(todo))),
                    work_dir=ctx.root / "tmp")
    if todo:
        # Launched before this process imports torch (the modules below do), so the two imports overlap.
        worker.start()
    from kernelcraft.harness.timing.benchmark_round import Timer
    from kernelcraft.harness.verify.verify_round import Verifier, static_verdict

    if todo and ctx.device == "cuda":
        # This process's comparator and input renewal (verify/device_kernels.py), compiled while the worker
        # starts; a failure here is raised again, with its reason, where the kernels are first used. Only once
        # torch is imported: two threads importing torch at once fail (KeyError: 'torch', seen in a workflow's
        # fresh evaluate process on the H200).
        threading.Thread(target=_compile_device_kernels, daemon=True).start()

    verdicts: dict[str, dict] = {}
    timings: dict[str, dict] = {}
    runnable = []
    for cand in todo:
        static = static_verdict(ctx, cand)
        if static is not None:
            verdicts[cand["id"]] = static.as_dict() | {"wall_s": 0.0}
        else:
            runnable.append(cand)
    verifier = Verifier(ctx, problem, round_)
    timer: Timer | None = None
    job: dict[str, float | None] = {}
    with worker:
        if runnable:
            t0 = clock()
            verifier.settle_inputs(worker)
            verifier.prepare()
            assert verifier.ref is not None
            if time_kernels:
                timer = Timer(ctx, problem, round_, verifier.ref, verifier.policy)
                timer.prepare()
            job["setup_s"] = round(clock() - t0, 3)
            for k, cand in enumerate(runnable):
                verdict = _evaluate_one(ctx, worker, verifier, timer, problem, round_, cand, timings)
                if k and _out_of_memory(verdict):
                    # The previous candidate's process may still have been exiting, its memory held, while this one
                    # started: judge it again alone rather than blame it for memory it did not use.
                    worker.wait_for_exits()
                    verdict = _evaluate_one(ctx, worker, verifier, timer, problem, round_, cand, timings)
                verdicts[cand["id"]] = verdict
            job |= {"worker_ready_s": worker.ready_s and round(worker.ready_s, 3),
                    "total_s": round(clock() - t0, 3)}
    verdicts = {c["id"]: verdicts[c["id"]] | {"path": c["path"]} for c in todo}  # later stages use this file
    verify_doc = verifier.doc(verdicts, len(candidates)) | {"job": job}
    bench_doc = (timer.doc(timings) if timer else {"device": ctx.device, "floor": {}, "results": timings})
    return verify_doc, bench_doc


def _evaluate_one(ctx: RunContext, worker: Worker, verifier: Verifier, timer: Timer | None, problem: str,
                  round_: int, cand: dict, timings: dict[str, dict]) -> dict:
    """One candidate's verdict; its benchmark record goes into ``timings`` when it was correct and timing was
    asked for. Every hand-over of its process (a verification trial, a timed block) is judged here as it
    arrives."""
    tmp = ctx.root / "tmp"
    out_file = tmp / f"{problem}-r{round_}-{cand['id']}.handover.pt"
    path = Path(ctx.root) / cand["path"]
    kwargs = verifier.task_kwargs(path, out_file) | {"timing_args": timer.task_args() if timer else None}
    trials: list[Verdict] = []

    def on_partial(result: dict) -> dict:
        if "trial" in result:
            trials.append(verifier.judge_trial(result, out_file))
            if len(trials) < len(verifier.plan):
                return {}
            verdict = merge_verdicts(trials)
            if timer is None or not verdict.correct:
                return {"time": False}
            return timer.order()
        assert timer is not None
        return timer.judge_block(result, out_file)

    timeouts = ([float(ctx.config["verify"]["timeout_s"])] * len(verifier.plan)
                + [float(ctx.config["benchmark"]["timeout_s"])])
    log = ctx.log_path("candidates", problem, f"round_{round_}", f"{cand['id']}.evaluate.log")
    try:
        outcome = worker.call("evaluate", kwargs, timeouts, log=log, on_partial=on_partial, on_result=lambda r: r,
                              exclusive=_starts_or_continues_timing)
    finally:
        out_file.unlink(missing_ok=True)
    n = len(verifier.plan)
    verify_wall = outcome.marks[n - 1] if len(outcome.marks) >= n else outcome.wall_s
    if len(trials) < n:  # it failed (crash, hang, exception) before handing every trial over
        trials.append(Verdict(False, [outcome.reason or "no outputs were handed over"]))
    verdict = merge_verdicts(trials)
    verdict.phases = {k: round(sum(t.phases.get(k, 0.0) for t in trials), 4) for k in ("judge_s",)}
    # When each hand-over was answered (seconds from the request): the candidate's timeline, for the overhead
    # benchmark and for anyone asking where an evaluation's time went.
    record = verdict.as_dict() | {"wall_s": round(verify_wall, 3),
                                  "handovers_s": [round(m, 3) for m in outcome.marks[:n]]}
    handled = outcome.result.get("handled") if outcome.ok else None
    if handled and handled.get("memory"):
        record["child_memory"] = handled["memory"]
    if timer is None or not verdict.correct:
        return record
    result = outcome.result.get("handled") if outcome.ok else None
    timing = timer.finish(result, outcome.reason)
    if result is not None:
        timing["phases"] = result.get("phases")
    timings[cand["id"]] = timing | {"wall_s": round(outcome.wall_s - verify_wall, 3)}
    return record


def _compile_device_kernels() -> None:
    from kernelcraft.harness.verify import device_kernels

    try:
        device_kernels.compile_kernels()
    except Exception:  # noqa: BLE001 - see evaluate_candidates
        pass


def _starts_or_continues_timing(answer: dict) -> bool:
    """Whether the child times once answered (Timer.order's ``time``, Timer.judge_block's ``keep``): only then
    must the previous candidate's process be gone; verification trials overlap its exit."""
    return bool(answer.get("time")) or "keep" in answer


def _out_of_memory(verdict: dict) -> bool:
    return any("out of memory" in r.lower() for r in verdict.get("reasons", []))
