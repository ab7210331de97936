"""The build step: a candidate's kernel source in, compiled kernels out (cached by content, so the GPU jobs
only load what the CPU compile stage built). This package's own namespace is the candidates' public API
(``cuda_kernel``, ``c_kernel``, ``BuildError``), the one kernelcraft module the source allow-list lets them
import; ``nvrtc`` and ``cc`` are the backends, ``gpu`` the driver query for the target arch, and
``compile_round`` the compile stage that builds a round's candidates in sandboxed children.

The fast kernel build paths that candidates call at import time, and what they share.

Candidates write ``k = cuda_kernel(SRC, "name")`` (NVRTC, see ``nvrtc.py``) or ``k = c_kernel(SRC, "name")``
(the system C compiler, see ``cc.py``) at module level. The workflow's ``compile`` rule imports every
candidate in a CPU-only process so all compilation happens there, in parallel; the GPU ``verify`` rule
imports it again and must only hit the content-addressed cache under :func:`build_dir`. This module holds
the pieces both backends share (errors, cache location, atomic writes, argument typing, build statistics)
and the public facade; the backends are imported lazily so a CPU-only candidate never loads CUDA bindings.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kernelcraft.harness.build import gpu

if TYPE_CHECKING:
    from kernelcraft.harness.build.cc import CKernel
    from kernelcraft.harness.build.nvrtc import CudaKernel

__all__ = [
    "BuildError",
    "build_dir",
    "build_stats",
    "c_kernel",
    "cuda_arch",
    "cuda_kernel",
    "inline_build_env",
]

ENV_BUILD_DIR = "KERNELCRAFT_BUILD_DIR"
ENV_CUDA_ARCH = "KERNELCRAFT_CUDA_ARCH"

# Bump when the cache layout or the meaning of a cached artifact changes, so old entries are never reused.
CACHE_FORMAT = 1

_ARCH_RE = re.compile(r"^sm_(\d{1,2})(\d)([af]?)$")


class BuildError(RuntimeError):
    """A kernel could not be built or loaded; the message carries the trimmed compiler log."""


def build_dir() -> Path:
    """Root of the build cache: ``$KERNELCRAFT_BUILD_DIR``, else ``~/.cache/kernelcraft/build``; created."""
    root = os.environ.get(ENV_BUILD_DIR, "").strip()
    path = Path(root).expanduser() if root else Path.home() / ".cache" / "kernelcraft" / "build"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BuildError(f"cannot create build directory {path}: {exc.strerror}; "
                         f"set {ENV_BUILD_DIR} to a writable directory") from exc
    return path


def _check_arch(arch: str, origin: str) -> str:
    if not _ARCH_RE.match(arch):
        raise BuildError(f"{origin}={arch!r} is not a CUDA GPU arch: use the form sm_XY, "
                         "e.g. sm_90a or sm_80")
    return arch


def cuda_arch() -> str:
    """NVRTC target: ``$KERNELCRAFT_CUDA_ARCH`` if set, else the visible GPU's (``gpu.detect_cuda_arch``).

    The compile rule runs with no GPU visible, so the workflow exports the arch it detected on the GPU host;
    without either there is nothing sound to target, hence an error rather than a guess.
    """
    env = os.environ.get(ENV_CUDA_ARCH, "").strip()
    if env:
        return _check_arch(env, ENV_CUDA_ARCH)
    detected = gpu.detect_cuda_arch()
    if detected:
        return detected
    raise BuildError(f"no GPU visible to pick a CUDA arch: set {ENV_CUDA_ARCH} (e.g. sm_90a)")


def torch_arch(arch: str) -> str:
    """``sm_90a`` -> ``9.0a``, ``sm_80`` -> ``8.0``, ``sm_100`` -> ``10.0``: TORCH_CUDA_ARCH_LIST spelling."""
    m = _ARCH_RE.match(_check_arch(arch, "arch"))
    assert m is not None
    return f"{m[1]}.{m[2]}{m[3]}"


def inline_build_env(arch: str | None, jobs: int, root: Path | None = None) -> dict[str, str]:
    """Environment for KernelBench's ``torch.utils.cpp_extension.load_inline`` path.

    Extensions go under the build cache (so compile and verify share them, like the fast path's cache),
    are built for exactly one arch (building torch's default list multiplies the ~80 s build), and with
    ``jobs`` parallel compiler processes. ``arch=None`` uses :func:`cuda_arch` when one can be resolved and
    otherwise leaves TORCH_CUDA_ARCH_LIST unset (a CPU-only ``cpp_sources`` build needs none). ``root`` is the
    build cache to use (default :func:`build_dir`), for callers preparing another process's environment.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise BuildError(f"inline_build_env: jobs={jobs!r} must be a positive int (parallel compile jobs)")
    env = {"TORCH_EXTENSIONS_DIR": str((root or build_dir()) / "torch_extensions"), "MAX_JOBS": str(jobs)}
    if arch is None:
        try:
            arch = cuda_arch()
        except BuildError:
            return env
    env["TORCH_CUDA_ARCH_LIST"] = torch_arch(arch)
    return env


# ----------------------------------------------------------------------------------------------- stats

_stats_lock = threading.Lock()
_stats: list[dict] = []


def record_build(name: str, backend: str, seconds: float, cache_hit: bool) -> None:
    """Note one kernel built or taken from the cache in this process (read back by :func:`build_stats`)."""
    with _stats_lock:
        _stats.append({"name": name, "backend": backend, "seconds": seconds, "cache_hit": cache_hit})


_launches: dict[str, int] = {}


def record_launch(name: str) -> None:
    """Count one launch of a compiled kernel: the verifier's evidence that the candidate's own kernels ran."""
    _launches[name] = _launches.get(name, 0) + 1


def launch_counts() -> dict[str, int]:
    """Launches per kernel name in this process since the last :func:`reset_launch_counts`."""
    return dict(_launches)


def reset_launch_counts() -> None:
    _launches.clear()


def build_stats() -> list[dict]:
    """One entry per kernel built or loaded in this process: name, backend, seconds, cache_hit."""
    with _stats_lock:
        return [dict(s) for s in _stats]


# ----------------------------------------------------------------------------------------------- cache

def cache_key(**parts: object) -> str:
    """sha256 of every input that can change the artifact; JSON keeps the encoding unambiguous."""
    blob = json.dumps({"format": CACHE_FORMAT, **parts}, sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write via a temp file in the same directory and rename: parallel builders never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


_DIAG_START = re.compile(r"^\S.*?(\(\d+\)|:\d+:(\d+:)?):?\s*(catastrophic error|fatal error|error|warning)\b")


def trim_log(log: str, max_lines: int = 20) -> str:
    """The part of a compiler log worth reading: error diagnostics first, then warnings, at most max_lines.

    Compiler logs interleave warnings and errors and end with boilerplate; a candidate author (often a
    language model, fed this text back) needs the first errors with their source line and caret. A block
    is a diagnostic plus its continuation lines (source, caret, notes); other lines are dropped when
    there are errors to show.
    """
    blocks: list[list[str]] = []
    for line in log.replace("\x00", "").splitlines():
        if not line.strip():
            continue
        if _DIAG_START.match(line) or not blocks:
            blocks.append([])
        blocks[-1].append(line.rstrip())

    def rank(block: list[str]) -> int:
        match = _DIAG_START.match(block[0])
        if match is None:
            return 2
        return 1 if match[3] == "warning" else 0

    ranks = [rank(b) for b in blocks]
    keep = [r for r in ranks if r < 2] if 0 in ranks else ranks
    ordered = sorted((r, i) for i, r in enumerate(ranks) if r in keep)  # compiler order within a rank
    lines = [line for _, i in ordered for line in blocks[i]
             if not line.startswith(("Remark:", "Compilation terminated"))]
    if len(lines) > max_lines:
        lines = lines[:max_lines] + [f"... ({len(lines) - max_lines} more lines)"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- arguments

# Python scalars have one fixed kernel-side type each; numpy scalars keep their own width.
PY_SCALAR_CTYPES: dict[type, type] = {bool: ctypes.c_int32, int: ctypes.c_int64, float: ctypes.c_float}

_NUMPY_CTYPES: dict[tuple[str, int], type] = {
    ("i", 1): ctypes.c_int8, ("i", 2): ctypes.c_int16, ("i", 4): ctypes.c_int32, ("i", 8): ctypes.c_int64,
    ("u", 1): ctypes.c_uint8, ("u", 2): ctypes.c_uint16, ("u", 4): ctypes.c_uint32, ("u", 8): ctypes.c_uint64,
    ("f", 4): ctypes.c_float, ("f", 8): ctypes.c_double, ("b", 1): ctypes.c_bool,
}

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def describe(value: object) -> str:
    """Short type name for error messages (``np.float16``, ``str``...)."""
    if isinstance(value, np.generic):
        return f"np.{type(value).__name__}"
    return type(value).__name__


def scalar_arg(value: object, index: int, kernel: str, *, half_bits: bool) -> tuple[type, object]:
    """(ctypes type, value to store) for one non-tensor kernel argument, or a TypeError saying what to pass.

    ``index`` is 1-based as in the messages. ``half_bits`` lets np.float16 travel as its 16 raw bits,
    right for a CUDA ``__half`` parameter (copied bytewise), wrong for a C ABI call: only CUDA sets it.
    """
    kind = type(value)
    ctype = PY_SCALAR_CTYPES.get(kind)
    if ctype is not None:
        if kind is int and not _INT64_MIN <= value <= _INT64_MAX:  # type: ignore[operator]
            raise TypeError(f"argument {index} of kernel '{kernel}' is {value}, outside int64: "
                            "pass np.uint64(...) for unsigned 64-bit values")
        return ctype, value
    if isinstance(value, np.generic):
        dt = value.dtype
        if dt.kind == "f" and dt.itemsize == 2 and half_bits:
            return ctypes.c_uint16, int(value.view(np.uint16))
        ctype = _NUMPY_CTYPES.get((dt.kind, dt.itemsize))
        if ctype is not None:
            return ctype, value.item()
    raise TypeError(
        f"argument {index} of kernel '{kernel}' has unsupported type {describe(value)}: pass a torch.Tensor, "
        "a Python int (int64), float (float32) or bool (int32), or a numpy scalar such as np.int32/np.float64"
    )


# ----------------------------------------------------------------------------------------------- facade

def cuda_kernel(source: str, name: str, *, options: Sequence[str] = (), shared_mem: int = 0) -> CudaKernel:
    """Compile ``name`` from CUDA C++ ``source`` with NVRTC to a cubin for :func:`cuda_arch` (or reuse one).

    Loading onto the GPU is deferred to the first launch, so this works in a process with no GPU.
    ``shared_mem`` is the default dynamic shared memory per launch; above 48 KiB the kernel is opted in.
    """
    from kernelcraft.harness.build.nvrtc import CudaKernel

    return CudaKernel(source, name, options=options, shared_mem=shared_mem)


def c_kernel(source: str, name: str, *, options: Sequence[str] = ()) -> CKernel:
    """Compile ``name`` from C11 ``source`` with ``$CC``/``cc`` into a shared library (or reuse the cache)."""
    from kernelcraft.harness.build.cc import CKernel

    return CKernel(source, name, options=options)
