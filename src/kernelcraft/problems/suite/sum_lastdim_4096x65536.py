"""Sum over the last dimension of a 4096 x 65536 matrix, keeping the dimension (a classic level-1
reduction)."""

import torch
import torch.nn as nn

KERNELCRAFT = {
    "op": "sum_lastdim",
    "params": {"dim": -1, "keepdim": True},
    "small": {"batch_size": 64, "dim": 4096},
}


class Model(nn.Module):
    """Sums each row."""

    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sum(x, dim=-1, keepdim=True)


batch_size = 4096
dim = 65536


def get_inputs():
    x = torch.randn(batch_size, dim)
    return [x]


def get_init_inputs():
    return []
