"""CUDA kernels for cross-entropy: each row of class scores x [N, C] reduced to its loss (log-sum-exp minus the
target's score), then one block averaging the rows' losses over the targets not ignored (or summing them).

Reading the scores once is the floor, so the levers are those of a row reduction: a block per row or, for rows
of a few thousand classes, a warp per row (``mapping``: no shared memory, no block barrier); float4 loads
(``vec``) and cache hints; the statistics in two passes (the maximum, then the shifted exponentials, the second
pass reading the row again from cache) or in one online pass whose running sum is rescaled when the maximum grows
(``stats``); two accumulators per thread (``ilp``) and unrolling for loads in flight; ``__expf`` or ``exp2f``;
occupancy hints; a persistent grid of a few blocks per SM walking the rows. The total is a second kernel, one block
summing in double in a fixed order, so the same inputs give the same loss on every run.
"""

from __future__ import annotations

from kernelcraft.search.offline_kernels import cuda_common as cc
from kernelcraft.search.offline_kernels.candidate import scores_guard
from kernelcraft.search.offline_kernels.opspec import OpSpec
from kernelcraft.search.offline_kernels.phases import merge_online

FAMILY = "xent"
BACKEND = "cuda"
GEN = "xent_cuda"

TUNABLES: dict[str, tuple] = {"threads": cc.THREADS, "bps": (2, 4, 8), "launch_min": (0, 2, 4)}


def baseline(spec: OpSpec) -> dict:
    """A block of 256 threads per row, scalar loads, two passes, expf."""
    return {"gen": GEN, "mapping": "block", "threads": 256, "vec": 1, "stats": "two_pass", "exp": "expf",
            "load": "plain", "ilp": 1, "unroll": False, "launch_min": 0, "grid": "exact", "bps": 4}


def vec_ok(spec: OpSpec) -> bool:
    """Rows start on 16-byte boundaries (given an aligned base) only when C is a multiple of four."""
    return spec.geometry["c"] % 4 == 0


def normalise(spec: OpSpec, f: dict) -> dict:
    base = baseline(spec)
    g = base | {k: v for k, v in f.items() if k in base}
    g["gen"] = GEN
    g["mapping"] = "warp" if g["mapping"] == "warp" else "block"
    if g["threads"] not in TUNABLES["threads"]:
        g["threads"] = 256
    g["vec"] = 4 if g["vec"] == 4 and vec_ok(spec) else 1
    g["stats"] = "online" if g["stats"] == "online" else "two_pass"
    g["exp"] = g["exp"] if g["exp"] in ("expf", "fast", "exp2") else "expf"
    g["load"] = g["load"] if g["load"] in ("plain", "ldg", "ldcs") else "plain"
    g["ilp"] = 2 if g["ilp"] == 2 else 1
    g["unroll"] = bool(g["unroll"])
    if g["launch_min"] not in TUNABLES["launch_min"]:
        g["launch_min"] = 0
    g["grid"] = "persistent" if g["grid"] == "persistent" else "exact"
    if g["grid"] != "persistent" or g["bps"] not in TUNABLES["bps"]:
        g["bps"] = 4  # only a persistent grid reads it
    return g


def _lane_loop(f: dict, stride: str, body: str) -> list[str]:
    """``body`` (a template over {v} and the accumulator suffix {a}) for each of this thread's scores, ``stride``
    threads sharing the row; with ``ilp`` 2, alternate loads feed two accumulators (two chains in flight)."""
    n = "C_ / 4" if f["vec"] == 4 else "C_"
    ld = cc.load(f["load"], "x4 + j" if f["vec"] == 4 else "xr + j")

    def use(a: str) -> list[str]:
        if f["vec"] == 4:
            return [f"  const float4 q{a} = {ld};",
                    *[f"  {{ const float v = q{a}.{c}; {body.replace('{a}', a)} }}" for c in "xyzw"]]
        return [f"  {{ const float v = {ld}; {body.replace('{a}', a)} }}"]

    out = ["#pragma unroll 4"] if f["unroll"] else []
    if f["ilp"] == 2:
        out += [f"for (long long i = lane; i < {n}; i += 2 * {stride}) {{", "  { const long long j = i;",
                *["  " + ln for ln in use("0")], "  }",
                f"  if (i + {stride} < {n}) {{ const long long j = i + {stride};", *["  " + ln for ln in use("1")],
                "  }", "}"]
        return out
    return out + [f"for (long long i = lane; i < {n}; i += {stride}) {{", "  const long long j = i;", *use("0"), "}"]


_HELPERS = r"""
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
// (m, s): a running maximum and the sum of exp(v - m); merging rescales the side with the smaller maximum
__device__ __forceinline__ void merge(float& m, float& s, float m_b, float s_b) {
  """ + merge_online() + r"""
}
__device__ __forceinline__ void warp_merge(float& m, float& s) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    merge(m, s, m2, s2);
  }
}
"""


def _row_body(f: dict, warp: bool) -> list[str]:
    """One row's (m, s) statistics into lane 0, and its loss written."""
    stride = "32" if warp else "T"
    two = f["ilp"] == 2
    body = ["const float* xr = x + row * C_;"]
    if f["vec"] == 4:
        body.append("const float4* x4 = reinterpret_cast<const float4*>(xr);")
    if f["stats"] == "online":
        body += ["float m0 = -INFINITY, s0 = 0.f;" + (" float m1 = -INFINITY, s1 = 0.f;" if two else ""),
                 *_lane_loop(f, stride, "if (v > m{a}) { s{a} = s{a} * EXPF(m{a} - v) + 1.f; m{a} = v; } "
                                        "else if (m{a} != -INFINITY) { s{a} += EXPF(v - m{a}); }"),
                 "float m = m0, s = s0;", *(["merge(m, s, m1, s1);"] if two else []), "warp_merge(m, s);"]
        if not warp:
            body += ["if ((lane & 31) == 0) { wm[lane >> 5] = m; ws[lane >> 5] = s; }", "__syncthreads();",
                     "m = wm[0]; s = ws[0];", "for (int w = 1; w < T / 32; ++w) merge(m, s, wm[w], ws[w]);"]
    else:
        body += ["float m0 = -INFINITY;" + (" float m1 = -INFINITY;" if two else ""),
                 *_lane_loop(f, stride, "m{a} = fmaxf(m{a}, v);"),
                 "float m = warp_max(" + ("fmaxf(m0, m1));" if two else "m0);")]
        if not warp:
            body += ["if ((lane & 31) == 0) wm[lane >> 5] = m;", "__syncthreads();",
                     "m = wm[0];", "for (int w = 1; w < T / 32; ++w) m = fmaxf(m, wm[w]);"]
        body += ["float s0 = 0.f;" + (" float s1 = 0.f;" if two else ""),
                 *_lane_loop(f, stride, "s{a} += EXPF(v - m);"),
                 "float s = warp_sum(" + ("s0 + s1);" if two else "s0);")]
        if not warp:
            body += ["if ((lane & 31) == 0) ws[lane >> 5] = s;", "__syncthreads();", "s = 0.f;",
                     "for (int w = 0; w < T / 32; ++w) s += ws[w];"]
    body += ["if (lane == 0) {", "  const long long tt = t[row];",
             "  // a target outside the classes has no score: NaN rather than a read out of bounds",
             "  loss[row] = tt == IGNORE ? 0.f : (tt < 0 || tt >= C_) ? NAN : (m + logf(s)) - xr[tt];", "}"]
    if not warp:
        body.append("__syncthreads();  // wm and ws are read before the next row overwrites them")
    return body


def render_source(spec: OpSpec, f: dict, name: str) -> str:
    f = normalise(spec, f)
    g = spec.geometry
    T = f["threads"]
    warp = f["mapping"] == "warp"
    exp = {"fast": "__expf(v)", "exp2": "exp2f(v * 1.4426950408889634f)", "expf": "expf(v)"}[f["exp"]]
    out = ["// generated by kernelcraft's offline proposer (xent_cuda)", f"#define N_ {g['n']}LL",
           f"#define C_ {g['c']}LL", f"#define IGNORE {g['ignore']}LL", f"#define T {T}",
           "#ifndef INFINITY\n#define INFINITY __int_as_float(0x7f800000)\n#endif",
           "#ifndef NAN\n#define NAN __int_as_float(0x7fc00000)\n#endif",
           f"__device__ __forceinline__ float EXPF(float v) {{ return {exp}; }}", _HELPERS]
    row = _row_body(f, warp)
    if warp:
        first, step = "(long long)blockIdx.x * (T / 32) + (threadIdx.x >> 5)", "(long long)gridDim.x * (T / 32)"
        head = ["const int lane = threadIdx.x & 31;"]
    else:
        first, step = "(long long)blockIdx.x", "(long long)gridDim.x"
        head = ["const int lane = threadIdx.x;", "__shared__ float wm[32], ws[32];"]
    if f["grid"] == "persistent":  # a few blocks per SM walk the rows
        body = head + [f"for (long long row = {first}; row < N_; row += {step}) {{", *["  " + ln for ln in row], "}"]
    else:
        body = head + [f"const long long row = {first};", "if (row >= N_) return;", *row]
    lb = f"__launch_bounds__(T, {f['launch_min']})" if f["launch_min"] else "__launch_bounds__(T)"
    out.append(f'extern "C" __global__ void {lb} {name}(const float* __restrict__ x, '
               "const long long* __restrict__ t, float* __restrict__ loss) {\n"
               + "\n".join("  " + ln for ln in body) + "\n}")
    total = ["__shared__ double ps[32];", "__shared__ long long pk[32];", "double s = 0.0;", "long long kept = 0;",
             "for (long long r = threadIdx.x; r < N_; r += 1024) if (t[r] != IGNORE) { s += loss[r]; ++kept; }",
             "#pragma unroll", "for (int o = 16; o > 0; o >>= 1) {",
             "  s += __shfl_xor_sync(0xffffffffu, s, o); kept += __shfl_xor_sync(0xffffffffu, kept, o);", "}",
             "if ((threadIdx.x & 31) == 0) { ps[threadIdx.x >> 5] = s; pk[threadIdx.x >> 5] = kept; }",
             "__syncthreads();", "if (threadIdx.x == 0) {", "  s = 0.0; kept = 0;",
             "  for (int w = 0; w < 32; ++w) { s += ps[w]; kept += pk[w]; }",
             "  out[0] = " + ("(float)(s / (double)kept);" if g["mean"] else "(float)s;"), "}"]
    out.append("// the rows' losses summed in double by one block, in a fixed order: the same loss on every run\n"
               f'extern "C" __global__ void __launch_bounds__(1024) {name}_total(const float* __restrict__ loss, '
               "const long long* __restrict__ t, float* __restrict__ out) {\n"
               + "\n".join("  " + ln for ln in total) + "\n}")
    return "\n\n".join(out) + "\n"


def grid(spec: OpSpec, f: dict) -> str:
    """The launch's grid size as a Python expression (a persistent grid depends on the GPU's SM count)."""
    n = spec.geometry["n"]
    rows = -(-n // (f["threads"] // 32)) if f["mapping"] == "warp" else n
    return f"min({rows}, _sm_count(x.device.index) * {f['bps']})" if f["grid"] == "persistent" else str(rows)


def render(spec: OpSpec, f: dict) -> tuple[str, list[str]]:
    f = normalise(spec, f)
    safe = normalise(spec, dict(f, vec=1))
    mod = [f"SRC = r'''\n{render_source(spec, f, 'xent_fast')}'''", "",
           '_fast = cuda_kernel(SRC, "xent_fast")', '_total = cuda_kernel(SRC, "xent_fast_total")', cc.SM_COUNT_PY]
    n = spec.geometry["n"]
    launch = f"grid=({grid(spec, f)},), block=({f['threads']},), args=(x, t, loss)"
    fwd = scores_guard(spec) + [f"loss = torch.empty({n}, device=x.device, dtype=torch.float32)",
                                "out = torch.empty((), device=x.device, dtype=torch.float32)"]
    if f["vec"] == 4:
        mod += ["", "# Scalar loads for scores not 16-byte aligned (see forward).",
                f"SRC_SAFE = r'''\n{render_source(spec, safe, 'xent_safe')}'''", "",
                '_safe = cuda_kernel(SRC_SAFE, "xent_safe")']
        fwd += ["if x.data_ptr() % 16 == 0:", f"    _fast({launch})", "else:",
                f"    _safe(grid=({grid(spec, safe)},), block=({safe['threads']},), args=(x, t, loss))"]
    else:
        fwd.append(f"_fast({launch})")
    fwd += ["_total(grid=(1,), block=(1024,), args=(loss, t, out))", "return out"]
    return "\n".join(mod), fwd
