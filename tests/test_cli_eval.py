"""`kernelcraft eval REF CANDIDATE`: the single-candidate contract of DESIGN.md §3 on the CPU backend."""

import json
import subprocess
import sys

import pytest

REF = '''
import torch
import torch.nn as nn

class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        return torch.relu(x)

rows, cols = 64, 1000

def get_inputs():
    return [torch.randn(rows, cols)]

def get_init_inputs():
    return []
'''

GOOD = '''
import torch
import torch.nn as nn
from kernelcraft.harness.build import c_kernel

SRC = r"""
#include <stdint.h>
void relu_k(const float* x, float* y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] > 0.f ? x[i] : 0.f;
}
"""
relu_k = c_kernel(SRC, "relu_k")

class ModelNew(nn.Module):
    def forward(self, x):
        x = x.contiguous()
        y = torch.empty_like(x)
        relu_k(x, y, x.numel())
        return y
'''

WRONG = GOOD.replace("x[i] > 0.f ? x[i] : 0.f", "x[i]")
BROKEN = GOOD.replace("int64_t n) {", "int64_t n) { undeclared_thing = 1;")

CONTRACT_KEYS = {"compiled", "correct", "reasons", "time_ms", "eager_ms", "compile_ms", "speedup_eager",
                 "max_abs_err", "max_rel_err"}


# A reference defined only on [0, 1] (as binary cross-entropy of probabilities is): it raises on the verifier's
# shifted and scaled inputs, so those trials have nothing to compare with.
UNIT_REF = REF.replace("return torch.relu(x)", "if bool((x < 0).any() | (x > 1).any()):\n"
                       "            raise ValueError('x must lie in [0, 1]')\n        return torch.sqrt(x)"
                       ).replace("torch.randn(rows, cols)", "torch.rand(rows, cols)")
SQRT = GOOD.replace("x[i] > 0.f ? x[i] : 0.f", "sqrtf(x[i])").replace("#include <stdint.h>",
                                                                     "#include <stdint.h>\n#include <math.h>")
SQRT_WRONG = SQRT.replace("sqrtf(x[i])", "x[i]")


def _eval(tmp_path, candidate_source, *extra, reference=REF):
    ref = tmp_path / "ref.py"
    ref.write_text(reference)
    cand = tmp_path / "cand.py"
    cand.write_text(candidate_source)
    proc = subprocess.run(
        [sys.executable, "-m", "kernelcraft.cli", "eval", str(ref), str(cand), "--device", "cpu", "--json",
         "--work-dir", str(tmp_path / "work"), *extra],
        capture_output=True, text=True, timeout=300,
    )
    return proc


@pytest.mark.slow
def test_a_correct_kernel_is_accepted_and_timed(tmp_path):
    proc = _eval(tmp_path, GOOD)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert CONTRACT_KEYS <= set(result)
    assert result["compiled"] is True and result["correct"] is True and result["reasons"] == []
    assert result["time_ms"] > 0 and result["eager_ms"] > 0
    assert result["speedup_eager"] == pytest.approx(result["eager_ms"] / result["time_ms"])
    assert result["max_abs_err"] == 0.0
    assert result["compile_ms"] is None
    assert result["passes_1e-4"] is True


@pytest.mark.slow
def test_a_wrong_kernel_is_rejected_with_its_error_and_the_command_still_succeeds(tmp_path):
    proc = _eval(tmp_path, WRONG)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["compiled"] is True and result["correct"] is False
    assert any("max error above tolerance" in r for r in result["reasons"])
    assert result["max_abs_err"] > 0.1
    assert result["time_ms"] is None


@pytest.mark.slow
def test_trials_whose_inputs_the_reference_refuses_use_the_problems_own_and_still_judge(tmp_path):
    good = json.loads(_eval(tmp_path, SQRT, reference=UNIT_REF).stdout)
    assert good["correct"] is True and good["reasons"] == []
    assert set(good["inputs_refused"]) == {"scaled"} and "x must lie in [0, 1]" in good["inputs_refused"]["scaled"]
    wrong = json.loads(_eval(tmp_path, SQRT_WRONG, reference=UNIT_REF).stdout)
    assert wrong["correct"] is False and any("max error above tolerance" in r for r in wrong["reasons"])
    assert json.loads(_eval(tmp_path, GOOD).stdout)["inputs_refused"] == {}  # relu takes every kind


# A reference that rounds as it goes: each column added in float32, so its outputs are off from the exact sums by
# float32's rounding of every partial sum (around 1e-6 of them); the candidate sums in double and rounds once.
SEQUENTIAL_REF = REF.replace("return torch.relu(x)", "y = x[:, 0]\n        for i in range(1, x.shape[1]):\n"
                             "            y = y + x[:, i]\n        return y").replace("rows, cols = 64, 1000",
                                                                               "rows, cols = 64, 256")
EXACT_SUM = GOOD.replace("for (int64_t i = 0; i < n; ++i) y[i] = x[i] > 0.f ? x[i] : 0.f;",
                         "for (int64_t r = 0; r < n / 256; ++r) {\n"
                         "        double s = x[r * 256];\n"
                         "        for (int64_t c = 1; c < 256; ++c) s += (double)x[r * 256 + c];\n"
                         "        y[r] = (float)s;\n    }").replace("y = torch.empty_like(x)",
                                                                  "y = torch.empty(x.shape[0], dtype=x.dtype)")
# A reference whose forward makes a float32 matrix of its own: its float64 copy cannot take a product with it.
OWN_FLOAT32_REF = REF.replace("return torch.relu(x)", "return torch.relu(x @ torch.eye(x.shape[1]))")


@pytest.mark.slow
def test_a_float64_reference_judges_an_exact_kernel_by_the_exact_outputs(tmp_path):
    tight = ("--atol", "1e-7", "--rtol", "1e-7")
    native = json.loads(_eval(tmp_path, EXACT_SUM, *tight, reference=SEQUENTIAL_REF).stdout)
    assert native["reference_precision"] == "native" and native["correct"] is False
    assert any("max error above tolerance" in r for r in native["reasons"])
    exact = json.loads(_eval(tmp_path, EXACT_SUM, *tight, "--reference-precision", "float64",
                             reference=SEQUENTIAL_REF).stdout)
    # verified and timed (the timed calls' outputs are checked against the same float64 outputs)
    assert exact["reference_precision"] == "float64" and exact["correct"] is True, exact["reasons"]
    assert exact["max_abs_err"] == 0.0 and exact["time_ms"] is not None


@pytest.mark.slow
def test_a_reference_that_cannot_run_in_float64_is_compared_in_its_own_precision_and_says_why(tmp_path):
    result = json.loads(_eval(tmp_path, GOOD, "--reference-precision", "float64", reference=OWN_FLOAT32_REF).stdout)
    assert result["correct"] is True and result["reference_precision"] == "native"
    assert result["reference_float64_refused"].startswith("RuntimeError")
    wrong = json.loads(_eval(tmp_path, WRONG, "--reference-precision", "float64", reference=OWN_FLOAT32_REF).stdout)
    assert wrong["correct"] is False


@pytest.mark.slow
def test_a_kernel_that_does_not_build_is_reported_as_not_compiled(tmp_path):
    proc = _eval(tmp_path, BROKEN)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["compiled"] is False and result["correct"] is False
    assert result["reasons"][0].startswith("compile error")
    assert "undeclared_thing" in result["reasons"][0]


def test_tolerance_flags_are_recorded(tmp_path):
    proc = _eval(tmp_path, GOOD, "--atol", "1e-5", "--rtol", "1e-6")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["tolerance"] == {"atol": 1e-5, "rtol": 1e-6}


def test_a_missing_reference_is_a_one_line_error_and_non_zero_exit(tmp_path):
    cand = tmp_path / "cand.py"
    cand.write_text(GOOD)
    proc = subprocess.run([sys.executable, "-m", "kernelcraft.cli", "eval", str(tmp_path / "nope.py"), str(cand)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "reference file not found" in proc.stderr


def test_a_reference_that_is_not_kernelbench_format_is_a_one_line_error(tmp_path):
    ref = tmp_path / "ref.py"
    ref.write_text("x = 1\n")
    cand = tmp_path / "cand.py"
    cand.write_text(GOOD)
    proc = subprocess.run([sys.executable, "-m", "kernelcraft.cli", "eval", str(ref), str(cand), "--device", "cpu"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "not a KernelBench problem" in proc.stderr


def test_a_reader_that_closes_the_pipe_early_ends_the_command_quietly():
    """`kernelcraft compare A B | head -1`: the closed pipe is the reader's choice, not an error with a traceback."""
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "kernelcraft.cli", "problems"], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert done.returncode == 0 and done.stderr == ""
