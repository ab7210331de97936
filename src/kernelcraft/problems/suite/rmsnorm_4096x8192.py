"""RMS normalisation over the last dimension of a 4096 x 8192 matrix, with a learnable scale.

A classic row-wise op (LLaMA-style RMSNorm). Written with explicit torch ops rather than nn.RMSNorm so that it
runs on torch 2.4 and later.
"""

import torch
import torch.nn as nn

KERNELCRAFT = {
    "op": "rmsnorm",
    "params": {"eps": 1e-6},
    "small": {"batch_size": 64, "dim": 2048},
}


class Model(nn.Module):
    """y = x / sqrt(mean(x^2 over the row) + eps) * weight."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rms = torch.sqrt(torch.mean(x * x, dim=-1, keepdim=True) + self.eps)
        return x / rms * self.weight


batch_size = 4096
dim = 8192
eps = 1e-6


def get_inputs():
    x = torch.randn(batch_size, dim)
    return [x]


def get_init_inputs():
    return [dim, eps]
