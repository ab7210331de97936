"""Device memory of the evaluate job over the problem's own footprint, at full size (issue 9).

Target: peak device memory of the evaluate job (the trusted parent and the candidate's process together) at most
3x the problem's footprint (inputs + outputs + parameters of one call), on the built-in suite at full size and on
KernelBench level-1 files at their published sizes (tensors of several GB).

    PYTHONPATH=src python bench/eval_memory.py [--builtin] [--kernelbench DIR/KernelBench/level1]
        [--problems REGEX] [--ideas 2]

Each problem's candidates are the offline proposer's first-round kernels where a family fits; elsewhere one
candidate that runs the reference's own PyTorch code and then one compiled kernel over its output in place (so
the job is judged under ``verify.pytorch_compute: allow_partial``): both go through the whole evaluation, every
verification trial and the timed blocks. Figures per problem:

- ``parent``: this process's peak allocated by PyTorch during the job (it is the job's parent: reference,
  trial inputs and outputs, timing of the eager reference);
- ``child``: the largest peak a candidate's process reported (the same allocator figure);
- ``job``: parent + child, an upper bound (the two peaks need not coincide), over the footprint: the target;
- ``device``: the device's used memory (``cudaMemGetInfo``, sampled every 5 ms) above what was in use before the
  job: every process's CUDA context and cached blocks included;
- ``ref_alone``: one eager call of the reference in a clean allocator, over the footprint: what the problem itself
  needs beyond its footprint (intermediates), paid in both processes when a candidate runs PyTorch code.

Prints one JSON object per problem, then a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import re
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
from kernelcraft.harness.sandbox.tasks import flatten_outputs, tensor_bytes
from kernelcraft.problems import builtin_dir, load_problem
from kernelcraft.search.offline import OfflineProposer

GIB = 2**30

# One compiled kernel over the output's bytes, in place: the candidate's own kernel runs in every call, and it
# allocates nothing beyond what the reference's code does.
_TOUCH = r'''
extern "C" __global__ void touch(unsigned char* p, long long n, long long zero) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long step = (long long)gridDim.x * blockDim.x;
    for (; i < n; i += step) p[i] = (unsigned char)(p[i] + zero);
}
'''


def torch_code_candidate(problem_source: str) -> str:
    """A candidate from a problem file: its Model renamed, subclassed, and one compiled kernel run over the
    outputs in place."""
    body = re.sub(r"\bModel\b", "TorchCode", problem_source)
    return body + f'''

from kernelcraft.harness.build import cuda_kernel

TOUCH = cuda_kernel(r"""{_TOUCH}""", "touch")


class ModelNew(TorchCode):
    def forward(self, *args):
        out = super().forward(*args)
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            n = t.numel() * t.element_size()
            TOUCH(grid=(min(65535, (n + 255) // 256),), block=(256,), args=(t, n, 0))
        return out
'''


class _PhasePeaks:
    """Where the parent's peak comes from: each step of the job (the reference's set-up, the timing set-up, a
    verification trial's judgement, a timed block's check, a block of the eager reference) gets the peak allocated
    memory reached inside it, by wrapping those steps in this (trusted, measuring) process only."""

    STEPS = (("kernelcraft.harness.verify.verify_round", "Verifier", "prepare", "reference_setup"),
             ("kernelcraft.harness.timing.benchmark_round", "Timer", "prepare", "timing_setup"),
             ("kernelcraft.harness.verify.verify_round", "Verifier", "judge_trial", "judge_trial"),
             ("kernelcraft.harness.timing.benchmark_round", "Timer", "judge_block", "judge_block"),
             ("kernelcraft.harness.timing.protocol", "BlockTimer", "block", "eager_block"))

    def __init__(self) -> None:
        self.peaks: dict[str, int] = {}
        self._saved: list = []
        self._open: list[str] = []  # the steps being run, outermost first (the eager block runs inside a check)

    def __enter__(self) -> _PhasePeaks:
        import importlib

        for module, cls_name, method, step in self.STEPS:
            cls = getattr(importlib.import_module(module), cls_name)
            original = getattr(cls, method)
            self._saved.append((cls, method, original))
            setattr(cls, method, self._wrap(original, step))
        return self

    def _note(self, step: str, peak: int) -> None:
        self.peaks[step] = max(self.peaks.get(step, 0), peak)

    def _wrap(self, original, step: str):
        def wrapped(*args, **kwargs):
            # The peak since the last reset belongs to the step that encloses this one, or to the time between
            # steps ("_outside").
            self._note(self._open[-1] if self._open else "_outside", torch.cuda.max_memory_allocated())
            torch.cuda.reset_peak_memory_stats()
            self._open.append(step)
            try:
                return original(*args, **kwargs)
            finally:
                self._open.pop()
                inside = torch.cuda.max_memory_allocated()
                self._note(step, inside)
                if self._open:  # the enclosing step holds this one's peak too
                    self._note(self._open[-1], inside)
                else:  # the time after a step starts from nothing of it
                    torch.cuda.reset_peak_memory_stats()
        return wrapped

    def __exit__(self, *exc: object) -> None:
        self._note("_outside", torch.cuda.max_memory_allocated())
        for cls, method, original in self._saved:
            setattr(cls, method, original)


class _DeviceSampler(threading.Thread):
    """Peak of the device's used memory while the job runs (every process on it)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            free, total = torch.cuda.mem_get_info()
            self.peak = max(self.peak, total - free)
            time.sleep(0.005)


def footprint(problem, seed: int) -> dict:
    """Inputs, outputs and parameters of one call, in bytes, and the reference's own peak for that call."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    model = problem.make_reference(seed, "cuda")
    inputs = problem.make_inputs(seed, "cuda")
    held = torch.cuda.memory_allocated()
    with torch.no_grad():
        outs = flatten_outputs(model(*inputs))
    torch.cuda.synchronize()
    fp = {"inputs": tensor_bytes(inputs), "outputs": tensor_bytes(outs),
          "params": tensor_bytes([*model.parameters(), *model.buffers()]),
          "ref_call_peak": torch.cuda.max_memory_allocated() - base, "ref_held": held - base}
    del model, inputs, outs
    torch.cuda.empty_cache()
    return fp


def candidates(problem, pid: str, path: Path, work: Path, seed: int, ideas: int) -> tuple[list[dict], str]:
    """Entries to evaluate and the ``verify.pytorch_compute`` policy they need."""
    proposer = OfflineProposer(seed)
    parent = {"id": "reference", "source": None, "features": None, "time_ms": None, "speedup_eager": 1.0}
    entries: list[dict] = []
    out = work / pid
    out.mkdir(parents=True, exist_ok=True)
    try:
        found = proposer.ideas(problem, "cuda", [parent], [], ideas, 1)
    except Exception:  # noqa: BLE001 - no family: the PyTorch-code candidate below
        found = []
    for k, idea in enumerate(found):
        for impl in proposer.implement(problem, "cuda", idea, parent, 1, 1):
            p = out / f"offline{k}.py"
            p.write_text(impl["source"])
            entries.append({"id": p.stem, "path": str(p)})
    if entries:
        return entries, "reject"
    p = out / "torch_code.py"
    p.write_text(torch_code_candidate(path.read_text()))
    return [{"id": p.stem, "path": str(p)}], "allow_partial"


def measure(pid: str, path: Path, work: Path, args: argparse.Namespace) -> dict:
    problem = load_problem(path, "full")
    fp = footprint(problem, args.seed)
    total = fp["inputs"] + fp["outputs"] + fp["params"]
    entries, policy = candidates(problem, pid, path, work, args.seed, args.ideas)
    config = load_config(overrides={"run": "memory", "backend": "cuda", "seed": args.seed})
    config = merge(config, {"verify": {"pytorch_compute": policy}, "_resolved": {
        "backend": "cuda", "size": "full", "cuda_arch": detect_cuda_arch(), "problems": {pid: str(path)}}})
    ctx = RunContext.from_config(config, results=work / "runs")
    built = compile_candidates(ctx, pid, 1, entries, 16, 300)

    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base_alloc = torch.cuda.memory_allocated()
    free, dev_total = torch.cuda.mem_get_info()
    base_used = dev_total - free
    sampler = _DeviceSampler()
    sampler.start()
    t0 = time.perf_counter()
    with _PhasePeaks() as steps:
        verified, timed = evaluate_candidates(ctx, pid, 1, entries, built)
    wall = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    parent = max(steps.peaks.values()) - base_alloc
    parent_reserved = torch.cuda.max_memory_reserved()
    results = verified["results"]
    child = max((r.get("child_memory", {}).get("peak_allocated_bytes", 0) for r in results.values()), default=0)
    child_reserved = max((r.get("child_memory", {}).get("peak_reserved_bytes", 0) for r in results.values()),
                         default=0)
    child_steps = {k: max((r.get("child_memory", {}).get(f"{k}_peak_bytes", 0) for r in results.values()),
                          default=0) for k in ("verify", "timing")}
    torch.cuda.empty_cache()
    return {
        "problem": pid, "candidates": len(entries), "policy": policy,
        "correct": sum(bool(r.get("correct")) for r in results.values()),
        "timed": sum(1 for r in timed["results"].values() if r.get("timed")),
        "reasons": sorted({x for r in results.values() for x in r.get("reasons", [])})[:3],
        "footprint_gib": round(total / GIB, 3),
        "inputs_gib": round(fp["inputs"] / GIB, 3), "outputs_gib": round(fp["outputs"] / GIB, 3),
        "params_gib": round(fp["params"] / GIB, 3),
        "parent_gib": round(parent / GIB, 3), "child_gib": round(child / GIB, 3),
        "parent_reserved_gib": round(parent_reserved / GIB, 3), "child_reserved_gib": round(child_reserved / GIB, 3),
        "device_gib": round((sampler.peak - base_used) / GIB, 3),
        "job_x": round((parent + child) / total, 2) if total else None,
        "reserved_x": round((parent_reserved + child_reserved) / total, 2) if total else None,
        "device_x": round((sampler.peak - base_used) / total, 2) if total else None,
        "ref_alone_x": round(fp["ref_call_peak"] / total, 2) if total else None,
        "evaluate_s": round(wall, 1),
        # Where each process's peak was reached, GiB above the job's start (parent) or absolute (child).
        "parent_steps_gib": {k: round((v - base_alloc) / GIB, 3) for k, v in sorted(steps.peaks.items())},
        "child_steps_gib": {k: round(v / GIB, 3) for k, v in child_steps.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--builtin", action="store_true", help="the built-in suite at full size")
    parser.add_argument("--kernelbench", type=Path, help="a KernelBench level directory (published sizes)")
    parser.add_argument("--problems", default=".", help="regex on problem ids")
    parser.add_argument("--ideas", type=int, default=2, help="offline first-round ideas per problem")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("eval_memory: needs a CUDA GPU (it measures device memory)")
    files: list[Path] = []
    if args.builtin:
        files += sorted(builtin_dir().glob("*.py"))
    if args.kernelbench:
        files += sorted(args.kernelbench.glob("*.py"), key=lambda p: (len(p.stem.split("_")[0]), p.stem))
    files = [f for f in files if not f.name.startswith("_") and re.search(args.problems, f.stem)]
    if not files:
        raise SystemExit("eval_memory: no problems: pass --builtin and/or --kernelbench DIR (and a --problems regex "
                         "that matches)")
    work = Path(tempfile.mkdtemp(prefix="kc-memory-"))
    rows = []
    for f in files:
        try:
            row = measure(f.stem, f, work, args)
        except Exception as exc:  # noqa: BLE001 - one problem's failure is a row, not the end of the benchmark
            row = {"problem": f.stem, "error": f"{type(exc).__name__}: {exc}"[:300]}
            torch.cuda.empty_cache()
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| problem | footprint GiB | parent GiB | child GiB | job / footprint | device / footprint | "
          "reference alone | correct |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['problem']} | error: {r['error']} | | | | | | |")
            continue
        print(f"| {r['problem']} | {r['footprint_gib']} | {r['parent_gib']} | {r['child_gib']} | {r['job_x']}x | "
              f"{r['device_x']}x | {r['ref_alone_x']}x | {r['correct']}/{r['candidates']} |")


if __name__ == "__main__":
    main()
