"""Row-wise ops as reduction phases: the op-specific half of both row-wise generators (CUDA and C).

Every supported row op is "reduce the row one or more times, then write": softmax is max then sum-of-exp (or
one online (max, sum) pass), layernorm is mean then variance (or Welford, or a shifted sum/sum-of-squares),
RMSNorm is a sum of squares, a row sum is one sum. A phase is a small mergeable state (its fields), how one
element updates it, how two states merge (threads, warps, blocks, clusters or CPU chunks combining partial
results), and what row constants it leaves behind. Keeping this in one place means every mapping in the
generators (block per row, warp per row, split rows, clusters, OpenMP chunks) gets every op for free, and a
bug in an op's maths shows up on every backend at once.

Templates use ``{v}`` for the element and ``{field}`` for a field (renamed per accumulator copy); merges use
the plain field names for the left state and ``<name>_b`` for the right one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Field:
    name: str
    ctype: str  # "float" or "double"
    init: str   # identity element of the merge


@dataclass(frozen=True)
class Phase:
    fields: tuple[Field, ...]
    acc: str                 # per-element update
    merge: str               # state <- merge(state, state_b)
    final: str               # row constants from the fully merged state (field names plain)
    acc4: str | None = None  # optional update for four elements {v0}..{v3} at once
    consts: tuple[str, ...] = field(default_factory=tuple)  # row constants this phase defines
    # A first sweep over a thread's cached elements before ``acc`` (register caches only), and what it leaves
    # in row constants: the two-level online softmax takes each thread's own maximum first.
    pre: str | None = None
    pre4: str | None = None
    pre_final: str | None = None

    def names(self) -> list[str]:
        return [f.name for f in self.fields]


@dataclass(frozen=True)
class RowOp:
    """Phases plus the write-out: ``prelude`` (row constants from earlier ones) and per-element ``apply``."""

    phases: tuple[Phase, ...]
    apply: str               # "{y} = ...;" using {v}, {w}, {b}; empty for a reduction to one value per row
    prelude: str = ""
    consts: tuple[str, ...] = ()
    reduce_out: str | None = None  # for sum: the row constant written as the row's single output
    needs_shift: bool = False      # the shifted-variance phase reads the row's first element first


def _kahan(s: str, c: str, x: str) -> str:
    return (f"{{ const float y_ = ({x}) - {c}; const float t_ = {s} + y_; {c} = (t_ - {s}) - y_; "
            f"{s} = t_; }}")


def _sum_fields(names: list[str], accum: str) -> tuple[tuple[Field, ...], dict[str, str]]:
    """Fields for sums in the chosen accumulator; returns the fields and per-sum "add x" templates."""
    fields: list[Field] = []
    adders: dict[str, str] = {}
    for n in names:
        if accum == "double":
            fields.append(Field(n, "double", "0.0"))
            adders[n] = f"{{{n}}} += (double)(X);"
        elif accum == "kahan":
            fields.append(Field(n, "float", "0.f"))
            fields.append(Field(n + "c", "float", "0.f"))
            adders[n] = _kahan(f"{{{n}}}", f"{{{n}c}}", "X")
        else:
            fields.append(Field(n, "float", "0.f"))
            adders[n] = f"{{{n}}} += X;"
    return tuple(fields), adders


def _sum_merge(names: list[str], accum: str) -> str:
    out = []
    for n in names:
        if accum == "kahan":
            out.append(_kahan(n, n + "c", f"{n}_b - {n}c_b"))
        else:
            out.append(f"{n} += {n}_b;")
    return " ".join(out)


def _total(name: str, accum: str) -> str:
    """The value of a finished sum as a float expression."""
    if accum == "kahan":
        return f"({name} - {name}c)"
    if accum == "double":
        return name
    return name


def merge_online(exp: str = "EXPF") -> str:
    """C for merging a partial (max ``m``, sum ``s`` of exp(x - m)) state with another (``m_b``, ``s_b``): the larger
    maximum wins, the other sum is rescaled. Without branches: the merges run in warp shuffles, where lanes holding
    different maxima took both sides of an if/else one after the other (on the H200 a streamed 4096 x 65536 softmax
    ran 3% slower with the branching merge: 0.5870 against 0.5695 ms). A state whose maximum is -inf (nothing seen,
    or a masked stretch) adds 0 rather than exp(-inf - -inf) = NaN. The rowwise (CUDA and C) and cross-entropy CUDA
    kernels' one merge."""
    return ("const float mn_ = fmaxf(m, m_b); "
            f"s = (m == -INFINITY ? 0.f : s * {exp}(m - mn_)) + (m_b == -INFINITY ? 0.f : s_b * {exp}(m_b - mn_)); "
            "m = mn_;")


def row_op(op: str, stats: str, accum: str, *, exp: str = "EXPF", rsqrt: str = "RSQRT", recip: bool = False,
           fma_apply: bool = False, has_weight: bool = True, has_bias: bool = True, keep_exp: bool = False) -> RowOp:
    """The phases of ``op`` with the given statistics algorithm and accumulator ("float"/"double"/"kahan").

    ``exp``/``rsqrt`` name the macros the backend defines; N, eps and the row's first element (``c_k``,
    for the shifted variance) are in scope as ``N``, ``eps`` and ``c_k``. ``keep_exp`` (softmax, the element an
    lvalue of a register cache every pass reads) has the sum pass overwrite each element with its exponential, so
    the write pass scales it instead of computing the exponential a second time; with online statistics the
    exponentials are shifted by each thread's own maximum (a first sweep, ``Phase.pre``).
    """
    if op in ("softmax", "log_softmax"):
        online_merge = merge_online(exp)
        if stats == "online" and keep_exp:
            # Two levels: a thread first takes the maximum of its own cached elements, then overwrites each with
            # exp(x - that maximum) and sums them; threads' states merge as online pairs, and the write pass
            # scales each kept exponential by exp(thread max - row max) / sum: one exponential per element and
            # one exchange per row. (A thread whose elements are all -inf shifts by 0: its terms are 0, not NaN.)
            p0 = Phase(
                fields=(Field("m", "float", "-INFINITY"), Field("s", "float", "0.f")),
                pre="{m} = fmaxf({m}, {v});",
                pre4="{m} = fmaxf(fmaxf({m}, fmaxf({v0}, {v1})), fmaxf({v2}, {v3}));",
                pre_final="c_tmax = {m}; c_tsh = {m} == -INFINITY ? 0.f : {m};",
                acc=f"{{v}} = {exp}({{v}} - c_tsh); {{s}} += {{v}};",
                acc4=" ".join(f"{{v{k}}} = {exp}({{v{k}}} - c_tsh);" for k in range(4))
                + " {s} += ({v0} + {v1}) + ({v2} + {v3});",
                merge=online_merge,
                final="c_max = m; c_sum = s;",
                consts=("c_tmax", "c_tsh", "c_max", "c_sum"))
            return RowOp((p0,), "{y} = {v} * c_sc;", prelude="c_sc = " + exp + "(c_tmax - c_max) / c_sum;",
                         consts=("c_sc",))
        if stats == "online":
            p0 = Phase(
                fields=(Field("m", "float", "-INFINITY"), Field("s", "float", "0.f")),
                # (While the running maximum is -inf every element seen is -inf and adds 0: exp(-inf - -inf)
                # would add NaN, so the sum skips it; a row masked with -inf keeps its finite softmax.)
                acc=(f"if ({{v}} > {{m}}) {{ {{s}} = {{s}} * {exp}({{m}} - {{v}}) + 1.f; {{m}} = {{v}}; }} "
                     f"else if ({{m}} != -INFINITY) {{ {{s}} += {exp}({{v}} - {{m}}); }}"),
                acc4=(f"{{ const float mx_ = fmaxf(fmaxf({{v0}}, {{v1}}), fmaxf({{v2}}, {{v3}})); "
                      f"if (mx_ > {{m}}) {{ {{s}} *= {exp}({{m}} - mx_); {{m}} = mx_; }} "
                      f"if ({{m}} != -INFINITY) {{ {{s}} += ({exp}({{v0}} - {{m}}) + {exp}({{v1}} - {{m}})) + "
                      f"({exp}({{v2}} - {{m}}) + {exp}({{v3}} - {{m}})); }} }}"),
                merge=online_merge,
                final="c_max = m; c_sum = s;",
                consts=("c_max", "c_sum"))
            phases: tuple[Phase, ...] = (p0,)
        else:
            p0 = Phase(fields=(Field("m", "float", "-INFINITY"),), acc="{m} = fmaxf({m}, {v});",
                       merge="m = fmaxf(m, m_b);", final="c_max = m;", consts=("c_max",),
                       acc4="{m} = fmaxf(fmaxf({m}, fmaxf({v0}, {v1})), fmaxf({v2}, {v3}));")
            if keep_exp:
                p1 = Phase(fields=(Field("s", "float", "0.f"),), acc=f"{{v}} = {exp}({{v}} - c_max); {{s}} += {{v}};",
                           merge="s += s_b;", final="c_sum = s;", consts=("c_sum",),
                           acc4=" ".join(f"{{v{k}}} = {exp}({{v{k}}} - c_max);" for k in range(4))
                           + " {s} += ({v0} + {v1}) + ({v2} + {v3});")
            else:
                p1 = Phase(fields=(Field("s", "float", "0.f"),), acc=f"{{s}} += {exp}({{v}} - c_max);",
                           merge="s += s_b;", final="c_sum = s;", consts=("c_sum",),
                           acc4=(f"{{s}} += ({exp}({{v0}} - c_max) + {exp}({{v1}} - c_max)) + "
                                 f"({exp}({{v2}} - c_max) + {exp}({{v3}} - c_max));"))
            phases = (p0, p1)
        if op == "softmax":
            if keep_exp:
                if recip:
                    return RowOp(phases, "{y} = {v} * c_inv;", prelude="c_inv = 1.f / c_sum;", consts=("c_inv",))
                return RowOp(phases, "{y} = {v} / c_sum;")
            if recip:
                return RowOp(phases, f"{{y}} = {exp}({{v}} - c_max) * c_inv;", prelude="c_inv = 1.f / c_sum;",
                             consts=("c_inv",))
            return RowOp(phases, f"{{y}} = {exp}({{v}} - c_max) / c_sum;")
        return RowOp(phases, "{y} = {v} - c_off;", prelude="c_off = c_max + logf(c_sum);", consts=("c_off",))

    if op == "sum_lastdim":
        fields, add = _sum_fields(["s"], accum)
        p0 = Phase(fields=fields, acc=add["s"].replace("X", "{v}"), merge=_sum_merge(["s"], accum),
                   final=f"c_sum = (float){_total('s', accum)};", consts=("c_sum",))
        return RowOp((p0,), "", reduce_out="c_sum")

    if op == "rmsnorm":
        fields, add = _sum_fields(["q"], accum)
        p0 = Phase(fields=fields, acc=add["q"].replace("X", "{v} * {v}"), merge=_sum_merge(["q"], accum),
                   final=f"c_rstd = {rsqrt}((float)({_total('q', accum)} / N) + eps);", consts=("c_rstd",))
        apply = "{y} = {v} * c_rstd * {w};" if has_weight else "{y} = {v} * c_rstd;"
        return RowOp((p0,), apply)

    if op == "layernorm":
        if stats == "welford":
            p0 = Phase(
                fields=(Field("n", "float", "0.f"), Field("mu", "float", "0.f"), Field("m2", "float", "0.f")),
                acc=("{ {n} += 1.f; const float d_ = {v} - {mu}; {mu} += d_ / {n}; "
                     "{m2} += d_ * ({v} - {mu}); }"),
                merge=("if (n_b > 0.f) { if (n == 0.f) { n = n_b; mu = mu_b; m2 = m2_b; } else { "
                       "const float nn_ = n + n_b; const float d_ = mu_b - mu; const float f_ = n_b / nn_; "
                       "mu += d_ * f_; m2 += m2_b + d_ * d_ * n * f_; n = nn_; } }"),
                final=f"c_mean = mu; c_rstd = {rsqrt}(fmaxf(m2 / (float)N, 0.f) + eps);",
                consts=("c_mean", "c_rstd"))
            phases = (p0,)
            shift = False
        elif stats == "shifted":
            fields, add = _sum_fields(["s", "q"], accum)
            p0 = Phase(fields=fields,
                       acc="{ const float d_ = {v} - c_k; " + add["s"].replace("X", "d_") + " "
                           + add["q"].replace("X", "d_ * d_") + " }",
                       merge=_sum_merge(["s", "q"], accum),
                       final=(f"{{ const float mu_ = (float)({_total('s', accum)} / N); c_mean = c_k + mu_; "
                              f"c_rstd = {rsqrt}(fmaxf((float)({_total('q', accum)} / N) - mu_ * mu_, 0.f) "
                              "+ eps); }"),
                       consts=("c_mean", "c_rstd"))
            phases = (p0,)
            shift = True
        else:
            f0, add0 = _sum_fields(["s"], accum)
            f1, add1 = _sum_fields(["q"], accum)
            p0 = Phase(fields=f0, acc=add0["s"].replace("X", "{v}"), merge=_sum_merge(["s"], accum),
                       final=f"c_mean = (float)({_total('s', accum)} / N);", consts=("c_mean",))
            p1 = Phase(fields=f1,
                       acc="{ const float d_ = {v} - c_mean; " + add1["q"].replace("X", "d_ * d_") + " }",
                       merge=_sum_merge(["q"], accum),
                       final=f"c_rstd = {rsqrt}((float)({_total('q', accum)} / N) + eps);", consts=("c_rstd",))
            phases = (p0, p1)
            shift = False
        w = "{w}" if has_weight else "1.f"
        bb = "{b}" if has_bias else "0.f"
        if fma_apply:
            apply = f"{{y}} = fmaf(fmaf({{v}}, c_rstd, c_nmr), {w}, {bb});"
            return RowOp(phases, apply, prelude="c_nmr = -c_mean * c_rstd;", consts=("c_nmr",),
                         needs_shift=shift)
        return RowOp(phases, f"{{y}} = ({{v}} - c_mean) * c_rstd * {w} + {bb};", needs_shift=shift)

    raise ValueError(f"no row phases for op {op!r}")


def scaled_exp(exp: str, spec: Any) -> str:
    """An EXPF macro body (``exp`` of ``(x)``) for a softmax of its input times ``spec.scale`` (a temperature): every
    exponent the rowwise kernels take is a difference of inputs, from the row's maximum or between two maxima, so
    scaling that difference is the softmax of the scaled input, with the maximum still found unscaled (the scale
    is positive). Shared by the CUDA and C
    generators."""
    if spec.op != "softmax" or spec.scale in (0.0, 1.0):
        return exp
    return exp.replace("(x)", f"((x) * {spec.scale!r}f)", 1) if "(x)" in exp else exp


def all_consts(rop: RowOp) -> list[str]:
    names: list[str] = []
    for p in rop.phases:
        names.extend(p.consts)
    names.extend(rop.consts)
    return names


def fmt(template: str, mapping: dict[str, str]) -> str:
    """str.format for templates whose only braces are placeholders or C blocks: C braces survive."""
    out = template
    for key, value in mapping.items():
        out = out.replace("{" + key + "}", value)
    return out
