"""2-D convolution, AlexNet's first layer: 3 -> 96 channels, 11x11 kernel, stride 4, padding 2, on
100x3x224x224.

From the idea-branching method's published set.
"""

import torch
import torch.nn as nn

KERNELCRAFT = {
    "op": "conv2d",
    "params": {"kernel_size": 11, "stride": 4, "padding": 2, "dilation": 1, "groups": 1},
    "small": {"batch_size": 2, "height": 64, "width": 64},
}


class Model(nn.Module):
    """Performs a standard 2-D convolution (with bias)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


batch_size = 100
in_channels = 3
out_channels = 96
kernel_size = 11
stride = 4
padding = 2
height = 224
width = 224


def get_inputs():
    x = torch.randn(batch_size, in_channels, height, width)
    return [x]


def get_init_inputs():
    return [in_channels, out_channels, kernel_size, stride, padding]
