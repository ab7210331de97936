"""C kernels for C = A @ B in float32 on CPU cores (A: M x K, B: K x N, row-major).

On a CPU the first lever is the loop order: the textbook i-j-k order walks B down a column (a cache miss per
multiply-add), while i-k-j broadcasts one A value over a contiguous row of B and of C, which the compiler
vectorises. Then cache blocking (MC x NC tiles of C, KC-deep slices of K, so the B panel a tile reuses stays in
L2), a register-blocked micro-kernel (MR rows of C times an NR-wide vector held in registers across the K slice),
and OpenMP over rows or over C tiles. Every C element is owned by one thread, so no variant races, and each
sums its products in ascending k.
"""

from __future__ import annotations

from kernelcraft.search.offline_kernels import c_common as c
from kernelcraft.search.offline_kernels import matmul_layout
from kernelcraft.search.offline_kernels.opspec import OpSpec

FAMILY = "matmul"
BACKEND = "cpu"
GEN = "matmul_c"

TUNABLES: dict[str, tuple] = {
    "mc": (32, 64, 128),
    "nc": (128, 256, 512),
    "kc": (128, 256, 512),
    "mr": (4, 6, 8),
    "nr": (8, 16, 32),
    "unroll": (0, 4, 8),
    "prefetch": (0, 4, 16),
}


def baseline(spec: OpSpec) -> dict:
    """The textbook triple loop: each output a dot product down a column of B, one thread."""
    return {"gen": GEN, "order": "ijk", "par": "serial", "schedule": "static", "block": False, "mc": 64,
            "nc": 256, "kc": 256, "micro": False, "mr": 4, "nr": 16, "acc": "float", "simd": False,
            "restrict": False, "unroll": 0, "prefetch": 0, "proc_bind": "none", "if_parallel": False}


def normalise(spec: OpSpec, f: dict) -> dict:
    base = baseline(spec)
    g = base | {k: v for k, v in f.items() if k in base}
    g["gen"] = GEN
    if g["order"] not in ("ijk", "ikj"):
        g["order"] = "ijk"
    if g["par"] not in ("serial", "rows", "tiles"):
        g["par"] = "serial"
    g["block"] = bool(g["block"]) or g["par"] == "tiles" or bool(g["micro"])
    if g["block"]:
        g["order"] = "ikj"  # inside a tile the loops run i-k-j
    else:
        g["mc"], g["nc"], g["kc"] = base["mc"], base["nc"], base["kc"]
        g["micro"] = False
        if g["par"] == "tiles":
            g["par"] = "rows"
    for k in ("mc", "nc", "kc", "mr", "nr", "unroll", "prefetch"):
        if g[k] not in TUNABLES[k]:
            g[k] = base[k]
    if g["schedule"] not in ("static", "dynamic", "guided") or g["par"] == "serial":
        g["schedule"] = "static"
    g["micro"] = bool(g["micro"])
    if not g["micro"]:
        g["mr"], g["nr"], g["acc"] = base["mr"], base["nr"], base["acc"]
    g["acc"] = "double" if g["acc"] == "double" else "float"
    g["simd"] = bool(g["simd"]) and g["order"] == "ikj"
    g["restrict"] = bool(g["restrict"])
    if g["order"] != "ikj":
        g["prefetch"] = 0
    if g["par"] == "serial":
        g["proc_bind"], g["if_parallel"] = "none", False
    if g["proc_bind"] not in ("none", "close", "spread"):
        g["proc_bind"] = "none"
    g["if_parallel"] = bool(g["if_parallel"])
    return g


def _omp(f: dict, collapse: bool) -> list[str]:
    if f["par"] == "serial":
        return []
    line = c.omp_parallel_for(f, "M * N * K")
    return [line + (" collapse(2)" if collapse else "")]


def _row_update(f: dict, i: str, k0: str, k1: str, j0: str, j1: str) -> list[str]:
    """C[i, j0:j1] += A[i, k0:k1] @ B[k0:k1, j0:j1], one A value broadcast over a row of B at a time."""
    inner = ["#pragma omp simd"] if f["simd"] else c.pragma_unroll(f["unroll"])
    ahead = f["prefetch"]
    fetch = [f"  if (k + {ahead} < {k1}) __builtin_prefetch(b + (k + {ahead}) * N + {j0}, 0, 1);"] if ahead else []
    return [f"for (int64_t k = {k0}; k < {k1}; ++k) {{",
            f"  const float av = a[{i} * K + k];", "  const float* br = b + k * N;", f"  float* cr = c + {i} * N;",
            *fetch,
            *["  " + ln for ln in inner], f"  for (int64_t n = {j0}; n < {j1}; ++n) cr[n] += av * br[n];", "}"]


def _micro(f: dict) -> list[str]:
    """The tile [i0, i1) x [j0, j1) for one K slice, MR x NR blocks in registers, edges row by row."""
    mr, nr, acc = f["mr"], f["nr"], f["acc"]
    body = ["int64_t i = i0;", f"for (; i + {mr} <= i1; i += {mr}) {{", "  int64_t j = j0;",
            f"  for (; j + {nr} <= j1; j += {nr}) {{", f"    {acc} acc[{mr}][{nr}] = {{{{0}}}};",
            "    for (int64_t k = k0; k < k1; ++k) {", "      const float* br = b + k * N + j;"]
    body += [f"      const {acc} a{r} = a[(i + {r}) * K + k];" for r in range(mr)]
    body += ["#pragma omp simd", f"      for (int jj = 0; jj < {nr}; ++jj) {{"]
    body += [f"        acc[{r}][jj] += a{r} * br[jj];" for r in range(mr)]
    body += ["      }", "    }", f"    for (int r = 0; r < {mr}; ++r)",
             f"      for (int jj = 0; jj < {nr}; ++jj) c[(i + r) * N + j + jj] += (float)acc[r][jj];", "  }",
             f"  for (int r = 0; r < {mr}; ++r) {{"]
    body += ["    " + ln for ln in _row_update(f, "(i + r)", "k0", "k1", "j", "j1")]
    body += ["  }", "}", "for (; i < i1; ++i) {"]
    body += ["  " + ln for ln in _row_update(f, "i", "k0", "k1", "j0", "j1")]
    body += ["}"]
    return body


def render_source(spec: OpSpec, f: dict, name: str) -> str:
    f = normalise(spec, f)
    rs = "restrict " if f["restrict"] else ""
    head = ["/* generated by kernelcraft's offline proposer (matmul_c) */", "#include <stdint.h>"]
    body = [f"void {name}(const float* {rs}a, const float* {rs}b, float* {rs}c, int64_t M, int64_t N, int64_t K) {{"]
    if not f["block"] and f["order"] == "ijk":
        loop = [*_omp(f, False), "for (int64_t i = 0; i < M; ++i) {", "  for (int64_t j = 0; j < N; ++j) {",
                "    float s = 0.f;", *["    " + ln for ln in c.pragma_unroll(f["unroll"])],
                "    for (int64_t k = 0; k < K; ++k) s += a[i * K + k] * b[k * N + j];", "    c[i * N + j] = s;",
                "  }", "}"]
    elif not f["block"]:
        loop = [*_omp(f, False), "for (int64_t i = 0; i < M; ++i) {",
                "  for (int64_t j = 0; j < N; ++j) c[i * N + j] = 0.f;"]
        loop += ["  " + ln for ln in _row_update(f, "i", "0", "K", "0", "N")] + ["}"]
    else:
        tile = ["const int64_t i1 = i0 + MC < M ? i0 + MC : M, j1 = j0 + NC < N ? j0 + NC : N;",
                "for (int64_t i = i0; i < i1; ++i)", "  for (int64_t j = j0; j < j1; ++j) c[i * N + j] = 0.f;",
                "for (int64_t k0 = 0; k0 < K; k0 += KC) {", "  const int64_t k1 = k0 + KC < K ? k0 + KC : K;"]
        if f["micro"]:
            tile += ["  " + ln for ln in _micro(f)]
        else:
            tile += ["  for (int64_t i = i0; i < i1; ++i) {"]
            tile += ["    " + ln for ln in _row_update(f, "i", "k0", "k1", "j0", "j1")] + ["  }"]
        tile += ["}"]
        head += [f"#define MC {f['mc']}", f"#define NC {f['nc']}", f"#define KC {f['kc']}"]
        loop = [*_omp(f, f["par"] == "tiles"), "for (int64_t i0 = 0; i0 < M; i0 += MC) {",
                "  for (int64_t j0 = 0; j0 < N; j0 += NC) {"]
        loop += ["    " + ln for ln in tile] + ["  }", "}"]
    body += ["  " + ln for ln in loop] + ["}"]
    return "\n".join(head) + "\n\n" + "\n".join(body) + "\n"


def render(spec: OpSpec, f: dict) -> tuple[str, list[str]]:
    src = render_source(spec, f, "matmul_c")
    mod = f"SRC = r'''\n{src}'''\n\n_kernel = c_kernel(SRC, \"matmul_c\")\n"
    return matmul_layout.wrap(spec, BACKEND, mod, ["_kernel(a, b, out, M, N, K)"])
