"""Timing, seen from the trusted parent: each verified kernel is timed in its own child, block by block, and the
eager reference in this process between those blocks (evaluate_round.py drives it); the baseline stage times the
reference eager and under torch.compile."""

from __future__ import annotations

import math
import random
import secrets
import statistics
from pathlib import Path
from typing import TYPE_CHECKING

from kernelcraft.context import RunContext
from kernelcraft.harness.judge.audit import judge
from kernelcraft.harness.judge.speed import judge_timing
from kernelcraft.harness.sandbox.worker import Worker
from kernelcraft.progress import report

if TYPE_CHECKING:
    from kernelcraft.harness.verify.verify_round import Reference


def _bench_seed(ctx: RunContext, round_: int) -> int:
    return ctx.seed * 1_000_003 + 7 * round_ + 1


class Timer:
    """Timing of one problem and round, seen from the trusted parent, which times the reference itself.

    Per candidate: the reference's input sets are made here (the same seeds as the candidate's), and between the
    candidate's timed blocks (each handed over by its process) this process checks the block (the outputs of one
    call it chose at random, against its own reference on the same inputs; the audit of every call) and then times
    a block of the reference under the same protocol. So the eager time a speedup is measured against comes from a
    process that never ran candidate code, alternating with the candidate's so drift cancels. Timed work never
    overlaps: one candidate is timed at a time, and only once every earlier candidate's process has exited."""

    def __init__(self, ctx: RunContext, problem: str, round_: int, ref: Reference, policy: str) -> None:
        from kernelcraft.harness.sandbox.tasks import reference_flops

        self.ctx, self.problem, self.round, self.ref, self.policy = ctx, problem, round_, ref, policy
        self.share = ctx.device == "cuda"
        tol = ctx.config["tolerance"]
        self.atol, self.rtol = float(tol["atol"]), float(tol["rtol"])
        # Counted here, from the trusted reference, once per job; only the GPU has a compute floor.
        self.flops = reference_flops(ref.problem) if ctx.device == "cuda" else 0
        self.floor: dict = {}
        self.sets_count = 1
        self._rng = random.Random(secrets.randbits(64))
        self._warm: dict = {}
        self._state: dict = {}
        self._flush = None
        self._flush_pool = None

    def prepare(self) -> None:
        from kernelcraft.harness.sandbox.tasks import input_sets, rotation_sets
        from kernelcraft.harness.timing.protocol import speed_of_light, warm_up

        bcfg = self.ctx.config["benchmark"]
        self.floor = speed_of_light(self.ref.input_bytes + self.ref.output_bytes, self.flops, self.ctx.device)
        self.sets_count = rotation_sets(self.ref.input_bytes)
        sets = input_sets(self.ref.problem, _bench_seed(self.ctx, self.round), self.ctx.device, self.sets_count)
        self._warm = warm_up(self._call, sets, self.ctx.device, int(bcfg["warmup"]), float(bcfg["min_time_ms"]))
        del sets

    def _call(self, xs: list) -> object:
        return self.ref.model(*xs)

    def task_args(self) -> dict:
        bcfg = self.ctx.config["benchmark"]
        return {"seed": _bench_seed(self.ctx, self.round), "warmup": int(bcfg["warmup"]), "iters": int(bcfg["iters"]),
                "min_time_ms": float(bcfg["min_time_ms"])}

    def pick(self) -> float:
        """The draw that sets the next block's length (protocol.block_length), and so which call is checked: the
        block's last. Once the checked call was drawn from a block's first few calls only, and the rest of a long
        block (short kernels get hundreds of calls per block) were never checked: a candidate counting its calls
        could have cheated there."""
        return self._rng.random()

    def order(self) -> dict:
        """The reply that starts a verified candidate's timing (sets, the reference's launch time for the GPU
        sleep, the first block's checked call), and this process's per-candidate set-up."""
        from kernelcraft.harness.sandbox.tasks import input_sets
        from kernelcraft.harness.timing.call_inputs import CallInputs
        from kernelcraft.harness.timing.protocol import BlockTimer, timed_iterations

        bcfg = self.ctx.config["benchmark"]
        if self._flush is None and self.ctx.device == "cuda":
            from kernelcraft.harness.timing.protocol import lendable_flush_buffer

            # One L2-flush buffer for the rest of the job, lent to each candidate's process for its timing (see
            # protocol._L2Flusher) when it sits in a memory pool of its own; never freed before the job ends, so no
            # process maps memory that was reused.
            self._flush, self._flush_pool = lendable_flush_buffer(self.ctx.device)
        seed = _bench_seed(self.ctx, self.round)
        sets = input_sets(self.ref.problem, seed, self.ctx.device, self.sets_count)
        total = timed_iterations(int(bcfg["iters"]), float(bcfg["min_time_ms"]), self._warm["per_call_ms"])
        calls = CallInputs(sets, seed)
        self._state = {"sets": sets, "calls": calls, "eager_total": total, "first": 0, "eager": [], "eager_walls": [],
                       "samples": [], "walls": [], "reasons": [], "keep": self.pick(),
                       "timer": BlockTimer(self.ctx.device, self._warm["launch_ms"], flush_with=self._flush)}
        order = {"time": True, "sets": self.sets_count, "launch_ms": self._warm["launch_ms"],
                 "keep": self._state["keep"]}
        if self._flush is not None and self._flush_pool is not None and self.share:
            from kernelcraft.harness.sandbox.transfer import export_cuda

            order["flush"] = export_cuda(self._flush)
        return order

    def _checked_call(self, block_calls: int) -> int:
        """The index of the block's last call (the one handed over), worked out here from the calls handed over so
        far, not taken from the candidate's process."""
        return len(self._state["samples"]) + max(block_calls, 1) - 1

    def _eager_calls(self, result: dict) -> int:
        """Calls of the reference to time after this block: its share of the reference's own total, in proportion
        to the candidate's calls so far (the candidate's total comes from its process and only spreads the
        reference's calls over the blocks), and at least one, so the two always alternate."""
        st = self._state
        done = len(st["samples"])
        cand_total = max(int(result.get("total") or 0), done, 1)
        target = math.ceil(st["eager_total"] * min(1.0, done / cand_total))
        return max(1, target - st["first"])

    def judge_block(self, result: dict, out_file: Path) -> dict:
        """One block of the candidate's timing: check it, time a block of the reference, reply."""
        from kernelcraft.harness.verify.compare import compare_trial
        from kernelcraft.harness.verify.verify_round import _received, release_mappings

        st = self._state
        block_samples = [float(x) for x in result.get("samples") or []]
        checked = self._checked_call(len(block_samples))
        st["samples"] += block_samples
        st["walls"] += [float(x) for x in result.get("walls") or []]
        reasons = [f"timed calls: {r}" for r in judge(result.get("audit") or {}, self.policy)]
        try:
            got = _received(result, self.share, out_file)
            refs = self.ref.outputs(st["calls"].for_call(checked))
            verdict = compare_trial(got["outputs"], result["meta"], refs, [], [], self.ctx.device, self.atol,
                                    self.rtol)
            reasons += [f"outputs of timed calls differ from the reference ({r})" for r in verdict.reasons]
            del refs
            got.clear()
        except Exception as exc:  # a malformed hand-over is the candidate's failure
            reasons.append(f"unreadable outputs of timed calls: {type(exc).__name__}: {exc}"[:300])
        finally:
            # After the comparison: a reference output may be a view of its input. The eager blocks then run on
            # the base values.
            st["calls"].restore()
            release_mappings(self.share)
        for r in reasons:
            if r not in st["reasons"]:
                st["reasons"].append(r)
        if st["reasons"]:
            return {"stop": True}
        n = self._eager_calls(result)
        s, w, _ = st["timer"].block(self._call, st["sets"], st["first"], n)
        st["first"] += n
        st["eager"] += s
        st["eager_walls"] += w
        slower = _hopeless(st["samples"], st["eager"], float(self.ctx.config["benchmark"]["stop_slower_than"]))
        if slower:
            st["stopped"] = (f"timing stopped after {len(st['samples'])} calls: {slower:.1f}x slower than eager "
                             "(benchmark.stop_slower_than)")
            return {"stop": True}
        st["keep"] = self.pick()
        return {"keep": st["keep"]}

    def finish(self, result: dict | None, reason: str | None) -> dict:
        """The benchmark record of one candidate, from its process's final result and this process's blocks."""
        from kernelcraft.harness.timing.protocol import summarize

        st, self._state = self._state, {}
        st.pop("sets", None)
        if st.get("reasons"):
            return {"timed": False, "reason": "; ".join(st["reasons"])}
        if result is None or not result.get("timed") or not st.get("eager"):
            return {"timed": False, "reason": reason or "no timing was handed over"}
        result = result | {"eager": summarize(st["eager"]), "wall": result.get("wall", {}) | {
            "eager": summarize(st["eager_walls"])}}
        record = judge_timing(result, self.floor)
        if st.get("stopped"):
            record["stopped"] = st["stopped"]
        return record

    def doc(self, results: dict[str, dict]) -> dict:
        timed = [r for r in results.values() if r.get("timed")]
        best = max((r["speedup_eager"] or 0 for r in timed), default=None)
        msg = f"{len(timed)} timed" + (f", best {best:.2f}x vs eager" if best else "")
        report(self.problem, self.round, "benchmark", msg)
        return {"device": self.ctx.device, "floor": self.floor, "results": results}


# Timed calls of a candidate, at least, before it may be stopped as hopeless: one call can be a cold outlier.
STOP_AFTER_CALLS = 3


def _hopeless(samples: list[float], eager: list[float], factor: float) -> float | None:
    """How many times slower than the reference a candidate is, when that is more than ``factor`` (0: never) over
    at least STOP_AFTER_CALLS of its timed calls; else None. The candidate's samples are its process's claim: a
    claim of slowness only ends its own timing, and a claim of speed is what the rest of the protocol checks."""
    if not factor or len(samples) < STOP_AFTER_CALLS or not eager:
        return None
    ratio = statistics.median(samples) / max(statistics.median(eager), 1e-9)
    return ratio if ratio > factor else None


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
