"""Worked example (KernelBench load_inline path, cpu backend): ReLU as C++ in a PyTorch extension."""

import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

cpp_source = r"""
#include <torch/extension.h>

torch::Tensor relu_forward(torch::Tensor x) {
    auto xc = x.contiguous();
    auto y = torch::empty_like(xc);
    const float* px = xc.data_ptr<float>();
    float* py = y.data_ptr<float>();
    const int64_t n = xc.numel();
    for (int64_t i = 0; i < n; ++i) {
        float v = px[i];
        py[i] = v > 0.f ? v : 0.f;
    }
    return y;
}
"""

relu_ext = load_inline(name="kc_example_relu_cpu", cpp_sources=cpp_source, functions=["relu_forward"],
                       extra_cflags=["-O3"], verbose=False)


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return relu_ext.relu_forward(x)
