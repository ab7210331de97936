"""Square matrix multiplication C = A @ B, 4096 x 4096, fp32.

From the idea-branching method's published set (KernelBench level 1, problem 1 "Square matrix
multiplication").
"""

import torch
import torch.nn as nn

KERNELCRAFT = {
    "op": "matmul",
    "params": {},
    "small": {"N": 256},
}


class Model(nn.Module):
    """Performs a single square matrix multiplication."""

    def __init__(self):
        super().__init__()

    def forward(self, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
        return torch.matmul(A, B)


N = 4096


def get_inputs():
    A = torch.randn(N, N)
    B = torch.randn(N, N)
    return [A, B]


def get_init_inputs():
    return []
