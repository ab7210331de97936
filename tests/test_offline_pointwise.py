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
    check_candidate,
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
