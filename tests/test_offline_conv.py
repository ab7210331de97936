"""The offline proposer's convolution family: which references it takes, ideas that lead from the direct kernel
to an implicit GEMM on tensor cores without repeating, and kernels that compute the layer (and the conv+ReLU+MaxPool
block) for other geometries than the suite's: stride 1, dilation, no bias, odd image sizes.

C kernels are built and run here; CUDA kernels are compiled with NVRTC for sm_90a (no GPU needed) and, where a GPU
is visible, run against the reference.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from offline_support import (  # noqa: F401 - build_env: autouse
    GPU,
    build_env,
    build_failures,
    five_round_sources,
    import_source,
    reachable,
    suite,
)

from kernelcraft.problems import load_problem
from kernelcraft.search.offline import OfflineProposer
from kernelcraft.search.offline_kernels import candidate_source, conv_cuda, generator
from kernelcraft.search.offline_kernels.catalogue import catalogue
from kernelcraft.search.offline_kernels.opspec import describe


def conv_problem(folder: Path, name: str, conv: str, shape: tuple[int, ...], pool: str | None = None):
    """A KernelBench-format file: one nn.Conv2d (and optionally ReLU + nn.MaxPool2d), no KERNELCRAFT metadata."""
    init = f"        self.conv = nn.Conv2d({conv})\n" + (f"        self.pool = nn.MaxPool2d({pool})\n" if pool else "")
    forward = "        x = self.conv(x)\n" + ("        x = torch.relu(x)\n        return self.pool(x)\n" if pool
                                               else "        return x\n")
    path = folder / f"{name}.py"
    path.write_text("import torch\nimport torch.nn as nn\n\nclass Model(nn.Module):\n    def __init__(self):\n"
                    f"        super().__init__()\n{init}    def forward(self, x):\n{forward}\n"
                    f"def get_inputs():\n    return [torch.randn{shape}]\n\ndef get_init_inputs():\n    return []\n")
    return load_problem(path)


# Geometries other than AlexNet's: a 3x3 stride-1 same-padding layer without bias, a dilated 5x5 on an odd image,
# a 1x1 layer, and a pooled block with a 2x2/2 pool.
GEOMETRIES = [
    ("same3", "4, 8, 3, stride=1, padding=1, bias=False", (2, 4, 13, 11), None),
    ("dilated", "3, 16, 5, stride=2, padding=3, dilation=2", (1, 3, 23, 17), None),
    ("pointwise", "8, 4, 1", (3, 8, 5, 7), None),
    ("pooled", "3, 8, 3, stride=1, padding=1", (2, 3, 12, 9), "2"),
    # strided layers whose gather folds: 2-float pieces (stride 2, padding 2), 4-float pieces on a width they do not
    # divide (the one-float kernel then), and a pooled block with 2-float pieces and a 3x3/2 pool
    ("strided", "3, 8, 5, stride=2, padding=2", (2, 3, 17, 18), None),
    ("strided_odd", "2, 12, 6, stride=4", (1, 2, 19, 23), None),
    ("strided_pooled", "3, 8, 7, stride=2, padding=2", (2, 3, 21, 20), "3, 2"),
]


C_PARENTS = [{}, {"order": "rows", "par": "omp", "kblock": 4}, {"kblock": 8, "wpack": True, "hoist": True,
                                                                 "pool_fused": True}]
CUDA_PARENTS = [{}, {"algo": "mma", "precision": "3xtf32", "cp_async": True, "stages": 2, "pad": 4},
                {"algo": "mma", "precision": "tf32", "bk": 16, "stages": 3, "cp_async": True, "acc": "tile"},
                {"algo": "mma", "precision": "3xtf32", "bk": 16, "bn": 96, "stages": 3, "cp_async": True, "pad": 4,
                 "gather": "fold"},
                {"algo": "mma", "precision": "tf32", "bk": 16, "stages": 2, "cp_async": True, "pad": 4,
                 "gather": "nhwc"},
                {"algo": "mma", "precision": "tf32", "bk": 16, "bn": 96, "stages": 3, "cp_async": True, "pad": 4,
                 "gather": "fold", "mid": "bf16"}]


def check(module, problem, inputs, device: str, tol: float = 1e-4) -> str | None:
    """ModelNew and Model from the same seed agree on every input; None, or what went wrong."""
    init = list(problem.init_inputs())
    mod = problem.load_module()
    torch.manual_seed(0)
    ref = mod.Model(*init).to(device)
    torch.manual_seed(0)
    new = module.ModelNew(*init).to(device)
    with torch.no_grad():
        for x in inputs:
            want, got = ref(x), new(x)
            scale = max(1.0, want.abs().max().item()) if want.numel() else 1.0
            if got.shape != want.shape or not torch.allclose(got, want, atol=tol * scale, rtol=tol):
                return f"{tuple(x.shape)}: {(got - want).abs().max().item() if got.shape == want.shape else got.shape}"
    return None


# ------------------------------------------------------------------------------------------------ support


@pytest.mark.parametrize("pid", ["conv2d_alexnet", "conv2d_relu_maxpool"])
def test_the_suites_convolutions_are_searched_on_both_backends_with_their_geometry(pid):
    p = OfflineProposer(0)
    assert p.supports(suite(pid), "cuda") and p.supports(suite(pid), "cpu")
    g = describe(suite(pid, "full")).geometry
    assert (g["cin"], g["cout"], g["r"], g["stride"], g["pad"], g["oh"]) == (3, 96, 11, 4, 2, 55)
    assert (g["pool_k"], g["pool_s"], g["ph"]) == ((3, 2, 27) if pid == "conv2d_relu_maxpool" else (0, 0, 55))


@pytest.mark.parametrize("conv,why", [
    ("4, 8, 3, padding='same'", "numeric zero padding"),
    ("4, 8, 3, padding=1, padding_mode='reflect'", "the graph holds reflection_pad2d(f32[1,4,9,9]) -> convolution("),
])
def test_convolutions_outside_the_family_are_refused_with_the_reason(tmp_path, conv, why):
    prob = conv_problem(tmp_path, "c", conv, (1, 4, 9, 9))
    assert why in OfflineProposer(0).why_unsupported(prob, "cuda")


@pytest.mark.parametrize("conv", ["4, 8, 3, groups=2", "4, 8, (3, 5)", "4, 8, 3, stride=(1, 2)"])
def test_grouped_and_asymmetric_convolutions_go_to_the_window_family(tmp_path, conv):
    spec = describe(conv_problem(tmp_path, "c", conv, (1, 4, 9, 9)))
    assert (spec.family, spec.op) == ("window", "conv")


def test_model_new_rebuilds_the_reference_convolution_so_the_same_seed_gives_the_same_weights(tmp_path):
    for pid in ("conv2d_alexnet", "conv2d_relu_maxpool"):
        prob = suite(pid)
        src = OfflineProposer(0).implement(prob, "cpu", {"text": "", "parent": "reference"},
                                           {"id": "reference"}, 1, 1)[0]["source"]
        module = import_source(src, tmp_path)
        init = prob.init_inputs()
        torch.manual_seed(0)
        ref = prob.load_module().Model(*init)
        torch.manual_seed(0)
        new = module.ModelNew(*init)
        assert "nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding)" in src
        assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), new.state_dict().values(),
                                                         strict=True))


# ------------------------------------------------------------------------------------------------ ideas


@pytest.mark.parametrize("backend", ["cuda", "cpu"])
def test_five_conv_rounds_never_repeat_an_idea_and_the_same_seed_writes_the_same_files(backend):
    prob = suite("conv2d_relu_maxpool", "full")
    assert five_round_sources(prob, backend) == five_round_sources(prob, backend)


def test_the_implicit_gemm_idea_says_what_the_gemm_is_and_reuses_the_tensor_core_kernel():
    prob = suite("conv2d_alexnet", "full")
    spec = describe(prob)
    ideas = {i.key: i for i in catalogue("conv", "cuda") if i.applies(spec, {"algo": "direct"})}
    assert {"implicit_gemm_all_channels", "implicit_gemm_tf32_all_channels"} <= set(ideas)
    assert not {"implicit_gemm", "implicit_gemm_wide"} & set(ideas)
    idea = ideas["implicit_gemm_all_channels"]  # 96 channels: one 96-wide tile instead of two 64-wide ones
    assert generator("conv", "cuda").normalise(spec, idea.delta)["bn"] == 96
    text = OfflineProposer(0)._text(idea, spec, generator("conv", "cuda").normalise(spec, idea.delta))
    assert "302500 output pixels" in text and "96 output channels" in text and "363" in text
    src = OfflineProposer(0).implement(prob, "cuda", {"text": text, "parent": "reference"}, {"id": "reference"},
                                       1, 1)[0]["source"]
    assert "mma.sync.aligned.m16n8k8" in src and "torch.nn.functional" not in src
    assert "(unsigned)(row.y + dr) < (unsigned)H" in src  # the gather: a pixel's entry plus the tile's tap offset


@pytest.mark.parametrize("conv,width", [
    ("3, 96, 11, stride=4, padding=2", 2),  # AlexNet's conv1: 8-byte pieces
    ("3, 8, 8, stride=4", 4),
    ("3, 8, 5, stride=2, padding=1", 0),  # an odd padding misaligns every piece
    ("3, 8, 3, stride=1, padding=1", 0),  # nothing to fold
    ("3, 8, 5, stride=2, padding=2, dilation=2", 0),  # dilated taps are not neighbours
])
def test_the_fold_idea_is_offered_for_strided_layers_whose_pieces_align_and_says_how_wide(tmp_path, conv, width):
    spec = describe(conv_problem(tmp_path, "c", conv, (1, 3, 40, 40)))
    parent = generator("conv", "cuda").normalise(spec, {"algo": "mma", "precision": "tf32", "cp_async": True,
                                                        "stages": 2, "bk": 16})
    fold = [i for i in catalogue("conv", "cuda") if i.key == "fold_stride" and i.applies(spec, parent)]
    assert conv_cuda.fold_width(spec) == width and len(fold) == (1 if width else 0)
    if width:
        child = generator("conv", "cuda").normalise(spec, parent | fold[0].delta)
        assert child["gather"] == "fold"
        text = OfflineProposer(0)._text(fold[0], spec, child)
        assert f"{width}-float pieces with one {4 * width}-byte cp.async" in text
        src = generator("conv", "cuda").render(spec, child)
        assert "_conv_safe" in src[0] and f"if W % {width} == 0" in "\n".join(src[1])


@pytest.mark.parametrize("conv,cin", [("3, 96, 11, stride=4, padding=2", 3), ("8, 16, 3, padding=2, dilation=2", 8)])
def test_the_channels_last_idea_copies_the_input_once_and_gathers_16_byte_pieces(tmp_path, conv, cin):
    spec = describe(conv_problem(tmp_path, "c", conv, (1, cin, 40, 40)))
    parent = generator("conv", "cuda").normalise(spec, {"algo": "mma", "precision": "tf32", "cp_async": True,
                                                        "stages": 2, "bk": 16})
    idea = next(i for i in catalogue("conv", "cuda") if i.key == "channels_last")
    assert idea.applies(spec, parent)
    child = generator("conv", "cuda").normalise(spec, parent | idea.delta)
    assert child["gather"] == "nhwc"
    assert f"padded with zeros to {-(-cin // 4) * 4})" in OfflineProposer(0)._text(idea, spec, child)
    module, forward = generator("conv", "cuda").render(spec, child)
    assert "to_nhwc" in module and "prep_weights" in module and "cp_async16(as + AS_AT(r, c), src, ok)" in module
    text = "\n".join(forward)
    assert text.index("x = xc") < text.index("_conv(grid=(tiles,), block=(256,), args=(x, w, b, y, N, H, W, OH, OW))")
    assert f"with its channels-last copy (channels padded to {-(-cin // 4) * 4}) below 2**31 elements" in text
    # a folded layer's fold is weighted above the channels-last copy of 3 channels padded to 4; 8 channels copy whole
    assert idea.prior(spec, parent) == (1.0 if cin == 3 else 3.0)


def test_the_bf16_intermediate_idea_halves_the_pooled_blocks_intermediate_and_only_there():
    block = describe(suite("conv2d_relu_maxpool", "full"))
    layer = describe(suite("conv2d_alexnet", "full"))
    gen = generator("conv", "cuda")
    idea = next(i for i in catalogue("conv", "cuda") if i.key == "bf16_intermediate")
    mma = {"algo": "mma", "precision": "tf32", "cp_async": True, "stages": 3, "bk": 16, "gather": "fold"}
    assert idea.applies(block, gen.normalise(block, mma)) and idea.kind == "data type and precision"
    assert not idea.applies(layer, gen.normalise(layer, mma))  # no pool: the output is the result, kept float
    assert not idea.applies(block, gen.normalise(block, {}))  # the direct kernel writes its output once
    assert gen.normalise(layer, mma | {"mid": "bf16"})["mid"] == "f32"
    child = gen.normalise(block, mma | idea.delta)
    module, forward = gen.render(block, child)
    # the convolution rounds each ReLU output to bfloat16 and the pool widens the 16-bit words back to float
    assert module.count("= to_mid(RELU ? relu(o) : o);") == 2  # the pieces kernel and its one-float fallback
    assert "cvt.rn.bf16.f32" in module and "unsigned short* __restrict__ Y" in module
    assert "const float v = __uint_as_float((unsigned)y[a * OW + b] << 16);" in module
    assert "dtype=torch.bfloat16)" in "\n".join(forward)
    plain, _ = gen.render(block, gen.normalise(block, mma))
    assert "to_mid" not in plain and "float* __restrict__ Y" in plain


def test_the_ldmatrix_idea_loads_whole_fragments_and_keeps_the_weights_tile_n_major():
    block = describe(suite("conv2d_relu_maxpool", "full"))
    gen = generator("conv", "cuda")
    idea = next(i for i in catalogue("conv", "cuda") if i.key == "ldmatrix")
    mma = {"algo": "mma", "precision": "tf32", "cp_async": True, "stages": 3, "bk": 16, "bn": 96, "gather": "fold"}
    parent = gen.normalise(block, mma)
    assert idea.applies(block, parent) and idea.kind == "memory access"
    assert not idea.applies(block, gen.normalise(block, mma | {"frag": "vec"}))  # vector fragments: their own layout
    assert not idea.applies(block, gen.normalise(block, {}))
    child = gen.normalise(block, parent | idea.delta)
    assert child["ldsm"] and child["pad"] == 4  # padded rows: ldmatrix's eight 16-byte rows in distinct banks
    module, forward = gen.render(block, child)
    # per 8-deep step: one ldmatrix.x4 per A fragment, one per two B fragments (warp tile 32x48: 2 A, 6 B)
    assert module.count("ldsm_x4(ar, as + AS_AT(") == 2 and module.count("ldsm_x4(br, bs + BS_AT(") == 2
    assert "ldmatrix.sync.aligned.m8n8.x4.shared.b16" in module and "bs[BS_AT(kk" not in module
    assert "#define BS_AT(r, c) ((c) * LDB + (r))" in module and "#define B_STAGE (BN * LDB)" in module
    # the weights rearranged filter by filter (96 x 432) and loaded 16 bytes of one filter's taps at a time
    assert "const unsigned k = i / KP, kd = i % KP;" in module and "Wt + k * KP + kd" in module
    assert "wp = torch.empty((96, 432), device=x.device, dtype=x.dtype)" in "\n".join(forward)
    assert conv_cuda.smem_bytes(child) == 3 * (128 * 20 + 96 * 20) * 4
    # the plain gather reads the weights as they are, filter by filter: n-major with no rearranging
    tap = gen.normalise(block, mma | {"gather": "tap", "ldsm": True})
    plain, _ = gen.render(block, tap)
    assert "#define BS_AT(r, c) ((c) * LDB + (r))" in plain and "prep_weights" not in plain
    assert "Wt + k * KD + kd" in plain


# ------------------------------------------------------------------------------------------------ C kernels run


def test_every_reachable_c_conv_kernel_computes_the_layer_for_other_geometries(tmp_path):
    jobs = []
    for name, conv, shape, pool in GEOMETRIES:
        prob = conv_problem(tmp_path, name, conv, shape, pool)
        spec = describe(prob)
        feats = reachable(spec, "cpu", C_PARENTS)
        jobs += [(prob, spec, f) for f in (feats if name == "pooled" else feats[::3])]
    assert len(jobs) > 60
    with ThreadPoolExecutor(2) as pool:
        modules = list(pool.map(lambda j: import_source(candidate_source(j[1], "cpu", j[2], "t", "reference"),
                                                        tmp_path), jobs))
    gen = torch.Generator().manual_seed(3)
    failures = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for (prob, spec, f), module in zip(jobs, modules, strict=True):
            shape = spec.input_shape
            inputs = [torch.randn(shape, generator=gen), torch.randn(shape, generator=gen) * 3 + 1]
            why = check(module, prob, inputs, "cpu")
            if why:
                failures.append(f"{prob.id} {f}: {why}")
    finally:
        torch.set_num_threads(threads)
    assert not failures, "\n".join(failures[:5])


# ------------------------------------------------------------------------------------------------ CUDA kernels


def _cuda_jobs(tmp_path: Path):
    jobs = []
    for pid in ("conv2d_alexnet", "conv2d_relu_maxpool"):
        prob = suite(pid)
        spec = describe(prob)
        jobs += [(prob, spec, f) for f in reachable(spec, "cuda", CUDA_PARENTS)]
    for name, conv, shape, pool in GEOMETRIES:
        prob = conv_problem(tmp_path, name, conv, shape, pool)
        spec = describe(prob)
        kernels = reachable(spec, "cuda", CUDA_PARENTS)
        picked = kernels[::4]
        for gather in ("fold", "nhwc"):
            picked += [f for f in kernels if f.get("gather") == gather and f not in picked][:3]
        picked += [f for f in kernels if f.get("mid") == "bf16" and f not in picked][:3]
        picked += [f for f in kernels if f.get("ldsm") and f not in picked][:3]
        jobs += [(prob, spec, f) for f in picked]
    return jobs


def test_every_reachable_cuda_conv_kernel_compiles_with_nvrtc(tmp_path):
    jobs = _cuda_jobs(tmp_path)
    assert len(jobs) > 60 and {f["algo"] for _, _, f in jobs} == {"direct", "mma"}

    failures = build_failures(jobs, tmp_path)
    assert not failures, "\n".join(failures[:5])


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")
def test_every_reachable_cuda_conv_kernel_computes_the_layer_on_the_gpu(tmp_path):
    jobs = _cuda_jobs(tmp_path)
    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        modules = list(pool.map(lambda j: import_source(candidate_source(j[1], "cuda", j[2], "t", "reference"),
                                                        tmp_path), jobs))
    gen = torch.Generator(device="cuda").manual_seed(3)
    failures = []
    torch.backends.cudnn.allow_tf32 = False  # the yardstick in float32: TF32 kernels get TF32's tolerance below
    try:
        for (prob, spec, f), module in zip(jobs, modules, strict=True):
            inputs = [torch.randn(spec.input_shape, device="cuda", generator=gen) + 0.5]
            tol = 1e-2 if f.get("algo") == "mma" and f.get("precision") == "tf32" or f.get("mid") == "bf16" else 1e-4
            why = check(module, prob, inputs, "cuda", tol)
            if why:
                failures.append(f"{prob.id} {f}: {why}")
    finally:
        torch.backends.cudnn.allow_tf32 = True
    print(f"{len(jobs) - len(failures)} of {len(jobs)} CUDA conv kernels match the reference")
    assert not failures, "\n".join(failures[:10])
