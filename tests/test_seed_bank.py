"""The seed bank: known-good kernels from earlier runs or other problems join round 1's seeds with their provenance
and are evaluated as round-1 candidates; only the ones that fit the problem, at most ``per_problem`` of them."""

import json
from pathlib import Path

import pytest

from kernelcraft import layout
from kernelcraft.config import ConfigError, load_config, merge
from kernelcraft.context import RunContext
from kernelcraft.harness.build.compile_round import compile_candidates
from kernelcraft.harness.evaluate_round import evaluate_candidates
from kernelcraft.jsonio import write_json
from kernelcraft.problems import builtin_dir, load_problem
from kernelcraft.search import rounds
from kernelcraft.search.offline import OfflineProposer
from kernelcraft.search.seed_bank import BANK_MODEL, SeedBankError, fitting, load_bank

REF_SEED = {"id": "reference", "source": None, "features": None, "time_ms": 1.0, "speedup_eager": 1.0}


def _offline_kernel(problem_id: str, backend: str = "cpu") -> str:
    """A kernel the offline proposer writes for a built-in problem (its source carries a '# features:' line)."""
    problem = load_problem(builtin_dir() / f"{problem_id}.py", "small")
    proposer = OfflineProposer(0)
    (idea,) = proposer.ideas(problem, backend, [REF_SEED], [], 1, 1)
    return proposer.implement(problem, backend, idea, REF_SEED, 1, 1)[0]["source"]


@pytest.fixture(scope="module")
def kernels():
    return {"softmax": _offline_kernel("softmax_4096x65536"), "relu": _offline_kernel("relu_4096x32768")}


def _bank(tmp_path: Path, files: dict[str, str]) -> Path:
    bank = tmp_path / "bank"
    bank.mkdir(exist_ok=True)
    for name, text in files.items():
        (bank / name).write_text(text)
    return bank


def test_the_kernels_that_fit_are_the_ones_of_the_problems_family_and_those_naming_it_first(tmp_path, kernels):
    softmax = load_problem(builtin_dir() / "softmax_4096x65536.py", "small")
    bank = _bank(tmp_path, {
        "a_relu.py": kernels["relu"],  # another family: does not fit
        "b_softmax.py": kernels["softmax"],  # the softmax generator's features: fits
        "c_named.py": '# bank: {"problem": "softmax_4096x65536", "run": "h200-2026-11"}\n' + kernels["relu"],
        "d_by_op.py": '# bank: {"op": "softmax"}\nclass ModelNew: pass\n',
    })
    chosen = fitting(load_bank([bank]), softmax, "cpu", 5)
    assert [k.path.name for k in chosen] == ["c_named.py", "b_softmax.py", "d_by_op.py"]
    assert chosen[0].provenance() == "seed bank kernel c_named.py (problem softmax_4096x65536, run h200-2026-11)"
    assert [k.path.name for k in fitting(load_bank([bank]), softmax, "cpu", 1)] == ["c_named.py"]
    assert fitting(load_bank([bank]), softmax, "cpu", 0) == []


def test_a_missing_directory_or_a_broken_header_is_one_line_naming_it(tmp_path):
    with pytest.raises(ConfigError, match=r"^seed_bank.dirs: .*nowhere is not a directory; create it or remove"):
        load_config(overrides={"seed_bank": {"dirs": [str(tmp_path / "nowhere")], "per_problem": 2}})
    bank = _bank(tmp_path, {"k.py": "# bank: {not json}\n"})
    with pytest.raises(SeedBankError, match=r"k.py: its '# bank:' line is not valid JSON"):
        load_bank([bank])


def _context(tmp_path: Path, bank: Path) -> RunContext:
    config = load_config(overrides={"run": "bank", "backend": "cpu", "ideas_per_round": 2,
                                    "implementations_per_idea": 1,
                                    "seed_bank": {"dirs": [str(bank)], "per_problem": 2}})
    path = builtin_dir() / "softmax_4096x65536.py"
    resolved = {"backend": "cpu", "size": "small", "cuda_arch": None, "problems": {"softmax": str(path)}}
    ctx = RunContext.from_config(merge(config, {"_resolved": resolved}), results=tmp_path / "results")
    write_json(layout.baseline_file(ctx.root, "softmax"), {"eager_ms": 1.0})
    return ctx


def test_round_one_offers_the_bank_as_seeds_and_evaluates_its_kernels_like_any_candidate(tmp_path, kernels):
    bank = _bank(tmp_path, {"best_softmax.py": '# bank: {"run": "earlier"}\n' + kernels["softmax"],
                            "other.py": kernels["relu"]})
    ctx = _context(tmp_path, bank)
    templates = Path(__file__).parents[1] / "workflow" / "templates"
    ideas = rounds.propose_ideas(ctx, "softmax", 1, templates)
    assert [s["id"] for s in ideas["seeds"]] == ["reference", "bank-0"]
    implemented = rounds.implement_ideas(ctx, "softmax", 1, ideas, templates)
    (banked,) = [c for c in implemented["candidates"] if c["model"] == BANK_MODEL]
    assert banked["id"] == "r1_bank0" and banked["idea"] == "seed bank kernel best_softmax.py (run earlier)"
    assert (ctx.root / banked["path"]).read_text() == (bank / "best_softmax.py").read_text()
    # Later rounds start from the selection only: the bank is round 1's.
    entries = [c for c in implemented["candidates"] if c.get("path")]
    built = compile_candidates(ctx, "softmax", 1, entries, 2, 120)
    verified, _ = evaluate_candidates(ctx, "softmax", 1, entries, built, time_kernels=False)
    assert verified["results"]["r1_bank0"]["correct"] is True, verified["results"]["r1_bank0"]


def test_without_a_bank_round_one_starts_from_the_reference_alone(tmp_path):
    ctx = _context(tmp_path, _bank(tmp_path, {}))
    assert [s["id"] for s in rounds.current_seeds(ctx, "softmax", 1)] == ["reference"]
    assert json.loads(json.dumps(ctx.config["seed_bank"]))["per_problem"] == 2


def test_a_model_sees_a_bank_kernel_among_the_seeds_with_its_provenance(tmp_path, kernels):
    from kernelcraft.search import prompts

    bank = _bank(tmp_path, {"best_softmax.py": '# bank: {"problem": "softmax_4096x65536", "run": "earlier"}\n'
                                               + kernels["softmax"]})
    ctx = _context(tmp_path, bank)
    seeds = rounds.current_seeds(ctx, "softmax", 1)
    templates = Path(__file__).parents[1] / "workflow" / "templates"
    user = prompts.ideas_messages(templates, ctx.load_problem("softmax"), "cpu", "a CPU", seeds, [], 2)[1].content
    assert "## Seed `bank-0` (a known-good kernel from the seed bank, not yet measured on this problem)" in user
    assert ("- provenance: seed bank kernel best_softmax.py (problem softmax_4096x65536, run earlier); it may have "
            "been written for a related problem") in user
    assert kernels["softmax"].strip() in user


def test_later_rounds_keep_the_bank_beside_the_selection_but_not_twice(tmp_path, kernels):
    bank = _bank(tmp_path, {"a_softmax.py": kernels["softmax"],
                            "b_named.py": '# bank: {"problem": "softmax_4096x65536"}\n' + kernels["relu"]})
    ctx = _context(tmp_path, bank)
    kept = ctx.root / "kept.py"
    kept.write_text(kernels["softmax"])  # round 1 evaluated a_softmax.py and selected it
    write_json(layout.stage_file(ctx.root, "softmax", 1, "select"),
               {"seeds": [{"id": "r1_bank1", "round": 1, "path": "kept.py", "time_ms": 0.5}]})
    seeds = rounds.current_seeds(ctx, "softmax", 2)
    assert [s["id"] for s in seeds] == ["r1_bank1", "bank-0"]
    assert seeds[1]["bank_file"].endswith("b_named.py")


def test_a_finished_runs_best_kernels_become_a_bank_a_later_run_reads(tmp_path, kernels, capsys):
    from kernelcraft.cli import main

    run = tmp_path / "results" / "run1"
    pid = "softmax_4096x65536"
    write_json(layout.baseline_file(run, pid), {"op": "softmax", "device": "cuda", "eager_ms": 1.0})
    cand = layout.candidates_dir(run, pid, 2) / "r2_i0_m1.py"
    cand.parent.mkdir(parents=True)
    cand.write_text('# bank: {"problem": "elsewhere"}\n' + kernels["softmax"])  # a kernel that came from a bank
    for r in (1, 2):
        write_json(layout.stage_file(run, pid, r, "select"), {"seeds": [
            {"id": "r2_i0_m1", "round": 2, "path": str(cand.relative_to(run)), "speedup_eager": 2.5,
             "time_ms": 0.4}]})
    write_json(layout.baseline_file(run, "relu_4096x32768"), {"op": "relu"})  # no correct kernel: skipped
    bank = tmp_path / "bank"
    assert main(["bank", str(run), str(bank)]) == 0
    (path,) = sorted(bank.glob("*.py"))
    assert path.name == f"{pid}.run1.py" and capsys.readouterr().out.strip() == str(path)
    (kernel,) = load_bank([bank])
    assert kernel.header == {"problem": pid, "op": "softmax", "run": "run1", "round": 2, "candidate": "r2_i0_m1",
                             "speedup_eager": 2.5, "time_ms": 0.4, "device": "cuda"}
    assert kernel.source.count("# bank:") == 1 and kernels["softmax"].strip() in kernel.source
    softmax = load_problem(builtin_dir() / f"{pid}.py", "small")
    assert fitting([kernel], softmax, "cpu", 2) == [kernel]


def test_banking_a_directory_that_is_not_a_run_is_one_line(tmp_path, capsys):
    from kernelcraft.cli import main

    assert main(["bank", str(tmp_path / "nope"), str(tmp_path / "bank")]) == 2
    assert capsys.readouterr().err.strip() == (f"kernelcraft: error: {tmp_path / 'nope'} is not a run directory; "
                                               "pass results/<run>")
