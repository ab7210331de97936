"""AlexNet's first block: Conv2d(3, 96, 11, stride 4, padding 2), then ReLU, then MaxPool2d(3, stride 2).

Input 100x3x224x224. From the idea-branching method's published set (the fused-operator problem).
"""

import torch
import torch.nn as nn

KERNELCRAFT = {
    "op": "conv2d_relu_maxpool",
    "params": {
        "kernel_size": 11, "stride": 4, "padding": 2, "dilation": 1, "groups": 1,
        "pool_kernel_size": 3, "pool_stride": 2, "pool_padding": 0,
    },
    "small": {"batch_size": 2, "height": 64, "width": 64},
}


class Model(nn.Module):
    """Convolution, ReLU and max pooling, as three separate PyTorch ops."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int,
                 pool_kernel_size: int, pool_stride: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding)
        self.pool = nn.MaxPool2d(kernel_size=pool_kernel_size, stride=pool_stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        x = torch.relu(x)
        return self.pool(x)


batch_size = 100
in_channels = 3
out_channels = 96
kernel_size = 11
stride = 4
padding = 2
pool_kernel_size = 3
pool_stride = 2
height = 224
width = 224


def get_inputs():
    x = torch.randn(batch_size, in_channels, height, width)
    return [x]


def get_init_inputs():
    return [in_channels, out_channels, kernel_size, stride, padding, pool_kernel_size, pool_stride]
