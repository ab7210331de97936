"""The fast build paths: NVRTC cubins (built here without a GPU), C kernels run on CPU tensors, cache, errors.

GPU tests (marked ``gpu``) launch the kernels and skip cleanly when torch sees no CUDA device.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from kernelcraft.harness.build import (
    BuildError,
    build_dir,
    build_stats,
    c_kernel,
    cuda_arch,
    cuda_kernel,
    inline_build_env,
    trim_log,
)

RELU_CU = r'''
extern "C" __global__ void relu_k(const float* __restrict__ x, float* __restrict__ y, long long n) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i < n) y[i] = fmaxf(x[i], 0.f);
}'''

RELU_C = r'''
#include <stdint.h>
#include <math.h>
void relu_k(const float* x, float* y, int64_t n) {
  #pragma omp parallel for simd
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] > 0.f ? x[i] : 0.f;
}'''

SCALED_SUM_C = r'''
#include <stdint.h>
void scaled_sum(const float* x, float* out, float scale, int64_t n) {
  double acc = 0.0;
  #pragma omp parallel for reduction(+:acc)
  for (int64_t i = 0; i < n; ++i) acc += x[i];
  out[0] = (float)(acc * scale);
}'''

ELF_MAGIC = b"\x7fELF"
EM_CUDA = 190
SRC_DIR = str(Path(__file__).resolve().parents[1] / "src")

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private build cache and an explicit arch, as the compile rule runs (no GPU needed)."""
    root = tmp_path / "build"
    monkeypatch.setenv("KERNELCRAFT_BUILD_DIR", str(root))
    monkeypatch.setenv("KERNELCRAFT_CUDA_ARCH", "sm_90a")
    return root


def _run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": SRC_DIR, **env}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=full_env, timeout=120)


# ----------------------------------------------------------------------------------------------- CUDA, no GPU

def test_cuda_kernel_builds_an_sm90a_cubin_without_a_gpu(cache: Path) -> None:
    kernel = cuda_kernel(RELU_CU, "relu_k")
    data = kernel.cubin_path.read_bytes()
    assert kernel.cubin_path.parent == cache / "cuda"
    assert kernel.cubin_path.suffix == ".cubin" and len(kernel.cubin_path.stem) == 64
    assert data[:4] == ELF_MAGIC
    assert struct.unpack_from("<H", data, 18)[0] == EM_CUDA
    assert kernel.arch == "sm_90a" and kernel.lowered_name == "relu_k"
    assert build_stats()[-1]["name"] == "relu_k"
    assert build_stats()[-1]["backend"] == "cuda"
    assert build_stats()[-1]["cache_hit"] is False


def test_second_cuda_construction_hits_the_cache_quickly(cache: Path) -> None:
    first = cuda_kernel(RELU_CU, "relu_k")
    start = time.perf_counter()
    second = cuda_kernel(RELU_CU, "relu_k")
    elapsed = time.perf_counter() - start
    assert second.cubin_path == first.cubin_path
    assert second.cache_hit is True
    assert build_stats()[-1] == {"name": "relu_k", "backend": "cuda", "seconds": second.build_seconds,
                                 "cache_hit": True}
    assert elapsed < 0.05
    assert len(list((cache / "cuda").glob("*.cubin"))) == 1


def test_cuda_syntax_error_reports_the_offending_line(cache: Path) -> None:
    broken = RELU_CU.replace("threadIdx.x;", "threadIdx.x")  # missing ';' at the end of source line 3
    with pytest.raises(BuildError) as info:
        cuda_kernel(broken, "relu_k")
    message = str(info.value)
    assert "kernel 'relu_k'" in message and "sm_90a" in message
    assert 'relu_k.cu(4): error: expected a ";"' in message
    assert "if (i < n) y[i] = fmaxf(x[i], 0.f);" in message
    assert not list((cache / "cuda").glob("*.cubin"))


def test_cuda_cache_file_changes_with_source_options_and_arch(cache: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    base = cuda_kernel(RELU_CU, "relu_k").cubin_path
    other_source = cuda_kernel(RELU_CU.replace("0.f)", "0.5f)"), "relu_k").cubin_path
    other_options = cuda_kernel(RELU_CU, "relu_k", options=["--use_fast_math"]).cubin_path
    monkeypatch.setenv("KERNELCRAFT_CUDA_ARCH", "sm_80")
    other_arch = cuda_kernel(RELU_CU, "relu_k")
    assert len({base, other_source, other_options, other_arch.cubin_path}) == 4
    assert struct.unpack_from("<H", other_arch.cubin_path.read_bytes(), 18)[0] == EM_CUDA


def test_cuda_template_kernel_is_found_by_name_and_a_missing_name_fails_at_build(cache: Path) -> None:
    src = RELU_CU.replace('extern "C" __global__ void relu_k', "template <int U> __global__ void relu_t")
    kernel = cuda_kernel(src, "relu_t<4>")
    assert kernel.lowered_name.startswith("_Z") and "relu_t" in kernel.lowered_name
    with pytest.raises(BuildError, match="no kernel named 'relu_k' in the source"):
        cuda_kernel(src, "relu_k")


def test_cuda_kernel_can_include_cuda_fp16(cache: Path) -> None:
    from kernelcraft.harness.build.nvrtc import include_dirs

    if not include_dirs():
        pytest.skip("no CUDA headers on this machine")
    src = "#include <cuda_fp16.h>\n" + r'''
extern "C" __global__ void half_relu(const __half* x, __half* y, long long n) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i < n) y[i] = __hmax(x[i], __float2half(0.f));
}'''
    assert cuda_kernel(src, "half_relu").cubin_path.read_bytes()[:4] == ELF_MAGIC


def test_cuda_arch_option_in_options_is_rejected(cache: Path) -> None:
    with pytest.raises(BuildError, match="KERNELCRAFT_CUDA_ARCH"):
        cuda_kernel(RELU_CU, "relu_k", options=["--gpu-architecture=sm_80"])


def test_cuda_arch_without_env_and_without_gpu_tells_user_what_to_set() -> None:
    proc = _run_python("""
        from kernelcraft.harness.build import BuildError, cuda_arch
        try:
            cuda_arch()
        except BuildError as exc:
            print(exc)
    """, {"CUDA_VISIBLE_DEVICES": "", "KERNELCRAFT_CUDA_ARCH": ""})
    assert proc.returncode == 0, proc.stderr
    expected = "no GPU visible to pick a CUDA arch: set KERNELCRAFT_CUDA_ARCH (e.g. sm_90a)"
    assert proc.stdout.strip() == expected


@pytest.mark.parametrize("bad", ["90", "sm90", "compute_90", "sm_9", "sm_90x"])
def test_malformed_arch_env_is_rejected(bad: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERNELCRAFT_CUDA_ARCH", bad)
    with pytest.raises(BuildError, match=f"KERNELCRAFT_CUDA_ARCH='{bad}' is not a CUDA GPU arch"):
        cuda_arch()


def test_gpu_probe_reports_nothing_when_no_device_is_visible() -> None:
    proc = _run_python("""
        import sys, time
        start = time.perf_counter()
        from kernelcraft.harness.build.gpu import detect_cuda_arch, visible_cuda_devices
        print(visible_cuda_devices(), detect_cuda_arch(), time.perf_counter() - start)
        print("torch" in sys.modules)
    """, {"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr
    count, arch, seconds = proc.stdout.split()[:3]
    assert (count, arch) == ("0", "None")
    assert float(seconds) < 1.0
    assert proc.stdout.split()[3] == "False"


def test_inline_build_env_maps_arches_and_points_into_the_build_dir(cache: Path) -> None:
    env = inline_build_env("sm_90a", 8)
    assert env == {"TORCH_EXTENSIONS_DIR": str(cache / "torch_extensions"), "TORCH_CUDA_ARCH_LIST": "9.0a",
                   "MAX_JOBS": "8"}
    assert inline_build_env("sm_80", 1)["TORCH_CUDA_ARCH_LIST"] == "8.0"
    assert inline_build_env("sm_86", 1)["TORCH_CUDA_ARCH_LIST"] == "8.6"
    assert inline_build_env("sm_100a", 1)["TORCH_CUDA_ARCH_LIST"] == "10.0a"
    assert inline_build_env(None, 2)["TORCH_CUDA_ARCH_LIST"] == "9.0a"  # from KERNELCRAFT_CUDA_ARCH
    with pytest.raises(BuildError, match="jobs=0 must be a positive int"):
        inline_build_env("sm_80", 0)
    with pytest.raises(BuildError, match="'9.0' is not a CUDA GPU arch"):
        inline_build_env("9.0", 1)


def test_build_dir_defaults_under_the_home_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KERNELCRAFT_BUILD_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert build_dir() == tmp_path / ".cache" / "kernelcraft" / "build"
    assert build_dir().is_dir()


def test_trim_log_puts_errors_first_and_caps_the_length() -> None:
    log = "\n".join([
        'k.cu(3): warning #177-D: variable "i" was declared but never referenced',
        "      long long i = 0;", "                ^", "",
        'k.cu(4): error: expected a ";"', "      y[i] = 0", "      ^", "",
        'Remark: The warnings can be suppressed with "-diag-suppress <warning-number>"', "",
        '1 error detected in the compilation of "k.cu".',
    ] + [f"k.cu({n}): error: more" for n in range(10, 40)])
    trimmed = trim_log(log).splitlines()
    assert trimmed[0] == 'k.cu(4): error: expected a ";"'
    assert len(trimmed) == 21 and trimmed[-1].startswith("... (")
    assert not any(line.startswith("Remark") for line in trimmed)


# ----------------------------------------------------------------------------------------------- C backend

def test_c_relu_runs_on_cpu_tensors(cache: Path) -> None:
    relu = c_kernel(RELU_C, "relu_k")
    x = torch.randn(10_001)
    y = torch.full_like(x, float("nan"))
    relu(x, y, x.numel())
    assert torch.equal(y, torch.relu(x))
    assert relu.library_path.parent == cache / "c" and relu.library_path.suffix == ".so"
    assert build_stats()[-1]["backend"] == "cpu"


def test_c_reduction_takes_a_float_and_an_int64_parameter(cache: Path) -> None:
    reduce = c_kernel(SCALED_SUM_C, "scaled_sum")
    x = torch.rand(100_000)
    out = torch.zeros(1)
    reduce(x, out, 0.25, x.numel())
    assert out.item() == pytest.approx(x.double().sum().item() * 0.25, rel=1e-5)
    reduce(x, out, 2.0, 10)  # int64 n really bounds the loop
    assert out.item() == pytest.approx(x[:10].double().sum().item() * 2.0, rel=1e-5)


def test_c_kernel_passes_numpy_scalars_at_their_own_width(cache: Path) -> None:
    src = r'''
#include <stdint.h>
void axpb(double* y, double a, int32_t b, uint8_t c, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = a * (double)i + b + c;
}'''
    axpb = c_kernel(src, "axpb")
    y = torch.zeros(5, dtype=torch.float64)
    axpb(y, np.float64(0.1), np.int32(-3), np.uint8(200), 5)
    assert y.tolist() == pytest.approx([0.1 * i - 3 + 200 for i in range(5)])


def test_c_kernel_argument_errors_say_what_to_pass(cache: Path) -> None:
    relu = c_kernel(RELU_C, "relu_k")
    x = torch.randn(4)
    with pytest.raises(TypeError, match=r"argument 3 of kernel 'relu_k' has unsupported type str: pass a "
                                        r"torch.Tensor"):
        relu(x, x, "4")
    with pytest.raises(TypeError, match="argument 2 is a META tensor; c_kernel runs on the CPU: pass a CPU "
                                        "tensor"):
        relu(x, torch.empty(4, device="meta"), 4)
    with pytest.raises(TypeError, match="outside int64"):
        relu(x, x, 2**64)
    relu(x, torch.empty_like(x), 4)  # fixes the signature: (pointer, pointer, int64)
    with pytest.raises(TypeError, match="argument 3 was int64_t on the first call and is float now"):
        relu(x, x, 4.0)
    with pytest.raises(TypeError, match="first called with 3 arguments, now with 2"):
        relu(x, x)
    with pytest.raises(TypeError, match="np.float16"):
        relu(x, x, np.float16(1))


def test_c_compile_error_raises_build_error_with_diagnostics(cache: Path) -> None:
    with pytest.raises(BuildError) as info:
        c_kernel(RELU_C.replace("? x[i] : 0.f", "? x[i] : zero"), "relu_k")
    message = str(info.value)
    assert message.startswith("C compiler failed on kernel 'relu_k'")
    assert "relu_k.c:6:" in message and "'zero' undeclared" in message
    assert str(cache) not in message  # temp paths are stripped


def test_c_implicit_function_declaration_is_an_error(cache: Path) -> None:
    with pytest.raises(BuildError, match="implicit"):
        no_math_h = RELU_C.replace("#include <math.h>", "")
        c_kernel(no_math_h.replace("x[i] > 0.f ? x[i] : 0.f", "fmaxf(x[i], 0.f)"), "relu_k")


def test_c_missing_function_is_a_build_error(cache: Path) -> None:
    with pytest.raises(BuildError, match="C kernel 'relu' is not exported by its library"):
        c_kernel(RELU_C, "relu")


def test_second_c_construction_hits_the_cache_quickly(cache: Path) -> None:
    first = c_kernel(RELU_C, "relu_k")
    start = time.perf_counter()
    second = c_kernel(RELU_C, "relu_k")
    elapsed = time.perf_counter() - start
    assert second.library_path == first.library_path and second.cache_hit is True
    assert build_stats()[-1]["cache_hit"] is True
    assert elapsed < 0.05


def test_concurrent_builds_of_one_kernel_leave_one_complete_artifact(cache: Path) -> None:
    errors: list[BaseException] = []

    def build_one() -> None:
        try:
            c_kernel(SCALED_SUM_C, "scaled_sum")
            cuda_kernel(RELU_CU, "relu_k")
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=build_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(list((cache / "c").iterdir())) == 1
    assert sorted(p.suffix for p in (cache / "cuda").iterdir()) == [".cubin", ".sym"]


def test_a_gpu_less_build_process_fills_the_cache_the_next_process_hits(cache: Path) -> None:
    code = f"""
        from kernelcraft.harness.build import build_stats, c_kernel, cuda_kernel
        cuda_kernel({RELU_CU!r}, "relu_k")
        c_kernel({RELU_C!r}, "relu_k")
        print([s["cache_hit"] for s in build_stats()])
    """
    proc = _run_python(code, {"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[False, False]"
    assert cuda_kernel(RELU_CU, "relu_k").cache_hit and c_kernel(RELU_C, "relu_k").cache_hit


def test_c_kernels_never_load_the_nvrtc_backend(tmp_path: Path) -> None:
    proc = _run_python(f"""
        import sys
        from kernelcraft.harness.build import c_kernel
        c_kernel({RELU_C!r}, "relu_k")
        print("kernelcraft.harness.build.nvrtc" in sys.modules)
    """, {"KERNELCRAFT_BUILD_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


# ----------------------------------------------------------------------------------------------- GPU

@pytest.fixture
def gpu_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cache; the arch is detected from the GPU, as the evaluate rule may do."""
    monkeypatch.setenv("KERNELCRAFT_BUILD_DIR", str(tmp_path / "build"))
    monkeypatch.delenv("KERNELCRAFT_CUDA_ARCH", raising=False)
    return tmp_path / "build"


@pytest.mark.gpu
@needs_gpu
def test_relu_launch_matches_torch(gpu_cache: Path) -> None:
    relu = cuda_kernel(RELU_CU, "relu_k")
    for n in (1, 255, 256, 1_000_003):
        x = torch.randn(n, device="cuda")
        y = torch.full_like(x, float("nan"))
        relu(grid=((n + 255) // 256,), block=(256,), args=(x, y, n))
        torch.cuda.synchronize()
        assert torch.equal(y, torch.relu(x))
    empty = torch.empty(0, device="cuda")
    relu(grid=(0,), block=(256,), args=(empty, empty, 0))  # nothing to do, nothing launched


@pytest.mark.gpu
@needs_gpu
def test_launch_goes_to_the_given_or_current_stream(gpu_cache: Path) -> None:
    spin = cuda_kernel(r'''
extern "C" __global__ void spin(float* out, long long cycles) {
    long long start = clock64();
    while (clock64() - start < cycles) { }
    out[0] = 1.f;
}''', "spin")
    side = torch.cuda.Stream()
    out = torch.zeros(1, device="cuda")
    torch.cuda.synchronize()
    cycles = 200_000_000  # ~0.1 s at ~2 GHz
    spin(grid=(1,), block=(1,), args=(out, cycles), stream=side)
    assert not side.query() and torch.cuda.default_stream().query()
    side.synchronize()
    assert out.item() == 1.0
    out.zero_()
    torch.cuda.synchronize()
    with torch.cuda.stream(side):
        spin(grid=(1,), block=(1,), args=(out, cycles))
    assert not side.query() and torch.cuda.default_stream().query()
    side.synchronize()
    assert out.item() == 1.0


@pytest.mark.gpu
@needs_gpu
def test_dynamic_shared_memory_above_48_kib(gpu_cache: Path) -> None:
    src = r'''
extern "C" __global__ void via_smem(const float* x, float* y, long long n) {
    extern __shared__ float buf[];
    long long per_block = blockDim.x * 64;
    long long base = blockIdx.x * per_block;
    for (long long j = threadIdx.x; j < per_block; j += blockDim.x)
        buf[j] = base + j < n ? x[base + j] : 0.f;
    __syncthreads();
    for (long long j = threadIdx.x; j < per_block; j += blockDim.x)
        if (base + j < n) y[base + j] = 2.f * buf[per_block - 1 - j];  // reads all of buf
}'''

    def expected(x: torch.Tensor, per_block: int, blocks: int) -> torch.Tensor:
        padded = torch.zeros(per_block * blocks, device=x.device)
        padded[: x.numel()] = x
        return 2 * padded.view(blocks, per_block).flip(1).reshape(-1)[: x.numel()]

    smem = 256 * 64 * 4  # 64 KiB
    kernel = cuda_kernel(src, "via_smem", shared_mem=smem)
    n = 256 * 64 * 3 + 17
    x = torch.randn(n, device="cuda")
    y = torch.empty_like(x)
    kernel(grid=(4,), block=(256,), args=(x, y, n))
    torch.cuda.synchronize()
    assert torch.equal(y, expected(x, 256 * 64, 4))
    bigger = cuda_kernel(src, "via_smem")  # no default: the per-launch value opts in lazily
    bigger(grid=(2,), block=(400,), args=(x, y, n), shared_mem=400 * 64 * 4)  # 100 KiB
    torch.cuda.synchronize()
    assert torch.equal(y, expected(x, 400 * 64, 2))
    with pytest.raises(ValueError, match="allows at most"):
        bigger(grid=(1,), block=(256,), args=(x, y, n), shared_mem=1 << 20)


@pytest.mark.gpu
@needs_gpu
def test_launch_argument_errors_are_clear(gpu_cache: Path) -> None:
    relu = cuda_kernel(RELU_CU, "relu_k")
    x = torch.randn(8, device="cuda")
    with pytest.raises(TypeError, match="argument 2 is a CPU tensor; pass a CUDA tensor"):
        relu(grid=(1,), block=(256,), args=(x, torch.empty(8), 8))
    with pytest.raises(TypeError, match="takes 3 parameters but was launched with 2 arguments"):
        relu(grid=(1,), block=(256,), args=(x, x))
    with pytest.raises(TypeError, match="argument 3 is float packed as float, 4 bytes, but kernel "
                                        "parameter 3 is 8 bytes"):
        relu(grid=(1,), block=(256,), args=(x, x, 8.0))
    with pytest.raises(ValueError, match="at most 1024 per block"):
        relu(grid=(1,), block=(64, 32), args=(x, x, 8))
    with pytest.raises(TypeError, match="grid must be a tuple of 1 to 3 ints"):
        relu(grid="1", block=(256,), args=(x, x, 8))


@pytest.mark.gpu
@needs_gpu
def test_numpy_and_half_scalars_reach_the_kernel_at_their_width(gpu_cache: Path) -> None:
    src = "#include <cuda_fp16.h>\n" + r'''
extern "C" __global__ void affine(float* y, __half a, double b, int c, unsigned char d, bool e, long long n) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i < n) y[i] = __half2float(a) * i + (float)b + c + d + (e ? 1000.f : 0.f);
}'''
    affine = cuda_kernel(src, "affine")
    y = torch.empty(300, device="cuda")
    affine(grid=(2,), block=(256,), args=(y, np.float16(0.5), np.float64(0.25), np.int32(-7), np.uint8(3),
                                          np.bool_(True), 300))
    torch.cuda.synchronize()
    expected = 0.5 * torch.arange(300, device="cuda", dtype=torch.float32) + 0.25 - 7 + 3 + 1000
    assert torch.equal(y, expected)


@pytest.mark.gpu
@needs_gpu
def test_launch_from_a_fresh_thread_uses_torchs_context(gpu_cache: Path) -> None:
    relu = cuda_kernel(RELU_CU, "relu_k")
    x = torch.randn(1000, device="cuda")
    y = torch.empty_like(x)
    errors: list[BaseException] = []

    def launch() -> None:
        try:
            relu(grid=(4,), block=(256,), args=(x, y, 1000))
            torch.cuda.synchronize()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    worker = threading.Thread(target=launch)
    worker.start()
    worker.join()
    assert errors == []
    assert torch.equal(y, torch.relu(x))
