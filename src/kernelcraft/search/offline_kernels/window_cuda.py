"""CUDA kernels for sliding-window ops: any convolution the conv family does not take (1-D/3-D, asymmetric
kernels, groups, depthwise, dilation, transposed) and max/average pooling, over a 3-D volume (1-D and 2-D ops get
leading dimensions of size one, so one skeleton serves all; every size is a compile-time constant).

A thread computes ``opt`` consecutive outputs along the innermost dimension for ``cpt`` output channels of one
group, so each input value it loads feeds ``cpt`` multiply-adds and each weight ``opt``; a block's threads share
one block of channels (its weights optionally staged in shared memory) and tile the output volume; images go
along the grid's z. A transposed convolution gathers: output o takes input i where ``o + pad - k * dil = i *
stride``, so taps of the wrong stride phase are skipped (tested per tap, or stepped over). The levers are the
register blocking, weights in shared memory, the loop order (taps outside the channel loop hoists the bounds
tests out of it), a branch-free path for windows wholly inside the input, read-only loads, 32-bit indexing,
launch bounds and the raster order of blocks.

A convolution of one group, transposed or not, can instead be an implicit GEMM on tensor cores (``algo: mma``),
the conv family's scheme in three dimensions: the GEMM's rows are the output voxels (N * O0 * O1 * O2), its columns
the output channels, its depth the CIN * K0 * K1 * K2 taps; each block gathers its A tile from the input on the
fly (taps outside the volume, or of another stride phase when transposed, read as zero) and reads its B tile from
the weights, with the matmul family's ``mma.sync`` kernel (3xTF32 keeps float32 accuracy). The direct kernel
re-reads every input value once per tap and output channel block: on the H200 a 1-D convolution ran at 0.14x cuDNN
and a 3-D one at 0.64x.
"""

from __future__ import annotations

import math

from kernelcraft.search.offline_kernels import conv_cuda
from kernelcraft.search.offline_kernels import cuda_common as cc
from kernelcraft.search.offline_kernels import matmul_cuda as mm
from kernelcraft.search.offline_kernels.candidate import input_guard
from kernelcraft.search.offline_kernels.opspec import OpSpec

FAMILY = "window"
BACKEND = "cuda"
GEN = "window_cuda"

TUNABLES: dict[str, tuple] = {
    "threads": (64, 128, 256, 512),
    "opt": (1, 2, 4),
    "cpt": (1, 2, 4, 8),
}

WSMEM_MAX = 48 * 1024  # static shared memory a block may declare


# The implicit GEMM's features: the conv family's, with its raster and accumulation renamed (graster, gacc) apart
# from the direct kernel's own raster and acc.
GEMM_KEYS = ("bm", "bn", "bk", "wm", "wn", "stages", "cp_async", "pad", "precision", "graster", "gacc")
_DIRECT_KEYS = ("threads", "opt", "cpt", "wsmem", "load", "restrict", "unroll", "interior", "order", "phase", "acc",
                "idx32", "launch_min", "raster", "l2_prefetch")


def baseline(spec: OpSpec) -> dict:
    """One output per thread, every tap bounds-checked, weights and inputs from global memory."""
    return {"gen": GEN, "algo": "direct", "threads": 256, "opt": 1, "cpt": 1, "wsmem": False, "load": "plain",
            "restrict": False, "unroll": False, "interior": False, "order": "channels", "phase": False,
            "acc": "float", "idx32": False, "launch_min": 0, "raster": "spatial", "l2_prefetch": False,
            "bm": 128, "bn": 64, "bk": 32, "wm": 4, "wn": 2, "stages": 1, "cp_async": False, "pad": 0,
            "precision": "3xtf32", "graster": 0, "gacc": "direct"}


def gemm_ok(spec: OpSpec) -> bool:
    """A convolution the implicit GEMM takes: one group, input and output below 2**31 elements (its offsets are
    32-bit). A transposed one gathers too: output o takes tap k from input (o + pad - k * dil) / stride where that
    divides, the other taps read as zero (a stride s wastes all but 1/s of them per dimension)."""
    g = spec.geometry
    return (spec.op == "conv" and g["groups"] == 1
            and max(math.prod(spec.input_shape), math.prod(spec.out_shape)) < 2**31 - 2**20)


def gemm_features(f: dict) -> dict:
    """The feature dict matmul_cuda's tensor-core kernel reads."""
    return conv_cuda.gemm_features(f | {"raster": f["graster"], "acc": f["gacc"]})


def gemm_smem_bytes(f: dict) -> int:
    """The pipeline's stages plus the per-block table of output voxels (four ints per row of the tile)."""
    return mm.mma_smem_bytes(gemm_features(f)) + 4 * 4 * f["bm"]


def _gemm_fits(f: dict) -> bool:
    return mm._mma_ok(gemm_features(f)) and gemm_smem_bytes(f) <= mm.SMEM_DYNAMIC_MAX


def kernel_volume(spec: OpSpec) -> int:
    g = spec.geometry
    return g["k0"] * g["k1"] * g["k2"]


def cpts(spec: OpSpec) -> tuple[int, ...]:
    """Channel blocks a thread can own: all inside one group (a convolution's; pooling takes one channel)."""
    g = spec.geometry
    if spec.op != "conv":
        return (1,)
    return tuple(c for c in TUNABLES["cpt"] if (g["cout"] // g["groups"]) % c == 0)


def wsmem_fits(spec: OpSpec, cpt: int) -> bool:
    g = spec.geometry
    return spec.op == "conv" and cpt * (g["cin"] // g["groups"]) * kernel_volume(spec) * 4 <= WSMEM_MAX


def spatial_blocks(spec: OpSpec, f: dict) -> int:
    g = spec.geometry
    return -(-(g["o0"] * g["o1"] * -(-g["o2"] // f["opt"])) // f["threads"])


def normalise(spec: OpSpec, f: dict) -> dict:
    base = baseline(spec)
    g = base | {k: v for k, v in f.items() if k in base}
    g["gen"] = GEN
    g["algo"] = "mma" if g["algo"] == "mma" and gemm_ok(spec) else "direct"
    if g["algo"] == "mma":
        return _normalise_gemm(g, base)
    for k in GEMM_KEYS:
        g[k] = base[k]
    return _normalise_direct(spec, g, base)


def _normalise_gemm(g: dict, base: dict) -> dict:
    for k in _DIRECT_KEYS:
        g[k] = base[k]
    g["cp_async"] = bool(g["cp_async"])
    g["precision"] = g["precision"] if g["precision"] in ("tf32", "3xtf32") else "3xtf32"
    g["gacc"] = "tile" if g["gacc"] == "tile" else "direct"
    g["pad"] = 4 if g["pad"] else 0
    g["stages"] = g["stages"] if g["stages"] in (1, 2, 3) else 1
    g["graster"] = g["graster"] if g["graster"] in (0, 8) else 0
    if any(g[k] not in conv_cuda.TUNABLES[k] for k in ("bm", "bn", "bk", "wm", "wn")) or not _gemm_fits(g):
        g |= conv_cuda._GEMM_DEFAULT
        while not _gemm_fits(g) and g["stages"] > 1:
            g["stages"] -= 1
    return g


def _normalise_direct(spec: OpSpec, g: dict, base: dict) -> dict:
    geo = spec.geometry
    for k in ("threads", "opt"):
        if g[k] not in TUNABLES[k]:
            g[k] = base[k]
    if g["cpt"] not in cpts(spec):
        g["cpt"] = 1
    for k in ("wsmem", "restrict", "unroll", "interior", "phase", "idx32", "l2_prefetch"):
        g[k] = bool(g[k])
    g["load"] = g["load"] if g["load"] in ("plain", "ldg") else "plain"
    g["order"] = g["order"] if g["order"] in ("channels", "taps") else "channels"
    g["acc"] = "double" if g["acc"] == "double" else "float"
    g["launch_min"] = g["launch_min"] if g["launch_min"] in (0, 2, 4) else 0
    g["raster"] = g["raster"] if g["raster"] in ("spatial", "channels") else "spatial"
    if spec.op != "conv":  # pooling: no weights, no channel blocking, no channel loop to reorder
        g["wsmem"], g["order"], g["phase"] = False, "channels", False
        g["raster"] = "spatial"
    if g["wsmem"] and not wsmem_fits(spec, g["cpt"]):
        g["wsmem"] = False
    if not geo["transposed"]:
        g["phase"] = False
    else:
        g["interior"] = False  # a gather has no "window inside the input" shortcut; its taps are stride-tested
    if g["raster"] == "channels" and spatial_blocks(spec, g) > 65535:
        g["raster"] = "spatial"
    if g["idx32"] and max(math.prod(spec.input_shape), math.prod(spec.out_shape)) >= 2**31 - 2**20:
        g["idx32"] = False
    if spec.op != "conv" or geo["cin"] // geo["groups"] < 2:
        g["l2_prefetch"] = False
    return g


def _defines(spec: OpSpec, f: dict) -> list[str]:
    g = spec.geometry
    out = [f"#define NB {g['n']}", f"#define CIN {g['cin']}", f"#define COUT {g['cout']}",
           f"#define CING {g['cin'] // g['groups']}", f"#define COUTG {g['cout'] // g['groups']}"]
    for key in ("i", "o", "k", "s", "p", "d"):
        out += [f"#define {key.upper()}{a} {g[f'{key}{a}']}" for a in range(3)]
    out += [f"#define KK {kernel_volume(spec)}", f"#define OPT {f['opt']}", f"#define CPT {f['cpt']}",
            "#define OWC ((O2 + OPT - 1) / OPT)", "#define IVOL ((IDX)I0 * I1 * I2)"]
    return out


def _unroll(f: dict) -> str:
    return "#pragma unroll" if f["unroll"] else "#pragma unroll 1"


def _ld(f: dict, ptr: str) -> str:
    return cc.load("ldg" if f["load"] == "ldg" else "plain", ptr)


def _weight(spec: OpSpec, f: dict, q: str, ci: str, k: str) -> str:
    if f["wsmem"]:
        return f"ws[({q} * CING + {ci}) * KK + {k}]"
    if spec.geometry["transposed"]:
        return _ld(f, f"w + (((IDX)(grp * CING + {ci})) * COUTG + col0 + {q}) * KK + {k}")
    return _ld(f, f"w + ((IDX)(co0 + {q}) * CING + {ci}) * KK + {k}")


def _tap_loop(axis: int, f: dict, transposed: bool, checked: bool, coord: str) -> list[str]:
    """The loop over kernel taps along ``axis`` (0 or 1) with the input coordinate ``i{axis}`` it reads."""
    a = axis
    if not transposed:
        lines = [_unroll(f), f"for (int k{a} = 0; k{a} < K{a}; ++k{a}) {{",
                 f"  const int i{a} = {coord} * S{a} - P{a} + k{a} * D{a};"]
        if checked:
            lines.append(f"  if (i{a} < 0 || i{a} >= I{a}) continue;")
        return lines
    if f["phase"]:  # taps of this output's stride phase only (dilation 1: k = (o + pad) mod stride, step stride)
        return [f"for (int k{a} = (D{a} == 1 ? ({coord} + P{a}) % S{a} : 0); k{a} < K{a}; "
                f"k{a} += (D{a} == 1 ? S{a} : 1)) {{",
                f"  const int t{a} = {coord} + P{a} - k{a} * D{a};",
                f"  if (t{a} < 0) break;  // t only falls as k grows",
                f"  if (D{a} != 1 && t{a} % S{a}) continue;",
                f"  const int i{a} = t{a} / S{a};", f"  if (i{a} >= I{a}) continue;"]
    return [_unroll(f), f"for (int k{a} = 0; k{a} < K{a}; ++k{a}) {{",
            f"  const int t{a} = {coord} + P{a} - k{a} * D{a};",
            f"  if (t{a} < 0 || t{a} % S{a}) continue;", f"  const int i{a} = t{a} / S{a};",
            f"  if (i{a} >= I{a}) continue;"]


def _inner_coord(transposed: bool, checked: bool) -> list[str]:
    """Per output o of the thread: the input column it reads at tap k2 and whether that read is inside."""
    if not transposed:
        return ["const int i2 = (ow0 + o) * S2 - P2 + k2 * D2;",
                "const bool in = i2 >= 0 && i2 < I2;" if checked else "const bool in = true;"]
    return ["const int t2 = ow0 + o + P2 - k2 * D2;", "const bool in = t2 >= 0 && t2 % S2 == 0 && t2 / S2 < I2;",
            "const int i2 = in ? t2 / S2 : 0;"]


def _conv_body(spec: OpSpec, f: dict, checked: bool) -> list[str]:
    tr = bool(spec.geometry["transposed"])
    acc = f["acc"]
    w = _weight(spec, f, "q", "ci", "(k0 * K1 + k1) * K2 + k2")
    fma = ["#pragma unroll", "for (int q = 0; q < CPT; ++q)",
           f"  acc[q][o] += ({acc})xv * ({acc})wv[q];"]
    load_w = ["float wv[CPT];", "#pragma unroll", f"for (int q = 0; q < CPT; ++q) wv[q] = {w};"]
    if f["order"] == "channels":
        lines = ["for (int ci = 0; ci < CING; ++ci) {", "  const float* xc = xg + (IDX)ci * IVOL;"]
        if f["l2_prefetch"]:
            lines.append("  if (ci + 1 < CING) prefetch_l2(xc + IVOL + pf_off);")
        body = []
        body += _tap_loop(0, f, tr, checked, "o0")
        body += ["  " + ln for ln in _tap_loop(1, f, tr, checked, "o1")]
        inner = ["const float* xr = xc + ((IDX)i0 * I1 + i1) * I2;", _unroll(f),
                 "for (int k2 = 0; k2 < K2; ++k2) {", *["  " + ln for ln in load_w], "  #pragma unroll",
                 "  for (int o = 0; o < OPT; ++o) {", *["    " + ln for ln in _inner_coord(tr, checked)],
                 f"    const float xv = in ? {_ld(f, 'xr + i2')} : 0.f;", *["    " + ln for ln in fma], "  }", "}"]
        body += ["    " + ln for ln in inner] + ["  }", "}"]
        lines += ["  " + ln for ln in body] + ["}"]
        return lines
    # taps outside: the bounds of each tap are found once, then every channel reuses them
    lines = _tap_loop(0, f, tr, checked, "o0")
    lines += ["  " + ln for ln in _tap_loop(1, f, tr, checked, "o1")]
    inner = ["const IDX row = ((IDX)i0 * I1 + i1) * I2;", _unroll(f), "for (int k2 = 0; k2 < K2; ++k2) {",
             "  int off[OPT]; bool ok[OPT];", "  #pragma unroll", "  for (int o = 0; o < OPT; ++o) {",
             *["    " + ln for ln in _inner_coord(tr, checked)], "    off[o] = i2; ok[o] = in;", "  }",
             "  for (int ci = 0; ci < CING; ++ci) {", "    const float* xr = xg + (IDX)ci * IVOL + row;",
             *["    " + ln for ln in load_w], "    #pragma unroll", "    for (int o = 0; o < OPT; ++o) {",
             f"      const float xv = ok[o] ? {_ld(f, 'xr + off[o]')} : 0.f;", *["      " + ln for ln in fma],
             "    }", "  }", "}"]
    lines += ["    " + ln for ln in inner] + ["  }", "}"]
    return lines


def _pool_body(spec: OpSpec, f: dict, checked: bool) -> list[str]:
    is_max = spec.geometry["pool"] == 1
    upd = "acc[0][o] = (v > acc[0][o] || v != v) ? v : acc[0][o];  // NaN propagates, as PyTorch's" if is_max \
        else f"acc[0][o] += ({f['acc']})v;"
    lines = _tap_loop(0, f, False, checked, "o0")
    lines += ["  " + ln for ln in _tap_loop(1, f, False, checked, "o1")]
    inner = ["const float* xr = xg + ((IDX)i0 * I1 + i1) * I2;", _unroll(f), "for (int k2 = 0; k2 < K2; ++k2) {",
             "  #pragma unroll", "  for (int o = 0; o < OPT; ++o) {",
             *["    " + ln for ln in _inner_coord(False, checked)],
             "    if (in) {", f"      const float v = {_ld(f, 'xr + i2')};", f"      {upd}", "    }", "  }", "}"]
    return lines + ["    " + ln for ln in inner] + ["  }", "}"]


def _divisor(spec: OpSpec) -> list[str]:
    """An average pool's divisor for output o: the override, the window clipped to the padded input (PyTorch's
    count_include_pad), or the taps inside the input."""
    g = spec.geometry
    if g["div"]:
        return [f"const float div = {float(g['div'])!r}f;"]
    lines = ["int size = 1, inside = 1;"]
    for a, coord in ((0, "o0"), (1, "o1"), (2, "(ow0 + o)")):
        lines += [f"{{ const int st = {coord} * S{a} - P{a}; const int en = min(st + K{a}, I{a} + P{a});",
                  f"  size *= en - st; inside *= min(en, I{a}) - max(st, 0); }}"]
    lines.append(f"const float div = (float)({'size' if g['cip'] else 'inside'});")
    return lines


def _interior_test(spec: OpSpec) -> str:
    """Every tap of every output of the thread reads inside the input (and every output exists)."""
    parts = []
    for a, lo, hi in ((0, "o0", "o0"), (1, "o1", "o1"), (2, "ow0", "(ow0 + OPT - 1)")):
        parts.append(f"{lo} * S{a} - P{a} >= 0 && {hi} * S{a} - P{a} + (K{a} - 1) * D{a} < I{a}")
    return " && ".join(parts) + " && ow0 + OPT <= O2"


def render_source(spec: OpSpec, f: dict, name: str) -> str:
    f = normalise(spec, f)
    g = spec.geometry
    rs = "__restrict__ " if f["restrict"] else ""
    idx = "int" if f["idx32"] else "long long"
    acc = f["acc"]
    conv = spec.op == "conv"
    out = ["// generated by kernelcraft's offline proposer (window_cuda)", f"typedef {idx} IDX;", *_defines(spec, f)]
    if f["l2_prefetch"]:
        out.append(cc.PREFETCH_L2)
    T = f["threads"]
    lb = f"__launch_bounds__({T}, {f['launch_min']})" if f["launch_min"] else f"__launch_bounds__({T})"
    cb, sb = ("blockIdx.x", "blockIdx.y") if f["raster"] == "channels" else ("blockIdx.y", "blockIdx.x")
    body = [f"const int co0 = {cb} * CPT;", f"const IDX s = (IDX){sb} * {T} + threadIdx.x;"]
    if conv:
        body += ["const int grp = co0 / COUTG;", "const int col0 = co0 % COUTG;"]
    if f["wsmem"]:
        src = ("w[(((IDX)(grp * CING + ci)) * COUTG + col0 + q) * KK + k]" if g["transposed"]
               else "w[(IDX)co0 * CING * KK + e]")
        body += ["// the block's weights, staged once: every thread of the block reads the same ones",
                 "__shared__ float ws[CPT * CING * KK];",
                 f"for (int e = threadIdx.x; e < CPT * CING * KK; e += {T}) {{",
                 "  const int q = e / (CING * KK), ci = (e / KK) % CING, k = e % KK;",
                 "  (void)q; (void)ci; (void)k;", f"  ws[e] = {src};", "}", "__syncthreads();"]
    body += ["if (s >= (IDX)O0 * O1 * OWC) return;", "const int ow0 = (int)(s % OWC) * OPT;",
             "const IDX r = s / OWC;", "const int o1 = (int)(r % O1), o0 = (int)(r / O1);"]
    if f["l2_prefetch"]:
        body += ["const IDX pf_off = ((IDX)max(o0 * S0 - P0, 0) * I1 + max(o1 * S1 - P1, 0)) * I2 "
                 "+ max(ow0 * S2 - P2, 0);"]
    body += ["for (int n = blockIdx.z; n < NB; n += gridDim.z) {",
             f"  {acc} acc[CPT][OPT];", "  #pragma unroll", "  for (int q = 0; q < CPT; ++q)", "    #pragma unroll",
             "    for (int o = 0; o < OPT; ++o) acc[q][o] = "
             + ("-__int_as_float(0x7f800000);" if spec.op == "pool" and g["pool"] == 1 else "0;")]
    body.append("  const float* xg = x + ((IDX)n * CIN + " + ("(IDX)grp * CING" if conv else "co0") + ") * IVOL;")
    make = _conv_body if conv else _pool_body
    if f["interior"]:
        body += [f"  if ({_interior_test(spec)}) {{  // the whole window inside: no bounds tests"]
        body += ["    " + ln for ln in make(spec, f, False)]
        body += ["  } else {"] + ["    " + ln for ln in make(spec, f, True)] + ["  }"]
    else:
        body += ["  " + ln for ln in make(spec, f, True)]
    store = ["  #pragma unroll", "  for (int q = 0; q < CPT; ++q) {"]
    if conv and g["bias"]:
        store.append(f"    const float bq = {_ld(f, 'b + co0 + q')};")
    store += ["    float* yq = y + (((IDX)n * COUT + co0 + q) * O0 + o0) * ((IDX)O1 * O2) + (IDX)o1 * O2 + ow0;",
              "    #pragma unroll", "    for (int o = 0; o < OPT; ++o) {", "      if (ow0 + o >= O2) break;"]
    if spec.op == "pool" and g["pool"] == 2:
        store += ["      " + ln for ln in _divisor(spec)] + ["      yq[o] = (float)(acc[q][o] / div);"]
    elif conv and g["bias"]:
        store.append("      yq[o] = (float)acc[q][o] + bq;")
    else:
        store.append("      yq[o] = (float)acc[q][o];")
    store += ["    }", "  }"]
    body += store + ["}"]
    out.append(f'extern "C" __global__ void {lb} {name}(const float* {rs}x, const float* {rs}w, '
               f"const float* {rs}b, float* {rs}y) {{\n" + "\n".join("  " + ln for ln in body) + "\n}")
    return "\n".join(out) + "\n"


_GEMM_ARGS = ("const float* __restrict__ X, const float* __restrict__ Wt, const float* __restrict__ Bias, "
              "float* __restrict__ Y")


def _gemm_io(spec: OpSpec, f: dict) -> mm.GemmIO:
    """The implicit GEMM's operands: A[m, kd] is output voxel m's input tap kd = (channel, k0, k1, k2), gathered
    through a per-block table of each row's image offset and window corner; B[kd, k] = weight[k, kd]."""
    g = spec.geometry
    tr = bool(g["transposed"])
    put_a = "cp_async4(as + AS_AT(r, c), src, ok);" if f["cp_async"] else "as[AS_AT(r, c)] = ok ? *src : 0.f;"
    put_b = "cp_async4(bs + BS_AT(r, c), src, ok);" if f["cp_async"] else "bs[BS_AT(r, c)] = ok ? *src : 0.f;"
    # NT is a multiple of BK, so a thread's tap column is the same for every element it gathers: the tap's
    # decomposition (channel, three kernel offsets) is worked out once per K tile (conv_cuda's scheme in 3-D), and
    # each element reads its voxel's 16-byte table entry (image offset or window origin, and the window corner)
    a_tile = ["// this thread's tap kd = (channel, k0, k1, k2) of the K tile at k0",
              "const int ca = tid % BK, kd = k0 + ca;",
              "const int ci = kd / KK, t = kd - ci * KK, t0 = t / (K1 * K2), t1 = (t / K2) % K1, t2 = t % K2;",
              "const bool kin = kd < KD;"]
    a_ld = ["const int r = tid / BK + l * (NT / BK), c = ca;", "const int4 row = rows[r];"]
    if tr:  # the table holds the image offset and o + pad: tap k reads input (o + pad - k * dil) / stride where
        # that divides
        a_tile.append("const int ch = ci * I0;")
        a_ld += ["const int u0 = row.y - t0 * D0, u1 = row.z - t1 * D1, u2 = row.w - t2 * D2;",
                 "const int i0 = u0 / S0, i1 = u1 / S1, i2 = u2 / S2;",
                 "const bool ok = kin && u0 >= 0 && u1 >= 0 && u2 >= 0 && i0 * S0 == u0 && i1 * S1 == u1 "
                 "&& i2 * S2 == u2 && i0 < I0 && i1 < I1 && i2 < I2;",
                 "const float* src = X + (ok ? row.x + ((ch + i0) * I1 + i1) * I2 + i2 : 0);"]
    else:  # the table holds the window origin's offset and its corner: the tap adds a fixed offset
        a_tile += ["const int d0 = t0 * D0, d1 = t1 * D1, d2 = t2 * D2;",
                   "const int tap = ((ci * I0 + d0) * I1 + d1) * I2 + d2;"]
        a_ld += ["const bool ok = kin && (unsigned)(row.y + d0) < (unsigned)I0 && (unsigned)(row.z + d1) < "
                 "(unsigned)I1 && (unsigned)(row.w + d2) < (unsigned)I2;",
                 "const float* src = X + (ok ? row.x + tap : 0);"]
    a_ld.append(put_a)
    # B[kd, k]: weight[k, kd] (a transposed convolution's weight is [CIN, COUT, taps]: weight[ci, k, tap]);
    # consecutive threads read consecutive taps of one filter
    w_at = "Wt + ((kd / KK) * COUT + k) * KK + kd % KK" if tr else "Wt + k * KD + kd"
    b_ld = ("const int v = tid + l * NT, r = v % BK, c = v / BK, kd = k0 + r, k = bn0 + c;",
            "const bool ok = kd < KD && k < COUT;", f"const float* src = ok ? {w_at} : Wt;", put_b)
    corner = ("    rows[i] = make_int4(n * (CIN * I0 * I1 * I2), o0 + P0, o1 + P1, o2 + P2);",) if tr else (
        "    const int c0 = o0 * S0 - P0, c1 = o1 * S1 - P1, c2 = o2 * S2 - P2;",
        "    rows[i] = make_int4(n * (CIN * I0 * I1 * I2) + (c0 * I1 + c1) * I2 + c2, c0, c1, c2);")
    prelude = ("// per output voxel of this block, one 16-byte entry: its image's offset (plus its window origin's),",
               "// and the corner of its window (in the dynamic shared memory after the pipeline's stages)",
               "int4* const rows = reinterpret_cast<int4*>(smem + STAGES * (A_STAGE + B_STAGE));",
               "for (int i = tid; i < BM; i += NT) {", "  const int m = bm0 + i;", "  if (m < M) {",
               "    const int n = m / P, p = m - n * P, o0 = p / (O1 * O2), o1 = (p / O2) % O1, o2 = p % O2;",
               *corner,
               "  } else {", "    rows[i] = make_int4(0, -(1 << 28), 0, 0);  // never inside the volume", "  }", "}",
               "__syncthreads();")
    store = ("const int n = r / P, p = r - n * P;", "const float o = HAS_BIAS ? v + Bias[col] : v;",
             "Y[((long long)n * COUT + col) * P + p] = o;")
    consts = [f"#define CIN {g['cin']}", f"#define COUT {g['cout']}", f"#define NB {g['n']}",
              f"#define KK {kernel_volume(spec)}", "#define KD (CIN * KK)", f"#define HAS_BIAS {g['bias']}"]
    for key in ("i", "o", "k", "s", "p", "d"):
        consts += [f"#define {key.upper()}{a} {g[f'{key}{a}']}" for a in range(3)]
    helpers = "\n".join(consts) + "\n" + (conv_cuda._CP_ASYNC4 if f["cp_async"] else "")
    return mm.GemmIO(args=_GEMM_ARGS, ints="const int P = O0 * O1 * O2, M = NB * P, N = COUT, K = KD;",
                     a_ld=tuple(a_ld), b_ld=b_ld, store=store, prelude=prelude, a_tile=tuple(a_tile),
                     helpers=helpers,
                     title="window_cuda, implicit GEMM")


def gemm_tiles(spec: OpSpec, f: dict) -> int:
    g = spec.geometry
    return -(-(g["n"] * g["o0"] * g["o1"] * g["o2"]) // f["bm"]) * -(-g["cout"] // f["bn"])


def grid(spec: OpSpec, f: dict) -> tuple[int, int, int]:
    g = spec.geometry
    spatial, chans = spatial_blocks(spec, f), g["cout"] // f["cpt"]
    xy = (chans, spatial) if f["raster"] == "channels" else (spatial, chans)
    return xy[0], xy[1], min(g["n"], 65535)


def render(spec: OpSpec, f: dict) -> tuple[str, list[str]]:
    f = normalise(spec, f)
    if f["algo"] == "mma":
        src = mm._mma(mm.baseline(spec) | gemm_features(f), "window_gemm", False, _gemm_io(spec, f))
        mod = [f"SRC = r'''\n{src}'''", "",
               f'_kernel = cuda_kernel(SRC, "window_gemm", shared_mem={gemm_smem_bytes(f)})']
        launch = (f"grid=({gemm_tiles(spec, f)},), block=({mm.mma_threads(gemm_features(f))},), "
                  "args=(x, w, b, y)")
    else:
        mod = [f"SRC = r'''\n{render_source(spec, f, 'window')}'''", "",
               '_kernel = cuda_kernel(SRC, "window")']
        launch = f"grid={grid(spec, f)!r}, block=({f['threads']},), args=(x, w, b, y)"
    shape = tuple(spec.input_shapes[0])
    fwd = input_guard(shape)
    if spec.weight:
        fwd.append(f"w = {spec.weight}.contiguous()")
    else:
        fwd.append("w = x  # pooling: no weights; the kernel never reads them")
    fwd.append(f"b = {spec.bias}.contiguous()" if spec.bias else "b = w  # no bias: the kernel never reads it")
    fwd += [f"y = torch.empty({tuple(spec.out_shape)!r}, device=x.device, dtype=x.dtype)", "if y.numel():",
            f"    _kernel({launch})", "return y"]
    return "\n".join(mod), fwd
