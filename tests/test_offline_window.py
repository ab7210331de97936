"""The offline proposer's window family: every convolution the conv family does not take (1-D and 3-D, asymmetric
kernels, groups and depthwise, dilation, transposed with output padding) and max/average pooling (1-D to 3-D,
padding, dilation, ceil_mode, count_include_pad, divisor_override), recognised from the traced graph and computed
by kernels at small odd shapes other than KernelBench's.

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
    odd_inputs,
    one_thread,
    reachable,
)

from kernelcraft.problems import load_problem
from kernelcraft.problems.recognise import recognise_problem
from kernelcraft.search.offline import OfflineProposer
from kernelcraft.search.offline_kernels import candidate_source
from kernelcraft.search.offline_kernels.opspec import describe

# name: (module expression, input shape); none of them is a KernelBench shape
WINDOWS = {
    "conv1d_dilated_strided": ("nn.Conv1d(4, 6, 3, stride=2, padding=1, dilation=2)", (2, 4, 19)),
    "conv3d_asymmetric": ("nn.Conv3d(3, 4, (3, 2, 3), stride=(1, 2, 1), padding=(1, 0, 2))", (2, 3, 7, 6, 9)),
    "conv2d_asymmetric": ("nn.Conv2d(5, 7, (2, 5), stride=(2, 1), padding=(0, 2), dilation=(2, 1))", (2, 5, 11, 13)),
    "conv2d_depthwise": ("nn.Conv2d(6, 6, (3, 1), groups=6, padding=(1, 0), bias=False)", (2, 6, 9, 11)),
    "conv2d_grouped": ("nn.Conv2d(8, 4, (3, 5), groups=2, stride=(2, 1), dilation=(1, 2))", (1, 8, 12, 17)),
    "conv_t1d": ("nn.ConvTranspose1d(4, 6, 3, stride=2, padding=1, dilation=2, output_padding=1)", (2, 4, 13)),
    "conv_t2d_grouped": ("nn.ConvTranspose2d(4, 6, (3, 5), stride=(2, 3), padding=(1, 2), dilation=(2, 1), "
                         "groups=2, bias=False)", (2, 4, 7, 9)),
    "conv_t3d": ("nn.ConvTranspose3d(3, 5, (2, 3, 2), stride=(2, 1, 2), padding=(0, 1, 1), output_padding=(1, 0, 1))",
                 (1, 3, 4, 5, 3)),
    "conv_t3d_depthwise": ("nn.ConvTranspose3d(4, 4, 3, stride=2, padding=1, output_padding=1, groups=4)",
                           (1, 4, 4, 5, 6)),
    "maxpool1d": ("nn.MaxPool1d(4, stride=2, padding=2, dilation=2)", (2, 3, 21)),
    "maxpool2d_ceil": ("nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)", (2, 3, 10, 11)),
    "maxpool3d_dilated": ("nn.MaxPool3d(3, stride=2, padding=1, dilation=2)", (1, 2, 9, 8, 10)),
    "avgpool1d": ("nn.AvgPool1d(4, stride=1, padding=2)", (2, 3, 17)),
    "avgpool2d_exclusive": ("nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False, ceil_mode=True)",
                            (2, 3, 10, 11)),
    "avgpool3d": ("nn.AvgPool3d(3, stride=2, padding=1)", (1, 2, 9, 8, 10)),
    "avgpool2d_divisor": ("nn.AvgPool2d(2, divisor_override=3)", (1, 2, 6, 7)),
}


def window_problem(folder: Path, name: str, module: str, shape: tuple[int, ...]):
    path = folder / f"{name}.py"
    path.write_text("import torch\nimport torch.nn as nn\n\nclass Model(nn.Module):\n    def __init__(self):\n"
                    f"        super().__init__()\n        self.op = {module}\n\n    def forward(self, x):\n"
                    "        return self.op(x)\n\n"
                    f"def get_inputs():\n    return [torch.randn{shape}]\n\ndef get_init_inputs():\n    return []\n")
    return load_problem(path)


@pytest.fixture(scope="module")
def problems(tmp_path_factory):
    folder = tmp_path_factory.mktemp("window_problems")
    return {name: window_problem(folder, name, *WINDOWS[name]) for name in WINDOWS}


# ------------------------------------------------------------------------------------------------ recognition


def test_every_convolution_and_pooling_is_recognised_with_its_geometry(problems):
    ops = {name: recognise_problem(p) for name, p in problems.items()}
    assert all(r.family == "window" for r in ops.values()), {n: r.line() for n, r in ops.items()}
    assert {n for n, r in ops.items() if r.op == "pool"} == {n for n in WINDOWS if "pool" in n}
    t2d = ops["conv_t2d_grouped"].params
    assert (t2d["transposed"], t2d["groups"], t2d["kernel"], t2d["stride"], t2d["dilation"]) == \
        (True, 2, [3, 5], [2, 3], [2, 1])
    mp1 = ops["maxpool1d"].params  # 1-D pooling traces as 2-D on an unsqueezed view
    assert (mp1["kind"], mp1["kernel"], mp1["dilation"], mp1["in_shape"]) == ("max", [1, 4], [1, 2], [2, 3, 1, 21])
    avg = ops["avgpool2d_exclusive"].params
    assert (avg["kind"], avg["count_include_pad"], avg["ceil_mode"]) == ("avg", False, True)
    assert ops["avgpool2d_divisor"].params["divisor_override"] == 3


def test_the_conv_family_keeps_square_2d_convolutions_and_the_window_family_takes_the_rest(tmp_path):
    square = window_problem(tmp_path, "square", "nn.Conv2d(3, 4, 3, padding=1)", (1, 3, 8, 8))
    assert (recognise_problem(square).family, recognise_problem(square).op) == ("conv", "conv2d")
    asym = window_problem(tmp_path, "asym", "nn.Conv2d(3, 4, (3, 1), padding=1)", (1, 3, 8, 8))
    assert (recognise_problem(asym).family, recognise_problem(asym).op) == ("window", "conv")


def test_two_convolutions_in_a_row_are_not_searched_and_the_reason_names_them(tmp_path):
    path = tmp_path / "separable.py"
    path.write_text("import torch\nimport torch.nn as nn\n\nclass Model(nn.Module):\n    def __init__(self):\n"
                    "        super().__init__()\n        self.dw = nn.Conv2d(4, 4, 3, groups=4)\n"
                    "        self.pw = nn.Conv2d(4, 8, 1)\n\n    def forward(self, x):\n"
                    "        return self.pw(self.dw(x))\n\n"
                    "def get_inputs():\n    return [torch.randn(1, 4, 9, 9)]\n\n"
                    "def get_init_inputs():\n    return []\n")
    why = OfflineProposer(0).why_unsupported(load_problem(path), "cuda")
    assert why.startswith("no offline family fits") and "convolution(f32[1,4,9,9]" in why \
        and "-> convolution(" in why


def test_model_new_rebuilds_the_reference_module_so_the_same_seed_gives_the_same_weights(problems, tmp_path):
    prob = problems["conv_t2d_grouped"]
    src = OfflineProposer(0).implement(prob, "cpu", {"text": "", "parent": "reference"}, {"id": "reference"},
                                       1, 1)[0]["source"]
    assert "nn.ConvTranspose2d(4, 6, kernel_size=(3, 5), stride=(2, 3), padding=(1, 2), output_padding=(0, 0)" in src
    module = import_source(src, tmp_path)
    torch.manual_seed(0)
    ref = prob.load_module().Model()
    torch.manual_seed(0)
    new = module.ModelNew()
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), new.state_dict().values(), strict=True))


def test_a_1d_pool_returns_the_references_own_shape(problems):
    spec = describe(problems["maxpool1d"])
    assert spec.input_shape == (2, 3, 1, 21) and spec.input_shapes == ((2, 3, 21),)
    assert spec.out_shape == (2, 3, 10)  # (21 + 2 * 2 - 2 * 3 - 1) // 2 + 1


# ------------------------------------------------------------------------------------------------ ideas


@pytest.mark.parametrize("backend", ["cuda", "cpu"])
@pytest.mark.parametrize("name", ["conv_t2d_grouped", "avgpool3d"])
def test_five_window_rounds_never_repeat_an_idea_and_the_same_seed_writes_the_same_files(problems, backend, name):
    prob = problems[name]
    assert five_round_sources(prob, backend) == five_round_sources(prob, backend)


# ------------------------------------------------------------------------------------------------ kernels run

C_PARENTS = [{}, {"order": "rows", "par": "omp", "kblock": 2}, {"interior": True, "kblock": 2, "acc": "double"}]
CUDA_PARENTS = [{}, {"opt": 4, "cpt": 2, "wsmem": True, "unroll": True},
                {"order": "taps", "opt": 2, "phase": True, "interior": True, "raster": "channels"},
                {"algo": "mma", "cp_async": True, "stages": 2, "pad": 4}]  # the implicit GEMM (standard convs)


def test_every_reachable_c_window_kernel_computes_the_op_at_odd_shapes(problems, tmp_path):
    jobs = []
    for name, prob in problems.items():
        spec = describe(prob)
        feats = reachable(spec, "cpu", C_PARENTS)
        jobs += [(prob, spec, f) for f in feats[:: 2 if "pool" in name else 3]]
    assert len(jobs) > 100
    with ThreadPoolExecutor(2) as pool:
        modules = list(pool.map(lambda j: import_source(candidate_source(j[1], "cpu", j[2], "t", "reference"),
                                                        tmp_path), jobs))
    failures = []
    with one_thread():
        for (prob, spec, f), module in zip(jobs, modules, strict=True):
            try:
                check_candidate(module, prob, odd_inputs(spec.input_shapes[0], "cpu")[:2], "cpu")
            except AssertionError as err:
                failures.append(f"{prob.id} {f}: {err}")
    assert not failures, "\n".join(failures[:5])


def _cuda_jobs(problems):
    jobs = []
    for prob in problems.values():
        spec = describe(prob)
        jobs += [(prob, spec, f) for f in reachable(spec, "cuda", CUDA_PARENTS)[::3]]
    return jobs


def test_every_reachable_cuda_window_kernel_compiles_with_nvrtc(problems, tmp_path):
    jobs = _cuda_jobs(problems)
    assert len(jobs) > 80

    failures = build_failures(jobs, tmp_path)
    assert not failures, "\n".join(failures[:5])


# one group: standard and transposed
GEMM_CONVS = ("conv1d_dilated_strided", "conv2d_asymmetric", "conv3d_asymmetric", "conv_t1d", "conv_t3d")


def _gemm_jobs(problems):
    """Every implicit GEMM a search reaches from the first one, for each standard convolution."""
    jobs = []
    for name in GEMM_CONVS:
        spec = describe(problems[name])
        feats = [f for f in reachable(spec, "cuda", [{"algo": "mma"}, {"algo": "mma", "cp_async": True, "stages": 2}])
                 if f["algo"] == "mma"]
        jobs += [(problems[name], spec, f) for f in feats]
    return jobs


def test_convolutions_of_one_group_in_1d_2d_and_3d_reach_implicit_gemms_and_the_others_never_do(problems):
    for name, prob in problems.items():
        spec = describe(prob)
        gemms = {f["algo"] for f in reachable(spec, "cuda", CUDA_PARENTS)}
        assert ("mma" in gemms) == (name in GEMM_CONVS), name
    jobs = _gemm_jobs(problems)
    variants = {(j[2]["precision"], j[2]["stages"], j[2]["cp_async"], j[2]["bm"], j[2]["bn"]) for j in jobs}
    assert len(jobs) >= 50 and len(variants) >= 8


def test_every_reachable_implicit_gemm_window_kernel_compiles_with_nvrtc(problems, tmp_path):
    failures = build_failures(_gemm_jobs(problems), tmp_path)
    assert not failures, "\n".join(failures[:5])


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")
def test_every_reachable_implicit_gemm_window_kernel_computes_the_convolution_on_the_gpu(problems, tmp_path):
    jobs = _gemm_jobs(problems)
    failures = _gpu_failures(jobs, tmp_path)
    print(f"{len(jobs) - len(failures)} of {len(jobs)} implicit GEMM window kernels match the reference")
    assert not failures, "\n".join(failures[:10])


def _accuracy(f: dict) -> tuple[float, list[int]]:
    """The tolerance a kernel is held to and which of ``odd_inputs`` it must match. Direct kernels and 3xTF32 keep
    float32 accuracy, through the offset input's cancellation too. Plain TF32 rounds each operand to 10 mantissa
    bits, about 5e-4 of each product: over these 50- to 300-term sums of values near 2 that is 0.01 to 0.03 at the
    worst output (0.0128 on the 2-D convolution, seen on the H200), and on the +30 offset input it grows with the
    offset (0.2 on the 3-D one). So TF32 is held to 5e-2 on the plain input: far inside the O(1) errors of a wrong
    tap or row."""
    if f.get("algo") == "mma" and f.get("precision") == "tf32":
        return 5e-2, [0]
    return 1e-4, [0, 1]


def _gpu_failures(jobs, folder) -> list[str]:
    """One line per job whose CUDA candidate differs from its reference (run in full float32) on odd inputs."""
    torch.backends.cudnn.allow_tf32 = False
    try:
        return gpu_mismatches(jobs, folder,
                              lambda prob, spec, f: [odd_inputs(spec.input_shapes[0], "cuda")[i]
                                                     for i in _accuracy(f)[1]],
                              lambda f: _accuracy(f)[0])
    finally:
        torch.backends.cudnn.allow_tf32 = True


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")
def test_every_reachable_cuda_window_kernel_computes_the_op_on_the_gpu(problems, tmp_path):
    jobs = _cuda_jobs(problems)
    failures = _gpu_failures(jobs, tmp_path)
    print(f"{len(jobs) - len(failures)} of {len(jobs)} CUDA window kernels match the reference")
    assert not failures, "\n".join(failures[:10])
