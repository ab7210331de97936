"""The offline proposer's cross-entropy family: class scores [N, C] against int64 class indices [N], however the
reference spells it (cross_entropy, or nll_loss of log_softmax), averaged over the targets not ignored or summed,
recognised from the traced graph and computed at small odd shapes other than KernelBench's.

C kernels are built and run here; CUDA kernels are compiled with NVRTC for sm_90a (no GPU needed) and, where a GPU
is visible, run against the reference.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from offline_support import (  # noqa: F401 - build_env: autouse
    GPU,
    build_env,
    build_failures,
    check_candidate,
    five_round_sources,
    gpu_mismatches,
    import_source,
    one_thread,
    sampled_jobs,
)

from kernelcraft.problems import load_problem
from kernelcraft.problems.recognise import recognise_problem
from kernelcraft.search.offline import OfflineProposer
from kernelcraft.search.offline_kernels import candidate_source
from kernelcraft.search.offline_kernels.opspec import describe

F = "torch.nn.functional"
# name: (forward of (x, t), N, C, the targets' source over N and C)
LOSSES = {
    "mean": (f"return {F}.cross_entropy(x, t)", 7, 1001, "torch.randint(0, C, (N,))"),
    "sum": (f"return {F}.cross_entropy(x, t, reduction='sum')", 33, 10, "torch.randint(0, C, (N,))"),
    "nll_of_log_softmax": (f"return {F}.nll_loss({F}.log_softmax(x, dim=1), t)", 5, 4100,
                           "torch.randint(0, C, (N,))"),
    "ignored": (f"return {F}.cross_entropy(x, t, ignore_index=3)", 40, 6, "torch.randint(0, C, (N,))"),
    "module": ("return self.loss(x, t)", 9, 260, "torch.randint(0, C, (N,))"),
}


def loss_problem(folder: Path, name: str):
    forward, n, c, targets = LOSSES[name]
    init = "        self.loss = nn.CrossEntropyLoss()\n" if name == "module" else ""
    path = folder / f"{name}.py"
    path.write_text(f"import torch\nimport torch.nn as nn\n\nN, C = {n}, {c}\n\n\nclass Model(nn.Module):\n"
                    f"    def __init__(self):\n        super().__init__()\n{init}\n    def forward(self, x, t):\n"
                    f"        {forward}\n\n\ndef get_inputs():\n    return [torch.randn(N, C) * 3, {targets}]\n\n\n"
                    "def get_init_inputs():\n    return []\n")
    return load_problem(path)


@pytest.fixture(scope="module")
def problems(tmp_path_factory):
    folder = tmp_path_factory.mktemp("xent_problems")
    return {name: loss_problem(folder, name) for name in LOSSES}


def test_every_spelling_of_cross_entropy_is_recognised_with_its_reduction_and_ignored_class(problems):
    found = {name: recognise_problem(p) for name, p in problems.items()}
    assert {n: (r.family, r.op) for n, r in found.items()} == dict.fromkeys(LOSSES, ("xent", "cross_entropy"))
    assert found["sum"].params == {"reduction": "sum", "ignore_index": -100}
    assert found["ignored"].params == {"reduction": "mean", "ignore_index": 3}
    spec = describe(problems["nll_of_log_softmax"])
    assert spec.geometry == {"n": 5, "c": 4100, "mean": 1, "ignore": -100} and spec.args == ("x", "t")
    assert all(OfflineProposer(0).supports(p, b) for p in problems.values() for b in ("cpu", "cuda"))


@pytest.mark.parametrize(("forward", "why"), [
    (f"{F}.cross_entropy(x, t, weight=torch.ones(6))", "class weights"),
    (f"{F}.cross_entropy(x, t, reduction='none')", "without reduction"),
    (f"{F}.nll_loss({F}.log_softmax(x, dim=0), t)", "over the batch dimension"),
])
def test_a_cross_entropy_the_family_does_not_compute_is_named(tmp_path, forward, why):
    path = tmp_path / "loss.py"
    path.write_text(f"import torch\nimport torch.nn as nn\n\nclass Model(nn.Module):\n    def forward(self, x, t):\n"
                    f"        return {forward}\n\ndef get_inputs():\n    return [torch.randn(6, 6), "
                    "torch.randint(0, 6, (6,))]\n\ndef get_init_inputs():\n    return []\n")
    found = recognise_problem(load_problem(path))
    assert found.op is None and why in found.reason, found.reason


def test_label_smoothing_is_not_taken_for_plain_cross_entropy(tmp_path):
    path = tmp_path / "smooth.py"
    path.write_text(f"import torch\nimport torch.nn as nn\n\nclass Model(nn.Module):\n    def forward(self, x, t):\n"
                    f"        return {F}.cross_entropy(x, t, label_smoothing=0.1)\n\ndef get_inputs():\n"
                    "    return [torch.randn(6, 6), torch.randint(0, 6, (6,))]\n\ndef get_init_inputs():\n"
                    "    return []\n")
    assert recognise_problem(load_problem(path)).op != "cross_entropy"


def _inputs(prob, device: str) -> list[tuple]:
    """The reference's own draw, one with a large offset (the shift by the row maximum matters), one whose first
    half of the classes is masked with -inf (the targets among the others: an online pass must not add
    exp(-inf - -inf)) and, where a class is ignored, targets that are all ignored in some rows' places."""
    module = prob.load_module()
    torch.manual_seed(5)
    x, t = module.get_inputs()
    k = x.shape[1] // 2
    masked = x.clone()
    masked[:, :k] = float("-inf")
    out = [(x, t), (x + 80.0, t), (masked, k + t % (x.shape[1] - k))]
    if "ignored" in prob.id:
        out.append((x, torch.where(torch.arange(len(t)) % 3 == 0, torch.full_like(t, 3), t)))
    return [(a.to(device), b.to(device)) for a, b in out]


C_PARENTS = [{}, {"par": "omp", "simd": True, "exp": "poly"}, {"stats": "online", "acc": "double"}]
CUDA_PARENTS = [{}, {"mapping": "warp", "vec": 4, "stats": "online"}, {"grid": "persistent", "ilp": 2}]


def test_every_reachable_c_cross_entropy_kernel_computes_the_loss_at_odd_shapes(problems, tmp_path):
    jobs = sampled_jobs(problems, "cpu", C_PARENTS)
    assert len(jobs) > 60
    with ThreadPoolExecutor(2) as pool:
        modules = list(pool.map(lambda j: import_source(candidate_source(j[1], "cpu", j[2], "t", "reference"),
                                                        tmp_path), jobs))
    failures = []
    with one_thread():
        for (prob, _spec, f), module in zip(jobs, modules, strict=True):
            try:
                check_candidate(module, prob, _inputs(prob, "cpu"), "cpu")
            except AssertionError as exc:
                failures.append(f"{prob.id} {f}: {exc}")
    assert not failures, "\n".join(failures[:5])


def test_a_cross_entropy_candidate_refuses_targets_of_another_shape_or_dtype(problems, tmp_path):
    prob = problems["mean"]
    model = import_source(candidate_source(describe(prob), "cpu", {}, "t", "reference"), tmp_path).ModelNew()
    with pytest.raises(ValueError, match="int64 targets of shape"):
        model(torch.randn(7, 1001), torch.zeros(7, dtype=torch.int32))
    with pytest.raises(ValueError, match="int64 targets of shape"):
        model(torch.randn(8, 1001), torch.zeros(8, dtype=torch.int64))


def test_every_reachable_cuda_cross_entropy_kernel_compiles_with_nvrtc(problems, tmp_path):
    jobs = sampled_jobs(problems, "cuda", CUDA_PARENTS)
    assert len(jobs) > 60
    failures = build_failures(jobs, tmp_path)
    assert not failures, "\n".join(failures[:5])


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")
def test_every_reachable_cuda_cross_entropy_kernel_computes_the_loss_on_the_gpu(problems, tmp_path):
    jobs = sampled_jobs(problems, "cuda", CUDA_PARENTS)
    # __expf is a few ulp off expf: the loss stays inside the search's default tolerance
    failures = gpu_mismatches(jobs, tmp_path, lambda prob, spec, f: _inputs(prob, "cuda"),
                              lambda f: 1e-3 if f["exp"] == "fast" else 1e-4)
    print(f"{len(jobs) - len(failures)} of {len(jobs)} CUDA cross-entropy kernels match the reference")
    assert not failures, "\n".join(failures[:10])


@pytest.mark.parametrize("backend", ["cuda", "cpu"])
def test_five_offline_rounds_of_cross_entropy_are_deterministic_and_never_repeat_an_idea(problems, backend):
    assert five_round_sources(problems["mean"], backend) == five_round_sources(problems["mean"], backend)
