"""Two runs side by side (directories or archives): which candidates and verdicts differ, the speedups with their
spread, and whether the two are the same search (the same candidate sources and the same verdicts) -- what a
replay must reproduce, and what a rerun on other hardware shows."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernelcraft.archive.bundle import ArchiveError, read_archive


@dataclass
class Candidate:
    source_sha256: str | None
    correct: bool | None
    reasons: list[str]
    time_ms: float | None
    time_iqr_ms: float | None
    speedup_eager: float | None


@dataclass
class RunView:
    label: str
    name: str
    config_sha256: str | None
    config: dict = field(default_factory=dict)
    candidates: dict[tuple[str, int, str], Candidate] = field(default_factory=dict)


def _reader(path: Path) -> tuple[str, Any]:
    """The run's name and a function reading one of its files (bytes or None)."""
    path = Path(path)
    if path.is_dir():
        if not (path / "manifest.json").is_file():
            raise ArchiveError(f"{path} is not a finished run (no manifest.json)")
        return path.name, lambda rel: (path / rel).read_bytes() if (path / rel).is_file() else None
    if path.is_file():
        name, files = read_archive(path)
        return name, files.get
    raise ArchiveError(f"{path}: no such run directory or archive")


def _json(read: Any, rel: str) -> dict:
    data = read(rel)
    return json.loads(data) if data else {}


def load_run(path: Path) -> RunView:
    """Every candidate of the run: its source's digest, verdict and timing."""
    name, read = _reader(path)
    manifest = _json(read, "manifest.json")
    view = RunView(label=str(path), name=name, config_sha256=manifest.get("config_sha256"),
                   config=manifest.get("config") or {})
    rounds = int((manifest.get("config") or {}).get("rounds") or 0)
    for problem in manifest.get("problems") or {}:
        for round_ in range(1, rounds + 1):
            base = f"{problem}/round_{round_}"
            implement = _json(read, f"{base}/implement.json")
            verdicts = _json(read, f"{base}/verify.json").get("results") or {}
            timings = _json(read, f"{base}/benchmark.json").get("results") or {}
            for cand in implement.get("candidates") or []:
                cid = cand["id"]
                source = read(cand["path"]) if cand.get("path") else None
                v, t = verdicts.get(cid) or {}, timings.get(cid) or {}
                view.candidates[(problem, round_, cid)] = Candidate(
                    source_sha256=hashlib.sha256(source).hexdigest() if source is not None else None,
                    correct=v.get("correct") if v else None, reasons=list(v.get("reasons") or []),
                    time_ms=t.get("time_ms"), time_iqr_ms=t.get("time_iqr_ms"), speedup_eager=t.get("speedup_eager"))
    return view


def config_differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two resolved configurations: a replay differs from its original
    only in its run name, its ``llm.replay`` source and where its problem files are, which a reader should see
    named rather than as a bare "different"."""
    keys = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            keys += config_differences(x, y, f"{prefix}{k}.")
        elif x != y:
            keys.append(f"{prefix}{k}")
    return keys


def compare_runs(a: RunView, b: RunView) -> dict:
    """The differences between two runs, and whether they are the same search."""
    keys = sorted(set(a.candidates) | set(b.candidates))
    only_a = [k for k in keys if k not in b.candidates]
    only_b = [k for k in keys if k not in a.candidates]
    both = [k for k in keys if k in a.candidates and k in b.candidates]
    sources = [k for k in both if a.candidates[k].source_sha256 != b.candidates[k].source_sha256]
    verdicts = [k for k in both if a.candidates[k].correct != b.candidates[k].correct]
    timed = [k for k in both if a.candidates[k].time_ms is not None and b.candidates[k].time_ms is not None]
    return {
        "a": a.label, "b": b.label, "candidates": len(keys),
        "same_search": not (only_a or only_b or sources or verdicts) and bool(keys),
        "same_config": a.config_sha256 is not None and a.config_sha256 == b.config_sha256,
        "config_differs": config_differences(a.config, b.config),
        "only_in_a": [list(k) for k in only_a], "only_in_b": [list(k) for k in only_b],
        "sources_differ": [list(k) for k in sources],
        "verdicts_differ": [{"candidate": list(k), "a": _verdict(a.candidates[k]), "b": _verdict(b.candidates[k])}
                            for k in verdicts],
        "timings": [{"candidate": list(k), "a": _timing(a.candidates[k]), "b": _timing(b.candidates[k]),
                     "b_over_a": b.candidates[k].time_ms / a.candidates[k].time_ms if a.candidates[k].time_ms else None}
                    for k in timed],
    }


def _config_line(result: dict) -> str:
    if result["same_config"]:
        return "identical"
    keys = result.get("config_differs") or []
    return "differs in " + ", ".join(keys) if keys else "different"


def _verdict(c: Candidate) -> str:
    return "correct" if c.correct else ("rejected: " + "; ".join(c.reasons) if c.reasons else "rejected")


def _timing(c: Candidate) -> dict:
    return {"time_ms": c.time_ms, "time_iqr_ms": c.time_iqr_ms, "speedup_eager": c.speedup_eager}


def _ms(t: dict) -> str:
    iqr = f" ± {t['time_iqr_ms']:.3g}" if t.get("time_iqr_ms") is not None else ""
    speed = f" ({t['speedup_eager']:.2f}x)" if t.get("speedup_eager") is not None else ""
    return f"{t['time_ms']:.4g}{iqr} ms{speed}"


def format_comparison(result: dict) -> str:
    """The comparison as text: the verdict first, then what differs, then the timings side by side."""
    name = lambda k: "/".join(str(p) for p in k)  # noqa: E731 - a local formatter
    lines = [f"A: {result['a']}", f"B: {result['b']}",
             f"same search: {'yes' if result['same_search'] else 'no'} ({result['candidates']} candidates; "
             f"{len(result['sources_differ'])} sources and {len(result['verdicts_differ'])} verdicts differ; "
             f"{len(result['only_in_a'])} only in A, {len(result['only_in_b'])} only in B; "
             f"configuration {_config_line(result)})"]
    lines += [f"  only in A: {name(k)}" for k in result["only_in_a"]]
    lines += [f"  only in B: {name(k)}" for k in result["only_in_b"]]
    lines += [f"  source differs: {name(k)}" for k in result["sources_differ"]]
    lines += [f"  verdict differs: {name(d['candidate'])}: A {d['a']}; B {d['b']}" for d in result["verdicts_differ"]]
    if result["timings"]:
        lines.append("timings (median ± IQR, speedup vs eager):")
        for t in result["timings"]:
            ratio = f"  B/A {t['b_over_a']:.3f}" if t["b_over_a"] else ""
            lines.append(f"  {name(t['candidate'])}: A {_ms(t['a'])}  B {_ms(t['b'])}{ratio}")
    return "\n".join(lines)
