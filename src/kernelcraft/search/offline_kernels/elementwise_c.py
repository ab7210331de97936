"""C (OpenMP) kernels for elementwise ops (ReLU, exact GELU) on the CPU backend.

On a CPU an elementwise op is fast when it runs on every core, in SIMD registers, without the compiler having to
assume aliasing, and without libm calls that stop vectorisation (GELU's ``erff``: hence the polynomial
erf/exp ideas). The rest are the usual streaming levers: tiles handed to threads (static or dynamic), cache-line
aligned per-thread ranges, software prefetch, non-temporal stores that skip the read-for-ownership of the
output, and not going parallel at all for tiny inputs.
"""

from __future__ import annotations

from kernelcraft.search.offline_kernels import c_common as c
from kernelcraft.search.offline_kernels.candidate import broadcast_index, operand_guard
from kernelcraft.search.offline_kernels.opspec import OpSpec

FAMILY = "elementwise"
BACKEND = "cpu"
GEN = "elementwise_c"

TUNABLES: dict[str, tuple] = {
    "tile": (4096, 16384, 65536),
    "unroll": (0, 4, 8),
}


def baseline(spec: OpSpec) -> dict:
    """A serial loop calling the scalar formula per element."""
    return {"gen": GEN, "par": "serial", "schedule": "static", "simd": False, "restrict": False,
            "aligned": False, "unroll": 0, "prefetch": 0, "nt_store": False, "if_parallel": False,
            "proc_bind": "none", "tile": 0, "gelu": "libm", "batch": 0}


def normalise(spec: OpSpec, f: dict) -> dict:
    g = baseline(spec) | {k: v for k, v in f.items() if k in baseline(spec)}
    g["gen"] = GEN
    if g["par"] not in ("serial", "omp", "manual"):
        g["par"] = "serial"
    if g["schedule"] not in ("static", "dynamic", "guided"):
        g["schedule"] = "static"
    if g["tile"] not in (0,) + TUNABLES["tile"]:
        g["tile"] = 0
    if g["par"] != "omp":
        g["schedule"] = "static"
    if g["par"] == "manual":
        g["tile"] = 0
    if g["schedule"] != "static" and g["tile"] == 0:
        g["tile"] = 16384  # per-element dynamic scheduling would be absurd: hand out tiles
    if g["par"] == "serial":
        g["if_parallel"], g["proc_bind"] = False, "none"
    if g["proc_bind"] not in ("none", "close", "spread"):
        g["proc_bind"] = "none"
    if g["unroll"] not in TUNABLES["unroll"]:
        g["unroll"] = 0
    if g["batch"] not in (0, 8, 32) or g["nt_store"]:
        g["batch"] = 0
    if g["prefetch"] not in (0, 64, 512):
        g["prefetch"] = 0
    if spec.op != "gelu" or g["gelu"] not in ("libm", "poly", "poly_exp", "double", "fma"):
        g["gelu"] = "libm"
    return g


def _op(spec: OpSpec, f: dict, v: str, i: str = "i") -> str:
    """The output's element ``i``, whose input value is ``v``."""
    if spec.op == "pointwise":
        return f"kc_op({v}, KC_Y({i}))" if spec.broadcast else f"kc_op({v})"
    if spec.op == "relu":
        return f"({v} < 0.f ? 0.f : {v})"  # NaN stays NaN, as torch.relu
    k = "0.70710678118654752f"
    if f["gelu"] in ("poly", "poly_exp"):
        return f"(0.5f * {v} * (1.f + kc_erff({v} * {k})))"
    if f["gelu"] == "double":
        return f"(float)(0.5 * (double){v} * (1.0 + erf((double){v} * 0.70710678118654752)))"
    if f["gelu"] == "fma":
        return f"fmaf(0.5f * {v}, erff({v} * {k}), 0.5f * {v})"
    return f"(0.5f * {v} * (1.f + erff({v} * {k})))"


def _range_loop(spec: OpSpec, f: dict, lo: str, hi: str, xs: str, ys: str) -> list[str]:
    """y[i] = op(x[i]) for i in [lo, hi): prefetch blocks, simd/unroll pragmas, optional streaming stores."""
    expr = _op(spec, f, f"{xs}[i]")

    def plain(a: str, b: str) -> list[str]:
        pragma = ["#pragma omp simd"] if f["simd"] else c.pragma_unroll(f["unroll"])
        if not f["batch"]:
            return pragma + [f"for (int64_t i = {a}; i < {b}; ++i) {ys}[i] = {expr};"]
        n = f["batch"]
        inner = _op(spec, f, "t_[q]", "i + q")
        return (["{", f"  int64_t i = {a};", f"  for (; i + {n} <= {b}; i += {n}) {{", f"    float t_[{n}];",
                 f"    for (int q = 0; q < {n}; ++q) t_[q] = {xs}[i + q];"]
                + ["    " + p for p in pragma]
                + [f"    for (int q = 0; q < {n}; ++q) t_[q] = {inner};",
                   f"    for (int q = 0; q < {n}; ++q) {ys}[i + q] = t_[q];", "  }",
                   f"  for (; i < {b}; ++i) {ys}[i] = {expr};", "}"])

    def body(a: str, b: str) -> list[str]:
        if not f["nt_store"]:
            return plain(a, b)
        return ["#if defined(__SSE__)", "{", f"  int64_t i = {a};",
                f"  for (; i < {b} && ((uintptr_t)({ys} + i) & 15); ++i) {ys}[i] = {expr};",
                f"  for (; i + 4 <= {b}; i += 4) {{",
                "    float t_[4];",
                "    for (int q_ = 0; q_ < 4; ++q_) { const int64_t ii_ = i + q_; "
                f"t_[q_] = {_op(spec, f, f'{xs}[ii_]', 'ii_')}; }}",
                f"    _mm_stream_ps({ys} + i, _mm_loadu_ps(t_));", "  }",
                f"  for (; i < {b}; ++i) {ys}[i] = {expr};", "}", "#else"] + plain(a, b) + ["#endif"]

    if f["prefetch"]:
        out = [f"for (int64_t i0 = {lo}; i0 < {hi}; i0 += 64) {{",
               f"  const int64_t i1 = i0 + 64 < {hi} ? i0 + 64 : {hi};",
               f"  for (int q = 0; q < 64; q += 16) __builtin_prefetch({xs} + i0 + {f['prefetch']} + q, 0, 0);"]
        out += ["  " + ln for ln in body("i0", "i1")]
        out.append("}")
        return out
    return body(lo, hi)


def render_source(spec: OpSpec, f: dict, name: str) -> str:
    f = normalise(spec, f)
    rs = "restrict " if f["restrict"] else ""
    head = ["/* generated by kernelcraft's offline proposer (elementwise_c) */", "#include <math.h>",
            "#include <stdint.h>"]
    if f["nt_store"]:
        head += ["#if defined(__SSE__)", "#include <immintrin.h>", "#endif"]
    if spec.op == "pointwise" and spec.broadcast:  # a second operand: element i reads b[(i / inner) % size]
        head.append(f"#define KC_Y(i) b[{broadcast_index(spec, 'i')}]")
        head.append(f"static inline float kc_op(const float x, const float y) {{ {spec.body} }}")
    elif spec.op == "pointwise":  # the traced graph's operations, one float per step
        head.append(f"static inline float kc_op(const float x) {{ {spec.body} }}")
    if spec.op == "gelu" and f["gelu"] in ("poly", "poly_exp"):
        if f["gelu"] == "poly_exp":
            head.append(c.EXP_POLY)
            head.append("#define EXPF(x) kc_expf(x)")
        else:
            head.append("#define EXPF(x) expf(x)")
        head.append(c.ERF_POLY)

    def loops(xs: str, ys: str) -> list[str]:
        omp = c.omp_parallel_for(f, "n") if f["par"] == "omp" else None
        tile = f["tile"]
        if f["par"] == "manual":
            out = ["#pragma omp parallel" + (" if(n > 32768)" if f["if_parallel"] else "")
                   + (f" proc_bind({f['proc_bind']})" if f["proc_bind"] != "none" else ""),
                   "{",
                   "  const int64_t nth = omp_get_num_threads(), tid = omp_get_thread_num();",
                   "  /* contiguous per-thread ranges cut at 64-byte boundaries: no cache line is written by two",
                   "     threads */",
                   "  const int64_t per = ((n + nth - 1) / nth + 15) / 16 * 16;",
                   "  const int64_t lo = tid * per < n ? tid * per : n;",
                   "  const int64_t hi = lo + per < n ? lo + per : n;"]
            out += ["  " + ln for ln in _range_loop(spec, f, "lo", "hi", xs, ys)]
            out.append("}")
            return out
        if tile:
            out = [f"const int64_t nt = (n + {tile} - 1) / {tile};"]
            if omp:
                out.append(omp)
            out.append("for (int64_t t = 0; t < nt; ++t) {")
            out += [f"  const int64_t lo = t * {tile};", f"  const int64_t hi = lo + {tile} < n ? lo + {tile} : n;"]
            out += ["  " + ln for ln in _range_loop(spec, f, "lo", "hi", xs, ys)]
            out.append("}")
            return out
        if f["prefetch"] or f["nt_store"]:
            # give each thread one contiguous block: the per-range loop keeps its own structure
            out = [f"const int64_t nb = (n + {1 << 14} - 1) / {1 << 14};"]
            if omp:
                out.append(omp)
            out += ["for (int64_t t = 0; t < nb; ++t) {", f"  const int64_t lo = t * {1 << 14};",
                    f"  const int64_t hi = lo + {1 << 14} < n ? lo + {1 << 14} : n;"]
            out += ["  " + ln for ln in _range_loop(spec, f, "lo", "hi", xs, ys)]
            out.append("}")
            return out
        expr = _op(spec, f, f"{xs}[i]")
        out = []
        if omp:
            out.append(omp.replace("parallel for", "parallel for simd") if f["simd"] else omp)
        elif f["simd"]:
            out.append("#pragma omp simd")
        else:
            out += c.pragma_unroll(f["unroll"])  # GCC accepts no unroll pragma right after an OpenMP one
        out.append(f"for (int64_t i = 0; i < n; ++i) {ys}[i] = {expr};")
        return out

    if f["par"] == "manual":
        head.append("#include <omp.h>")
    extra = f", const float* {rs}b" if spec.broadcast else ""
    body = [f"void {name}(const float* {rs}x, float* {rs}y, int64_t n{extra}) {{"]
    if f["aligned"]:
        body += ["  if ((((uintptr_t)x | (uintptr_t)y) & 63) == 0) {",
                 "    /* both 64-byte aligned (torch's allocations are): let the compiler use aligned vector moves */",
                 f"    const float* {rs}xa = (const float*)__builtin_assume_aligned(x, 64);",
                 f"    float* {rs}ya = (float*)__builtin_assume_aligned(y, 64);"]
        body += ["    " + ln for ln in loops("xa", "ya")]
        body += ["    return;", "  }"]
    body += ["  " + ln for ln in loops("x", "y")]
    body.append("}")
    return "\n".join(head) + "\n\n" + "\n".join(body) + "\n"


def render(spec: OpSpec, f: dict) -> tuple[str, list[str]]:
    src = render_source(spec, f, "elementwise_c")
    mod = f"SRC = r'''\n{src}'''\n\n_kernel = c_kernel(SRC, \"elementwise_c\")\n"
    fwd = operand_guard(spec) + ["x = x.contiguous()", "out = torch.empty_like(x)", "n = x.numel()", "if n:",
                                 f"    _kernel(x, out, n{', y' if spec.broadcast else ''})", "return out"]
    return mod, fwd
