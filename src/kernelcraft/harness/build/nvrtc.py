"""CUDA C++ kernels compiled with NVRTC to a cubin and launched on torch's current stream.

Why not ``load_inline``: one nvcc + host-compiler extension build costs ~80 s, an NVRTC cubin ~0.05 s. Why a
cubin, not PTX: PTX from a newer NVRTC than the driver fails to load, while a cubin for the exact arch needs
no JIT at all. Compilation needs no GPU (the workflow compiles in CPU-only processes); loading the module is
deferred to the first launch, in the primary context torch uses, one module per device.
"""

from __future__ import annotations

import copy
import ctypes
import functools
import os
import re
import struct
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from kernelcraft.harness.build import (
    BuildError,
    build_dir,
    cache_key,
    cuda_arch,
    record_build,
    record_launch,
    scalar_arg,
    trim_log,
    write_atomic,
)

DEFAULT_OPTIONS = ("-default-device", "--std=c++17")
_STATIC_SMEM_LIMIT = 48 * 1024  # above this, dynamic shared memory needs an explicit per-function opt-in
_MAX_THREADS_PER_BLOCK = 1024
_SPARE_SLOTS = 32
_ZEROS = (ctypes.c_char * 4096)()  # what spare parameter slots point at (see _Layout)


# ----------------------------------------------------------------------------------------------- compiling

@functools.cache
def _nvrtc() -> Any:
    """cuda.bindings.nvrtc, imported on first use (it dlopens libnvrtc: ~0.1 s, paid once per process)."""
    try:
        from cuda.bindings import nvrtc
    except ImportError as exc:
        raise BuildError(f"NVRTC is unavailable ({exc}): "
                         "pip install cuda-bindings nvidia-cuda-nvrtc") from exc
    return nvrtc


@functools.cache
def nvrtc_version() -> str:
    """"13.0"-style NVRTC version; part of the cache key, since a new compiler may emit different code."""
    nvrtc = _nvrtc()
    err, major, minor = nvrtc.nvrtcVersion()
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise BuildError(f"nvrtcVersion failed: {err.name}")
    return f"{major}.{minor}"


@functools.cache
def include_dirs() -> tuple[str, ...]:
    """Directories holding cuda_fp16.h & co. and the CCCL headers they include, matching the installed CUDA.

    NVRTC knows only its builtins; ``#include <cuda_fp16.h>`` needs the CUDA runtime headers, found in the
    nvidia-* wheels, CUDA_HOME/CUDA_PATH, or /usr/local/cuda (cuda.pathfinder's search order).
    """
    dirs: list[str] = []
    try:
        from cuda import pathfinder

        for lib in ("cudart", "cccl"):
            found = pathfinder.find_nvidia_header_directory(lib)
            if found and found not in dirs:
                dirs.append(found)
    except Exception:  # noqa: BLE001 - header discovery is best effort; NVRTC reports a missing header clearly
        dirs = []
    if not dirs:
        for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
            if root and Path(root, "include", "cuda_fp16.h").is_file():
                dirs.append(str(Path(root, "include")))
                if Path(root, "include", "cccl").is_dir():
                    dirs.append(str(Path(root, "include", "cccl")))
                break
    return tuple(dirs)


def _check_options(options: Sequence[str], name: str) -> tuple[str, ...]:
    if isinstance(options, str) or not all(isinstance(o, str) for o in options):
        raise BuildError(f"kernel '{name}': options must be a sequence of strings, e.g. ['--use_fast_math']")
    for opt in options:
        if opt.startswith(("--gpu-architecture", "-arch")):
            raise BuildError(f"kernel '{name}': option {opt!r} is not allowed here: the arch comes from "
                             "KERNELCRAFT_CUDA_ARCH or the visible GPU")
    return tuple(options)


def compile_cubin(source: str, name: str, arch: str, options: Sequence[str],
                  includes: Sequence[str]) -> tuple[bytes, str]:
    """NVRTC-compile ``source`` for ``arch``; return (cubin, lowered name of kernel ``name``).

    The kernel is registered as a name expression, so ``name`` may be a C++ (mangled) or template kernel
    such as ``"gemm<128>"``, and a name that does not exist fails here, at compile time, not at launch.
    """
    nvrtc = _nvrtc()
    ok = nvrtc.nvrtcResult.NVRTC_SUCCESS
    number = int(arch[3:].rstrip("af"))
    err, supported = nvrtc.nvrtcGetSupportedArchs()
    if err == ok and number not in supported:
        listed = ", ".join(f"sm_{s}" for s in supported)
        raise BuildError(f"NVRTC {nvrtc_version()} cannot target {arch}; it supports {listed}: "
                         "set KERNELCRAFT_CUDA_ARCH accordingly")
    user_std = any(o.startswith(("--std", "-std")) for o in options)
    opts = [f"--gpu-architecture={arch}", *(o for o in DEFAULT_OPTIONS if not (user_std and "std" in o)),
            *(f"--include-path={d}" for d in includes), *options]
    prog_name = re.sub(r"\W", "_", name) + ".cu"
    err, prog = nvrtc.nvrtcCreateProgram(source.encode(), prog_name.encode(), 0, [], [])
    if err != ok:
        raise BuildError(f"nvrtcCreateProgram failed for kernel '{name}': {err.name}")
    try:
        (err,) = nvrtc.nvrtcAddNameExpression(prog, name.encode())
        if err != ok:
            raise BuildError(f"kernel name {name!r} is not a valid name expression: {err.name}")
        (result,) = nvrtc.nvrtcCompileProgram(prog, len(opts), [o.encode() for o in opts])
        if result != ok:
            log = _program_log(nvrtc, prog)
            hint = ""
            if "__nv_name_map" in log:
                hint = (f"no kernel named '{name}' in the source: pass the __global__ function's name "
                        "(for a template, with its arguments, e.g. 'k<128>')\n")
            elif "could not open source file" in log and not includes:
                hint = "CUDA headers not found: install the CUDA toolkit or set CUDA_HOME\n"
            raise BuildError(f"NVRTC could not compile kernel '{name}' for {arch} ({result.name}):\n"
                             f"{hint}{trim_log(log)}")
        err, lowered = nvrtc.nvrtcGetLoweredName(prog, name.encode())
        if err != ok or not lowered:
            raise BuildError(f"kernel '{name}': NVRTC found no lowered name ({err.name})")
        err, size = nvrtc.nvrtcGetCUBINSize(prog)
        if err != ok or size == 0:
            raise BuildError(f"kernel '{name}': NVRTC produced no cubin for {arch} ({err.name}); "
                             "is the arch a real sm_XY target?")
        cubin = bytes(size)
        (err,) = nvrtc.nvrtcGetCUBIN(prog, cubin)
        if err != ok:
            raise BuildError(f"kernel '{name}': nvrtcGetCUBIN failed: {err.name}")
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
    return cubin, lowered.decode()


def _program_log(nvrtc: Any, prog: Any) -> str:
    err, size = nvrtc.nvrtcGetProgramLogSize(prog)
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS or size <= 1:
        return ""
    buf = bytes(size)
    nvrtc.nvrtcGetProgramLog(prog, buf)
    return buf.rstrip(b"\x00").decode(errors="replace")


# ----------------------------------------------------------------------------------------------- driver

@functools.cache
def _driver() -> Any:
    from cuda.bindings import driver

    _check(driver, driver.cuInit(0), "cuInit")
    return driver


def _check(driver: Any, result: tuple, what: str, kernel: str = "") -> tuple:
    """Raise on a failed driver call with the CUresult's name; return the call's outputs otherwise."""
    err = result[0]
    if err != driver.CUresult.CUDA_SUCCESS:
        where = f" for kernel '{kernel}'" if kernel else ""
        raise BuildError(f"{what} failed{where}: {err.name}")
    return result[1:]


class _Loaded:
    """One device's view of the kernel: the module (kept alive), the function and its parameter sizes."""

    __slots__ = ("module", "function", "param_sizes", "max_dynamic_smem", "smem_optin")

    def __init__(self, module: Any, function: Any, param_sizes: tuple[int, ...] | None,
                 smem_optin: int) -> None:
        self.module = module
        self.function = function
        self.param_sizes = param_sizes
        self.max_dynamic_smem = _STATIC_SMEM_LIMIT
        self.smem_optin = smem_optin


# struct format characters with C natural alignment ("@"), matching the kernel's parameter layout
_FORMAT = {
    ctypes.c_void_p: "P", ctypes.c_bool: "?", ctypes.c_int8: "b", ctypes.c_uint8: "B", ctypes.c_int16: "h",
    ctypes.c_uint16: "H", ctypes.c_int32: "i", ctypes.c_uint32: "I", ctypes.c_int64: "q",
    ctypes.c_uint64: "Q", ctypes.c_float: "f", ctypes.c_double: "d",
}


class _Layout:
    """How one argument-type signature is packed for cuLaunchKernel's kernelParams.

    Each thread gets one parameter buffer and one pointer array into it, made once; a launch then costs a
    single ``struct.pack_into`` (the driver copies the parameters before cuLaunchKernel returns, so the
    buffer is free again for the thread's next launch).
    """

    __slots__ = ("struct", "offsets", "spare", "pointers", "packer", "local")

    def __init__(self, ctypes_list: tuple[type, ...], checked: bool) -> None:
        fields = [(f"a{i}", t) for i, t in enumerate(ctypes_list)]
        self.struct = type("KernelArgs", (ctypes.Structure,), {"_fields_": fields})
        self.offsets = tuple(getattr(self.struct, f).offset for f, _ in fields)
        self.packer = struct.Struct("@" + "".join(_FORMAT[t] for t in ctypes_list))
        assert self.packer.size <= ctypes.sizeof(self.struct)
        # When the driver cannot tell the kernel's parameters, too few arguments go unnoticed: spare slots
        # pointing at zeros make the driver read zeros rather than stray host memory (a segfault).
        self.spare = () if checked else (ctypes.addressof(_ZEROS),) * _SPARE_SLOTS
        self.pointers = ctypes.c_void_p * max(len(fields) + len(self.spare), 1)
        self.local = threading.local()

    def buffer(self) -> tuple[ctypes.Structure, int]:
        """This thread's (parameter buffer, address of its kernelParams array)."""
        local = self.local
        try:
            return local.buf, local.addr
        except AttributeError:
            buf = self.struct()
            base = ctypes.addressof(buf)
            local.pointers = self.pointers(*[base + off for off in self.offsets], *self.spare)
            local.buf, local.addr = buf, ctypes.addressof(local.pointers)
            return local.buf, local.addr


def _dim3(value: object, what: str, kernel: str, minimum: int) -> tuple[int, int, int]:
    if type(value) is tuple:  # the common case, checked cheaply: every launch pays for this
        n = len(value)
        if n == 1:
            dims = (value[0], 1, 1)
        elif n == 2:
            dims = (value[0], value[1], 1)
        else:
            dims = value  # type: ignore[assignment]
        if (len(dims) == 3 and type(dims[0]) is int and type(dims[1]) is int and type(dims[2]) is int
                and minimum <= dims[0] <= 0x7FFFFFFF and minimum <= dims[1] <= 0xFFFF
                and minimum <= dims[2] <= 0xFFFF):
            return dims  # type: ignore[return-value]
    if isinstance(value, int) and not isinstance(value, bool):
        given = (value,)
    elif isinstance(value, tuple | list) and 1 <= len(value) <= 3:
        given = tuple(value)
    else:
        raise TypeError(f"kernel '{kernel}': {what} must be a tuple of 1 to 3 ints, got {value!r}")
    for d in given:
        if isinstance(d, bool) or not isinstance(d, int) or d < minimum or d > 0x7FFFFFFF:
            raise ValueError(f"kernel '{kernel}': {what} {value!r} must hold ints >= {minimum}")
    return (given + (1, 1))[:3]  # type: ignore[return-value]


def _raw_stream(stream: object, kernel: str) -> int:
    if isinstance(stream, int):
        return stream
    handle = getattr(stream, "cuda_stream", None)  # torch.cuda.Stream / ExternalStream
    if isinstance(handle, int):
        return handle
    raise TypeError(f"kernel '{kernel}': stream must be a torch.cuda.Stream or a raw CUstream int, "
                    f"got {type(stream).__name__}")


class CudaKernel:
    """A compiled CUDA kernel: built (or found in the cache) on construction, loaded on the first launch."""

    def __init__(self, source: str, name: str, *, options: Sequence[str] = (), shared_mem: int = 0,
                 cache: bool = True) -> None:
        """``cache=False`` compiles in memory and never touches the build cache: for the trusted parent's own
        kernels, which must not load a cubin from a directory candidates' processes can write."""
        if not isinstance(source, str) or not source.strip():
            raise BuildError("cuda_kernel: source must be a non-empty string of CUDA C++")
        if not isinstance(name, str) or not name.strip():
            raise BuildError("cuda_kernel: name must be the __global__ function's name, e.g. 'relu_k'")
        if isinstance(shared_mem, bool) or not isinstance(shared_mem, int) or shared_mem < 0:
            raise BuildError(f"kernel '{name}': shared_mem={shared_mem!r} must be a byte count >= 0")
        self.name = name
        self.shared_mem = shared_mem
        self.options = _check_options(options, name)
        self.arch = cuda_arch()
        start = time.perf_counter()
        includes = include_dirs() if "#include" in source else ()
        self._image: bytes | None = None
        self.cubin_path: Path | None = None
        self.cache_hit = False
        if not cache:
            self._image, self.lowered_name = compile_cubin(source, name, self.arch, self.options, includes)
        else:
            key = cache_key(backend="cuda", source=source, name=name, arch=self.arch, options=self.options,
                            nvrtc=nvrtc_version(), includes=includes)
            folder = build_dir() / "cuda"
            folder.mkdir(exist_ok=True)
            self.cubin_path = folder / f"{key}.cubin"
            symbol_path = folder / f"{key}.sym"
            try:
                self.lowered_name = symbol_path.read_text() if self.cubin_path.is_file() else ""
            except OSError:
                self.lowered_name = ""
            self.cache_hit = bool(self.lowered_name)
            if not self.cache_hit:
                cubin, self.lowered_name = compile_cubin(source, name, self.arch, self.options, includes)
                # The symbol file goes first: a cubin on disk implies its symbol file is there too.
                write_atomic(symbol_path, self.lowered_name.encode())
                write_atomic(self.cubin_path, cubin)
        self.build_seconds = time.perf_counter() - start
        record_build(name, "cuda", self.build_seconds, self.cache_hit)
        self._loaded: dict[int, _Loaded] = {}
        self._layouts: dict[tuple[type, ...], _Layout] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"CudaKernel({self.name!r}, arch={self.arch!r}, cubin={str(self.cubin_path)!r})"

    @classmethod
    def from_cubin(cls, image: bytes, name: str, arch: str) -> CudaKernel:
        """A kernel (``extern "C"``, so its lowered name is its name) from a cubin compiled elsewhere: NVRTC
        initialises the CUDA driver on its first compile, so a process that must fork (the zygote) has the image
        compiled in a throwaway child and adopts the bytes."""
        kernel = cls.__new__(cls)
        kernel.name = kernel.lowered_name = name
        kernel.shared_mem, kernel.options, kernel.arch = 0, (), arch
        kernel._image, kernel.cubin_path, kernel.cache_hit, kernel.build_seconds = bytes(image), None, True, 0.0
        kernel._loaded, kernel._layouts, kernel._lock = {}, {}, threading.Lock()
        return kernel

    def sibling(self, name: str) -> CudaKernel:
        """Another ``extern "C"`` kernel of the same compiled source, without a second compile."""
        other = copy.copy(self)
        other.name = other.lowered_name = name
        other._loaded, other._layouts, other._lock = {}, {}, threading.Lock()
        return other

    # -- loading -------------------------------------------------------------------------------------

    def _load(self, device: int) -> _Loaded:
        with self._lock:
            if device in self._loaded:
                return self._loaded[device]
            driver = _driver()
            torch.cuda.init()
            (cu_device,) = _check(driver, driver.cuDeviceGet(device), "cuDeviceGet", self.name)
            # torch runs on the device's primary context; make it current on this thread before loading.
            (ctx,) = _check(driver, driver.cuDevicePrimaryCtxRetain(cu_device), "cuDevicePrimaryCtxRetain",
                            self.name)
            (current,) = _check(driver, driver.cuCtxGetCurrent(), "cuCtxGetCurrent", self.name)
            if int(current) != int(ctx):
                _check(driver, driver.cuCtxSetCurrent(ctx), "cuCtxSetCurrent", self.name)
            image = self._image if self._image is not None else self.cubin_path.read_bytes()
            err, module = driver.cuModuleLoadData(image)
            result = driver.CUresult
            if err in (result.CUDA_ERROR_NO_BINARY_FOR_GPU, result.CUDA_ERROR_INVALID_SOURCE):
                cc = torch.cuda.get_device_capability(device)
                raise BuildError(f"kernel '{self.name}' was built for {self.arch}, which cannot run on "
                                 f"cuda:{device} (compute capability {cc[0]}.{cc[1]}): set "
                                 "KERNELCRAFT_CUDA_ARCH to match the GPU, or unset it to detect the arch")
            _check(driver, (err,), "cuModuleLoadData", self.name)
            (function,) = _check(driver, driver.cuModuleGetFunction(module, self.lowered_name.encode()),
                                 "cuModuleGetFunction", self.name)
            attr = driver.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
            (optin,) = _check(driver, driver.cuDeviceGetAttribute(attr, cu_device), "cuDeviceGetAttribute",
                              self.name)
            loaded = _Loaded(module, function, self._param_sizes(driver, function), int(optin))
            if self.shared_mem > _STATIC_SMEM_LIMIT:
                self._allow_dynamic_smem(driver, loaded, self.shared_mem, device)
            self._loaded[device] = loaded
            return loaded

    def _param_sizes(self, driver: Any, function: Any) -> tuple[int, ...] | None:
        """Byte size of each kernel parameter, to check launches against; None where the driver can't say.

        cuFuncGetParamCount is newer (CUDA 13.1) than cuFuncGetParamInfo (12.4); without a count, the
        parameters are walked until the driver reports an index past the last one.
        """
        ok = driver.CUresult.CUDA_SUCCESS
        count: int | None = None
        try:
            err, value = driver.cuFuncGetParamCount(function)
            if err == ok:
                count = int(value)
        except Exception:  # noqa: BLE001 - the binding or the driver lacks the call: walk instead
            count = None
        sizes: list[int] = []
        try:
            while count is None or len(sizes) < count:
                err, _offset, size = driver.cuFuncGetParamInfo(function, len(sizes))
                if err != ok:
                    if count is None and err == driver.CUresult.CUDA_ERROR_INVALID_VALUE:
                        break  # one past the last parameter
                    return None
                sizes.append(int(size))
                if len(sizes) > 4096:
                    return None
        except Exception:  # noqa: BLE001 - too old for parameter queries; launches still work unchecked
            return None
        return tuple(sizes)

    def _allow_dynamic_smem(self, driver: Any, loaded: _Loaded, nbytes: int, device: int) -> None:
        if nbytes > loaded.smem_optin:
            raise ValueError(f"kernel '{self.name}' asks for {nbytes} bytes of dynamic shared memory; "
                             f"cuda:{device} allows at most {loaded.smem_optin} per block")
        attr = driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        _check(driver, driver.cuFuncSetAttribute(loaded.function, attr, nbytes),
               "cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)", self.name)
        loaded.max_dynamic_smem = nbytes

    # -- launching -----------------------------------------------------------------------------------

    def _layout(self, signature: tuple[type, ...], loaded: _Loaded, args: Sequence[object]) -> _Layout:
        sizes = loaded.param_sizes
        if sizes is not None:
            if len(sizes) != len(signature):
                raise TypeError(f"kernel '{self.name}' takes {len(sizes)} parameters but was launched with "
                                f"{len(signature)} arguments")
            for i, (ctype, size) in enumerate(zip(signature, sizes, strict=True), 1):
                have = ctypes.sizeof(ctype)
                if have != size:
                    what = "a tensor (device pointer)" if ctype is ctypes.c_void_p else \
                        f"{type(args[i - 1]).__name__} packed as {ctype.__name__[2:]}"
                    raise TypeError(f"kernel '{self.name}': argument {i} is {what}, {have} bytes, but "
                                    f"kernel parameter {i} is {size} bytes: Python int is int64 (declare "
                                    "long long), float is float32, bool is int32; pass a numpy scalar for "
                                    "other widths")
        layout = _Layout(signature, checked=sizes is not None)
        self._layouts[signature] = layout
        return layout

    def __call__(self, grid: object, block: object, args: Sequence[object] = (),
                 shared_mem: int | None = None, stream: object = None, cooperative: bool = False) -> None:
        """Launch on ``stream`` (default: torch's current stream on the current device), asynchronously.

        A grid with a zero dimension launches nothing (an empty tensor has no work), instead of the
        driver's invalid-value error. ``cooperative`` launches with cuLaunchCooperativeKernel: the driver
        guarantees every block is resident at once (or refuses the launch), which a kernel with a grid-wide
        barrier needs so that it cannot deadlock.
        """
        name = self.name
        gx, gy, gz = _dim3(grid, "grid", name, 0)
        bx, by, bz = _dim3(block, "block", name, 1)
        if bx * by * bz > _MAX_THREADS_PER_BLOCK:
            raise ValueError(f"kernel '{name}': block {block!r} has {bx * by * bz} threads; at most "
                             f"{_MAX_THREADS_PER_BLOCK} per block")
        if self._loaded:
            device = torch._C._cuda_getDevice()  # CUDA is initialised: skip current_device()'s lazy-init check
        else:
            if not torch.cuda.is_available():
                raise BuildError(f"kernel '{name}' was launched but no CUDA GPU is visible to torch; "
                                 "build-only processes may construct kernels but not call them")
            device = torch.cuda.current_device()
        loaded = self._loaded.get(device) or self._load(device)

        values: list[object] = []
        types: list[type] = []
        for i, arg in enumerate(args, 1):
            if isinstance(arg, torch.Tensor):
                if not arg.is_cuda:
                    raise TypeError(f"kernel '{name}': argument {i} is a {arg.device.type.upper()} tensor; "
                                    "pass a CUDA tensor")
                if arg.get_device() != device:
                    raise ValueError(f"kernel '{name}': argument {i} is on cuda:{arg.get_device()} but the "
                                     f"current device is cuda:{device}; launch under torch.cuda.device(...)")
                values.append(arg.data_ptr())
                types.append(ctypes.c_void_p)
            else:
                ctype, value = scalar_arg(arg, i, name, half_bits=True)
                values.append(value)
                types.append(ctype)
        signature = tuple(types)
        layout = self._layouts.get(signature) or self._layout(signature, loaded, args)

        smem = self.shared_mem if shared_mem is None else shared_mem
        if isinstance(smem, bool) or not isinstance(smem, int) or smem < 0:
            raise ValueError(f"kernel '{name}': shared_mem={smem!r} must be a byte count >= 0")
        if smem > loaded.max_dynamic_smem:
            with self._lock:
                if smem > loaded.max_dynamic_smem:
                    self._allow_dynamic_smem(_driver(), loaded, smem, device)
        if gx == 0 or gy == 0 or gz == 0:
            return
        if stream is None:
            raw_stream = torch._C._cuda_getCurrentRawStream(device)
        else:
            raw_stream = _raw_stream(stream, name)

        buf, params = layout.buffer()
        layout.packer.pack_into(buf, 0, *values)
        record_launch(name)
        driver = _driver()
        what = "cuLaunchCooperativeKernel" if cooperative else "cuLaunchKernel"

        def launch() -> tuple:
            if cooperative:
                return driver.cuLaunchCooperativeKernel(loaded.function, gx, gy, gz, bx, by, bz, smem, raw_stream,
                                                        params)
            return driver.cuLaunchKernel(loaded.function, gx, gy, gz, bx, by, bz, smem, raw_stream, params, 0)

        (err,) = launch()
        if err != driver.CUresult.CUDA_SUCCESS:
            if err == driver.CUresult.CUDA_ERROR_INVALID_CONTEXT:
                # This thread has not touched CUDA through torch yet: make the primary context current, retry.
                (cu_device,) = _check(driver, driver.cuDeviceGet(device), "cuDeviceGet", name)
                (ctx,) = _check(driver, driver.cuDevicePrimaryCtxRetain(cu_device),
                                "cuDevicePrimaryCtxRetain", name)
                _check(driver, driver.cuCtxSetCurrent(ctx), "cuCtxSetCurrent", name)
                (err,) = launch()
            _check(driver, (err,), what, name)
