"""CUDA kernels for a 2-D convolution (NCHW, float32, groups 1, zero padding), optionally followed by ReLU and a
max pool (the conv+ReLU+MaxPool block).

The direct kernel computes one output element per thread from the input and weights in global memory: the
baseline. The fast path is an implicit GEMM on tensor cores, the matmul family's ``mma.sync`` kernel with other
operand loads: the GEMM's rows are the output pixels (M = N*OH*OW), its columns the output channels, its depth the
C*R*S taps; the A tile is gathered from the input on the fly (im2col never materialised, out-of-image taps read as
zeros), the B tile read from the weights, and the epilogue adds the bias, applies the ReLU and scatters to NCHW.
The conv+ReLU+MaxPool block is two kernels: the convolution with bias and ReLU fused, then the pool.

The layer's geometry (channels, kernel, stride, padding, dilation) is fixed by ModelNew's nn.Conv2d, so it is
compiled in as constants (divisions by them become multiplies); batch and image sizes are arguments.
"""

from __future__ import annotations

from kernelcraft.search.offline_kernels import cuda_common
from kernelcraft.search.offline_kernels import matmul_cuda as mm
from kernelcraft.search.offline_kernels.opspec import OpSpec

FAMILY = "conv"
BACKEND = "cuda"
GEN = "conv_cuda"

TUNABLES: dict[str, tuple] = {
    "threads": (128, 256, 512),
    "bm": (64, 128, 256),
    "bn": (32, 64, 96, 128),
    "bk": (16, 32),
    "wm": (1, 2, 4),
    "wn": (1, 2, 4),
    "pool_threads": (128, 256, 512),
}
_GEMM_DEFAULT = {"bm": 128, "bn": 64, "bk": 32, "wm": 4, "wn": 2}


def baseline(spec: OpSpec) -> dict:
    """One thread per output element, every tap read from global memory."""
    return {"gen": GEN, "algo": "direct", "threads": 256, "load": "plain", "unroll": False, "launch_min": 0,
            "fast_math": False, "grid": "exact", "bm": 128, "bn": 64, "bk": 32, "wm": 4, "wn": 2, "stages": 1,
            "cp_async": False, "pad": 0, "precision": "3xtf32", "raster": 0, "acc": "direct", "frag": "scalar",
            "split": "rna", "pool_threads": 256}


def gemm_features(f: dict) -> dict:
    """The feature dict matmul_cuda's tensor-core kernel reads (scalar loads: the A tile is a gather)."""
    return {"algo": "mma", "bm": f["bm"], "bn": f["bn"], "bk": f["bk"], "wm": f["wm"], "wn": f["wn"], "vec": 1,
            "stages": f["stages"], "cp_async": f["cp_async"], "pad": f["pad"], "precision": f["precision"],
            "raster": f["raster"], "acc": f["acc"], "frag": f.get("frag", "scalar"),
            "split": f.get("split", "rna")}


def smem_bytes(f: dict) -> int:
    """The pipeline's stages plus the per-block table of output pixels (an int4 per row of the tile)."""
    return mm.mma_smem_bytes(gemm_features(f)) + 16 * f["bm"]


def _gemm_ok(f: dict) -> bool:
    return mm._mma_ok(gemm_features(f)) and smem_bytes(f) <= mm.SMEM_DYNAMIC_MAX


def normalise(spec: OpSpec, f: dict) -> dict:
    base = baseline(spec)
    g = base | {k: v for k, v in f.items() if k in base}
    g["gen"] = GEN
    if g["algo"] not in ("direct", "mma"):
        g["algo"] = "direct"
    direct_keys = ("threads", "load", "unroll", "launch_min", "fast_math", "grid")
    gemm_keys = ("bm", "bn", "bk", "wm", "wn", "stages", "cp_async", "pad", "precision", "raster", "acc", "frag",
                 "split")
    for k in gemm_keys if g["algo"] == "direct" else direct_keys:
        g[k] = base[k]
    if g["threads"] not in TUNABLES["threads"]:
        g["threads"] = 256
    g["load"] = g["load"] if g["load"] in ("plain", "ldg") else "plain"
    g["unroll"], g["fast_math"], g["cp_async"] = bool(g["unroll"]), bool(g["fast_math"]), bool(g["cp_async"])
    g["launch_min"] = g["launch_min"] if g["launch_min"] in (0, 2) else 0
    g["grid"] = g["grid"] if g["grid"] in ("exact", "persistent") else "exact"
    g["precision"] = g["precision"] if g["precision"] in ("tf32", "3xtf32") else "3xtf32"
    g["acc"] = "tile" if g["acc"] == "tile" else "direct"
    g["frag"] = "vec" if g["frag"] == "vec" else "scalar"
    g["split"] = "mask" if g["split"] == "mask" else "rna"
    g["pad"] = 4 if g["pad"] and g["frag"] == "scalar" else 0  # vector fragments have their own layout
    g["stages"] = g["stages"] if g["stages"] in (1, 2, 3) else 1
    g["raster"] = g["raster"] if g["raster"] in (0, 8) else 0
    if g["algo"] == "mma":
        if any(g[k] not in TUNABLES[k] for k in ("bm", "bn", "bk", "wm", "wn")) or not _gemm_ok(g):
            g |= _GEMM_DEFAULT
            while not _gemm_ok(g) and g["stages"] > 1:
                g["stages"] -= 1
    if not spec.geometry.get("pool_k") or g["pool_threads"] not in TUNABLES["pool_threads"]:
        g["pool_threads"] = 256
    return g


def _constants(spec: OpSpec, relu: bool) -> list[str]:
    g = spec.geometry
    return [f"#define CIN {g['cin']}", f"#define COUT {g['cout']}", f"#define KS {g['r']}",
            f"#define ST {g['stride']}", f"#define PAD {g['pad']}", f"#define DIL {g['dil']}",
            "#define KD (CIN * KS * KS)", f"#define HAS_BIAS {g['bias']}", f"#define RELU {int(relu)}"]


_RELU = "__device__ __forceinline__ float relu(float v) { return v < 0.f ? 0.f : v; }  // NaN stays NaN"
_ARGS = ("const float* __restrict__ X, const float* __restrict__ Wt, const float* __restrict__ Bias, "
         "float* __restrict__ Y, long long N_, long long H_, long long W_, long long OH_, long long OW_")


def _direct(spec: OpSpec, f: dict, name: str, relu: bool) -> str:
    ld = "__ldg(&{})" if f["load"] == "ldg" else "{}"
    T = f["threads"]
    lb = f"__launch_bounds__({T}, {f['launch_min']})" if f["launch_min"] else f"__launch_bounds__({T})"
    unroll = "#pragma unroll" if f["unroll"] else "#pragma unroll 1"
    lines = ["// generated by kernelcraft's offline proposer (conv_cuda, direct)", *_constants(spec, relu), _RELU,
             f'extern "C" __global__ void {lb} {name}({_ARGS}) {{',
             "  const int H = (int)H_, W = (int)W_, OH = (int)OH_, OW = (int)OW_;",
             "  const long long total = N_ * COUT * OH * OW;",
             "  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;",
             "       i += (long long)gridDim.x * blockDim.x) {",
             "    const int ow = (int)(i % OW);", "    long long q = i / OW;", "    const int oh = (int)(q % OH);",
             "    q /= OH;", "    const int k = (int)(q % COUT), n = (int)(q / COUT);", "    float acc = 0.f;",
             "    for (int c = 0; c < CIN; ++c) {",
             "      const float* xc = X + ((long long)n * CIN + c) * H * W;",
             "      const float* wc = Wt + ((long long)k * CIN + c) * KS * KS;", f"      {unroll}",
             "      for (int r = 0; r < KS; ++r) {", "        const int ih = oh * ST - PAD + r * DIL;",
             "        if (ih < 0 || ih >= H) continue;", f"        {unroll}",
             "        for (int s = 0; s < KS; ++s) {", "          const int iw = ow * ST - PAD + s * DIL;",
             "          if (iw < 0 || iw >= W) continue;",
             f"          acc = fmaf({ld.format('xc[ih * W + iw]')}, {ld.format('wc[r * KS + s]')}, acc);",
             "        }", "      }", "    }", "    if (HAS_BIAS) acc += Bias[k];",
             "    Y[i] = RELU ? relu(acc) : acc;", "  }", "}"]
    return "\n".join(lines) + "\n"


_CP_ASYNC4 = r"""
// 4-byte asynchronous global -> shared copy (sm_80+), zero-filled when the tap lies outside the image: a gathered
// operand cannot use 16-byte copies, but it can still skip the registers.
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem, bool valid) {
  const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" :: "r"(s), "l"(gmem), "r"(valid ? 4 : 0) : "memory");
}
"""


def _gemm_io(spec: OpSpec, f: dict, relu: bool) -> mm.GemmIO:
    put_a = "cp_async4(as + AS_AT(r, c), src, ok);" if f["cp_async"] else "as[AS_AT(r, c)] = ok ? *src : 0.f;"
    put_b = "cp_async4(bs + BS_AT(r, c), src, ok);" if f["cp_async"] else "bs[BS_AT(r, c)] = ok ? *src : 0.f;"
    # NT is a multiple of BK, so a thread's tap column c is the same for every element it gathers: the tap's
    # decomposition (channel, kernel row, kernel column) and offset are worked out once per K tile, and each
    # element costs one 16-byte read of its row's entry, two bounds checks and an add
    a_tile = ("// this thread's tap kd = (channel, kernel row, kernel column) of the K tile at k0",
              "const int ca = tid % BK, kd = k0 + ca;",
              "const int ci = kd / (KS * KS), rs = kd - ci * (KS * KS), kr = rs / KS, ks = rs - kr * KS;",
              "const int dr = kr * DIL, ds = ks * DIL, tap = (ci * H + dr) * W + ds;",
              "const bool kin = kd < KD;")
    a_ld = ("// A[m, kd]: output pixel m's input tap kd",
            "const int r = tid / BK + l * (NT / BK), c = ca;", "const int4 row = rows[r];",
            "const bool ok = kin && (unsigned)(row.y + dr) < (unsigned)H && (unsigned)(row.z + ds) < (unsigned)W;",
            "const float* src = X + (ok ? row.x + tap : 0);", put_a)
    b_ld = ("// B[kd, k] = weight[k, kd]: consecutive threads read consecutive taps of one filter",
            "const int v = tid + l * NT, r = v % BK, c = v / BK, kd = k0 + r, k = bn0 + c;",
            "const bool ok = kd < KD && k < COUT;", "const float* src = ok ? Wt + k * KD + kd : Wt;", put_b)
    prelude = ("// per output pixel of this block, one 16-byte entry: the offset of its window's top-left tap (in its",
               "// image, channel 0) and that tap's row and column (in the dynamic shared memory after the",
               "// pipeline's stages: a static array beside a dynamic allocation just under 48 KiB would need an",
               "// opt-in the launch does not make)",
               "int4* const rows = reinterpret_cast<int4*>(smem + STAGES * (A_STAGE + B_STAGE));",
               "for (int i = tid; i < BM; i += NT) {", "  const int m = bm0 + i;", "  if (m < M) {",
               "    const int n = m / P, p = m - n * P, oh = p / OW, ow = p - oh * OW;",
               "    const int ih = oh * ST - PAD, iw = ow * ST - PAD;",
               "    rows[i] = make_int4(n * (CIN * H * W) + ih * W + iw, ih, iw, 0);",
               "  } else {", "    rows[i] = make_int4(0, -(1 << 28), 0, 0);  // never inside the image", "  }", "}",
               "__syncthreads();")
    store = ("const int n = r / P, p = r - n * P;", "float o = HAS_BIAS ? v + Bias[col] : v;",
             "Y[((long long)n * COUT + col) * P + p] = RELU ? relu(o) : o;")
    helpers = "\n".join(_constants(spec, relu)) + "\n" + _RELU + (_CP_ASYNC4 if f["cp_async"] else "")
    return mm.GemmIO(args=_ARGS, ints="const int H = (int)H_, W = (int)W_, OH = (int)OH_, OW = (int)OW_, "
                     "P = OH * OW, M = (int)(N_ * P), N = COUT, K = KD;", a_ld=a_ld, b_ld=b_ld, store=store,
                     prelude=prelude, a_tile=a_tile, helpers=helpers, title="conv_cuda, implicit GEMM")


def _pool(spec: OpSpec, f: dict, name: str) -> str:
    g = spec.geometry
    return f"""// generated by kernelcraft's offline proposer (conv_cuda, max pool)
#define PK {g['pool_k']}
#define PS {g['pool_s']}
extern "C" __global__ void __launch_bounds__({f['pool_threads']}) {name}(const float* __restrict__ Y,
    float* __restrict__ Out, long long NC, long long OH_, long long OW_, long long PH_, long long PW_) {{
  const int OH = (int)OH_, OW = (int)OW_, PH = (int)PH_, PW = (int)PW_;
  const long long total = NC * PH * PW;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
       i += (long long)gridDim.x * blockDim.x) {{
    const int pw = (int)(i % PW), ph = (int)((i / PW) % PH);
    const long long nc = i / ((long long)PW * PH);
    const float* y = Y + (nc * OH + ph * PS) * OW + pw * PS;
    float m = y[0];
#pragma unroll
    for (int a = 0; a < PK; ++a)
#pragma unroll
      for (int b = 0; b < PK; ++b) {{
        const float v = y[a * OW + b];
        m = (v > m || v != v) ? v : m;  // NaN propagates, as torch's max_pool2d
      }}
    Out[i] = m;
  }}
}}
"""


def render_source(spec: OpSpec, f: dict, name: str) -> str:
    f = normalise(spec, f)
    relu = bool(spec.geometry.get("pool_k"))
    if f["algo"] == "direct":
        return _direct(spec, f, name, relu)
    return mm._mma(mm.baseline(spec) | gemm_features(f), name, False, _gemm_io(spec, f, relu))


def render(spec: OpSpec, f: dict) -> tuple[str, list[str]]:
    f = normalise(spec, f)
    g = spec.geometry
    opts = '("--use_fast_math",)' if f["fast_math"] else "()"
    if f["algo"] == "direct":
        mod = [f"SRC = r'''\n{render_source(spec, f, 'conv_direct')}'''", "",
               f'_conv = cuda_kernel(SRC, "conv_direct", options={opts})']
        launch = ["total = y.numel()", f"grid = min(-(-total // {f['threads']}), 2**31 - 1)"]
        if f["grid"] == "persistent":
            launch.append("grid = min(grid, _sm_count(x.device.index) * 8)")
        launch.append(f"_conv(grid=(grid,), block=({f['threads']},), args=(x, w, b, y, N, H, W, OH, OW))")
    else:
        gf = gemm_features(f)
        mod = [f"SRC = r'''\n{render_source(spec, f, 'conv_gemm')}'''", "",
               f'_conv = cuda_kernel(SRC, "conv_gemm", shared_mem={smem_bytes(f)})']
        launch = [f"tiles = -(-(N * OH * OW) // {gf['bm']}) * -(-{g['cout']} // {gf['bn']})",
                  f"_conv(grid=(tiles,), block=({mm.mma_threads(gf)},), args=(x, w, b, y, N, H, W, OH, OW))"]
    if g["pool_k"]:
        mod += ["", f"POOL = r'''\n{_pool(spec, f, 'maxpool')}'''", "", '_pool = cuda_kernel(POOL, "maxpool")']
    if f["grid"] == "persistent":
        mod.append(cuda_common.SM_COUNT_PY)
    fwd = ["x = x.contiguous()", f"w = {spec.weight}.contiguous()",
           f"b = {spec.bias}.contiguous()" if spec.bias else "b = w  # no bias: the kernel never reads it",
           "N, C, H, W = x.shape", f"if C != {g['cin']} or x.numel() >= 2**31:",
           f"    raise ValueError(f'expected (N, {g['cin']}, H, W) below 2**31 elements, got {{tuple(x.shape)}}')",
           f"OH = (H + {2 * g['pad']} - {g['dil'] * (g['r'] - 1)} - 1) // {g['stride']} + 1",
           f"OW = (W + {2 * g['pad']} - {g['dil'] * (g['r'] - 1)} - 1) // {g['stride']} + 1",
           f"y = torch.empty((N, {g['cout']}, OH, OW), device=x.device, dtype=x.dtype)", "if y.numel():"]
    fwd += ["    " + ln for ln in launch]
    if g["pool_k"]:
        pk, ps, pt = g["pool_k"], g["pool_s"], f["pool_threads"]
        fwd += [f"PH, PW = (OH - {pk}) // {ps} + 1, (OW - {pk}) // {ps} + 1",
                f"out = torch.empty((N, {g['cout']}, PH, PW), device=x.device, dtype=x.dtype)", "if out.numel():",
                f"    grid = min(-(-out.numel() // {pt}), 2**31 - 1)",
                f"    _pool(grid=(grid,), block=({pt},), args=(y, out, N * {g['cout']}, OH, OW, PH, PW))",
                "return out"]
    else:
        fwd.append("return y")
    return "\n".join(mod), fwd
