"""The pointwise family: any chain of elementwise operations on one float32 input, generated from the traced graph
(problems/recognise.py) as one per-element function that the elementwise CUDA and C kernels call. C candidates are
built and run here against their references on odd shapes; CUDA ones compile with NVRTC (and run where a GPU is)."""

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
    gpu_mismatches,
    import_source,
    odd_inputs,
    one_thread,
    reachable,
)

from kernelcraft.problems import load_problem
from kernelcraft.search.offline import OfflineProposer
from kernelcraft.search.offline_kernels import candidate_source
from kernelcraft.search.offline_kernels.opspec import describe

HEAD = "import math\nimport torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n\n"

# Level-1-like activations and composites, written for these tests: (constructor args, forward body).
CHAINS = {
    "leaky_relu": ("negative_slope: float = 0.2", "return F.leaky_relu(x, negative_slope=self.a)", "[0.2]"),
    "selu": ("", "return torch.selu(x)", "[]"),
    "elu": ("alpha: float = 0.5", "return F.elu(x, alpha=self.a)", "[0.5]"),
    "softplus": ("", "return F.softplus(x, beta=2.0, threshold=3.0)", "[]"),
    "hardtanh": ("", "return F.hardtanh(x, min_val=-2.0, max_val=3.0)", "[]"),
    "hardsigmoid": ("", "return F.hardsigmoid(x)", "[]"),
    "sigmoid_tanh": ("", "return torch.tanh(torch.sigmoid(x))", "[]"),
    "swish": ("", "return x * torch.sigmoid(x)", "[]"),
    "softsign": ("", "return x / (1 + torch.abs(x))", "[]"),
    "new_gelu": ("", "return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * "
                     "(x + 0.044715 * torch.pow(x, 3.0))))", "[]"),
    "mish_by_hand": ("", "return x * torch.tanh(F.softplus(x))", "[]"),
    "polynomial": ("", "return (x ** 3 - 2 * x) / (1 + x.abs()) + torch.clamp(x, min=-0.5)", "[]"),
    "scalar_first": ("", "return 1 - torch.exp(-x.abs())", "[]"),
    "shrinks": ("", "return F.hardshrink(x, 0.3) + F.softshrink(x, 0.7) * torch.sign(x)", "[]"),
    "celu_logsigmoid": ("", "return F.celu(x, alpha=0.7) - F.logsigmoid(x)", "[]"),
    "rounding": ("", "return torch.floor(x * 3) + torch.ceil(x) - torch.trunc(x * 2) + torch.round(x * 5)", "[]"),
    # comparisons choose between values, or count as 0 and 1
    "where_select": ("", "return torch.where(x > 0, x, 0.1 * x) + torch.where(x <= -1.5, 2.0, x * x)", "[]"),
    "comparison_mask": ("", "return (x >= 0.25).float() * x - (x != x) * 3.0", "[]"),
}
SHAPES = [(3, 1001), (5, 7, 9), (4099,)]


def chain_problem(folder: Path, name: str, shape: tuple[int, ...]):
    args, forward, init = CHAINS[name]
    keep = "        self.a = " + args.split(":")[0] + "\n" if args else ""
    path = folder / f"{name}_{'x'.join(map(str, shape))}.py"
    path.write_text(HEAD + f"class Model(nn.Module):\n    def __init__(self{', ' + args if args else ''}):\n"
                    f"        super().__init__()\n{keep}\n    def forward(self, x):\n        {forward}\n\n\n"
                    f"def get_inputs():\n    return [torch.randn{shape}]\n\n\n"
                    f"def get_init_inputs():\n    return {init}\n")
    return load_problem(path)


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_an_elementwise_chain_is_searched_on_both_backends_as_one_pointwise_function(tmp_path, name):
    prob = chain_problem(tmp_path, name, (3, 1001))
    spec = describe(prob)
    assert (spec.family, spec.op) == ("elementwise", "pointwise") and spec.body.rstrip().endswith(";")
    p = OfflineProposer(0)
    assert p.supports(prob, "cpu") and p.supports(prob, "cuda")


def _jobs(tmp_path: Path, backend: str) -> list:
    jobs = []
    for name in sorted(CHAINS):
        for shape in SHAPES:
            prob = chain_problem(tmp_path, name, shape)
            spec = describe(prob)
            kids = reachable(spec, backend, [{}])
            for f in (kids[:1] + kids[1::9]) if backend == "cpu" else kids[::7]:
                jobs.append((prob, spec, f, shape))
    return jobs


def test_every_pointwise_c_candidate_matches_its_reference_on_odd_shapes(tmp_path):
    jobs = _jobs(tmp_path, "cpu")
    assert len(jobs) >= 3 * len(CHAINS) * len(SHAPES)

    def build(job):
        prob, spec, f, _ = job
        return import_source(candidate_source(spec, "cpu", f, "coverage", "reference"), tmp_path)

    with ThreadPoolExecutor(2) as pool:
        modules = list(pool.map(build, jobs))
    failures = []
    with one_thread():
        for (prob, _spec, f, shape), module in zip(jobs, modules, strict=True):
            inputs = odd_inputs(shape, "cpu") + [torch.linspace(-40, 40, steps=int(torch.tensor(shape).prod()))
                                                 .reshape(shape)]
            try:
                check_candidate(module, prob, inputs, "cpu")
            except AssertionError as exc:
                failures.append(f"{prob.id} {f}: {exc}")
    assert not failures, "\n".join(failures[:10])


def test_every_sampled_pointwise_cuda_candidate_compiles_with_nvrtc(tmp_path):
    jobs = [j for j in _jobs(tmp_path, "cuda") if j[3] == (3, 1001)]

    def build(job):
        prob, spec, f, _ = job
        try:
            return job, import_source(candidate_source(spec, "cuda", f, "coverage", "reference"), tmp_path), None
        except Exception as exc:  # noqa: BLE001 - every failing combination is reported at once
            return job, None, f"{prob.id} {f}: {str(exc)[:300]}"

    with ThreadPoolExecutor(2) as pool:
        built = list(pool.map(build, jobs))
    failures = [err for _, _, err in built if err]
    assert not failures, "\n".join(failures[:5])
    if GPU:
        wrong = []
        for (prob, _spec, f, shape), module, _ in built:
            try:
                check_candidate(module, prob, odd_inputs(shape, "cuda"), "cuda")
            except AssertionError as exc:
                wrong.append(f"{prob.id} {f}: {exc}")
        assert not wrong, "\n".join(wrong[:10])


# ------------------------------------------------------------------------------------------------ several operands

# Level-1-like references of more than one forward argument, written for these tests: (forward signature, body,
# the inputs as Python source over sizes A, B, C). The second tensor broadcasts over the first along one run of its
# dimensions (diagonal scaling is level 1's 12, a Python number level 1's 5).
OPERANDS = {
    "diag_scale": ("a, b", "return a.unsqueeze(1) * b", "[torch.randn(A), torch.randn(A, B)]"),
    "channel_bias": ("x, bias", "return torch.relu(x + bias.view(1, -1, 1))", "[torch.randn(A, B, C), torch.randn(B)]"),
    "row_vector": ("x, v", "return x * torch.sigmoid(x) - v", "[torch.randn(A, B), torch.randn(B)]"),
    "expanded": ("a, b", "return b * a[:, None].expand(-1, b.shape[1]) + b", "[torch.randn(A), torch.randn(A, B)]"),
    "diag_matrix_left": ("a, b", "return torch.diag(a) @ b", "[torch.randn(A), torch.randn(A, B)]"),
    "diag_matrix_right": ("b, a", "return torch.matmul(b, torch.diag(a))", "[torch.randn(B, A), torch.randn(A)]"),
    "same_shape": ("x, y", "return torch.maximum(x, y) * 0.5", "[torch.randn(A, B, C), torch.randn(A, B, C)]"),
    "one_value": ("x, y", "return x - y", "[torch.randn(A, B), torch.randn(1, 1)]"),
    "scalar_arg": ("m, s", "return m * s", "[torch.randn(A, B), 2.5]"),
    "scalar_first": ("s, m", "return torch.tanh(m) * s + m", "[0.75, torch.randn(A, C)]"),
}
SIZES = [(5, 7, 3), (33, 129, 2)]


def operand_problem(folder: Path, name: str, sizes: tuple[int, int, int]):
    sig, forward, inputs = OPERANDS[name]
    path = folder / f"{name}_{'x'.join(map(str, sizes))}.py"
    path.write_text(HEAD + f"A, B, C = {sizes}\n\n\nclass Model(nn.Module):\n    def forward(self, {sig}):\n"
                    f"        {forward}\n\n\ndef get_inputs():\n    return {inputs}\n\n\n"
                    "def get_init_inputs():\n    return []\n")
    return load_problem(path)


def _random_inputs(prob, device: str) -> list[tuple]:
    """Two draws of the reference's own get_inputs (tensors moved to ``device``), as forward argument tuples."""
    module = prob.load_module()
    draws = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        draws.append(tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in module.get_inputs()))
    return draws


def test_several_operands_are_one_pointwise_function_with_the_broadcast_map_and_numbers_named(tmp_path):
    specs = {name: describe(operand_problem(tmp_path, name, (5, 7, 3))) for name in OPERANDS}
    assert all((s.family, s.op) == ("elementwise", "pointwise") for s in specs.values())
    # element e of the output reads the second operand at (e / inner) % size
    assert specs["diag_scale"].broadcast == (7, 5) and specs["diag_scale"].args == ("y", "x")
    assert specs["channel_bias"].broadcast == (3, 7) and specs["channel_bias"].args == ("x", "y")
    assert specs["row_vector"].broadcast == (1, 7)
    assert specs["expanded"].broadcast == (7, 5)
    # diag(a) @ B scales B's rows by a, B @ diag(a) its columns: the product of a diagonal matrix never built
    assert specs["diag_matrix_left"].broadcast == (7, 5) and specs["diag_matrix_left"].args == ("y", "x")
    assert specs["diag_matrix_right"].broadcast == (1, 5) and specs["diag_matrix_right"].args == ("x", "y")
    assert specs["same_shape"].broadcast == (1, 105)
    assert specs["one_value"].broadcast == (1, 1)
    assert specs["scalar_arg"].scalars == (("s1", 2.5),) and specs["scalar_arg"].args == ("x", "s1")
    assert specs["scalar_first"].scalars == (("s0", 0.75),) and not specs["scalar_first"].broadcast
    p = OfflineProposer(0)
    assert all(p.supports(operand_problem(tmp_path, n, (5, 7, 3)), b) for n in OPERANDS for b in ("cpu", "cuda"))


def test_a_broadcast_over_more_than_one_run_of_dimensions_is_not_taken_by_the_pointwise_family(tmp_path):
    from kernelcraft.problems.recognise import recognise_problem

    path = tmp_path / "split_broadcast.py"
    path.write_text(HEAD + "class Model(nn.Module):\n    def forward(self, x, y):\n        return x * y\n\n\n"
                    "def get_inputs():\n    return [torch.randn(4, 5, 6), torch.randn(4, 1, 6)]\n\n\n"
                    "def get_init_inputs():\n    return []\n")
    found = recognise_problem(load_problem(path))
    assert found.op is None and found.reason == "the graph holds mul(f32[4,5,6], f32[4,1,6])"


def _operand_jobs(tmp_path: Path, backend: str) -> list:
    jobs = []
    for name in sorted(OPERANDS):
        for sizes in SIZES:
            prob = operand_problem(tmp_path, name, sizes)
            spec = describe(prob)
            kids = reachable(spec, backend, [{}])
            jobs += [(prob, spec, f) for f in (kids[:1] + kids[1::6] if backend == "cpu" else kids[::6])]
    return jobs


def test_every_sampled_c_candidate_of_several_operands_matches_its_reference(tmp_path):
    jobs = _operand_jobs(tmp_path, "cpu")
    assert len(jobs) >= 3 * len(OPERANDS) * len(SIZES)
    with ThreadPoolExecutor(2) as pool:
        modules = list(pool.map(lambda j: import_source(candidate_source(j[1], "cpu", j[2], "t", "reference"),
                                                        tmp_path), jobs))
    failures = []
    with one_thread():
        for (prob, _spec, f), module in zip(jobs, modules, strict=True):
            try:
                check_candidate(module, prob, _random_inputs(prob, "cpu"), "cpu")
            except AssertionError as exc:
                failures.append(f"{prob.id} {f}: {exc}")
    assert not failures, "\n".join(failures[:10])


def test_a_candidate_refuses_a_number_other_than_the_one_it_compiled_in(tmp_path):
    prob = operand_problem(tmp_path, "scalar_arg", (5, 7, 3))
    module = import_source(candidate_source(describe(prob), "cpu", {}, "t", "reference"), tmp_path)
    model = module.ModelNew()
    assert torch.equal(model(torch.ones(5, 7), 2.5), torch.full((5, 7), 2.5))
    with pytest.raises(ValueError, match="compiled for s1 = 2.5, got 3.0"):
        model(torch.ones(5, 7), 3.0)
    with pytest.raises(ValueError, match="expected inputs of shapes"):
        diag = operand_problem(tmp_path, "diag_scale", (5, 7, 3))
        import_source(candidate_source(describe(diag), "cpu", {}, "t", "reference"), tmp_path).ModelNew()(
            torch.ones(6), torch.ones(6, 7))


def test_every_sampled_cuda_candidate_of_several_operands_compiles_with_nvrtc(tmp_path):
    jobs = _operand_jobs(tmp_path, "cuda")
    failures = build_failures(jobs, tmp_path)
    assert not failures, "\n".join(failures[:5])
    if GPU:
        wrong = gpu_mismatches(jobs, tmp_path, lambda prob, spec, f: _random_inputs(prob, "cuda"))
        assert not wrong, "\n".join(wrong[:10])


def test_a_dropout_references_candidate_matches_the_reference_in_eval_mode_where_it_is_judged(tmp_path):
    path = tmp_path / "dropout_tanh.py"
    path.write_text(HEAD + "class Model(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                    "        self.drop = nn.Dropout(0.3)\n\n    def forward(self, x):\n"
                    "        return torch.tanh(self.drop(x)) * 2\n\n\n"
                    "def get_inputs():\n    return [torch.randn(3, 1001)]\n\n\n"
                    "def get_init_inputs():\n    return []\n")
    prob = load_problem(path)
    spec = describe(prob)  # probed in eval mode: in training mode the dropout's noise fails the probe
    assert (spec.family, spec.op) == ("elementwise", "pointwise")
    module = import_source(candidate_source(spec, "cpu", {}, "t", "reference"), tmp_path)
    x = torch.randn(3, 1001)
    with torch.no_grad():
        got, want = module.ModelNew().eval()(x), prob.make_reference(0, "cpu")(x)  # the evaluator's eval mode
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)


def _prelu_problem(folder: Path, name: str, init: str, forward: str, shape: tuple[int, ...]):
    path = folder / f"{name}.py"
    path.write_text(HEAD + f"class Model(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                    f"        {init}\n\n    def forward(self, x):\n        {forward}\n\n\n"
                    f"def get_inputs():\n    return [torch.randn{shape}]\n\n\n"
                    "def get_init_inputs():\n    return []\n")
    return load_problem(path)


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_a_prelu_reads_its_slopes_from_the_module_it_mirrors_whatever_values_they_hold(tmp_path, backend):
    probs = [_prelu_problem(tmp_path, "prelu_one", "self.act = nn.PReLU()", "return self.act(x)", (5, 77)),
             _prelu_problem(tmp_path, "prelu_channels", "self.act = nn.PReLU(6, init=0.1)", "return self.act(x) * 2",
                            (2, 6, 5, 7))]
    for prob in probs:
        spec = describe(prob)
        assert spec.weight == "self.act.weight" and spec.args == ("x",) and "y * x" in spec.body
        for f in reachable(spec, backend, [{}])[::3]:
            module = import_source(candidate_source(spec, backend, f, "t", "reference"), tmp_path)
            if backend == "cuda" and not GPU:
                continue  # built with NVRTC; running needs a GPU
            # check_candidate gives both models the same random slopes first: a kernel with the init baked in fails
            with one_thread():
                check_candidate(module, prob, odd_inputs(spec.input_shape, backend), backend)


def test_a_prelu_of_a_bare_parameter_is_refused_naming_it(tmp_path):
    prob = _prelu_problem(tmp_path, "prelu_bare", "self.w = nn.Parameter(torch.full((1,), 0.25))",
                          "return F.prelu(x, self.w)", (5, 77))
    assert "parameter w is not the slopes of an nn.PReLU attribute" in OfflineProposer(0).why_unsupported(prob, "cpu")
