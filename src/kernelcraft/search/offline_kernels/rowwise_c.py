"""C (OpenMP) kernels for row-wise ops on the CPU backend.

Same shape as the CUDA generator: a feature dict becomes one C function. The levers are the CPU ones: run rows
in parallel (``rows``) or, when rows are few and long (layernorm's 16 rows of 4M floats), split every row into
chunks with partial statistics merged afterwards (``split``); vectorise reductions (``omp simd``) or break the
dependency chain with several accumulators; fuse passes (online softmax over L1-sized tiles, shifted
single-pass or blockwise-Welford variance); store the exponentials during the sum pass so the last pass only
scales; polynomial exp so loops with exp vectorise; prefetch, non-temporal stores, schedules and unrolling.
"""

from __future__ import annotations

from kernelcraft.search.offline_kernels import c_common as c
from kernelcraft.search.offline_kernels import rowwise_cuda
from kernelcraft.search.offline_kernels.opspec import OpSpec
from kernelcraft.search.offline_kernels.phases import merge_online, scaled_exp

FAMILY = "rowwise"
BACKEND = "cpu"
GEN = "rowwise_c"

TUNABLES: dict[str, tuple] = {
    "chunk": (16384, 65536, 262144),
    "tile": (256, 1024, 4096),
    "unroll": (0, 4, 8),
    "schedule": ("static", "dynamic", "guided", "static1"),
}


def default_stats(op: str) -> str:
    return {"softmax": "three_pass", "log_softmax": "three_pass", "layernorm": "two_pass"}.get(op, "single")


def baseline(spec: OpSpec) -> dict:
    """A straightforward serial C loop nest: one row after another, one plain pass per statistic."""
    return {"gen": GEN, "par": "serial", "schedule": "static", "simd": False, "accs": 1,
            "stats": default_stats(spec.op), "store_exp": False, "exp": "libm", "recip": False,
            "fma_apply": False, "accum": rowwise_cuda.default_accum(spec.op), "restrict": False, "prefetch": 0,
            "if_parallel": False, "nt_store": False, "unroll": 0, "proc_bind": "none", "chunk": 65536, "tile": 1024}


def normalise(spec: OpSpec, f: dict) -> dict:
    g = baseline(spec) | {k: v for k, v in f.items() if k in baseline(spec)}
    g["gen"] = GEN
    op = spec.op
    if g["par"] not in ("serial", "rows", "split"):
        g["par"] = "serial"
    if g["par"] == "serial":
        g["schedule"], g["if_parallel"], g["proc_bind"] = "static", False, "none"
    if g["schedule"] not in TUNABLES["schedule"]:
        g["schedule"] = "static"
    if g["proc_bind"] not in ("none", "close", "spread"):
        g["proc_bind"] = "none"
    if g["accs"] not in (1, 4, 8):
        g["accs"] = 1
    if g["unroll"] not in TUNABLES["unroll"]:
        g["unroll"] = 0
    if g["prefetch"] not in (0, 64, 256):
        g["prefetch"] = 0
    if g["chunk"] not in TUNABLES["chunk"] or g["par"] != "split":
        g["chunk"] = 65536
    if g["stats"] not in {"softmax": ("three_pass", "online"), "log_softmax": ("three_pass", "online"),
                          "layernorm": ("two_pass", "welford", "shifted")}.get(op, ("single",)):
        g["stats"] = default_stats(op)
    if g["tile"] not in TUNABLES["tile"] or g["stats"] not in ("online", "welford"):
        g["tile"] = 1024
    if op not in ("softmax", "log_softmax"):
        g["exp"] = "libm"
    if g["exp"] not in ("libm", "poly"):
        g["exp"] = "libm"
    if op != "softmax" or g["stats"] != "three_pass":
        g["store_exp"] = False
    if op != "softmax":
        g["recip"] = False
    if op != "layernorm":
        g["fma_apply"] = False
    if g["accum"] not in ("float", "double", "kahan") or op in ("softmax", "log_softmax") or (
            op == "layernorm" and g["stats"] == "welford"):
        g["accum"] = "float"
    if g["accum"] == "kahan":
        g["simd"], g["accs"] = False, 1
    if g["simd"]:
        g["accs"] = 1
    if op == "sum_lastdim":
        g["nt_store"] = False
    return g


# ------------------------------------------------------------------------------------------------ phases


class _Phase:
    """A reduction phase of the CPU code: fields, code computing them over [lo, hi), merge and final."""

    def __init__(self, fields: list[tuple[str, str, str]], compute, merge: str, final: str,
                 consts: list[str]) -> None:
        self.fields = fields      # (ctype, name, init)
        self.compute = compute    # (lo, hi) -> lines; fields already declared and initialised
        self.merge = merge        # uses name and name_b
        self.final = final
        self.consts = consts


def _phases(spec: OpSpec, f: dict):
    """(phases, apply expression or None, prelude, extra consts, sum_out) for the op and features."""
    op = spec.op
    acc_t = "double" if f["accum"] == "double" else "float"
    EXP = "EXPF"

    def sum_phase(name: str, expr: str, final: str, consts: list[str], pre: list[str] | None = None):
        def compute(lo: str, hi: str) -> list[str]:
            return c.reduce_loop(lo, hi, "sum", [(name, expr)], f, acc_t, pre)
        return _Phase([(acc_t, name, "0")], compute, f"{name} += {name}_b;", final, consts)

    if op in ("softmax", "log_softmax"):
        if f["stats"] == "online":
            tile = f["tile"]

            def online(lo: str, hi: str) -> list[str]:
                out = [f"for (int64_t t0 = {lo}; t0 < {hi}; t0 += {tile}) {{",
                       f"  const int64_t t1 = t0 + {tile} < {hi} ? t0 + {tile} : {hi};",
                       "  float tm = -INFINITY;"]
                out += ["  " + ln for ln in c.reduce_loop("t0", "t1", "max", [("tm", "xr[j]")], f, "float")]
                # (a tile of -inf while the running maximum is -inf adds 0: exp(-inf - -inf) would add NaN)
                out += [f"  if (tm > m) {{ s *= {EXP}(m - tm); m = tm; }}", "  if (m == -INFINITY) continue;",
                        "  float ts = 0.f;"]
                out += ["  " + ln for ln in c.reduce_loop("t0", "t1", "sum", [("ts", f"{EXP}(xr[j] - m)")],
                                                          f, "float")]
                out += ["  s += ts;", "}"]
                return out
            phases = [_Phase([("float", "m", "-INFINITY"), ("float", "s", "0")], online, merge_online(EXP),
                             "c_max = m; c_sum = s;", ["c_max", "c_sum"])]
        else:
            def pmax(lo: str, hi: str) -> list[str]:
                return c.reduce_loop(lo, hi, "max", [("m", "xr[j]")], f, "float")
            pre = [f"const float e_ = {EXP}(xr[j] - c_max);", "yr[j] = e_;"] if f["store_exp"] else None
            expr = "e_" if f["store_exp"] else f"{EXP}(xr[j] - c_max)"
            phases = [_Phase([("float", "m", "-INFINITY")], pmax, "m = fmaxf(m, m_b);", "c_max = m;", ["c_max"]),
                      sum_phase("s", expr, "c_sum = (float)s;", ["c_sum"], pre)]
        if op == "log_softmax":
            return phases, "xr[j] - c_off", "c_off = c_max + logf(c_sum);", ["c_off"], None
        scale = "c_inv" if f["recip"] else None
        prelude = "c_inv = 1.f / c_sum;" if f["recip"] else ""
        if f["store_exp"]:
            return phases, f"yr[j] * {scale}" if scale else "yr[j] / c_sum", prelude, (["c_inv"] if scale else []), None
        body = f"{EXP}(xr[j] - c_max) * c_inv" if scale else f"{EXP}(xr[j] - c_max) / c_sum"
        return phases, body, prelude, (["c_inv"] if scale else []), None

    if op == "sum_lastdim":
        return [sum_phase("s", "xr[j]", "c_sum = (float)s;", ["c_sum"])], None, "", [], "c_sum"

    if op == "rmsnorm":
        ph = sum_phase("q", "xr[j] * xr[j]", "c_rstd = 1.0f / sqrtf((float)(q / N) + eps);", ["c_rstd"])
        apply = "xr[j] * c_rstd * w[j]" if spec.weight is not None else "xr[j] * c_rstd"
        return [ph], apply, "", [], None

    if op == "layernorm":
        w = "w[j]" if spec.weight is not None else "1.f"
        bb = "b[j]" if spec.bias is not None else "0.f"
        if f["stats"] == "welford":
            tile = f["tile"]

            def welford(lo: str, hi: str) -> list[str]:
                out = [f"for (int64_t t0 = {lo}; t0 < {hi}; t0 += {tile}) {{",
                       f"  const int64_t t1 = t0 + {tile} < {hi} ? t0 + {tile} : {hi};",
                       "  const float tn = (float)(t1 - t0);", "  float ts = 0.f, tq = 0.f;"]
                out += ["  " + ln for ln in c.reduce_loop("t0", "t1", "sum", [("ts", "xr[j]")], f, "float")]
                out.append("  const float tmu = ts / tn;")
                out += ["  " + ln for ln in c.reduce_loop("t0", "t1", "sum",
                                                          [("tq", "(xr[j] - tmu) * (xr[j] - tmu)")], f, "float")]
                out += ["  { const float nn_ = n + tn; const float d_ = tmu - mu; const float f_ = tn / nn_;",
                        "    mu += d_ * f_; m2 += tq + d_ * d_ * n * f_; n = nn_; }", "}"]
                return out
            merge = ("if (n_b > 0.f) { if (n == 0.f) { n = n_b; mu = mu_b; m2 = m2_b; } else { "
                     "const float nn_ = n + n_b; const float d_ = mu_b - mu; const float f_ = n_b / nn_; "
                     "mu += d_ * f_; m2 += m2_b + d_ * d_ * n * f_; n = nn_; } }")
            phases = [_Phase([("float", "n", "0"), ("float", "mu", "0"), ("float", "m2", "0")], welford, merge,
                             "c_mean = mu; c_rstd = 1.0f / sqrtf(fmaxf(m2 / (float)N, 0.f) + eps);",
                             ["c_mean", "c_rstd"])]
        elif f["stats"] == "shifted":
            def shifted(lo: str, hi: str) -> list[str]:
                return c.reduce_loop(lo, hi, "sum", [("s", "(xr[j] - c_k)"), ("q", "(xr[j] - c_k) * (xr[j] - c_k)")],
                                     f, acc_t)
            phases = [_Phase([(acc_t, "s", "0"), (acc_t, "q", "0")], shifted, "s += s_b; q += q_b;",
                             "{ const float mu_ = (float)(s / N); c_mean = c_k + mu_; "
                             "c_rstd = 1.0f / sqrtf(fmaxf((float)(q / N) - mu_ * mu_, 0.f) + eps); }",
                             ["c_mean", "c_rstd"])]
        else:
            phases = [sum_phase("s", "xr[j]", "c_mean = (float)(s / N);", ["c_mean"]),
                      sum_phase("q", "(xr[j] - c_mean) * (xr[j] - c_mean)",
                                "c_rstd = 1.0f / sqrtf((float)(q / N) + eps);", ["c_rstd"])]
        if f["fma_apply"]:
            return phases, f"fmaf(fmaf(xr[j], c_rstd, c_nmr), {w}, {bb})", "c_nmr = -c_mean * c_rstd;", \
                ["c_nmr"], None
        return phases, f"(xr[j] - c_mean) * c_rstd * {w} + {bb}", "", [], None
    raise ValueError(f"no CPU row phases for op {op!r}")


# ------------------------------------------------------------------------------------------------ rendering


def _apply_loop(expr: str, lo: str, hi: str, f: dict) -> list[str]:
    if f["nt_store"]:
        return ["#if defined(__SSE__)",
                "{",
                f"  int64_t j = {lo};",
                f"  for (; j < {hi} && ((uintptr_t)(yr + j) & 15); ++j) yr[j] = {expr};",
                f"  for (; j + 4 <= {hi}; j += 4) {{",
                "    float t_[4];",
                "    for (int q_ = 0; q_ < 4; ++q_) { const int64_t jj_ = j + q_; "
                f"t_[q_] = {expr.replace('[j]', '[jj_]')}; }}",
                "    _mm_stream_ps(yr + j, _mm_loadu_ps(t_));",
                "  }",
                f"  for (; j < {hi}; ++j) yr[j] = {expr};",
                "  _mm_sfence();",
                "}",
                "#else"] + _plain_apply(expr, lo, hi, f) + ["#endif"]
    return _plain_apply(expr, lo, hi, f)


def _plain_apply(expr: str, lo: str, hi: str, f: dict) -> list[str]:
    out = ["#pragma omp simd"] if f["simd"] else c.pragma_unroll(f["unroll"])
    out.append(f"for (int64_t j = {lo}; j < {hi}; ++j) yr[j] = {expr};")
    return out


def _decl(fields: list[tuple[str, str, str]]) -> list[str]:
    return [f"{t} {n} = {i};" for t, n, i in fields]


def render_source(spec: OpSpec, f: dict, name: str) -> str:
    f = normalise(spec, f)
    phases, apply, prelude, extra_consts, sum_out = _phases(spec, f)
    rs = "restrict " if f["restrict"] else ""
    consts = [k for p in phases for k in p.consts] + extra_consts
    shift = spec.op == "layernorm" and f["stats"] == "shifted"
    head = ["/* generated by kernelcraft's offline proposer (rowwise_c) */", "#include <math.h>",
            "#include <stdint.h>", "#include <stdlib.h>"]
    if f["nt_store"]:
        head += ["#if defined(__SSE__)", "#include <immintrin.h>", "#endif"]
    if f["exp"] == "poly":
        head.append(c.EXP_POLY)
    head.append("#define EXPF(x) " + scaled_exp("kc_expf(x)" if f["exp"] == "poly" else "expf(x)", spec))
    params = (f"const float* {rs}x, float* {rs}y, const float* {rs}w, const float* {rs}b, int64_t R, int64_t N, "
              "float eps")

    # One row, whole: used by serial/rows, and by split as the fallback when its workspace cannot be had.
    row = [f"static void row_kernel(const float* {rs}xr, float* {rs}yr, const float* {rs}w, const float* {rs}b, "
           "int64_t N, float eps) {", "  (void)w; (void)b; (void)eps;"]
    if consts:
        row.append("  float " + ", ".join(f"{k} = 0.f" for k in consts) + ";")
    if shift:
        row.append("  const float c_k = xr[0];")
    for p in phases:
        row.append("  {")
        row += ["    " + ln for ln in _decl(p.fields)]
        row += ["    " + ln for ln in p.compute("0", "N")]
        row.append(f"    {p.final}")
        row.append("  }")
    if sum_out:
        row.append(f"  yr[0] = {sum_out};")
    else:
        if prelude:
            row.append(f"  {prelude}")
        row += ["  " + ln for ln in _apply_loop(apply, "0", "N", f)]
    row.append("}")

    ystride = "r" if sum_out else "r * N"
    rows_loop = []
    if f["par"] != "serial":
        rows_loop.append(c.omp_parallel_for(f, "R * N"))
    rows_loop += ["for (int64_t r = 0; r < R; ++r) row_kernel(x + r * N, y + " + ystride + ", w, b, N, eps);"]

    body = [f"void {name}({params}) {{"]
    if f["par"] != "split":
        body += ["  " + ln for ln in rows_loop]
        body.append("}")
        return "\n".join(head) + "\n\n" + "\n".join(row) + "\n\n" + "\n".join(body) + "\n"

    # split: chunks of every row in parallel; per-chunk partials merged per row between phases.
    chunk = f["chunk"]
    nf = [len(p.fields) for p in phases]
    nc = max(1, len(consts))
    body += [f"  const int64_t C = N > {chunk} ? (N + {chunk} - 1) / {chunk} : 1;",
             "  const int64_t T = R * C;",
             f"  double* part = (double*)malloc(sizeof(double) * (size_t)T * {max(nf)});",
             f"  float* cst = (float*)calloc((size_t)R * {nc}, sizeof(float));",
             "  if (!part || !cst) {",
             "    free(part); free(cst);"]
    body += ["    " + ln for ln in rows_loop]
    body += ["    return;", "  }"]

    def load_consts(indent: str) -> list[str]:
        out = []
        if consts:
            out.append(indent + "float " + ", ".join(f"{k} = cst[r * {nc} + {i}]" for i, k in enumerate(consts))
                       + ";")
            out.append(indent + "(void)" + "; (void)".join(consts) + ";")
        if shift:
            out.append(indent + "const float c_k = xr[0];")
        return out

    def store_consts(indent: str) -> list[str]:
        return [indent + " ".join(f"cst[r * {nc} + {i}] = {k};" for i, k in enumerate(consts))]

    task_head = ["    const int64_t r = t / C, cc = t - (t / C) * C;",
                 f"    const int64_t lo = cc * {chunk};",
                 f"    const int64_t hi = lo + {chunk} < N ? lo + {chunk} : N;",
                 "    const float* xr = x + r * N;"]
    if not sum_out:
        task_head.append("    float* yr = y + r * N; (void)yr;")
    sched = c.omp_parallel_for(f, "R * N")
    for pi, p in enumerate(phases):
        body += [f"  {sched}", "  for (int64_t t = 0; t < T; ++t) {"] + task_head + load_consts("    ")
        body += ["    " + ln for ln in _decl(p.fields)]
        body += ["    " + ln for ln in p.compute("lo", "hi")]
        body += ["    " + " ".join(f"part[t * {nf[pi]} + {k}] = (double){n};" for k, (_, n, _i) in
                                   enumerate(p.fields)), "  }"]
        body += [f"  {sched}", "  for (int64_t r = 0; r < R; ++r) {", "    const float* xr = x + r * N; (void)xr;"]
        body += load_consts("    ")
        body += ["    " + ln for ln in _decl(p.fields)]
        body.append("    for (int64_t cc = 0; cc < C; ++cc) {")
        body += [f"      const {t} {n}_b = ({t})part[(r * C + cc) * {nf[pi]} + {k}];"
                 for k, (t, n, _i) in enumerate(p.fields)]
        body += [f"      {p.merge}", "    }", f"    {p.final}"]
        body += store_consts("    ")
        if sum_out and pi == len(phases) - 1:
            body.append(f"    y[r] = {sum_out};")
        body.append("  }")
    if not sum_out:
        body += [f"  {sched}", "  for (int64_t t = 0; t < T; ++t) {"] + task_head + load_consts("    ")
        if prelude:
            body.append(f"    {prelude}")
        body += ["    " + ln for ln in _apply_loop(apply, "lo", "hi", f)]
        body.append("  }")
    body += ["  free(part); free(cst);", "}"]
    return "\n".join(head) + "\n\n" + "\n".join(row) + "\n\n" + "\n".join(body) + "\n"


def render(spec: OpSpec, f: dict) -> tuple[str, list[str]]:
    """(module-level code, forward-body lines) for the CPU candidate."""
    src = render_source(spec, f, "rowwise_c")
    mod = f"SRC = r'''\n{src}'''\n\n_kernel = c_kernel(SRC, \"rowwise_c\")\n"
    nd = spec.row_dims
    fwd = ["x = x.contiguous()"]
    fwd.append("N = x.shape[-1]" if nd == 1 else f"N = math.prod(x.shape[x.dim() - {nd}:])")
    fwd.append(f"R = math.prod(x.shape[:x.dim() - {nd}])")
    if spec.op == "sum_lastdim":
        shape = "x.shape[:-1] + (1,)" if spec.keepdim else "x.shape[:-1]"
        fwd += [f"out = torch.empty({shape}, dtype=x.dtype, device=x.device)", "if R == 0:"]
    else:
        fwd += ["out = torch.empty_like(x)", "if R == 0 or N == 0:"]
    fwd += ["    return out", f"w = {spec.weight or 'x'}", f"b = {spec.bias or 'x'}",
            f"_kernel(x, out, w, b, R, N, {float(spec.eps)!r})", "return out"]
    return mod, fwd
