"""The offline proposer's reduce family: reductions (sum, mean, max, min, prod, argmax, argmin) over any run of
dimensions, and inputs scaled by statistics of themselves (softmax and log-softmax over any dimension; RMS, L1,
L2 and Frobenius norms; batch, instance and group norm with training-mode statistics and their affine maps),
recognised from the traced graph and computed by kernels at small odd shapes other than KernelBench's, including
inputs with a large mean (the variance must not cancel).

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
    close,
    five_round_sources,
    import_candidates,
    import_source,
    odd_inputs,
    one_thread,
    reachable,
)

from kernelcraft.problems import load_problem
from kernelcraft.problems.recognise import recognise_problem
from kernelcraft.search.offline import OfflineProposer
from kernelcraft.search.offline_kernels import candidate_source
from kernelcraft.search.offline_kernels.opspec import describe

# name: (__init__ body, forward body over xs, input shape); none of them is a KernelBench shape
REDUCTIONS = {
    "sum_middle": ("pass", "return xs[0].sum(1, keepdim=True)", (3, 37, 5)),
    "mean_middle": ("pass", "return xs[0].mean(1)", (3, 37, 5)),
    "max_last": ("pass", "return torch.max(xs[0], dim=2)[0]", (3, 4, 37)),
    "amin_two_dims": ("pass", "return torch.amin(xs[0], dim=(1, 2))", (3, 4, 37)),
    "sum_first_and_last": ("pass", "return xs[0].sum(dim=(0, 2))", (5, 6, 7)),
    "mean_first_and_third": ("pass", "return xs[0].mean(dim=(0, 2), keepdim=True)", (4, 5, 6, 7)),
    "amax_first_and_last": ("pass", "return torch.amax(xs[0], dim=(0, -1))", (3, 4, 5, 6)),
    "sum_two_runs": ("pass", "return xs[0].sum(dim=(0, 1, 3))", (3, 4, 5, 6)),
    "adaptive_max_1d": ("self.p = nn.AdaptiveMaxPool1d(1)", "return self.p(xs[0])", (3, 4, 37)),
    "adaptive_max_2d": ("self.p = nn.AdaptiveMaxPool2d((1, 1))", "return self.p(xs[0])", (2, 3, 5, 7)),
    "argmax_middle": ("pass", "return torch.argmax(xs[0], dim=1)", (3, 37, 5)),
    "argmin_first": ("pass", "return torch.argmin(xs[0], dim=0)", (37, 6)),
    "prod_middle": ("pass", "return torch.prod(xs[0], dim=1)", (3, 9, 5)),
    "softmax_middle": ("pass", "return torch.softmax(xs[0], dim=1)", (3, 37, 5)),
    "log_softmax_first": ("pass", "return torch.log_softmax(xs[0], dim=0)", (37, 6)),
    "rms_channels": ("pass", "x = xs[0]\n        return x / torch.sqrt(torch.mean(x ** 2, dim=1, keepdim=True) + 1e-5)",
                     (2, 6, 5, 7)),
    "l1_rows": ("pass", "x = xs[0]\n        return x / torch.mean(torch.abs(x), dim=1, keepdim=True)", (6, 41)),
    "l2_rows": ("pass", "x = xs[0]\n        return x / torch.norm(x, p=2, dim=1, keepdim=True)", (6, 44)),
    "frobenius": ("pass", "x = xs[0]\n        return x / torch.norm(x, p='fro')", (2, 3, 5, 8)),
    "linf_rows": ("pass", "x = xs[0]\n        return x / torch.norm(x, p=float('inf'), dim=1, keepdim=True)", (6, 44)),
    "normalize_linf": ("pass", "return torch.nn.functional.normalize(xs[0], p=float('inf'), dim=2)", (3, 5, 37)),
    "batch_norm": ("self.bn = nn.BatchNorm2d(6)", "return self.bn(xs[0])", (3, 6, 5, 8)),
    "instance_norm_affine": ("self.n = nn.InstanceNorm2d(6, affine=True)", "return self.n(xs[0])", (3, 6, 5, 8)),
    "group_norm": ("self.n = nn.GroupNorm(3, 6)", "return self.n(xs[0])", (2, 6, 5, 4)),
    "var_middle": ("pass", "return torch.var(xs[0], dim=1)", (3, 37, 5)),
    "std_biased_last": ("pass", "return xs[0].std(dim=-1, correction=0, keepdim=True)", (4, 29)),
    "logsumexp_middle": ("pass", "return torch.logsumexp(xs[0], dim=1)", (3, 37, 5)),
    "norm2_rows": ("pass", "return torch.norm(xs[0], dim=1)", (6, 44)),
    "norm1_middle": ("pass", "return torch.linalg.vector_norm(xs[0], 1, dim=1)", (3, 37, 5)),
    "normalize": ("pass", "return torch.nn.functional.normalize(xs[0], p=2, dim=1)", (3, 37, 5)),
    "pool_of_a_view": ("pass", "return torch.nn.functional.adaptive_avg_pool2d(xs[0].view(4, 3, 5, 7), 1)"
                       ".view(4, 3)", (4, 105)),
}


def reference(folder: Path, name: str, init: str, forward: str, shape: tuple[int, ...]):
    path = folder / f"{name}.py"
    path.write_text("import torch\nimport torch.nn as nn\n\nclass Model(nn.Module):\n    def __init__(self):\n"
                    f"        super().__init__()\n        {init}\n\n    def forward(self, *xs):\n        {forward}\n\n"
                    f"def get_inputs():\n    return [torch.randn{shape}]\n\ndef get_init_inputs():\n    return []\n")
    return load_problem(path)


@pytest.fixture(scope="module")
def problems(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reduce_problems")
    return {name: reference(folder, name, *REDUCTIONS[name]) for name in REDUCTIONS}


# ------------------------------------------------------------------------------------------------ recognition


def test_every_reduction_and_normalisation_is_recognised_with_its_dimensions(problems):
    found = {name: recognise_problem(p) for name, p in problems.items()}
    assert all(r.family == "reduce" for r in found.values()), {n: r.line() for n, r in found.items()}
    assert {n for n, r in found.items() if r.op == "reduce"} == {
        "sum_middle", "mean_middle", "max_last", "amin_two_dims", "sum_first_and_last", "mean_first_and_third",
        "amax_first_and_last", "sum_two_runs", "adaptive_max_1d", "adaptive_max_2d", "argmax_middle", "argmin_first",
        "prod_middle",
        "var_middle", "std_biased_last", "logsumexp_middle", "norm2_rows", "norm1_middle", "pool_of_a_view"}
    assert (found["std_biased_last"].params["kind"], found["std_biased_last"].params["correction"]) == ("std", 0.0)
    assert found["pool_of_a_view"].params["in_shape"] == [4, 3, 5, 7]
    assert (found["amin_two_dims"].params["kind"], found["amin_two_dims"].params["dims"]) == ("min", [1, 2])
    # an adaptive max pooling to one element per channel is the maximum over the (traced) spatial dimensions
    assert [(found[n].params["kind"], found[n].params["dims"], found[n].params["keepdim"])
            for n in ("adaptive_max_1d", "adaptive_max_2d")] == [("max", [2, 3], True), ("max", [2, 3], True)]
    assert (found["softmax_middle"].params["kind"], found["softmax_middle"].params["dims"]) == ("softmax", [1])
    assert (found["batch_norm"].params["norm"], found["batch_norm"].params["dims"]) == ("batch", [0, 2, 3])
    assert (found["instance_norm_affine"].params["norm"], found["instance_norm_affine"].params["affine"]) == \
        ("instance", True)
    assert (found["group_norm"].params["norm"], found["group_norm"].params["groups"]) == ("group", 3)
    assert (found["frobenius"].params["kind"], found["frobenius"].params["dims"]) == ("l2", [0, 1, 2, 3])
    assert [(found[n].params["kind"], found[n].params["dims"]) for n in ("linf_rows", "normalize_linf")] == \
        [("linf", [1]), ("linf", [2])]


def test_the_layout_views_the_input_as_kept_and_reduced_blocks(problems):
    geo = {name: describe(problems[name]).geometry for name in ("sum_middle", "batch_norm", "group_norm", "max_last",
                                                                "mean_first_and_third", "amax_first_and_last",
                                                                "sum_two_runs")}
    assert [geo["sum_middle"][k] for k in ("r0", "a", "r", "b")] == [1, 3, 37, 5]
    assert [geo["batch_norm"][k] for k in ("r0", "a", "r", "b")] == [3, 6, 40, 1]
    assert [geo["group_norm"][k] for k in ("r0", "a", "r", "b", "ca", "cr", "chw")] == [1, 6, 40, 1, 3, 2, 20]
    assert [geo["max_last"][k] for k in ("r0", "a", "r", "b")] == [1, 12, 37, 1]
    # dimension 0 and a later run reduced: every kept dimension in between is A, every one after B
    assert [geo["mean_first_and_third"][k] for k in ("r0", "a", "r", "b")] == [4, 5, 6, 7]
    assert [geo["amax_first_and_last"][k] for k in ("r0", "a", "r", "b")] == [3, 20, 6, 1]
    assert [geo["sum_two_runs"][k] for k in ("r0", "a", "r", "b")] == [12, 5, 6, 1]


def test_a_softmax_over_the_last_dimension_stays_with_the_rowwise_family(tmp_path):
    r = recognise_problem(reference(tmp_path, "last", "pass", "return torch.softmax(xs[0], -1)", (4, 9)))
    assert (r.family, r.op) == ("rowwise", "softmax")


def test_model_new_rebuilds_the_norm_module_with_its_buffers(problems, tmp_path):
    prob = problems["batch_norm"]
    src = OfflineProposer(0).implement(prob, "cpu", {"text": "", "parent": "reference"}, {"id": "reference"},
                                       1, 1)[0]["source"]
    assert "nn.BatchNorm2d(6, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)" in src
    module = import_source(src, tmp_path)
    assert set(module.ModelNew().state_dict()) == set(prob.load_module().Model().state_dict())


# ------------------------------------------------------------------------------------------------ ideas


@pytest.mark.parametrize("backend", ["cuda", "cpu"])
@pytest.mark.parametrize("name", ["group_norm", "argmax_middle"])
def test_five_reduce_rounds_never_repeat_an_idea_and_the_same_seed_writes_the_same_files(problems, backend, name):
    prob = problems[name]
    assert five_round_sources(prob, backend) == five_round_sources(prob, backend)


# ------------------------------------------------------------------------------------------------ kernels run

C_PARENTS = [{}, {"par": "omp", "split": "cores", "bb": 16}, {"acc": "double", "simd": True, "prefetch": 8}]
CUDA_PARENTS = [{}, {"vec": 4, "split": "fill", "ilp": 2}, {"threads": 128, "acc": "double", "unroll": True,
                                                            "split": "fill"}]


def _check_all(jobs, modules, device):
    failures = []
    for (prob, spec, f), module in zip(jobs, modules, strict=True):
        try:  # indices are compared exactly: ties (the offset input has some) go to the first, as PyTorch's
            check_candidate(module, prob, odd_inputs(spec.input_shapes[0], device), device)
        except AssertionError as err:
            failures.append(f"{prob.id} {f}: {err}")
    return failures


def test_every_reachable_c_reduce_kernel_computes_the_op_at_odd_shapes(problems, tmp_path):
    jobs = []
    for prob in problems.values():
        spec = describe(prob)
        jobs += [(prob, spec, f) for f in reachable(spec, "cpu", C_PARENTS)[::3]]
    assert len(jobs) > 100
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
        jobs += [(prob, spec, f) for f in reachable(spec, "cuda", CUDA_PARENTS)[::4]]
    return jobs


def test_every_reachable_cuda_reduce_kernel_compiles_with_nvrtc(problems, tmp_path):
    jobs = _cuda_jobs(problems)
    assert len(jobs) > 80

    failures = build_failures(jobs, tmp_path)
    assert not failures, "\n".join(failures[:5])


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")
def test_every_reachable_cuda_reduce_kernel_computes_the_op_on_the_gpu(problems, tmp_path):
    jobs = _cuda_jobs(problems)
    modules = import_candidates(jobs, tmp_path)
    failures = _check_all(jobs, modules, "cuda")
    print(f"{len(jobs) - len(failures)} of {len(jobs)} CUDA reduce kernels match the reference")
    assert not failures, "\n".join(failures[:10])


def test_a_batch_norm_in_eval_mode_uses_its_running_statistics_as_the_module_does(problems, tmp_path):
    """The evaluator runs both models in eval mode, where nn.BatchNorm2d normalises with its running statistics;
    in training mode with the batch's."""
    prob = problems["batch_norm"]
    spec = describe(prob)
    gen = torch.Generator().manual_seed(2)
    running = (torch.randn(6, generator=gen), torch.rand(6, generator=gen) + 0.5)
    for backend in ("cpu",) + (("cuda",) if GPU else ()):
        module = import_source(candidate_source(spec, backend, {}, "t", "reference"), tmp_path)
        ref, new = prob.load_module().Model(), module.ModelNew()
        for m in (ref, new):
            norm = next(x for x in m.modules() if hasattr(x, "running_mean"))
            norm.running_mean.copy_(running[0])
            norm.running_var.copy_(running[1])
            m.to(backend).eval()
        x = torch.randn(spec.input_shape, generator=gen).to(backend) * 3 + 1
        with torch.no_grad():
            assert close(new(x), ref(x)), backend
        ref.train(), new.train()
        with torch.no_grad():
            assert close(new(x), ref(x)), backend


# ------------------------------------------------------------------------------------------------ losses

# name: (forward over x, y; the inputs): an elementwise term of the two inputs, summed or averaged
LOSSES = {
    "mse": ("return torch.mean((x - y) ** 2)", "torch.randn(7, 33), torch.randn(7, 33)"),
    "mse_loss_sum": ("return F.mse_loss(x, y, reduction='sum')", "torch.randn(7, 33), torch.randn(7, 33)"),
    "smooth_l1": ("return F.smooth_l1_loss(x, y, beta=0.5)", "torch.randn(5, 41), torch.randn(5, 41)"),
    "huber": ("return F.huber_loss(x, y, delta=2.0)", "torch.randn(5, 41), torch.randn(5, 41)"),
    "l1": ("return F.l1_loss(x, y)", "torch.randn(3, 50), torch.randn(3, 50)"),
    "kl_batchmean": ("return F.kl_div(torch.log(x), y, reduction='batchmean')",
                     "torch.rand(6, 20).softmax(-1), torch.rand(6, 20).softmax(-1)"),
    "hinge_broadcast": ("return torch.mean(torch.clamp(1 - x * y, min=0))",
                        "torch.randn(9, 16), torch.randint(0, 2, (16,)).float() * 2 - 1"),
    # probabilities that reach 0 and 1 exactly: PyTorch's logs clamped at -100 there, not -inf
    "bce": ("return F.binary_cross_entropy(x, y)", "torch.cat([torch.rand(5, 29), torch.tensor([[0.0] * 15 + [1.0] * "
            "14])]), torch.rand(6, 29)"),
    "bce_logits_sum": ("return F.binary_cross_entropy_with_logits(x, y, reduction='sum')",
                       "torch.randn(6, 29) * 30, torch.rand(6, 29)"),  # logits far out: no overflow either way
    # an ATen loss of elementwise chains of the inputs: the chains computed first, per element
    "bce_of_sigmoid": ("return F.binary_cross_entropy(torch.sigmoid(x), y)",
                       "torch.randn(6, 29) * 3, torch.rand(6, 29)"),
    "mse_of_tanh_sum": ("return F.mse_loss(torch.tanh(x), y * 0.5, reduction='sum')",
                        "torch.randn(5, 31), torch.randn(5, 31)"),
}


def loss_problem(folder: Path, name: str, forward: str, inputs: str):
    path = folder / f"{name}.py"
    path.write_text("import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n\n"
                    "class Model(nn.Module):\n    def forward(self, x, y):\n"
                    f"        {forward}\n\ndef get_inputs():\n    return [{inputs}]\n\n"
                    "def get_init_inputs():\n    return []\n")
    return load_problem(path)


@pytest.fixture(scope="module")
def losses(tmp_path_factory):
    folder = tmp_path_factory.mktemp("losses")
    return {name: loss_problem(folder, name, *LOSSES[name]) for name in LOSSES}


def test_every_loss_is_a_reduction_of_an_elementwise_term_of_its_two_inputs(losses):
    found = {name: recognise_problem(p) for name, p in losses.items()}
    assert all((r.family, r.op) == ("reduce", "reduce") for r in found.values()), \
        {n: r.line() for n, r in found.items()}
    assert {n: r.params["kind"] for n, r in found.items()} == {
        "mse": "mean", "mse_loss_sum": "sum", "smooth_l1": "mean", "huber": "mean", "l1": "mean",
        "kl_batchmean": "sum", "hinge_broadcast": "mean", "bce": "mean", "bce_logits_sum": "sum",
        "bce_of_sigmoid": "mean", "mse_of_tanh_sum": "sum"}
    assert found["bce_of_sigmoid"].params["chain"] == "sigmoid -> binary_cross_entropy"
    assert found["mse_of_tanh_sum"].params["chain"] == "tanh -> mul -> mse_loss"
    assert found["kl_batchmean"].params["scale"] == 1 / 6 and found["hinge_broadcast"].params["y_shape"] == [16]
    assert describe(losses["hinge_broadcast"]).args == ("x", "y")


def _loss_inputs(prob, device):
    torch.manual_seed(3)
    return [t.to(device) for t in prob.load_module().get_inputs()]


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_every_reachable_loss_kernel_computes_the_loss(losses, tmp_path, backend):
    jobs = []
    for prob in losses.values():
        spec = describe(prob)
        jobs += [(prob, spec, f) for f in reachable(spec, backend, C_PARENTS if backend == "cpu" else
                                                    CUDA_PARENTS)[::5]]
    assert len(jobs) > 25
    modules = [import_source(candidate_source(j[1], backend, j[2], "t", "reference"), tmp_path) for j in jobs]
    if backend == "cuda" and not GPU:
        return  # built with NVRTC above; running needs a GPU
    failures = []
    with one_thread():
        for (prob, _, f), module in zip(jobs, modules, strict=True):
            args = _loss_inputs(prob, backend)
            with torch.no_grad():
                want, got = prob.load_module().Model()(*args), module.ModelNew()(*args)
            if got.shape != want.shape or not torch.allclose(got, want, atol=1e-5, rtol=1e-4):
                failures.append(f"{prob.id} {f}: {got} vs {want}")
    assert not failures, "\n".join(failures[:5])
