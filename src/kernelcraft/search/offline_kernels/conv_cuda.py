"""CUDA kernels for a 2-D convolution (NCHW, float32, groups 1, zero padding), optionally followed by ReLU and a
max pool (the conv+ReLU+MaxPool block).

The direct kernel computes one output element per thread from the input and weights in global memory: the
baseline. The fast path is an implicit GEMM on tensor cores, the matmul family's ``mma.sync`` kernel with other
operand loads: the GEMM's rows are the output pixels (M = N*OH*OW), its columns the output channels, its depth the
C*R*S taps; the A tile is gathered from the input on the fly (im2col never materialised, out-of-image taps read as
zeros), the B tile read from the weights, and the epilogue adds the bias, applies the ReLU and scatters to NCHW.
The conv+ReLU+MaxPool block is two kernels: the convolution with bias and ReLU fused, then the pool; the
intermediate between them is float, or bfloat16 (``mid``) to halve the block's largest traffic.

A strided layer's gather can be folded (``gather: fold``): the GEMM's depth is reordered as (tap row block, tap
column block, channel, row phase, column phase), the kernel padded with zero taps to a multiple of the stride, so
the stride's column phases of one tap block are neighbouring input floats: each thread copies pieces of 2 or 4
floats (8- or 16-byte cp.async) where the plain gather copies one, and the weights, rearranged once per call into
that order as a K x COUT matrix, load as 16-byte rows. (Space-to-depth without writing the rearranged input.)
Any layer's gather can instead read a channels-last copy of the input (``gather: nhwc``, written once per call,
channels padded to a multiple of 4), its depth ordered (kernel row, kernel column, channel): 16-byte pieces of four
channels of one tap. Both keep each thread's pixels' window origins in registers (its rows of the A tile are the
same in every K tile).

The layer's geometry (channels, kernel, stride, padding, dilation) is fixed by ModelNew's nn.Conv2d, so it is
compiled in as constants (divisions by them become multiplies); batch and image sizes are arguments.
"""

from __future__ import annotations

import dataclasses

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
    "gather": ("tap", "fold", "nhwc"),
    "pool_order": ("forward", "reverse"),
}
_GEMM_DEFAULT = {"bm": 128, "bn": 64, "bk": 32, "wm": 4, "wn": 2}


def baseline(spec: OpSpec) -> dict:
    """One thread per output element, every tap read from global memory."""
    return {"gen": GEN, "algo": "direct", "threads": 256, "load": "plain", "unroll": False, "launch_min": 0,
            "fast_math": False, "grid": "exact", "bm": 128, "bn": 64, "bk": 32, "wm": 4, "wn": 2, "stages": 1,
            "cp_async": False, "pad": 0, "precision": "3xtf32", "raster": 0, "acc": "direct", "frag": "scalar",
            "split": "rna", "pool_threads": 256, "gather": "tap",
            "pool_order": "forward", "mid": "f32", "ldsm": False}


def gemm_features(f: dict) -> dict:
    """The feature dict matmul_cuda's tensor-core kernel reads (scalar loads: the A tile is a gather)."""
    return {"algo": "mma", "bm": f["bm"], "bn": f["bn"], "bk": f["bk"], "wm": f["wm"], "wn": f["wn"], "vec": 1,
            "stages": f["stages"], "cp_async": f["cp_async"], "pad": f["pad"], "precision": f["precision"],
            "raster": f["raster"], "acc": f["acc"], "frag": f.get("frag", "scalar"),
            "split": f.get("split", "rna"), "ldsm": f.get("ldsm", False), "bnm": f.get("ldsm", False)}


def channels_padded(spec: OpSpec) -> int:
    """Channels per pixel of the channels-last copy: the layer's, padded with zeros to a multiple of 4."""
    return -(-spec.geometry["cin"] // 4) * 4


def _depth(spec: OpSpec, gather: str) -> int:
    """The GEMM's depth in the gather's order: the plain gather's C*R*S taps, or padded with zero taps (a folded
    kernel to a multiple of the stride, channels-last channels to a multiple of 4)."""
    g = spec.geometry
    if gather == "fold":
        q = -(-g["r"] // g["stride"])
        return q * q * g["cin"] * g["stride"] ** 2
    if gather == "nhwc":
        return g["r"] * g["r"] * channels_padded(spec)
    return g["cin"] * g["r"] * g["r"]


def fold_width(spec: OpSpec) -> int:
    """Floats per piece of a folded gather: the widest of 4 and 2 dividing the stride and the padding, so every
    piece starts at an aligned column of its input row (the launcher checks the row width too); 0 where the layer
    cannot fold (stride 1, dilation, or no width above one float)."""
    g = spec.geometry
    if g["dil"] != 1 or g["stride"] < 2:
        return 0
    return next((w for w in (4, 2) if g["stride"] % w == 0 and g["pad"] % w == 0), 0)


def piece_width(spec: OpSpec, gather: str) -> int:
    """Floats per piece of a gather of pieces: the fold's width, 4 channels of a channels-last copy, 0 otherwise."""
    return {"fold": fold_width(spec), "nhwc": 4}.get(gather, 0)


def _pieces_ok(f: dict, pw: int) -> bool:
    """A gather of ``pw``-float pieces fits the tiles: each thread's pieces are whole, its piece column is the
    same in every K tile, and its pixels' window origins (three registers each) fit in registers."""
    nt, per_row = mm.mma_threads(gemm_features(f)), f["bk"] // pw
    return nt % per_row == 0 and (f["bm"] * per_row) % nt == 0 and f["bm"] * per_row // nt <= 8


def smem_bytes(f: dict) -> int:
    """The pipeline's stages plus the per-block table of output pixels (an int4 per row of the tile), which a
    gather of pieces keeps in registers instead."""
    return mm.mma_smem_bytes(gemm_features(f)) + (16 * f["bm"] if f.get("gather", "tap") == "tap" else 0)


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
                 "split", "ldsm")
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
    g["ldsm"] = bool(g["ldsm"]) and g["frag"] == "scalar"
    if g["ldsm"]:
        g["pad"] = 4  # ldmatrix's eight 16-byte rows in distinct banks
    g["pad"] = 4 if g["pad"] and g["frag"] == "scalar" else 0  # vector fragments have their own layout
    g["stages"] = g["stages"] if g["stages"] in (1, 2, 3) else 1
    g["raster"] = g["raster"] if g["raster"] in (0, 8) else 0
    if g["algo"] == "mma":
        if any(g[k] not in TUNABLES[k] for k in ("bm", "bn", "bk", "wm", "wn")) or not _gemm_ok(g):
            g |= _GEMM_DEFAULT
            while not _gemm_ok(g) and g["stages"] > 1:
                g["stages"] -= 1
    pw = piece_width(spec, g["gather"])
    if g["algo"] != "mma" or not pw or not _pieces_ok(g, pw):
        g["gather"] = "tap"
    if not spec.geometry.get("pool_k") or g["pool_threads"] not in TUNABLES["pool_threads"]:
        g["pool_threads"] = 256
    if not spec.geometry.get("pool_k") or g["pool_order"] not in TUNABLES["pool_order"]:
        g["pool_order"] = "forward"
    if not (spec.geometry.get("pool_k") and g["algo"] == "mma" and g["mid"] == "bf16"):
        g["mid"] = "f32"
    return g


def _constants(spec: OpSpec, relu: bool) -> list[str]:
    g = spec.geometry
    return [f"#define CIN {g['cin']}", f"#define COUT {g['cout']}", f"#define KS {g['r']}",
            f"#define ST {g['stride']}", f"#define PAD {g['pad']}", f"#define DIL {g['dil']}",
            "#define KD (CIN * KS * KS)", f"#define HAS_BIAS {g['bias']}", f"#define RELU {int(relu)}"]


_RELU = "__device__ __forceinline__ float relu(float v) { return v < 0.f ? 0.f : v; }  // NaN stays NaN"

# The pooled block's intermediate in bfloat16: float's range (no overflow where float has none), 8 bits of
# mantissa, so half the bytes between the convolution and the pool at a relative error of at most 2^-9.
_TO_BF16 = r"""
__device__ __forceinline__ unsigned short to_mid(float v) {  // round to nearest even; NaN stays NaN
  unsigned short h;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(v));
  return h;
}"""


def _mid_word(f: dict) -> str:
    """The C type of an element of the convolution's output ``Y``: float, or a bfloat16 as its raw 16-bit word."""
    return "unsigned short" if f["mid"] == "bf16" else "float"


def _args(f: dict) -> str:
    """The convolution kernels' arguments (the pool reads ``Y`` as the same type)."""
    return ("const float* __restrict__ X, const float* __restrict__ Wt, const float* __restrict__ Bias, "
            f"{_mid_word(f)}* __restrict__ Y, long long N_, long long H_, long long W_, long long OH_, long long OW_")


def _direct(spec: OpSpec, f: dict, name: str, relu: bool) -> str:
    ld = "__ldg(&{})" if f["load"] == "ldg" else "{}"
    T = f["threads"]
    lb = f"__launch_bounds__({T}, {f['launch_min']})" if f["launch_min"] else f"__launch_bounds__({T})"
    unroll = "#pragma unroll" if f["unroll"] else "#pragma unroll 1"
    lines = ["// generated by kernelcraft's offline proposer (conv_cuda, direct)", *_constants(spec, relu), _RELU,
             f'extern "C" __global__ void {lb} {name}({_args(f)}) {{',
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


_CP_ASYNC8 = r"""
// 8-byte asynchronous global -> shared copy of one piece of a folded gather, zero-filled outside the image.
__device__ __forceinline__ void cp_async8(void* smem, const void* gmem, bool valid) {
  const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;" :: "r"(s), "l"(gmem), "r"(valid ? 8 : 0) : "memory");
}
"""


@dataclasses.dataclass(frozen=True)
class _Pieces:
    """A gather of pieces of neighbouring input floats: the order of the GEMM's depth kd and where tap kd of a
    pixel lies. ``decompose`` takes kd to (ci, dr, ds): channel, kernel row and kernel column (dilated);
    ``tap_ok`` says whether that tap is real (else its weight row is zero and its piece is not read); ``tap`` is
    its offset from the pixel's window origin, ``origin`` the window origin's offset in the (rearranged) input."""

    consts: tuple[str, ...]
    decompose: tuple[str, ...]
    tap_ok: str
    tap: str
    origin: str


_FOLD = _Pieces(
    consts=("#define FQ ((KS + ST - 1) / ST)  // tap blocks per kernel row and column",
            "#define KP (FQ * FQ * CIN * ST * ST)  // the folded GEMM depth: zero taps pad KS to FQ * ST"),
    # kd -> (tap block, channel, row phase, column phase); unsigned, so the divisions by constants are a multiply
    # and a shift with no sign fix-up
    decompose=("const unsigned tb = kd / (CIN * ST * ST), rem = kd - tb * (CIN * ST * ST);",
               "const unsigned ci = rem / (ST * ST), ph = rem - ci * (ST * ST), fa = ph / ST, fb = ph - fa * ST;",
               "const unsigned qr = tb / FQ, qc = tb - qr * FQ;",
               "const int dr = (int)(qr * ST + fa), ds = (int)(qc * ST + fb);"),
    tap_ok="(dr < KS) & (ds < KS)", tap="(int)(ci * H) * W + dr * W + ds",
    origin="n * (CIN * H * W) + ih * W + iw")

_NHWC = _Pieces(
    consts=("#define CP ((CIN + 3) / 4 * 4)  // channels per pixel of the channels-last copy, padded with zeros",
            "#define KP (KS * KS * CP)"),
    # kd -> (kernel row, kernel column, channel)
    decompose=("const unsigned tp = kd / CP, ci = kd - tp * CP, tr = tp / KS, tc = tp - tr * KS;",
               "const int dr = (int)(tr * DIL), ds = (int)(tc * DIL);"),
    tap_ok="(ci < CIN)", tap="(dr * W + ds) * CP + (int)ci", origin="((n * H + ih) * W + iw) * CP")


_LAYOUTS = {"fold": _FOLD, "nhwc": _NHWC}  # each gather of pieces' order of the GEMM's depth


def _weights_source(spec: OpSpec, lay: _Pieces, nmajor: bool = False) -> str:
    """The weights in the gather's depth order as a KP x COUT row-major matrix (or COUT x KP, ``nmajor``: each
    filter's taps in a row, for a B tile kept n-major), zero at the padding taps."""
    at = "const unsigned k = i / KP, kd = i % KP;" if nmajor else "const unsigned k = i % COUT, kd = i / COUT;"
    body = ["const int i = blockIdx.x * blockDim.x + threadIdx.x;", "if (i >= KP * COUT) return;", at,
            *lay.decompose,
            f"Wf[i] = ({lay.tap_ok}) ? Wt[((k * CIN + ci) * KS + dr / DIL) * KS + ds / DIL] : 0.f;"]
    return ("// generated by kernelcraft's offline proposer (conv_cuda, weights in the gather's order)\n"
            + "\n".join(_constants(spec, False) + list(lay.consts)) + "\n"
            + 'extern "C" __global__ void prep_weights(const float* __restrict__ Wt, float* __restrict__ Wf) {\n'
            + "\n".join("  " + ln for ln in body) + "\n}\n")


def _nhwc_source(spec: OpSpec) -> str:
    """The input copied channels-last, each pixel's channels padded with zeros to a multiple of 4: one thread per
    pixel reads its channels (neighbouring threads, neighbouring columns) and writes them as 16-byte vectors."""
    return ("// generated by kernelcraft's offline proposer (conv_cuda, the input channels-last)\n"
            + "\n".join(_constants(spec, False) + list(_NHWC.consts)) + "\n" + r"""
extern "C" __global__ void to_nhwc(const float* __restrict__ X, float* __restrict__ Xc, long long pixels,
                                   long long plane) {
  const long long q = blockIdx.x * (long long)blockDim.x + threadIdx.x;  // pixel (n, h, w)
  if (q >= pixels) return;
  const long long n = q / plane, hw = q - n * plane;
  const float* x = X + n * CIN * plane + hw;
  float4* out = reinterpret_cast<float4*>(Xc + q * CP);
#pragma unroll
  for (int c = 0; c < CP; c += 4)
    out[c / 4] = make_float4(c < CIN ? x[c * plane] : 0.f, c + 1 < CIN ? x[(c + 1) * plane] : 0.f,
                             c + 2 < CIN ? x[(c + 2) * plane] : 0.f, c + 3 < CIN ? x[(c + 3) * plane] : 0.f);
}
""")



def _weights_loads(nmajor: bool, vec: bool, cp: bool) -> tuple[tuple[str, ...], str]:
    """(B tile loads, loads per thread) from the rearranged weights: KP x COUT (k-major) or, for ``ldmatrix``,
    COUT x KP (n-major, each filter's taps a row); 16-byte pieces along the contiguous dimension when ``vec``."""
    at = "BS_AT(c, r)" if nmajor else "BS_AT(r, c)"
    inner = "BK" if nmajor else "BN"
    idx = "kd = k0 + c, k = bn0 + r" if nmajor else "kd = k0 + r, k = bn0 + c"
    src = "Wt + k * KP + kd" if nmajor else "Wt + kd * COUT + k"
    if vec:
        put = (f"cp_async16(bs + {at}, src, ok);" if cp else
               f"*reinterpret_cast<float4*>(bs + {at}) = ok ? *reinterpret_cast<const float4*>(src) "
               ": make_float4(0.f, 0.f, 0.f, 0.f);")
        what = "B[kd .. kd + 4, k] from the rearranged weights, a COUT x KP matrix" if nmajor else \
            "B[kd, k .. k + 4) from the rearranged weights, a KP x COUT matrix"
        return ((f"// {what}", "const int v = tid + l * NT;", "if (v < BK * BN / 4) {",
                 f"  const int r = v / ({inner} / 4), c = v % ({inner} / 4) * 4, {idx};",
                 "  const bool ok = kd < KP && k < COUT;", f"  const float* src = ok ? {src} : Wt;",
                 "  " + put, "}"), "((BK * BN / 4 + NT - 1) / NT)")
    put = f"cp_async4(bs + {at}, src, ok);" if cp else f"bs[{at}] = ok ? *src : 0.f;"
    return ((f"const int v = tid + l * NT, r = v / {inner}, c = v % {inner}, {idx};",
             "const bool ok = kd < KP && k < COUT;", f"const float* src = ok ? {src} : Wt;", put),
            "")  # one float each, as the plain gather's B loads

def _pieces_io(spec: OpSpec, f: dict, relu: bool, pw: int, lay: _Pieces) -> mm.GemmIO:
    """A gather of pieces of ``pw`` neighbouring input floats in the order ``lay`` gives the GEMM's depth; ``pw``
    1 is the same order one float at a time (a folded layer's rows whose width the pieces do not divide)."""
    io = _gemm_io(spec, f, relu, depth="KP")
    cp = f["cp_async"]
    put_a = {4: "cp_async16(as + AS_AT(r, c), src, ok);", 2: "cp_async8(as + AS_AT(r, c), src, ok);",
             1: "cp_async4(as + AS_AT(r, c), src, ok);"}[pw] if cp else {
        4: "*reinterpret_cast<float4*>(as + AS_AT(r, c)) = ok ? *reinterpret_cast<const float4*>(src) "
           ": make_float4(0.f, 0.f, 0.f, 0.f);",
        2: "*reinterpret_cast<float2*>(as + AS_AT(r, c)) = ok ? *reinterpret_cast<const float2*>(src) "
           ": make_float2(0.f, 0.f);",
        1: "as[AS_AT(r, c)] = ok ? *src : 0.f;"}[pw]
    a_tile = ("// this thread's piece column: the tap it starts at, the same for every row it copies in this K tile",
              f"const unsigned ca = tid % (BK / {pw}), kd = k0 + ca * {pw};", *lay.decompose,
              f"const int tap = {lay.tap};",
              f"const bool kin = (kd < KP) & {lay.tap_ok};  // a padding tap's piece is not read")
    a_ld = ("// A[m, kd .. kd + PW): output pixel m's piece (all inside the image or all outside)",
            f"const int r = tid / (BK / {pw}) + l * (NT / (BK / {pw})), c = ca * {pw};",
            "const bool ok = kin & ((unsigned)(pih[l] + dr) < (unsigned)H) & ((unsigned)(piw[l] + ds) < (unsigned)W);",
            "const float* src = X + (ok ? poff[l] + tap : 0);", put_a)
    prelude = ("// this thread's pixels, the same rows of the A tile in every K tile: each one's window origin (offset",
               "// in the input, row, column) kept in registers",
               "int poff[LA], pih[LA], piw[LA];", "#pragma unroll", "for (int l = 0; l < LA; ++l) {",
               f"  const int m = bm0 + tid / (BK / {pw}) + l * (NT / (BK / {pw}));", "  if (m < M) {",
               "    const int n = m / P, p = m - n * P, oh = p / OW, ow = p - oh * OW;",
               "    const int ih = oh * ST - PAD, iw = ow * ST - PAD;",
               f"    pih[l] = ih; piw[l] = iw; poff[l] = {lay.origin};",
               "  } else {", "    poff[l] = 0; pih[l] = -(1 << 28); piw[l] = 0;  // never inside the image", "  }",
               "}")
    # 16-byte pieces when the weights' contiguous dimension (depth for n-major, filters for k-major) allows them
    wide = _depth(spec, f["gather"]) % 4 == 0 if f["ldsm"] else spec.geometry["cout"] % 4 == 0
    b_ld, lb = _weights_loads(f["ldsm"], wide, cp)
    # cp_async4 (pw 1) comes with the plain gather's helpers, cp_async16 with the pipeline's
    helpers = io.helpers + "\n" + "\n".join(lay.consts) + "\n" + (_CP_ASYNC8 if cp and pw == 2 else "")
    return dataclasses.replace(
        io, a_ld=a_ld, b_ld=b_ld, a_tile=a_tile, helpers=helpers, prelude=prelude, la=f"(BM * BK / ({pw} * NT))",
        lb=lb, title=f"conv_cuda, implicit GEMM, gather of {pw}-float pieces")


def _gemm_io(spec: OpSpec, f: dict, relu: bool, depth: str = "KD") -> mm.GemmIO:
    """The plain gather's GEMM I/O; ``depth`` names the GEMM's K (a gather of pieces pads the kernel to KP)."""
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
    out = "to_mid(RELU ? relu(o) : o)" if f["mid"] == "bf16" else "RELU ? relu(o) : o"
    store = ("const int n = r / P, p = r - n * P;", "float o = HAS_BIAS ? v + Bias[col] : v;",
             f"Y[((long long)n * COUT + col) * P + p] = {out};")
    helpers = ("\n".join(_constants(spec, relu)) + "\n" + _RELU + (_TO_BF16 if f["mid"] == "bf16" else "")
               + (_CP_ASYNC4 if f["cp_async"] else ""))
    return mm.GemmIO(args=_args(f), ints="const int H = (int)H_, W = (int)W_, OH = (int)OH_, OW = (int)OW_, "
                     f"P = OH * OW, M = (int)(N_ * P), N = COUT, K = {depth};", a_ld=a_ld, b_ld=b_ld, store=store,
                     prelude=prelude, a_tile=a_tile, helpers=helpers, title="conv_cuda, implicit GEMM")


def _pool(spec: OpSpec, f: dict, name: str) -> str:
    g = spec.geometry
    bf16 = f["mid"] == "bf16"
    word = _mid_word(f)
    load = "__uint_as_float((unsigned)y[{i}] << 16)" if bf16 else "y[{i}]"
    return f"""// generated by kernelcraft's offline proposer (conv_cuda, max pool)
#define PK {g['pool_k']}
#define PS {g['pool_s']}
extern "C" __global__ void __launch_bounds__({f['pool_threads']}) {name}(const {word}* __restrict__ Y,
    float* __restrict__ Out, long long NC, long long OH_, long long OW_, long long PH_, long long PW_) {{
  const int OH = (int)OH_, OW = (int)OW_, PH = (int)PH_, PW = (int)PW_;
  const long long total = NC * PH * PW;
  for (long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x; t < total;
       t += (long long)gridDim.x * blockDim.x) {{
    const long long i = {"total - 1 - t;  // last image first: what the convolution wrote last is still in L2"
                         if f["pool_order"] == "reverse" else "t;"}
    const int pw = (int)(i % PW), ph = (int)((i / PW) % PH);
    const long long nc = i / ((long long)PW * PH);
    const {word}* y = Y + (nc * OH + ph * PS) * OW + pw * PS;{
        "  // the bfloat16 intermediate: its word is a float's top half" if bf16 else ""}
    float m = {load.format(i="0")};
#pragma unroll
    for (int a = 0; a < PK; ++a)
#pragma unroll
      for (int b = 0; b < PK; ++b) {{
        const float v = {load.format(i="a * OW + b")};
        m = (v > m || v != v) ? v : m;  // NaN propagates, as torch's max_pool2d
      }}
    Out[i] = m;
  }}
}}
"""


def render_source(spec: OpSpec, f: dict, name: str, pw: int = 0) -> str:
    """The kernel's source; a gather of pieces copies ``pw`` floats at a time (its gather's width by default)."""
    f = normalise(spec, f)
    relu = bool(spec.geometry.get("pool_k"))
    if f["algo"] == "direct":
        return _direct(spec, f, name, relu)
    if f["gather"] == "tap":
        io = _gemm_io(spec, f, relu)
    else:
        io = _pieces_io(spec, f, relu, pw or piece_width(spec, f["gather"]), _LAYOUTS[f["gather"]])
    return mm._mma(mm.baseline(spec) | gemm_features(f), name, False, io)


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
        launch = [f"tiles = -(-(N * OH * OW) // {gf['bm']}) * -(-{g['cout']} // {gf['bn']})"]
        call = f"(grid=(tiles,), block=({mm.mma_threads(gf)},), args=(x, w, b, y, N, H, W, OH, OW))"
        if f["gather"] != "tap":
            kp = _depth(spec, f["gather"])
            mod += ["", f"PREP_W = r'''\n{_weights_source(spec, _LAYOUTS[f['gather']], f['ldsm'])}'''", "",
                    '_prep_w = cuda_kernel(PREP_W, "prep_weights")']
            shape = f"({g['cout']}, {kp})" if f["ldsm"] else f"({kp}, {g['cout']})"
            launch = [f"wp = torch.empty({shape}, device=x.device, dtype=x.dtype)",
                      f"_prep_w(grid=({-(-kp * g['cout'] // 256)},), block=(256,), args=(w, wp))",
                      "w = wp  # the GEMM's B operand in the gather's depth order", *launch]
        if f["gather"] == "fold":
            pw = piece_width(spec, "fold")
            mod += ["", "# The same gather one float at a time, for rows the pieces do not divide (see forward).",
                    f"SRC_SAFE = r'''\n{render_source(spec, f, 'conv_gemm_safe', pw=1)}'''", "",
                    f'_conv_safe = cuda_kernel(SRC_SAFE, "conv_gemm_safe", shared_mem={smem_bytes(f)})']
            launch += [f"if W % {pw} == 0 and x.data_ptr() % 16 == 0:", "    _conv" + call, "else:",
                       "    _conv_safe" + call]
        elif f["gather"] == "nhwc":
            cpad = channels_padded(spec)
            mod += ["", f"NHWC = r'''\n{_nhwc_source(spec)}'''", "", '_nhwc = cuda_kernel(NHWC, "to_nhwc")']
            launch = [f"xc = torch.empty((N, H, W, {cpad}), device=x.device, dtype=x.dtype)",
                      "_nhwc(grid=(-(-(N * H * W) // 256),), block=(256,), args=(x, xc, N * H * W, H * W))",
                      "x = xc  # the GEMM gathers from the channels-last copy", *launch, "_conv" + call]
        else:
            launch.append("_conv" + call)
    if g["pool_k"]:
        mod += ["", f"POOL = r'''\n{_pool(spec, f, 'maxpool')}'''", "", '_pool = cuda_kernel(POOL, "maxpool")']
    if f["grid"] == "persistent":
        mod.append(cuda_common.SM_COUNT_PY)
    # offsets are 32-bit: the input (or its channels-last copy, channels padded) below 2**31 floats
    nhwc = f["gather"] == "nhwc"
    size = f"x.numel() // C * {channels_padded(spec)}" if nhwc else "x.numel()"
    limit = (f"with its channels-last copy (channels padded to {channels_padded(spec)}) below 2**31 elements" if nhwc
             else "below 2**31 elements")
    fwd = ["x = x.contiguous()", f"w = {spec.weight}.contiguous()",
           f"b = {spec.bias}.contiguous()" if spec.bias else "b = w  # no bias: the kernel never reads it",
           "N, C, H, W = x.shape",
           f"if C != {g['cin']} or {size} >= 2**31:",
           f"    raise ValueError(f'expected (N, {g['cin']}, H, W) {limit}, got {{tuple(x.shape)}}')",
           f"OH = (H + {2 * g['pad']} - {g['dil'] * (g['r'] - 1)} - 1) // {g['stride']} + 1",
           f"OW = (W + {2 * g['pad']} - {g['dil'] * (g['r'] - 1)} - 1) // {g['stride']} + 1",
           f"y = torch.empty((N, {g['cout']}, OH, OW), device=x.device, "
           f"dtype={'torch.bfloat16' if f['mid'] == 'bf16' else 'x.dtype'})", "if y.numel():"]
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
