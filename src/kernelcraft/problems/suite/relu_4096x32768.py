"""ReLU on a 4096 x 32768 matrix: the classic level-1 elementwise op (KernelBench level 1 "ReLU")."""

import torch
import torch.nn as nn

KERNELCRAFT = {
    "op": "relu",
    "params": {},
    "small": {"batch_size": 64, "dim": 4096},
}


class Model(nn.Module):
    """Performs a ReLU activation."""

    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)


batch_size = 4096
dim = 32768


def get_inputs():
    x = torch.randn(batch_size, dim)
    return [x]


def get_init_inputs():
    return []
