"""The allow-list on a candidate's source, checked in the trusted parent without running it: every honest
candidate the project writes passes it, and each Python-level way to reach the evaluator is rejected with a reason
that names its line."""

from pathlib import Path

import pytest

from kernelcraft.harness.verify.static_checks import ALLOWED_MODULES, ALLOWED_TEXT, BUILD_NAMES, check_source
from kernelcraft.problems import builtin_dir, builtin_ids, load_problem
from kernelcraft.search import prompts
from kernelcraft.search.offline import OfflineProposer
from kernelcraft.search.offline_kernels import BACKENDS, candidate_source, generator
from kernelcraft.search.offline_kernels.catalogue import catalogue

TEMPLATES = Path(__file__).resolve().parents[1] / "workflow" / "templates"
EXAMPLES = TEMPLATES / "prompts" / "examples"

PRIVATE = "a private name (attributes starting with _ and names starting with __ are off limits, except __init__)"
INTERNALS = "which reaches interpreter internals (frames, code objects)"
EVALUATOR = "which changes or observes the evaluator (global settings, hooks, dispatch, profiling, compilers)"
NATIVE = "which loads native code, files or code from outside the candidate"
HOST = "which moves the work to numpy on the host"
PATCH = "candidates may not change modules or the objects they import"


def imports(line: int, module: str) -> str:
    return f"line {line}: imports {module}, which candidates may not use (allowed: {ALLOWED_TEXT})"


def builtin(line: int, name: str) -> str:
    return f"line {line}: uses the builtin {name}, which candidates may not use"


# -- honest candidates pass --------------------------------------------------------------------------------------


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_every_worked_example_in_the_prompts_passes(example):
    assert check_source((EXAMPLES / example).read_text()) == []


def _offline_sources(pid: str, backend: str) -> list[str]:
    """What the offline proposer can write for one problem: the baseline, every catalogue idea and every tunable
    value applied to it, and a first round of ideas with three implementations each."""
    proposer = OfflineProposer(0)
    problem = load_problem(builtin_dir() / f"{pid}.py", "small")
    if not proposer.supports(problem, backend):
        return []
    spec = proposer.spec(problem)
    gen = generator(spec.family, backend)
    base = gen.baseline(spec)
    features = [base] + [base | idea.delta for idea in catalogue(spec.family, backend)]
    features += [base | {key: value} for key, values in gen.TUNABLES.items() for value in values]
    sources = [candidate_source(spec, backend, f, "coverage", "reference") for f in features]
    reference = {"id": "reference"}
    for idea in proposer.ideas(problem, backend, [reference], [], 12, 1):
        sources += [c["source"] for c in proposer.implement(problem, backend, idea, reference, 3, 1)]
    return sources


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_candidate_the_offline_proposer_writes_passes(backend):
    checked = 0
    for pid in builtin_ids():
        for source in _offline_sources(pid, backend):
            assert check_source(source) == [], source
            checked += 1
    assert checked > 100  # the suite's elementwise and rowwise problems were all covered


KERNELBENCH_ADD = '''
import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

add_cuda_src = """
#include <torch/extension.h>
#include <cuda_runtime.h>

__global__ void add_kernel(const float* a, const float* b, float* out, int size) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < size) {
        out[i] = a[i] + b[i];
    }
}

torch::Tensor elementwise_add_cuda(torch::Tensor a, torch::Tensor b) {
    auto out = torch::zeros_like(a);
    int size = a.numel();
    const int block = 256;
    const int grid = (size + block - 1) / block;
    add_kernel<<<grid, block>>>(a.data_ptr<float>(), b.data_ptr<float>(), out.data_ptr<float>(), size);
    return out;
}
"""

add_cpp_src = "torch::Tensor elementwise_add_cuda(torch::Tensor a, torch::Tensor b);"

elementwise_add = load_inline(
    name="elementwise_add",
    cpp_sources=add_cpp_src,
    cuda_sources=add_cuda_src,
    functions=["elementwise_add_cuda"],
    verbose=False,
    extra_cflags=["-O3"],
    extra_ldflags=[""],
)


class ModelNew(nn.Module):
    def __init__(self) -> None:
        super(ModelNew, self).__init__()
        self.mod = elementwise_add

    def forward(self, a, b):
        return self.mod.elementwise_add_cuda(a.contiguous(), b.contiguous())
'''


def test_a_kernelbench_style_load_inline_kernel_passes():
    assert check_source(KERNELBENCH_ADD) == []


def test_ordinary_python_around_a_kernel_passes():
    source = '''
from __future__ import annotations

import functools
import math
import textwrap
from collections import OrderedDict
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kernelcraft.harness.build import BuildError, c_kernel, cuda_kernel

_cache = {}
SRC = textwrap.dedent("""
    extern "C" __global__ void k(float* y) {}
""")


@functools.lru_cache(maxsize=None)
def blocks(n: int) -> int:
    return max(1, math.ceil(n / 256))


class ModelNew(nn.Module):
    def __init__(self, dim: int, eps: Optional[float] = 1e-5):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.weight = nn.Parameter(torch.ones(dim))
        self.order = OrderedDict()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.empty_like(x)
        if not isinstance(x, torch.Tensor) or getattr(self, "weight") is None:
            raise BuildError(type(x).__name__)
        return y.view(-1)[: x.numel()].view_as(x), np.int32(x.shape[-1])


if __name__ == "__main__":
    pass
'''
    assert check_source(source) == []


def test_a_syntax_error_is_left_to_the_build_step():
    assert check_source("import sys\ndef broken(:\n") == []


# -- the contract checks keep their reasons ------------------------------------------------------------------------


def test_the_reference_and_fallback_reasons_are_unchanged_and_come_first():
    source = '''
import torch
import gc

class ModelNew(Model):
    def forward(self, x):
        try:
            return kernel(x)
        except Exception:
            return torch.softmax(Model()(x), dim=1)
'''
    assert check_source(source) == ["inherits from the reference Model", "calls the reference Model",
                                    "try/except fallback to PyTorch around the kernel", imports(3, "gc")]


# -- rule 1: imports ----------------------------------------------------------------------------------------------


def test_the_dispatch_mode_detector_cannot_be_imported():
    source = "import torch\nfrom torch.utils._python_dispatch import _get_current_dispatch_mode\n"
    assert check_source(source) == [imports(2, "torch.utils._python_dispatch")]


def test_importing_sys_to_clear_the_profiler_is_rejected_with_the_allowed_modules_listed():
    assert check_source("import sys; sys.setprofile(None)\n") == [
        "line 1: imports sys, which candidates may not use (allowed: torch, torch.nn and its submodules, "
        "torch.utils.cpp_extension, math, numpy, __future__, typing, functools, dataclasses, itertools, collections, "
        "textwrap; and cuda_kernel, c_kernel, BuildError from kernelcraft.harness.build)"]


@pytest.mark.parametrize("module", ["gc", "ctypes", "threading", "os", "importlib", "builtins", "time", "signal",
                                    "pickle", "subprocess", "multiprocessing", "inspect", "string", "torch._C",
                                    "torch._dynamo", "torch.utils", "torch.nn._reduction", "numpy.ctypeslib"])
def test_modules_outside_the_allow_list_cannot_be_imported(module):
    assert check_source(f"import torch\nimport {module} as m\n") == [imports(2, module)]


def test_importlib_cannot_be_reached_through_a_from_import_either():
    assert check_source("from importlib import import_module\n") == [imports(1, "importlib")]


def test_private_and_denied_names_cannot_be_imported_from_an_allowed_module():
    source = "from torch import nn, Tensor, _C, library\nfrom typing import get_type_hints\n"
    assert check_source(source) == [imports(1, "torch._C"), imports(1, "torch.library"),
                                    imports(2, "typing.get_type_hints")]


def test_the_evaluators_own_modules_cannot_be_imported():
    assert check_source("import kernelcraft.harness.verify.compare as cmp\n") == [
        imports(1, "kernelcraft.harness.verify.compare")]


def test_only_the_public_build_entry_points_come_from_kernelcraft():
    source = "from kernelcraft.harness.build import cuda_kernel, record_launch\nimport kernelcraft.harness.build\n"
    assert check_source(source) == [imports(1, "kernelcraft.harness.build.record_launch"),
                                    imports(2, "kernelcraft.harness.build")]


def test_relative_and_star_imports_are_rejected():
    assert check_source("from .helpers import k\nfrom torch import *\n") == [
        imports(1, ".helpers (a relative import)"),
        "line 2: imports * from torch; import the names it uses one by one"]


# -- rule 2: private names, interpreter internals, denied entry points --------------------------------------------


def test_a_private_torch_module_is_rejected_when_reached_by_attribute():
    source = "import torch\n\nwith torch.utils._python_dispatch._pop_mode_temporarily():\n    pass\n"
    assert check_source(source) == [f"line 3: uses torch.utils._python_dispatch, {PRIVATE}"]


def test_walking_to_a_class_and_its_mro_is_rejected():
    assert check_source("def f(x):\n    return x.__class__.__mro__\n") == [f"line 2: uses x.__class__, {PRIVATE}"]


def test_dunder_names_such_as_builtins_are_rejected():
    source = "b = __builtins__\nspec = __spec__\n"
    assert check_source(source) == [f"line 1: uses __builtins__, {PRIVATE}", f"line 2: uses __spec__, {PRIVATE}"]


def test_dunder_methods_other_than_init_cannot_be_defined():
    source = "import torch\n\nclass T(torch.Tensor):\n    def __torch_function__(cls, *a):\n        pass\n"
    assert check_source(source) == [f"line 4: defines __torch_function__, {PRIVATE}"]


def test_frame_walking_through_a_generator_is_rejected():
    source = "def caller():\n    g = (i for i in ())\n    return g.gi_frame.f_back.f_globals\n"
    assert check_source(source) == [f"line 3: uses g.gi_frame, {INTERNALS}"]


def test_loading_a_shared_library_through_numpy_is_rejected():
    source = "import numpy as np\n\nlib = np.ctypeslib.load_library('libx', '.')\n"
    assert check_source(source) == [f"line 3: uses np.ctypeslib, {NATIVE}"]


def test_handing_the_work_to_numpy_on_the_host_is_rejected():
    source = ("import torch\n\ndef forward(x):\n    y = x.numpy() * 2\n"
              "    return torch.from_numpy(y)\n")
    assert check_source(source) == [f"line 4: uses x.numpy, {HOST}", f"line 5: uses torch.from_numpy, {HOST}"]


@pytest.mark.parametrize("use", ["torch.set_num_threads(1)", "torch.set_float32_matmul_precision('medium')",
                                 "torch.use_deterministic_algorithms(True)", "torch.ops.aten.softmax(x, 1)",
                                 "torch.library.Library('aten', 'IMPL')", "torch.overrides.TorchFunctionMode",
                                 "torch.profiler.profile()", "torch.autograd.profiler.record_function('k')",
                                 "torch.jit.script(f)", "torch.compile(f)", "torch.fx.symbolic_trace(f)",
                                 "torch.utils.benchmark.Timer()", "torch.testing.assert_close(x, x)"])
def test_torch_entry_points_that_change_or_observe_the_evaluator_are_rejected(use):
    reasons = check_source(f"import torch\nx = f = None\ny = {use}\n")
    assert len(reasons) == 1 and reasons[0].startswith("line 3: uses ") and reasons[0].endswith(EVALUATOR)


@pytest.mark.parametrize("use", ["torch.cuda.Stream()", "torch.cuda.stream(None)", "torch.cuda.StreamContext(None)",
                                 "torch.cuda.ExternalStream(0)", "torch.Stream()"])
def test_work_on_a_stream_of_its_own_is_refused(use):
    # KernelBench's adversarial case: the work runs on a stream the timed stream's events never see.
    assert check_source(f"import torch\ns = {use}\n") == [
        "line 2: uses " + use.split("(")[0] + ", which runs work on a stream other than the one the kernel is timed on"]


def test_torch_backends_is_rejected_even_when_only_read():
    assert check_source("import torch\nflag = torch.backends.cudnn.benchmark\n") == [
        f"line 2: uses torch.backends, {EVALUATOR}"]


def test_reseeding_the_generators_is_rejected():
    assert check_source("import torch\ntorch.manual_seed(0)\n") == [
        "line 2: uses torch.manual_seed, which reseeds or reads the random generators the evaluator seeds"]


def test_loading_files_through_torch_is_rejected():
    assert check_source("import torch\nw = torch.load('ref.pt')\n") == [f"line 2: uses torch.load, {NATIVE}"]


# -- rule 3: builtins that run or find code by name ----------------------------------------------------------------


def test_exec_eval_and_dunder_import_are_rejected_as_calls_and_as_values():
    source = "exec('x = 1')\nv = eval('1')\nos = __import__('os')\nrun = eval\n"
    assert check_source(source) == [builtin(1, "exec"), builtin(2, "eval"), builtin(3, "__import__"),
                                    builtin(4, "eval")]


def test_getattr_with_a_computed_name_is_rejected():
    source = "import torch\nname = '_' + 'C'\nc = getattr(torch, name)\n"
    assert check_source(source) == [
        "line 3: calls getattr with a computed attribute name; write the attribute name as a literal"]


def test_getattr_with_a_literal_name_follows_the_attribute_rules():
    source = "import torch\nok = getattr(torch, 'float32')\nc = hasattr(torch, '_C')\n"
    assert check_source(source) == [f"line 3: uses torch._C, {PRIVATE}"]


def test_getattr_passed_as_a_value_is_rejected():
    source = "import functools\nimport torch\nc = functools.reduce(getattr, ['_C'], torch)\n"
    assert check_source(source) == [
        "line 3: uses the builtin getattr as a value; call it with a literal attribute name"]


def test_setattr_on_torch_is_rejected():
    source = "import torch\nsetattr(torch, 'softmax', lambda x, dim: x)\n"
    assert check_source(source) == [builtin(2, "setattr")]


def test_writing_into_vars_of_torch_is_rejected():
    source = "import torch\nvars(torch)['softmax'] = lambda x, dim: x\n"
    assert check_source(source) == [builtin(2, "vars")]


# -- rule 4: no patching of modules or imported objects -----------------------------------------------------------


def test_wrapping_torch_softmax_at_import_is_rejected():
    source = "import torch\n\n_real = torch.softmax\ntorch.softmax = lambda *a, **k: _real(*a, **k)\n"
    assert check_source(source) == [
        f"line 4: assigns to torch.softmax; {PATCH} (torch is bound by an import)"]


def test_flipping_a_backend_flag_inside_forward_is_rejected():
    source = '''import torch
import torch.nn as nn

class ModelNew(nn.Module):
    def forward(self, x):
        torch.backends.cuda.matmul.allow_tf32 = True
        return x
'''
    assert check_source(source) == [
        f"line 6: assigns to torch.backends.cuda.matmul.allow_tf32; {PATCH} (torch is bound by an import)",
        f"line 6: uses torch.backends, {EVALUATOR}"]


@pytest.mark.parametrize(("statement", "target", "bound"), [
    ("F.gelu = g", "F.gelu", "F is bound by an import"),
    ("nn.Module.forward = g", "nn.Module.forward", "nn is bound by an import"),
    ("math.pi += 1", "math.pi", "math is bound by an import"),
    ("np.x: int = 1", "np.x", "np is bound by an import"),
    ("Tensor.add = g", "Tensor.add", "Tensor is bound by an import"),
    ("t = torch\nt.softmax = g", "t.softmax", "t is an alias of torch"),
])
def test_assigning_to_an_attribute_of_an_imported_name_is_rejected(statement, target, bound):
    head = "import math\nimport numpy as np\nimport torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n" \
           "from torch import Tensor\ng = None\n"
    line = 8 + statement.count("\n")
    assert check_source(head + statement + "\n") == [f"line {line}: assigns to {target}; {PATCH} ({bound})"]


def test_deleting_a_module_attribute_is_rejected():
    assert check_source("import torch\ndel torch.softmax\n") == [
        f"line 2: deletes torch.softmax; {PATCH} (torch is bound by an import)"]


def test_assigning_to_self_and_to_local_objects_is_fine():
    source = '''import torch
import torch.nn as nn

class Box:
    pass

class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0
        self.w = nn.Parameter(torch.ones(4))
        self.w.requires_grad = False

    def forward(self, x):
        self.calls += 1
        box = Box()
        box.size = x.numel()
        return x
'''
    assert check_source(source) == []


def test_every_violation_is_reported_once_in_source_order():
    source = "import torch\ntorch.softmax = torch.softmax = None\nimport os\nimport os\n"
    assert check_source(source) == [f"line 2: assigns to torch.softmax; {PATCH} (torch is bound by an import)",
                                    imports(3, "os"), imports(4, "os")]


# -- the rules are stated to the models --------------------------------------------------------------------------


@pytest.mark.parametrize(("backend", "build_path"), [("cuda", "fast"), ("cpu", "fast"), ("cuda", "load_inline")])
def test_the_implement_prompt_states_the_allow_list(backend, build_path):
    problem = load_problem(builtin_dir() / "relu_4096x32768.py", "small")
    user = prompts.implement_messages(TEMPLATES, problem, backend, "hw", {"kind": "memory access", "text": "x"},
                                      {"id": "reference"}, build_path=build_path, policy="reject",
                                      tolerance={"atol": 1e-2, "rtol": 1e-2})[1].content
    for module in ALLOWED_MODULES - {"__future__", "collections.abc"}:
        assert f"`{module}`" in user, module
    for name in BUILD_NAMES:
        assert f"`{name}`" in user, name
    for rule in ("No private APIs", "No global settings", "No patching", "`torch.softmax = ...`", "`self._w`"):
        assert rule in user, rule


# -- rule 5: what the kernel sources call -----------------------------------------------------------------------

VENDOR = "a vendor library doing the work; the work must be the candidate's own kernel"


def _inline(cuda: str, ldflags: str = '""') -> str:
    return ('import torch\nfrom torch.utils.cpp_extension import load_inline\n\nSRC = """\n' + cuda + '\n"""\n'
            'ext = load_inline(name="k", cpp_sources="", cuda_sources=SRC, functions=["f"], '
            f'extra_ldflags=[{ldflags}])\n')


def test_a_kernel_that_hands_the_work_to_cublas_is_refused_with_its_line():
    source = _inline("#include <torch/extension.h>\n#include <cublas_v2.h>\n"
                     "torch::Tensor f(torch::Tensor a) {\n"
                     "    cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 1, 1, 1, 0, 0, 1, 0, 1, 0, 0, 1);\n    return a;\n}")
    assert check_source(source) == [f"line 6: the kernel source includes cublas_v2.h, {VENDOR}",
                                    f"line 8: the kernel source calls cublasSgemm, {VENDOR}"]


@pytest.mark.parametrize(("code", "reason"), [
    ("#include <cblas.h>", f"includes cblas.h, {VENDOR}"),
    ("y = cblas_sgemm(o, t, t, m, n, k, 1.f, a, k, b, n, 0.f, c, n);", f"calls cblas_sgemm, {VENDOR}"),
    ("cudnnConvolutionForward(h, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);", f"calls cudnnConvolutionForward, {VENDOR}"),
    ("auto c = at::native::mm(a, b);", "calls at::native::mm, an ATen entry point that bypasses the dispatcher the "
                                       "audit records"),
    ("void* h = dlopen(\"libopenblas.so\", 1);", "calls dlopen, which loads native code, files or code from outside "
                                                  "the candidate"),
])
def test_vendor_libraries_bypassed_dispatch_and_run_time_loading_are_refused(code, reason):
    assert check_source(_inline(code)) == [f"line 5: the kernel source {reason}"]


def test_linking_a_library_into_the_build_is_refused():
    assert check_source(_inline("int f() { return 0; }", '"-lcublas"')) == [
        "line 7: passes the linker flag '-lcublas', which links a library into the build; the work must be the "
        "candidate's own kernel"]


def test_the_c_maths_library_may_be_linked():
    source = 'from kernelcraft.harness.build import c_kernel\nk = c_kernel("", "f", options=["-O3", "-lm"])\n'
    assert check_source(source) == []


def test_naming_a_library_in_a_comment_or_using_the_current_stream_passes():
    source = _inline("// as fast as cuBLAS at this size (cublas is not called)\n#include <torch/extension.h>\n"
                     "torch::Tensor f(torch::Tensor a) {\n    auto s = at::cuda::getCurrentCUDAStream();\n"
                     "    return a;\n}")
    assert check_source(source) == []


PYTHON = "which reaches the interpreter the evaluator runs in; a kernel's host code only launches kernels"
OS = "which reaches the process or the OS (files, environment, threads, memory protection); a kernel never needs it"
ASIDE = ("which runs work on another stream, a graph or the host, where the timed stream's events do not see it; "
         "launch on at::cuda::getCurrentCUDAStream()")


@pytest.mark.parametrize(("code", "reason"), [
    ('PyRun_SimpleString("import torch");', f"calls PyRun_SimpleString, the Python C API, {PYTHON}"),
    ('auto m = PyImport_ImportModule("torch.cuda");', f"calls PyImport_ImportModule, the Python C API, {PYTHON}"),
    ('auto m = py::module_::import("torch");', f"uses py::module_::import, {PYTHON}"),
    ('obj.attr("elapsed_time") = fake;', f"uses .attr(, {PYTHON}"),
    ('py::exec("x = 1");', f"uses py::exec, {PYTHON}"),
    ('int fd = open("/dev/mem", 2);', f"calls open, {OS}"),
    ('const char* k = getenv("OPENAI_API_KEY");', f"calls getenv, {OS}"),
    ("mprotect(p, 4096, 7);", f"calls mprotect, {OS}"),
    ("std::thread t(spin);", f"uses std::thread, {OS}"),
    ('const char* p = "/proc/self/mem";', f"names /proc/self/mem, {OS}"),
    ("cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);", f"uses cudaStreamCreateWithFlags, {ASIDE}"),
    ("k<<<g, b, 0, cudaStreamPerThread>>>(x);", f"uses cudaStreamPerThread, {ASIDE}"),
    ("cudaLaunchHostFunc(s, cb, nullptr);", f"uses cudaLaunchHostFunc, {ASIDE}"),
    ('cuModuleLoadData(&m, image);', "calls cuModuleLoadData, which loads native code, files or code from outside "
                                     "the candidate"),
])
def test_host_code_that_reaches_the_interpreter_the_process_or_another_stream_is_refused(code, reason):
    # A load_inline extension's C++ runs in the candidate's process: through these it could patch the timer, read
    # the environment or hide work from the timed stream.
    assert check_source(_inline(code)) == [f"line 5: the kernel source {reason}"]


def test_a_kernelbench_style_extension_with_its_launch_checks_passes():
    source = _inline("#include <torch/extension.h>\n#include <c10/cuda/CUDAStream.h>\n"
                     "__global__ void k(const float* x, float* y, int n) {\n"
                     "    int i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) y[i] = x[i];\n}\n"
                     "torch::Tensor f(torch::Tensor x) {\n    auto y = torch::empty_like(x);\n"
                     "    int n = x.numel();\n"
                     "    cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, 0);\n"
                     "    k<<<(n + 255) / 256, 256, 0, at::cuda::getCurrentCUDAStream()>>>(x.data_ptr<float>(), "
                     "y.data_ptr<float>(), n);\n    C10_CUDA_KERNEL_LAUNCH_CHECK();\n"
                     "    cudaError_t e = cudaGetLastError();\n"
                     "    TORCH_CHECK(e == cudaSuccess, cudaGetErrorString(e));\n"
                     "    return y;\n}")
    assert check_source(source) == []
