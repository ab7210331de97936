"""The evaluator's own GPU kernels: the comparator's checks, and the in-place renewal of inputs. One fused kernel
per operation instead of a dozen PyTorch ops per slice.

Why: comparing a 1 GiB output slice by slice with PyTorch ops launched ~1,400 kernels and took ~48 ms of the
parent's time per hand-over (H200, softmax 4096x65536: 13 s of a 39 s round of 32 candidates), nearly all of it
launch overhead with the GPU idle, and each slice's temporaries were memory beside the outputs; renewing a 6 GB
input with PyTorch ops before every timed call would have been ~4,000 launches a call. Here each operation reads
(and, for the renewal, writes) its tensors once and keeps nothing but a few accumulators.

The source is compiled in memory with NVRTC (``cache=False``), never loaded from the build cache: candidates'
processes can write there, and a planted cubin would be the comparator. The worker compiles it once before it forks
(NVRTC needs no CUDA context), so every candidate process inherits the image. The comparator's figures match
``compare._compare_floats`` (same elementwise rule, same accumulations); tensors these kernels do not take (CPU,
non-contiguous, complex) go the PyTorch way. The renewal's coins come from a hash of the element's index, not from
PyTorch's generator, so they differ from the CPU path's; both processes of a job run the same path.
"""

from __future__ import annotations

import threading
from typing import Any

_SOURCE = r"""
typedef unsigned long long u64;

template <typename W> __device__ __forceinline__ W load_as(const float* p, long long i, int) { return (W)p[i]; }
template <typename W> __device__ __forceinline__ W load_as(const double* p, long long i, int) { return (W)p[i]; }
template <typename W> __device__ __forceinline__ W load_as(const unsigned short* p, long long i, int bf16) {
    unsigned short h = p[i];
    if (bf16) return (W)__uint_as_float(((unsigned int)h) << 16);
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return (W)f;
}

template <typename W>
__device__ __forceinline__ void check(W o, W r, W atol, W rtol, W floor, W stol, u64& bad, W& mabs, W& mrel,
                                      int& nok, int& nstrict) {
    bool finite_r = isfinite(r);
    bad += (!isfinite(o) && finite_r) ? 1ull : 0ull;
    bool same = (o == r) || (isnan(o) && isnan(r));
    W diff = same ? (W)0 : fabs(o - r);
    W ar = fabs(r);
    if (finite_r && !isnan(diff)) {
        mabs = fmax(mabs, diff);
        mrel = fmax(mrel, diff / fmax(ar, floor));
    }
    bool exact = same || finite_r;
    nok |= !(exact && diff <= atol + rtol * ar);
    nstrict |= !(exact && diff <= stol + stol * ar);
}

template <typename W>
__device__ void publish(u64 bad, W mabs, W mrel, int nok, int nstrict, u64* acc) {
    double a = (double)mabs, b = (double)mrel;
    for (int off = 16; off > 0; off >>= 1) {
        bad += __shfl_xor_sync(0xffffffffu, bad, off);
        a = fmax(a, __shfl_xor_sync(0xffffffffu, a, off));
        b = fmax(b, __shfl_xor_sync(0xffffffffu, b, off));
        nok |= __shfl_xor_sync(0xffffffffu, nok, off);
        nstrict |= __shfl_xor_sync(0xffffffffu, nstrict, off);
    }
    if ((threadIdx.x & 31) == 0) {
        if (bad) atomicAdd(acc + 0, bad);
        // Non-negative doubles order as their bit patterns do (+inf above every finite value).
        if (a > 0.0) atomicMax(acc + 1, (u64)__double_as_longlong(a));
        if (b > 0.0) atomicMax(acc + 2, (u64)__double_as_longlong(b));
        if (nok) atomicOr(acc + 3, 1ull);
        if (nstrict) atomicOr(acc + 4, 1ull);
    }
}

template <typename T, typename W>
__device__ void compare_as(const T* out, const T* ref, long long n, int bf16, double atol, double rtol, double floor,
                           double stol, u64* acc) {
    u64 bad = 0; W mabs = 0, mrel = 0; int nok = 0, nstrict = 0;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        check<W>(load_as<W>(out, i, bf16), load_as<W>(ref, i, bf16), (W)atol, (W)rtol, (W)floor, (W)stol, bad, mabs,
                 mrel, nok, nstrict);
    publish<W>(bad, mabs, mrel, nok, nstrict, acc);
}

// Elements whose bytes differ (any dtype, as unsigned words of its width): integer outputs, and inputs before and
// after a call (bit for bit, so a NaN input left alone is not "modified").
template <typename T>
__device__ void count_differ(const T* a, const T* b, long long n, u64* count) {
    u64 c = 0;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        c += (a[i] != b[i]) ? 1ull : 0ull;
    for (int off = 16; off > 0; off >>= 1) c += __shfl_xor_sync(0xffffffffu, c, off);
    if ((threadIdx.x & 31) == 0 && c) atomicAdd(count, c);
}

// In place: double what the coins of `undo` halved, then halve where the coins of `seed` say (either may be off).
// The coin of element i is the top bit of a SplitMix64 hash of (seed, i).
__device__ __forceinline__ u64 mix64(u64 z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

__device__ __forceinline__ float coin_factor(long long i, int has_undo, u64 undo, int has_seed, u64 seed) {
    u64 h = mix64((u64)i);
    float f = 1.f;
    if (has_undo && (mix64(undo ^ h) >> 63)) f = 2.f;
    if (has_seed && (mix64(seed ^ h) >> 63)) f *= 0.5f;
    return f;
}

extern "C" __global__ void kc_rehalve(void* x, long long n, int mode, int has_undo, u64 undo, int has_seed,
                                      u64 seed) {
    long long step = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        float f = coin_factor(i, has_undo, undo, has_seed, seed);
        if (f == 1.f) continue;
        if (mode == 0) {
            float* p = (float*)x; p[i] = p[i] * f;
        } else if (mode == 1) {
            double* p = (double*)x; p[i] = p[i] * (double)f;
        } else {
            unsigned short* p = (unsigned short*)x;
            float v = load_as<float>((const unsigned short*)p, i, mode == 3) * f;
            if (mode == 3) {
                p[i] = (unsigned short)(__float_as_uint(v) >> 16);  // exact: a power of two keeps the mantissa
            } else {
                unsigned short h;
                asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
                p[i] = h;
            }
        }
    }
}

// One entry point (one NVRTC compile per job): mode 0 float32, 1 float64, 2 float16, 3 bfloat16 compare within
// tolerance into acc[0..4]; modes 11, 12, 14, 18 count elements of 1, 2, 4, 8 bytes that differ into acc[0].
extern "C" __global__ void kc_check(const void* a, const void* b, long long n, int mode, double atol, double rtol,
                                    double floor, double stol, u64* acc) {
    switch (mode) {
        case 0: compare_as<float, float>((const float*)a, (const float*)b, n, 0, atol, rtol, floor, stol, acc); break;
        case 1: compare_as<double, double>((const double*)a, (const double*)b, n, 0, atol, rtol, floor, stol, acc);
                break;
        case 2: case 3:
            compare_as<unsigned short, float>((const unsigned short*)a, (const unsigned short*)b, n, mode == 3, atol,
                                              rtol, floor, stol, acc);
            break;
        case 11: count_differ<unsigned char>((const unsigned char*)a, (const unsigned char*)b, n, acc); break;
        case 12: count_differ<unsigned short>((const unsigned short*)a, (const unsigned short*)b, n, acc); break;
        case 14: count_differ<unsigned int>((const unsigned int*)a, (const unsigned int*)b, n, acc); break;
        case 18: count_differ<u64>((const u64*)a, (const u64*)b, n, acc); break;
    }
}
"""

_BLOCK = 256
_lock = threading.Lock()
_kernels: list[Any] = []


def compile_kernels() -> None:
    """Compile the source (one NVRTC program, in memory) once per process; both entry points come from it."""
    with _lock:
        if not _kernels:
            from kernelcraft.harness.build.nvrtc import CudaKernel

            check = CudaKernel(_SOURCE, "kc_check", cache=False)
            _kernels.extend([check, check.sibling("kc_rehalve")])


def cubin() -> tuple[bytes, str]:
    """The compiled image and its arch (compiling it first if needed): what :func:`adopt` takes elsewhere."""
    compile_kernels()
    return _kernels[0]._image, _kernels[0].arch


def adopt(image: bytes, arch: str) -> None:
    """Use an image compiled by another process (see ``CudaKernel.from_cubin``) instead of compiling here."""
    from kernelcraft.harness.build.nvrtc import CudaKernel

    with _lock:
        if not _kernels:
            check = CudaKernel.from_cubin(image, "kc_check", arch)
            _kernels.extend([check, check.sibling("kc_rehalve")])


def _kernel(which: int = 0) -> Any:
    if not _kernels:
        compile_kernels()
    return _kernels[which]


def _grid(n: int, device: Any) -> int:
    import torch

    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min((n + _BLOCK - 1) // _BLOCK, sms * 8))


def takes(a: Any, b: Any) -> bool:
    """Whether this path compares ``a`` with ``b``: both on one CUDA device, contiguous, of one dtype."""
    return (a.is_cuda and b.is_cuda and a.device == b.device and a.dtype == b.dtype and a.is_contiguous()
            and b.is_contiguous() and a.numel() == b.numel() and not a.is_complex())


_FLOAT_MODES = {"torch.float32": 0, "torch.float64": 1, "torch.float16": 2, "torch.bfloat16": 3}


def takes_floats(out: Any, ref: Any) -> bool:
    return takes(out, ref) and str(ref.dtype) in _FLOAT_MODES


def _launch(a: Any, b: Any, mode: int, acc: Any, tols: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0)) -> None:
    import numpy as np
    import torch

    with torch.cuda.device(a.device):
        _kernel()(grid=(_grid(a.numel(), a.device),), block=(_BLOCK,),
                  args=(a, b, a.numel(), np.int32(mode), *(np.float64(t) for t in tols), acc))


def compare_floats(out: Any, ref: Any, atol: float, rtol: float, floor: float, strict_tol: float) -> dict:
    """``compare._compare_floats``'s figures for two contiguous CUDA tensors of one floating dtype."""
    import numpy as np
    import torch

    acc = torch.zeros(5, dtype=torch.int64, device=ref.device)
    _launch(out, ref, _FLOAT_MODES[str(ref.dtype)], acc, (atol, rtol, floor, strict_tol))
    bad, abs_bits, rel_bits, not_ok, not_strict = acc.cpu().tolist()
    as_double = np.array([abs_bits, rel_bits], dtype=np.int64).view(np.float64)
    return {"bad": int(bad), "max_abs": float(as_double[0]), "max_rel": float(as_double[1]), "ok": not not_ok,
            "strict": not not_strict}


def count_differing(a: Any, b: Any) -> int:
    """Elements of ``a`` and ``b`` (contiguous CUDA tensors of one dtype) whose bytes differ."""
    import torch

    count = torch.zeros(1, dtype=torch.int64, device=a.device)
    _launch(a, b, 10 + a.element_size(), count)
    return int(count.item())


def takes_to_renew(t: Any) -> bool:
    """Whether :func:`rehalve` renews ``t`` here: a contiguous floating CUDA tensor of a dtype it knows."""
    return t.is_cuda and t.is_contiguous() and str(t.dtype) in _FLOAT_MODES


def rehalve(t: Any, undo: int | None, seed: int | None) -> None:
    """verify/trials.rehalve for one tensor, in one kernel (see the module's docstring for the coins)."""
    import numpy as np
    import torch

    with torch.cuda.device(t.device):
        _kernel(1)(grid=(_grid(t.numel(), t.device),), block=(_BLOCK,),
                   args=(t, t.numel(), np.int32(_FLOAT_MODES[str(t.dtype)]), np.int32(undo is not None),
                         np.uint64(undo or 0), np.int32(seed is not None), np.uint64(seed or 0)))
