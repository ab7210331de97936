"""Checks on a candidate's source text, made in the trusted parent without executing it.

They complement the run-time audit (judge/audit.py) for patterns that are wrong even when the path they guard is not
taken during verification: a try/except that would fall back to PyTorch when the kernel fails, and reuse of the
reference `Model` (inheriting from it or calling it).

They also hold the candidate to an allow-list. A candidate's process is hostile: in Python it can reach the
dispatch modes the audit installs, the profiler hooks timing relies on, the evaluator's modules and frames, and
torch's global settings. An honest kernel needs none of that -- it imports torch, builds its kernels and calls
them -- so rather than chase each attack, the check allows what honest kernels use and rejects the rest:

1. Imports: ``torch``, ``torch.nn`` and its submodules, ``torch.utils.cpp_extension``, ``math``, ``numpy``
   (scalar widths for kernel arguments), and stdlib that only shapes code: ``__future__``, ``typing``,
   ``functools``, ``dataclasses``, ``itertools``, ``collections``, ``textwrap`` (dedenting kernel source).
   ``string`` is left out (``string.Formatter().get_field`` walks attributes by name), and so is everything
   that touches the interpreter, the OS, threads or other modules. From kernelcraft only the public build
   entry points ``cuda_kernel``, ``c_kernel`` and ``BuildError`` (``record_launch`` and friends would let a
   candidate forge the audit's evidence). Relative and star imports are rejected.
2. Names: no attribute starting with ``_`` and no name starting with ``__`` (dunder methods defined included),
   except ``__init__`` (and reading ``__name__``). An exemption for ``self._x`` would not be safe: ``self`` is
   only a parameter name (``f(torch)`` makes it the module). Attributes that reach frames and code objects
   (``gi_frame``, ``f_back``...) and the torch/numpy entry points that change or observe the evaluator (global
   setters ``set_*``, ``torch.backends``, the profiler, dispatch overrides, compilers, ``torch.ops``), load
   native code or files (``ctypeslib``, ``load_library``, ``torch.load``), hand the work to numpy on the host
   (``.numpy()``, ``torch.from_numpy``), touch the random generators the evaluator seeds (``manual_seed``), or
   evaluate strings as code (``typing.get_type_hints``) are rejected by attribute name wherever they appear,
   so aliasing a module does not get around them.
3. Builtins that run or find code by name (``exec``, ``eval``, ``__import__``, ``vars``, ``setattr``...) are
   rejected as calls and as values; ``getattr``/``hasattr`` only with a literal name that rule 2 allows.
4. No assignment or deletion on a module or an imported object (``torch.softmax = f``), including through a
   plain alias (``t = torch``).

5. Kernel source text (every string in the file, since that is where CUDA, C and C++ sources live): no call into
   a vendor library that would do the work (cuBLAS, cuDNN, cuFFT, cuSPARSE, cuSOLVER, CBLAS, MKL, oneDNN,
   OpenBLAS) and none of their headers, no ATen entry points that bypass the dispatcher the audit records
   (``at::native::``, ``at::cpu::``, ``at::cuda::blas::``), no loading of libraries at run time (``dlopen``),
   and no linker flags (``-l``/``-L``) in a build's options. The work must be the candidate's own kernel. Host
   code (a ``load_inline`` extension's C++) runs in the candidate's process beside the evaluator's Python, so it
   may not reach that either: no Python C API (``PyRun_*``, ``PyObject_*``...) or pybind11's imports, ``eval`` and
   attribute access; no process, file, environment or thread calls (``system``, ``fork``, ``open``, ``getenv``,
   ``mprotect``, ``pthread_create``, ``std::thread``, ``/proc/...``); no streams, graphs or host callbacks of its
   own (``cudaStreamCreate``, ``cudaStreamPerThread``, ``cudaLaunchHostFunc``...): work the timed stream's events
   would not see.

This is a tripwire, not a sandbox: Python cannot be confined by reading it (a function parameter can alias a
module, and native code in a kernel can do anything). It turns the cheap Python-level routes into rejections
with a reason the repair prompt can act on; process isolation and the run-time audit remain the defence.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator

ALLOWED_MODULES = frozenset({
    "torch", "torch.nn", "torch.utils.cpp_extension", "math", "numpy",
    "__future__", "typing", "functools", "dataclasses", "itertools", "collections", "collections.abc", "textwrap",
})
ALLOWED_PACKAGES = ("torch.nn",)  # whose submodules may be imported too
BUILD_MODULE = "kernelcraft.harness.build"
BUILD_NAMES = frozenset({"cuda_kernel", "c_kernel", "BuildError"})
ALLOWED_TEXT = ("torch, torch.nn and its submodules, torch.utils.cpp_extension, math, numpy, __future__, typing, "
                "functools, dataclasses, itertools, collections, textwrap; and cuda_kernel, c_kernel, BuildError "
                f"from {BUILD_MODULE}")

ALLOWED_DUNDERS = frozenset({"__init__"})
READABLE_DUNDERS = frozenset({"__name__"})
PRIVATE = "a private name (attributes starting with _ and names starting with __ are off limits, except __init__)"

_INTERNALS = "which reaches interpreter internals (frames, code objects)"
_EVALUATOR = "which changes or observes the evaluator (global settings, hooks, dispatch, profiling, compilers)"
_NATIVE = "which loads native code, files or code from outside the candidate"
_HOST = "which moves the work to numpy on the host"
_RNG = "which reseeds or reads the random generators the evaluator seeds"
_EVAL = "which evaluates strings as code"
_STREAMS = "which runs work on a stream other than the one the kernel is timed on"
_DENIED: dict[str, tuple[str, ...]] = {
    _INTERNALS: ("f_back", "f_globals", "f_locals", "f_builtins", "f_code", "f_trace", "gi_frame", "gi_code",
                 "gi_yieldfrom", "cr_frame", "cr_code", "cr_await", "ag_frame", "ag_code", "ag_await",
                 "tb_frame", "tb_next"),
    _EVALUATOR: ("backends", "library", "overrides", "profiler", "jit", "compile", "compiler", "fx", "export",
                 "onnx", "benchmark", "testing", "ops", "multiprocessing", "distributed", "tunable",
                 "use_deterministic_algorithms"),
    _NATIVE: ("ctypeslib", "ctypes", "load_library", "cudart", "CUDAPluggableAllocator", "change_current_allocator",
              "hub", "package", "load", "save", "serialization", "from_file", "fromfile", "tofile", "memmap",
              "open_memmap", "loadtxt", "genfromtxt", "fromregex", "savetxt", "savez", "savez_compressed",
              "DataSource", "npyio", "f2py", "distutils", "gds"),
    _HOST: ("numpy", "from_numpy", "asarray", "frombuffer", "from_dlpack", "to_dlpack"),
    _RNG: ("manual_seed", "manual_seed_all", "seed", "seed_all", "initial_seed", "get_rng_state",
           "get_rng_state_all", "fork_rng", "default_generator"),
    _EVAL: ("get_type_hints", "ForwardRef", "singledispatch", "singledispatchmethod"),
    _STREAMS: ("Stream", "stream", "ExternalStream", "StreamContext"),
}
DENIED_ATTRS: dict[str, str] = {name: why for why, names in _DENIED.items() for name in names}
DENIED_PREFIXES: dict[str, str] = {"set_": _EVALUATOR, "register_module_": _EVALUATOR}

DENIED_BUILTINS = frozenset({"exec", "eval", "compile", "__import__", "open", "globals", "locals", "vars", "dir",
                             "breakpoint", "input", "help", "delattr", "setattr"})
NAMED_GETTERS = frozenset({"getattr", "hasattr"})

Finding = tuple[int, int, str]


def _model_new(tree: ast.Module) -> ast.ClassDef | None:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "ModelNew":
            return node
    return None


def _names(node: ast.AST) -> set[str]:
    out = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            out.add(sub.id)
        elif isinstance(sub, ast.Attribute):
            out.add(sub.attr)
    return out


def _contract_reasons(tree: ast.Module) -> list[str]:
    """The checks on the use of the reference and on fallbacks (reason strings without a line)."""
    reasons: list[str] = []
    cls = _model_new(tree)
    if cls is not None and "Model" in {n for b in cls.bases for n in _names(b)}:
        reasons.append("inherits from the reference Model")
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name | ast.Attribute):
            called = node.func.id if isinstance(node.func, ast.Name) else node.func.attr
            if called == "Model":
                reasons.append("calls the reference Model")
                break
    if cls is not None:
        for node in ast.walk(cls):
            if isinstance(node, ast.Try) and node.handlers:
                handled = set().union(*(_names(h) for h in node.handlers))
                only_reraise = all(all(isinstance(s, ast.Raise) for s in h.body) for h in node.handlers)
                if not only_reraise and handled & {"torch", "F", "functional", "super", "Model", "forward"}:
                    reasons.append("try/except fallback to PyTorch around the kernel")
                    break
    return reasons


# -- helpers --------------------------------------------------------------------------------------------------


def _at(node: ast.AST, text: str) -> Finding:
    return getattr(node, "lineno", 0), getattr(node, "col_offset", 0), f"line {getattr(node, 'lineno', 0)}: {text}"


def _text(node: ast.AST, limit: int = 80) -> str:
    text = ast.unparse(node)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def attribute_problem(name: str, load: bool = True) -> str | None:
    """Why an attribute called ``name`` is off limits (a phrase for the reason), or None when it is allowed."""
    if name.startswith("_"):
        return None if name in ALLOWED_DUNDERS or (load and name in READABLE_DUNDERS) else PRIVATE
    if name in DENIED_ATTRS:
        return DENIED_ATTRS[name]
    for prefix, why in DENIED_PREFIXES.items():
        if name.startswith(prefix):
            return why
    return None


def _private_name(name: str, load: bool = True) -> bool:
    """A bare name (not an attribute) that is off limits: dunders other than __init__ (and reading __name__)."""
    return name.startswith("__") and name not in ALLOWED_DUNDERS and not (load and name in READABLE_DUNDERS)


def module_allowed(module: str) -> bool:
    """Whether ``import module`` is allowed."""
    if module in ALLOWED_MODULES:
        return True
    if any(attribute_problem(part) for part in module.split(".")):  # torch.nn._reduction, ....parallel.distributed
        return False
    return any(module.startswith(package + ".") for package in ALLOWED_PACKAGES)


# -- rule 1: imports ----------------------------------------------------------------------------------------


def _not_allowed(node: ast.AST, module: str) -> Finding:
    return _at(node, f"imports {module}, which candidates may not use (allowed: {ALLOWED_TEXT})")


def _import_from(node: ast.ImportFrom) -> Iterator[Finding]:
    module = node.module or ""
    if node.level:
        yield _not_allowed(node, "." * node.level + module + " (a relative import)")
        return
    for alias in node.names:
        if alias.name == "*":
            yield _at(node, f"imports * from {module}; import the names it uses one by one")
        elif module == BUILD_MODULE:
            if alias.name not in BUILD_NAMES:
                yield _not_allowed(alias, f"{module}.{alias.name}")
        elif not module_allowed(module):
            yield _not_allowed(node, module)
        elif not module_allowed(f"{module}.{alias.name}") and attribute_problem(alias.name):
            yield _not_allowed(alias, f"{module}.{alias.name}")


def _import_findings(tree: ast.Module) -> Iterator[Finding]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not module_allowed(alias.name):
                    yield _not_allowed(alias, alias.name)
        elif isinstance(node, ast.ImportFrom):
            yield from _import_from(node)
        if isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                if alias.asname and _private_name(alias.asname, load=False):
                    yield _at(alias, f"uses {alias.asname}, {PRIVATE}")


# -- rule 2: private and denied names -----------------------------------------------------------------------


def _first_bad_link(node: ast.Attribute) -> tuple[ast.Attribute, str] | None:
    """The innermost attribute of a chain ``a.b.c`` that is off limits, with why."""
    chain = [node]
    while isinstance(chain[-1].value, ast.Attribute):
        chain.append(chain[-1].value)
    for link in reversed(chain):
        problem = attribute_problem(link.attr, load=isinstance(link.ctx, ast.Load))
        if problem:
            return link, problem
    return None


def _attribute_findings(tree: ast.Module) -> Iterator[Finding]:
    inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in inner:
            bad = _first_bad_link(node)
            if bad:
                yield _at(bad[0], f"uses {_text(bad[0])}, {bad[1]}")
        elif isinstance(node, ast.MatchClass):  # `case object(_C=x)` reads the attribute _C
            for name in node.kwd_attrs:
                problem = attribute_problem(name)
                if problem:
                    yield _at(node, f"uses {_text(node.cls)}({name}=...), {problem}")
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if _private_name(node.name, load=False):
                yield _at(node, f"defines {node.name}, {PRIVATE}")


# -- rule 3: builtins that run or find code by name ---------------------------------------------------------


def _getter_call(node: ast.Call, name: str) -> Finding | None:
    attr = node.args[1] if len(node.args) >= 2 else None
    if not (isinstance(attr, ast.Constant) and isinstance(attr.value, str)):
        return _at(node, f"calls {name} with a computed attribute name; write the attribute name as a literal")
    problem = attribute_problem(attr.value)
    return _at(node, f"uses {_text(node.args[0])}.{attr.value}, {problem}") if problem else None


def _name_findings(tree: ast.Module) -> Iterator[Finding]:
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in NAMED_GETTERS:
            finding = _getter_call(node, node.func.id)
            if finding:
                yield finding
        elif isinstance(node, ast.Name):
            if node.id in DENIED_BUILTINS:
                yield _at(node, f"uses the builtin {node.id}, which candidates may not use")
            elif node.id in NAMED_GETTERS and id(node) not in called:
                yield _at(node, f"uses the builtin {node.id} as a value; call it with a literal attribute name")
            elif _private_name(node.id, load=isinstance(node.ctx, ast.Load)):
                yield _at(node, f"uses {node.id}, {PRIVATE}")


# -- rule 4: no patching of modules or imported objects ------------------------------------------------------


def _root(expr: ast.expr) -> str | None:
    """The name an expression such as ``a.b[0].c`` or ``getattr(a, "b")`` reaches its object through, if any."""
    while True:
        if isinstance(expr, ast.Attribute | ast.Subscript):
            expr = expr.value
        elif (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id in NAMED_GETTERS
              and expr.args):
            expr = expr.args[0]
        elif isinstance(expr, ast.Name):
            return expr.id
        else:
            return None


def _pairs(target: ast.expr, value: ast.expr) -> Iterator[tuple[ast.expr, ast.expr]]:
    if isinstance(target, ast.Tuple | ast.List) and isinstance(value, ast.Tuple | ast.List) \
            and len(target.elts) == len(value.elts):
        for t, v in zip(target.elts, value.elts, strict=True):
            yield from _pairs(t, v)
    else:
        yield target, value


def _assignments(tree: ast.Module) -> Iterator[tuple[ast.expr, ast.expr]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                yield from _pairs(target, node.value)
        elif isinstance(node, ast.AnnAssign | ast.NamedExpr) and node.value is not None:
            yield node.target, node.value


def _bound_names(tree: ast.Module) -> dict[str, str]:
    """Names bound by imports, and plain aliases of them (``t = torch``), each with how it is bound."""
    bound: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                if alias.name != "*":
                    name = alias.asname or alias.name.split(".")[0]
                    bound[name] = f"{name} is bound by an import"
    changed = True
    while changed:
        changed = False
        for target, value in _assignments(tree):
            root = _root(value)
            if isinstance(target, ast.Name) and target.id not in bound and root in bound:
                bound[target.id] = f"{target.id} is an alias of {root}"
                changed = True
    return bound


def _store_findings(tree: ast.Module) -> Iterator[Finding]:
    bound = _bound_names(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute | ast.Subscript) and isinstance(node.ctx, ast.Store | ast.Del):
            root = _root(node.value)
            if root in bound:
                verb = "deletes" if isinstance(node.ctx, ast.Del) else "assigns to"
                yield _at(node, f"{verb} {_text(node)}; candidates may not change modules or the objects they "
                                f"import ({bound[root]})")


# -- rule 5: what the kernel sources call ------------------------------------------------------------------------

_VENDOR = "a vendor library doing the work; the work must be the candidate's own kernel"
_PYTHON = "which reaches the interpreter the evaluator runs in; a kernel's host code only launches kernels"
_OS = "which reaches the process or the OS (files, environment, threads, memory protection); a kernel never needs it"
_ASIDE = ("which runs work on another stream, a graph or the host, where the timed stream's events do not see it; "
          "launch on at::cuda::getCurrentCUDAStream()")
_NATIVE_TEXT: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b((?:cublas|cublasLt|cudnn|cufft|cusparse|cusolver|cblas_|mkl_|MKL_|dnnl_|openblas_)\w*)\s*\("),
     "calls {0}, " + _VENDOR),
    (re.compile(r"#\s*include\s*[<\"]((?:cublas|cudnn|cufft|cusparse|cusolver|cblas|mkl|dnnl|openblas|"
                r"ATen/cuda/CUDABlas|ATen/native/)[\w./]*)[>\"]"), "includes {0}, " + _VENDOR),
    (re.compile(r"\b(at::(?:native|cpu|cuda::blas)::\w+)"),
     "calls {0}, an ATen entry point that bypasses the dispatcher the audit records"),
    (re.compile(r"\b(dlopen|dlsym|dlmopen|dlvsym|LoadLibrary\w*|cuModuleLoad\w*|cuLibraryLoad\w*)\s*\("),
     "calls {0}, " + _NATIVE),
    # Host code runs inside the candidate's process, beside the evaluator's Python: these reach it, the process
    # and the OS, and none of them is needed to launch a kernel.
    (re.compile(r"\b(_?Py[A-Za-z]*_\w+)\s*\("),
     "calls {0}, the Python C API, " + _PYTHON),
    (re.compile(r"((?:\bpy|\bpybind11)::(?:module_?::import|exec|eval\w*|globals|getattr|setattr|delattr|hasattr|"
                r"reinterpret_\w+)\b|\.attr\s*\()"), "uses {0}, " + _PYTHON),
    (re.compile(r"\b(system|popen|fork|vfork|exec[lv]p?e?|posix_spawnp?|ptrace|mprotect|mmap|syscall|prctl|"
                r"getenv|secure_getenv|fopen|freopen|open|openat|pthread_create)\s*\("), "calls {0}, " + _OS),
    (re.compile(r"\b(std::(?:thread|jthread|async))\b"), "uses {0}, " + _OS),
    (re.compile(r"(/proc/[\w/]*)"), "names {0}, " + _OS),
    (re.compile(r"\b(cudaStreamCreate\w*|cuStreamCreate\w*|cudaStreamPerThread|CU_STREAM_PER_THREAD|"
                r"getStreamFromPool|getStreamFromExternal|setCurrentCUDAStream|cudaLaunchHostFunc|cuLaunchHostFunc|"
                r"cudaStreamAddCallback|cuStreamAddCallback|cudaGraphLaunch|cuGraphLaunch)\b"), "uses {0}, " + _ASIDE),
)
_LINKER_FLAG = re.compile(r"^\s*(-l\s*(?!m\s*$)\S+|-L\s*\S+|-Wl,.*)$")  # libm (-lm) is the C maths library


def _native_text_findings(tree: ast.Module) -> Iterator[Finding]:
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            continue
        text = node.value
        for pattern, why in _NATIVE_TEXT:
            for match in pattern.finditer(text):
                line = getattr(node, "lineno", 0) + text.count("\n", 0, match.start())
                yield line, 0, f"line {line}: the kernel source {why.format(match.group(1))}"
        flag = _LINKER_FLAG.match(text)
        if flag:
            yield _at(node, f"passes the linker flag {flag.group(1).strip()!r}, which links a library into the "
                            "build; " + _VENDOR.split("; ")[1])


# -- the check ------------------------------------------------------------------------------------------------


def _allow_list_reasons(tree: ast.Module) -> list[str]:
    findings = [*_import_findings(tree), *_attribute_findings(tree), *_name_findings(tree), *_store_findings(tree),
                *_native_text_findings(tree)]
    return list(dict.fromkeys(text for _, _, text in sorted(findings)))


def check_source(source: str) -> list[str]:
    """Reasons to reject found in the source; empty when none. A syntax error is left to the build step.

    The reference-use and fallback reasons come first (without a line), then every allow-list violation,
    "line N: ..." in source order, each once."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    except (RecursionError, MemoryError):
        return ["source is nested too deeply to check"]
    try:
        return _contract_reasons(tree) + _allow_list_reasons(tree)
    except RecursionError:
        return ["source is nested too deeply to check"]
