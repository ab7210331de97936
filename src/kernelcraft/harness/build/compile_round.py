"""The compile stage: build every candidate of a round on CPU cores, in parallel, each in its own child process,
and send a model's candidates that failed to build back to that model with the compiler's errors.

One job per (problem, round) rather than per candidate: a fresh Python + torch process costs more than a fast-path
build (~1 s against 0.04-0.3 s), so the job starts a few warm zygotes once and forks a child per candidate. A
``load_inline`` build (~80 s) still gets one core per candidate through the same pool.

Compile errors are repaired here, not at verify time: this job runs on CPU where model calls belong, and a kernel
that does not build would otherwise cost a whole candidate. Verification errors are not repaired (that would put
model calls into GPU jobs).
"""

from __future__ import annotations

import os
import sysconfig
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kernelcraft import layout
from kernelcraft.context import RunContext
from kernelcraft.harness.sandbox.worker import Worker
from kernelcraft.progress import report

# What of a failed build's log the repair prompt shows: its last lines (the compiler's errors come last).
ERROR_TAIL_LINES = 40
ERROR_TAIL_CHARS = 4000

# Builds jobs (candidate id, its file relative to the run root, the log's file name) in the stage's worker pool:
# {candidate id: (result, what the build wrote to its log)}.
BuildFn = Callable[[list[tuple[str, str, str]]], dict[str, tuple[dict, str]]]


def compile_candidates(ctx: RunContext, problem: str, round_: int, candidates: list[dict], workers: int,
                       timeout: float, templates: str | Path | None = None) -> dict[str, dict]:
    """Build each candidate; a failure is a result with its reason, never an exception. A candidate the implement
    stage already failed (``failure``: the model's reply held no usable file) or found to duplicate an earlier one
    (``duplicate_of``) is recorded as not built, with that reason, without building it.

    With the prompt ``templates`` (the workflow's compile rule), a model's candidate that fails with a compile
    error is repaired up to ``llm.repair_attempts`` times (:func:`repair_compile_errors`); without them (the
    single-candidate CLI) nothing is repaired. Each built candidate's result names the file built, ``path``."""
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

    def build(job: tuple[str, str, str]) -> tuple[str, dict, str]:
        cid, rel, log_name = job
        worker = getattr(local, "worker", None)
        if worker is None:
            worker = local.worker = Worker(env=env, work_dir=ctx.root / "tmp")
            with lock:
                pool_workers.append(worker)
        log = ctx.log_path("candidates", problem, f"round_{round_}", log_name)
        start = log.stat().st_size if log.exists() else 0  # a re-run job appends: keep only this build's text
        outcome = worker.call("build", {"candidate": str(Path(ctx.root) / rel)}, timeout, log=log)
        text = "" if outcome.ok else _read_from(log, start)
        return cid, {
            "compiled": outcome.ok,
            "reason": None if outcome.ok else outcome.reason,
            "build_s": round(outcome.wall_s, 4),
            "kernels": outcome.result.get("kernels", []) if outcome.ok else [],
            "path": rel,
        }, text

    # Each pool worker owns a zygote (one torch import, ~1.3 s of CPU): never more of them than cores or candidates.
    workers = max(1, min(workers, len(candidates), len(os.sched_getaffinity(0))))
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            def build_all(jobs: list[tuple[str, str, str]]) -> dict[str, tuple[dict, str]]:
                return {cid: (res, text) for cid, res, text in pool.map(build, jobs)}

            built = build_all([(c["id"], c["path"], f"{c['id']}.compile.log") for c in candidates])
            results.update({cid: res for cid, (res, _) in built.items()})
            if templates is not None:
                logs = {cid: text for cid, (_, text) in built.items()}
                repair_compile_errors(ctx, problem, round_, candidates, results, logs, build_all, templates)
    finally:
        for w in pool_workers:
            w.close()
    ok = sum(r["compiled"] for r in results.values())
    repaired = sum(r["compiled"] and bool(r.get("repairs")) for r in results.values())
    report(problem, round_, "compile", f"{ok}/{len(results)} built"
           + (f", {repaired} after repair" if repaired else ""))
    return results


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


def compile_errors(ctx: RunContext, reason: str, log_text: str, candidate_file: str) -> str:
    """What the repair prompt is told: the build's reason and the tail of its log. Traceback frames outside the
    candidate's own file (the harness importing it) are dropped, and this machine's folders (the run root, the
    package, site-packages) are cut from paths, so the prompt, and with it the request key that resume and
    replay look up, is the same wherever the run lives."""
    roots = {str(Path(ctx.root).resolve()), str(ctx.root), str(Path(__file__).resolve().parents[3]),
             sysconfig.get_paths()["purelib"]}
    text = log_text
    for root in sorted(roots, key=len, reverse=True):
        text = text.replace(root.rstrip(os.sep) + os.sep, "")
    kept, skipping = [], False
    for line in text.strip().splitlines():
        if line.startswith('  File "'):
            skipping = f'"{candidate_file}"' not in line
        elif not line.startswith("    "):
            skipping = False
        if not skipping:
            kept.append(line)
    tail = "\n".join(kept[-ERROR_TAIL_LINES:])[-ERROR_TAIL_CHARS:]
    return f"{reason}\n\n{tail}" if tail else reason


def _repairable(result: dict) -> bool:
    return not result["compiled"] and (result.get("reason") or "").startswith("compile error")


def repair_compile_errors(ctx: RunContext, problem: str, round_: int, candidates: list[dict],
                          results: dict[str, dict], logs: dict[str, str], build_all: BuildFn,
                          templates: str | Path) -> None:
    """Send each candidate that failed with a compile error back to the model entry that wrote it (an entry of
    ``models.implement``; the offline proposer's candidates are never repaired), with the errors, up to
    ``llm.repair_attempts`` times; build each repair, written as ``<cid>.repair<k>.py`` beside the original.

    Updates ``results`` in place: a repaired candidate's result is its last build's, with ``path`` that file and
    ``repairs`` one ``{attempt, path, transcript, reason_before}`` per call. A call that gave no code (no code in
    the reply, budget reached, provider fault) ends the candidate's repairs: it keeps its compile reason, with a
    note. Calls go through the run's model client, so transcripts, resume, replay and the budget apply."""
    from kernelcraft.llm.settings import llm_settings
    from kernelcraft.search.ensemble import model_label
    from kernelcraft.search.rounds import job_proposers

    attempts = int(llm_settings(ctx.config)["repair_attempts"])
    entries: dict[str, dict] = {}
    for entry in ctx.config["models"]["implement"]:
        if entry["provider"] != "offline":
            entries.setdefault(model_label(entry), entry)
    todo = [c for c in candidates if c.get("model") in entries and _repairable(results[c["id"]])]
    if attempts <= 0 or not todo:
        return
    labels = [label for label in entries if any(c["model"] == label for c in todo)]
    proposers = dict(zip(labels, job_proposers(ctx, [entries[label] for label in labels], templates), strict=True))
    prob = ctx.load_problem(problem)
    for attempt in range(1, attempts + 1):
        by_model: dict[str, list[dict]] = {}
        for cand in todo:
            by_model.setdefault(cand["model"], []).append(cand)
        with ThreadPoolExecutor(max_workers=len(by_model)) as pool:  # one model's calls do not wait on another's
            futures = {label: pool.submit(_ask, ctx, proposers[label], prob, round_, attempt, cands, results, logs)
                       for label, cands in by_model.items()}
            answers = {label: f.result() for label, f in futures.items()}
        jobs = []
        for label, cands in by_model.items():
            for cand, fixed in zip(cands, answers[label], strict=True):
                res = results[cand["id"]]
                record = {"attempt": attempt, "path": None, "transcript": fixed.get("transcript"),
                          "reason_before": res["reason"]}
                res.setdefault("repairs", []).append(record)
                if fixed.get("source") is None:
                    res["reason"] = f"{res['reason']} (repair {attempt} failed: {fixed.get('failure')})"
                    continue
                path = layout.repair_file(Path(ctx.root) / cand["path"], cand["id"], attempt)
                path.write_text(fixed["source"])
                record["path"] = str(path.relative_to(ctx.root))
                jobs.append((cand["id"], record["path"], f"{cand['id']}.repair{attempt}.compile.log"))
        for cid, (res, text) in build_all(jobs).items():
            results[cid] = res | {"repairs": results[cid]["repairs"]}
            logs[cid] = text
        rebuilt = {cid for cid, _, _ in jobs}
        todo = [c for c in todo if c["id"] in rebuilt and _repairable(results[c["id"]])]
        if not todo:
            break


def _ask(ctx: RunContext, proposer: Any, prob: Any, round_: int, attempt: int, cands: list[dict],
         results: dict[str, dict], logs: dict[str, str]) -> list[dict]:
    """One model's repairs of its failed builds, asked together: each the file last built and its errors."""
    tasks = []
    for cand in cands:
        res = results[cand["id"]]
        tasks.append({"source": (Path(ctx.root) / res["path"]).read_text(errors="replace"),
                      "errors": compile_errors(ctx, res["reason"], logs.get(cand["id"], ""), res["path"]),
                      "idea": {"id": cand.get("idea_id"), "kind": cand.get("kind"), "text": cand.get("idea")},
                      "candidate": cand["id"]})
    return proposer.repair_many(prob, ctx.backend, tasks, round_, attempt=attempt)
