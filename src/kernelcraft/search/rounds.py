"""The idea-branching method's per-round steps that are not measurements: ideas, implement, select.

Each takes the run context and what earlier stages wrote, and returns the JSON document its rule writes. The
seeds of round r are round r-1's selection (the reference itself in round 1); the ideas of round r are conditioned
on them and on every idea tried in rounds 1..r-1 for the same problem.
"""

from __future__ import annotations

from kernelcraft import layout
from kernelcraft.context import RunContext
from kernelcraft.jsonio import read_json
from kernelcraft.progress import report
from kernelcraft.search.ensemble import make_proposer, model_label, split_by_weight


def reference_seed(ctx: RunContext, problem: str) -> dict:
    base = read_json(layout.baseline_file(ctx.root, problem))
    return {"id": "reference", "round": 0, "source": None, "features": None, "path": None,
            "time_ms": base.get("eager_ms"), "speedup_eager": 1.0 if base.get("eager_ms") else None}


def current_seeds(ctx: RunContext, problem: str, round_: int) -> list[dict]:
    """Round 1 starts from the reference; later rounds from the previous selection, with the code attached."""
    if round_ <= 1:
        return [reference_seed(ctx, problem)]
    seeds = read_json(layout.stage_file(ctx.root, problem, round_ - 1, "select"))["seeds"]
    if not seeds:
        return [reference_seed(ctx, problem)]
    out = []
    for s in seeds:
        s = dict(s)
        s["source"] = (ctx.root / s["path"]).read_text() if s.get("path") else None
        out.append(s)
    return out


def tried_ideas(ctx: RunContext, problem: str, round_: int) -> list[dict]:
    tried: list[dict] = []
    for r in range(1, round_):
        tried.extend(read_json(layout.stage_file(ctx.root, problem, r, "ideas"))["ideas"])
    return tried


def propose_ideas(ctx: RunContext, problem: str, round_: int) -> dict:
    prob = ctx.load_problem(problem)
    seeds = current_seeds(ctx, problem, round_)
    tried = tried_ideas(ctx, problem, round_)
    n = int(ctx.config["ideas_per_round"])
    entries = ctx.config["models"]["ideas"]
    ideas: list[dict] = []
    supported = False
    for entry, count in zip(entries, split_by_weight(n, entries), strict=True):
        proposer = make_proposer(entry, ctx.seed)
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
    return {"problem": problem, "round": round_, "supported": supported,
            "seeds": [{k: s.get(k) for k in ("id", "time_ms", "speedup_eager")} for s in seeds],
            "ideas": ideas}


def implement_ideas(ctx: RunContext, problem: str, round_: int, ideas_doc: dict) -> dict:
    prob = ctx.load_problem(problem)
    seeds = {s["id"]: s for s in current_seeds(ctx, problem, round_)}
    m = int(ctx.config["implementations_per_idea"])
    entries = ctx.config["models"]["implement"]
    out_dir = layout.candidates_dir(ctx.root, problem, round_)
    out_dir.mkdir(parents=True, exist_ok=True)
    candidates: list[dict] = []
    # One proposer per ensemble entry for the whole job: each caches its analysis of the problem.
    shares = [(entry, count, make_proposer(entry, ctx.seed))
              for entry, count in zip(entries, split_by_weight(m, entries), strict=True) if count]
    shares = [(entry, count, proposer) for entry, count, proposer in shares if proposer.supports(prob, ctx.backend)]
    for k, idea in enumerate(ideas_doc["ideas"]):
        parent = seeds.get(idea.get("parent"), seeds.get("reference") or next(iter(seeds.values())))
        impl_index = 0
        for entry, count, proposer in shares:
            for impl in proposer.implement(prob, ctx.backend, idea, parent, count, round_):
                cid = layout.candidate_id(round_, k, impl_index)
                impl_index += 1
                path = out_dir / f"{cid}.py"
                path.write_text(impl["source"])
                candidates.append({
                    "id": cid, "idea_id": idea["id"], "idea": idea["text"], "kind": idea.get("kind"),
                    "parent": parent["id"], "model": model_label(entry),
                    "path": str(path.relative_to(ctx.root)), "features": impl.get("features"),
                })
    report(problem, round_, "implement", f"{len(candidates)} candidates from {len(ideas_doc['ideas'])} ideas")
    return {"problem": problem, "round": round_, "candidates": candidates}


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
            "id": cand["id"], "round": round_, "path": cand["path"], "parent": cand["parent"],
            "idea": cand["idea"], "kind": cand.get("kind"), "model": cand["model"],
            "features": cand.get("features"), "time_ms": b["time_ms"], "time_iqr_ms": b["time_iqr_ms"],
            "eager_ms": b["eager_ms"], "speedup_eager": b["speedup_eager"],
        })
    pool.sort(key=lambda s: (s["time_ms"], s["round"], s["id"]))
    seeds = pool[: int(ctx.config["top_k"])]
    best = seeds[0] if seeds else None
    msg = (f"best {best['id']} {best['time_ms']:.4g} ms ({best['speedup_eager']:.2f}x vs eager)"
           if best else "no correct kernel yet")
    report(problem, round_, "select", msg)
    return {"problem": problem, "round": round_, "seeds": seeds}

