"""Evaluation overhead and GPU occupancy of one round, through the workflow's own compile, verify and benchmark code.

Targets (issue 3, on an H100): per-candidate evaluation overhead (verify + benchmark wall time minus the
kernel's own timed work) median <= 1.5 s; GPU busy >= 70% of the wall time of evaluating a round of 32 candidates.

    PYTHONPATH=src python bench/eval_overhead.py [--problem softmax_4096x65536] [--ideas 8] [--impls 4]

Candidates come from the offline proposer (round 1 from the reference). GPU busy is NVML's utilisation sampled
every 20 ms during the evaluate stage (verify + benchmark). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

from kernelcraft.config import load_config, merge
from kernelcraft.context import RunContext
from kernelcraft.harness.build.compile_round import compile_candidates
from kernelcraft.harness.build.gpu import detect_cuda_arch
from kernelcraft.harness.evaluate_round import evaluate_candidates
from kernelcraft.problems import builtin_dir, load_problem
from kernelcraft.search.offline import OfflineProposer


class _Sampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.samples.append(int(torch.cuda.utilization()))
            except Exception:  # noqa: BLE001 - NVML missing: report no figure rather than a wrong one
                return
            time.sleep(0.02)


def trial_medians(results: list[dict], trials: int) -> list[float | None]:
    """Median over candidates of when each verification trial was answered (None where no candidate got there)."""
    out: list[float | None] = []
    for k in range(trials):
        times = [r["handovers_s"][k] for r in results if len(r.get("handovers_s") or []) > k]
        out.append(round(statistics.median(times), 3) if times else None)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problem", default="softmax_4096x65536")
    parser.add_argument("--ideas", type=int, default=8)
    parser.add_argument("--impls", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="kc-overhead-"))
    path = builtin_dir() / f"{args.problem}.py"
    config = load_config(overrides={"run": "overhead", "backend": "cuda", "seed": args.seed})
    resolved = {"backend": "cuda", "size": "full", "cuda_arch": detect_cuda_arch(),
                "problems": {args.problem: str(path)}}
    ctx = RunContext.from_config(merge(config, {"_resolved": resolved}), results=work)
    problem = load_problem(path, "full")
    proposer = OfflineProposer(args.seed)
    seed = {"id": "reference", "source": None, "features": None, "time_ms": None, "speedup_eager": 1.0}
    entries = []
    (work / "cands").mkdir()
    for k, idea in enumerate(proposer.ideas(problem, "cuda", [seed], [], args.ideas, 1)):
        for m, impl in enumerate(proposer.implement(problem, "cuda", idea, seed, args.impls, 1)):
            p = work / "cands" / f"c{k}_{m}.py"
            p.write_text(impl["source"])
            entries.append({"id": p.stem, "path": str(p)})

    t0 = time.perf_counter()
    built = compile_candidates(ctx, args.problem, 1, entries, 16, 300)
    compile_s = time.perf_counter() - t0
    sampler = _Sampler()
    sampler.start()
    t1 = time.perf_counter()
    verified, timed = evaluate_candidates(ctx, args.problem, 1, entries, built)
    t2 = time.perf_counter()
    sampler.stop.set()
    sampler.join()

    bcfg = config["benchmark"]
    n_trials = len(verified["trials"])
    overheads, overheads_with_ref, owns = [], [], []
    for e in entries:
        v = verified["results"].get(e["id"], {})
        b = timed["results"].get(e["id"], {})
        if not b.get("timed"):
            continue
        calls = bcfg["warmup"] + b["samples"]
        own = b["time_ms"] / 1e3 * (calls + n_trials)
        ref = b["eager_ms"] / 1e3 * calls
        owns.append(own)
        wall = v.get("wall_s", 0.0) + b.get("wall_s", 0.0)
        overheads.append(wall - own)
        overheads_with_ref.append(wall - own - ref)

    def medians(docs: list[dict]) -> dict:
        phases = [d["phases"] for d in docs if d.get("phases")]
        return {k: round(statistics.median(p[k] for p in phases if k in p), 3)
                for k in sorted({k for p in phases for k in p})}

    def median_wall(docs: dict) -> float | None:
        return round(statistics.median(d.get("wall_s", 0.0) for d in docs.values()), 3) if docs else None

    print(json.dumps({
        "benchmark": "eval_overhead", "device": torch.cuda.get_device_name(), "problem": args.problem,
        "candidates": len(entries), "compiled": sum(b["compiled"] for b in built.values()),
        "correct": sum(r["correct"] for r in verified["results"].values()),
        "timed": sum(1 for r in timed["results"].values() if r.get("timed")),
        "compile_s": round(compile_s, 2), "evaluate_s": round(t2 - t1, 2),
        "overhead_per_candidate_median_s": round(statistics.median(overheads), 3) if overheads else None,
        # The round's wall time per candidate (the job's worker start included), less the median kernel's own
        # timed work: the overhead a round actually pays.
        "overhead_amortized_per_candidate_s": (round((t2 - t1) / len(entries) - statistics.median(owns), 3)
                                               if owns else None),
        "overhead_minus_reference_work_median_s": (round(statistics.median(overheads_with_ref), 3)
                                                   if overheads_with_ref else None),
        "verify_phase_medians_s": medians(list(verified["results"].values())),
        "benchmark_phase_medians_s": medians(list(timed["results"].values())),
        "verify_wall_median_s": median_wall(verified["results"]),
        # Per verification trial: seconds from the request to its answer (the first includes the child's start,
        # its load and the wait for the previous candidate's exit where that applied), medians over candidates.
        "trial_answered_median_s": trial_medians(list(verified["results"].values()), n_trials),
        "benchmark_wall_median_s": median_wall(timed["results"]),
        "job_phases_s": verified.get("job"),
        "gpu_busy_pct": round(statistics.mean(sampler.samples), 1) if sampler.samples else None,
        "target_overhead_s": 1.5, "target_gpu_busy_pct": 70,
    }))


if __name__ == "__main__":
    main()
