"""Layer normalisation over the last three dimensions (64, 256, 256) of a 16 x 64 x 256 x 256 tensor.

From the idea-branching method's published set (KernelBench level 1 "LayerNorm").
"""

import torch
import torch.nn as nn

KERNELCRAFT = {
    "op": "layernorm",
    "params": {"normalized_dims": 3, "eps": 1e-5},
    # normalized_shape is built from these globals in get_init_inputs, so init and input stay consistent.
    "small": {"batch_size": 4, "features": 16, "dim1": 32, "dim2": 32},
}


class Model(nn.Module):
    """Performs layer normalisation with a learnable elementwise affine transform."""

    def __init__(self, normalized_shape: tuple):
        super().__init__()
        self.ln = nn.LayerNorm(normalized_shape=normalized_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(x)


batch_size = 16
features = 64
dim1 = 256
dim2 = 256


def get_inputs():
    x = torch.randn(batch_size, features, dim1, dim2)
    return [x]


def get_init_inputs():
    return [(features, dim1, dim2)]
