"""The ``kernelcraft`` command. ``kernelcraft eval REF.py CANDIDATE.py`` is the single-candidate contract of
DESIGN.md §3, and runs exactly the code the workflow's compile and evaluate (verify + benchmark) rules run."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from kernelcraft.config import load_config, merge


class UsageError(Exception):
    """Unusable input: reported as one line and a non-zero exit."""


def _eval(args: argparse.Namespace) -> int:
    from kernelcraft import progress
    from kernelcraft.context import RunContext
    from kernelcraft.harness.build.compile_round import compile_candidates
    from kernelcraft.harness.build.gpu import detect_cuda_arch, visible_cuda_devices
    from kernelcraft.harness.evaluate_round import evaluate_candidates
    from kernelcraft.harness.timing.benchmark_round import baseline
    from kernelcraft.problems import ProblemError, load_problem

    ref, cand = Path(args.reference).resolve(), Path(args.candidate).resolve()
    for path, what in ((ref, "reference"), (cand, "candidate")):
        if not path.is_file():
            raise UsageError(f"{what} file not found: {path}")
    device = args.device or ("cuda" if visible_cuda_devices() > 0 else "cpu")
    if device == "cuda" and visible_cuda_devices() == 0:
        raise UsageError("--device cuda: no CUDA GPU is visible; use --device cpu")
    try:
        problem = load_problem(ref, "full")
    except ProblemError as err:
        raise UsageError(str(err)) from None
    overrides = {"run": "eval", "backend": device, "seed": args.seed,
                 "benchmark": {"torch_compile": bool(args.torch_compile)}}
    if args.atol is not None:
        overrides.setdefault("tolerance", {})["atol"] = args.atol
    if args.rtol is not None:
        overrides.setdefault("tolerance", {})["rtol"] = args.rtol
    if args.reference_precision is not None:
        overrides["verify"] = {"reference_precision": args.reference_precision}
    config = load_config(overrides=overrides)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="kernelcraft-eval-"))
    arch = detect_cuda_arch() if device == "cuda" else None
    resolved = {"backend": device, "size": "full", "cuda_arch": arch, "problems": {problem.id: str(ref)}}
    ctx = RunContext.from_config(merge(config, {"_resolved": resolved}), results=work)
    if args.json:
        progress.quiet(True)
    entry = {"id": "candidate", "path": str(cand), "parent": "reference", "idea": "", "model": "user"}
    built = compile_candidates(ctx, problem.id, 0, [entry], 1, float(config["build"]["timeout_s"]))
    verdict, timing = evaluate_candidates(ctx, problem.id, 0, [entry], built)
    base = baseline(ctx, problem.id, 4 * float(config["benchmark"]["timeout_s"])) if args.torch_compile else {}
    b, v, t = built["candidate"], verdict["results"].get("candidate", {}), timing["results"].get("candidate", {})
    reasons = [] if b["compiled"] else [b["reason"]]
    reasons += list(v.get("reasons") or [])
    if v.get("correct") and not t.get("timed"):
        reasons.append(t.get("reason") or "not timed")
    compile_ms = base.get("compile_ms")
    time_ms = t.get("time_ms")
    result = {
        "reference": str(ref), "candidate": str(cand), "device": device,
        "compiled": b["compiled"], "correct": bool(v.get("correct")) and bool(t.get("timed")),
        "reasons": reasons,
        "time_ms": time_ms, "time_iqr_ms": t.get("time_iqr_ms"),
        "eager_ms": t.get("eager_ms"), "eager_iqr_ms": t.get("eager_iqr_ms"),
        "compile_ms": compile_ms,
        "speedup_eager": t.get("speedup_eager"),
        "speedup_compile": (compile_ms / time_ms) if (compile_ms and time_ms) else None,
        "max_abs_err": v.get("max_abs_err"), "max_rel_err": v.get("max_rel_err"),
        "passes_1e-4": v.get("passes_1e-4"), "tolerance": verdict["tolerance"],
        "inputs_refused": verdict.get("inputs_refused", {}),
        "reference_precision": verdict.get("reference_precision", "native"),
        "reference_float64_refused": verdict.get("reference_float64_refused", ""),
        "build_s": b["build_s"],
    }
    if args.json:
        print(json.dumps(result))
    else:
        verdict_text = "correct" if result["correct"] else "REJECTED: " + "; ".join(reasons)
        print(f"{cand.name}: {verdict_text}")
        if time_ms is not None:
            print(f"  time {time_ms:.4g} ms (eager {result['eager_ms']:.4g} ms, "
                  f"{result['speedup_eager']:.2f}x)  max abs err {result['max_abs_err']:.3g}")
    return 0


def _problems(args: argparse.Namespace) -> int:
    import time

    from kernelcraft.problems import discover
    from kernelcraft.problems.recognise import recognise_problem

    start = time.perf_counter()
    try:
        problems = discover([] if args.dirs else "all", args.dirs, args.include, None, args.size)
    except ValueError as err:
        raise UsageError(str(err)) from None
    rows = [(p.id, recognise_problem(p)) for p in problems]
    fit = sum(r.op is not None for _, r in rows)
    if args.json:
        print(json.dumps([{"problem": pid, "family": r.family, "op": r.op, "params": r.params, "reason": r.reason,
                           "graph": r.graph} for pid, r in rows], indent=1))
        return 0
    width = max([len("problem")] + [len(pid) for pid, _ in rows])
    print(f"{'problem'.ljust(width)}  offline family (or why none fits)")
    for pid, r in rows:
        print(f"{pid.ljust(width)}  {r.line()}")
    print(f"{fit} of {len(rows)} problems have an offline family ({time.perf_counter() - start:.1f} s, no GPU used)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kernelcraft", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("eval", help="compile, verify and time one candidate against a reference")
    ev.add_argument("reference", help="KernelBench-format reference file (class Model, get_inputs, get_init_inputs)")
    ev.add_argument("candidate", help="candidate file defining class ModelNew")
    ev.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda if visible, else cpu")
    ev.add_argument("--atol", type=float, default=None, help="absolute tolerance (default: config.yaml's)")
    ev.add_argument("--rtol", type=float, default=None, help="relative tolerance (default: config.yaml's)")
    ev.add_argument("--reference-precision", choices=("native", "float64"), default=None,
                    help="compare against the reference's own outputs or a float64 copy's (default: config.yaml's)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--torch-compile", action="store_true", help="also time the reference under torch.compile")
    ev.add_argument("--work-dir", default=None, help="where builds and logs go (default: a temporary folder)")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.set_defaults(func=_eval)
    pr = sub.add_parser("problems", help="list problems with the offline kernel family that fits each (read from "
                        "the traced operator graph), or why none does")
    pr.add_argument("dirs", nargs="*", help="directories of KernelBench-format files (default: the built-in suite)")
    pr.add_argument("--include", default=None, help="only problems whose id matches this regular expression")
    pr.add_argument("--size", choices=("full", "small"), default="full", help="the sizes to trace (default: full)")
    pr.add_argument("--json", action="store_true", help="print one JSON list")
    pr.set_defaults(func=_problems)
    bk = sub.add_parser("bank", help="put a finished run's best kernel of each problem into a seed-bank directory")
    bk.add_argument("run", help="the run's directory, results/<run>")
    bk.add_argument("bank", help="the seed-bank directory to write into (created); name it in seed_bank.dirs")
    bk.set_defaults(func=_bank)
    ar = sub.add_parser("archive", help="write a finished run into one checksummed .tar.gz")
    ar.add_argument("run", help="the run's directory, results/<run>")
    ar.add_argument("--out", default=None, help="the archive to write (default: <run>.tar.gz beside the run)")
    ar.set_defaults(func=_archive)
    rp = sub.add_parser("replay", help="re-run an archived run into a new run, every model answer from the archive")
    rp.add_argument("archive", help="a run archive written by 'kernelcraft archive'")
    rp.add_argument("--run", default=None, help="the new run's name (default: <archived run>-replay)")
    rp.add_argument("--directory", default=".", help="where results/<run> goes (default: here)")
    rp.add_argument("--snakefile", default=None, help="the workflow's Snakefile (default: ./workflow/Snakefile)")
    rp.add_argument("--cores", type=int, default=2)
    rp.set_defaults(func=_replay)
    cm = sub.add_parser("compare", help="two runs or archives side by side; exit 0 when they are the same search, "
                                        "1 when they differ")
    cm.add_argument("a", help="a run directory or a run archive")
    cm.add_argument("b", help="a run directory or a run archive")
    cm.add_argument("--json", action="store_true", help="print one JSON object")
    cm.set_defaults(func=_compare)
    return parser


def _archive(args: argparse.Namespace) -> int:
    from kernelcraft.archive.bundle import ArchiveError, write_archive

    try:
        print(write_archive(Path(args.run), Path(args.out) if args.out else None))
    except ArchiveError as err:
        raise UsageError(str(err)) from None
    return 0


def _replay(args: argparse.Namespace) -> int:
    from kernelcraft.archive.bundle import ArchiveError
    from kernelcraft.archive.compare import compare_runs, format_comparison, load_run
    from kernelcraft.archive.replay import replay

    try:
        run = replay(Path(args.archive), args.run, Path(args.directory),
                     Path(args.snakefile) if args.snakefile else None, args.cores)
        result = compare_runs(load_run(Path(args.archive)), load_run(run))
    except ArchiveError as err:
        raise UsageError(str(err)) from None
    print(format_comparison(result))
    return 0 if result["same_search"] else 1


def _compare(args: argparse.Namespace) -> int:
    from kernelcraft.archive.bundle import ArchiveError
    from kernelcraft.archive.compare import compare_runs, format_comparison, load_run

    try:
        result = compare_runs(load_run(Path(args.a)), load_run(Path(args.b)))
    except ArchiveError as err:
        raise UsageError(str(err)) from None
    print(json.dumps(result) if args.json else format_comparison(result))
    return 0 if result["same_search"] else 1


def _bank(args: argparse.Namespace) -> int:
    from kernelcraft.search.seed_bank import SeedBankError, bank_from_run

    try:
        written = bank_from_run(Path(args.run), Path(args.bank))
    except SeedBankError as err:
        raise UsageError(str(err)) from None
    for path in written:
        print(path)
    if not written:
        print(f"kernelcraft: no problem of {args.run} has a correct kernel yet; nothing written", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as err:
        print(f"kernelcraft: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`kernelcraft compare A B | head`): not an error of ours, and no traceback. Python's
        # own flush at exit would raise again on the closed pipe, so stdout is pointed at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
