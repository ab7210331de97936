"""C kernels for sliding-window ops on CPU cores: any convolution the conv family does not take (1-D/3-D,
asymmetric, grouped, depthwise, dilated, transposed) and max/average pooling, over a 3-D volume (1-D and 2-D ops
get leading dimensions of size one; every size is a compile-time constant).

Threads own whole output planes (image n, a block of ``kblock`` output channels of one group), so no variant
races. Within a plane the loop order is the main lever: ``direct`` computes one output at a time with every tap
(bounds-tested per tap, or not at all for windows wholly inside the input); ``rows`` accumulates a whole output
row tap by tap, the column range each tap reaches computed once, so the inner loop over columns has no tests and
vectorises. A transposed convolution scatters in row order (input column i feeds output column ``i * stride -
pad + k * dil``) and gathers in direct order (taps of the wrong stride phase skipped).
"""

from __future__ import annotations

from kernelcraft.search.offline_kernels import c_common as c
from kernelcraft.search.offline_kernels.candidate import input_guard
from kernelcraft.search.offline_kernels.opspec import OpSpec
from kernelcraft.search.offline_kernels.window_cuda import kernel_volume

FAMILY = "window"
BACKEND = "cpu"
GEN = "window_c"

TUNABLES: dict[str, tuple] = {
    "kblock": (1, 2, 4, 8),
    "unroll": (0, 4, 8),
}


def baseline(spec: OpSpec) -> dict:
    """One output at a time, every tap bounds-checked, one thread."""
    return {"gen": GEN, "order": "direct", "par": "serial", "collapse": False, "schedule": "static",
            "proc_bind": "none", "if_parallel": False, "kblock": 1, "simd": False, "restrict": False, "unroll": 0,
            "acc": "float", "interior": False, "prefetch": False}


def kblocks(spec: OpSpec) -> tuple[int, ...]:
    g = spec.geometry
    if spec.op != "conv":
        return (1,)
    return tuple(k for k in TUNABLES["kblock"] if (g["cout"] // g["groups"]) % k == 0)


def normalise(spec: OpSpec, f: dict) -> dict:
    base = baseline(spec)
    g = base | {k: v for k, v in f.items() if k in base}
    g["gen"] = GEN
    g["order"] = g["order"] if g["order"] in ("direct", "rows") else "direct"
    g["par"] = "omp" if g["par"] == "omp" else "serial"
    g["schedule"] = g["schedule"] if g["schedule"] in ("static", "dynamic", "guided") else "static"
    g["proc_bind"] = g["proc_bind"] if g["proc_bind"] in ("none", "close", "spread") else "none"
    for k in ("collapse", "if_parallel", "simd", "restrict", "interior", "prefetch"):
        g[k] = bool(g[k])
    if g["par"] == "serial":
        g["collapse"], g["schedule"], g["proc_bind"], g["if_parallel"] = False, "static", "none", False
    if g["unroll"] not in TUNABLES["unroll"]:
        g["unroll"] = 0
    if g["kblock"] not in kblocks(spec):
        g["kblock"] = 1
    g["acc"] = "double" if g["acc"] == "double" else "float"
    if g["order"] == "rows":
        g["interior"] = False  # the row loop's column range is computed per tap, never tested per element
        g["acc"] = "float"  # rows accumulate in the output row itself
    else:
        g["simd"], g["prefetch"] = False, False
    if spec.geometry["transposed"]:
        g["interior"] = False
    if spec.op != "conv" or spec.geometry["cin"] // spec.geometry["groups"] < 2:
        g["prefetch"] = False
    if g["simd"]:
        g["unroll"] = 0
    return g


def _defines(spec: OpSpec, f: dict) -> list[str]:
    g = spec.geometry
    out = [f"#define NB {g['n']}", f"#define CIN {g['cin']}", f"#define COUT {g['cout']}",
           f"#define CING {g['cin'] // g['groups']}", f"#define COUTG {g['cout'] // g['groups']}",
           f"#define KB {f['kblock']}", f"#define KK {kernel_volume(spec)}"]
    for key in ("i", "o", "k", "s", "p", "d"):
        out += [f"#define {key.upper()}{a} {g[f'{key}{a}']}" for a in range(3)]
    return out + ["#define IVOL ((int64_t)I0 * I1 * I2)", "#define QSTRIDE ((int64_t)O0 * O1 * O2)"]


def _weight(spec: OpSpec, q: str, ci: str, k: str) -> str:
    if spec.geometry["transposed"]:
        return f"w[(((int64_t)(grp * CING + {ci})) * COUTG + col0 + {q}) * KK + {k}]"
    return f"w[((int64_t)(co0 + {q}) * CING + {ci}) * KK + {k}]"


def _outer_taps(spec: OpSpec, checked: bool) -> list[str]:
    """Loops over the taps of the two outer axes, with the input row they read (``xr`` from ``xb``)."""
    lines: list[str] = []
    for a in (0, 1):
        pad = "  " * a
        lines.append(f"{pad}for (int k{a} = 0; k{a} < K{a}; ++k{a}) {{")
        if spec.geometry["transposed"]:
            lines += [f"{pad}  const int t{a} = (int)o{a} + P{a} - k{a} * D{a};",
                      f"{pad}  if (t{a} < 0 || t{a} % S{a}) continue;", f"{pad}  const int i{a} = t{a} / S{a};",
                      f"{pad}  if (i{a} >= I{a}) continue;"]
        else:
            lines.append(f"{pad}  const int i{a} = (int)o{a} * S{a} - P{a} + k{a} * D{a};")
            if checked:
                lines.append(f"{pad}  if (i{a} < 0 || i{a} >= I{a}) continue;")
    lines.append("    const float* xr = xb + ((int64_t)i0 * I1 + i1) * I2;")
    return lines


def _close_taps() -> list[str]:
    return ["  }", "}"]


def _update(spec: OpSpec, target: str, value: str, acc: str) -> str:
    if spec.op == "pool" and spec.geometry["pool"] == 1:
        return f"{{ const float v = {value}; {target} = (v > {target} || v != v) ? v : {target}; }}"
    return f"{target} += ({acc})({value});"


def _direct_plane(spec: OpSpec, f: dict, checked: bool) -> list[str]:
    """Accumulate ``a[q]`` for output column ``ow`` over every channel of the group and every tap."""
    acc = f["acc"]
    conv = spec.op == "conv"
    tr = bool(spec.geometry["transposed"])
    lines = ["for (int ci = 0; ci < (CONV ? CING : 1); ++ci) {",
             "  const float* xb = xg + (int64_t)ci * IVOL;"]
    taps = _outer_taps(spec, checked)
    inner = [*c.pragma_unroll(f["unroll"]), "for (int k2 = 0; k2 < K2; ++k2) {"]
    if tr:
        inner += ["  const int t2 = (int)ow + P2 - k2 * D2;", "  if (t2 < 0 || t2 % S2 || t2 / S2 >= I2) continue;",
                  "  const float xv = xr[t2 / S2];"]
    else:
        inner.append("  const int i2 = (int)ow * S2 - P2 + k2 * D2;")
        if checked:
            inner.append("  if (i2 < 0 || i2 >= I2) continue;")
        inner.append("  const float xv = xr[i2];")
    if conv:
        w = _weight(spec, "q", "ci", "(k0 * K1 + k1) * K2 + k2")
        inner += ["  for (int q = 0; q < KB; ++q)", f"    a[q] += ({acc})xv * ({acc}){w};"]
    else:
        inner.append("  " + _update(spec, "a[0]", "xv", acc))
    inner.append("}")
    lines += ["  " + ln for ln in taps] + ["      " + ln for ln in inner]
    lines += ["  " + ln for ln in _close_taps()] + ["}"]
    return lines


def _rows_plane(spec: OpSpec, f: dict) -> list[str]:
    """Accumulate whole rows of the block's channels in the output itself, tap by tap; each tap's column range
    is computed, not tested."""
    acc = f["acc"]
    conv = spec.op == "conv"
    tr = bool(spec.geometry["transposed"])
    simd = ["#pragma omp simd"] if f["simd"] else []
    lines = ["for (int ci = 0; ci < (CONV ? CING : 1); ++ci) {",
             "  const float* xb = xg + (int64_t)ci * IVOL;"]
    if f["prefetch"]:
        lines.append("  if (ci + 1 < CING) __builtin_prefetch(xb + IVOL + ((int64_t)o0 * I1 + o1) * I2, 0, 1);")
    inner = ["for (int k2 = 0; k2 < K2; ++k2) {"]
    if tr:  # input column i feeds output column i * S2 - P2 + k2 * D2
        inner += ["  const int sh = k2 * D2 - P2;", "  int lo = sh >= 0 ? 0 : (-sh + S2 - 1) / S2;",
                  "  int hi = (O2 - 1 - sh) >= 0 ? (O2 - 1 - sh) / S2 + 1 : 0;", "  if (hi > I2) hi = I2;"]
        if conv:
            w = _weight(spec, "q", "ci", "(k0 * K1 + k1) * K2 + k2")
            inner += ["  for (int q = 0; q < KB; ++q) {", f"    const {acc} wv = ({acc}){w};",
                      "    float* rq = yrow + (int64_t)q * QSTRIDE;", *["    " + ln for ln in simd],
                      "    for (int i = lo; i < hi; ++i)", f"      rq[i * S2 + sh] += ({acc})xr[i] * wv;", "  }"]
    else:  # output column ow reads input column ow * S2 - P2 + k2 * D2
        inner += ["  const int sh = k2 * D2 - P2;", "  int lo = sh >= 0 ? 0 : (-sh + S2 - 1) / S2;",
                  "  int hi = (I2 - 1 - sh) >= 0 ? (I2 - 1 - sh) / S2 + 1 : 0;", "  if (hi > O2) hi = O2;"]
        if conv:
            w = _weight(spec, "q", "ci", "(k0 * K1 + k1) * K2 + k2")
            inner += ["  for (int q = 0; q < KB; ++q) {", f"    const {acc} wv = ({acc}){w};",
                      "    float* rq = yrow + (int64_t)q * QSTRIDE;", *["    " + ln for ln in simd],
                      "    for (int ow = lo; ow < hi; ++ow)", f"      rq[ow] += ({acc})xr[ow * S2 + sh] * wv;", "  }"]
        else:
            inner += [*simd, "  for (int ow = lo; ow < hi; ++ow)",
                      "    " + _update(spec, "yrow[ow]", "xr[ow * S2 + sh]", acc)]
    inner.append("}")
    lines += ["  " + ln for ln in _outer_taps(spec, True)] + ["      " + ln for ln in inner]
    lines += ["  " + ln for ln in _close_taps()] + ["}"]
    return lines


def _divisor(spec: OpSpec) -> list[str]:
    g = spec.geometry
    if g["div"]:
        return [f"const float div = {float(g['div'])!r}f;"]
    lines = ["int size = 1, inside = 1;"]
    for a, coord in ((0, "o0"), (1, "o1"), (2, "ow")):
        lines += [f"{{ const int st = (int){coord} * S{a} - P{a}; int en = st + K{a};",
                  f"  if (en > I{a} + P{a}) en = I{a} + P{a};",
                  f"  size *= en - st; inside *= (en < I{a} ? en : I{a}) - (st > 0 ? st : 0); }}"]
    lines.append(f"const float div = (float)({'size' if g['cip'] else 'inside'});")
    return lines


def _finish(spec: OpSpec, value: str, q: str) -> str:
    """The stored output for accumulator ``value`` of channel block member ``q``."""
    g = spec.geometry
    if spec.op == "pool":
        return f"(float)({value} / div)" if g["pool"] == 2 else f"(float)({value})"
    return f"(float)({value}) + b[co0 + {q}]" if g["bias"] else f"(float)({value})"


def _interior_test() -> str:
    parts = [f"(int){o} * S{a} - P{a} >= 0 && (int){o} * S{a} - P{a} + (K{a} - 1) * D{a} < I{a}"
             for a, o in ((0, "o0"), (1, "o1"), (2, "ow"))]
    return " && ".join(parts)


def render_source(spec: OpSpec, f: dict, name: str) -> str:
    f = normalise(spec, f)
    g = spec.geometry
    rs = "restrict " if f["restrict"] else ""
    acc = f["acc"]
    conv = spec.op == "conv"
    init = "-INFINITY" if spec.op == "pool" and g["pool"] == 1 else "0"
    head = ["/* generated by kernelcraft's offline proposer (window_c) */", "#include <math.h>", "#include <stdint.h>",
            "#include <stdlib.h>", *_defines(spec, f), f"#define CONV {int(conv)}"]
    body = [f"void {name}(const float* {rs}x, const float* {rs}w, const float* {rs}b, float* {rs}y) {{"]
    if f["par"] == "omp":
        body.append("  " + c.omp_parallel_for(f, "(int64_t)NB * COUT * O0 * O1 * O2 * KK * CING")
                    + (" collapse(2)" if f["collapse"] else ""))
    body += ["  for (int64_t n = 0; n < NB; ++n)", "    for (int64_t cb = 0; cb < COUT / KB; ++cb) {",
             "      const int co0 = (int)(cb * KB);", "      const int grp = co0 / COUTG, col0 = co0 % COUTG;",
             "      (void)grp; (void)col0;",
             "      const float* xg = x + ((int64_t)n * CIN + (CONV ? (int64_t)grp * CING : co0)) * IVOL;"]
    plane: list[str] = []
    if f["order"] == "rows":
        plane += ["for (int o0 = 0; o0 < O0; ++o0)", "  for (int o1 = 0; o1 < O1; ++o1) {",
                  "    /* the output rows of the block's channels are the accumulators */",
                  "    float* yrow = y + (((int64_t)n * COUT + co0) * O0 + o0) * ((int64_t)O1 * O2)"
                  " + (int64_t)o1 * O2;",
                  "    for (int q = 0; q < KB; ++q)",
                  f"      for (int ow = 0; ow < O2; ++ow) yrow[(int64_t)q * QSTRIDE + ow] = {init};"]
        plane += ["    " + ln for ln in _rows_plane(spec, f)]
        store = ["for (int q = 0; q < KB; ++q) {", "  float* yr = yrow + (int64_t)q * QSTRIDE;",
                 "  for (int ow = 0; ow < O2; ++ow) {"]
        if spec.op == "pool" and g["pool"] == 2:
            store += ["    " + ln for ln in _divisor(spec)]
        store += [f"    yr[ow] = {_finish(spec, 'yr[ow]', 'q')};", "  }", "}"]
        plane += ["    " + ln for ln in store] + ["  }"]
    else:
        plane += ["for (int o0 = 0; o0 < O0; ++o0)", "  for (int o1 = 0; o1 < O1; ++o1)",
                  "    for (int ow = 0; ow < O2; ++ow) {", f"      {acc} a[KB];",
                  f"      for (int q = 0; q < KB; ++q) a[q] = {init};"]
        if f["interior"]:
            plane += [f"      if ({_interior_test()}) {{"]
            plane += ["        " + ln for ln in _direct_plane(spec, f, False)]
            plane += ["      } else {"] + ["        " + ln for ln in _direct_plane(spec, f, True)] + ["      }"]
        else:
            plane += ["      " + ln for ln in _direct_plane(spec, f, True)]
        if spec.op == "pool" and g["pool"] == 2:
            plane += ["      " + ln for ln in _divisor(spec)]
        plane += ["      for (int q = 0; q < KB; ++q)",
                  "        y[(((int64_t)n * COUT + co0 + q) * O0 + o0) * ((int64_t)O1 * O2) + (int64_t)o1 * O2 + ow] = "
                  + _finish(spec, "a[q]", "q") + ";", "    }"]
    body += ["      " + ln for ln in plane] + ["    }", "}"]
    return "\n".join(head) + "\n\n" + "\n".join(body) + "\n"


def render(spec: OpSpec, f: dict) -> tuple[str, list[str]]:
    f = normalise(spec, f)
    src = render_source(spec, f, "window_c")
    mod = f"SRC = r'''\n{src}'''\n\n_kernel = c_kernel(SRC, \"window_c\")\n"
    shape = tuple(spec.input_shapes[0])
    fwd = input_guard(shape)
    fwd.append(f"w = {spec.weight}.contiguous()" if spec.weight else "w = x  # pooling: no weights")
    fwd.append(f"b = {spec.bias}.contiguous()" if spec.bias else "b = w  # no bias: the kernel never reads it")
    fwd += [f"y = torch.empty({tuple(spec.out_shape)!r}, device=x.device, dtype=x.dtype)",
            "if y.numel():", "    _kernel(x, w, b, y)", "return y"]
    return mod, fwd
