"""The seed bank: known-good kernels kept from earlier runs or other problems, offered as extra seeds in round 1.

Why: the idea-branching method kept one, and stepped from one problem to a related one with it (its convolution
started from a generated GEMM). A bank is directories of candidate files (``ModelNew``, any problem's) named in the
config (``seed_bank.dirs``). In round 1, the kernels that fit a problem join its seeds, with where they came from:
the offline proposer adapts a bank kernel's features when it was made by the generator of the problem's family, a
model sees its code and its provenance; and each is evaluated as a round-1 candidate of the problem, by the same
evaluator as any other, so a bank kernel that is right for it competes in selection and one that is not never
becomes a seed beyond round 1.

What fits a problem: a kernel whose ``# bank: {...}`` header names the problem (``"problem": "<id>"``) or its op
(``"op": "<op>"``, the problem's ``KERNELCRAFT["op"]``), or whose ``# features: {...}`` header (what the offline
proposer writes) was made by the generator of the problem's family on this backend. Files are read in name
order; the first ``seed_bank.per_problem`` that fit are used, a kernel naming the problem before the rest.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_HEADER_RE = re.compile(r"^# bank: (\{.*\})\s*$", re.MULTILINE)


# The model label of a bank kernel evaluated as a candidate (no model wrote it in this run).
BANK_MODEL = "seed bank"


class SeedBankError(ValueError):
    """A bank directory or file that cannot be used; the message names it and says what to fix."""


@dataclass
class BankKernel:
    """One bank file: its source, its provenance header and its offline-generator features (either may be empty)."""

    path: Path
    source: str
    header: dict[str, Any] = field(default_factory=dict)
    features: dict[str, Any] | None = None

    def provenance(self) -> str:
        """Where it came from, in one line, for prompts, idea texts and the report."""
        facts = [f"{k} {self.header[k]}" for k in ("problem", "run", "speedup_eager", "device") if k in self.header]
        return f"seed bank kernel {self.path.name}" + (f" ({', '.join(facts)})" if facts else "")


def _json_header(pattern: re.Pattern[str], source: str, path: Path, what: str) -> dict | None:
    match = pattern.search(source)
    if not match:
        return None
    try:
        value = json.loads(match.group(1))
    except ValueError as exc:
        raise SeedBankError(f"seed bank file {path}: its '# {what}:' line is not valid JSON ({exc.msg}); fix or "
                            "remove that line") from None
    if not isinstance(value, dict):
        raise SeedBankError(f"seed bank file {path}: its '# {what}:' line must hold a JSON object")
    return value


def bank_dirs(config: dict) -> list[str]:
    """The config's bank directories (none when the key is absent)."""
    return list((config.get("seed_bank") or {}).get("dirs") or [])


def load_bank(dirs: list[str | Path], base: Path | None = None) -> list[BankKernel]:
    """Every ``*.py`` file of the bank directories (relative ones resolved against ``base``), in name order."""
    from kernelcraft.search.offline_kernels.candidate import FEATURES_LINE

    kernels: list[BankKernel] = []
    for d in dirs:
        folder = Path(d).expanduser()
        if not folder.is_absolute() and base is not None:
            folder = base / folder
        if not folder.is_dir():
            raise SeedBankError(f"seed_bank.dirs: {folder} is not a directory; create it or remove it from the "
                                "config")
        for path in sorted(folder.glob("*.py")):
            try:
                source = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise SeedBankError(f"seed bank file {path} cannot be read: {exc}") from None
            kernels.append(BankKernel(path, source, _json_header(_HEADER_RE, source, path, "bank") or {},
                                      _json_header(FEATURES_LINE, source, path, "features")))
    return kernels


def fitting(kernels: list[BankKernel], problem: Any, backend: str, limit: int) -> list[BankKernel]:
    """The bank kernels that fit ``problem`` on ``backend``, the ones naming it first, at most ``limit``."""
    gen = _generator_name(problem, backend)
    op = getattr(problem, "op", None)
    named = [k for k in kernels if k.header.get("problem") == str(problem.id)]
    related = [k for k in kernels if k not in named and (
        (op is not None and k.header.get("op") == op)
        or (gen is not None and isinstance(k.features, dict) and k.features.get("gen") == gen))]
    return (named + related)[: max(0, int(limit))]


def _generator_name(problem: Any, backend: str) -> str | None:
    """The offline generator's name for the problem's family on ``backend``, None where none fits."""
    from kernelcraft.search.offline import OfflineProposer
    from kernelcraft.search.offline_kernels import generator

    proposer = OfflineProposer(0)
    if not proposer.supports(problem, backend):
        return None
    return str(generator(proposer.spec(problem).family, backend).GEN)


def bank_seeds(config: dict, problem: Any, backend: str, base: Path | None = None) -> list[dict]:
    """The bank's seeds for ``problem`` (rounds.current_seeds adds them to every round's): seed dicts (id
    ``bank-<k>``, source, features, provenance as the idea), in the order :func:`fitting` gives."""
    limit = int((config.get("seed_bank") or {}).get("per_problem", 2))
    chosen = fitting(load_bank(bank_dirs(config), base), problem, backend, limit)
    return [{"id": f"bank-{k}", "round": 0, "source": kernel.source, "features": kernel.features, "path": None,
             "bank_file": str(kernel.path), "idea": kernel.provenance(), "kind": None, "time_ms": None,
             "speedup_eager": None}
            for k, kernel in enumerate(chosen)]


def bank_from_run(run_root: Path, bank_dir: Path) -> list[Path]:
    """Put each problem's best kernel of a finished run into ``bank_dir`` (created), as ``<problem>.<run>.py``
    with a ``# bank:`` line naming the problem, its op, the run, the round and the measured speedup: the bank a
    later run (``seed_bank.dirs``) starts from. Returns the files written, in problem order."""
    from kernelcraft import layout
    from kernelcraft.jsonio import read_json

    run_root = Path(run_root)
    if not run_root.is_dir():
        raise SeedBankError(f"{run_root} is not a run directory; pass results/<run>")
    bank_dir = Path(bank_dir)
    bank_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for problem_dir in sorted(p for p in run_root.iterdir() if p.is_dir() and (p / "baseline.json").is_file()):
        problem = problem_dir.name
        numbers = (d.name.removeprefix("round_") for d in problem_dir.glob("round_*"))
        rounds = sorted(r for r in (int(n) for n in numbers if n.isdigit())
                        if layout.stage_file(run_root, problem, r, "select").is_file())
        if not rounds:
            continue
        seeds = read_json(layout.stage_file(run_root, problem, rounds[-1], "select")).get("seeds") or []
        if not seeds or not seeds[0].get("path"):
            continue
        best = seeds[0]
        baseline = read_json(layout.baseline_file(run_root, problem))
        header = {"problem": problem, "op": baseline.get("op"), "run": run_root.name, "round": best.get("round"),
                  "candidate": best.get("id"), "speedup_eager": best.get("speedup_eager"),
                  "time_ms": best.get("time_ms"), "device": baseline.get("device")}
        source = _HEADER_RE.sub("", (run_root / best["path"]).read_text(encoding="utf-8")).lstrip("\n")
        target = bank_dir / f"{problem}.{run_root.name}.py"
        target.write_text("# bank: " + json.dumps(header, sort_keys=True) + "\n" + source, encoding="utf-8")
        written.append(target)
    return written
