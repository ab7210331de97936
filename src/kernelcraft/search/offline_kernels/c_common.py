"""C snippets both CPU generators share: the vectorisable exp/erf approximations and loop rendering.

The CPU backend compiles C11 with ``-O3 -march=native -fopenmp``. Without ``-ffast-math`` GCC will not
vectorise a floating-point reduction (it may not reassociate), so whether a loop vectorises is exactly what
the features control: ``#pragma omp simd reduction(...)`` grants the reassociation, several independent
accumulators break the add-latency chain by hand, and libm's ``expf``/``erff`` calls block vectorisation, which
is why polynomial versions (accurate to a few ulp, far inside 1e-4) exist as an idea.
"""

from __future__ import annotations

EXP_POLY = r"""
/* expf to ~1 ulp without libm, so loops that call it still vectorise (Cephes' minimax polynomial on
   [-ln2/2, ln2/2] after k*ln2 range reduction, the scale 2^k built in the exponent bits). No fminf, floorf or
   float-to-int conversion: GCC keeps those scalar under its default -ftrapping-math, which made the "vectorised"
   loop 18x slower than this one. k is rounded by adding 1.5 * 2^23, which leaves it in the low mantissa bits;
   NaN stays NaN. */
static inline float kc_expf(float x) {
  x = x < -87.3f ? -87.3f : x;
  x = x > 88.7f ? 88.7f : x;
  const float kb = fmaf(x, 1.44269504088896341f, 12582912.0f);
  const float k = kb - 12582912.0f;
  float r = fmaf(k, -0.693359375f, x);
  r = fmaf(k, 2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = fmaf(p, r, 1.3981999507e-3f);
  p = fmaf(p, r, 8.3334519073e-3f);
  p = fmaf(p, r, 4.1665795894e-2f);
  p = fmaf(p, r, 1.6666665459e-1f);
  p = fmaf(p, r, 5.0000001201e-1f);
  p = fmaf(p, r * r, r) + 1.0f;
  int32_t bits;
  __builtin_memcpy(&bits, &kb, 4);
  bits = (bits - 0x4B400000 + 127) << 23;
  float scale;
  __builtin_memcpy(&scale, &bits, 4);
  return p * scale;
}
"""

ERF_POLY = r"""
/* erf via Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7), branch-free so the loop vectorises. */
static inline float kc_erff(float x) {
  const float ax = fabsf(x);
  const float t = 1.0f / fmaf(0.3275911f, ax, 1.0f);
  float p = 1.061405429f;
  p = fmaf(p, t, -1.453152027f);
  p = fmaf(p, t, 1.421413741f);
  p = fmaf(p, t, -0.284496736f);
  p = fmaf(p, t, 0.254829592f);
  const float e = 1.0f - p * t * EXPF(-ax * ax);
  return copysignf(e, x);
}
"""


SUM_BLOCK = 1024


def pragma_unroll(n: int) -> list[str]:
    return [f"#pragma GCC unroll {n}"] if n else []


def reduce_loop(lo: str, hi: str, kind: str, accs: list[tuple[str, str]], f: dict, acc_type: str,
                pre: list[str] | None = None, ptr: str = "xr") -> list[str]:
    """Lines accumulating ``var (+|max)= expr(j)`` over j in [lo, hi) for each (var, expr) in ``accs``.

    The variables are declared (and initialised) by the caller. ``pre`` are statements run per element before
    the accumulation (e.g. computing and storing an exp). Features used: simd, accs, accum (kahan),
    prefetch, unroll.
    """
    pre = pre or []
    if kind == "block_sum":  # one block of a blocked sum: a plain sum over [lo, hi)
        kind = "sum_plain"
    kahan = kind == "sum" and f.get("accum") == "kahan"
    simd = f.get("simd") and not kahan
    k = 1 if (simd or kahan) else f.get("accs", 1)

    def combine(a: str, b: str) -> str:
        # a ternary, not fmaxf: GCC vectorises it (fmaxf's NaN rules keep the loop scalar, ~8x slower)
        return f"({b} > {a} ? {b} : {a})" if kind == "max" else f"{a} + {b}"

    def inner(a: str, b: str) -> list[str]:
        out: list[str] = []
        if simd:
            op = "max" if kind == "max" else "+"
            out.append(f"#pragma omp simd reduction({op}:{','.join(v for v, _ in accs)})")
        else:
            out += pragma_unroll(f.get("unroll", 0))  # GCC takes no unroll pragma right after an OpenMP one
        if k > 1:
            out.append(f"for (int64_t jb = {a}; jb + {k} <= {b}; jb += {k}) {{")
            for u in range(k):
                out.append(f"  {{ const int64_t j = jb + {u};")
                out += ["    " + p for p in pre]
                for v, e in accs:
                    out.append(f"    {v}_{u} = {combine(f'{v}_{u}', e)};")
                out.append("  }")
            out.append("}")
            out.append(f"for (int64_t j = {a} + (({b}) - ({a})) / {k} * {k}; j < {b}; ++j) {{")
            out += ["  " + p for p in pre]
            for v, e in accs:
                out.append(f"  {v}_0 = {combine(f'{v}_0', e)};")
            out.append("}")
            return out
        out.append(f"for (int64_t j = {a}; j < {b}; ++j) {{")
        out += ["  " + p for p in pre]
        for v, e in accs:
            if kahan:
                out.append(f"  {{ const float y_ = ({e}) - {v}_c; const float t_ = {v} + y_; "
                           f"{v}_c = (t_ - {v}) - y_; {v} = t_; }}")
            else:
                out.append(f"  {v} = {combine(v, e)};")
        out.append("}")
        return out

    def ranged(a: str, b: str) -> list[str]:
        lines: list[str] = []
        if k > 1:
            init = "-INFINITY" if kind == "max" else "0"
            for v, _ in accs:
                lines.append(f"{acc_type} " + ", ".join(f"{v}_{u} = {init}" for u in range(k)) + ";")
        if kahan:
            lines += [f"float {v}_c = 0.f;" for v, _ in accs]
        dist = f.get("prefetch", 0)
        if dist:
            lines.append(f"for (int64_t j0 = {a}; j0 < {b}; j0 += 64) {{")
            lines.append(f"  const int64_t j1 = j0 + 64 < {b} ? j0 + 64 : {b};")
            lines.append("  for (int q = 0; q < 64; q += 16) "
                         f"__builtin_prefetch({ptr} + j0 + {dist} + q, 0, 0);")
            lines += ["  " + ln for ln in inner("j0", "j1")]
            lines.append("}")
        else:
            lines += inner(a, b)
        if k > 1:
            for v, _ in accs:
                terms = [f"{v}_{u}" for u in range(k)]
                while len(terms) > 1:
                    terms = [combine(terms[i], terms[i + 1]) if i + 1 < len(terms) else terms[i]
                             for i in range(0, len(terms), 2)]
                    terms = [f"({t})" for t in terms]
                lines.append(f"{v} = {combine(v, terms[0])};")
        if kahan:
            lines += [f"{v} -= {v}_c;" for v, _ in accs]
        return lines

    if kind in ("max", "sum_plain") or kahan:
        return ranged(lo, hi)
    # Sums go block by block (partial sums of SUM_BLOCK elements added to the total): the rounding error grows
    # with the block length plus the number of blocks instead of with the row length, which keeps a 70K-element
    # row with a large mean within 1e-4 where one running float sum is not.
    blk = [(f"{v}_blk", e) for v, e in accs]
    out = [f"for (int64_t jb0 = {lo}; jb0 < {hi}; jb0 += {SUM_BLOCK}) {{",
           f"  const int64_t jb1 = jb0 + {SUM_BLOCK} < {hi} ? jb0 + {SUM_BLOCK} : {hi};",
           "  " + f"{acc_type} " + ", ".join(f"{v} = 0" for v, _ in blk) + ";"]
    out += ["  " + ln for ln in reduce_loop("jb0", "jb1", "block_sum", blk, f, acc_type, pre, ptr)]
    out += ["  " + " ".join(f"{v} += {v}_blk;" for v, _ in accs), "}"]
    return out


def normalise_omp(g: dict, schedules: tuple[str, ...] = ("static", "dynamic", "guided")) -> None:
    """The OpenMP keys of a row-parallel C generator's features made valid in place: ``par`` (serial or omp), a
    schedule from ``schedules``, proc_bind; a serial kernel keeps none of them (so equal kernels compare equal)."""
    g["par"] = "omp" if g["par"] == "omp" else "serial"
    g["schedule"] = g["schedule"] if g["schedule"] in schedules else "static"
    g["proc_bind"] = g["proc_bind"] if g["proc_bind"] in ("none", "close", "spread") else "none"
    if g["par"] == "serial":
        g["schedule"], g["proc_bind"], g["if_parallel"] = "static", "none", False


def omp_parallel_for(f: dict, work: str) -> str:
    """The ``#pragma omp parallel for`` line for the features (schedule, if-threshold, proc_bind)."""
    sched = {"static": "schedule(static)", "dynamic": "schedule(dynamic, 1)", "guided": "schedule(guided)",
             "static1": "schedule(static, 1)"}[f.get("schedule", "static")]
    parts = ["#pragma omp parallel for", sched]
    if f.get("if_parallel"):
        parts.append(f"if(({work}) > 32768)")
    if f.get("proc_bind", "none") != "none":
        parts.append(f"proc_bind({f['proc_bind']})")
    return " ".join(parts)
