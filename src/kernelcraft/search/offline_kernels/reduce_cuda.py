"""CUDA kernels for reductions and self-normalisations over any run of dimensions: sum, mean, max, min, prod,
argmax and argmin; softmax and log-softmax over any dimension; RMS, L1, L2 and Frobenius norms; batch, instance
and group norm with training-mode statistics and a per-channel affine map.

The input is viewed as ``[R0, A, R, B]``: A and B kept, R0 and R reduced (R0 is batch norm's batch around the
kept channels; elsewhere 1), so one skeleton serves a reduction over the last dimension, a middle one, all of
them, or batch norm's (N, H, W). A statistics kernel folds each kept index's R0 * R values into a small state (a
sum, a maximum with its index, an online softmax pair, shifted first and second moments): one block per kept
index when B is 1 (its threads read consecutive values), one thread per kept index when B > 1 (a warp reads 32
consecutive kept values per step). When kept indices are too few to fill the GPU the reduction is split over
``splits`` blocks whose partial states a combine kernel merges. A normalisation then streams the input once more
through an elementwise apply kernel.
"""

from __future__ import annotations

from kernelcraft.search.offline_kernels import cuda_common as cc
from kernelcraft.search.offline_kernels.candidate import input_guard
from kernelcraft.search.offline_kernels.opspec import OpSpec

FAMILY = "reduce"
BACKEND = "cuda"
GEN = "reduce_cuda"

TUNABLES: dict[str, tuple] = {
    "threads": (128, 256, 512, 1024),
    "ilp": (1, 2, 4),
    "bps": (4, 8, 16),
}

ARG_KINDS = ("argmax", "argmin")
SUMS = ("sum", "mean", "rms", "l1mean", "l1sum", "l2", "meanvar", "var", "std", "norm1", "norm2")
# kinds whose state is the shifted first and second moments (the slice's first value subtracted)
SHIFTED = ("meanvar", "var", "std")


# Fewer blocks than this (an H100's or H200's SMs) with one block per kept index cannot cover the GPU even once.
SPLIT_BELOW_BLOCKS = 132
# Reduced values per kept index from which a split pays for its combine kernel.
SPLIT_FROM_VALUES = 8192


def baseline(spec: OpSpec) -> dict:
    """Scalar loads, one accumulator per thread: the kernel a first port would have. It splits the reduction over
    blocks only where one block per kept index could not cover the GPU once, as any port of a sum to a scalar
    does: unsplit, MSELoss's 2 x 4 GB went through one SM, about 2.5 s a call, and each such candidate's timing
    took minutes of the H200."""
    f = {"gen": GEN, "threads": 256, "vec": 1, "ilp": 1, "split": "none", "bps": 8, "load": "plain",
         "apply_load": "plain", "store": "plain", "unroll": False, "acc": "float", "fast_exp": False,
         "idx32": False, "launch_min": 0, "apply_grid": "exact"}
    if kept_blocks(spec, f["threads"]) < SPLIT_BELOW_BLOCKS and splittable(spec):
        f["split"] = "fill"
    return f


def row_mapping(spec: OpSpec) -> bool:
    """B == 1: a kept index's values are consecutive, so a block reads them together."""
    return spec.geometry["b"] == 1


def kept_blocks(spec: OpSpec, threads: int) -> int:
    """Blocks of the statistics kernel without a split: one per kept index (rows), or one per ``threads`` kept
    indices (columns)."""
    g = spec.geometry
    return g["a"] * g["b"] if row_mapping(spec) else -(-(g["a"] * g["b"]) // threads)


def splittable(spec: OpSpec) -> bool:
    """Enough reduced values per kept index that splitting them pays for the combine kernel."""
    return spec.geometry["r0"] * spec.geometry["r"] >= SPLIT_FROM_VALUES


def vec_ok(spec: OpSpec) -> bool:
    """float4 steps stay inside one kept index's slice (and one channel's run of its affine map)."""
    g = spec.geometry
    return g["b"] == 1 and g["r"] % 4 == 0 and (not g["affine"] or g["chw"] % 4 == 0) and (
        not g.get("pro") or g["yn"] == g["r0"] * g["a"] * g["r"] * g["b"])


def normalise(spec: OpSpec, f: dict) -> dict:
    base = baseline(spec)
    g = base | {k: v for k, v in f.items() if k in base}
    g["gen"] = GEN
    for k in ("threads", "ilp", "bps"):
        if g[k] not in TUNABLES[k]:
            g[k] = base[k]
    if g["vec"] not in (1, 4) or not vec_ok(spec):
        g["vec"] = 1
    g["split"] = "fill" if g["split"] == "fill" else "none"
    if g["split"] == "none":
        g["bps"] = 8
    g["load"] = g["load"] if g["load"] in ("plain", "ldg") else "plain"
    g["apply_load"] = g["apply_load"] if g["apply_load"] in ("plain", "ldcs") else "plain"
    g["store"] = g["store"] if g["store"] in ("plain", "stcs") else "plain"
    for k in ("unroll", "fast_exp", "idx32"):
        g[k] = bool(g[k])
    g["acc"] = "double" if g["acc"] == "double" else "float"
    if spec.geometry["kind"] not in SUMS:
        g["acc"] = "float"  # maxima, products and indices gain nothing from double sums
    if spec.geometry["kind"] not in ("softmax", "log_softmax"):
        g["fast_exp"] = False
    g["launch_min"] = g["launch_min"] if g["launch_min"] in (0, 2, 4) else 0
    g["apply_grid"] = "persistent" if g["apply_grid"] == "persistent" else "exact"
    if spec.op != "normalize":
        g["apply_load"], g["store"], g["apply_grid"] = "plain", "plain", "exact"
    if g["idx32"] and spec.numel >= 2**31 - 2**20:
        g["idx32"] = False
    return g


# ------------------------------------------------------------------------------------------------ state


def state_code(kind: str, acc: str, cuda: bool, fast_exp: bool = False) -> str:
    """The per-kind accumulator: a struct, its identity, adding one value (its flat reduced index j and the slice's
    shift c), merging two states. Shared with the C generator (``cuda`` picks the dialect)."""
    fn = "__device__ __forceinline__" if cuda else "static inline"
    inf = "__int_as_float(0x7f800000)" if cuda else "INFINITY"
    exp = "__expf" if fast_exp else "expf"
    init = {"max": f"-{inf}", "min": inf, "argmax": f"-{inf}", "argmin": inf, "prod": "1", "softmax": f"-{inf}",
            "log_softmax": f"-{inf}", "logsumexp": f"-{inf}"}.get(kind, "0")
    lines = ["typedef struct { ACC v; ACC w; long long i; } St;",
             f"{fn} St st_init(void) {{ St s; s.v = {init}; s.w = 0; s.i = 0x7fffffffffffffffLL; return s; }}"]
    if kind in ("sum", "mean"):
        add, merge = "s->v += x;", "a.v += b.v;"
    elif kind in ("rms", "l2", "norm2"):
        add, merge = "s->v += (ACC)x * x;", "a.v += b.v;"
    elif kind in ("l1mean", "l1sum", "norm1"):
        add, merge = "s->v += fabsf(x);", "a.v += b.v;"
    elif kind == "prod":
        add, merge = "s->v *= x;", "a.v *= b.v;"
    elif kind == "linf":  # the largest magnitude (from 0: every magnitude is at least that); NaN wins
        add = "{ const float a = fabsf(x); if (a > s->v || a != a) s->v = s->v != s->v ? s->v : a; }"
        merge = "if (b.v > a.v || (b.v != b.v && a.v == a.v)) a.v = b.v;"
    elif kind in ("max", "min"):
        op = ">" if kind == "max" else "<"
        add = f"if (x {op} s->v || x != x) s->v = s->v != s->v ? s->v : x;  /* NaN wins, as PyTorch's */"
        merge = f"if (b.v {op} a.v || (b.v != b.v && a.v == a.v)) a.v = b.v;"
    elif kind in ARG_KINDS:
        op = ">" if kind == "argmax" else "<"
        better = (f"(X {op} V || (X != X && V == V) || ((X == V || (X != X && V != V)) && J < I))")
        add = "if " + better.replace("X", "x").replace("V", "s->v").replace("J", "j").replace("I", "s->i") \
            + " { s->v = x; s->i = j; }"
        merge = "if " + better.replace("X", "b.v").replace("V", "a.v").replace("J", "b.i").replace("I", "a.i") \
            + " { a = b; }"
    elif kind in ("softmax", "log_softmax", "logsumexp"):  # online: (running max, sum of exp(x - max))
        add = (f"if (x > s->v) {{ s->w = s->w * {exp}(s->v - x) + 1; s->v = x; }} "
               f"else if (x > -{inf} || x != x) s->w += {exp}(x - s->v);")
        merge = (f"{{ const ACC m = (b.v > a.v || b.v != b.v) ? b.v : a.v; "
                 f"if (m == -{inf}) return a; "
                 f"a.w = a.w * {exp}(a.v - m) + b.w * {exp}(b.v - m); a.v = m; }}")
    elif kind in SHIFTED:  # moments of x - c, c the slice's first value: no cancellation for large means
        add, merge = "{ const ACC d = (ACC)x - c; s->v += d; s->w += d * d; }", "a.v += b.v; a.w += b.w;"
    else:
        raise ValueError(f"no reduce state for kind {kind!r}")
    lines.append(f"{fn} void st_add(St* s, float x, long long j, ACC c) {{ (void)j; (void)c; {add} }}")
    lines.append(f"{fn} St st_merge(St a, St b) {{ {merge} return a; }}")
    return "\n".join(lines)


def final_code(spec: OpSpec, cuda: bool) -> str:
    """``st_final``: a merged state to the kept index's output (a reduction) or to the two numbers the apply pass
    needs (a normalisation), from the count RED and eps."""
    fn = "__device__ __forceinline__" if cuda else "static inline"
    kind = spec.geometry["kind"]
    eps = f"{float(spec.eps)!r}f"
    if spec.op == "reduce":
        corr = float(spec.geometry.get("corr", 1.0))
        g = spec.geometry
        red = g["r0"] * g["r"]
        denom = max(red - corr, 0.0)  # PyTorch divides by N - correction (nan or inf when that is not positive)
        var = f"fmax((double)((s.w - s.v * s.v / (ACC)RED) / (ACC){denom!r}), 0.0)"
        value = {"sum": "s.v", "mean": "s.v / (ACC)RED", "max": "s.v", "min": "s.v", "prod": "s.v",
                 "var": var, "std": f"sqrt({var})", "logsumexp": "s.v + log((double)s.w)", "norm1": "s.v",
                 "norm2": "sqrt((double)s.v)"}.get(kind)
        scale = float(spec.geometry.get("scale", 1.0))
        if scale != 1.0:  # a loss divided by a constant (KL divergence's batchmean)
            value = f"({value}) * (ACC){scale!r}"
        if kind in ARG_KINDS:
            return f"{fn} void st_final(St s, ACC c, float* out, long long* out_i, long long k) " \
                   "{ (void)c; (void)out; out_i[k] = s.i; }"
        return f"{fn} void st_final(St s, ACC c, float* out, long long* out_i, long long k) " \
               f"{{ (void)c; (void)out_i; out[k] = (float)({value}); }}"
    pair = {
        "softmax": ("s.v", "1.0f / (float)s.w"),
        "log_softmax": ("(float)s.v + logf((float)s.w)", "0.f"),
        "rms": (f"1.0f / sqrtf((float)(s.v / (ACC)RED) + {eps})", "0.f"),
        "l1mean": ("(float)((ACC)RED / s.v)", "0.f"),
        "l1sum": ("(float)(1 / s.v)", "0.f"),
        "l2": (f"1.0f / fmaxf(sqrtf((float)s.v), {eps})", "0.f"),
        "linf": (f"1.0f / fmaxf((float)s.v, {eps})", "0.f"),
        "meanvar": ("(float)(c + s.v / (ACC)RED)",
                    f"1.0f / sqrtf(fmaxf((float)(s.w / (ACC)RED - (s.v / (ACC)RED) * (s.v / (ACC)RED)), 0.f) + {eps})"),
    }[kind]
    return (f"{fn} void st_final(St s, ACC c, float* out, long long* out_i, long long k) {{ (void)c; (void)out_i; "
            f"out[2 * k] = (float)({pair[0]}); out[2 * k + 1] = (float)({pair[1]}); }}")


def apply_expr(kind: str, fast_exp: bool = False) -> str:
    """y from x and the kept index's two numbers s0, s1 (before the affine map)."""
    exp = "__expf" if fast_exp else "expf"
    return {"softmax": f"{exp}(x - s0) * s1", "log_softmax": "x - s0", "meanvar": "(x - s0) * s1"}.get(kind, "x * s0")


def defines(spec: OpSpec, acc: str, idx: str) -> list[str]:
    g = spec.geometry
    return [f"typedef {acc} ACC;", f"typedef {idx} IDX;", f"#define R0 {g['r0']}LL", f"#define A_ {g['a']}LL",
            f"#define R_ {g['r']}LL", f"#define B_ {g['b']}LL", "#define RED (R0 * R_)", "#define KEPT (A_ * B_)",
            "#define AR (A_ * R_ * B_)", f"#define CA {g['ca']}LL", f"#define CR {g['cr']}LL",
            f"#define CHW {g['chw']}LL", f"#define AFFINE {g['affine']}",
            "/* flat address of kept index (a, b) at reduced index j = r0 * R + r */",
            "#define ADDR(a, b, j) (((IDX)((j) / R_)) * AR + ((IDX)(a) * R_ + (IDX)((j) % R_)) * B_ + (IDX)(b))",
            f"#define YN {g.get('yn', 1)}LL"]


def prologue_code(spec: OpSpec, cuda: bool) -> str:
    """A loss's elementwise term of (x, y), from the traced graph; empty for a plain reduction."""
    if not spec.geometry.get("pro"):
        return ""
    fn = "__device__ __forceinline__" if cuda else "static inline"
    return f"{fn} float pro(const float x, const float y) {{ {spec.body} }}"


# ------------------------------------------------------------------------------------------------ kernels


def _block_reduce(T: int) -> list[str]:
    """Merge every thread's state into thread 0's (warp shuffles, then one warp over the warps' results)."""
    return ["#pragma unroll", "for (int o = 16; o > 0; o >>= 1) {", "  St t;",
            "  t.v = __shfl_xor_sync(0xffffffffu, st.v, o); t.w = __shfl_xor_sync(0xffffffffu, st.w, o);",
            "  t.i = __shfl_xor_sync(0xffffffffu, st.i, o);", "  st = st_merge(st, t);", "}",
            f"__shared__ St warp_st[{T // 32}];", "if ((threadIdx.x & 31) == 0) warp_st[threadIdx.x >> 5] = st;",
            "__syncthreads();", "if (threadIdx.x < 32) {",
            f"  st = threadIdx.x < {T // 32} ? warp_st[threadIdx.x] : st_init();", "  #pragma unroll",
            "  for (int o = 16; o > 0; o >>= 1) {", "    St t;",
            "    t.v = __shfl_xor_sync(0xffffffffu, st.v, o); t.w = __shfl_xor_sync(0xffffffffu, st.w, o);",
            "    t.i = __shfl_xor_sync(0xffffffffu, st.i, o);", "    st = st_merge(st, t);", "  }", "}"]


def _stats_kernel(spec: OpSpec, f: dict, name: str, vec: int) -> str:
    T, ilp = f["threads"], f["ilp"]
    lb = f"__launch_bounds__({T}, {f['launch_min']})" if f["launch_min"] else f"__launch_bounds__({T})"
    ld = (lambda p: cc.load("ldg", p)) if f["load"] == "ldg" else (lambda p: f"*({p})")
    unroll = "#pragma unroll 4" if f["unroll"] else "#pragma unroll 1"
    pro = bool(spec.geometry.get("pro"))

    def val(offset: str) -> str:
        """The reduced value at a flat offset: x, or the loss's elementwise term of x and y (y broadcast over x's
        leading dimensions: offset modulo its size)."""
        if not pro:
            return ld(f"x + {offset}")
        return f"pro({ld(f'x + {offset}')}, {ld(f'y + ({offset}) % YN')})"

    shift = "const ACC c = " + ("(ACC)" + ld("x + ADDR(a, b, 0)") if spec.geometry["kind"] in SHIFTED else "0") + ";"
    head = ["const long long chunk = ((RED + splits - 1) / splits + 3) / 4 * 4;",
            "const long long j0 = (long long)blockIdx.y * chunk;",
            "const long long j1 = j0 + chunk < RED ? j0 + chunk : RED;",
            f"St sts[{ilp}];", "#pragma unroll", f"for (int u = 0; u < {ilp}; ++u) sts[u] = st_init();"]
    merge = ["St st = sts[0];", "#pragma unroll", f"for (int u = 1; u < {ilp}; ++u) st = st_merge(st, sts[u]);"]
    write = ["if (splits == 1) st_final(st, c, out, out_i, k);",
             "else { part[(blockIdx.y * KEPT + k) * 2] = (float)st.v; part[(blockIdx.y * KEPT + k) * 2 + 1] = "
             "(float)st.w; part_i[blockIdx.y * KEPT + k] = st.i; }"]
    if row_mapping(spec):
        body = ["const long long k = blockIdx.x;", "const long long a = k, b = 0;", shift, *head]
        if vec == 4:  # R % 4 == 0: a float4 never straddles two r0 slices
            body += [unroll, f"for (long long j = j0 + 4LL * threadIdx.x; j < j1; j += 4LL * {T * ilp}) {{",
                     "  #pragma unroll", f"  for (int u = 0; u < {ilp}; ++u) {{",
                     f"    const long long jj = j + 4LL * {T} * u;", "    if (jj < j1) {",
                     "      float4 v = " + ld("reinterpret_cast<const float4*>(x + ADDR(a, b, jj))") + ";",
                     *([  # the loss's elementwise term of x and y (same shape: the same offsets)
                         "      const float4 w4 = " + ld("reinterpret_cast<const float4*>(y + ADDR(a, b, jj))") + ";",
                         "      v.x = pro(v.x, w4.x); v.y = pro(v.y, w4.y); v.z = pro(v.z, w4.z); "
                         "v.w = pro(v.w, w4.w);"] if pro else []),
                     "      st_add(&sts[u], v.x, jj, c); st_add(&sts[u], v.y, jj + 1, c);",
                     "      st_add(&sts[u], v.z, jj + 2, c); st_add(&sts[u], v.w, jj + 3, c);", "    }", "  }", "}"]
        else:
            body += [unroll, f"for (long long j = j0 + threadIdx.x; j < j1; j += {T * ilp}) {{", "  #pragma unroll",
                     f"  for (int u = 0; u < {ilp}; ++u) {{", f"    const long long jj = j + {T}LL * u;",
                     "    if (jj < j1) st_add(&sts[u], " + val("ADDR(a, b, jj)") + ", jj, c);", "  }", "}"]
        body += merge + _block_reduce(T) + ["if (threadIdx.x == 0) {"] + ["  " + ln for ln in write] + ["}"]
    else:  # one thread per kept index; a warp reads 32 consecutive b at each j
        body = [f"const long long k = (long long)blockIdx.x * {T} + threadIdx.x;", "if (k >= KEPT) return;",
                "const long long a = k / B_, b = k % B_;", shift, *head,
                unroll, f"for (long long j = j0; j < j1; j += {ilp}) {{", "  #pragma unroll",
                f"  for (int u = 0; u < {ilp}; ++u)",
                "    if (j + u < j1) st_add(&sts[u], " + val("ADDR(a, b, j + u)") + ", j + u, c);", "}",
                *merge, *write]
    return (f'extern "C" __global__ void {lb} {name}(const float* __restrict__ x, const float* __restrict__ y, '
            'float* out, long long* out_i, '
            "float* part, long long* part_i, long long splits) {\n" + "\n".join("  " + ln for ln in body) + "\n}")


def _combine_kernel(spec: OpSpec, f: dict) -> str:
    shift = "const ACC c = " + ("(ACC)x[ADDR(k / B_, k % B_, 0)]" if spec.geometry["kind"] in SHIFTED
                                else "0") + ";"
    body = ["const long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x;", "if (k >= KEPT) return;",
            shift, "St st = st_init();", "for (int s = 0; s < splits; ++s) {",
            "  St t; t.v = part[(s * KEPT + k) * 2]; t.w = part[(s * KEPT + k) * 2 + 1]; t.i = part_i[s * KEPT + k];",
            "  st = st_merge(st, t);", "}", "st_final(st, c, out, out_i, k);"]
    return ('extern "C" __global__ void combine(const float* __restrict__ x, const float* __restrict__ part, '
            "const long long* __restrict__ part_i, float* out, long long* out_i, long long splits) {\n"
            + "\n".join("  " + ln for ln in body) + "\n}")


def _apply_kernel(spec: OpSpec, f: dict, name: str, vec: int) -> str:
    """y = f(x, the kept index's two numbers) [* weight[ch] + bias[ch]], streamed with a grid-stride loop."""
    g = spec.geometry
    T = f["threads"]
    ld = (lambda p: cc.load("ldcs", p)) if f["apply_load"] == "ldcs" else (lambda p: f"*({p})")
    expr = apply_expr(g["kind"], f["fast_exp"])

    def one(xv: str, e: str, kexpr: str, chexpr: str) -> list[str]:
        lines = [f"{{ const float xin = {xv};",
                 f"  const float x = xin, s0 = st[2 * ({kexpr})], s1 = st[2 * ({kexpr}) + 1];", "  (void)s1;",
                 f"  float yv = {expr};"]
        if g["affine"]:
            lines.append(f"  {{ const IDX ch = {chexpr}; yv = yv * w[ch] + bb[ch]; }}")
        lines.append(f"  {e} = yv; }}")
        return lines

    body = [f"const IDX n = (IDX)R0 * A_ * R_ * B_ / {vec};",
            f"for (IDX i = (IDX)blockIdx.x * {T} + threadIdx.x; i < n; i += (IDX)gridDim.x * {T}) {{"]
    if vec == 4:  # B == 1 and R % 4 == 0 (and CHW % 4 == 0): four neighbours share their kept index and channel
        body += ["  const IDX e = i * 4;", "  const IDX a = (e / R_) % A_;", "  const IDX r = e % R_;",
                 "  const float4 xv = " + ld("reinterpret_cast<const float4*>(x) + i") + ";", "  float4 yv4;"]
        for comp in "xyzw":
            body += ["  " + ln for ln in one(f"xv.{comp}", f"yv4.{comp}", "a", "(a % CA) * CR + r / CHW")]
        body.append("  " + cc.store(f["store"], "reinterpret_cast<float4*>(y) + i", "yv4"))
    else:
        body += ["  const IDX b = i % B_;", "  const IDX r = (i / B_) % R_;", "  const IDX a = (i / (B_ * R_)) % A_;",
                 "  float yo;"]
        body += ["  " + ln for ln in one(ld("x + i"), "yo", "a * B_ + b", "(a % CA) * CR + r / CHW")]
        body.append("  " + cc.store(f["store"], "y + i", "yo"))
    body.append("}")
    return (f'extern "C" __global__ void __launch_bounds__({T}) {name}(const float* __restrict__ x, '
            "const float* __restrict__ st, const float* __restrict__ w, const float* __restrict__ bb, "
            "float* __restrict__ y) {\n" + "\n".join("  " + ln for ln in body) + "\n}")


def running_code(spec: OpSpec, cuda: bool) -> str:
    """A batch or instance norm module's running statistics as the apply pass's two numbers per kept index (what
    the module normalises with in eval mode): the mean, and 1 / sqrt(var + eps)."""
    eps = f"{float(spec.eps)!r}f"
    rc = spec.geometry["rc"]
    if cuda:
        return ('extern "C" __global__ void running(const float* __restrict__ rm, const float* __restrict__ rv, '
                "float* __restrict__ fin) {\n"
                "  const long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x;\n"
                f"  if (k >= KEPT) return;\n  const long long c = k % {rc};\n"
                f"  fin[2 * k] = rm[c];\n  fin[2 * k + 1] = 1.0f / sqrtf(rv[c] + {eps});\n}}")
    return (f"void running(const float* rm, const float* rv, float* fin) {{\n"
            f"  for (int64_t k = 0; k < KEPT; ++k) {{\n    const int64_t c = k % {rc};\n"
            f"    fin[2 * k] = rm[c];\n    fin[2 * k + 1] = 1.0f / sqrtf(rv[c] + {eps});\n  }}\n}}")


def has_running(spec: OpSpec) -> bool:
    return bool(spec.geometry.get("running"))


def render_source(spec: OpSpec, f: dict, vec: int) -> str:
    f = normalise(spec, f)
    idx = "int" if f["idx32"] else "long long"
    out = ["// generated by kernelcraft's offline proposer (reduce_cuda)", *defines(spec, f["acc"], idx),
           state_code(spec.geometry["kind"], f["acc"], True, f["fast_exp"]), final_code(spec, True),
           prologue_code(spec, True)]
    out += [_stats_kernel(spec, f, "stats", vec), _combine_kernel(spec, f)]
    if spec.op == "normalize":
        out.append(_apply_kernel(spec, f, "apply", vec))
    if has_running(spec):
        out.append(running_code(spec, True))
    return "\n\n".join(out) + "\n"


def render(spec: OpSpec, f: dict) -> tuple[str, list[str]]:
    f = normalise(spec, f)
    g = spec.geometry
    T = f["threads"]
    names = ("stats", "combine") + (("apply",) if spec.op == "normalize" else ()) \
        + (("running",) if has_running(spec) else ())
    mod = [f"SRC = r'''\n{render_source(spec, f, f['vec'])}'''", "",
           f"_mod = {{n: cuda_kernel(SRC, n) for n in {names!r}}}"]
    if f["vec"] > 1:
        mod += ["", "# Scalar kernels for inputs not 16-byte aligned (see forward).",
                f"SRC_SAFE = r'''\n{render_source(spec, f, 1)}'''", "",
                f"_safe = {{n: cuda_kernel(SRC_SAFE, n) for n in {names!r}}}"]
    mod.append(cc.SM_COUNT_PY)
    kept, red = g["a"] * g["b"], g["r0"] * g["r"]
    shape = tuple(spec.input_shapes[0])
    fwd = input_guard(shape)
    if g.get("pro"):  # a loss: its second input
        y_shape = tuple(spec.input_shapes[1])
        fwd += ["y = y.contiguous()", f"if tuple(y.shape) != {y_shape!r}:",
                f"    raise ValueError(f'expected a second input of shape {y_shape}, got {{tuple(y.shape)}}')"]
    aligned = "x.data_ptr() % 16 == 0" + (" and y.data_ptr() % 16 == 0" if g.get("pro") else "")
    fwd.append("k = _mod" if f["vec"] == 1 else f"k = _mod if {aligned} else _safe")
    blocks = kept if row_mapping(spec) else -(-kept // T)
    if f["split"] == "fill":
        fwd += [f"splits = max(1, min(65535, -(-_sm_count(x.device.index) * {f['bps']} // {blocks}), "
                f"{red} // {4 * T * f['vec']}))"]
    else:
        fwd.append("splits = 1")
    if spec.op == "reduce":
        dtype = "torch.int64" if g["kind"] in ARG_KINDS else "x.dtype"
        fwd += [f"out = torch.empty({tuple(spec.out_shape)!r}, device=x.device, dtype={dtype})",
                "if out.numel() == 0:", "    return out"]
        fwd.append("fin = fin_i = out  # the kernels write the reduced values (or indices) straight into it")
    else:
        fwd += ["y = torch.empty_like(x)", "if y.numel() == 0:", "    return y",
                f"fin = torch.empty({2 * kept}, device=x.device, dtype=torch.float32)", "fin_i = fin"]
    stats = [f"part = torch.empty(2 * {kept} * splits if splits > 1 else 2, device=x.device, dtype=torch.float32)",
             f"part_i = torch.empty({kept} * splits if splits > 1 else 1, device=x.device, dtype=torch.int64)",
             f"k['stats'](grid=({blocks}, splits), block=({T},), args=(x, {'y' if g.get('pro') else 'x'}, fin, fin_i, "
             "part, part_i, splits))",
             "if splits > 1:",
             f"    k['combine'](grid=({-(-kept // 256)},), block=(256,), args=(x, part, part_i, fin, fin_i, splits))"]
    if has_running(spec):  # eval mode: the module's running statistics, as the reference's module uses them
        mod_attr = g["running"]
        fwd += ["if not self.training:",
                f"    k['running'](grid=({-(-kept // 256)},), block=(256,), args=({mod_attr}.running_mean, "
                f"{mod_attr}.running_var, fin))", "else:", *["    " + ln for ln in stats]]
    else:
        fwd += stats
    if spec.op == "reduce":
        fwd.append("return out")
        return "\n".join(mod), fwd
    n = spec.numel // f["vec"]
    fwd.append(f"grid = min({-(-n // T)}, 2**31 - 1)" if f["apply_grid"] == "exact"
               else f"grid = min({-(-n // T)}, _sm_count(x.device.index) * 8)")
    w = f"{spec.weight}.contiguous()" if spec.weight else "x"
    b = f"{spec.bias}.contiguous()" if spec.bias else "x"
    fwd += [f"w, b = {w}, {b}", f"k['apply'](grid=(grid,), block=({T},), args=(x, fin, w, b, y))", "return y"]
    return "\n".join(mod), fwd
