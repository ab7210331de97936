"""The offline proposer's attention family: scaled dot-product attention of query, key and value tensors (any batch
and head dimensions in front), causal or not, with its default or an explicit scale, recognised from the traced
graph whichever way PyTorch traces it (its CPU kernel, or the math path of scaled products, mask and softmax), and
computed at small odd shapes: a flash-style CUDA kernel (query tile, key tiles in shared memory, a running softmax)
and C loops per query row.

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

SDPA = "torch.nn.functional.scaled_dot_product_attention"
# name: (forward of (q, k, v), the shapes of q, k, v)
ATTENTION = {
    "heads": (f"return {SDPA}(q, k, v)", [(2, 3, 37, 20), (2, 3, 29, 20), (2, 3, 29, 20)]),
    "value_width": (f"return {SDPA}(q, k, v)", [(2, 3, 37, 20), (2, 3, 29, 20), (2, 3, 29, 12)]),
    "causal_scaled": (f"return {SDPA}(q, k, v, is_causal=True, scale=0.3)", [(5, 17, 8), (5, 23, 8), (5, 23, 33)]),
    "causal_square": (f"return {SDPA}(q, k, v, is_causal=True)", [(3, 40, 16), (3, 40, 16), (3, 40, 16)]),
    "long_head": (f"return {SDPA}(q, k, v)", [(1, 9, 260), (1, 70, 260), (1, 70, 260)]),
    # written out by hand: the scores divided by a number, or the query scaled first; 2-D operands as mm
    "by_hand": ("return torch.softmax(q @ k.transpose(-2, -1) / 4.0, dim=-1) @ v",
                [(2, 3, 19, 16), (2, 3, 23, 16), (2, 3, 23, 8)]),
    "by_hand_2d": ("return torch.softmax(torch.matmul(q * 0.3, k.T), dim=1) @ v", [(9, 12), (14, 12), (14, 5)]),
}


def attention_problem(folder: Path, name: str):
    forward, shapes = ATTENTION[name]
    path = folder / f"{name}.py"
    path.write_text("import torch\nimport torch.nn as nn\n\n\nclass Model(nn.Module):\n"
                    f"    def forward(self, q, k, v):\n        {forward}\n\n\ndef get_inputs():\n"
                    f"    return [{', '.join(f'torch.randn{s}' for s in shapes)}]\n\n\n"
                    "def get_init_inputs():\n    return []\n")
    return load_problem(path)


@pytest.fixture(scope="module")
def problems(tmp_path_factory):
    folder = tmp_path_factory.mktemp("attn_problems")
    return {name: attention_problem(folder, name) for name in ATTENTION}


def test_attention_is_recognised_from_the_cpu_kernel_and_from_the_math_path_alike(problems):
    found = {name: recognise_problem(p) for name, p in problems.items()}
    assert {n: (r.family, r.op) for n, r in found.items()} == dict.fromkeys(ATTENTION, ("attn", "attention"))
    assert found["heads"].params["scale"] == pytest.approx(20 ** -0.5) and not found["heads"].params["causal"]
    assert found["causal_scaled"].params["causal"] and found["causal_scaled"].params["scale"] == pytest.approx(0.3)
    assert (found["by_hand"].params["scale"], found["by_hand_2d"].params["scale"]) == (0.25, 0.3)
    assert not found["by_hand"].params["causal"] and describe(problems["by_hand_2d"]).out_shape == (9, 5)
    spec = describe(problems["value_width"])
    assert spec.geometry == {"bh": 6, "lq": 37, "lk": 29, "d": 20, "dv": 12, "causal": 0}
    assert spec.out_shape == (2, 3, 37, 12) and spec.args == ("q", "k", "v")
    assert all(OfflineProposer(0).supports(p, b) for p in problems.values() for b in ("cpu", "cuda"))


@pytest.mark.parametrize(("forward", "shapes", "why"), [
    (f"{SDPA}(q, k, v, attn_mask=torch.ones(7, 9, dtype=torch.bool))", [(2, 7, 8), (2, 9, 8), (2, 9, 8)],
     "where(b[7,9], f32[])"),  # the mask's where and add: not the causal pattern, so not attention
    (f"{SDPA}(q, k, v)", [(1, 4, 4096), (1, 4, 4096), (1, 4, 4096)], "head dimension above"),
    ("torch.softmax(q @ k.transpose(-2, -1), dim=-2) @ v", [(2, 7, 8), (2, 9, 8), (2, 9, 8)],
     "_softmax(f32[2,7,9])"),  # normalised over the queries, not the keys
    ("torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v + 1", [(2, 7, 8), (2, 9, 8), (2, 9, 8)], "add("),
    ("torch.softmax(q @ k, dim=-1) @ v", [(2, 7, 8), (2, 8, 8), (2, 8, 8)], "bmm(f32[2,7,8], f32[2,8,8])"),
])
def test_an_attention_the_family_does_not_compute_is_named(tmp_path, forward, shapes, why):
    path = tmp_path / "attn.py"
    path.write_text("import torch\nimport torch.nn as nn\n\nclass Model(nn.Module):\n    def forward(self, q, k, v):\n"
                    f"        return {forward}\n\ndef get_inputs():\n"
                    f"    return [{', '.join(f'torch.randn{s}' for s in shapes)}]\n\ndef get_init_inputs():\n"
                    "    return []\n")
    found = recognise_problem(load_problem(path))
    assert found.op is None and why in found.reason, found.reason


def _inputs(prob, device: str) -> list[tuple]:
    """The reference's own draw and one scaled up (sharper softmax, larger maxima to shift by)."""
    module = prob.load_module()
    torch.manual_seed(4)
    first = tuple(module.get_inputs())
    return [tuple(x.to(device) for x in xs) for xs in (first, tuple(x * 3 for x in first))]


C_PARENTS = [{}, {"par": "omp", "simd": True, "stats": "online"}, {"dot": "double", "prefetch": True}]
CUDA_PARENTS = [{}, {"bq": 8, "bk": 16, "vec": 4}, {"threads": 128, "exp": "fast", "unroll": True}]


def test_every_reachable_c_attention_kernel_computes_the_attention_at_odd_shapes(problems, tmp_path):
    jobs = sampled_jobs(problems, "cpu", C_PARENTS, 2)
    assert len(jobs) > 50
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


def test_an_attention_candidate_refuses_inputs_of_other_shapes(problems, tmp_path):
    model = import_source(candidate_source(describe(problems["heads"]), "cpu", {}, "t", "reference"),
                          tmp_path).ModelNew()
    with pytest.raises(ValueError, match="expected q, k, v of shapes"):
        model(torch.randn(2, 3, 37, 20), torch.randn(2, 3, 30, 20), torch.randn(2, 3, 30, 20))


def test_every_reachable_cuda_attention_kernel_compiles_with_nvrtc(problems, tmp_path):
    jobs = sampled_jobs(problems, "cuda", CUDA_PARENTS, 3)
    assert len(jobs) > 40
    failures = build_failures(jobs, tmp_path)
    assert not failures, "\n".join(failures[:5])


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")
def test_every_reachable_cuda_attention_kernel_computes_the_attention_on_the_gpu(problems, tmp_path):
    jobs = sampled_jobs(problems, "cuda", CUDA_PARENTS, 1)
    torch.backends.cuda.matmul.allow_tf32 = False
    failures = gpu_mismatches(jobs, tmp_path, lambda prob, spec, f: _inputs(prob, "cuda"),
                              lambda f: 1e-3 if f["exp"] == "fast" else 1e-4)
    print(f"{len(jobs) - len(failures)} of {len(jobs)} CUDA attention kernels match the reference")
    assert not failures, "\n".join(failures[:10])


@pytest.mark.parametrize("backend", ["cuda", "cpu"])
def test_five_offline_rounds_of_attention_are_deterministic_and_never_repeat_an_idea(problems, backend):
    assert five_round_sources(problems["causal_square"], backend) == \
        five_round_sources(problems["causal_square"], backend)
