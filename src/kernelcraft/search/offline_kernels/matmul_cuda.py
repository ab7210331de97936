"""CUDA kernels for C = A @ B in float32 (A: M x K, B: K x N, row-major).

A matmul is compute-bound once operands are reused from on-chip memory, so the levers are reuse and issue rate:
shared-memory tiles (each value loaded from HBM serves a tile's worth of multiply-adds), register blocking (each
value loaded from shared memory serves a thread tile), 16-byte vector loads, software pipelining (register
staging or ``cp.async`` stages, so the next tile's loads overlap this tile's math), padded shared-memory rows
against bank conflicts, a grouped block order for L2 reuse, and tensor cores. Tensor cores take TF32 (10-bit
mantissa), too coarse for 1e-4 over thousands of products; the 3xTF32 scheme splits each operand into a TF32 high
part and a TF32 remainder and sums three products (hi*hi + hi*lo + lo*hi), which is float32-accurate. The two
correction products fit one 16-bit m16n8k16 product (each tap's parts concatenated along its K): in bfloat16 they
lose bits (near float32, not 1e-4); in float16, on operands scaled by powers of two into its range (a max-|x| pass
first), they keep 3xTF32's.

The algorithms, by ``algo``: ``naive`` (one thread per output, operands from global memory), ``smem`` (square
shared-memory tiles, one output per thread), ``simt`` (block tile BM x BN x BK, thread tile TM x TN in
registers), ``mma`` (tensor cores through PTX ``mma.sync`` m16n8k8, TF32 or 3xTF32; inline PTX rather than
``<mma.h>``, whose headers NVRTC does not always have), ``gemv`` (N = 1 only: a matrix-vector product is
memory-bound, so one block per row of A streams it once and reduces its dot product with warp shuffles; tiles
would compute 63 wasted columns of every 64). Every kernel takes any M, N, K: loads
past an edge read zeros and stores past it are skipped. The vectorised path needs K and N multiples of 4 and
aligned pointers, which the launcher checks, falling back to a scalar-load kernel. The float16 three-product
scheme can instead have its operands split once per call, into float16 parts in a workspace, before the product
(``split: once``: ``matmul_presplit``).
"""

from __future__ import annotations

from dataclasses import dataclass

from kernelcraft.search.offline_kernels import cuda_common as cc
from kernelcraft.search.offline_kernels import matmul_layout
from kernelcraft.search.offline_kernels import matmul_presplit as ps
from kernelcraft.search.offline_kernels import matmul_wgmma as wg
from kernelcraft.search.offline_kernels.opspec import OpSpec

FAMILY = "matmul"
BACKEND = "cuda"
GEN = "matmul_cuda"

ALGOS = ("naive", "smem", "simt", "mma", "wgmma", "gemv")
GEMV_THREADS = (128, 256, 512, 1024)
TUNABLES: dict[str, tuple] = {
    "bm": (64, 128, 256),
    "bn": (64, 128, 256),
    "bk": (8, 16, 32),
    "tm": (4, 8),
    "tn": (4, 8),
    "wm": (1, 2, 4),
    "wn": (1, 2, 4),
    "raster": (0, 8, 16),
}
# mma.sync's float32-input schemes: TF32 (one product of the operands' high parts), 3xTF32 (that and the two
# correction products hi*lo, lo*hi in TF32), and TF32 with both corrections in one 16-bit m16n8k16 product:
# bfloat16 (near float32), or float16 on operands scaled by powers of two (3xTF32's products exactly); and all three
# products in float16 on those scaled operands (the high parts too are float16 values there: f16x3)
PRECISIONS = ("tf32", "3xtf32", "tf32bf16", "tf32f16", "f16x3")
SCALED = ("tf32f16", "f16x3")  # the precisions whose operands the absmax pass scales by powers of two
# how a kernel sums its tensor-core products: in the tensor core's accumulators (direct), per K tile in fresh
# registers added with float adds (tile), or per product group through a four-register scratch (step)
ACCS = ("direct", "tile", "step")
# The schemes whose products keep float32's precision (3xTF32's split, and its float16 forms on scaled operands)
FLOAT32_PRODUCTS = ("3xtf32", "tf32f16", "f16x3")
# The most float32 additions one output's sum may chain and still stay within 1e-4 + 1e-4|exact| of the exact product
# near zero: measured on the H200 at K = 4096 against the float64 product (randn operands and the same shifted by 1,
# worst output over the bound): per-tile sums of 32 taps, 128 adds, 0.64; 16-tap step sums, 256 adds, 0.93; 8-tap
# groups, 512 adds, 1.00; one chain over all of K, 4096 adds: cuBLAS 3.1, the tensor core's truncating accumulation
# 22-37
STRICT_CHAIN_MAX = 256
SMEM_STATIC_MAX = 48 * 1024
SMEM_DYNAMIC_MAX = 200 * 1024  # H100/H200 allow 227 KiB per block; leave room for the driver's reservation
_SIMT_DEFAULT = {"bm": 128, "bn": 128, "bk": 8, "tm": 8, "tn": 8}
_MMA_DEFAULT = {"bm": 128, "bn": 128, "bk": 32, "wm": 2, "wn": 4}
_WGMMA_DEFAULT = {"bm": 128, "bn": 128, "bk": 32, "stages": 3, "overlap": False}


def baseline(spec: OpSpec) -> dict:
    """One thread per output element reading A and B from global memory: what a first CUDA port looks like."""
    return {"gen": GEN, "algo": "naive", "tile": 16, "bm": 64, "bn": 64, "bk": 8, "tm": 4, "tn": 4, "wm": 2,
            "wn": 2, "vec": 1, "buffer": 1, "stages": 1, "cp_async": False, "pad": 0, "precision": "fp32",
            "raster": 0, "launch_min": 0, "acc": "direct", "frag": "scalar", "split": "rna",
            "overlap": False, "gthreads": 256}


def simt_threads(f: dict) -> int:
    return (f["bm"] // f["tm"]) * (f["bn"] // f["tn"])


def mma_threads(f: dict) -> int:
    return f["wm"] * f["wn"] * 32


def _tile_loads_ok(bm: int, bn: int, bk: int, threads: int, vec: int) -> bool:
    """Every thread moves the same whole number of (vec-wide) elements of each operand tile."""
    return (bm * bk) % (threads * vec) == 0 and (bk * bn) % (threads * vec) == 0 and bk % vec == 0


def _simt_ok(f: dict) -> bool:
    t = simt_threads(f)
    smem = f["buffer"] * f["bk"] * (f["bm"] + f["bn"] + 2 * f["pad"]) * 4
    return 64 <= t <= 1024 and smem <= SMEM_STATIC_MAX and _tile_loads_ok(f["bm"], f["bn"], f["bk"], t, f["vec"])


def mma_lda(f: dict) -> int:
    """A tile's row stride in floats. Vector fragments read 16 bytes per lane: eight lanes (two rows) share a
    128-byte wavefront, so a row must start half a wavefront after the previous one (stride / 4 = 4 mod 8)."""
    if f.get("frag") == "vec":
        return f["bk"] + (4 - f["bk"] // 4 % 8) % 8 * 4
    return f["bk"] + f["pad"]


def mma_ldb(f: dict) -> int:
    """B tile's row stride in floats: vector fragments swizzle B's 16-byte chunks instead of padding rows; an
    n-major B tile (``bnm``: rows of BK taps, one per output column) is padded as A's rows are."""
    if f.get("bnm"):
        return f["bk"] + 4
    return f["bn"] if f.get("frag") == "vec" else f["bn"] + 2 * f["pad"]


def mma_smem_bytes(f: dict) -> int:
    if f.get("split") == "once":
        return ps.smem_bytes(f)
    return f["stages"] * (f["bm"] * mma_lda(f) + (f["bn"] if f.get("bnm") else f["bk"]) * mma_ldb(f)) * 4


def _mma_ok(f: dict) -> bool:
    wtm, wtn = f["bm"] // f["wm"], f["bn"] // f["wn"]
    frags = (wtm // 16) * (wtn // 8) * (2 if f["acc"] == "tile" else 1)  # accumulator registers / 4
    return (f["bm"] % (16 * f["wm"]) == 0 and f["bn"] % (8 * f["wn"]) == 0 and frags <= 32
            and 64 <= mma_threads(f) <= 512 and f["bk"] % 8 == 0 and mma_smem_bytes(f) <= SMEM_DYNAMIC_MAX
            and _tile_loads_ok(f["bm"], f["bn"], f["bk"], mma_threads(f), f["vec"])
            and (f.get("split") != "once" or ps.loads_ok(f, mma_threads(f))))


def normalise(spec: OpSpec, f: dict) -> dict:
    base = baseline(spec)
    g = base | {k: v for k, v in f.items() if k in base}
    g["gen"] = GEN
    if g["algo"] not in ALGOS or g["algo"] == "gemv" and not gemv_ok(spec):
        g["algo"] = "naive"
    algo = g["algo"]
    keep = {"naive": (), "smem": ("tile",), "simt": ("bm", "bn", "bk", "tm", "tn", "vec", "buffer", "pad", "raster",
                                                     "launch_min"),
            "mma": ("bm", "bn", "bk", "wm", "wn", "vec", "stages", "cp_async", "pad", "precision", "raster",
                    "acc", "frag", "split"),
            "wgmma": ("bm", "bn", "bk", "stages", "precision", "raster", "acc", "overlap"),
            "gemv": ("vec", "gthreads")}[algo]
    for k in base:
        if k not in keep and k not in ("gen", "algo"):
            g[k] = base[k]
    if algo == "smem" and g["tile"] not in (16, 32):
        g["tile"] = 32
    if algo == "simt":
        g["vec"] = 4 if g["vec"] == 4 else 1
        g["buffer"] = 2 if g["buffer"] == 2 else 1
        g["pad"] = 4 if g["pad"] else 0
        g["acc"] = "tile" if g["acc"] == "tile" else "direct"
        g["launch_min"] = g["launch_min"] if g["launch_min"] in (0, 2) else 0
        if any(g[k] not in TUNABLES[k] for k in ("bm", "bn", "bk", "tm", "tn")) or not _simt_ok(g):
            g |= _SIMT_DEFAULT
            if not _simt_ok(g):
                g["vec"], g["buffer"], g["pad"] = 1, 1, 0
    if algo == "mma":
        g["precision"] = g["precision"] if g["precision"] in PRECISIONS else "3xtf32"
        g["cp_async"] = bool(g["cp_async"])
        g["vec"] = 4 if (g["vec"] == 4 or g["cp_async"]) else 1
        g["stages"] = g["stages"] if g["stages"] in (1, 2, 3) else 1
        g["pad"] = 4 if g["pad"] else 0
        g["acc"] = g["acc"] if g["acc"] in ACCS else "direct"
        # f16x3 pairs the taps of two 8-deep steps in each float16 fragment: the scalar fragments' layout
        g["frag"] = "vec" if g["frag"] == "vec" and g["precision"] != "f16x3" else "scalar"
        g["split"] = g["split"] if g["split"] in ("mask", "once") else "rna"
        if g["split"] == "once" and not (g["precision"] == "f16x3" and g["cp_async"]):
            g["split"] = "mask"  # a split pass before the product: f16x3's parts, copied by cp.async
        if g["frag"] == "vec":
            g["pad"] = 0  # the layout is the fragments' own (mma_lda, mma_ldb)
        if g["bk"] not in (16, 32):
            g["bk"] = 32
        if any(g[k] not in TUNABLES[k] for k in ("bm", "bn", "wm", "wn")) or not _mma_ok(g):
            g |= _MMA_DEFAULT
            while not _mma_ok(g) and g["stages"] > 1:
                g["stages"] -= 1
    if algo == "wgmma":
        g["precision"] = g["precision"] if g["precision"] in ("tf32", "3xtf32") else "3xtf32"
        g["acc"] = "tile" if g["acc"] == "tile" else "direct"
        g["vec"], g["cp_async"], g["overlap"] = 4, True, bool(g["overlap"])
        g["bk"] = g["bk"] if g["bk"] in wg.BKS else wg.BKS[0]
        while not wg.ok(g, SMEM_DYNAMIC_MAX) and g["stages"] > (3 if g["overlap"] else 2):
            g["stages"] -= 1  # fewer stages before giving up the tile shape
        if not wg.ok(g, SMEM_DYNAMIC_MAX):
            g |= _WGMMA_DEFAULT | {"overlap": g["overlap"] and g["acc"] == "direct"}
    if algo == "gemv":
        g["vec"] = 4 if g["vec"] == 4 else 1
        g["gthreads"] = g["gthreads"] if g["gthreads"] in GEMV_THREADS else 256
    if algo not in ("simt", "mma", "wgmma"):
        g["raster"] = 0
    elif g["raster"] not in TUNABLES["raster"]:
        g["raster"] = 0
    return g


def within_1e4(spec: OpSpec, f: dict) -> bool:
    """Whether the kernel's outputs are expected within 1e-4 + 1e-4|exact| of the exact product: how the offline
    proposer weighs ideas when the run's tolerance is that strict, as a model weighs them reading the tolerance in
    its prompt. Float32 products are not enough: the error is the sum's, about sqrt(float adds in one output's
    chain), so a kernel passes only with float32-exact products and short chains (per-tile or per-step sums)."""
    k = spec.mnk[2]
    algo = f.get("algo")
    if algo in ("mma", "wgmma"):
        if f.get("precision") not in FLOAT32_PRODUCTS:
            return False
        chain = {"tile": k // max(1, int(f.get("bk", 32))), "step": k // 16}.get(f.get("acc"), k)
    elif algo == "gemv":
        chain = k // max(1, int(f.get("gthreads", 256))) + 16
    else:
        chain = k
    return chain <= STRICT_CHAIN_MAX


def gemv_ok(spec: OpSpec | None) -> bool:
    """A matrix-vector product: B has one column."""
    return spec is not None and spec.family == "matmul" and spec.mnk[1] == 1


# ------------------------------------------------------------------------------------------------ sources

_ARGS = ("const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C, "
         "long long M_, long long N_, long long K_")
_INTS = "const int M = (int)M_, N = (int)N_, K = (int)K_;"


def _raster(f: dict) -> str:
    """The block's (bm0, bn0): row-major over tiles, or grouped so that consecutive blocks share B's columns
    and A's rows in L2."""
    if f["raster"]:
        body = ["const int width = GROUP * tiles_n, group = blockIdx.x / width, first = group * GROUP;",
                "const int rows = min(tiles_m - first, GROUP);",
                "*bm0 = (first + (blockIdx.x % width) % rows) * BM;",
                "*bn0 = ((blockIdx.x % width) / rows) * BN;"]
        head = f"#define GROUP {f['raster']}\n"
    else:
        body = ["*bm0 = (blockIdx.x / tiles_n) * BM;", "*bn0 = (blockIdx.x % tiles_n) * BN;"]
        head = ""
    return (head + "__device__ __forceinline__ void tile_origin(int M, int N, int* bm0, int* bn0) {\n"
            "  const int tiles_m = (M + BM - 1) / BM, tiles_n = (N + BN - 1) / BN;\n  (void)tiles_m;\n"
            + "\n".join("  " + ln for ln in body) + "\n}\n")


def _naive(name: str) -> str:
    return f"""// generated by kernelcraft's offline proposer (matmul_cuda, naive)
extern "C" __global__ void {name}({_ARGS}) {{
  const long long row = blockIdx.y * (long long)blockDim.y + threadIdx.y;
  const long long col = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  if (row >= M_ || col >= N_) return;
  float s = 0.f;
  for (long long k = 0; k < K_; ++k) s = fmaf(A[row * K_ + k], B[k * N_ + col], s);
  C[row * N_ + col] = s;
}}
"""


def _smem(f: dict, name: str) -> str:
    t = f["tile"]
    return f"""// generated by kernelcraft's offline proposer (matmul_cuda, shared-memory tiles)
#define TS {t}
extern "C" __global__ void __launch_bounds__(TS * TS) {name}({_ARGS}) {{
  {_INTS}
  __shared__ float As[TS][TS];
  __shared__ float Bs[TS][TS + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int row = blockIdx.y * TS + ty, col = blockIdx.x * TS + tx;
  float s = 0.f;
  for (int k0 = 0; k0 < K; k0 += TS) {{
    As[ty][tx] = (row < M && k0 + tx < K) ? A[(long long)row * K + k0 + tx] : 0.f;
    Bs[ty][tx] = (k0 + ty < K && col < N) ? B[(long long)(k0 + ty) * N + col] : 0.f;
    __syncthreads();
#pragma unroll
    for (int k = 0; k < TS; ++k) s = fmaf(As[ty][k], Bs[k][tx], s);
    __syncthreads();
  }}
  if (row < M && col < N) C[(long long)row * N + col] = s;
}}
"""


def _simt(f: dict, name: str) -> str:
    vec, nbuf = f["vec"], f["buffer"]
    lines = ["// generated by kernelcraft's offline proposer (matmul_cuda, register-blocked SIMT)",
             f"#define BM {f['bm']}", f"#define BN {f['bn']}", f"#define BK {f['bk']}", f"#define TM {f['tm']}",
             f"#define TN {f['tn']}", "#define NT ((BM / TM) * (BN / TN))", f"#define PAD {f['pad']}",
             f"#define LA (BM * BK / ({vec} * NT))", f"#define LB (BK * BN / ({vec} * NT))", "", _raster(f)]
    if vec == 4:
        load = ["#pragma unroll", "for (int l = 0; l < LA; ++l) {",
                "  const int v = tid + l * NT, r = v / (BK / 4), c = (v % (BK / 4)) * 4;",
                "  const int gm = bm0 + r, gk = k0 + c;",
                "  ra[l] = (gm < M && gk < K) ? *reinterpret_cast<const float4*>(A + (long long)gm * K + gk) : zero4;",
                "}", "#pragma unroll", "for (int l = 0; l < LB; ++l) {",
                "  const int v = tid + l * NT, r = v / (BN / 4), c = (v % (BN / 4)) * 4;",
                "  const int gk = k0 + r, gn = bn0 + c;",
                "  rb[l] = (gk < K && gn < N) ? *reinterpret_cast<const float4*>(B + (long long)gk * N + gn) : zero4;",
                "}"]
        store = ["#pragma unroll", "for (int l = 0; l < LA; ++l) {",
                 "  const int v = tid + l * NT, r = v / (BK / 4), c = (v % (BK / 4)) * 4;",
                 "  As[buf][c][r] = ra[l].x; As[buf][c + 1][r] = ra[l].y;",
                 "  As[buf][c + 2][r] = ra[l].z; As[buf][c + 3][r] = ra[l].w;", "}",
                 "#pragma unroll", "for (int l = 0; l < LB; ++l) {",
                 "  const int v = tid + l * NT, r = v / (BN / 4), c = (v % (BN / 4)) * 4;",
                 "  *reinterpret_cast<float4*>(&Bs[buf][r][c]) = rb[l];", "}"]
        regs = "float4 ra[LA], rb[LB];\nconst float4 zero4 = make_float4(0.f, 0.f, 0.f, 0.f);"
    else:
        load = ["#pragma unroll", "for (int l = 0; l < LA; ++l) {",
                "  const int v = tid + l * NT, r = v / BK, c = v % BK, gm = bm0 + r, gk = k0 + c;",
                "  ra[l] = (gm < M && gk < K) ? A[(long long)gm * K + gk] : 0.f;", "}",
                "#pragma unroll", "for (int l = 0; l < LB; ++l) {",
                "  const int v = tid + l * NT, r = v / BN, c = v % BN, gk = k0 + r, gn = bn0 + c;",
                "  rb[l] = (gk < K && gn < N) ? B[(long long)gk * N + gn] : 0.f;", "}"]
        store = ["#pragma unroll", "for (int l = 0; l < LA; ++l) {",
                 "  const int v = tid + l * NT;", "  As[buf][v % BK][v / BK] = ra[l];", "}",
                 "#pragma unroll", "for (int l = 0; l < LB; ++l) {",
                 "  const int v = tid + l * NT;", "  Bs[buf][v / BN][v % BN] = rb[l];", "}"]
        regs = "float ra[LA], rb[LB];"
    compute = ["#pragma unroll", "for (int kk = 0; kk < BK; ++kk) {", "  float a[TM], b[TN];",
               "#pragma unroll", "  for (int i = 0; i < TM; i += 4) {",
               "    const float4 t = *reinterpret_cast<const float4*>(&As[buf][kk][ty * TM + i]);",
               "    a[i] = t.x; a[i + 1] = t.y; a[i + 2] = t.z; a[i + 3] = t.w;", "  }",
               "#pragma unroll", "  for (int j = 0; j < TN; j += 4) {",
               "    const float4 t = *reinterpret_cast<const float4*>(&Bs[buf][kk][tx * TN + j]);",
               "    b[j] = t.x; b[j + 1] = t.y; b[j + 2] = t.z; b[j + 3] = t.w;", "  }",
               "#pragma unroll", "  for (int i = 0; i < TM; ++i)", "#pragma unroll",
               "    for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);", "}"]

    def block(name_: str, body: list[str]) -> list[str]:
        return [f"// {name_}", "{"] + ["  " + ln for ln in body] + ["}"]

    def load_tile(k0: str) -> list[str]:
        return block(f"global -> registers: the tile at k = {k0}", [f"const int k0 = {k0};"] + load)

    def store_tile(buf: str) -> list[str]:
        return block("registers -> shared memory (A transposed, so a thread's TM rows are one vector read)",
                     [f"const int buf = {buf};"] + store)

    def compute_tile(buf: str) -> list[str]:
        return block("the thread's TM x TN outputs from this tile", [f"const int buf = {buf};"] + compute)

    body = [_INTS, f"__shared__ __align__(16) float As[{nbuf}][BK][BM + PAD];",
            f"__shared__ __align__(16) float Bs[{nbuf}][BK][BN + PAD];",
            "int bm0, bn0;", "tile_origin(M, N, &bm0, &bn0);",
            "const int tid = threadIdx.x, tx = tid % (BN / TN), ty = tid / (BN / TN);",
            "float acc[TM][TN];", "#pragma unroll", "for (int i = 0; i < TM; ++i)", "#pragma unroll",
            "  for (int j = 0; j < TN; ++j) acc[i][j] = 0.f;", *regs.splitlines(),
            "const int ntiles = (K + BK - 1) / BK;"]
    if nbuf == 2:
        body += ["// double buffering: the next tile's global loads are in flight while this tile is computed"]
        body += load_tile("0") + store_tile("0") + ["__syncthreads();", "for (int kt = 0; kt < ntiles; ++kt) {"]
        inner = ["if (kt + 1 < ntiles)"] + ["  " + ln for ln in load_tile("(kt + 1) * BK")]
        inner += compute_tile("kt & 1")
        inner += ["if (kt + 1 < ntiles)"] + ["  " + ln for ln in store_tile("(kt & 1) ^ 1")]
        inner += ["__syncthreads();"]
        body += ["  " + ln for ln in inner] + ["}"]
    else:
        body += ["for (int kt = 0; kt < ntiles; ++kt) {"]
        inner = load_tile("kt * BK") + store_tile("0") + ["__syncthreads();"] + compute_tile("0")
        inner += ["__syncthreads();"]
        body += ["  " + ln for ln in inner] + ["}"]
    epi = ["#pragma unroll", "for (int i = 0; i < TM; ++i) {", "  const int gm = bm0 + ty * TM + i;",
           "  if (gm >= M) continue;", "  float* crow = C + (long long)gm * N;"]
    if vec == 4:
        epi += ["#pragma unroll", "  for (int j = 0; j < TN; j += 4) {", "    const int gn = bn0 + tx * TN + j;",
                "    if (gn < N) *reinterpret_cast<float4*>(crow + gn) = "
                "make_float4(acc[i][j], acc[i][j + 1], acc[i][j + 2], acc[i][j + 3]);", "  }"]
    else:
        epi += ["#pragma unroll", "  for (int j = 0; j < TN; ++j) {", "    const int gn = bn0 + tx * TN + j;",
                "    if (gn < N) crow[gn] = acc[i][j];", "  }"]
    body += epi + ["}"]
    lb = f"__launch_bounds__(NT, {f['launch_min']})" if f["launch_min"] else "__launch_bounds__(NT)"
    lines.append(f'extern "C" __global__ void {lb} {name}({_ARGS}) {{')
    lines += ["  " + ln if ln else "" for ln in body] + ["}"]
    return "\n".join(lines) + "\n"



_MMA = r"""
// One warp-wide tensor-core product D += A(16x8, row) * B(8x8, col), TF32 inputs, float32 accumulate. Fragment
// layout (PTX ISA, mma.m16n8k8 .tf32), with g = lane / 4 and t = lane % 4: a0 (g, t), a1 (g + 8, t),
// a2 (g, t + 4), a3 (g + 8, t + 4); b0 (t, g), b1 (t + 4, g); d0/d1 (g, 2t / 2t + 1), d2/d3 (g + 8, 2t / 2t + 1).
__device__ __forceinline__ void mma_tf32(float* d, const unsigned* a, const unsigned* b) {
  asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
               "{%8, %9}, {%0, %1, %2, %3};"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ __forceinline__ unsigned to_tf32(float x) {
  unsigned r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
}
"""


@dataclass(frozen=True)
class GemmIO:
    """Where a tensor-core GEMM's operands come from and where its results go: the lines that load element (or
    vector) ``l`` of the thread's share of the A and B tiles into ``as``/``bs`` for the K tile at ``k0``, per-block
    set-up before the K loop, and the lines that store one output ``v`` at row ``r``, column ``col``. Matmul reads
    row-major A and B; a convolution gathers A from its input image (implicit im2col, conv_cuda)."""

    args: str
    ints: str
    a_ld: tuple[str, ...]
    b_ld: tuple[str, ...]
    store: tuple[str, ...]
    prelude: tuple[str, ...] = ()
    # Lines at the top of each K tile's load, before the per-element loops: what every element of the thread's
    # share of that tile has in common (a gather's tap decomposition is per column, and a thread's column is fixed).
    a_tile: tuple[str, ...] = ()
    helpers: str = ""
    title: str = "matmul_cuda"
    # Lines storing a thread's two neighbouring outputs of row ``r`` (columns ``c``, ``c + 1``) at once, used instead
    # of ``store`` where given: an aligned row-major output takes them as one 8-byte store.
    pair_store: tuple[str, ...] = ()
    # How many loads of the A and B tiles each thread makes per K tile (the LA and LB loop counts), where the
    # operand's loads are of another width than the kernel's ``vec`` (a gather of 8-byte pieces, say)
    la: str = ""
    lb: str = ""


def _matmul_io(f: dict, fast: bool) -> GemmIO:
    vec, cp = f["vec"], f["cp_async"]
    if vec == 4:
        a_ld = ["const int v = tid + l * NT, r = v / (BK / 4), c = (v % (BK / 4)) * 4;",
                "const int gm = bm0 + r, gk = k0 + c;", "const bool ok = gm < M && gk < K;",
                "const float* src = ok ? A + (long long)gm * K + gk : A;", "float* dst = as + AS_AT(r, c);"]
        b_ld = ["const int v = tid + l * NT, r = v / (BN / 4), c = (v % (BN / 4)) * 4;",
                "const int gk = k0 + r, gn = bn0 + c;", "const bool ok = gk < K && gn < N;",
                "const float* src = ok ? B + (long long)gk * N + gn : B;", "float* dst = bs + BS_AT(r, c);"]
        if cp:
            put = ["cp_async16(dst, src, ok);"]
        else:
            put = ["*reinterpret_cast<float4*>(dst) = ok ? *reinterpret_cast<const float4*>(src) "
                   ": make_float4(0.f, 0.f, 0.f, 0.f);"]
        a_ld, b_ld = a_ld + put, b_ld + put
    else:
        a_ld = ["const int v = tid + l * NT, r = v / BK, c = v % BK, gm = bm0 + r, gk = k0 + c;",
                "as[AS_AT(r, c)] = (gm < M && gk < K) ? A[(long long)gm * K + gk] : 0.f;"]
        b_ld = ["const int v = tid + l * NT, r = v / BN, c = v % BN, gk = k0 + r, gn = bn0 + c;",
                "bs[BS_AT(r, c)] = (gk < K && gn < N) ? B[(long long)gk * N + gn] : 0.f;"]
    return GemmIO(args=_ARGS, ints=_INTS, a_ld=tuple(a_ld), b_ld=tuple(b_ld),
                  store=("C[(long long)r * N + col] = v;",),
                  pair_store=("float* cr = C + (long long)r * N;",
                              "if (c + 1 < N) *reinterpret_cast<float2*>(cr + c) = make_float2(acc[i][j][2 * h], "
                              "acc[i][j][2 * h + 1]);", "else if (c < N) cr[c] = acc[i][j][2 * h];") if fast else ())


def _mma(f: dict, name: str, fast: bool, io: GemmIO | None = None) -> str:
    io = io or _matmul_io(f, fast)
    vec, cp, three = f["vec"], f["cp_async"], f["precision"] == "3xtf32"
    mix = f["precision"] in ("tf32bf16", "tf32f16")
    x3 = f["precision"] == "f16x3"  # the high parts' product in float16 as well, over two 8-deep steps at once
    f16 = f["precision"] in SCALED  # operands scaled into float16's range by the absmax pass's powers of two
    vecfrag, mask = f["frag"] == "vec", f["split"] == "mask"
    # Fragments by ldmatrix (the convolution's idea; measured slower on a plain matmul, whose B tile is k-major:
    # 1.59 against 1.52 ms), and B n-major in shared memory, which the operand's loads (io) then write
    ldsm, bnm = bool(f.get("ldsm")) and not vecfrag, bool(f.get("bnm"))
    what = {"3xtf32": "3xTF32 tensor cores (float32-accurate)", "tf32": "TF32 tensor cores",
            "tf32bf16": "TF32 tensor cores with bfloat16 corrections (near float32)",
            "tf32f16": "TF32 tensor cores with float16 corrections on power-of-two scaled operands (float32-accurate)",
            "f16x3": "float16 tensor cores, three products on power-of-two scaled operands (float32-accurate)"
            }[f["precision"]]
    lines = [f"// generated by kernelcraft's offline proposer ({io.title}, mma.sync {what})",
             f"#define BM {f['bm']}", f"#define BN {f['bn']}", f"#define BK {f['bk']}",
             f"#define WM {f['wm']}", f"#define WN {f['wn']}", f"#define STAGES {f['stages']}",
             "#define WTM (BM / WM)", "#define WTN (BN / WN)", "#define FM (WTM / 16)", "#define FN (WTN / 8)",
             "#define NT (WM * WN * 32)", f"#define LDA {mma_lda(f)}", f"#define LDB {mma_ldb(f)}",
             "#define A_STAGE (BM * LDA)", f"#define B_STAGE ({'BN' if bnm else 'BK'} * LDB)",
             "#define AS_AT(r, c) ((r) * LDA + (c))",
             *(["// B's 16-byte chunks XOR-swizzled by row: the four rows a lane's fragments read (4t .. 4t + 3 of a",
                "// 16-deep slice) land in distinct banks for the eight columns g of a fragment",
                "#define BS_AT(r, c) ((r) * LDB + ((((c) >> 2) ^ ((((r) >> 2) & 3) << 1)) << 2) + ((c) & 3))"]
               if vecfrag else ["// B n-major: tap r of output column c", "#define BS_AT(r, c) ((c) * LDB + (r))"]
               if bnm else ["#define BS_AT(r, c) ((r) * LDB + (c))"]),
             f"#define LA {io.la or f'(BM * BK / ({vec} * NT))'}", f"#define LB {io.lb or f'(BK * BN / ({vec} * NT))'}",
             "", _raster(f), _MMA, *([_MMA_F16 if f16 else _MMA_BF16] if mix or x3 else []), *([_LDSM] if ldsm else [])]
    if cp:
        lines.append(cc.CP_ASYNC_PIPELINE)
    if io.helpers:
        lines.append(io.helpers)
    # the high part's bits of x, cut by a mask or rounded (the split of every scheme with a low part)
    high = "__float_as_uint(x) & 0xffffe000u" if mask else "to_tf32(x)"

    def split(x: str, hi: str, lo: str, b_side: bool = False) -> list[str]:
        # the high part: the top 19 bits the tensor core reads, cut by a mask (a lone TF32 product reads them from the
        # value itself) or rounded; the low part is the exact rest, as TF32 (3xTF32) or paired with the high part as
        # bfloat16 for the corrections' mma (A: high at the pair's even k; B: its low part there)
        cut = high if three or mix or not mask else "__float_as_uint(x)"
        scaled = f"{x} * {'sb' if b_side else 'sa'}" if f16 else x
        out = [f"{{ const float x = {scaled};", f"  {hi} = {cut};"]
        if three:
            rest = f"x - __uint_as_float({hi})"
            out.append(f"  {lo} = " + (f"__float_as_uint({rest});" if mask else f"to_tf32({rest});"))
        elif mix:
            out += [f"  const float h = __uint_as_float({hi});",
                    f"  {lo} = {'pack_f16' if f16 else 'pack_bf16'}({'h, x - h' if b_side else 'x - h, h'});"]
        out[-1] += " }"
        return out

    # the products' sums: the running ones, (per-tile sums) fresh ones for this K tile, or (per-step sums) a
    # scratch for this fragment pair's products, added to the running sums at once
    d = {"tile": "part[i][j]", "step": "s_"}.get(f["acc"], "acc[i][j]")

    def products() -> list[str]:
        out = ["#pragma unroll", "  for (int i = 0; i < FM; ++i)",
               "#pragma unroll", "    for (int j = 0; j < FN; ++j) {"]
        if f["acc"] == "step":
            out += ["      float s_[4] = {0.f, 0.f, 0.f, 0.f};"]
        add = (["#pragma unroll", "      for (int e = 0; e < 4; ++e) acc[i][j][e] += s_[e];"]
               if f["acc"] == "step" else [])
        if x3:
            return out + ["      // small terms first: each step's hi*lo + lo*hi, then hi*hi of both steps' taps",
                          f"      mma_f16({d}, al[0][i], bl[0][j]);", f"      mma_f16({d}, al[1][i], bl[1][j]);",
                          f"      mma_f16({d}, ah[i], bh[j]);", *add, "    }"]
        if three:
            out += ["      // small terms first: hi*lo and lo*hi carry the bits TF32 drops (lo*lo is below float32's)",
                    f"      mma_tf32({d}, al[i], bh[j]);", f"      mma_tf32({d}, ah[i], bl[j]);"]
        if mix:
            half = "float16" if f16 else "bfloat16"
            out += [f"      // small terms first: hi*lo + lo*hi as one 16-deep {half} product",
                    f"      {'mma_f16' if f16 else 'mma_bf16'}({d}, al[i], bl[j]);"]
        return out + [f"      mma_tf32({d}, ah[i], bh[j]);", *add, "    }"]

    frags = "  unsigned ah[FM][4], bh[FN][2];" + (" unsigned al[FM][4], bl[FN][2];" if three or mix else "")
    if x3:
        # Two 8-deep steps per pass: each step's taps in the TF32 fragments' lanes and registers (taps kk + 8s + t
        # and + 4), its corrections' float16 pairs as tf32f16 makes them; the high parts' pairs join the two steps
        # (the pair's even k step 0's tap, its odd k step 1's), so one 16-deep float16 product takes 16 taps' hi*hi
        def split16(x: str, s_: int, lo: str, hi: str, keep: str, b_side: bool = False) -> list[str]:
            pair = "h, x - h" if b_side else "x - h, h"
            last = f"  {hi} = pack_f16(h, {keep});" if s_ else f"  {keep} = h;"
            return [f"{{ const float x = {x} * {'sb' if b_side else 'sa'};",
                    f"  const float h = __uint_as_float({high});", f"  {lo} = pack_f16({pair});", last + " }"]
        compute = ["#pragma unroll", "for (int kk = 0; kk < BK; kk += 16) {",
                   "  unsigned ah[FM][4], bh[FN][2], al[2][FM][4], bl[2][FN][2];",
                   "  float ahold[FM][4], bhold[FN][2];  // step 0's high parts, until step 1 pairs them"]
        for s_ in (0, 1):
            compute += ["#pragma unroll", "  for (int i = 0; i < FM; ++i)", "#pragma unroll",
                        "    for (int q = 0; q < 4; ++q)"]
            a_at = f"as[AS_AT(wy * WTM + i * 16 + g + (q & 1) * 8, kk + {8 * s_} + t + (q >> 1) * 4)]"
            compute += ["      " + ln for ln in split16(a_at, s_, f"al[{s_}][i][q]", "ah[i][q]", "ahold[i][q]")]
            compute += ["#pragma unroll", "  for (int j = 0; j < FN; ++j)",
                        "#pragma unroll", "    for (int q = 0; q < 2; ++q)"]
            b_at = f"bs[BS_AT(kk + {8 * s_} + t + q * 4, wx * WTN + j * 8 + g)]"
            compute += ["      " + ln for ln in split16(b_at, s_, f"bl[{s_}][j][q]", "bh[j][q]", "bhold[j][q]", True)]
        compute += products() + ["}"]
    elif vecfrag:
        # The order of the eight products inside one mma is free as long as A and B agree: logical k = t takes
        # slice column 4t + 2s and k = t + 4 takes 4t + 2s + 1 (s: first or second mma of the 16-deep slice), so a
        # lane's A values for both mmas are one 16-byte load per fragment row
        compute = ["#pragma unroll", "for (int kk = 0; kk < BK; kk += 16) {", "  float ar[FM][2][4], br[FN][4];",
                   "#pragma unroll", "  for (int i = 0; i < FM; ++i)",
                   "#pragma unroll", "    for (int h = 0; h < 2; ++h) {",
                   "      const float4 v = *reinterpret_cast<const float4*>(as + AS_AT(wy * WTM + i * 16 + g + h * 8, "
                   "kk + 4 * t));",
                   "      ar[i][h][0] = v.x; ar[i][h][1] = v.y; ar[i][h][2] = v.z; ar[i][h][3] = v.w;", "    }",
                   "#pragma unroll", "  for (int j = 0; j < FN; ++j)", "#pragma unroll",
                   "    for (int e = 0; e < 4; ++e) br[j][e] = bs[BS_AT(kk + 4 * t + e, wx * WTN + j * 8 + g)];",
                   "#pragma unroll", "  for (int s = 0; s < 2; ++s) {", "  " + frags,
                   "#pragma unroll", "    for (int i = 0; i < FM; ++i)",
                   "#pragma unroll", "      for (int q = 0; q < 4; ++q)"]
        compute += ["        " + ln for ln in split("ar[i][q & 1][2 * s + (q >> 1)]", "ah[i][q]", "al[i][q]")]
        compute += ["#pragma unroll", "    for (int j = 0; j < FN; ++j)",
                    "#pragma unroll", "      for (int q = 0; q < 2; ++q)"]
        compute += ["        " + ln for ln in split("br[j][2 * s + q]", "bh[j][q]", "bl[j][q]", True)]
        compute += ["  " + ln for ln in products()] + ["  }", "}"]
    else:
        compute = ["#pragma unroll", "for (int kk = 0; kk < BK; kk += 8) {", frags]
        if ldsm:
            # one ldmatrix.x4 per fragment: its four 8x4 float matrices (rows 0-7 / 8-15, columns kk / kk + 4) are
            # a0..a3, lanes 8m .. 8m + 7 naming matrix m's rows
            compute += ["#pragma unroll", "  for (int i = 0; i < FM; ++i) {", "    unsigned ar[4];",
                        "    ldsm_x4(ar, as + AS_AT(wy * WTM + i * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, "
                        "kk + (lane >> 4) * 4));", "#pragma unroll", "    for (int q = 0; q < 4; ++q)"]
            compute += ["      " + ln for ln in split("__uint_as_float(ar[q])", "ah[i][q]", "al[i][q]")]
            compute += ["  }"]
        else:
            compute += ["#pragma unroll", "  for (int i = 0; i < FM; ++i)", "#pragma unroll",
                        "    for (int q = 0; q < 4; ++q)"]
            a_at = "as[AS_AT(wy * WTM + i * 16 + g + (q & 1) * 8, kk + t + (q >> 1) * 4)]"
            compute += ["      " + ln for ln in split(a_at, "ah[i][q]", "al[i][q]")]
        if ldsm and bnm:
            # n-major B: one ldmatrix.x4 for two fragments (matrices: columns j / j + 1, taps kk / kk + 4), .x2
            # for an odd last one
            b_at = "bs + BS_AT(kk + ((lane >> 3) & 1) * 4, wx * WTN + (j + {}) * 8 + (lane & 7))"
            compute += ["#pragma unroll", "  for (int j = 0; j < FN; j += 2) {", "    unsigned br[4];",
                        f"    if (j + 1 < FN) ldsm_x4(br, {b_at.format('(lane >> 4)')});",
                        f"    else ldsm_x2(br, {b_at.format('0')});", "#pragma unroll",
                        "    for (int q = 0; q < 2; ++q) {"]
            compute += ["      " + ln for ln in split("__uint_as_float(br[q])", "bh[j][q]", "bl[j][q]", True)]
            compute += ["      if (j + 1 < FN) {"]
            compute += ["        " + ln for ln in split("__uint_as_float(br[2 + q])", "bh[j + 1][q]", "bl[j + 1][q]",
                                                        True)]
            compute += ["      }", "    }", "  }"]
        else:
            compute += ["#pragma unroll", "  for (int j = 0; j < FN; ++j)",
                        "#pragma unroll", "    for (int q = 0; q < 2; ++q)"]
            compute += ["      " + ln for ln in split("bs[BS_AT(kk + t + q * 4, wx * WTN + j * 8 + g)]", "bh[j][q]",
                                                      "bl[j][q]", True)]
        compute += products() + ["}"]
    if f["acc"] == "tile":
        compute = ["// this tile's products in fresh registers, added to the running sums with round-to-nearest float",
                   "// adds: the tensor core's own accumulation truncates, and over K the truncations add up",
                   "float part[FM][FN][4];", "#pragma unroll", "for (int i = 0; i < FM; ++i)", "#pragma unroll",
                   "  for (int j = 0; j < FN; ++j)", "#pragma unroll",
                   "    for (int e = 0; e < 4; ++e) part[i][j][e] = 0.f;", *compute,
                   "#pragma unroll", "for (int i = 0; i < FM; ++i)", "#pragma unroll", "  for (int j = 0; j < FN; ++j)",
                   "#pragma unroll", "    for (int e = 0; e < 4; ++e) acc[i][j][e] += part[i][j][e];"]
    body = [io.ints, "extern __shared__ __align__(128) float smem[];",
            "float* const As = smem;  // [STAGES][BM][LDA]",
            f"float* const Bs = smem + STAGES * A_STAGE;  // [STAGES][{'BN' if bnm else 'BK'}][LDB]",
            "int bm0, bn0;", "tile_origin(M, N, &bm0, &bn0);",
            "const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;",
            "const int wy = warp / WN, wx = warp % WN;",
            "float acc[FM][FN][4];", "#pragma unroll", "for (int i = 0; i < FM; ++i)", "#pragma unroll",
            "  for (int j = 0; j < FN; ++j)", "#pragma unroll", "    for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;",
            "const int ntiles = (K + BK - 1) / BK;", *io.prelude,
            *(["// the operands' scales (powers of two: exact), and the product's inverse, from the absmax pass",
               "const float sa = pow2_scale(amax[0]), sb = pow2_scale(amax[1]);",
               "const float ia = 1.f / sa, ib = 1.f / sb;"] if f16 else []),
            "// this thread's share of the A and B tiles at k0, into one pipeline stage",
            "auto load_tile = [&](float* as, float* bs, int k0) {", *("  " + ln for ln in io.a_tile), "#pragma unroll",
            "  for (int l = 0; l < LA; ++l) {", *("    " + ln for ln in io.a_ld), "  }", "#pragma unroll",
            "  for (int l = 0; l < LB; ++l) {", *("    " + ln for ln in io.b_ld), "  }", "};"]
    commit = ["cp_async_commit();"] if cp else []
    body += [f"// {f['stages']}-stage pipeline: tiles kt+1 .. kt+STAGES-1 are loading while tile kt is computed"
             if f["stages"] > 1 else "// one stage: load, then compute"]
    body += ["for (int s = 0; s < STAGES - 1; ++s) {",
             "  if (s < ntiles) load_tile(As + s * A_STAGE, Bs + s * B_STAGE, s * BK);"]
    body += ["  " + ln for ln in commit] + ["}"]
    body += ["for (int kt = 0; kt < ntiles; ++kt) {", "  const int next = kt + STAGES - 1;",
             "  if (next < ntiles)",
             "    load_tile(As + (next % STAGES) * A_STAGE, Bs + (next % STAGES) * B_STAGE, next * BK);"]
    body += ["  " + ln for ln in commit]
    if cp:
        body += ["  cp_async_wait<STAGES - 1>();"]
    body += ["  __syncthreads();", "  {", "    const float* as = As + (kt % STAGES) * A_STAGE;",
             "    const float* bs = Bs + (kt % STAGES) * B_STAGE;"]
    body += ["    " + ln for ln in compute] + ["  }", "  __syncthreads();", "}"]
    if cp:
        body += ["cp_async_wait<0>();"]
    if f16:
        body += ["#pragma unroll", "for (int i = 0; i < FM; ++i)", "#pragma unroll", "  for (int j = 0; j < FN; ++j)",
                 "#pragma unroll", "    for (int e = 0; e < 4; ++e) acc[i][j][e] = acc[i][j][e] * ia * ib;"]
    body += ["// the accumulators straight from registers to the output, only what lies inside it",
             "#pragma unroll", "for (int i = 0; i < FM; ++i)", "#pragma unroll", "  for (int j = 0; j < FN; ++j)",
             "#pragma unroll", "    for (int h = 0; h < 2; ++h) {",
             "      const int r = bm0 + wy * WTM + i * 16 + g + h * 8, c = bn0 + wx * WTN + j * 8 + 2 * t;",
             "      if (r >= M) continue;"]
    if io.pair_store:
        body += ["      " + ln for ln in io.pair_store]
    else:
        body += ["#pragma unroll", "      for (int e = 0; e < 2; ++e) {", "        const int col = c + e;",
                 "        if (col >= N) break;", "        const float v = acc[i][j][2 * h + e];",
                 *("        " + ln for ln in io.store), "      }"]
    body += ["    }"]
    args = io.args + (", const unsigned* __restrict__ amax" if f16 else "")
    lines.append(f'extern "C" __global__ void __launch_bounds__(NT) {name}({args}) {{')
    lines += ["  " + ln if ln else "" for ln in body] + ["}"]
    return "\n".join(lines) + "\n"


_LDSM = r"""
// Four 8x4 float matrices from shared memory in one instruction (ldmatrix's 8x8 16-bit matrices are 8x4 32-bit
// ones): lane l gives the address of row l % 8 of matrix l / 8 (16-byte aligned) and receives (row l / 4,
// column l % 4) of each, the layout of a TF32 m16n8k8 A fragment's registers.
__device__ __forceinline__ void ldsm_x4(unsigned* r, const float* p) {
  const unsigned a = (unsigned)__cvta_generic_to_shared(p);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
__device__ __forceinline__ void ldsm_x2(unsigned* r, const float* p) {  // matrices 0 and 1 (lanes 0-15's rows)
  const unsigned a = (unsigned)__cvta_generic_to_shared(p);
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];" : "=r"(r[0]), "=r"(r[1]) : "r"(a));
}
"""


_MMA_BF16 = r"""
// The 3xTF32 corrections in one instruction: D += A(16x16) * B(16x8), bfloat16 inputs, float32 accumulate, whose
// 16-deep k concatenates the 8 taps' high and low parts: pair k of A holds (high, low) of tap k, pair k of B
// (low, high), so the product is sum_k hi(a) lo(b) + lo(a) hi(b). Fragments (PTX ISA, mma.m16n8k16 .bf16): a0 holds
// (g, 2t) in its low half and (g, 2t + 1) in its high half, a1 row g + 8, a2/a3 columns 2t + 8 and 2t + 9; b0 holds
// (2t, g) and (2t + 1, g), b1 rows 2t + 8 and 2t + 9: the same lanes and registers as the TF32 fragments of taps t
// and t + 4, so each lane packs its own values. Rounding the high part (11 bits) and the low part to bfloat16's 8
// costs up to about 2^-18 of |a b| per tap (3xTF32: 2^-22; TF32 alone: 2^-11): inside the default tolerance, but
// over K = 4096 the outputs near zero miss 1e-4 of the exact product.
"""

# The 16-bit product and pair packing both correction schemes use, HALF being bf16 or f16 (the same fragments).
_PACK_HALF = (r"""__device__ __forceinline__ unsigned pack_HALF(float upper, float lower) {"""
              r"""  // lower: the pair's first (even) k
  unsigned r;
  asm("cvt.rn.HALFx2.f32 %0, %1, %2;" : "=r"(r) : "f"(upper), "f"(lower));
  return r;
}
""")
_MMA_HALF = cc.MMA_HALF + _PACK_HALF
_MMA_BF16 += _MMA_HALF.replace("HALF", "bf16")


_MMA_F16 = r"""
// The 3xTF32 corrections in one instruction: D += A(16x16) * B(16x8), float16 inputs, float32 accumulate, whose
// 16-deep k concatenates the 8 taps' high and low parts (pair k of A (high, low), of B (low, high); the fragments'
// lanes and registers are those of the TF32 fragments of taps t and t + 4). float16 keeps TF32's 11 significant
// bits, so in float16's normal range a high part converts exactly and a low part rounds to 11 bits as 3xTF32's
// TF32 low part does: the operands are first scaled by powers of two that put each matrix's largest magnitude in
// [2^14, 2^15) (from the absmax pass), the accumulators unscaled at the end. Low parts under 2^-14 after scaling
// (elements under about 2^-17 of their matrix's largest) keep fewer bits, on terms 2^-11 of products that small.
//""" + cc.POW2_SCALE + _MMA_HALF.replace("HALF", "f16")

ABSMAX = r"""
// max |x| over A (blockIdx.y 0) and B (1) as float bits (the bits of non-negative floats order as the floats; NaN
// above infinity), into out[0] and out[1]: the float16 products' scales (matmul_cuda, precisions tf32f16 and f16x3).
extern "C" __global__ void __launch_bounds__(256) absmax2(const float* __restrict__ A, const float* __restrict__ B,
                                                          long long na, long long nb, unsigned* __restrict__ out) {
  const float* p = blockIdx.y ? B : A;
  const long long n = blockIdx.y ? nb : na, step = (long long)gridDim.x * 256;
  long long i = (long long)blockIdx.x * 256 + threadIdx.x, tail = 0;
  unsigned m = 0;
  if ((reinterpret_cast<unsigned long long>(p) & 15) == 0) {
    const float4* p4 = reinterpret_cast<const float4*>(p);
    for (long long v = i; v < n / 4; v += step) {
      const float4 x = __ldg(p4 + v);
      m = max(m, max(max(__float_as_uint(x.x) & 0x7fffffffu, __float_as_uint(x.y) & 0x7fffffffu),
                     max(__float_as_uint(x.z) & 0x7fffffffu, __float_as_uint(x.w) & 0x7fffffffu)));
    }
    tail = n / 4 * 4;
  }
  for (long long v = tail + i; v < n; v += step) m = max(m, __float_as_uint(__ldg(p + v)) & 0x7fffffffu);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) m = max(m, __shfl_xor_sync(0xffffffffu, m, o));
  if ((threadIdx.x & 31) == 0) atomicMax(out + blockIdx.y, m);
}
"""


def _gemv(f: dict, name: str) -> str:
    T, vec = f["gthreads"], f["vec"]
    if vec == 4:  # the launcher checks K % 4 == 0 and 16-byte aligned A and B
        loop = ["const float4* a4 = reinterpret_cast<const float4*>(a);",
                "const float4* b4 = reinterpret_cast<const float4*>(B);",
                f"for (long long i = threadIdx.x; i < K / 4; i += {T}) {{",
                "  const float4 x = __ldcs(a4 + i), y = __ldg(b4 + i);  // A streamed once; the vector stays cached",
                "  acc = fmaf(x.x, y.x, acc); acc = fmaf(x.y, y.y, acc);",
                "  acc = fmaf(x.z, y.z, acc); acc = fmaf(x.w, y.w, acc);", "}"]
    else:
        loop = [f"for (long long i = threadIdx.x; i < K; i += {T}) acc = fmaf(__ldcs(a + i), __ldg(B + i), acc);"]
    body = ["const long long K = K_;", "const float* a = A + (long long)blockIdx.x * K;", "float acc = 0.f;", *loop,
            "#pragma unroll", "for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);",
            f"__shared__ float part[{T // 32}];", "if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = acc;",
            "__syncthreads();", "if (threadIdx.x < 32) {",
            f"  float v = threadIdx.x < {T // 32} ? part[threadIdx.x] : 0.f;", "  #pragma unroll",
            "  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);",
            "  if (threadIdx.x == 0) C[blockIdx.x] = v;", "}"]
    return (f"// generated by kernelcraft's offline proposer (matmul_cuda, gemv: one block of {T} per row)\n"
            f'extern "C" __global__ void __launch_bounds__({T}) {name}({_ARGS}) {{\n'
            + "\n".join("  " + ln for ln in body) + "\n}\n")


def render_source(spec: OpSpec, f: dict, name: str, fast: bool = True) -> str:
    f = normalise(spec, f)
    if f["algo"] == "gemv":
        return _gemv(f, name)
    if f["algo"] == "naive":
        return _naive(name)
    if f["algo"] == "smem":
        return _smem(f, name)
    if f["algo"] == "simt":
        return _simt(f, name)
    if f["algo"] == "wgmma":
        return wg.source(f, name, _raster(f))
    if f["split"] == "once":
        return ps.source(f, name, _raster(f), mma_threads(f))
    return _mma(f, name, fast)


def _wgmma_fallback(f: dict) -> dict:
    """The mma.sync kernel of the same precision and accumulation, for operands the 16-byte copies cannot take."""
    return baseline(None) | _MMA_DEFAULT | {"algo": "mma", "precision": f["precision"], "acc": f["acc"],
                                           "raster": f["raster"], "stages": 2, "pad": 4}


def _safe_features(spec: OpSpec, f: dict) -> dict:
    """The fallback for operands the vector path cannot take: the same kernel with scalar loads."""
    if f["algo"] == "wgmma":
        return normalise(spec, _wgmma_fallback(f) | {"vec": 1, "cp_async": False})
    return normalise(spec, dict(f, vec=1, cp_async=False))


def fast_conditions(f: dict) -> list[str]:
    if f["algo"] == "gemv":
        return ["K % 4 == 0", "a.data_ptr() % 16 == 0", "b.data_ptr() % 16 == 0"] if f["vec"] == 4 else []
    if f["algo"] == "mma" and f["split"] == "once":  # 16-byte chunks of float16 parts along K
        return ["K % 8 == 0", "a.data_ptr() % 16 == 0", "out.data_ptr() % 16 == 0"]
    if f["algo"] in ("mma", "wgmma") or (f["algo"] == "simt" and f["vec"] == 4):
        return ["K % 4 == 0", "N % 4 == 0", "a.data_ptr() % 16 == 0", "b.data_ptr() % 16 == 0",
                "out.data_ptr() % 16 == 0"]
    return []


def _launch(f: dict, var: str) -> list[str]:
    if f["algo"] == "gemv":
        return [f"{var}(grid=(M,), block=({f['gthreads']},), args=(a, b, out, M, N, K))"]
    if f["algo"] == "naive":
        return [f"{var}(grid=(-(-N // 16), -(-M // 16)), block=(16, 16), args=(a, b, out, M, N, K))"]
    if f["algo"] == "smem":
        t = f["tile"]
        return [f"{var}(grid=(-(-N // {t}), -(-M // {t})), block=({t}, {t}), args=(a, b, out, M, N, K))"]
    if f["algo"] == "wgmma":
        return ["bt = torch.empty((N, K), device=a.device, dtype=a.dtype)  # B transposed: TF32 wgmma reads K-major",
                "_transpose(grid=(-(-N // 32), -(-K // 32)), block=(32, 8), args=(b, bt, K, N))",
                f"{var}(grid=(-(-M // {f['bm']}) * -(-N // {f['bn']}),), block=({wg.threads(f)},), "
                "args=(a, bt, out, M, N, K))"]
    threads = simt_threads(f) if f["algo"] == "simt" else mma_threads(f)
    grid = f"grid=(-(-M // {f['bm']}) * -(-N // {f['bn']}),), block=({threads},)"
    if f["algo"] == "mma" and f["split"] == "once":
        return ps.launch(f, var, threads)
    if f["algo"] == "mma" and f["precision"] in SCALED:
        return ["amax = torch.zeros(2, dtype=torch.int32, device=a.device)",
                "_absmax(grid=(min(1024, max(1, -(-max(M * K, K * N) // 1024))), 2), block=(256,), "
                "args=(a, b, M * K, K * N, amax))",
                f"{var}({grid}, args=(a, b, out, M, N, K, amax))"]
    return [f"{var}({grid}, args=(a, b, out, M, N, K))"]


def _kernel_line(spec: OpSpec, f: dict, var: str, name: str, src: str) -> str:
    smem = {"mma": f", shared_mem={mma_smem_bytes(f)}", "wgmma": f", shared_mem={wg.smem_bytes(f)}"}.get(f["algo"], "")
    return f'{var} = cuda_kernel({src}, "{name}"{smem})'


def render(spec: OpSpec, f: dict) -> tuple[str, list[str]]:
    f = normalise(spec, f)
    conds = fast_conditions(f)
    mod = [f"SRC = r'''\n{render_source(spec, f, 'matmul_fast')}'''", "",
           _kernel_line(spec, f, "_fast", "matmul_fast", "SRC")]
    if f["algo"] == "wgmma":
        mod += ["", f"SRC_T = r'''\n{wg.TRANSPOSE}'''", "", '_transpose = cuda_kernel(SRC_T, "transpose_b")']
    if f["algo"] == "mma" and f["precision"] in SCALED:
        mod += ["", f"SRC_MAX = r'''\n{ABSMAX}'''", "", '_absmax = cuda_kernel(SRC_MAX, "absmax2")']
    if f["algo"] == "mma" and f["split"] == "once":
        mod += ["", f"SRC_SPLIT = r'''\n{ps.SPLIT}'''", "", '_split_a = cuda_kernel(SRC_SPLIT, "split_a")',
                '_split_bt = cuda_kernel(SRC_SPLIT, "split_bt")']
    safe = _safe_features(spec, f)
    if conds:
        mod += ["", "# Scalar-load fallback for operands the vector path cannot take (see forward).",
                f"SRC_SAFE = r'''\n{render_source(spec, safe, 'matmul_safe', fast=False)}'''", "",
                _kernel_line(spec, safe, "_safe", "matmul_safe", "SRC_SAFE")]
    product = []
    if f["algo"] == "gemv":
        product += ["if N != 1:", "    raise ValueError(f'this kernel multiplies by a vector: B must be (K, 1), got "
                    "{tuple(b.shape)}')"]
    if conds:
        product.append("if " + " and ".join(conds) + ":")
        product += ["    " + ln for ln in _launch(f, "_fast")]
        product.append("else:")
        product += ["    " + ln for ln in _launch(safe, "_safe")]
    else:
        product += _launch(f, "_fast")
    return matmul_layout.wrap(spec, BACKEND, "\n".join(mod), product)
