"""Problem loading, the built-in suite, discovery and op tags."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from kernelcraft.problems import (
    OPS,
    SIZES,
    ProblemError,
    builtin_dir,
    builtin_ids,
    detect_op,
    discover,
    load_problem,
    match_op,
    op_family,
)

SUITE = {
    # id: (op, full input shapes, small input shapes, small output shape)
    "matmul_4096": ("matmul", [(4096, 4096), (4096, 4096)], [(256, 256), (256, 256)], (256, 256)),
    "conv2d_alexnet": ("conv2d", [(100, 3, 224, 224)], [(2, 3, 64, 64)], (2, 96, 15, 15)),
    "conv2d_relu_maxpool": ("conv2d_relu_maxpool", [(100, 3, 224, 224)], [(2, 3, 64, 64)], (2, 96, 7, 7)),
    "softmax_4096x65536": ("softmax", [(4096, 65536)], [(64, 4096)], (64, 4096)),
    "layernorm_16x64x256x256": ("layernorm", [(16, 64, 256, 256)], [(4, 16, 32, 32)], (4, 16, 32, 32)),
    "relu_4096x32768": ("relu", [(4096, 32768)], [(64, 4096)], (64, 4096)),
    "gelu_4096x32768": ("gelu", [(4096, 32768)], [(64, 4096)], (64, 4096)),
    "log_softmax_4096x32768": ("log_softmax", [(4096, 32768)], [(64, 4096)], (64, 4096)),
    "rmsnorm_4096x8192": ("rmsnorm", [(4096, 8192)], [(64, 2048)], (64, 2048)),
    "sum_lastdim_4096x65536": ("sum_lastdim", [(4096, 65536)], [(64, 4096)], (64, 1)),
}

HEADER = "import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n\n"


def write(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body))
    return path


def kb_source(forward: str, init: str = "", init_args: str = "", inputs: str = "torch.randn(batch_size, dim)",
              init_inputs: str = "[]", extra: str = "") -> str:
    """A KernelBench level-1 style file with the given forward body (and __init__ additions)."""
    init_body = textwrap.indent(init, " " * 8) + "\n" if init else ""
    return HEADER + (
        "class Model(nn.Module):\n"
        '    """Docstring."""\n'
        f"    def __init__(self{init_args}):\n"
        "        super(Model, self).__init__()\n"
        f"{init_body}\n"
        "    def forward(self, x: torch.Tensor) -> torch.Tensor:\n"
        '        """Applies the op."""\n'
        f"{textwrap.indent(forward, ' ' * 8)}\n\n"
        "batch_size = 16 * 2 * 2\n"
        "dim = 16384 * 2 * 2\n"
        f"{extra}\n\n"
        "def get_inputs():\n"
        f"    x = {inputs}\n"
        "    return [x]\n\n"
        "def get_init_inputs():\n"
        f"    return {init_inputs}\n"
    )


# ---- the built-in suite ------------------------------------------------------------------------------------


def test_builtin_ids_are_the_ten_shipped_files():
    assert builtin_ids() == sorted(SUITE)
    assert all((builtin_dir() / f"{pid}.py").is_file() for pid in SUITE)


@pytest.mark.parametrize("pid", sorted(SUITE))
def test_builtin_loads_at_both_sizes_with_declared_op(pid):
    for size in SIZES:
        problem = load_problem(builtin_dir() / f"{pid}.py", size)
        assert (problem.id, problem.size, problem.op) == (pid, size, SUITE[pid][0])
        assert problem.path == (builtin_dir() / f"{pid}.py").resolve()
        assert isinstance(problem.init_inputs(), list)


@pytest.mark.parametrize("pid", sorted(SUITE))
def test_builtin_full_size_inputs_have_published_shapes(pid):
    # The meta device allocates nothing, which also proves make_inputs creates tensors on the device directly.
    problem = load_problem(builtin_dir() / f"{pid}.py", "full")
    inputs = problem.make_inputs(0, "meta")
    assert [tuple(t.shape) for t in inputs] == SUITE[pid][1]
    assert all(t.device.type == "meta" and t.dtype == torch.float32 for t in inputs)


@pytest.mark.parametrize("pid", sorted(SUITE))
def test_builtin_small_size_forward_runs_on_cpu_with_expected_shape(pid):
    problem = load_problem(builtin_dir() / f"{pid}.py", "small")
    inputs = problem.make_inputs(0, "cpu")
    assert [tuple(t.shape) for t in inputs] == SUITE[pid][2]
    model = problem.make_reference(0, "cpu")
    assert not model.training
    with torch.no_grad():
        out = model(*inputs)
    assert tuple(out.shape) == SUITE[pid][3]
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_builtin_rmsnorm_and_layernorm_compute_what_their_docstrings_say():
    x = load_problem(builtin_dir() / "rmsnorm_4096x8192.py", "small").make_inputs(1, "cpu")[0]
    model = load_problem(builtin_dir() / "rmsnorm_4096x8192.py", "small").make_reference(1, "cpu")
    expected = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(model(x), expected)
    ln = load_problem(builtin_dir() / "layernorm_16x64x256x256.py", "small")
    assert ln.init_inputs() == [(16, 32, 32)]  # normalized_shape follows the small override


@pytest.mark.parametrize("pid", sorted(SUITE))
def test_builtin_declared_op_and_params_match_what_detection_reads_from_source(pid):
    problem = load_problem(builtin_dir() / f"{pid}.py")
    match = match_op(problem.source())
    assert match is not None and match.op == problem.op
    assert match.params == problem.params


# ---- inputs, seeds, weights --------------------------------------------------------------------------------

MIXED = """\
    import torch
    import torch.nn as nn

    class Model(nn.Module):
        def __init__(self):
            super().__init__()

        def forward(self, idx, mask, n):
            return idx.masked_fill(mask, n)

    rows = 8

    def get_inputs():
        idx = torch.randint(0, 100, (rows, 4))
        mask = torch.rand(rows, 4) > 0.5
        return [idx, mask, 7]

    def get_init_inputs():
        return []
    """


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_integer_and_boolean_inputs_keep_dtype_and_python_ints_pass_through(tmp_path, device):
    problem = load_problem(write(tmp_path / "mixed.py", MIXED))
    idx, mask, n = problem.make_inputs(3, device)
    assert (idx.dtype, mask.dtype) == (torch.int64, torch.bool)
    assert idx.device.type == mask.device.type == device
    assert n == 7 and type(n) is int


def test_same_seed_gives_identical_inputs_and_different_seed_differs(tmp_path):
    problem = load_problem(builtin_dir() / "relu_4096x32768.py", "small")
    a, b, c = (problem.make_inputs(s, "cpu")[0] for s in (5, 5, 6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    mixed = load_problem(write(tmp_path / "mixed.py", MIXED))
    first, second = mixed.make_inputs(9, "cpu"), mixed.make_inputs(9, "cpu")
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_make_reference_weights_depend_only_on_seed():
    problem = load_problem(builtin_dir() / "conv2d_alexnet.py", "small")
    w1, w2, w3 = (problem.make_reference(s, "cpu").conv.weight for s in (1, 1, 2))
    assert torch.equal(w1, w2)
    assert not torch.equal(w1, w3)


def test_make_reference_matches_kernelbench_order_seed_after_init_inputs():
    problem = load_problem(builtin_dir() / "conv2d_alexnet.py", "small")
    module = problem.load_module()
    init = module.get_init_inputs()
    torch.manual_seed(11)
    expected = module.Model(*init).conv.weight
    assert torch.equal(problem.make_reference(11, "cpu").conv.weight, expected)


# ---- modules and sizes -------------------------------------------------------------------------------------


def test_each_load_module_call_gets_its_own_module():
    problem = load_problem(builtin_dir() / "softmax_4096x65536.py", "small")
    first, second = problem.load_module(), problem.load_module()
    assert first is not second and first.__name__ != second.__name__
    first.batch_size = 3
    assert second.batch_size == 64
    assert tuple(problem.make_inputs(0, "meta")[0].shape) == (64, 4096)
    assert first.__name__ not in sys.modules and "model" not in sys.modules


def test_small_size_overrides_globals_and_full_keeps_them():
    path = builtin_dir() / "softmax_4096x65536.py"
    full = load_problem(path, "full").load_module()
    small = load_problem(path, "small").load_module()
    assert (full.batch_size, full.dim) == (4096, 65536)
    assert (small.batch_size, small.dim) == (64, 4096)


def test_file_without_small_metadata_runs_its_own_sizes_at_both_sizes(tmp_path):
    path = write(tmp_path / "plain.py", MIXED)
    shapes = [tuple(load_problem(path, size).make_inputs(0, "meta")[0].shape) for size in SIZES]
    assert shapes == [(8, 4), (8, 4)]


def test_unknown_size_is_rejected_naming_allowed_values():
    with pytest.raises(ValueError, match=r"unknown problem size 'tiny'; allowed values: full, small"):
        load_problem(builtin_dir() / "relu_4096x32768.py", "tiny")


def test_small_override_of_undefined_global_names_it(tmp_path):
    path = write(tmp_path / "typo.py", MIXED + 'KERNELCRAFT = {"small": {"rowz": 2}}\n')
    with pytest.raises(ProblemError, match=r"typo\.py: KERNELCRAFT\['small'\] overrides 'rowz'"):
        load_problem(path, "small").load_module()


def test_malformed_metadata_is_rejected(tmp_path):
    bad_op = write(tmp_path / "bad_op.py", MIXED + 'KERNELCRAFT = {"op": "fft"}\n')
    with pytest.raises(ProblemError, match=r"bad_op\.py: KERNELCRAFT\['op'\] = 'fft' is not a known op"):
        load_problem(bad_op)
    bad_key = write(tmp_path / "bad_key.py", MIXED + 'KERNELCRAFT = {"smal": {}}\n')
    with pytest.raises(ProblemError, match=r"unknown KERNELCRAFT key 'smal'; allowed keys: op, params"):
        load_problem(bad_key)
    not_literal = write(tmp_path / "not_literal.py", MIXED + 'KERNELCRAFT = {"small": {"rows": rows}}\n')
    with pytest.raises(ProblemError, match=r"KERNELCRAFT must be a literal dict"):
        load_problem(not_literal)


# ---- errors ------------------------------------------------------------------------------------------------


def test_missing_function_is_a_problem_error_naming_the_path(tmp_path):
    path = write(tmp_path / "half.py", MIXED.replace("def get_init_inputs", "def other"))
    with pytest.raises(ProblemError) as info:
        load_problem(path)
    assert str(info.value) == f"{path.resolve()}: not a KernelBench problem: missing get_init_inputs()"
    assert isinstance(info.value, ValueError)


def test_missing_model_class_is_named(tmp_path):
    path = write(tmp_path / "nomodel.py", MIXED.replace("class Model", "class Other"))
    with pytest.raises(ProblemError, match=r"nomodel\.py: not a KernelBench problem: missing class Model$"):
        load_problem(path)


def test_import_error_is_a_problem_error_with_first_line_only(tmp_path):
    path = write(tmp_path / "boom.py", MIXED + 'raise RuntimeError("boom happened\\nsecond line")\n')
    problem = load_problem(path)  # validation does not execute the file
    with pytest.raises(ProblemError) as info:
        problem.make_inputs(0, "cpu")
    assert str(info.value) == f"{path.resolve()}: import failed: RuntimeError: boom happened"


def test_syntax_error_and_missing_file_are_problem_errors(tmp_path):
    path = write(tmp_path / "broken.py", "def get_inputs(:\n")
    with pytest.raises(ProblemError, match=r"broken\.py: syntax error at line 1"):
        load_problem(path)
    with pytest.raises(ProblemError, match=r"absent\.py: no such problem file"):
        load_problem(tmp_path / "absent.py")


# ---- discovery ---------------------------------------------------------------------------------------------


def test_discover_all_builtins_sorted_with_size():
    problems = discover("all", [], None, None, "small")
    assert [p.id for p in problems] == sorted(SUITE)
    assert {p.size for p in problems} == {"small"}


def test_discover_include_and_exclude_regexes():
    assert [p.id for p in discover("all", [], "softmax", None, "full")] == [
        "log_softmax_4096x32768", "softmax_4096x65536"]
    assert [p.id for p in discover("all", [], "softmax", "^log_", "full")] == ["softmax_4096x65536"]
    assert [p.id for p in discover(["relu_4096x32768", "matmul_4096"], [], None, "relu", "full")] == [
        "matmul_4096"]
    assert discover([], [], None, None, "full") == []


def test_discover_rejects_unknown_builtin_listing_valid_ids():
    valid = ", ".join(sorted(SUITE))
    with pytest.raises(ValueError, match=rf"unknown built-in problem id 'softmax'; valid ids: {valid}$"):
        discover(["softmax"], [], None, None, "full")
    with pytest.raises(ValueError, match=r"builtin must be \"all\" or a list of built-in ids, got 'none'"):
        discover("none", [], None, None, "full")


def test_discover_directory_skips_non_problem_files(tmp_path):
    write(tmp_path / "19_ReLU.py", kb_source("return torch.relu(x)"))
    write(tmp_path / "helpers.py", "def util():\n    return 1\n")
    (tmp_path / "notes.txt").write_text("not python")
    problems = discover([], [tmp_path], None, None, "full")
    expected = [("19_ReLU", "relu", (tmp_path / "19_ReLU.py").resolve())]
    assert [(p.id, p.op, p.path) for p in problems] == expected


def test_discover_duplicate_id_across_dirs_names_both_paths(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    write(a / "p.py", MIXED)
    write(b / "p.py", MIXED)
    with pytest.raises(ValueError) as info:
        discover([], [a, b], None, None, "full")
    assert str(info.value).startswith(f"duplicate problem id 'p': {(a / 'p.py').resolve()} and "
                                      f"{(b / 'p.py').resolve()}")
    write(a / "relu_4096x32768.py", MIXED)
    with pytest.raises(ValueError, match="duplicate problem id 'relu_4096x32768'"):
        discover(["relu_4096x32768"], [a], "relu", None, "full")
    assert [p.id for p in discover([], [a, b], None, "^p$", "full")] == ["relu_4096x32768"]


def test_discover_rejects_missing_dir_and_bad_regex(tmp_path):
    with pytest.raises(ValueError, match=r"problem directory .*nowhere does not exist"):
        discover([], [tmp_path / "nowhere"], None, None, "full")
    with pytest.raises(ValueError, match=r"include pattern '\(' is not a valid regular expression"):
        discover("all", [], "(", None, "full")


def test_discover_does_not_import_torch():
    code = ("import sys, kernelcraft.problems as p; ps = p.discover('all', [], None, None, 'small'); "
            "ps[0].op; assert 'torch' not in sys.modules, 'torch imported'; print(len(ps))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(len(SUITE))


# ---- op tags -----------------------------------------------------------------------------------------------

CONV_INIT = "self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding)"
CONV_ARGS = ", in_channels, out_channels, kernel_size, stride=1, padding=0"
CONV_EXTRA = "in_channels = 3\nout_channels = 64\nkernel_size = 3"
CONV_INPUTS = "torch.randn(batch_size, in_channels, 32, 32)"

DETECT_CASES = {
    "relu": kb_source("return torch.relu(x)"),
    "gelu": kb_source("return torch.nn.functional.gelu(x)"),
    "softmax": kb_source("return torch.softmax(x, dim=1)"),
    "log_softmax": kb_source("return torch.log_softmax(x, dim=self.dim)", init="self.dim = dim",
                             init_args=", dim: int = 1"),
    "layernorm": kb_source("return self.ln(x)",
                           init="self.ln = nn.LayerNorm(normalized_shape=normalized_shape)",
                           init_args=", normalized_shape: tuple",
                           inputs="torch.randn(batch_size, 64, 256, 256)",
                           init_inputs="[(64, 256, 256)]"),
    "rmsnorm": kb_source("return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight",
                         init="self.eps = eps\nself.weight = nn.Parameter(torch.ones(dim))",
                         init_args=", dim: int, eps: float = 1e-6", init_inputs="[dim]"),
    "sum_lastdim": kb_source("return torch.sum(x, dim=-1, keepdim=True)"),
    "matmul": HEADER + textwrap.dedent("""\
        class Model(nn.Module):
            def __init__(self):
                super(Model, self).__init__()

            def forward(self, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
                return torch.matmul(A, B)

        N = 2048 * 2

        def get_inputs():
            A = torch.rand(N, N)
            B = torch.rand(N, N)
            return [A, B]

        def get_init_inputs():
            return []
        """),
    "conv2d": kb_source("return self.conv(x)", init=CONV_INIT, init_args=CONV_ARGS, inputs=CONV_INPUTS,
                        init_inputs="[in_channels, out_channels, kernel_size]", extra=CONV_EXTRA),
    "conv2d_relu_maxpool": kb_source(
        "x = self.conv(x)\nx = F.relu(x)\nreturn self.pool(x)",
        init=CONV_INIT + "\nself.pool = nn.MaxPool2d(kernel_size=2)", init_args=CONV_ARGS, inputs=CONV_INPUTS,
        init_inputs="[in_channels, out_channels, kernel_size]", extra=CONV_EXTRA),
}


def test_detect_cases_cover_the_whole_vocabulary():
    assert set(DETECT_CASES) == set(OPS)


@pytest.mark.parametrize("op", sorted(DETECT_CASES))
def test_detect_op_recognises_kernelbench_style_single_op(op):
    assert detect_op(DETECT_CASES[op]) == op


def test_detected_params_resolve_constructor_arguments():
    assert match_op(DETECT_CASES["layernorm"]).params == {"normalized_dims": 3, "eps": 1e-5}
    assert match_op(DETECT_CASES["rmsnorm"]).params == {"eps": 1e-6}
    assert match_op(DETECT_CASES["log_softmax"]).params == {"dim": -1}
    assert match_op(DETECT_CASES["conv2d_relu_maxpool"]).params == {
        "kernel_size": 3, "stride": 1, "padding": 0, "dilation": 1, "groups": 1,
        "pool_kernel_size": 2, "pool_stride": 2, "pool_padding": 0}


@pytest.mark.parametrize("forward", [
    "return x.softmax(-1)",
    "return F.softmax(x, dim=-1)",
    "y = torch.nn.functional.log_softmax(x, 1)\nreturn y",
])
def test_detect_op_accepts_method_functional_and_positional_spellings(forward):
    assert detect_op(kb_source(forward)) in ("softmax", "log_softmax")


@pytest.mark.parametrize("forward", [
    "return torch.relu(x) * 2",                          # two ops
    "return torch.softmax(torch.relu(x), dim=-1)",        # two ops
    "return torch.sigmoid(x)",                            # not in the vocabulary
    "if x.sum() > 0:\n    return x\nreturn torch.relu(x)",  # control flow
    "return torch.softmax(x, dim=0)",                     # not the last dim
    "return torch.sum(x, dim=self.dim, keepdim=True)",    # dim 1 of a rank-3 input (KernelBench 47)
])
def test_detect_op_gives_none_unless_forward_is_one_recognised_op(forward):
    source = kb_source(forward, init="self.dim = dim", init_args=", dim: int", init_inputs="[reduce_dim]",
                       inputs="torch.randn(batch_size, dim, 256)", extra="reduce_dim = 1")
    assert detect_op(source) is None


def test_detect_op_gives_none_for_batched_or_transposed_matmul_and_bad_source():
    batched = DETECT_CASES["matmul"].replace("torch.rand(N, N)", "torch.rand(8, N, N)")
    transposed = DETECT_CASES["matmul"].replace("torch.matmul(A, B)", "torch.matmul(A.T, B)")
    assert detect_op(batched) is None
    assert detect_op(transposed) is None
    assert detect_op("def broken(:") is None
    assert detect_op("x = 1\n") is None


def test_op_family_groups_every_tag():
    assert {op: op_family(op) for op in OPS} == {
        "relu": "elementwise", "gelu": "elementwise",
        "softmax": "rowwise", "log_softmax": "rowwise", "layernorm": "rowwise", "rmsnorm": "rowwise",
        "sum_lastdim": "rowwise", "matmul": "matmul", "conv2d": "conv", "conv2d_relu_maxpool": "conv"}
    assert op_family(None) is None and op_family("fft") is None


def test_loader_uses_detected_op_and_params_for_files_without_metadata(tmp_path):
    problem = load_problem(write(tmp_path / "40_LayerNorm.py", DETECT_CASES["layernorm"]))
    assert (problem.op, problem.params) == ("layernorm", {"normalized_dims": 3, "eps": 1e-5})
    assert load_problem(write(tmp_path / "mixed.py", MIXED)).op is None
