"""Softmax over the last dimension of a 4096 x 65536 matrix.

From the idea-branching method's published set (KernelBench level 1 "Softmax" at a larger size).
"""

import torch
import torch.nn as nn

KERNELCRAFT = {
    "op": "softmax",
    "params": {"dim": -1},
    "small": {"batch_size": 64, "dim": 4096},
}


class Model(nn.Module):
    """Performs a softmax over each row."""

    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x, dim=1)


batch_size = 4096
dim = 65536


def get_inputs():
    x = torch.randn(batch_size, dim)
    return [x]


def get_init_inputs():
    return []
