"""Recognising what a reference computes from its traced operator graph (problems/graph.py, problems/recognise.py)
and the ``kernelcraft problems`` listing built on it. The references here are level-1-like files written for these
tests, at shapes of their own (other ranks, odd sizes), not KernelBench's files."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kernelcraft.config import load_config
from kernelcraft.context import RECOGNITION_CACHE, resolve
from kernelcraft.problems import builtin_ids, load_problem
from kernelcraft.problems.loader import builtin_dir
from kernelcraft.problems.recognise import recognise_cached, recognise_problem

HEAD = "import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n\n"


def reference(folder: Path, name: str, init: str, forward: str, inputs: str, init_inputs: str = "[]",
              helpers: str = "") -> Path:
    path = folder / f"{name}.py"
    path.write_text(HEAD + helpers + "class Model(nn.Module):\n    def __init__(self, *args):\n"
                    f"        super().__init__()\n        {init}\n\n"
                    f"    def forward(self, *xs):\n        {forward}\n\n\n"
                    f"def get_inputs():\n    return {inputs}\n\n\ndef get_init_inputs():\n    return {init_inputs}\n")
    return path


def recognised(path: Path):
    return recognise_problem(load_problem(path, "full"))


SOFTMAX_SPELLINGS = {
    "torch_softmax": ("pass", "return torch.softmax(xs[0], dim=-1)", ""),
    "functional": ("pass", "return F.softmax(xs[0], dim=2)", ""),
    "method": ("pass", "return xs[0].softmax(-1)", ""),
    "module": ("self.act = nn.Softmax(dim=-1)", "return self.act(xs[0])", ""),
    "helper": ("pass", "return normalise(xs[0])", "def normalise(t):\n    return torch.exp(t.log_softmax(-1))\n\n\n"),
}


@pytest.mark.parametrize("spelling", sorted(SOFTMAX_SPELLINGS))
def test_every_spelling_of_a_last_dimension_softmax_is_one_operation(tmp_path, spelling):
    init, forward, helpers = SOFTMAX_SPELLINGS[spelling]
    r = recognised(reference(tmp_path, spelling, init, forward, "[torch.randn(3, 5, 77)]", helpers=helpers))
    if spelling == "helper":  # exp(log_softmax) is two operations: the graph says so instead of guessing
        assert r.op is None and "_log_softmax(f32[3,5,77]) -> exp(f32[3,5,77])" in r.reason
    else:
        assert (r.family, r.op, r.params) == ("rowwise", "softmax", {"dim": -1})


FITS = {
    "relu_3d": ("pass", "return torch.relu(xs[0])", "[torch.randn(2, 3, 1001)]", "[]", ("elementwise", "relu", {})),
    "gelu_exact": ("pass", "return F.gelu(xs[0])", "[torch.randn(7, 33)]", "[]",
                   ("elementwise", "gelu", {"approximate": "none"})),
    "log_softmax_odd": ("pass", "return torch.log_softmax(xs[0], 1)", "[torch.randn(13, 4099)]", "[]",
                        ("rowwise", "log_softmax", {"dim": -1})),
    "layernorm_2dims": ("self.ln = nn.LayerNorm((31, 17), eps=1e-6)", "return self.ln(xs[0])",
                        "[torch.randn(5, 31, 17)]", "[]", ("rowwise", "layernorm", {"normalized_dims": 2,
                                                                                     "eps": 1e-6})),
    "layernorm_plain": ("self.ln = nn.LayerNorm(40, elementwise_affine=False)", "return self.ln(xs[0])",
                        "[torch.randn(3, 40)]", "[]", ("rowwise", "layernorm", {"normalized_dims": 1, "eps": 1e-5})),
    "rmsnorm_pow": ("self.w = nn.Parameter(torch.ones(999))",
                    "x = xs[0]\n        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * self.w",
                    "[torch.randn(4, 999)]", "[]", ("rowwise", "rmsnorm", {"eps": 1e-5})),
    "sum_two_apart": ("pass", "return xs[0].sum((0, 2))", "[torch.randn(8, 9, 10)]", "[]",
                      ("reduce", "reduce", {"kind": "sum", "dims": [0, 2], "keepdim": False, "in_shape": [8, 9, 10]})),
    # nn.RMSNorm adds its eps in place to the mean (the graph holds it as a float32: 2^-20 reads back exactly)
    "rmsnorm_module": ("self.n = nn.RMSNorm(999, eps=2 ** -20)", "return self.n(xs[0])", "[torch.randn(4, 999)]",
                       "[]", ("rowwise", "rmsnorm", {"eps": 2 ** -20})),
    "softmax_temperature": ("pass", "return torch.softmax(xs[0] / 0.5, dim=-1)", "[torch.randn(4, 99)]", "[]",
                            ("rowwise", "softmax", {"dim": -1, "scale": 2.0})),
    "sum_last": ("pass", "return xs[0].sum(dim=2)", "[torch.randn(3, 4, 1023)]", "[]",
                 ("rowwise", "sum_lastdim", {"dim": -1, "keepdim": False})),
    "matmul_odd": ("pass", "return xs[0] @ xs[1]", "[torch.randn(37, 61), torch.randn(61, 5)]", "[]",
                   ("matmul", "matmul", {})),
    "conv_5x5": ("self.conv = nn.Conv2d(3, 8, 5, stride=2, padding=1, dilation=2, bias=False)",
                 "return self.conv(xs[0])", "[torch.randn(2, 3, 40, 29)]", "[]",
                 ("conv", "conv2d", {"kernel_size": 5, "stride": 2, "padding": 1, "dilation": 2, "groups": 1})),
    "conv_relu_pool": ("self.conv = nn.Conv2d(4, 6, 3)\n        self.pool = nn.MaxPool2d(2)",
                       "return self.pool(torch.relu(self.conv(xs[0])))", "[torch.randn(1, 4, 19, 23)]", "[]",
                       ("conv", "conv2d_relu_maxpool", {"kernel_size": 3, "stride": 1, "padding": 0, "dilation": 1,
                                                         "groups": 1, "pool_kernel_size": 2, "pool_stride": 2,
                                                         "pool_padding": 0})),
}


@pytest.mark.parametrize("name", sorted(FITS))
def test_a_reference_of_a_covered_family_is_recognised_with_its_parameters(tmp_path, name):
    init, forward, inputs, init_inputs, want = FITS[name]
    r = recognised(reference(tmp_path, name, init, forward, inputs, init_inputs))
    assert (r.family, r.op, r.params) == want and r.reason is None


MISSES = {
    "sum_two_runs_apart_from_0": ("pass", "return xs[0].sum((1, 3))", "[torch.randn(8, 9, 10, 11)]",
                                  "a sum over dimension(s) [1, 3] of a rank-4 tensor"),
    "argmax_of_runs": ("pass", "return torch.argmax(xs[0].sum(1, keepdim=True), 2)", "[torch.randn(8, 9, 10)]",
                       "the graph holds sum(f32[8,9,10]) -> argmax(f32[8,1,10])"),
    "rms_weighted_channels": ("self.w = nn.Parameter(torch.ones(6, 1, 1))",
                              "x = xs[0]\n        return self.w * (x / torch.sqrt((x * x).mean(1, keepdim=True) "
                              "+ 1e-5))", "[torch.randn(2, 6, 5, 5)]",
                              "an RMS norm over dimension(s) [1] of a rank-4 tensor with a weight"),
    "layernorm_weight_only": ("self.ln = nn.LayerNorm(40, bias=False)", "return self.ln(xs[0])", "[torch.randn(3, 40)]",
                              "a layer norm with a weight but no bias"),
    "matmul_permuted": ("pass", "return xs[0].permute(1, 0, 2).reshape(4, 6) @ xs[1]",
                        "[torch.randn(2, 4, 3), torch.randn(6, 5)]", "operands permuted beyond a transpose"),
    "matmul_of_same_input": ("pass", "return torch.bmm(xs[0], xs[0])", "[torch.randn(2, 3, 3), torch.randn(1)]",
                             "operands other than the two inputs"),
    "conv_of_relu": ("self.conv = nn.Conv2d(4, 4, 3, groups=4)", "return self.conv(torch.relu(xs[0]))",
                     "[torch.randn(1, 4, 9, 9)]", "the graph holds relu(f32[1,4,9,9]) -> convolution(f32[1,4,9,9]"),
    "softmax_negative_temperature": ("pass", "return torch.softmax(xs[0] * -2.0, dim=-1)", "[torch.randn(4, 9)]",
                                     "a softmax of the input scaled by -2.0"),
    "adaptive_max_to_two": ("self.p = nn.AdaptiveMaxPool2d((2, 1))", "return self.p(xs[0])",
                            "[torch.randn(2, 3, 9, 11)]", "an adaptive max pooling to [2, 1]"),
    "pool_then_relu": ("pass", "return torch.relu(torch.nn.functional.max_pool2d(xs[0], 2))",
                       "[torch.randn(1, 4, 9, 9)]", "max_pool2d_with_indices(f32[1,4,9,9]) -> relu("),
    "cumsum_of_exp": ("pass", "return torch.cumsum(torch.exp(xs[0]), 0)", "[torch.randn(10)]",
                      "the graph holds exp(f32[10]) -> cumsum(f32[10])"),
    "list_input": ("pass", "return xs[0] * xs[1][0]", "[torch.randn(10), [3.5]]", "the graph holds mul(f32[10])"),
    "half_attention": ("pass", "return F.scaled_dot_product_attention(xs[0], xs[1], xs[2])",
                       "[torch.randn(2, 8, 16, dtype=torch.float16) for _ in range(3)]",
                       "the offline families take float32 tensors, not f16[2,8,16], f16[2,8,16], f16[2,8,16]"),
    "double": ("pass", "return torch.relu(xs[0])", "[torch.randn(10, dtype=torch.float64)]",
               "the offline families take float32 tensors, not f64[10]"),
    # F.dropout's training flag defaults to True: random in eval mode too, which no kernel can match
    "functional_dropout_always_on": ("pass", "return torch.relu(F.dropout(xs[0], 0.5))", "[torch.randn(4, 9)]",
                                     "the graph holds bernoulli_(f32[4,9])"),
}


def test_a_prelus_slopes_are_the_pointwise_functions_broadcast_operand_read_from_the_parameter(tmp_path):
    r = recognised(reference(tmp_path, "prelu", "self.act = nn.PReLU(6)", "return self.act(xs[0])",
                             "[torch.randn(2, 6, 5, 7)]"))
    assert (r.family, r.op) == ("elementwise", "pointwise")
    assert {k: r.params[k] for k in ("y_param", "y_inner", "y_size", "chain")} == \
        {"y_param": "act.weight", "y_inner": 35, "y_size": 6, "chain": "_prelu_kernel"}
    assert "(x > 0.f ? x : y * x)" in r.params["body"]


def test_a_dropout_module_is_traced_as_the_identity_it_is_in_eval_mode_where_references_are_judged(tmp_path):
    plain = recognised(reference(tmp_path, "plain", "pass", "return torch.tanh(xs[0]) * 2", "[torch.randn(4, 9)]"))
    dropped = recognised(reference(tmp_path, "dropped", "self.drop = nn.Dropout(0.3)",
                                   "return torch.tanh(self.drop(xs[0])) * 2", "[torch.randn(4, 9)]"))
    assert (dropped.op, dropped.params) == (plain.op, plain.params) and dropped.op == "pointwise"
    assert dropped.eval_mode and not plain.eval_mode  # and the probes confirm it in eval mode (test_offline_pointwise)


@pytest.mark.parametrize("name", sorted(MISSES))
def test_a_reference_no_family_covers_gets_one_line_naming_what_the_graph_holds(tmp_path, name):
    init, forward, inputs, why = MISSES[name]
    r = recognised(reference(tmp_path, name, init, forward, inputs))
    assert r.op is None and r.family is None
    assert why in r.reason and "\n" not in r.line() and r.line().startswith("no offline family fits: ")


def test_an_elementwise_chain_becomes_one_float_function_of_x_in_graph_order(tmp_path):
    r = recognised(reference(tmp_path, "swish", "pass", "return 2.0 * (xs[0] * torch.sigmoid(xs[0]))",
                             "[torch.randn(6, 7)]"))
    assert (r.family, r.op, r.params["chain"]) == ("elementwise", "pointwise", "sigmoid -> mul -> mul")
    assert r.params["body"] == ("const float t0 = (1.f / (1.f + expf(-x))); const float t1 = (x * t0); "
                                "const float t2 = (t1 * 2.0f); return t2;")
    assert r.line() == "elementwise/pointwise (chain=sigmoid -> mul -> mul)"


def test_a_chain_that_computes_the_same_operation_twice_keeps_both_values(tmp_path):
    r = recognised(reference(tmp_path, "twice", "pass", "return torch.sigmoid(xs[0]) + torch.sigmoid(xs[0])",
                             "[torch.randn(6, 7)]"))
    assert (r.op, r.params["chain"]) == ("pointwise", "sigmoid -> sigmoid -> add")
    assert r.params["body"].endswith("const float t2 = (t0 + t1); return t2;")


def test_a_forward_without_inputs_is_a_reason_not_a_crash(tmp_path):
    r = recognised(reference(tmp_path, "constant", "pass", "return torch.ones(3) * 2", "[]"))
    assert r.op is None and r.reason == "the graph holds mul(f32[3])"


def test_the_built_in_suite_is_recognised_as_its_metadata_says():
    for pid in builtin_ids():
        problem = load_problem(builtin_dir() / f"{pid}.py", "full")
        assert recognise_problem(problem).op == problem.op, pid


def test_tracing_allocates_nothing_so_huge_references_list_in_milliseconds(tmp_path):
    path = reference(tmp_path, "huge", "pass", "return torch.softmax(xs[0], -1)", "[torch.randn(1 << 17, 1 << 18)]")
    start = time.perf_counter()
    r = recognised(path)  # 128 GiB of float32 if it were real
    assert r.op == "softmax" and time.perf_counter() - start < 5


def test_a_forward_that_cannot_be_traced_is_a_reason_not_a_crash(tmp_path):
    path = reference(tmp_path, "branchy", "pass",
                     "return xs[0] if float(xs[0].sum()) > 0 else -xs[0]", "[torch.randn(4)]")
    r = recognised(path)
    assert r.op is None and r.reason.startswith("the forward could not be traced (") and "\n" not in r.reason


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kernelcraft.cli", "problems", *args], capture_output=True,
                          text=True, timeout=120)


def test_kernelcraft_problems_lists_each_problem_of_a_directory_with_its_family_or_reason(tmp_path):
    reference(tmp_path, "a_softmax", "pass", "return torch.softmax(xs[0], -1)", "[torch.randn(4, 8)]")
    reference(tmp_path, "b_cross", "pass", "return torch.linalg.cross(xs[0], xs[1])",
              "[torch.randn(4, 3), torch.randn(4, 3)]")
    (tmp_path / "helper.py").write_text("X = 1\n")  # not a problem: skipped
    done = _cli(str(tmp_path))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[1].split() == ["a_softmax", "rowwise/softmax", "(dim=-1)"]
    assert lines[2].startswith("b_cross") and "no offline family fits: the graph holds linalg_cross(" in lines[2]
    assert lines[3].startswith("1 of 2 problems have an offline family")
    listed = json.loads(_cli(str(tmp_path), "--json").stdout)
    assert [(p["problem"], p["family"], p["op"]) for p in listed] == [("a_softmax", "rowwise", "softmax"),
                                                                      ("b_cross", None, None)]


def test_kernelcraft_problems_refuses_a_missing_directory_in_one_line(tmp_path):
    done = _cli(str(tmp_path / "nowhere"))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "does not exist" in done.stderr


def test_the_workflow_plans_rounds_for_every_problem_a_family_fits_and_only_a_baseline_for_the_others(
        tmp_path, monkeypatch):
    problems = tmp_path / "level1"
    problems.mkdir()
    reference(problems, "swish", "pass", "return xs[0] * torch.sigmoid(xs[0])", "[torch.randn(64, 33)]")
    reference(problems, "symmetric", "pass", "return torch.matmul(xs[0], xs[1])",
              "[torch.randn(16, 16), torch.randn(16, 16)]")  # no single-op source form the old detector knew
    reference(problems, "running", "pass", "return torch.cumsum(torch.exp(xs[0]), 1)", "[torch.randn(8, 9)]")
    for name in ("OPENAI_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    config = load_config()
    config.update({"backend": "cpu"})
    config["problems"].update({"builtin": [], "dirs": [str(problems)], "size": "full"})
    resolved = resolve(config)
    assert sorted(resolved["problems"]) == ["running", "swish", "symmetric"]
    assert resolved["searched"] == ["swish", "symmetric"]
    assert len(list((tmp_path / RECOGNITION_CACHE).glob("*.json"))) == 3


def test_a_kept_recognition_is_read_without_torch_and_a_changed_file_is_traced_again(tmp_path):
    path = reference(tmp_path, "act", "pass", "return torch.tanh(xs[0])", "[torch.randn(5, 6)]")
    cache = tmp_path / "cache"
    first = recognise_cached(load_problem(path), cache)
    assert first.params["chain"] == "tanh"
    probe = ("import sys; from pathlib import Path; from kernelcraft.problems import load_problem; "
             "from kernelcraft.problems.recognise import recognise_cached; "
             f"r = recognise_cached(load_problem(Path({str(path)!r})), Path({str(cache)!r})); "
             "print(r.params['chain'], 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["tanh", "False"], done.stderr
    path.write_text(path.read_text().replace("torch.tanh(xs[0])", "torch.sigmoid(xs[0])"))
    assert recognise_cached(load_problem(path), cache).params["chain"] == "sigmoid"
    assert len(list(cache.glob("act-*.json"))) == 2
