"""Exact (erf) GELU on a 4096 x 32768 matrix: a classic level-1 elementwise op (KernelBench level 1
"GELU")."""

import torch
import torch.nn as nn
import torch.nn.functional as F

KERNELCRAFT = {
    "op": "gelu",
    "params": {"approximate": "none"},
    "small": {"batch_size": 64, "dim": 4096},
}


class Model(nn.Module):
    """Performs a GELU activation, x * Phi(x) with the exact normal CDF."""

    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x)


batch_size = 4096
dim = 32768


def get_inputs():
    x = torch.randn(batch_size, dim)
    return [x]


def get_init_inputs():
    return []
