"""Kernel generators and the ideas catalogue behind the offline proposer.

One module per (family, backend) generator, each exposing the same small interface -- ``GEN``, ``TUNABLES``,
``baseline(spec)``, ``normalise(spec, features)`` and ``render(spec, features) -> (module code, forward
lines)`` -- so the proposer treats them alike. :func:`generator` picks one; :func:`candidate_source` turns a
feature dict into a complete candidate file.
"""

from __future__ import annotations

from types import ModuleType

from kernelcraft.search.offline_kernels import (
    attn_c,
    attn_cuda,
    conv_c,
    conv_cuda,
    elementwise_c,
    elementwise_cuda,
    matmul_c,
    matmul_cuda,
    reduce_c,
    reduce_cuda,
    rowloss_c,
    rowloss_cuda,
    rowwise_c,
    rowwise_cuda,
    scan_c,
    scan_cuda,
    window_c,
    window_cuda,
    xent_c,
    xent_cuda,
)
from kernelcraft.search.offline_kernels.candidate import assemble
from kernelcraft.search.offline_kernels.opspec import OpSpec

BACKENDS = ("cuda", "cpu")

_GENERATORS: dict[tuple[str, str], ModuleType] = {
    ("elementwise", "cuda"): elementwise_cuda,
    ("elementwise", "cpu"): elementwise_c,
    ("rowwise", "cuda"): rowwise_cuda,
    ("rowwise", "cpu"): rowwise_c,
    ("matmul", "cuda"): matmul_cuda,
    ("matmul", "cpu"): matmul_c,
    ("conv", "cuda"): conv_cuda,
    ("conv", "cpu"): conv_c,
    ("window", "cuda"): window_cuda,
    ("window", "cpu"): window_c,
    ("reduce", "cuda"): reduce_cuda,
    ("reduce", "cpu"): reduce_c,
    ("scan", "cuda"): scan_cuda,
    ("scan", "cpu"): scan_c,
    ("xent", "cuda"): xent_cuda,
    ("xent", "cpu"): xent_c,
    ("rowloss", "cuda"): rowloss_cuda,
    ("rowloss", "cpu"): rowloss_c,
    ("attn", "cuda"): attn_cuda,
    ("attn", "cpu"): attn_c,
}


def generator(family: str, backend: str) -> ModuleType:
    """The generator module for a family and backend ("cuda" or "cpu"); KeyError names what exists."""
    try:
        return _GENERATORS[(family, backend)]
    except KeyError:
        raise KeyError(f"no offline generator for family {family!r} on backend {backend!r}; have "
                       + ", ".join(f"{f}/{b}" for f, b in _GENERATORS)) from None


def candidate_source(spec: OpSpec, backend: str, features: dict, idea: str, parent: str) -> str:
    """The full candidate file for ``features`` (normalised first, so the header shows what was built)."""
    gen = generator(spec.family, backend)
    feats = gen.normalise(spec, features)
    module_code, forward = gen.render(spec, feats)
    return assemble(spec, backend, idea, parent, feats, module_code, forward)
