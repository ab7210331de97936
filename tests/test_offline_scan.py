"""The offline proposer's scan family: cumulative sums and products along any dimension, reversed (flip, scan,
flip), exclusive (a zero, then the scan of all but the last value) and masked (the input times a boolean mask),
recognised from the traced graph and computed by kernels at small odd shapes other than KernelBench's.

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
    close,
    five_round_sources,
    import_source,
    one_thread,
    reachable,
)

from kernelcraft.problems import load_problem
from kernelcraft.problems.recognise import recognise_problem
from kernelcraft.search.offline import OfflineProposer
from kernelcraft.search.offline_kernels import candidate_source
from kernelcraft.search.offline_kernels.opspec import describe

EXCLUSIVE = ("return torch.cat((torch.zeros_like(xs[0].select(1, 0).unsqueeze(1)), "
             "torch.cumsum(xs[0].narrow(dim=1, start=0, length=xs[0].size(1) - 1), dim=1)), dim=1)")

# name: (forward over xs, the inputs' shapes: a second one is the bool mask)
SCANS = {
    "cumsum_rows": ("return torch.cumsum(xs[0], dim=1)", [(5, 1000)]),
    "cumprod_rows": ("return torch.cumprod(xs[0], dim=-1)", [(5, 68)]),
    "cumsum_middle": ("return torch.cumsum(xs[0], dim=1)", [(3, 37, 5)]),
    "cumsum_reversed": ("return torch.cumsum(xs[0].flip(1), dim=1).flip(1)", [(4, 1030)]),
    "cumprod_reversed_first": ("return torch.cumprod(xs[0].flip(0), dim=0).flip(0)", [(9, 6)]),
    "cumsum_exclusive": (EXCLUSIVE, [(4, 1028)]),
    "cumsum_masked": ("return torch.cumsum(xs[0] * xs[1], dim=1)", [(4, 1032), (4, 1032)]),
    "cumsum_masked_where": ("return torch.cumsum(torch.where(xs[1], xs[0], torch.zeros_like(xs[0])), dim=-1)",
                            [(3, 5, 515), (3, 5, 515)]),
    "cumsum_exclusive_by_difference": ("return torch.cumsum(xs[0], 2) - xs[0]", [(2, 3, 300)]),
}


def reference(folder: Path, name: str, forward: str, shapes: list[tuple[int, ...]]):
    inputs = ", ".join(["torch.rand" + str(shapes[0])] + [f"torch.rand{s} > 0.5" for s in shapes[1:]])
    path = folder / f"{name}.py"
    path.write_text("import torch\nimport torch.nn as nn\n\nclass Model(nn.Module):\n    def forward(self, *xs):\n"
                    f"        {forward}\n\ndef get_inputs():\n    return [{inputs}]\n\n"
                    "def get_init_inputs():\n    return []\n")
    return load_problem(path)


@pytest.fixture(scope="module")
def problems(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scan_problems")
    return {name: reference(folder, name, *SCANS[name]) for name in SCANS}


def test_every_scan_is_recognised_with_its_direction_and_form(problems):
    found = {name: recognise_problem(p) for name, p in problems.items()}
    assert all((r.family, r.op) == ("scan", "scan") for r in found.values()), {n: r.line() for n, r in found.items()}
    flags = {name: tuple(k for k in ("reverse", "exclusive", "masked") if r.params[k]) for name, r in found.items()}
    assert flags == {"cumsum_rows": (), "cumprod_rows": (), "cumsum_middle": (), "cumsum_reversed": ("reverse",),
                     "cumprod_reversed_first": ("reverse",), "cumsum_exclusive": ("exclusive",),
                     "cumsum_masked": ("masked",), "cumsum_masked_where": ("masked",),
                     "cumsum_exclusive_by_difference": ("exclusive",)}
    assert (found["cumprod_rows"].params["kind"], found["cumprod_rows"].params["dim"]) == ("prod", 1)
    assert describe(problems["cumsum_masked"]).args == ("x", "mask")
    assert (describe(problems["cumsum_masked"]).geometry["masked"],
            describe(problems["cumsum_masked_where"]).geometry["masked"]) == (1, 2)
    assert describe(problems["cumsum_exclusive_by_difference"]).geometry["b"] == 1


def test_a_masked_out_infinity_is_zero_where_the_mask_selects_and_nan_where_it_multiplies(problems, tmp_path):
    for name, shape in (("cumsum_masked_where", (3, 5, 515)), ("cumsum_masked", (4, 1032))):
        x, mask = torch.ones(shape), torch.ones(shape, dtype=torch.bool)
        x[..., 7], mask[..., 7] = float("inf"), False
        prob = problems[name]
        model = import_source(candidate_source(describe(prob), "cpu", {}, "t", "reference"), tmp_path).ModelNew()
        got, want = model(x, mask), prob.load_module().Model()(x, mask)
        torch.testing.assert_close(got, want, equal_nan=True, rtol=0, atol=0)
        assert bool(want.isnan().any()) == (name == "cumsum_masked")


def test_a_scan_of_a_computed_value_is_not_searched(tmp_path):
    prob = reference(tmp_path, "scan_of_exp", "return torch.cumsum(torch.exp(xs[0]), dim=1)", [(4, 9)])
    why = OfflineProposer(0).why_unsupported(prob, "cuda")
    assert why.startswith("no offline family fits") and "exp(f32[4,9]) -> cumsum(" in why


@pytest.mark.parametrize("backend", ["cuda", "cpu"])
def test_five_scan_rounds_never_repeat_an_idea_and_the_same_seed_writes_the_same_files(problems, backend):
    prob = problems["cumsum_masked"]
    assert five_round_sources(prob, backend) == five_round_sources(prob, backend)


C_PARENTS = [{}, {"par": "omp", "order": "blocked", "chunk": 1024}, {"acc": "double", "simd": True}]
CUDA_PARENTS = [{}, {"vec": 4, "ipt": 2, "mapping": "warp"}, {"vec": 4, "ipt": 4, "threads": 128, "full_tiles": True}]


def _inputs(shapes, device):
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(shapes[0], generator=gen) + 0.5
    unaligned = torch.rand(x.numel() + 1, generator=gen)[1:].view(shapes[0]) + 0.5
    masks = [torch.rand(s, generator=gen) > 0.5 for s in shapes[1:]]
    return [[t.to(device) for t in [v, *masks]] for v in (x, unaligned)]


def _check_all(jobs, modules, device):
    failures = []
    for (prob, spec, f), module in zip(jobs, modules, strict=True):
        ref = prob.load_module().Model()
        for args in _inputs(spec.input_shapes, device):
            with torch.no_grad():
                want, got = ref(*args), module.ModelNew()(*args)
            if not close(got, want):
                failures.append(f"{prob.id} {f}: max abs err {(got - want).abs().max().item():.3g}")
                break
    return failures


def test_every_reachable_c_scan_kernel_computes_the_scan_at_odd_shapes(problems, tmp_path):
    jobs = []
    for prob in problems.values():
        spec = describe(prob)
        jobs += [(prob, spec, f) for f in reachable(spec, "cpu", C_PARENTS)[::2]]
    assert len(jobs) > 60
    with ThreadPoolExecutor(2) as pool:
        modules = list(pool.map(lambda j: import_source(candidate_source(j[1], "cpu", j[2], "t", "reference"),
                                                        tmp_path), jobs))
    with one_thread():
        failures = _check_all(jobs, modules, "cpu")
    assert not failures, "\n".join(failures[:5])


def _cuda_jobs(problems):
    jobs = []
    for prob in problems.values():
        spec = describe(prob)
        jobs += [(prob, spec, f) for f in reachable(spec, "cuda", CUDA_PARENTS)[::2]]
    return jobs


def test_every_reachable_cuda_scan_kernel_compiles_with_nvrtc(problems, tmp_path):
    jobs = _cuda_jobs(problems)
    assert len(jobs) > 60

    failures = build_failures(jobs, tmp_path)
    assert not failures, "\n".join(failures[:5])


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")
def test_every_reachable_cuda_scan_kernel_computes_the_scan_on_the_gpu(problems, tmp_path):
    jobs = _cuda_jobs(problems)
    modules = [import_source(candidate_source(j[1], "cuda", j[2], "t", "reference"), tmp_path) for j in jobs]
    failures = _check_all(jobs, modules, "cuda")
    print(f"{len(jobs) - len(failures)} of {len(jobs)} CUDA scan kernels match the reference")
    assert not failures, "\n".join(failures[:10])
