"""A verifier that rejects honest work is as useless as one that accepts cheats: KernelBench-style load_inline
kernels that keep an nn.LayerNorm only to hold its parameters must be accepted."""

import pytest
from test_exploits import _context

from kernelcraft.harness.build.compile_round import compile_candidates
from kernelcraft.harness.evaluate_round import evaluate_candidates

REFERENCE = '''
import torch
import torch.nn as nn

class Model(nn.Module):
    def __init__(self, normalized_shape):
        super().__init__()
        self.ln = nn.LayerNorm(normalized_shape)

    def forward(self, x):
        return self.ln(x)

batch, features = 32, 512

def get_inputs():
    return [torch.randn(batch, features)]

def get_init_inputs():
    return [(features,)]
'''

LOAD_INLINE = '''
import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

cpp_source = r"""
#include <torch/extension.h>
#include <cmath>
torch::Tensor layernorm_forward(torch::Tensor x, torch::Tensor w, torch::Tensor b, double eps) {
    auto xc = x.contiguous();
    auto y = torch::empty_like(xc);
    const int64_t n = xc.size(-1), rows = xc.numel() / n;
    const float* px = xc.data_ptr<float>(); float* py = y.data_ptr<float>();
    const float* pw = w.data_ptr<float>(); const float* pb = b.data_ptr<float>();
    for (int64_t r = 0; r < rows; ++r) {
        double s = 0, s2 = 0;
        for (int64_t i = 0; i < n; ++i) { double v = px[r * n + i]; s += v; s2 += v * v; }
        double mean = s / n, var = s2 / n - mean * mean;
        float inv = 1.0f / std::sqrt((float)var + (float)eps);
        for (int64_t i = 0; i < n; ++i) py[r * n + i] = (px[r * n + i] - (float)mean) * inv * pw[i] + pb[i];
    }
    return y;
}
"""

ext = load_inline(name="kc_test_layernorm", cpp_sources=cpp_source, functions=["layernorm_forward"],
                  extra_cflags=["-O2"], verbose=False)


class ModelNew(nn.Module):
    def __init__(self, normalized_shape):
        super().__init__()
        self.ln = nn.LayerNorm(normalized_shape)  # holds the parameters only

    def forward(self, x):
        return ext.layernorm_forward(x, self.ln.weight, self.ln.bias, self.ln.eps)
'''


@pytest.mark.slow
def test_a_load_inline_kernel_keeping_nn_layernorm_for_its_parameters_is_accepted(tmp_path):
    ctx, _ = _context(tmp_path, "reject")
    ref = tmp_path / "layernorm_ref.py"
    ref.write_text(REFERENCE)
    ctx.problems["layernorm_ref"] = str(ref)
    cand = tmp_path / "inline_layernorm.py"
    cand.write_text(LOAD_INLINE)
    entries = [{"id": "inline", "path": str(cand)}]
    built = compile_candidates(ctx, "layernorm_ref", 1, entries, 1, 600)
    assert built["inline"]["compiled"], built["inline"]["reason"]
    verdict = evaluate_candidates(ctx, "layernorm_ref", 1, entries, built, time_kernels=False)[0]["results"]["inline"]
    assert verdict["correct"] is True, verdict["reasons"]
    assert verdict["reasons"] == []
