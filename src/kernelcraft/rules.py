"""Entry points of the Snakemake rules: each reads its rule's inputs, calls the package, writes its outputs.

The scripts under workflow/scripts/ are one line each and call these, so all logic stays here where it is tested. Each
function takes the ``snakemake`` object Snakemake injects into scripts.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kernelcraft import layout, progress
from kernelcraft.context import RunContext
from kernelcraft.devices import gpu_lease
from kernelcraft.jsonio import read_json, write_json


def _ctx(smk: Any) -> RunContext:
    progress.set_log(smk.log[0] if smk.log else None)
    return RunContext.from_config(smk.config, results=layout.results_root(smk.output[0], smk.config["run"]))


def _round(smk: Any) -> int:
    return int(smk.wildcards["round"])


def ideas(smk: Any) -> None:
    from kernelcraft.search.rounds import propose_ideas

    ctx = _ctx(smk)
    write_json(smk.output[0], propose_ideas(ctx, smk.wildcards["problem"], _round(smk), smk.params.templates))


def implement(smk: Any) -> None:
    from kernelcraft.search.rounds import implement_ideas

    ctx = _ctx(smk)
    doc = implement_ideas(ctx, smk.wildcards["problem"], _round(smk), read_json(smk.input["ideas"]),
                          smk.params.templates)
    write_json(smk.output[0], doc)


def compile(smk: Any) -> None:  # noqa: A001 - the rule is called compile
    from kernelcraft.harness.build.compile_round import compile_candidates

    ctx = _ctx(smk)
    problem, round_ = smk.wildcards["problem"], _round(smk)
    candidates = read_json(smk.input["implement"])["candidates"]
    workers = int(ctx.config["build"]["workers"]) or int(smk.threads)
    results = compile_candidates(ctx, problem, round_, candidates, workers, float(ctx.config["build"]["timeout_s"]),
                                 templates=smk.params.templates)
    write_json(smk.output[0], {"problem": problem, "round": round_, "backend": ctx.backend,
                               "cuda_arch": ctx.cuda_arch, "results": results})


@contextmanager
def _gpu(ctx: RunContext, problem: str, round_: int | None) -> Iterator[str | None]:
    """The GPU this job runs on, held for the job's life (kernelcraft.devices); None on the CPU backend."""
    if ctx.backend != "cuda":
        yield None
        return

    def waiting(devices: list[str]) -> None:
        progress.report(problem, round_, "gpu", f"every GPU ({', '.join(devices)}) is held by another job; waiting")

    with gpu_lease(on_wait=waiting) as lease:
        if lease is not None:
            progress.report(problem, round_, "gpu", f"running on {lease.describe()}")
        yield lease.device if lease is not None else None


def evaluate(smk: Any) -> None:
    from kernelcraft.harness.evaluate_round import evaluate_candidates

    started_s = _process_age()
    ctx = _ctx(smk)
    problem, round_ = smk.wildcards["problem"], _round(smk)
    with _gpu(ctx, problem, round_) as gpu:
        leased_s = _process_age()
        verified, timed = evaluate_candidates(ctx, problem, round_,
                                              read_json(smk.input["implement"])["candidates"],
                                              read_json(smk.input["compile"])["results"], threads=int(smk.threads))
    # Where a GPU job's own time goes before its work starts (interpreter and imports, then the GPU lease): with
    # Snakemake's benchmark file (the job's wall time) it says what a job costs beyond evaluating candidates.
    verified["job"] = verified.get("job", {}) | {"process_to_rule_s": started_s, "process_to_lease_s": leased_s}
    write_json(smk.output["verify"], {"problem": problem, "round": round_, "gpu": gpu} | verified)
    write_json(smk.output["benchmark"], {"problem": problem, "round": round_, "gpu": gpu} | timed)


def _process_age() -> float | None:
    """Seconds since this process started (Linux's /proc; None elsewhere)."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return round(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 2)


def select(smk: Any) -> None:
    from kernelcraft.search.rounds import select_seeds

    ctx = _ctx(smk)
    doc = select_seeds(ctx, smk.wildcards["problem"], _round(smk), read_json(smk.input["implement"]),
                       read_json(smk.input["verify"]), read_json(smk.input["benchmark"]))
    write_json(smk.output[0], doc)


def baseline(smk: Any) -> None:
    from kernelcraft.harness.timing.benchmark_round import baseline as run_baseline

    ctx = _ctx(smk)
    problem = smk.wildcards["problem"]
    timeout = float(ctx.config["benchmark"]["timeout_s"]) * 4  # includes a torch.compile
    with _gpu(ctx, problem, None) as gpu:
        doc = run_baseline(ctx, problem, timeout, threads=int(smk.threads))
    write_json(smk.output[0], doc | {"gpu": gpu})


def manifest(smk: Any) -> None:
    from kernelcraft.manifest import build_manifest

    ctx = _ctx(smk)
    write_json(smk.output[0], build_manifest(ctx, smk.params.workflow, list(smk.input)))


def report(smk: Any) -> None:
    from kernelcraft.report.collect import collect
    from kernelcraft.report.render import render_report
    from kernelcraft.report.suite import problem_table, write_tables
    from kernelcraft.report.table import write_candidates_csv

    ctx = _ctx(smk)
    summary, rows = collect(ctx, manifest=read_json(smk.input["manifest"]))
    write_candidates_csv(rows, smk.output["csv"])
    write_tables(problem_table(summary), os.path.dirname(smk.output["problems_csv"]))
    render_report(summary, smk.output["html"], template_dir=os.path.abspath(smk.params.templates))
    progress.report(ctx.config["run"], None, "report", f"wrote {smk.output['html']}")
