"""The idea-branching method's per-round steps that are not measurements: ideas, implement, select.

Each takes the run context and what earlier stages wrote, and returns the JSON document its rule writes. The
seeds of round r are round r-1's selection (the reference itself in round 1); the ideas of round r are conditioned
on them and on every idea tried in rounds 1..r-1 for the same problem.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kernelcraft import layout
from kernelcraft.context import RunContext
from kernelcraft.jsonio import read_json
from kernelcraft.progress import report
from kernelcraft.search.dedupe import digest
from kernelcraft.search.ensemble import make_proposer, model_label, split_by_weight
from kernelcraft.search.seed_bank import BANK_MODEL, bank_dirs, bank_seeds

# Candidate fields copied from a proposer's result when present (model transcripts, tokens, repairs, features).
RESULT_FIELDS = ("features", "transcript", "usage", "repairs")


def reference_seed(ctx: RunContext, problem: str) -> dict:
    base = read_json(layout.baseline_file(ctx.root, problem))
    return {"id": "reference", "round": 0, "source": None, "features": None, "path": None,
            "time_ms": base.get("eager_ms"), "speedup_eager": 1.0 if base.get("eager_ms") else None}


def current_seeds(ctx: RunContext, problem: str, round_: int) -> list[dict]:
    """Round 1 starts from the reference, later rounds from the previous selection (with the code attached); then,
    in every round, the seed bank's kernels that fit the problem (search/seed_bank.py), unless one is already among
    the selection as the round-1 candidate it was evaluated as."""
    bank = bank_seeds(ctx.config, ctx.load_problem(problem), ctx.backend) if bank_dirs(ctx.config) else []
    if round_ <= 1:
        return [reference_seed(ctx, problem), *bank]
    seeds = read_json(layout.stage_file(ctx.root, problem, round_ - 1, "select"))["seeds"]
    out = []
    for s in seeds:
        s = dict(s)
        s["source"] = (ctx.root / s["path"]).read_text() if s.get("path") else None
        out.append(s)
    if not out:
        out = [reference_seed(ctx, problem)]
    selected = {digest(s["source"]) for s in out if s.get("source")}
    return out + [b for b in bank if digest(b["source"]) not in selected]


def tried_ideas(ctx: RunContext, problem: str, round_: int) -> list[dict]:
    tried: list[dict] = []
    for r in range(1, round_):
        tried.extend(read_json(layout.stage_file(ctx.root, problem, r, "ideas"))["ideas"])
    return tried


def build_path(config: dict) -> str:
    """The build path the implementation prompt's worked example shows (``build.path``): fast (NVRTC / C
    compiler) or KernelBench's load_inline."""
    return str(config["build"]["path"])


def job_proposers(ctx: RunContext, entries: list[dict], templates: str | Path) -> list[Any]:
    """One proposer per ensemble entry for a whole job (each caches its analysis of the problem); the entries
    that ask a model share one client, made only when some entry needs it."""
    tolerance = dict(ctx.config["tolerance"])
    if all(e["provider"] == "offline" for e in entries):
        return [make_proposer(e, ctx.seed, tolerance=tolerance) for e in entries]
    from kernelcraft.llm.client import LLMClient
    from kernelcraft.llm.settings import llm_settings
    from kernelcraft.search.llm_proposer import PromptSettings
    from kernelcraft.search.prompts import describe_hardware

    client = LLMClient.from_config(ctx.root, ctx.config)
    settings = PromptSettings(templates=Path(templates), hardware=describe_hardware(ctx.backend, ctx.cuda_arch),
                              build_path=build_path(ctx.config), policy=ctx.config["verify"]["pytorch_compute"],
                              tolerance=tolerance)
    repairs = int(llm_settings(ctx.config)["repair_attempts"])
    return [make_proposer(e, ctx.seed, client=client, settings=settings, repair_attempts=repairs,
                          tolerance=tolerance) for e in entries]


def propose_ideas(ctx: RunContext, problem: str, round_: int, templates: str | Path) -> dict:
    prob = ctx.load_problem(problem)
    seeds = current_seeds(ctx, problem, round_)
    tried = tried_ideas(ctx, problem, round_)
    n = int(ctx.config["ideas_per_round"])
    entries = ctx.config["models"]["ideas"]
    ideas: list[dict] = []
    supported = False
    proposers = job_proposers(ctx, entries, templates)
    for entry, count, proposer in zip(entries, split_by_weight(n, entries), proposers, strict=True):
        if not proposer.supports(prob, ctx.backend):
            continue
        supported = True
        if count == 0:
            continue
        for idea in proposer.ideas(prob, ctx.backend, seeds, tried + ideas, count, round_):
            ideas.append(dict(idea) | {"model": model_label(entry)})
    for k, idea in enumerate(ideas):
        idea["id"] = layout.idea_id(round_, k)
    report(problem, round_, "ideas", f"{len(ideas)} ideas" + ("" if supported else
                                                              " (no proposer supports this problem)"))
    why = None
    if not supported:  # the offline proposer says why (models say nothing: they take any problem)
        why = next((p.why_unsupported(prob, ctx.backend) for p in proposers if hasattr(p, "why_unsupported")), None)
    return {"problem": problem, "round": round_, "supported": supported, "unsupported_reason": why,
            "seeds": [{k: s.get(k) for k in ("id", "time_ms", "speedup_eager", "pct_of_floor")} for s in seeds],
            "ideas": ideas}


def _implement_all(proposer: Any, prob: Any, backend: str, tasks: list[tuple[dict, dict, int]],
                   round_: int) -> list[list[dict]]:
    """Every (idea, parent, count) of the job: a model proposer issues all its calls at once (concurrently);
    the offline proposer, which makes no calls, is asked idea by idea."""
    many = getattr(proposer, "implement_many", None)
    if many is not None:
        return many(prob, backend, tasks, round_)
    return [proposer.implement(prob, backend, idea, parent, count, round_) for idea, parent, count in tasks]


def earlier_digests(ctx: RunContext, problem: str, round_: int) -> dict[str, str]:
    """Normalised-source digest -> id of the first candidate with it, over rounds 1..round_-1 of the problem."""
    seen: dict[str, str] = {}
    for r in range(1, round_):
        for cand in read_json(layout.stage_file(ctx.root, problem, r, "implement"))["candidates"]:
            if cand.get("digest") and cand.get("path"):
                seen.setdefault(cand["digest"], cand["id"])
    return seen


def implement_ideas(ctx: RunContext, problem: str, round_: int, ideas_doc: dict, templates: str | Path) -> dict:
    """Candidates for every idea: a file per new candidate; a reply that gave no usable file is recorded with its
    ``failure``, and a source that normalises to an earlier candidate's (this round or before) with
    ``duplicate_of``; neither has a path, and the compile stage records both without building them."""
    prob = ctx.load_problem(problem)
    seeds = {s["id"]: s for s in current_seeds(ctx, problem, round_)}
    m = int(ctx.config["implementations_per_idea"])
    entries = ctx.config["models"]["implement"]
    out_dir = layout.candidates_dir(ctx.root, problem, round_)
    out_dir.mkdir(parents=True, exist_ok=True)
    ideas = ideas_doc["ideas"]
    parents = [seeds.get(idea.get("parent"), seeds.get("reference") or next(iter(seeds.values()))) for idea in ideas]
    per_idea: list[list[tuple[dict, dict]]] = [[] for _ in ideas]
    shares = zip(entries, split_by_weight(m, entries), job_proposers(ctx, entries, templates), strict=True)
    for entry, count, proposer in shares:
        if not count or not ideas or not proposer.supports(prob, ctx.backend):
            continue
        tasks = [(idea, parent, count) for idea, parent in zip(ideas, parents, strict=True)]
        for k, impls in enumerate(_implement_all(proposer, prob, ctx.backend, tasks, round_)):
            per_idea[k].extend((entry, impl) for impl in impls)
    seen = earlier_digests(ctx, problem, round_)
    candidates: list[dict] = []
    for k, (idea, parent) in enumerate(zip(ideas, parents, strict=True)):
        for j, (entry, impl) in enumerate(per_idea[k]):
            cid = layout.candidate_id(round_, k, j)
            cand = {"id": cid, "idea_id": idea["id"], "idea": idea["text"], "kind": idea.get("kind"),
                    "parent": parent["id"], "model": model_label(entry), "path": None}
            cand.update({f: impl[f] for f in RESULT_FIELDS if impl.get(f) is not None})
            source = impl.get("source")
            if source is None:
                cand["failure"] = impl.get("failure") or "no candidate source"
            else:
                cand["digest"] = digest(source)
                if cand["digest"] in seen:
                    cand["duplicate_of"] = seen[cand["digest"]]
                else:
                    seen[cand["digest"]] = cid
                    path = out_dir / f"{cid}.py"
                    path.write_text(source)
                    cand["path"] = str(path.relative_to(ctx.root))
            candidates.append(cand)
    for k, seed in enumerate(s for s in seeds.values() if s.get("bank_file") and round_ == 1):
        # The bank's kernels themselves, judged by the same evaluator as any candidate of this problem.
        cid = layout.bank_candidate_id(round_, k)
        cand = {"id": cid, "idea_id": None, "idea": seed["idea"], "kind": None, "parent": "reference",
                "model": BANK_MODEL, "path": None, "bank_file": seed["bank_file"], "digest": digest(seed["source"])}
        if seed.get("features"):
            cand["features"] = seed["features"]
        if cand["digest"] in seen:
            cand["duplicate_of"] = seen[cand["digest"]]
        else:
            seen[cand["digest"]] = cid
            path = out_dir / f"{cid}.py"
            path.write_text(seed["source"])
            cand["path"] = str(path.relative_to(ctx.root))
        candidates.append(cand)
    failed = sum("failure" in c for c in candidates)
    dups = sum("duplicate_of" in c for c in candidates)
    report(problem, round_, "implement", f"{len(candidates)} candidates from {len(ideas)} ideas"
           + (f", {failed} failed replies" if failed else "") + (f", {dups} duplicates" if dups else ""))
    return {"problem": problem, "round": round_, "candidates": candidates}


def _recorded_selection(ctx: RunContext, problem: str, round_: int) -> list[str] | None:
    """The seed ids the replayed run (``llm.replay``) selected in this round, or None outside a replay."""
    source = (ctx.config.get("llm") or {}).get("replay")
    if not source:
        return None
    path = layout.stage_file(Path(source), problem, round_, "select")
    if not path.is_file():
        return None
    return [str(s["id"]) for s in read_json(path).get("seeds") or []]


def select_seeds(ctx: RunContext, problem: str, round_: int, implemented: dict, verified: dict,
                 benchmarked: dict) -> dict:
    """Top-k correct, timed kernels over all rounds so far (previous seeds compete with this round's)."""
    pool: list[dict] = []
    if round_ > 1:
        pool.extend(read_json(layout.stage_file(ctx.root, problem, round_ - 1, "select"))["seeds"])
    bench = benchmarked.get("results", {})
    ver = verified.get("results", {})
    for cand in implemented["candidates"]:
        b = bench.get(cand["id"])
        if not b or not b.get("timed") or not ver.get(cand["id"], {}).get("correct"):
            continue
        pool.append({
            "id": cand["id"], "round": round_, "path": layout.evaluated_path(cand, ver[cand["id"]]),
            "parent": cand["parent"],
            "idea": cand["idea"], "kind": cand.get("kind"), "model": cand["model"],
            "features": cand.get("features"), "time_ms": b["time_ms"], "time_iqr_ms": b["time_iqr_ms"],
            "eager_ms": b["eager_ms"], "speedup_eager": b["speedup_eager"],
            "floor_ms": b.get("floor_ms"), "pct_of_floor": b.get("pct_of_floor"),
        })
    pool.sort(key=lambda s: (s["time_ms"], s["round"], s["id"]))
    top_k = int(ctx.config["top_k"])
    recorded = _recorded_selection(ctx, problem, round_)
    if recorded is not None:
        # A replay follows the recorded run's choices: which of two kernels within noise of each other was faster
        # decided the next round's parents there, and must decide them here too, or the search forks.
        by_id = {s["id"]: s for s in pool}
        chosen = [by_id[i] for i in recorded if i in by_id]
        seeds = (chosen + [s for s in pool if s["id"] not in recorded])[:top_k]
    else:
        seeds = pool[:top_k]
    best = seeds[0] if seeds else None
    msg = (f"best {best['id']} {best['time_ms']:.4g} ms ({best['speedup_eager']:.2f}x vs eager)"
           if best else "no correct kernel yet") + (" (selection as recorded)" if recorded is not None else "")
    report(problem, round_, "select", msg)
    return {"problem": problem, "round": round_, "seeds": seeds}

