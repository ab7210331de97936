"""How long one kernel build takes on the fast path (NVRTC or the C compiler), against one load_inline build.

    python bench/build_time.py [--backend cuda|cpu] [--n 20] [--inline] [--launch]

Builds N distinct row-softmax kernels (a different constant in each, in a fresh build directory, so nothing
is cached), then N cache hits of the same sources, and prints one JSON object with median / p90 seconds.
``--inline`` also times ONE ``torch.utils.cpp_extension.load_inline`` build of the equivalent kernel in a
fresh extensions directory: the KernelBench baseline the fast path replaces (CPU: ``cpp_sources`` only).
The CUDA fast path needs no GPU (set KERNELCRAFT_CUDA_ARCH, e.g. sm_90a); the CUDA inline build needs nvcc
and a CUDA build of torch. When a device can run the kernel, the first one is checked against torch.softmax.
``--launch`` (cuda, on a GPU) adds the host-side cost of one launch, next to an in-place torch.relu_.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CUDA_SRC = r'''
#define SCALE {scale}f
extern "C" __global__ void softmax_rows(const float* __restrict__ x, float* __restrict__ y,
                                        long long rows, long long cols) {
    __shared__ float red[32];
    long long row = blockIdx.x;
    if (row >= rows) return;
    const float* xr = x + row * cols;
    float* yr = y + row * cols;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;

    float m = -__int_as_float(0x7f800000);
    for (long long j = threadIdx.x; j < cols; j += blockDim.x) m = fmaxf(m, xr[j] * SCALE);
    for (int o = 16; o; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if (lane == 0) red[warp] = m;
    __syncthreads();
    if (warp == 0) {
        m = lane < warps ? red[lane] : -__int_as_float(0x7f800000);
        for (int o = 16; o; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
        if (lane == 0) red[0] = m;
    }
    __syncthreads();
    m = red[0];
    __syncthreads();

    float s = 0.f;
    for (long long j = threadIdx.x; j < cols; j += blockDim.x) s += __expf(xr[j] * SCALE - m);
    for (int o = 16; o; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) red[warp] = s;
    __syncthreads();
    if (warp == 0) {
        s = lane < warps ? red[lane] : 0.f;
        for (int o = 16; o; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (lane == 0) red[0] = s;
    }
    __syncthreads();
    float inv = 1.f / red[0];
    for (long long j = threadIdx.x; j < cols; j += blockDim.x) yr[j] = __expf(xr[j] * SCALE - m) * inv;
}
'''

C_SRC = r'''
#include <stdint.h>
#include <math.h>
#define SCALE {scale}f
void softmax_rows(const float* x, float* y, int64_t rows, int64_t cols) {
  #pragma omp parallel for
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    float* yr = y + r * cols;
    float m = -INFINITY, s = 0.f;
    for (int64_t j = 0; j < cols; ++j) m = fmaxf(m, xr[j] * SCALE);
    for (int64_t j = 0; j < cols; ++j) { yr[j] = expf(xr[j] * SCALE - m); s += yr[j]; }
    float inv = 1.f / s;
    #pragma omp simd
    for (int64_t j = 0; j < cols; ++j) yr[j] *= inv;
  }
}
'''

INLINE_CPP = r'''
#include <torch/extension.h>
#include <cmath>
#define SCALE {scale}f
torch::Tensor softmax_rows(torch::Tensor x) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.scalar_type() == torch::kFloat, "2-D contiguous fp32");
  auto y = torch::empty_like(x);
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  int64_t rows = x.size(0), cols = x.size(1);
  #pragma omp parallel for
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = xp + r * cols;
    float* yr = yp + r * cols;
    float m = -INFINITY, s = 0.f;
    for (int64_t j = 0; j < cols; ++j) m = std::fmax(m, xr[j] * SCALE);
    for (int64_t j = 0; j < cols; ++j) { yr[j] = std::exp(xr[j] * SCALE - m); s += yr[j]; }
    for (int64_t j = 0; j < cols; ++j) yr[j] /= s;
  }
  return y;
}
'''

INLINE_CUDA_DECL = "torch::Tensor softmax_rows(torch::Tensor x);"
INLINE_CUDA = "#include <torch/extension.h>\n" + CUDA_SRC.replace("void softmax_rows(", "void softmax_kernel(") + r'''
torch::Tensor softmax_rows(torch::Tensor x) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 2 && x.is_contiguous(), "2-D contiguous CUDA fp32");
  auto y = torch::empty_like(x);
  softmax_kernel<<<x.size(0), 256>>>(x.data_ptr<float>(), y.data_ptr<float>(), x.size(0), x.size(1));
  return y;
}
'''


def _summary(seconds: list[float]) -> dict[str, float]:
    return {"median": statistics.median(seconds), "p90": float(np.percentile(seconds, 90)),
            "min": min(seconds), "max": max(seconds)}


def _fill(template: str, scale: float) -> str:
    return template.replace("{scale}", repr(scale))


def _build_all(backend: str, sources: list[str]) -> tuple[list[float], list[object]]:
    from kernelcraft.harness.build import c_kernel, cuda_kernel

    make = cuda_kernel if backend == "cuda" else c_kernel
    seconds, kernels = [], []
    for src in sources:
        start = time.perf_counter()
        kernels.append(make(src, "softmax_rows"))
        seconds.append(time.perf_counter() - start)
    return seconds, kernels


def _check(backend: str, kernel: object, scale: float) -> float | None:
    """Max abs error of the first kernel against torch.softmax, or None when it cannot run here."""
    import torch

    if backend == "cuda" and not torch.cuda.is_available():
        return None
    device = "cuda" if backend == "cuda" else "cpu"
    x = torch.randn(64, 1000, device=device)
    y = torch.empty_like(x)
    if backend == "cuda":
        kernel(grid=(64,), block=(256,), args=(x, y, 64, 1000))  # type: ignore[operator]
        torch.cuda.synchronize()
    else:
        kernel(x, y, 64, 1000)  # type: ignore[operator]
    return float((y - torch.softmax(x * scale, dim=1)).abs().max())


def _inline_once(backend: str, scale: float, arch: str | None) -> dict[str, object]:
    """One load_inline build in a fresh extensions directory, with the env the workflow would give it."""
    from kernelcraft.harness.build import inline_build_env

    jobs = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="kc-inline-") as tmp:
        os.environ["KERNELCRAFT_BUILD_DIR"] = tmp
        env = inline_build_env(arch if backend == "cuda" else None, jobs)
        os.environ.update(env)
        from torch.utils.cpp_extension import load_inline

        name = f"kc_softmax_inline_{os.getpid()}_{int(scale * 1e6)}"
        start = time.perf_counter()
        try:
            if backend == "cuda":
                load_inline(name=name, cpp_sources=INLINE_CUDA_DECL, cuda_sources=_fill(INLINE_CUDA, scale),
                            functions=["softmax_rows"], extra_cuda_cflags=["-O3"], verbose=False)
            else:
                load_inline(name=name, cpp_sources=_fill(INLINE_CPP, scale), functions=["softmax_rows"],
                            extra_cflags=["-O3", "-fopenmp"], verbose=False)
        except Exception as exc:  # noqa: BLE001 - the baseline is optional; say why it is missing
            return {"seconds": None, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
        return {"seconds": time.perf_counter() - start, "jobs": jobs,
                "torch_cuda_arch_list": env.get("TORCH_CUDA_ARCH_LIST")}


def _launch_overhead_us(batches: int = 7, launches: int = 2000) -> dict[str, float] | None:
    """Host-side microseconds per launch of a 3-argument kernel (median batch), next to torch.relu_'s."""
    import torch

    from kernelcraft.harness.build import cuda_kernel

    if not torch.cuda.is_available():
        return None
    relu = cuda_kernel(_RELU_CU, "relu_k")
    x = torch.randn(4096, device="cuda")
    y = torch.empty_like(x)
    relu(grid=(16,), block=(256,), args=(x, y, 4096))  # loads the module
    torch.cuda.synchronize()

    def per_launch(fn: object) -> float:
        samples = []
        for _ in range(batches):
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(launches):
                fn()  # type: ignore[operator]
            samples.append((time.perf_counter() - start) / launches * 1e6)
            torch.cuda.synchronize()
        return statistics.median(samples)

    return {"cuda_kernel_us": per_launch(lambda: relu(grid=(16,), block=(256,), args=(x, y, 4096))),
            "torch_relu_inplace_us": per_launch(lambda: y.relu_())}


_RELU_CU = r'''
extern "C" __global__ void relu_k(const float* __restrict__ x, float* __restrict__ y, long long n) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i < n) y[i] = fmaxf(x[i], 0.f);
}'''


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--n", type=int, default=20, help="distinct kernels to build (default 20)")
    parser.add_argument("--inline", action="store_true", help="also time one load_inline build")
    parser.add_argument("--launch", action="store_true",
                        help="cuda on a GPU: also measure host-side overhead per launch")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be at least 1")

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import torch

    from kernelcraft.harness.build import build_stats, cuda_arch

    arch = cuda_arch() if args.backend == "cuda" else None
    template = CUDA_SRC if args.backend == "cuda" else C_SRC
    nonce = time.time_ns() % 997 / 1e6  # keeps sources distinct from any earlier run's too
    scales = [1.0 + i / 1000 + nonce for i in range(args.n)]
    sources = [_fill(template, s) for s in scales]
    result: dict[str, object] = {"backend": args.backend, "n": args.n, "arch": arch,
                                 "host": {"cpus": os.cpu_count(), "machine": platform.machine(),
                                          "torch": torch.__version__}}
    with tempfile.TemporaryDirectory(prefix="kc-build-") as tmp:
        os.environ["KERNELCRAFT_BUILD_DIR"] = tmp
        cold, kernels = _build_all(args.backend, sources)
        warm, _ = _build_all(args.backend, sources)
        stats = build_stats()
        assert not any(s["cache_hit"] for s in stats[: args.n]) and all(s["cache_hit"] for s in stats[args.n:])
        result["build_s"] = _summary(cold)
        result["cache_hit_s"] = _summary(warm)
        result["first_build_s"] = cold[0]  # includes loading NVRTC / the compiler's first run
        result["max_abs_err_vs_torch"] = _check(args.backend, kernels[0], scales[0])
    if args.backend == "cuda":
        from kernelcraft.harness.build.nvrtc import nvrtc_version

        result["nvrtc"] = nvrtc_version()
    if args.launch and args.backend == "cuda":
        with tempfile.TemporaryDirectory(prefix="kc-build-") as tmp:
            os.environ["KERNELCRAFT_BUILD_DIR"] = tmp
            result["launch_overhead"] = _launch_overhead_us()
    if args.inline:
        inline = _inline_once(args.backend, scales[0] + 0.5, arch)
        result["inline_build"] = inline
        if inline.get("seconds"):
            fast = statistics.median(cold)
            result["inline_over_fast_median"] = inline["seconds"] / fast  # type: ignore[operator]
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
