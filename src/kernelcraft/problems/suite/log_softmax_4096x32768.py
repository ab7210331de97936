"""LogSoftmax over the last dimension of a 4096 x 32768 matrix (KernelBench level 1 "LogSoftmax")."""

import torch
import torch.nn as nn

KERNELCRAFT = {
    "op": "log_softmax",
    "params": {"dim": -1},
    "small": {"batch_size": 64, "dim": 4096},
}


class Model(nn.Module):
    """Performs a log-softmax over each row."""

    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(x, dim=1)


batch_size = 4096
dim = 32768


def get_inputs():
    x = torch.randn(batch_size, dim)
    return [x]


def get_init_inputs():
    return []
