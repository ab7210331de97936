"""Ask the CUDA driver what GPUs this process can see, without torch and without a CUDA context.

The workflow resolves backend "auto" and the NVRTC target arch with these on every job, including CPU-only
ones, so they must be cheap (no torch import, no context creation: ``cuInit`` plus attribute queries only)
and must never raise: no driver library, no device, or ``CUDA_VISIBLE_DEVICES=""`` all simply mean "no GPU".
Caveat: ``cuInit`` runs in the calling process, and CUDA does not survive ``fork`` after ``cuInit``; a process
that forks children which use CUDA (the candidate zygote) must not call these (fork+exec is fine).
"""

from __future__ import annotations

import ctypes
import functools
import os

# CUdevice_attribute values from cuda.h (stable across CUDA versions).
_CC_MAJOR = 75
_CC_MINOR = 76


@functools.cache
def _driver() -> ctypes.CDLL | None:
    """libcuda, initialised, or None when there is no usable driver (memoised: the answer cannot change)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return None  # the driver would report no device anyway; skip loading it
    try:
        lib = ctypes.CDLL("libcuda.so.1")
        if lib.cuInit(ctypes.c_uint(0)) != 0:
            return None
        return lib
    except (OSError, AttributeError):
        return None


@functools.cache
def visible_cuda_devices() -> int:
    """Number of CUDA devices visible to this process (0 when there is no driver or no device)."""
    lib = _driver()
    if lib is None:
        return 0
    try:
        count = ctypes.c_int(0)
        if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return max(count.value, 0)
    except (OSError, AttributeError):
        return 0


@functools.cache
def detect_cuda_arch() -> str | None:
    """NVRTC target of visible device 0, e.g. "sm_80"; "sm_90a" for compute capability 9.0.

    9.0 gets the arch-specific "a" target so Hopper-only instructions (wgmma, setmaxnreg, TMA multicast)
    compile; a cubin for sm_90a runs only on 9.0 parts, which is exactly the device we detected. With
    several GPUs the first visible one decides: the workflow pins one GPU per evaluation process.
    """
    if visible_cuda_devices() < 1:
        return None
    lib = _driver()
    if lib is None:
        return None
    try:
        dev = ctypes.c_int(0)
        if lib.cuDeviceGet(ctypes.byref(dev), 0) != 0:
            return None
        major, minor = ctypes.c_int(0), ctypes.c_int(0)
        if lib.cuDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, dev) != 0:
            return None
        if lib.cuDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, dev) != 0:
            return None
    except (OSError, AttributeError):
        return None
    if major.value <= 0:
        return None
    if (major.value, minor.value) == (9, 0):
        return "sm_90a"
    return f"sm_{major.value}{minor.value}"
