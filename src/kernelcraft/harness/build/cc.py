"""C kernels for the CPU backend: built by the system C compiler into a shared library, called via ctypes.

The CPU backend lets the whole search run (and be tested) on machines without a GPU. Building is one
``cc`` invocation (~0.1-0.3 s) instead of a torch C++ extension build; the library is content-addressed under
``<build_dir>/c`` and loaded at construction, which is cheap and CPU-only.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from kernelcraft.harness.build import (
    BuildError,
    build_dir,
    cache_key,
    record_build,
    record_launch,
    scalar_arg,
    trim_log,
)

# -march=native: the library only ever runs on the machine that built it (the CPU identity is in the key).
# -Werror=implicit-function-declaration: a missing #include <math.h> would otherwise make expf() return int.
BASE_FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c11",
              "-Werror=implicit-function-declaration")
COMPILE_TIMEOUT_S = 300

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@functools.cache
def _compiler(cc: str) -> tuple[tuple[str, ...], str]:
    """(argv prefix, identity for the cache key) of the C compiler named by $CC, e.g. "cc" or "ccache gcc"."""
    argv = tuple(shlex.split(cc))
    exe = shutil.which(argv[0]) if argv else None
    if exe is None:
        raise BuildError(f"C compiler {cc!r} not found on PATH: install gcc/clang or set CC to one")
    real = os.path.realpath(exe)
    st = os.stat(real)
    return argv, f"{' '.join(argv)}|{real}|{st.st_size}|{st.st_mtime_ns}"


@functools.cache
def _cpu_identity() -> str:
    """Architecture plus the CPU model and feature flags: what -march=native code depends on."""
    parts = [platform.machine()]
    try:
        with open("/proc/cpuinfo") as fh:
            wanted = {"model name", "flags", "Features", "CPU part"}
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in wanted:
                    parts.append(value.strip())
                    wanted.discard(key.strip())
                if not line.strip():
                    break  # the first processor's block is enough
    except OSError:
        pass
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def compile_shared_library(source: str, name: str, options: Sequence[str], output: Path) -> None:
    """Compile ``source`` into the shared library ``output``, renamed into place: parallel builds are safe."""
    argv, _ = _compiler(os.environ.get("CC", "").strip() or "cc")
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".build-") as tmp:
        src = Path(tmp, f"{name}.c")
        src.write_text(source)
        lib = Path(tmp, f"{name}.so")
        cmd = [*argv, *BASE_FLAGS, "-o", lib.name, src.name, *options, "-lm"]
        try:
            # LC_ALL=C: plain ASCII quotes in diagnostics, whatever the host's locale.
            proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S,
                                  env={**os.environ, "LC_ALL": "C"})
        except subprocess.TimeoutExpired as exc:
            raise BuildError(f"compiling C kernel '{name}' took over {COMPILE_TIMEOUT_S} s; aborted") from exc
        except OSError as exc:
            raise BuildError(f"cannot run C compiler {argv[0]!r}: {exc.strerror}; set CC") from exc
        if proc.returncode != 0:
            log = (proc.stderr + proc.stdout).replace(tmp + os.sep, "")
            raise BuildError(f"C compiler failed on kernel '{name}' (exit {proc.returncode}):\n"
                             f"{trim_log(log)}")
        os.replace(lib, output)


class CKernel:
    """A compiled C function: built (or found in the cache) and loaded on construction, called with ctypes.

    The argument signature is fixed by the first call (tensors become ``void*``, Python int ``int64_t``,
    float ``float``, bool ``int32_t``, numpy scalars their own type); later calls must match it, because
    ctypes would otherwise silently pass e.g. a float where the C code reads an int64.
    """

    def __init__(self, source: str, name: str, *, options: Sequence[str] = ()) -> None:
        if not isinstance(source, str) or not source.strip():
            raise BuildError("c_kernel: source must be a non-empty string of C11")
        if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
            raise BuildError(f"c_kernel: name {name!r} must be the C function's identifier, e.g. 'relu_k'")
        if isinstance(options, str) or not all(isinstance(o, str) for o in options):
            raise BuildError(f"kernel '{name}': options must be a sequence of strings, e.g. ['-ffast-math']")
        self.name = name
        self.options = tuple(options)
        start = time.perf_counter()
        _, compiler = _compiler(os.environ.get("CC", "").strip() or "cc")
        key = cache_key(backend="c", source=source, name=name, options=self.options, flags=BASE_FLAGS,
                        compiler=compiler, cpu=_cpu_identity())
        folder = build_dir() / "c"
        folder.mkdir(exist_ok=True)
        self.library_path = folder / f"{key}.so"
        self.cache_hit = self.library_path.is_file()
        if not self.cache_hit:
            compile_shared_library(source, name, self.options, self.library_path)
        try:
            library = ctypes.CDLL(str(self.library_path))
        except OSError as exc:
            raise BuildError(f"cannot load C kernel '{name}' from {self.library_path}: {exc}") from exc
        try:
            self._function = getattr(library, name)
        except AttributeError as exc:
            raise BuildError(f"C kernel '{name}' is not exported by its library: define a non-static "
                             f"function named {name}") from exc
        self._function.restype = None
        self._library = library
        self._signature: tuple[type, ...] | None = None
        self._lock = threading.Lock()
        self.build_seconds = time.perf_counter() - start
        record_build(name, "cpu", self.build_seconds, self.cache_hit)

    def __repr__(self) -> str:
        return f"CKernel({self.name!r}, library={str(self.library_path)!r})"

    def __call__(self, *args: object) -> None:
        """Run the function on the calling thread (ctypes releases the GIL; OpenMP pragmas fan out)."""
        name = self.name
        values: list[object] = []
        types: list[type] = []
        for i, arg in enumerate(args, 1):
            if isinstance(arg, torch.Tensor):
                if not arg.is_cpu:
                    raise TypeError(f"kernel '{name}': argument {i} is a {arg.device.type.upper()} tensor; "
                                    "c_kernel runs on the CPU: pass a CPU tensor")
                values.append(arg.data_ptr())
                types.append(ctypes.c_void_p)
            else:
                ctype, value = scalar_arg(arg, i, name, half_bits=False)
                values.append(value)
                types.append(ctype)
        signature = tuple(types)
        if signature != self._signature:
            self._fix_signature(signature)
        record_launch(name)
        self._function(*values)

    def _fix_signature(self, signature: tuple[type, ...]) -> None:
        with self._lock:
            if self._signature is None:
                self._function.argtypes = list(signature)
                self._signature = signature
                return
        fixed = self._signature
        if len(signature) != len(fixed):
            raise TypeError(f"kernel '{self.name}' was first called with {len(fixed)} arguments, now with "
                            f"{len(signature)}: the C signature is fixed by the first call")
        for i, (was, now) in enumerate(zip(fixed, signature, strict=True), 1):
            if was is not now:
                raise TypeError(f"kernel '{self.name}': argument {i} was {_c_name(was)} on the first call "
                                f"and is {_c_name(now)} now: pass the same type on every call")


_C_NAMES = {
    ctypes.c_void_p: "a tensor (pointer)", ctypes.c_float: "float", ctypes.c_double: "double",
    ctypes.c_bool: "bool", ctypes.c_int8: "int8_t", ctypes.c_int16: "int16_t", ctypes.c_int32: "int32_t",
    ctypes.c_int64: "int64_t", ctypes.c_uint8: "uint8_t", ctypes.c_uint16: "uint16_t",
    ctypes.c_uint32: "uint32_t", ctypes.c_uint64: "uint64_t",
}


def _c_name(ctype: type) -> str:
    return _C_NAMES.get(ctype, ctype.__name__)
