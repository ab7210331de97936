"""C kernels for a 2-D convolution (NCHW, float32, groups 1, zero padding) on CPU cores, optionally followed by
ReLU and a max pool.

Work is split into output planes (image n, a block of output channels) that threads own whole, so no variant
races. Within a plane the levers are: blocking over output channels (each input value loaded feeds KB
multiply-adds), the loop order (``direct``: one output at a time with every tap; ``rows``: a whole output row
accumulated tap by tap, whose inner loop over output columns vectorises and has its image-edge bounds hoisted out),
a packed copy of the block's weights, double accumulators, and for the conv+ReLU+MaxPool block, pooling each plane
while it is still in cache.
"""

from __future__ import annotations

from kernelcraft.search.offline_kernels import c_common as c
from kernelcraft.search.offline_kernels.opspec import OpSpec

FAMILY = "conv"
BACKEND = "cpu"
GEN = "conv_c"

TUNABLES: dict[str, tuple] = {
    "kblock": (1, 4, 8, 16),
    "unroll": (0, 4, 8),
    "owtile": (0, 64, 256),
}


def baseline(spec: OpSpec) -> dict:
    """One output at a time, every tap bounds-checked, one thread."""
    return {"gen": GEN, "order": "direct", "par": "serial", "collapse": False, "schedule": "static",
            "proc_bind": "none", "if_parallel": False, "kblock": 1, "simd": False, "restrict": False,
            "hoist": False, "unroll": 0, "pool_fused": False, "acc": "float", "prefetch": False, "wpack": False,
            "owtile": 0}


def normalise(spec: OpSpec, f: dict) -> dict:
    base = baseline(spec)
    g = base | {k: v for k, v in f.items() if k in base}
    g["gen"] = GEN
    g["order"] = g["order"] if g["order"] in ("direct", "rows") else "direct"
    g["par"] = "omp" if g["par"] == "omp" else "serial"
    g["schedule"] = g["schedule"] if g["schedule"] in ("static", "dynamic", "guided") else "static"
    g["proc_bind"] = g["proc_bind"] if g["proc_bind"] in ("none", "close", "spread") else "none"
    for k in ("collapse", "if_parallel", "simd", "restrict", "hoist", "prefetch", "wpack"):
        g[k] = bool(g[k])
    g["pool_fused"] = bool(g["pool_fused"]) and bool(spec.geometry.get("pool_k"))
    if g["par"] == "serial":
        g["collapse"], g["schedule"], g["proc_bind"], g["if_parallel"] = False, "static", "none", False
    for k in ("unroll", "owtile"):
        if g[k] not in TUNABLES[k]:
            g[k] = base[k]
    if g["kblock"] not in kblocks(spec):
        g["kblock"] = 1
    g["acc"] = "double" if g["acc"] == "double" else "float"
    if g["order"] == "rows":
        g["hoist"] = True  # the row loop's column range is computed per tap, never checked per element
    else:
        g["simd"], g["owtile"], g["prefetch"] = False, 0, False
    if g["simd"]:
        g["unroll"] = 0
    return g


def _geometry(spec: OpSpec) -> list[str]:
    g = spec.geometry
    return [f"#define CIN {g['cin']}", f"#define COUT {g['cout']}", f"#define KS {g['r']}",
            f"#define ST {g['stride']}",
            f"#define PAD {g['pad']}", f"#define DIL {g['dil']}", f"#define HAS_BIAS {g['bias']}",
            f"#define PK {g['pool_k'] or 1}", f"#define PS {g['pool_s'] or 1}",
            f"#define POOL {int(bool(g['pool_k']))}"]


def _direct_plane(f: dict, kb: str) -> list[str]:
    acc = f["acc"]
    lines = ["for (int64_t oh = 0; oh < OH; ++oh)", "  for (int64_t ow = 0; ow < OW; ++ow) {",
             f"    {acc} a[{kb}];", f"    for (int q = 0; q < {kb}; ++q) a[q] = 0;",
             "    for (int64_t ci = 0; ci < CIN; ++ci) {", "      const float* xc = x + (n * CIN + ci) * H * W;"]
    if f["hoist"]:
        lines += ["      /* the taps inside the image, found once per output instead of tested per tap */",
                  "      int64_t r0 = 0, r1 = KS, s0 = 0, s1 = KS;",
                  "      while (r0 < KS && oh * ST - PAD + r0 * DIL < 0) ++r0;",
                  "      while (r1 > r0 && oh * ST - PAD + (r1 - 1) * DIL >= H) --r1;",
                  "      while (s0 < KS && ow * ST - PAD + s0 * DIL < 0) ++s0;",
                  "      while (s1 > s0 && ow * ST - PAD + (s1 - 1) * DIL >= W) --s1;",
                  "      for (int64_t r = r0; r < r1; ++r) {", "        const int64_t ih = oh * ST - PAD + r * DIL;",
                  *["        " + ln for ln in c.pragma_unroll(f["unroll"])],
                  "        for (int64_t s = s0; s < s1; ++s) {",
                  "          const int64_t iw = ow * ST - PAD + s * DIL;"]
    else:
        lines += ["      for (int64_t r = 0; r < KS; ++r) {", "        const int64_t ih = oh * ST - PAD + r * DIL;",
                  "        if (ih < 0 || ih >= H) continue;", *["        " + ln for ln in c.pragma_unroll(f["unroll"])],
                  "        for (int64_t s = 0; s < KS; ++s) {", "          const int64_t iw = ow * ST - PAD + s * DIL;",
                  "          if (iw < 0 || iw >= W) continue;"]
    lines += ["          const float xv = xc[ih * W + iw];", f"          for (int q = 0; q < {kb}; ++q)",
              "            a[q] += xv * WT(q, ci, r, s);", "        }", "      }", "    }",
              f"    for (int q = 0; q < {kb}; ++q) Y(q, oh, ow) = a[q];", "  }"]
    return lines


def _rows_plane(f: dict, kb: str) -> list[str]:
    acc, tile = f["acc"], f["owtile"]
    lo, hi = ("t0", "t1") if tile else ("0", "OW")
    inner = ["#pragma omp simd"] if f["simd"] else c.pragma_unroll(f["unroll"])
    lines = ["for (int64_t oh = 0; oh < OH; ++oh) {"]
    if tile:
        lines += [f"  for (int64_t t0 = 0; t0 < OW; t0 += {tile}) {{",
                  f"  const int64_t t1 = t0 + {tile} < OW ? t0 + {tile} : OW;"]
    lines += [f"  for (int q = 0; q < {kb}; ++q)",
              f"    for (int64_t ow = {lo}; ow < {hi}; ++ow) row[q * OW + ow] = 0;",
              "  for (int64_t ci = 0; ci < CIN; ++ci) {", "    const float* xc = x + (n * CIN + ci) * H * W;",
              "    for (int64_t r = 0; r < KS; ++r) {", "      const int64_t ih = oh * ST - PAD + r * DIL;",
              "      if (ih < 0 || ih >= H) continue;", "      const float* xr = xc + ih * W;"]
    if f["prefetch"]:
        lines += ["      if (ih + ST < H) __builtin_prefetch(xr + ST * W, 0, 1);"]
    lines += ["      for (int64_t s = 0; s < KS; ++s) {", "        const int64_t off = s * DIL - PAD;",
              "        /* the output columns whose tap lies inside the image */",
              "        int64_t a0 = off >= 0 ? 0 : (-off + ST - 1) / ST;",
              "        int64_t a1 = (W - 1 - off) >= 0 ? (W - 1 - off) / ST + 1 : 0;",
              f"        if (a0 < {lo}) a0 = {lo};", f"        if (a1 > {hi}) a1 = {hi};",
              f"        for (int q = 0; q < {kb}; ++q) {{", "          const float wv = WT(q, ci, r, s);",
              f"          {acc}* rq = row + q * OW;", *["          " + ln for ln in inner],
              "          for (int64_t ow = a0; ow < a1; ++ow) rq[ow] += wv * xr[ow * ST + off];", "        }",
              "      }",
              "    }", "  }", f"  for (int q = 0; q < {kb}; ++q)",
              f"    for (int64_t ow = {lo}; ow < {hi}; ++ow) Y(q, oh, ow) = row[q * OW + ow];"]
    if tile:
        lines += ["  }"]
    lines += ["}"]
    return lines


def render_source(spec: OpSpec, f: dict, name: str) -> str:
    f = normalise(spec, f)
    rs = "restrict " if f["restrict"] else ""
    kb = "KB"
    acc = f["acc"]
    head = ["/* generated by kernelcraft's offline proposer (conv_c) */", "#include <stdint.h>", "#include <stdlib.h>",
            *_geometry(spec), f"#define KB {f['kblock']}"]
    if f["wpack"]:
        head += ["/* the block's weights, packed [ci][r][s][q] so the q loop reads consecutive floats */",
                 "#define WT(q, ci, r, s) wp[(((ci) * KS + (r)) * KS + (s)) * KB + (q)]"]
    else:
        head += ["#define WT(q, ci, r, s) w[((((k0 + (q)) * CIN + (ci)) * KS + (r)) * KS + (s))]"]
    head += ["#define Y(q, oh, ow) y[((n * COUT + k0 + (q)) * OH + (oh)) * OW + (ow)]"]
    plane = _rows_plane(f, kb) if f["order"] == "rows" else _direct_plane(f, kb)
    body = [f"void {name}(const float* {rs}x, const float* {rs}w, const float* {rs}b, float* y, float* out,",
            "            int64_t N, int64_t H, int64_t W, int64_t OH, int64_t OW, int64_t PH, int64_t PW) {",
            "  const int64_t blocks = (COUT + KB - 1) / KB;"]
    # COUT must be a multiple of KB for the unguarded q loops: the generator only offers blocks that divide it.
    omp = []
    if f["par"] == "omp":
        omp = [c.omp_parallel_for(f, "N * COUT * OH * OW * CIN * KS * KS") + (" collapse(2)" if f["collapse"] else "")]
    body += ["  " + ln for ln in omp]
    body += ["  for (int64_t n = 0; n < N; ++n)", "    for (int64_t kbk = 0; kbk < blocks; ++kbk) {",
             "      const int64_t k0 = kbk * KB;"]
    if f["wpack"]:
        body += ["      float wp[CIN * KS * KS * KB];",
                 "      for (int q = 0; q < KB; ++q)", "        for (int64_t i = 0; i < CIN * KS * KS; ++i)",
                 "          wp[i * KB + q] = w[(k0 + q) * CIN * KS * KS + i];"]
    if f["order"] == "rows":
        body += [f"      {acc}* row = ({acc}*)malloc(sizeof({acc}) * KB * (OW > 0 ? OW : 1));",
                 "      if (!row) continue;"]
    body += ["      " + ln for ln in plane]
    if f["order"] == "rows":
        body += ["      free(row);"]
    body += ["      /* bias (and ReLU for the conv+ReLU+pool block) as the plane's outputs are final */",
             "      for (int q = 0; q < KB; ++q) {",
             "        float* yq = y + (n * COUT + k0 + q) * OH * OW;",
             "        const float bias = HAS_BIAS ? b[k0 + q] : 0.f;",
             "        for (int64_t i = 0; i < OH * OW; ++i) {", "          const float v = yq[i] + bias;",
             "          yq[i] = POOL ? (v < 0.f ? 0.f : v) : v;  /* NaN stays NaN */", "        }"]
    if f["pool_fused"]:
        body += ["        /* pooled while the plane is still in cache */",
                 *["        " + ln for ln in _pool_plane("k0 + q")]]
    body += ["      }", "    }"]
    if spec.geometry.get("pool_k") and not f["pool_fused"]:
        body += ["  /* the max pool, plane by plane */", *["  " + ln for ln in omp],
                 "  for (int64_t n = 0; n < N; ++n)", "    for (int64_t q = 0; q < COUT; ++q) {",
                 "      const float* yq = y + (n * COUT + q) * OH * OW;",
                 *["      " + ln for ln in _pool_plane("q")], "    }"]
    body += ["}"]
    return "\n".join(head) + "\n\n" + "\n".join(body) + "\n"


def _pool_plane(q: str) -> list[str]:
    """Max-pool the plane ``yq`` into output channel ``q``."""
    return ["for (int64_t ph = 0; ph < PH; ++ph)", "  for (int64_t pw = 0; pw < PW; ++pw) {",
            "    const float* win = yq + ph * PS * OW + pw * PS;", "    float m = win[0];",
            "    for (int64_t i = 0; i < PK; ++i)", "      for (int64_t j = 0; j < PK; ++j) {",
            "        const float v = win[i * OW + j];", "        m = (v > m || v != v) ? v : m;", "      }",
            f"    out[((n * COUT + {q}) * PH + ph) * PW + pw] = m;", "  }"]


def kblocks(spec: OpSpec) -> tuple[int, ...]:
    """The channel blocks that divide the output channels (the kernel's q loops are unguarded)."""
    return tuple(k for k in TUNABLES["kblock"] if spec.geometry["cout"] % k == 0)


def render(spec: OpSpec, f: dict) -> tuple[str, list[str]]:
    f = normalise(spec, f)
    g = spec.geometry
    src = render_source(spec, f, "conv_c")
    mod = f"SRC = r'''\n{src}'''\n\n_kernel = c_kernel(SRC, \"conv_c\")\n"
    fwd = ["x = x.contiguous()", f"w = {spec.weight}.contiguous()",
           f"b = {spec.bias}.contiguous()" if spec.bias else "b = w  # no bias: the kernel never reads it",
           "N, C, H, W = x.shape", f"if C != {g['cin']}:",
           f"    raise ValueError(f'expected (N, {g['cin']}, H, W), got {{tuple(x.shape)}}')",
           f"OH = (H + {2 * g['pad']} - {g['dil'] * (g['r'] - 1)} - 1) // {g['stride']} + 1",
           f"OW = (W + {2 * g['pad']} - {g['dil'] * (g['r'] - 1)} - 1) // {g['stride']} + 1",
           f"y = torch.empty((N, {g['cout']}, OH, OW), device=x.device, dtype=x.dtype)"]
    if g["pool_k"]:
        fwd += [f"PH, PW = (OH - {g['pool_k']}) // {g['pool_s']} + 1, (OW - {g['pool_k']}) // {g['pool_s']} + 1",
                f"out = torch.empty((N, {g['cout']}, PH, PW), device=x.device, dtype=x.dtype)",
                "if y.numel():", "    _kernel(x, w, b, y, out, N, H, W, OH, OW, PH, PW)", "return out"]
    else:
        fwd += ["if y.numel():", "    _kernel(x, w, b, y, y, N, H, W, OH, OW, OH, OW)", "return y"]
    return mod, fwd
