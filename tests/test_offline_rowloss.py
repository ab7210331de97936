"""The offline proposer's row-loss family: losses over the rows of same-shaped inputs that sum, average or take
p-norms of elementwise values along the last dimension (one pass over a row gives them all), combine those row
values elementwise, and average or sum the rows' results: the triplet margin loss (any p, swap), sums of pairwise
distances, means of row dot products. Recognised from the traced graph and computed at small odd shapes.

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
# name: (forward of (a, b, c), number of inputs, their shape)
LOSSES = {
    "triplet": ("return self.loss(a, b, c)", 3, (9, 1001)),
    "triplet_p1_swap": (f"return {F}.triplet_margin_loss(a, b, c, margin=0.5, p=1, swap=True)", 3, (33, 12)),
    "triplet_p3": (f"return {F}.triplet_margin_loss(a, b, c, p=3, reduction='sum')", 3, (5, 260)),
    "distances": (f"return {F}.pairwise_distance(a, b).sum()", 2, (17, 64)),
    "dot_rows": ("return torch.clamp(torch.sum(a * b, dim=-1), min=0.0).mean()", 2, (3, 7, 129)),
    "mean_abs_rows": ("return torch.sqrt(torch.mean(torch.abs(a - 1.5), dim=1) + 1.0).sum()", 1, (6, 1000)),
    "cosine": (f"return torch.mean(1 - {F}.cosine_similarity(a, b, dim=1))", 2, (6, 131)),
    "cosine_last": (f"return (1 - {F}.cosine_similarity(a, b, dim=-1, eps=1e-6)).sum()", 2, (3, 5, 77)),
    "unit_dot": ("return ((a / a.norm(dim=-1, keepdim=True)) * b * 2.0).sum(-1).mean()", 2, (7, 40)),
}


def loss_problem(folder: Path, name: str):
    forward, n, shape = LOSSES[name]
    sig = ", ".join("abc"[:n])
    init = "        self.loss = nn.TripletMarginLoss(margin=1.0)\n" if name == "triplet" else ""
    path = folder / f"{name}.py"
    path.write_text(f"import torch\nimport torch.nn as nn\n\n\nclass Model(nn.Module):\n    def __init__(self):\n"
                    f"        super().__init__()\n{init}\n    def forward(self, {sig}):\n        {forward}\n\n\n"
                    f"def get_inputs():\n    return [torch.randn{shape} for _ in range({n})]\n\n\n"
                    "def get_init_inputs():\n    return []\n")
    return load_problem(path)


@pytest.fixture(scope="module")
def problems(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rowloss_problems")
    return {name: loss_problem(folder, name) for name in LOSSES}


def test_losses_over_rows_are_recognised_as_sums_and_norms_combined_per_row(problems):
    found = {name: recognise_problem(p) for name, p in problems.items()}
    assert {n: (r.family, r.op) for n, r in found.items()} == dict.fromkeys(LOSSES, ("rowloss", "row_loss"))
    # the triplet loss: two p-norms of (a - b + eps) and (a - c + eps), combined with the margin and clamped
    spec = describe(problems["triplet"])
    assert spec.terms == ("e1 * e1", "e3 * e3") and spec.geometry == {"rows": 9, "d": 1001, "mean": 1}
    assert spec.row_body == ("const float r0 = sqrtf((float)S0); const float r1 = sqrtf((float)S1); "
                             "const float r2 = (r0 + 1.0f); const float r3 = (r2 - r1); "
                             "const float r4 = fmaxf(r3, 0.0f);") and spec.row_out == "r4"
    assert describe(problems["triplet_p3"]).terms == ("powf(fabsf(e1), 3.0f)", "powf(fabsf(e3), 3.0f)")
    assert describe(problems["dot_rows"]).geometry == {"rows": 21, "d": 129, "mean": 1}
    assert all(OfflineProposer(0).supports(p, b) for p in problems.values() for b in ("cpu", "cuda"))


def test_elements_scaled_by_their_row_norm_become_one_pass_sums_scaled_afterwards(problems):
    """Cosine similarity divides each operand by its clamped row norm before the dot product: the sum of those
    products is the plain dot product divided by both norms, so one pass over the row still gives every sum."""
    spec = describe(problems["cosine"])
    assert spec.terms == ("x0 * x0", "x1 * x1", "e0")
    assert spec.row_body == ("const float r0 = sqrtf((float)S0); const float r1 = sqrtf((float)S1); "
                             "const float r2 = fmaxf(r0, 1e-08f); const float r3 = fmaxf(r1, 1e-08f); "
                             "const float r4 = ((float)S2) / r2 / r3; const float r5 = (1.0f - r4);")
    assert spec.body == "const float e0 = (x0 * x1);" and spec.row_out == "r5"


@pytest.mark.parametrize("forward", [
    "((a / a.norm(dim=-1, keepdim=True)) + b).abs().sum(-1).mean()",  # a scaled value inside a non-linear op
    "(a / a.norm(dim=-1, keepdim=True)).norm(dim=-1).mean()",  # a p-norm of a scaled value
    "(a * a.sum(dim=-1)).sum(-1).mean()",  # a row value without its kept dimension broadcasts along the row
])
def test_a_row_scale_that_a_sum_cannot_carry_is_not_a_row_loss(tmp_path, forward):
    path = tmp_path / "scaled.py"
    path.write_text(f"import torch\nimport torch.nn as nn\n\nclass Model(nn.Module):\n    def forward(self, a, b):\n"
                    f"        return {forward}\n\ndef get_inputs():\n"
                    "    return [torch.randn(6, 6), torch.randn(6, 6)]\n\ndef get_init_inputs():\n    return []\n")
    assert recognise_problem(load_problem(path)).family != "rowloss"


def _inputs(prob, device: str) -> list[tuple]:
    """Two draws of the reference's own inputs, the second shifted and scaled (larger norms, more cancellation)."""
    module = prob.load_module()
    torch.manual_seed(3)
    first = tuple(module.get_inputs())
    second = tuple(x * 4 + 2 for x in module.get_inputs())
    return [tuple(x.to(device) for x in xs) for xs in (first, second)]


C_PARENTS = [{}, {"par": "omp", "simd": True}, {"acc": "double", "prefetch": True, "unroll": 4}]
CUDA_PARENTS = [{}, {"mapping": "warp", "vec": 4}, {"grid": "persistent", "acc": "double", "unroll": True}]


def test_every_reachable_c_row_loss_kernel_computes_the_loss_at_odd_shapes(problems, tmp_path):
    jobs = sampled_jobs(problems, "cpu", C_PARENTS, 2)
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


def test_a_row_loss_candidate_refuses_inputs_of_another_shape(problems, tmp_path):
    model = import_source(candidate_source(describe(problems["distances"]), "cpu", {}, "t", "reference"),
                          tmp_path).ModelNew()
    with pytest.raises(ValueError, match=r"expected 2 inputs of shape \(17, 64\)"):
        model(torch.randn(17, 64), torch.randn(17, 65))


def test_every_reachable_cuda_row_loss_kernel_compiles_with_nvrtc(problems, tmp_path):
    jobs = sampled_jobs(problems, "cuda", CUDA_PARENTS, 3)
    assert len(jobs) > 40
    failures = build_failures(jobs, tmp_path)
    assert not failures, "\n".join(failures[:5])


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")
def test_every_reachable_cuda_row_loss_kernel_computes_the_loss_on_the_gpu(problems, tmp_path):
    jobs = sampled_jobs(problems, "cuda", CUDA_PARENTS, 1)
    failures = gpu_mismatches(jobs, tmp_path, lambda prob, spec, f: _inputs(prob, "cuda"))
    print(f"{len(jobs) - len(failures)} of {len(jobs)} CUDA row-loss kernels match the reference")
    assert not failures, "\n".join(failures[:10])


@pytest.mark.parametrize("backend", ["cuda", "cpu"])
def test_five_offline_rounds_of_a_row_loss_are_deterministic_and_never_repeat_an_idea(problems, backend):
    assert five_round_sources(problems["triplet"], backend) == five_round_sources(problems["triplet"], backend)
