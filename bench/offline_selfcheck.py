"""Self-check of the offline proposer: rounds of ideas per built-in problem, every implementation built,
verified against the reference and timed against eager PyTorch.

    PYTHONPATH=src python bench/offline_selfcheck.py --backend cuda --size full --out offline_cuda.json
    PYTHONPATH=src python bench/offline_selfcheck.py --backend cpu --size small

Round 1 starts from the reference; each later round from the ``--top`` fastest correct kernels so far, with
every earlier idea as "tried" (``--rounds``, default 2). Correctness: fresh inputs from two seeds,
``torch.allclose(atol=rtol=1e-4)``; time: median of ``--iters`` calls after warm-up, device events with the L2
flushed before each call on CUDA, perf_counter on the CPU. It keeps going past failures (a build error, a
wrong result) and records them. Needs only torch, numpy, the CUDA bindings (CUDA backend) and this package.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from kernelcraft.harness.sandbox.candidate import load_candidate
from kernelcraft.problems import builtin_dir, builtin_ids, load_problem
from kernelcraft.search.offline import OfflineProposer

TOL = 1e-4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=("cuda", "cpu"), required=True)
    p.add_argument("--size", choices=("small", "full"), default="small")
    p.add_argument("--problems", default="", help="comma-separated built-in ids (default: every supported one)")
    p.add_argument("--out", default="", help="write the results as JSON here")
    p.add_argument("--ideas", type=int, default=8, help="ideas per round (default 8)")
    p.add_argument("--impls", type=int, default=2, help="implementations per idea (default 2)")
    p.add_argument("--seed", type=int, default=0, help="proposer seed (default 0)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of ideas (default 2)")
    p.add_argument("--top", type=int, default=2, help="fastest correct kernels seeding the next round (default 2)")
    p.add_argument("--iters", type=int, default=20, help="timed calls per kernel (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls first (default 3)")
    return p.parse_args(argv)


class Timer:
    """Median wall time of a callable: CUDA events with an L2 flush before each call, or perf_counter."""

    def __init__(self, device: str, iters: int, warmup: int) -> None:
        self.device, self.iters, self.warmup = device, iters, warmup
        self.flush = torch.empty(64 << 20, dtype=torch.uint8, device=device) if device == "cuda" else None

    def __call__(self, fn) -> float:
        for _ in range(self.warmup):
            fn()
        times = []
        for _ in range(self.iters):
            if self.device == "cuda":
                self.flush.zero_()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)


def features_summary(f: dict | None) -> str:
    if not f:
        return ""
    skip = {"gen"}
    return " ".join(f"{k}={v}" for k, v in sorted(f.items()) if k not in skip)


def evaluate(problem, backend: str, device: str, cand: dict, path: Path, refs: list, timer: Timer,
             eager_ms: float) -> dict:
    """Build, verify on every reference input set, time if correct."""
    row = {"compiled": False, "correct": False, "max_abs_err": None, "ms": None, "speedup": None, "error": None}
    path.write_text(cand["source"])
    t0 = time.perf_counter()
    try:
        module = load_candidate(path)
    except Exception as exc:  # noqa: BLE001 - a failed build is a recorded result, not a crash
        row["error"] = f"build: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        return row
    row["build_s"] = round(time.perf_counter() - t0, 3)
    row["compiled"] = True
    try:
        torch.manual_seed(0)
        model = module.ModelNew(*problem.init_inputs()).to(device).eval()
        worst = 0.0
        ok = True
        with torch.no_grad():
            for inputs, want in refs:
                got = model(*[x.clone() for x in inputs])
                if device == "cuda":
                    torch.cuda.synchronize()
                if got.shape != want.shape:
                    ok = False
                    row["error"] = f"shape {tuple(got.shape)} != {tuple(want.shape)}"
                    break
                err = (got - want).abs().max().item() if want.numel() else 0.0
                worst = max(worst, err)
                ok = ok and bool(torch.allclose(got, want, atol=TOL, rtol=TOL))
            row["max_abs_err"] = worst
            row["correct"] = ok
            if ok:
                x = refs[0][0]
                row["ms"] = timer(lambda: model(*x))
                row["speedup"] = eager_ms / row["ms"] if row["ms"] else None
    except Exception as exc:  # noqa: BLE001
        row["error"] = f"run: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        if device == "cuda":
            torch.cuda.synchronize()
    return row


def run_problem(pid: str, args: argparse.Namespace, device: str, timer: Timer, workdir: Path) -> dict:
    problem = load_problem(builtin_dir() / f"{pid}.py", args.size)
    proposer = OfflineProposer(args.seed)
    result: dict = {"problem": pid, "op": problem.op, "size": args.size, "candidates": []}
    if not proposer.supports(problem, args.backend):
        result["skipped"] = proposer.why_unsupported(problem, args.backend)
        print(f"[{pid}] skipped: {result['skipped']}", flush=True)
        return result
    ref = problem.make_reference(0, device)
    refs = []
    with torch.no_grad():
        for s in (1, 2):
            inputs = problem.make_inputs(s, device)
            refs.append((inputs, ref(*[x.clone() for x in inputs])))
    with torch.no_grad():
        eager_ms = timer(lambda: ref(*refs[0][0]))
    result["eager_ms"] = eager_ms
    print(f"[{pid}] eager {eager_ms:.4f} ms", flush=True)

    seeds = [{"id": "reference", "source": None, "features": None, "time_ms": eager_ms, "speedup_eager": 1.0}]
    tried: list[dict] = []
    for round_ in range(1, args.rounds + 1):
        ideas = proposer.ideas(problem, args.backend, seeds, tried, args.ideas, round_)
        by_id = {s["id"]: s for s in seeds}
        for k, idea in enumerate(ideas):
            parent = by_id.get(idea["parent"], seeds[0])
            impls = proposer.implement(problem, args.backend, idea, parent, args.impls, round_)
            for j, cand in enumerate(impls):
                cid = f"r{round_}_i{k}_c{j}"
                row = evaluate(problem, args.backend, device, cand, workdir / f"{pid}_{cid}.py", refs, timer,
                               eager_ms)
                row.update({"id": cid, "round": round_, "idea": idea["spec"]["key"], "kind": idea["kind"],
                            "text": idea["text"], "parent": parent["id"], "features": cand["features"]})
                row["_source"] = cand["source"]
                result["candidates"].append(row)
                status = "ok " if row["correct"] else ("BAD" if row["compiled"] else "ERR")
                ms = f"{row['ms']:.4f}" if row["ms"] is not None else "-"
                sp = f"{row['speedup']:.2f}x" if row["speedup"] else "-"
                err = f"{row['max_abs_err']:.1e}" if row["max_abs_err"] is not None else "-"
                print(f"[{pid}] r{round_} {idea['spec']['key']:<16} {status} err={err:<8} {ms:>9} ms {sp:>7}  "
                      f"{features_summary(cand['features'])[:150]}"
                      + (f"  !! {row['error']}" if row["error"] else ""), flush=True)
        tried += ideas
        done = [c for c in result["candidates"] if c["correct"] and c["ms"] is not None]
        done.sort(key=lambda c: c["ms"])
        if done:
            seeds = [{"id": c["id"], "source": c["_source"], "features": c["features"], "time_ms": c["ms"],
                      "speedup_eager": c["speedup"]} for c in done[:args.top]]
    for c in result["candidates"]:
        c.pop("_source", None)
    correct = [c for c in result["candidates"] if c["correct"]]
    best = min(correct, key=lambda c: c["ms"]) if correct else None
    result["best"] = ({"id": best["id"], "ms": best["ms"], "speedup": best["speedup"], "idea": best["idea"]}
                      if best else None)
    result["counts"] = {"candidates": len(result["candidates"]), "compiled": sum(c["compiled"] for c in
                                                                               result["candidates"]),
                        "correct": len(correct)}
    refs.clear()
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = "cuda" if args.backend == "cuda" else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        print("offline_selfcheck: --backend cuda needs a visible CUDA GPU (torch.cuda.is_available() is False)",
              file=sys.stderr)
        return 2
    ids = [p for p in args.problems.split(",") if p] or builtin_ids()
    unknown = [p for p in ids if p not in builtin_ids()]
    if unknown:
        print(f"offline_selfcheck: unknown problem id {unknown[0]!r}; valid: {', '.join(builtin_ids())}",
              file=sys.stderr)
        return 2
    timer = Timer(device, args.iters, args.warmup)
    results = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kc_offline_") as tmp:
        os.environ.setdefault("KERNELCRAFT_BUILD_DIR", str(Path(tmp) / "build"))
        for pid in ids:
            try:
                results.append(run_problem(pid, args, device, timer, Path(tmp)))
            except Exception as exc:  # noqa: BLE001 - one broken problem must not stop the others
                traceback.print_exc()
                results.append({"problem": pid, "error": f"{type(exc).__name__}: {exc}"})
    total = time.perf_counter() - t0
    print("\nproblem                          eager ms   best ms   speedup  correct/total  best idea")
    for r in results:
        if "counts" not in r:
            print(f"{r['problem']:<32} {'skipped' if 'skipped' in r else 'ERROR: ' + r.get('error', '')}")
            continue
        b = r["best"]
        print(f"{r['problem']:<32} {r['eager_ms']:>9.4f} {b['ms'] if b else float('nan'):>9.4f} "
              f"{(b['speedup'] if b else 0):>8.2f}x {r['counts']['correct']:>6}/{r['counts']['candidates']:<6} "
              f"{b['idea'] if b else '-'}")
    print(f"total {total:.1f} s")
    doc = {"backend": args.backend, "size": args.size, "seed": args.seed, "tolerance": TOL,
           "torch": torch.__version__, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
           "seconds": total, "results": results}
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=1))
        print(f"wrote {args.out}")
    # Wrong candidates are results (some ideas trade accuracy); only a problem that could not run is a failure.
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
