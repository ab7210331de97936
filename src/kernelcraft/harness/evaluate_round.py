"""The evaluate stage: every compiled candidate is verified and, when correct, timed, in one child process of its
own; all comparing and deciding happens in this process.

Why one child for both: verification and timing in two processes paid the process start, the candidate's load
and the process's exit twice per candidate, with the GPU idle throughout (measured on the H100: about a third of
each candidate's evaluation). The child hands its verification outputs over and waits; only if this process
accepts them is the candidate timed, so nothing about timing changes what verification decides. Timing starts only
once every earlier candidate's process has exited (worker.py). A timed candidate's process is held until this
process has checked the outputs of its timed calls, a check that runs while the next candidate starts and is
verified (neither needs the device alone), and is then killed, so its exit overlaps that verification too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from kernelcraft import layout
from kernelcraft.context import RunContext
from kernelcraft.harness.compare import Verdict
from kernelcraft.harness.worker import Worker

if TYPE_CHECKING:
    from kernelcraft.harness.benchmark_round import Timer
    from kernelcraft.harness.verify_round import Verifier


def evaluate_candidates(ctx: RunContext, problem: str, round_: int, candidates: list[dict],
                        compiled: dict[str, dict], *, time_kernels: bool = True,
                        threads: int = 1) -> tuple[dict, dict]:
    """Verify every compiled candidate and time the correct ones (only verify when ``time_kernels`` is false).
    Returns the verify stage's document and the benchmark stage's, as the workflow stores them."""
    clock = time.perf_counter
    # Each candidate as built: a compile repair's file when the compile stage repaired it.
    todo = [c | {"path": layout.evaluated_path(c, compiled[c["id"]])} for c in candidates
            if compiled.get(c["id"], {}).get("compiled")]
    worker = Worker(env=ctx.worker_env(gpu=True, threads=threads), work_dir=ctx.root / "tmp")
    if todo:
        # Launched before this process imports torch (the modules below do), so the two imports overlap.
        worker.start()
    from kernelcraft.harness.benchmark_round import Timer
    from kernelcraft.harness.verify_round import Verifier, static_verdict

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
            verifier.prepare()
            if time_kernels:
                timer = Timer(ctx, problem, round_)
                assert verifier.ref is not None
                timer.prepare(verifier.ref.input_bytes + verifier.ref.output_bytes)
            job["setup_s"] = round(clock() - t0, 3)
            pending = _Deferred()
            for cand in runnable:
                overlapped = bool(pending)
                verdict, step = _evaluate_one(ctx, worker, verifier, timer, problem, round_, cand, pending, timings)
                if overlapped and _out_of_memory(verdict):
                    # The previous candidate's check shared the device with this one's start: judge it again
                    # alone rather than blame it for memory it did not use.
                    step()
                    verdict, step = _evaluate_one(ctx, worker, verifier, timer, problem, round_, cand, _Deferred(),
                                                  timings)
                verdicts[cand["id"]], pending = verdict, step
            pending()
            job |= {"worker_ready_s": worker.ready_s and round(worker.ready_s, 3),
                    "total_s": round(clock() - t0, 3)}
    verdicts = {c["id"]: verdicts[c["id"]] | {"path": c["path"]} for c in todo}  # later stages use this file
    verify_doc = verifier.doc(verdicts, len(candidates)) | {"job": job}
    bench_doc = (timer.doc(timings) if timer else {"device": ctx.device, "floor": {}, "results": timings})
    return verify_doc, bench_doc


class _Deferred:
    """The last step of a timed candidate, run once: checking the outputs of its timed calls (the child is held
    meanwhile, its memory mapped here) and ending its process. Deferred into the next candidate's start, whose
    load and verification need no exclusive device, so the check leaves the critical path; it is always done
    before anything else is timed (Worker's hand-over waits for every earlier child to be gone)."""

    def __init__(self, step: Callable[[], None] | None = None) -> None:
        self._step = step

    def __bool__(self) -> bool:
        return self._step is not None

    def __call__(self) -> None:
        step, self._step = self._step, None
        if step is not None:
            step()


def _evaluate_one(ctx: RunContext, worker: Worker, verifier: Verifier, timer: Timer | None, problem: str,
                  round_: int, cand: dict, before: _Deferred, timings: dict[str, dict]) -> tuple[dict, _Deferred]:
    """One candidate's verdict, and the step that completes its benchmark record in ``timings`` (when it was
    correct and timing was asked for). ``before`` (the previous candidate's step) runs once this one's process
    has started."""
    tmp = ctx.root / "tmp"
    stem = f"{problem}-r{round_}-{cand['id']}"
    out_file, timed_file = tmp / f"{stem}.outputs.pt", tmp / f"{stem}.timed.pt"
    path = Path(ctx.root) / cand["path"]
    kwargs = verifier.task_kwargs(path, out_file) | {"timing_args": timer.task_args(timed_file) if timer else None}
    seen: dict[str, Verdict] = {}
    clock = time.perf_counter
    at: dict[str, float] = {}  # this process's monotonic stamps; the child's are on the same clock

    def on_partial(result: dict) -> dict:
        at["handed"] = clock()
        seen["verdict"] = verdict = verifier.judge_handover(result, out_file)
        verdict.phases |= _gaps(result.get("stamps"), at, {"dispatch_s": ("call", "begin"),
                                                           "handover_s": ("handover", "handed")})
        at["replied"] = clock()
        return {"time": bool(timer) and verdict.correct}

    def on_result(result: dict) -> dict | None:
        at["result"] = clock()
        return result if timer is not None and result.get("timed") else None

    timeouts = [float(ctx.config["verify"]["timeout_s"]), float(ctx.config["benchmark"]["timeout_s"])]
    log = ctx.log_path("candidates", problem, f"round_{round_}", f"{cand['id']}.evaluate.log")
    at["call"] = clock()
    try:
        outcome = worker.call("evaluate", kwargs, timeouts, log=log, on_partial=on_partial, on_result=on_result,
                              keep=True, while_running=before)
    finally:
        before()  # when the call failed before its child started
        out_file.unlink(missing_ok=True)
    verify_wall = outcome.marks[0] if outcome.marks else outcome.wall_s
    verdict = seen.get("verdict")
    if verdict is None:  # it failed (crash, hang, exception) before handing its outputs over
        verdict = Verdict(False, [outcome.reason or "no outputs were handed over"])
    record = verdict.as_dict() | {"wall_s": round(verify_wall, 3)}

    def end_child() -> None:
        if outcome.held_pid is not None:
            worker.release(outcome.held_pid)
        timed_file.unlink(missing_ok=True)

    if timer is None or not verdict.correct:
        end_child()
        return record, _Deferred()
    bench_wall = round(outcome.wall_s - verify_wall, 3)
    result = outcome.result.get("handled") if outcome.ok else None
    if result is None:
        timings[cand["id"]] = {"timed": False, "reason": outcome.reason or "no timing was handed over",
                               "wall_s": bench_wall}
        end_child()
        return record, _Deferred()
    released = outcome.released_s - verify_wall if outcome.released_s is not None else None

    def check() -> None:
        at["check"] = clock()
        try:
            timing = timer.judge_handover(result, timed_file)
        except Exception as exc:  # the child's data could not be used: its failure
            timing = {"timed": False, "reason": f"unusable shared outputs: {type(exc).__name__}: {exc}"[:300]}
        finally:
            end_child()
        at["checked"] = clock()
        timing["phases"] = (timing.get("phases") or {}) | _gaps(
            result.get("stamps"), at, {"reply_s": ("replied", "child_replied"), "collect_s": ("end", "result"),
                                       "check_s": ("check", "checked")})
        timings[cand["id"]] = timing | {"wall_s": bench_wall, "released_s": released}

    return record, _Deferred(check)


def _out_of_memory(verdict: dict) -> bool:
    return any("out of memory" in r.lower() for r in verdict.get("reasons", []))


def _gaps(stamps: dict | None, at: dict[str, float], spans: dict[str, tuple[str, str]]) -> dict[str, float]:
    """Seconds between pairs of stamps, this process's (``at``) and the child's (``stamps``, renamed ``child_*``
    where a name is taken): the hand-offs between the two processes, which no phase of either shows alone."""
    both = dict(at)
    for name, value in (stamps or {}).items():
        if isinstance(value, int | float):
            both["child_" + name if name in at else name] = float(value)
    return {name: round(both[b] - both[a], 4) for name, (a, b) in spans.items() if a in both and b in both}
