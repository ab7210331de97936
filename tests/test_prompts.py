"""What the models are shown: the ideas prompt carries the seeds with their measurements and every idea already
tried; the implementation prompt carries the contract and the worked example for the run's backend and build path.
The worked examples are real candidates: they are built (and, on the CPU, verified) by the real evaluator."""

import ast
from pathlib import Path

import pytest

from kernelcraft.config import load_config, merge
from kernelcraft.context import RunContext
from kernelcraft.harness.build.compile_round import compile_candidates
from kernelcraft.harness.evaluate_round import evaluate_candidates
from kernelcraft.harness.verify.static_checks import check_source
from kernelcraft.problems import load_problem
from kernelcraft.search import prompts
from kernelcraft.search.offline_kernels.catalogue import KINDS

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = REPO / "workflow" / "templates"
EXAMPLES = TEMPLATES / "prompts" / "examples"
RELU = REPO / "src/kernelcraft/problems/suite/relu_4096x32768.py"
TOL = {"atol": 1e-2, "rtol": 1e-2}

SEEDS = [
    {"id": "r2_i1_m0", "source": "# seed one\nSRC = 'kernel_one'\n", "time_ms": 0.4321, "speedup_eager": 3.25,
     "floor_ms": 0.2, "pct_of_floor": 46.3, "idea": "Vectorise with float4."},
    {"id": "r1_i0_m1", "source": "# seed two\nSRC = 'kernel_two'\n", "time_ms": 0.9, "speedup_eager": 1.5,
     "floor_ms": None, "pct_of_floor": None},
]
TRIED = [{"kind": "memory access", "text": "Use 128-bit loads.", "parent": "reference"},
         {"kind": "control flow and loops", "text": "Unroll the element loop by 8.", "parent": "reference"},
         {"kind": "parallelism and occupancy", "text": "Launch one block per SM.", "parent": "r1_i0_m1"}]


@pytest.fixture(scope="module")
def relu():
    return load_problem(RELU, "small")


def test_prompts_are_a_system_and_a_user_message(relu):
    messages = prompts.ideas_messages(TEMPLATES, relu, "cuda", "H100", SEEDS, TRIED, 4)
    assert [m.role for m in messages] == ["system", "user"]
    assert all(m.content.strip() for m in messages)


def test_the_ideas_prompt_lists_the_seeds_with_code_and_measurements(relu):
    user = prompts.ideas_messages(TEMPLATES, relu, "cuda", "NVIDIA H100 80GB", SEEDS, TRIED, 4)[1].content
    assert RELU.read_text().strip() in user
    assert "kernel_one" in user and "kernel_two" in user
    assert "time: 0.4321 ms; speedup vs PyTorch eager: 3.25x" in user
    assert "0.2 ms (this kernel reaches 46.3% of it)" in user
    assert "time: 0.9 ms; speedup vs PyTorch eager: 1.50x; speed-of-light floor: not measured" in user
    assert "built from the idea: Vectorise with float4." in user
    assert "Backend: cuda. Hardware: NVIDIA H100 80GB." in user


def test_the_ideas_prompt_lists_every_tried_idea_the_six_kinds_and_asks_for_n(relu):
    user = prompts.ideas_messages(TEMPLATES, relu, "cpu", "a CPU", SEEDS, TRIED, 7)[1].content
    assert "avoid repeating these" in user
    for idea in TRIED:
        assert f"- [{idea['kind']}] {idea['text']} (on seed `{idea['parent']}`)" in user
    for kind in KINDS:
        assert f"\n- {kind}\n" in user
    assert "Propose 7 new optimization ideas" in user
    assert '{"ideas": [{"kind":' in user and "r2_i1_m0, r1_i0_m1" in user


def test_the_first_round_ideas_prompt_shows_the_reference_as_the_seed(relu):
    seed = {"id": "reference", "source": None, "time_ms": 1.25, "speedup_eager": 1.0}
    user = prompts.ideas_messages(TEMPLATES, relu, "cuda", "H100", [seed], [], 1)[1].content
    assert "## Seed `reference` (the PyTorch reference)" in user
    assert "- code: the PyTorch reference above" in user
    assert "- none yet: this is the first round" in user
    assert "Propose 1 new optimization idea for" in user


CONTRACT = [
    "defines `class ModelNew(nn.Module)`",
    "`ModelNew.__init__` takes exactly the arguments of the reference `Model.__init__`",
    "`forward` takes the same arguments as `Model.forward` and returns outputs of the same shapes",
    "No try/except fallback to PyTorch, and do not import, inherit from or call the reference `Model`",
    "Correct within atol = 0.01, rtol = 0.01",
]


@pytest.mark.parametrize(("backend", "build_path", "marker"), [
    ("cuda", "fast", "from kernelcraft.harness.build import cuda_kernel"),
    ("cpu", "fast", "from kernelcraft.harness.build import c_kernel"),
    ("cuda", "load_inline", "cuda_sources=..."),
    ("cpu", "load_inline", "C++ only (no CUDA)"),
])
def test_the_implement_prompt_holds_the_contract_and_the_worked_example_of_its_backend_and_path(
        relu, backend, build_path, marker):
    idea = {"kind": "memory access", "text": "Use float4 loads and stores."}
    parent = {"id": "r1_i0_m0", "source": "# parent kernel\nPARENT = 1\n", "time_ms": 0.5, "speedup_eager": 2.0}
    system, user = prompts.implement_messages(TEMPLATES, relu, backend, "hw", idea, parent, build_path=build_path,
                                              policy="reject", tolerance=TOL)
    assert "```python" in system.content
    assert "[memory access] Use float4 loads and stores." in user.content
    assert "# parent kernel\nPARENT = 1" in user.content and "(`r1_i0_m0`)" in user.content
    for clause in CONTRACT:
        assert clause in user.content
    assert "any computing one" in user.content and marker in user.content
    mine = EXAMPLES / f"{build_path}_{backend}.py"
    assert mine.read_text().strip() in user.content
    for other in EXAMPLES.glob("*.py"):
        if other != mine:
            assert other.read_text().strip() not in user.content


def test_the_contract_follows_the_pytorch_compute_policy(relu):
    idea = {"kind": "memory access", "text": "x"}
    user = prompts.implement_messages(TEMPLATES, relu, "cuda", "hw", idea, {"id": "reference"}, build_path="fast",
                                      policy="allow_partial", tolerance={"atol": 1e-4, "rtol": 1e-4})[1].content
    assert "PyTorch may do small parts of the work" in user and "any computing one" not in user
    assert "atol = 0.0001, rtol = 0.0001" in user
    assert "The parent is the PyTorch reference above" in user


def test_the_repair_prompt_holds_the_failed_source_and_its_errors(relu):
    system, user = prompts.repair_messages(
        TEMPLATES, relu, "cpu", "hw", "class ModelNew:\n    BROKEN = 1\n", "compile error: 'undeclared' undeclared",
        idea={"kind": "compute and instructions", "text": "Use FMA."}, build_path="fast", policy="reject",
        tolerance=TOL)
    assert "fix" in system.content.lower()
    assert "class ModelNew:\n    BROKEN = 1" in user.content
    assert "compile error: 'undeclared' undeclared" in user.content
    assert "[compute and instructions] Use FMA." in user.content
    assert CONTRACT[0] in user.content


def test_an_unknown_build_path_is_an_error():
    with pytest.raises(ValueError, match="build path 'nvcc' is not one of fast, load_inline"):
        prompts.example_path(TEMPLATES, "cuda", "nvcc")


def test_missing_measurements_read_as_words_not_zero():
    assert prompts.num(None, "%.2fx") == "not measured"
    assert prompts.num(2.0, "%.2fx") == "2.00x"


# -- the worked examples are real candidates ---------------------------------------------------------------------

REFERENCE = '''
import torch
import torch.nn as nn

class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        return torch.relu(x)

def get_inputs():
    return [torch.randn(64, 1000)]

def get_init_inputs():
    return []
'''


def _context(tmp_path: Path, backend: str, arch: str | None) -> RunContext:
    ref = tmp_path / "relu_ref.py"
    ref.write_text(REFERENCE)
    config = load_config(overrides={"run": f"examples-{backend}", "backend": backend, "verify": {"trials": 2}})
    resolved = {"backend": backend, "size": "full", "cuda_arch": arch, "problems": {"relu_ref": str(ref)}}
    return RunContext.from_config(merge(config, {"_resolved": resolved}), results=tmp_path / "results")


def _entries(names):
    return [{"id": name, "path": str(EXAMPLES / f"{name}.py"), "parent": "reference", "idea": "", "model": "example"}
            for name in names]


@pytest.mark.slow
def test_the_cpu_worked_examples_build_and_pass_verification(tmp_path):
    ctx = _context(tmp_path, "cpu", None)
    entries = _entries(["fast_cpu", "load_inline_cpu"])
    built = compile_candidates(ctx, "relu_ref", 1, entries, 2, 300)
    assert all(b["compiled"] for b in built.values()), {k: v["reason"] for k, v in built.items()}
    verdicts = evaluate_candidates(ctx, "relu_ref", 1, entries, built, time_kernels=False)[0]["results"]
    for name, verdict in verdicts.items():
        assert verdict["correct"] is True and verdict["reasons"] == [], (name, verdict["reasons"])


def test_the_cuda_fast_path_example_builds_with_nvrtc_without_a_gpu(tmp_path):
    ctx = _context(tmp_path, "cuda", "sm_90a")
    built = compile_candidates(ctx, "relu_ref", 1, _entries(["fast_cuda"]), 1, 120)["fast_cuda"]
    assert built["compiled"] is True, built["reason"]
    assert [k["name"] for k in built["kernels"]] == ["relu_k"]


def test_the_cuda_load_inline_example_follows_the_contract():
    # Building it needs nvcc and a CUDA build of torch; here we check what can be checked without them.
    source = (EXAMPLES / "load_inline_cuda.py").read_text()
    tree = ast.parse(source)
    assert any(isinstance(n, ast.ClassDef) and n.name == "ModelNew" for n in tree.body)
    assert check_source(source) == []
    assert "cuda_sources=cuda_source" in source and "at::cuda::getCurrentCUDAStream()" in source


def test_the_hardware_line_depends_on_the_cuda_target_only():
    # Not on the GPU visible to the job: a resumed job on another node must render the same prompt.
    assert prompts.describe_hardware("cuda", "sm_90a") == "an NVIDIA Hopper (H100, H200) GPU, CUDA target sm_90a"
    assert prompts.describe_hardware("cuda", "sm_87") == "an NVIDIA GPU, CUDA target sm_87"
    assert prompts.describe_hardware("cuda", None) == "an NVIDIA GPU"
