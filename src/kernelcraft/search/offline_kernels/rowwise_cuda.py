"""CUDA kernels for row-wise ops (softmax, log_softmax, layernorm, rmsnorm, sum over the last dim).

A candidate is a feature dict; :func:`render` turns it into kernel source plus the launch code of ModelNew's
forward. The features are the classic levers for memory-bound row reductions:

- mapping: a block per row (``block``), a warp per row for short rows (``warp``), several blocks per row with
  partial results in a workspace and one more kernel per phase (``split``: needed when rows are few and long,
  e.g. layernorm's 16 rows of 4M floats, where a block per row would use 16 of 132 SMs), or a thread-block
  cluster per row whose blocks keep their share of the row in shared memory and exchange partial statistics
  through distributed shared memory (``cluster``: reads a 256 KiB row from HBM once, which one SM cannot hold),
  or the whole GPU per row (``grid``: a cooperative launch of one block per SM, each keeping its 1/#SM share of
  every row in shared memory or registers, partial statistics published to a workspace and merged after a
  grid-wide barrier; for rows of megabytes such as layernorm's 16 MiB rows, which no cluster can hold, read from
  HBM once; a norm's weight slice stays on chip for all rows, in registers beside a shared-memory share or in
  shared memory beside a register share, with as many of the bias's slots as fit; or, ``pipe``, warp-specialised:
  producer warps read each block's slice of the next rows from HBM and publish its statistics while consumer warps
  normalise the current row from L2 with the weight's slice in shared memory, so no grid barrier stalls the SMs);
- how the row is read: float4 vectors, loads in flight per thread (``ilp``), read-only / streaming cache
  hints (and an L2 evict-last policy for a norm's weight and bias, read again for every row), an L2 prefetch of
  the next row, caching the row in shared memory (filled by cp.async, optionally) or
  in registers so later passes do not go back to HBM; a cluster block's share streamed into shared memory with
  cp.async, one commit group per thread-owned slot, each slot folded into the statistics as its copy lands (and,
  for an online softmax, overwritten by its exponentials, so the write pass only scales them);
- the statistics algorithm (three-pass vs online softmax; two-pass, Welford or shifted single-pass variance),
  accumulator precision (float, double, Kahan), reduction style (shared-memory tree vs warp shuffles),
  fast intrinsics (``__expf``, ``exp2f``, ``rsqrtf``, ``--use_fast_math``) and launch shape.

Every kernel must be correct for any shape: a fast path whose preconditions (row length a multiple of four and
16-byte aligned pointers for float4, the row fitting the shared-memory or register cache, 32-bit indices) do
not hold at run time falls back to a plain scalar kernel compiled beside it.
"""

from __future__ import annotations

from kernelcraft.search.offline_kernels import cuda_common as cc
from kernelcraft.search.offline_kernels.opspec import OpSpec
from kernelcraft.search.offline_kernels.phases import Phase, RowOp, all_consts, fmt, row_op, scaled_exp

FAMILY = "rowwise"
BACKEND = "cuda"
GEN = "rowwise_cuda"

MAPPINGS = ("block", "warp", "split", "cluster", "grid")
REGS_MAX_FLOATS = 64  # per thread; beyond this the register cache spills and stops paying
REGS_FILE = 65536  # 32-bit registers per SM: a block's cache must leave room for everything else
GRID_SMS = 132  # the SM count the grid mapping's register arrays are sized for (H100/H200); checked at run time

TUNABLES: dict[str, tuple] = {
    "threads": (128, 256, 512, 1024),
    "ilp": (1, 2, 4),
    "bps": (1, 2, 4, 8),
    "cluster": (2, 4, 8),
    "unroll": (False, True),
}


def default_stats(op: str) -> str:
    return {"softmax": "three_pass", "log_softmax": "three_pass", "layernorm": "two_pass"}.get(op, "single")


def default_accum(op: str) -> str:
    """Double for a plain row sum: its result can be near zero while the row is long, so a float sum in a
    different order than torch's misses atol=1e-4 (measured on 4096x65536 randn: float 3e-4, double 3e-5
    from the exact sum; torch itself 1.3e-4). Normalised outputs do not have that problem."""
    return "double" if op == "sum_lastdim" else "float"


def baseline(spec: OpSpec) -> dict:
    """The plain kernel the reference maps to: one block of 256 threads per row, scalar loads, smem tree."""
    return {
        "gen": GEN, "mapping": "block", "threads": 256, "vec": 1, "ilp": 1, "cache": "none", "cp_async": False,
        "stats": default_stats(spec.op), "reduce": "tree", "load": "plain", "stream": False, "exp": "expf",
        "rsqrt": False, "recip": False, "fma_apply": False, "accum": default_accum(spec.op), "grid": "rows", "bps": 2,
        "launch_min": 0, "idx32": False, "unroll": False, "l2_prefetch": False, "fast_math": False,
        "finish": "kernel", "cluster": 2, "wcache": False, "keep_exp": False, "bcache": False, "phint": False,
        "pipe": False, "ilv": 0,
    }


def _team(f: dict) -> int:
    return 32 if f["mapping"] == "warp" else f["threads"]


def regs_per_thread(spec: OpSpec, f: dict) -> int:
    """Vectors each thread keeps in registers for the register cache (0: the row does not fit). A cluster's
    block caches only its share of the row."""
    nv = -(-spec.row_len // f["vec"])
    if f.get("mapping") == "cluster":
        nv = -(-nv // f.get("cluster", 2))
    elif f.get("mapping") == "grid":
        nv = -(-nv // GRID_SMS)
    rk = max(1, -(-nv // _team(f)))
    limit = min(REGS_MAX_FLOATS, REGS_FILE // 2 // f["threads"])
    return rk if rk * f["vec"] <= limit else 0


STREAM_SLOTS_MAX = 32  # float4 slots a streaming cluster thread copies per row: each is a commit group, unrolled


def stream_slots(spec: OpSpec, f: dict) -> int:
    """float4 slots each thread of a cluster block copies into its share with cp.async: the share must fill them
    exactly (0: it does not, or they are too many to unroll). Exact slots need no bounds check per slot, which
    cost 3% of a 4096 x 65536 softmax on the H200; other row lengths take the fallback kernel."""
    share, rest = divmod(spec.row_len, 4 * f.get("cluster", 2))
    k, rest_t = divmod(share, f["threads"])
    return k if rest == 0 and rest_t == 0 and 0 < k <= STREAM_SLOTS_MAX else 0


def streams(f: dict) -> bool:
    """A cluster whose share in shared memory is filled by cp.async slot by slot (``cp_async`` on a cluster)."""
    return f.get("mapping") == "cluster" and bool(f.get("cp_async"))


def cluster_fits(spec: OpSpec, f: dict, size: int) -> bool:
    """Whether a ``size``-block cluster can keep its share of a row in shared memory."""
    return -(-spec.row_len // size) * 4 <= cc.SMEM_CACHE_MAX


WCACHE_MAX = 8  # float4 per thread: 32 registers, what a 1024-thread block can spare beside the kernel's own
GRID_SMEM = 227 * 1024  # a grid block has its SM's shared memory to itself: sm_90's opt-in limit per block


def weight_regs(spec: OpSpec, f: dict) -> int:
    """float4s of the weight each thread of the ``grid`` mapping keeps in registers (0: does not fit)."""
    per_block = -(-(spec.row_len // 4) // GRID_SMS)
    rk = -(-per_block // f["threads"])
    return rk if rk <= WCACHE_MAX else 0


def rowop_of(spec: OpSpec, f: dict) -> RowOp:
    """The phases of the op as features ``f`` compute them."""
    # A streaming cluster keeps each slot's exponentials itself (against the running maximum at that slot), so
    # its phases are the plain online ones.
    keep = f["keep_exp"] and not streams(f)
    return row_op(spec.op, f["stats"], f["accum"], recip=f["recip"], fma_apply=f["fma_apply"],
                  has_weight=spec.weight is not None, has_bias=spec.bias is not None, keep_exp=keep)


def reduce_smem(spec: OpSpec, f: dict) -> int:
    """Static shared memory of the block reductions (an array per field and phase: a thread's slot for the tree,
    a warp's for shuffles), which the dynamic shared memory must leave room for."""
    per = f["threads"] if f["reduce"] == "tree" else 32
    return sum(per * (8 if fl.ctype == "double" else 4) for ph in rowop_of(spec, f).phases for fl in ph.fields)


def bias_slots(spec: OpSpec, f: dict) -> int:
    """Register-cache slots whose bias the grid keeps in shared memory beside the weight's slice (0: none).

    On the H200 a LayerNorm row's bias read from L2 for every row cost 62 of 258 us (measured by leaving it out):
    every slot held on chip is a load less on the write pass's critical path."""
    if not (f.get("bcache") and f.get("mapping") == "grid" and f.get("cache") == "regs" and f.get("wcache")
            and spec.bias is not None):
        return 0
    wbytes = -(-(spec.row_len // 4) // GRID_SMS) * 16
    room = GRID_SMEM - reduce_smem(spec, f) - wbytes
    return max(0, min(regs_per_thread(spec, f), room // (f["threads"] * 16)))


PIPE_PRODUCERS = 8  # warps of a pipelined grid block that read rows ahead and publish their statistics
PIPE_UNROLL = 8  # float4 loads a producer thread has in flight
PIPE_BATCH = 4  # float4 a consumer thread normalises per batch, the next batch's loads in flight meanwhile
PIPE_FILL = 8  # float4 loads a consumer thread has in flight while it copies the weight and bias slices to smem
PIPE_MERGE_LOADS = 5  # blocks' states a statistics lane loads at once: 160 SMs, the rest (if any) one at a time
PIPE_RING = 4  # row slots of the partial statistics: blocks' producers are at most three rows apart
PIPE_THREADS = 1024  # 8 producer warps, 1 statistics warp, 23 consumer warps
PIPE_CONSUMERS = PIPE_THREADS - 32 * (PIPE_PRODUCERS + 1)
PIPE_SMEM = GRID_SMEM - 1024  # beside the static state of the roles (a few hundred bytes)
PIPE_GRANULES = (32, 64, 128, 256)  # float4 a granule of the interleaved slices (feature ``ilv``); 0: contiguous


def pipe_slice(nv: int, sms: int, ilv: int) -> int:
    """Float4 in the largest block's slice of a row of ``nv`` float4 over ``sms`` blocks: the stride of the
    parameters' slices in shared memory. Contiguous slices are a ceiling share; interleaved ones are whole rounds
    of one granule a block, and the blocks first in the last round get one granule (or what is left) more."""
    if not ilv:
        return -(-nv // sms)
    return nv // (sms * ilv) * ilv + min(ilv, nv % (sms * ilv))


def pipe_slice_expr(ilv: int, sms: str) -> str:
    """:func:`pipe_slice` as the Python expression the forward evaluates (over N and the SM count ``sms``)."""
    if not ilv:
        return f"-(-(N // 4) // {sms})"
    return f"((N // 4) // ({sms} * {ilv}) * {ilv} + min({ilv}, (N // 4) % ({sms} * {ilv})))"


def pipe_ok(spec: OpSpec, f: dict) -> bool:
    """Whether the pipelined grid kernel can compute the op with features ``f``: its producers read each row once,
    so the statistics must be one pass (online softmax, shifted or Welford variance, RMSNorm's sum of squares)
    with no sweep over a register cache, and something must be written per element."""
    rop = rowop_of(spec, f | {"keep_exp": False})
    return (spec.op in ("softmax", "log_softmax", "layernorm", "rmsnorm") and len(rop.phases) == 1
            and rop.phases[0].pre is None and rop.reduce_out is None)


def grid_fits(spec: OpSpec, sms: int) -> bool:
    """Whether one block per SM can keep its share of a row in shared memory (the ``grid`` mapping)."""
    return -(-spec.row_len // sms) * 4 <= cc.SMEM_CACHE_MAX


def multi_pass(spec: OpSpec, f: dict) -> bool:
    """More than one pass over the row (a cache pays only then): every op but a plain sum."""
    return spec.op != "sum_lastdim"


def normalise(spec: OpSpec, f: dict) -> dict:
    """Fill defaults and resolve conflicting features so every dict maps to one well-defined kernel."""
    g = baseline(spec) | {k: v for k, v in f.items() if k in baseline(spec)}
    g["gen"] = GEN
    op = spec.op
    if g["mapping"] not in MAPPINGS:
        g["mapping"] = "block"
    if g["threads"] not in cc.THREADS:
        g["threads"] = 256
    if g["vec"] not in (1, 4):
        g["vec"] = 1
    if g["ilp"] not in TUNABLES["ilp"]:
        g["ilp"] = 1
    if g["bps"] not in TUNABLES["bps"]:
        g["bps"] = 2
    if g["cluster"] not in TUNABLES["cluster"]:
        g["cluster"] = 2
    if g["launch_min"] not in (0, 1, 2, 3, 4):
        g["launch_min"] = 0
    if g["stats"] not in {"softmax": ("three_pass", "online"), "log_softmax": ("three_pass", "online"),
                          "layernorm": ("two_pass", "welford", "shifted")}.get(op, ("single",)):
        g["stats"] = default_stats(op)
    if op not in ("softmax", "log_softmax"):
        g["exp"] = "expf"
    elif g["exp"] not in ("expf", "fast", "exp2"):
        g["exp"] = "expf"
    if op not in ("layernorm", "rmsnorm"):
        g["rsqrt"] = False
    if op != "softmax":
        g["recip"] = False
    if op != "layernorm":
        g["fma_apply"] = False
    if g["accum"] not in ("float", "double", "kahan") or op in ("softmax", "log_softmax") or (
            op == "layernorm" and g["stats"] == "welford"):
        g["accum"] = "float"
    if g["load"] not in ("plain", "ldg", "ldcs", "noalloc"):
        g["load"] = "plain"
    if not multi_pass(spec, g):
        g["stream"] = False  # a single pass has no "last read" to mark: the load hint covers it
    if g["reduce"] not in ("tree", "shuffle"):
        g["reduce"] = "tree"
    if g["cache"] not in ("none", "smem", "regs") or not multi_pass(spec, g):
        g["cache"] = "none"

    mapping = g["mapping"]
    if mapping == "grid" and not multi_pass(spec, g):
        g["mapping"] = mapping = "split"  # one pass has nothing to keep on chip between passes
    if mapping == "cluster" and multi_pass(spec, g) and g["cache"] == "regs":
        # The smallest cluster from the asked size up whose blocks hold their shares in registers at 32 floats a
        # thread or fewer (leaving room for several blocks per SM: on the H200, 64-float shares ran 1.5x slower
        # than 32-float ones for a 256 KiB softmax row), else at the 64 the register cache allows.
        fits = [s for s in TUNABLES["cluster"] if s >= g["cluster"] and regs_per_thread(spec, g | {"cluster": s}) > 0]
        size = next((s for s in fits if regs_per_thread(spec, g | {"cluster": s}) * g["vec"] <= 32),
                    fits[0] if fits else None)
        if size is None:
            g["cache"] = "none"
        else:
            g["cluster"] = size
    if mapping == "cluster" and multi_pass(spec, g) and g["cache"] != "regs":
        size = next((s for s in TUNABLES["cluster"] if s >= g["cluster"] and cluster_fits(spec, g, s)), None)
        if size is None:
            g["mapping"] = mapping = "split"
        else:
            g["cluster"] = size
    if mapping == "warp":
        g["reduce"] = "shuffle"
        g["l2_prefetch"] = False
        if g["cache"] == "smem":
            g["cache"] = "none"
    if mapping in ("split", "cluster", "grid"):
        if mapping == "split" or g["cache"] != "regs":
            g["cache"] = "none"  # a cluster's or the grid's shared-memory copy is its own; split has none
        if mapping != "cluster":
            g["grid"] = "rows"
        if mapping == "split":
            g["l2_prefetch"] = False
    if mapping != "cluster":
        g["cluster"] = 2
    if g["grid"] not in ("rows", "persistent"):
        g["grid"] = "rows"
    if mapping not in ("split", "grid") and g["grid"] != "persistent":
        g["bps"] = 2
    if g["cache"] == "smem" and spec.row_len * 4 > cc.SMEM_CACHE_MAX:
        g["cache"] = "none"
    if g["cache"] == "regs" and regs_per_thread(spec, g) == 0:
        g["cache"] = "none"
    # cp.async fills a block's shared-memory row, or a cluster block's shared-memory share slot by slot
    stream = (mapping == "cluster" and multi_pass(spec, g) and g["cache"] != "regs" and g["vec"] == 4
              and stream_slots(spec, g) > 0)
    if not ((g["cache"] == "smem" and g["vec"] == 4 and mapping == "block") or stream):
        g["cp_async"] = False
    g["cp_async"] = bool(g["cp_async"])
    if not (mapping == "split" and op == "sum_lastdim") or g["finish"] not in ("kernel", "lastblock"):
        g["finish"] = "kernel"
    if mapping not in ("block", "grid", "cluster") or (mapping == "cluster" and g["grid"] != "persistent"):
        g["l2_prefetch"] = False  # a cluster per row has no next row to prefetch
    # The weight's slice stays on chip for all rows: in registers beside a shared-memory share of the row, in
    # shared memory beside a register share.
    if not (mapping == "grid" and g["vec"] == 4 and spec.weight is not None and spec.op in ("layernorm", "rmsnorm")
            and (grid_fits(spec, GRID_SMS) if g["cache"] == "regs" else weight_regs(spec, g) > 0)):
        g["wcache"] = False
    g["wcache"] = bool(g["wcache"])
    g["bcache"] = bias_slots(spec, g | {"bcache": True}) > 0 and bool(g["bcache"])
    g["phint"] = bool(g["phint"]) and op in ("layernorm", "rmsnorm") and (spec.weight or spec.bias) is not None
    # The sum pass can leave each exponential in the register cache only when every pass reads that cache.
    # (or, streaming a cluster's share, the online pass overwrites each shared-memory slot with its exponentials)
    g["keep_exp"] = bool(g["keep_exp"]) and op == "softmax" and (
        g["cache"] == "regs" or (streams(g) and g["stats"] == "online"))
    # The pipelined grid kernel keeps nothing of a row on chip (its consumers read it back from L2, once, with
    # evict-first loads, and stream the output out with evict-first stores so L2 keeps the rows still to come), and
    # its 32 warps are split between the roles. The weight's slice and as much of the bias as fits stay in shared
    # memory; the rest of the bias is read from L2 (under evict-last with ``phint``).
    g["pipe"] = bool(g["pipe"]) and mapping == "grid" and g["vec"] == 4 and pipe_ok(spec, g)
    if g["pipe"]:
        # One block an SM, 64 registers a thread (what __launch_bounds__(1024) allows): a second block would neither
        # fit the shared memory nor leave the consumers their registers (``launch_min`` 2 ran at 0.40 ms against
        # 0.195 in a 5-round run).
        g.update(threads=PIPE_THREADS, cache="none", stream=True, wcache=False, bcache=False, l2_prefetch=False,
                 keep_exp=False, ilp=1, unroll=False, cp_async=False, launch_min=0)
    # Interleaved slices (granules of ``ilv`` float4) are a layout of the pipelined kernel's rows only.
    if not g["pipe"] or g["ilv"] not in PIPE_GRANULES:
        g["ilv"] = 0
    return g


# ------------------------------------------------------------------------------------------------ rendering


class _Kernel:
    """Renders the kernels of one feature dict (the fast path, or its scalar fallback)."""

    def __init__(self, spec: OpSpec, f: dict, prefix: str) -> None:
        self.spec = spec
        self.f = f
        self.prefix = prefix
        self.vw = f["vec"]
        self.vt = "float4" if self.vw == 4 else "float"
        self.idx = "int" if f["idx32"] else "long long"
        self.T = f["threads"]
        self.rop: RowOp = rowop_of(spec, f)
        self.sum_op = self.rop.reduce_out is not None
        self.rk = regs_per_thread(spec, f) if f["cache"] == "regs" else 0

    # -- helpers -------------------------------------------------------------------------------------

    def names(self, phase: Phase, u: int | str) -> dict[str, str]:
        return {fl.name: f"a_{fl.name}{u}" for fl in phase.fields}

    def acc_lines(self, phase: Phase, u: int, var: str) -> list[str]:
        names = self.names(phase, u)
        if self.vw == 1:
            return [fmt(phase.acc, names | {"v": var})]
        if phase.acc4:
            return [fmt(phase.acc4, names | {f"v{i}": f"{var}.{c}" for i, c in enumerate("xyzw")})]
        return [fmt(phase.acc, names | {"v": f"{var}.{c}"}) for c in "xyzw"]

    def params_read(self) -> tuple[bool, bool]:
        """(weight, bias): which of the op's parameters the write pass reads."""
        return (self.spec.weight is not None and "{w}" in self.rop.apply,
                self.spec.bias is not None and "{b}" in self.rop.apply)

    def apply_lines(self, var: str, idx: str, wreg: str | None = None, breg: str | None = None) -> list[str]:
        f = self.f
        has_w, has_b = self.params_read()
        lines = [f"{self.vt} o_;"]
        if has_w and wreg is not None:
            lines.append(f"const {self.vt} wv_ = {wreg};")
        elif has_w:
            lines.append(f"const {self.vt} wv_ = {self.param_load('w', idx)};")
        if has_b and breg is not None:
            lines.append(f"const {self.vt} bv_ = {breg};")
        elif has_b:
            lines.append(f"const {self.vt} bv_ = {self.param_load('b', idx)};")
        comps = [""] if self.vw == 1 else [f".{c}" for c in "xyzw"]
        for c in comps:
            lines.append(fmt(self.rop.apply, {"y": f"o_{c}", "v": f"{var}{c}", "w": f"wv_{c}", "b": f"bv_{c}"}))
        lines.append(cc.store("stcs" if f["stream"] else "plain", f"yr + {idx}", "o_"))
        return ["{ " + lines[0]] + ["  " + ln for ln in lines[1:]] + ["}"]

    def regs_loop(self, seg0: str, seg1: str, tid: str, stride: str, lines: list[str],
                  slots: int | None = None) -> list[str]:
        """A fully unrolled loop over the thread's register-cache slots (or its first ``slots``), ``lines`` per slot
        (index ``i``)."""
        idx_t = self.idx
        return (["#pragma unroll", f"for (int k_ = 0; k_ < {self.rk if slots is None else slots}; ++k_) {{",
                 f"  const {idx_t} i = {'' if seg0 == '0' else seg0 + ' + '}{tid} + ({idx_t})k_ * {stride};",
                 f"  if (i < {seg1}) {{"] + ["    " + ln for ln in lines] + ["  }", "}"])

    def param_load(self, p: str, idx: str, vt: str | None = None) -> str:
        """A read of weight or bias element ``idx``: read-only path, and an L2 evict-last policy with ``phint``."""
        ptr = f"reinterpret_cast<const {vt or self.vt}*>({p}) + {idx}"
        return f"ld_keep({ptr})" if self.f["phint"] else f"__ldg({ptr})"

    def iterate(self, src: str, seg0: str, seg1: str, tid: str, stride: str, body, *, final_pass: bool = False,
                fill_smem: bool = False) -> list[str]:
        """Loop over the team's vectors of [seg0, seg1): ``body(u, var, idx)`` gives the lines per vector."""
        f = self.f
        vt, idx_t = self.vt, self.idx
        if src == "regs":
            out = []
            if fill_smem:  # first pass: every load of the register cache issued before any is used
                out += self.regs_loop(seg0, seg1, tid, stride, [f"rc[k_] = {cc.load(f['load'], 'xr + i')};"])
            return out + self.regs_loop(seg0, seg1, tid, stride, body(0, "rc[k_]", "i"))
        if src == "smem":
            def ld(i: str) -> str:
                return f"sc[{i}]" if seg0 == "0" else f"sc[{i} - {seg0}]"
        else:
            kind = "ldcs" if (final_pass and f["stream"]) else f["load"]

            def ld(i: str) -> str:
                return cc.load(kind, f"xr + {i}")
        ilp = f["ilp"]
        out = [f"{idx_t} i = {tid if seg0 == '0' else seg0 + ' + ' + tid};"]
        if ilp > 1:
            out.append(f"for (; i + {ilp - 1} * {stride} < {seg1}; i += {ilp} * {stride}) {{")
            for u in range(ilp):
                iu = "i" if u == 0 else f"i + {u} * {stride}"
                out.append(f"  const {vt} v{u} = {ld(iu)};")
            for u in range(ilp):
                iu = "i" if u == 0 else f"(i + {u} * {stride})"
                if fill_smem:
                    out.append(f"  sc[{iu}] = v{u};" if seg0 == "0" else f"  sc[{iu} - {seg0}] = v{u};")
                out += ["  " + ln for ln in body(u, f"v{u}", iu)]
            out.append("}")
        if f["unroll"]:
            out.append("#pragma unroll 4")
        out.append(f"for (; i < {seg1}; i += {stride}) {{")
        out.append(f"  const {vt} v0 = {ld('i')};")
        if fill_smem:
            out.append("  sc[i] = v0;" if seg0 == "0" else f"  sc[i - {seg0}] = v0;")
        out += ["  " + ln for ln in body(0, "v0", "i")]
        out.append("}")
        return out

    def phase_stats(self, pi: int, phase: Phase, src: str, seg0: str, seg1: str, tid: str, stride: str,
                    fill: bool) -> list[str]:
        """Per-thread partial state of phase ``pi`` over the segment, copies merged into copy 0."""
        copies = self.f["ilp"] if src != "regs" else 1
        out = []
        for u in range(copies):
            for fl in phase.fields:
                out.append(f"{fl.ctype} a_{fl.name}{u} = {fl.init};")
        if phase.pre:  # a sweep over the thread's register cache first (it is filled by that sweep's loads)
            sweep = Phase(phase.fields, phase.pre, phase.merge, "", acc4=phase.pre4)
            out += self.iterate(src, seg0, seg1, tid, stride, lambda u, var, i: self.acc_lines(sweep, u, var),
                                fill_smem=fill)
            out.append(fmt(phase.pre_final, self.names(phase, 0)))
            fill = False
        out += self.iterate(src, seg0, seg1, tid, stride, lambda u, var, i: self.acc_lines(phase, u, var),
                            fill_smem=fill)
        for u in range(1, copies):
            args = ", ".join([f"a_{n}0" for n in phase.names()] + [f"a_{n}{u}" for n in phase.names()])
            out.append(f"merge_p{pi}({args});")
        return out

    def final_lines(self, pi: int, phase: Phase, suffix: str = "0") -> list[str]:
        alias = " ".join(f"const {fl.ctype} {fl.name} = a_{fl.name}{suffix};" for fl in phase.fields)
        return [f"{{ {alias} {phase.final} }}"]

    def reduce_call(self, pi: int, phase: Phase, team: str) -> str:
        args = ", ".join(f"a_{n}0" for n in phase.names())
        return f"{team}_reduce_p{pi}({args});"

    # -- device functions ----------------------------------------------------------------------------

    def device_functions(self) -> list[str]:
        f = self.f
        out = []
        for pi, ph in enumerate(self.rop.phases):
            params = ", ".join([f"{fl.ctype}& {fl.name}" for fl in ph.fields]
                               + [f"const {fl.ctype} {fl.name}_b" for fl in ph.fields])
            out.append(f"__device__ __forceinline__ void merge_p{pi}({params}) {{\n  {ph.merge}\n}}")
            refs = ", ".join(f"{fl.ctype}& {fl.name}" for fl in ph.fields)
            shfl = "\n".join(f"    const {fl.ctype} {fl.name}_b = __shfl_xor_sync(0xffffffffu, {fl.name}, o);"
                             for fl in ph.fields)
            call = ", ".join(ph.names() + [f"{n}_b" for n in ph.names()])
            warp = (f"__device__ __forceinline__ void warp_reduce_p{pi}({refs}) {{\n"
                    f"#pragma unroll\n  for (int o = 16; o > 0; o >>= 1) {{\n{shfl}\n    merge_p{pi}({call});\n"
                    f"  }}\n}}")
            out.append(warp)
            if f["mapping"] == "warp":
                continue
            if f["reduce"] == "shuffle":
                decl = " ".join(f"__shared__ {fl.ctype} sh_{fl.name}[32];" for fl in ph.fields)
                put = " ".join(f"sh_{fl.name}[wid] = {fl.name};" for fl in ph.fields)
                get = " ".join(f"{fl.name} = lane < nw ? sh_{fl.name}[lane] : {fl.init};" for fl in ph.fields)
                put0 = " ".join(f"sh_{fl.name}[0] = {fl.name};" for fl in ph.fields)
                get0 = " ".join(f"{fl.name} = sh_{fl.name}[0];" for fl in ph.fields)
                names = ", ".join(ph.names())
                out.append(
                    f"__device__ __forceinline__ void block_reduce_p{pi}({refs}) {{\n"
                    f"  {decl}\n  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;\n"
                    f"  const int nw = blockDim.x >> 5;\n  warp_reduce_p{pi}({names});\n"
                    f"  if (lane == 0) {{ {put} }}\n  __syncthreads();\n"
                    f"  if (wid == 0) {{\n    {get}\n    warp_reduce_p{pi}({names});\n"
                    f"    if (lane == 0) {{ {put0} }}\n  }}\n  __syncthreads();\n  {get0}\n  __syncthreads();\n}}")
            else:
                T = self.T
                decl = " ".join(f"__shared__ {fl.ctype} sh_{fl.name}[{T}];" for fl in ph.fields)
                put = " ".join(f"sh_{fl.name}[t] = {fl.name};" for fl in ph.fields)
                other = ", ".join(f"sh_{fl.name}[t + st]" for fl in ph.fields)
                get0 = " ".join(f"{fl.name} = sh_{fl.name}[0];" for fl in ph.fields)
                names = ", ".join(ph.names())
                out.append(
                    f"__device__ __forceinline__ void block_reduce_p{pi}({refs}) {{\n"
                    f"  {decl}\n  const int t = threadIdx.x;\n  {put}\n  __syncthreads();\n"
                    f"#pragma unroll 1\n  for (int st = {T} / 2; st > 0; st >>= 1) {{\n"
                    f"    if (t < st) {{ merge_p{pi}({names}, {other}); {put} }}\n    __syncthreads();\n  }}\n"
                    f"  {get0}\n  __syncthreads();\n}}")
        return out

    def header(self) -> list[str]:
        f = self.f
        exp = {"expf": "expf(x)", "fast": "__expf(x)", "exp2": "exp2f((x) * 1.4426950408889634f)"}[f["exp"]]
        exp = scaled_exp(exp, self.spec)
        rsq = "rsqrtf(x)" if f["rsqrt"] else "(1.0f / sqrtf(x))"
        out = []
        if self.spec.op in ("softmax", "log_softmax"):
            out += ["#ifndef INFINITY\n#define INFINITY __int_as_float(0x7f800000)\n#endif", f"#define EXPF(x) {exp}"]
        if self.spec.op in ("layernorm", "rmsnorm"):
            out.append(f"#define RSQRT(x) {rsq}")
        if f["load"] == "noalloc":
            out.append(cc.NOALLOC_HELPERS)
        if f["phint"]:
            out.append(cc.KEEP_HELPERS)
        if f["l2_prefetch"]:
            out.append(cc.PREFETCH_L2)
        if f["cp_async"]:
            out.append(cc.CP_ASYNC_PIPELINE if streams(f) else cc.CP_ASYNC)
        if f["mapping"] == "cluster":
            out.append(cc.CLUSTER)
        if f["mapping"] == "grid":
            out.append(cc.PIPE_HELPERS if f["pipe"] else cc.GRID_BARRIER)
        return out

    def signature(self, name: str, extra: str = "") -> str:
        f = self.f
        lb = f"__launch_bounds__({self.T}, {f['launch_min']})" if f["launch_min"] else f"__launch_bounds__({self.T})"
        cl = f"__cluster_dims__({f['cluster']}, 1, 1) " if f["mapping"] == "cluster" else ""
        return (f'extern "C" __global__ void {cl}{lb} {name}(const float* __restrict__ x, '
                f"float* __restrict__ y, const float* __restrict__ w, const float* __restrict__ b, long long R, "
                f"long long N, float eps{extra})")

    def row_prelude(self) -> list[str]:
        out = [f"const {self.vt}* __restrict__ xr = reinterpret_cast<const {self.vt}*>(x + row * N);"]
        if not self.sum_op:
            out.append(f"{self.vt}* __restrict__ yr = reinterpret_cast<{self.vt}*>(y + row * N);")
        consts = all_consts(self.rop)
        if consts:
            out.append("float " + ", ".join(f"{c} = 0.f" for c in consts) + ";")
        if self.rop.needs_shift:
            out.append("const float c_k = __ldg(x + row * N);")
        return out

    def write_out(self, src: str, seg0: str, seg1: str, tid: str, stride: str, leader: str,
                  wreg: str | None = None, breg: str | None = None) -> list[str]:
        if self.sum_op:
            return [f"if ({leader}) y[row] = {self.rop.reduce_out};"]
        out = []
        if self.rop.prelude:
            out.append(self.rop.prelude)
        out += self.iterate(src, seg0, seg1, tid, stride, lambda u, var, i: self.apply_lines(var, i, wreg, breg),
                            final_pass=True)
        return out

    def nv_line(self) -> str:
        """Vectors per row (the fast path is only taken when a row is a whole number of vectors)."""
        if self.vw == 1:
            return f"const {self.idx} NV = ({self.idx})N;"
        return f"const {self.idx} NV = ({self.idx})(N / {self.vw});"

    # -- kernels -------------------------------------------------------------------------------------

    def kernel_rows(self) -> str:
        """Block or warp per row (optionally persistent), optionally caching the row in smem or registers."""
        f = self.f
        warp = f["mapping"] == "warp"
        team = "warp" if warp else "block"
        tid, stride = ("lane", "32") if warp else ("(int)threadIdx.x", str(self.T))
        body = []
        if f["cache"] == "smem":
            body.append("extern __shared__ __align__(16) unsigned char smem_raw[];")
            body.append(f"{self.vt}* __restrict__ sc = reinterpret_cast<{self.vt}*>(smem_raw);")
        body.append(self.nv_line())
        if warp:
            wpb = self.T // 32
            body.append("const int lane = threadIdx.x & 31;")
            body.append(f"for (long long row = (long long)blockIdx.x * {wpb} + (threadIdx.x >> 5); row < R; "
                        f"row += (long long)gridDim.x * {wpb}) {{")
        else:
            body.append("for (long long row = blockIdx.x; row < R; row += gridDim.x) {")
        inner = self.row_prelude()
        if f["l2_prefetch"]:
            inner.append("{ const long long nrow = row + gridDim.x;")
            inner.append("  if (nrow < R) { const char* p = reinterpret_cast<const char*>(x + nrow * N);")
            inner.append(f"    for (long long o = (long long)threadIdx.x * 128; o < N * 4; o += {self.T}LL * 128) "
                         "prefetch_l2(p + o); } }")
        if f["cache"] == "regs":
            inner.append(f"{self.vt} rc[{self.rk}];")
        cache = f["cache"]
        first_src = "global"
        if f["cp_async"]:
            inner.append(f"for ({self.idx} i = {tid}; i < NV; i += {stride}) cp_async16(sc + i, xr + i);")
            inner.append("cp_async_wait_all();")
            first_src = "smem"
        for pi, ph in enumerate(self.rop.phases):
            if cache == "none":
                src, fill = "global", False
            elif pi == 0:
                src, fill = ("regs", True) if cache == "regs" else (first_src, first_src == "global")
            else:
                src, fill = cache, False
            inner.append("{")
            inner += ["  " + ln for ln in self.phase_stats(pi, ph, src, "0", "NV", tid, stride, fill)]
            inner.append("  " + self.reduce_call(pi, ph, team))
            inner += ["  " + ln for ln in self.final_lines(pi, ph)]
            inner.append("}")
        leader = "lane == 0" if warp else "threadIdx.x == 0"
        inner += self.write_out(cache if cache != "none" else "global", "0", "NV", tid, stride, leader)
        body += ["  " + ln for ln in inner]
        body.append("}")
        name = f"{self.prefix}"
        return self.signature(name) + " {\n" + "\n".join("  " + ln for ln in body) + "\n}"

    def merge_partials(self, pi: int, ph: Phase, cum: int, cached_loads: bool) -> list[str]:
        nf = len(ph.fields)
        out = ["{"]
        out += [f"  {fl.ctype} a_{fl.name}0 = {fl.init};" for fl in ph.fields]
        out.append(f"  for (long long t = threadIdx.x; t < S; t += {self.T}) {{")
        out.append(f"    const double* pp = part + R * S * {cum} + (row * S + t) * {nf};")
        ld = (lambda k: f"__ldcg(pp + {k})") if cached_loads else (lambda k: f"pp[{k}]")
        args = ", ".join([f"a_{n}0" for n in ph.names()]
                         + [f"({fl.ctype}){ld(k)}" for k, fl in enumerate(ph.fields)])
        out.append(f"    merge_p{pi}({args});")
        out.append("  }")
        out.append("  " + self.reduce_call(pi, ph, "block"))
        out += ["  " + ln for ln in self.final_lines(pi, ph)]
        out.append("}")
        return out

    def kernels_split(self) -> list[str]:
        """One kernel per phase writing per-chunk partial states, then one that merges them and writes."""
        f = self.f
        extra = ", double* __restrict__ part, long long S, long long chunk"
        seg = [self.nv_line(),
               "const long long blk = blockIdx.x;",
               "const long long row = blk / S, c = blk - (blk / S) * S;",
               f"const {self.idx} seg0 = ({self.idx})(c * chunk);",
               f"const {self.idx} seg1 = ({self.idx})min((long long)NV, (c + 1) * chunk);"]
        tid, stride = "(int)threadIdx.x", str(self.T)
        kernels = []
        cums = []
        cum = 0
        for ph in self.rop.phases:
            cums.append(cum)
            cum += len(ph.fields)
        last = f["finish"] == "lastblock"
        for pi, ph in enumerate(self.rop.phases):
            sig_extra = extra + (", unsigned int* __restrict__ counters" if last else "")
            body = seg + self.row_prelude()
            for qi in range(pi):
                body += self.merge_partials(qi, self.rop.phases[qi], cums[qi], False)
            body += self.phase_stats(pi, ph, "global", "seg0", "seg1", tid, stride, False)
            body.append(self.reduce_call(pi, ph, "block"))
            nf = len(ph.fields)
            stores = " ".join(f"pp[{k}] = (double)a_{fl.name}0;" for k, fl in enumerate(ph.fields))
            body.append(f"double* pp = part + R * S * {cums[pi]} + (row * S + c) * {nf};")
            if last:
                body += ["__shared__ unsigned int s_ticket;",
                         f"if (threadIdx.x == 0) {{ {stores} __threadfence(); "
                         "s_ticket = atomicAdd(counters + row, 1u); }",
                         "__syncthreads();",
                         "if (s_ticket == (unsigned int)(S - 1)) {",
                         "  __threadfence();"]
                body += ["  " + ln for ln in self.merge_partials(pi, ph, cums[pi], True)]
                body += ["  " + ln for ln in self.write_out("global", "seg0", "seg1", tid, stride,
                                                            "threadIdx.x == 0")]
                body.append("}")
            else:
                body.append(f"if (threadIdx.x == 0) {{ {stores} }}")
            kernels.append(self.signature(f"{self.prefix}_p{pi}", sig_extra) + " {\n"
                           + "\n".join("  " + ln for ln in body) + "\n}")
        if not last:
            if self.sum_op:
                body = ["const long long row = blockIdx.x;"] + self.row_prelude()
            else:
                body = seg + self.row_prelude()
            for qi, ph in enumerate(self.rop.phases):
                body += self.merge_partials(qi, ph, cums[qi], False)
            body += self.write_out("global", "seg0", "seg1", tid, stride, "threadIdx.x == 0")
            kernels.append(self.signature(f"{self.prefix}_apply", extra) + " {\n"
                           + "\n".join("  " + ln for ln in body) + "\n}")
        return kernels

    # -- a cluster's share streamed in with cp.async ----------------------------------------------------

    def publish_lines(self, pi: int, ph: Phase, puts: str) -> list[str]:
        """The block's partial state into its cluster slot with one block barrier: warps reduce, warp 0 merges the
        warps' states and publishes them, and the cluster barrier that follows is every thread's wait. (The block
        reduction the other kernels use ends with every thread holding the result: two more barriers, which only
        the slot's writer needs.) A warp rewrites its ``ws`` entry only past that cluster barrier, after warp 0
        has read it."""
        names = ", ".join(f"a_{n}0" for n in ph.names())
        put_w = " ".join(f"ws{pi}_{fl.name}[threadIdx.x >> 5] = a_{fl.name}0;" for fl in ph.fields)
        get_w = " ".join(f"a_{fl.name}0 = lane_ < {self.T // 32} ? ws{pi}_{fl.name}[lane_] : {fl.init};"
                         for fl in ph.fields)
        return [f"warp_reduce_p{pi}({names});", f"if (lane_ == 0) {{ {put_w} }}", "__syncthreads();",
                "if (threadIdx.x < 32) {", f"  {get_w}", f"  warp_reduce_p{pi}({names});",
                f"  if (lane_ == 0) {{ {puts} }}", "}"]

    def stream_issue(self) -> list[str]:
        """Every slot's copy issued at the start of the row, one commit group per slot (in slot order). Slot k of
        thread t is element seg0 + t + k * T of the row, the layout every pass over the share uses, so a thread
        reads back only what its own copies wrote (no barrier between a copy's wait and its use)."""
        out = ["const float4* __restrict__ xs_ = xr + seg0 + threadIdx.x;"]
        for k in range(stream_slots(self.spec, self.f)):
            out += [f"cp_async16(sc + (threadIdx.x + {k * self.T}), xs_ + {k * self.T}, true);",
                    "cp_async_commit();"]
        return out

    def stream_stats(self, ph: Phase) -> list[str]:
        """The first phase folds each slot in as soon as its group lands: the statistics run under the copies of
        the later slots instead of after all of them. With ``keep_exp`` (softmax, online) each slot is overwritten
        by its exponentials against the thread's running maximum at that slot, which ``mk_`` keeps for the write
        pass (a maximum still -inf shifts by 0, so the terms are 0, not NaN)."""
        K, T = stream_slots(self.spec, self.f), self.T
        out = [f"{fl.ctype} a_{fl.name}0 = {fl.init};" for fl in ph.fields]
        for k in range(K):
            slot = f"sc[threadIdx.x + {k * T}]"
            out += [f"cp_async_wait<{min(K - 1 - k, 7)}>();", "{", f"  const float4 v0 = {slot};"]
            if self.f["keep_exp"]:
                out += ["  const float mx_ = fmaxf(fmaxf(v0.x, v0.y), fmaxf(v0.z, v0.w));",
                        "  if (mx_ > a_m0) { a_s0 *= EXPF(a_m0 - mx_); a_m0 = mx_; }",
                        "  const float sh_ = a_m0 == -INFINITY ? 0.f : a_m0;",
                        "  float4 e_;",
                        "  e_.x = EXPF(v0.x - sh_); e_.y = EXPF(v0.y - sh_); e_.z = EXPF(v0.z - sh_); "
                        "e_.w = EXPF(v0.w - sh_);",
                        "  a_s0 += (e_.x + e_.y) + (e_.z + e_.w);",
                        f"  {slot} = e_; mk_[{k}] = sh_;"]
            else:
                out += ["  " + ln for ln in self.acc_lines(ph, 0, "v0")]
            out.append("}")
        return out

    def stream_keep_write(self) -> list[str]:
        """The write pass of kept exponentials: one scale exp(slot max - row max) / sum per slot, a multiply per
        element."""
        inv = "* c_inv" if self.f["recip"] else "/ c_sum"
        out = ([self.rop.prelude] if self.rop.prelude else []) + ["float4* __restrict__ ys_ = yr + seg0 + threadIdx.x;"]
        for k in range(stream_slots(self.spec, self.f)):
            out += ["{", f"  const float f_ = EXPF(mk_[{k}] - c_max) {inv};",
                    f"  const float4 e_ = sc[threadIdx.x + {k * self.T}];",
                    "  float4 o_; o_.x = e_.x * f_; o_.y = e_.y * f_; o_.z = e_.z * f_; o_.w = e_.w * f_;",
                    "  " + cc.store("stcs" if self.f["stream"] else "plain", f"ys_ + {k * self.T}", "o_"), "}"]
        return out

    def kernel_cluster(self) -> str:
        """A cluster of blocks per row; each block keeps its share on chip (shared memory, or registers) and the
        blocks' partial statistics cross through distributed shared memory: one cluster barrier per phase.

        Each block publishes its partial state in a slot of its shared memory and every warp gathers the
        cluster's slots (lane q reads block q's) after the barrier. The slots alternate between rows: a block
        rewrites a slot two rows later, past a barrier that every block reaches only after reading it, so no
        second barrier guards the reads; one at the end keeps each block's shared memory alive until the others
        are done with it."""
        f = self.f
        CL = f["cluster"]
        regs = f["cache"] == "regs"
        cache = multi_pass(self.spec, f) and not regs  # the share in shared memory, unless in registers
        idx = self.idx
        body = []
        if cache:
            body.append("extern __shared__ __align__(16) unsigned char smem_raw[];")
            body.append(f"{self.vt}* __restrict__ sc = reinterpret_cast<{self.vt}*>(smem_raw);")
        for pi, ph in enumerate(self.rop.phases):
            body += [f"__shared__ {fl.ctype} xs{pi}_{fl.name}[2];" for fl in ph.fields]
            if streams(f):
                body += [f"__shared__ {fl.ctype} ws{pi}_{fl.name}[32];" for fl in ph.fields]
        body += ["const unsigned crank = cluster_rank();",
                 "const unsigned lane_ = threadIdx.x & 31;",
                 "unsigned cid, ncl, par = 0;",
                 'asm volatile("mov.u32 %0, %%clusterid.x;" : "=r"(cid));',
                 'asm volatile("mov.u32 %0, %%nclusterid.x;" : "=r"(ncl));',
                 self.nv_line(),
                 f"const {idx} chunk = (NV + {CL} - 1) / {CL};",
                 f"const {idx} seg0 = min(NV, ({idx})crank * chunk);",
                 f"const {idx} seg1 = min(NV, seg0 + chunk);",
                 "for (long long row = cid; row < R; row += ncl, par ^= 1u) {"]
        inner = self.row_prelude()
        if f["l2_prefetch"]:
            # The block's share of the cluster's next row goes to L2 now: its loads then wait on L2, not HBM,
            # while this row's statistics cross the cluster.
            inner += ["if (row + ncl < R) {",
                      "  const char* nx = reinterpret_cast<const char*>(x + (row + ncl) * N);",
                      f"  for (long long o = (long long)seg0 * {4 * self.vw} + threadIdx.x * 128LL; "
                      f"o < (long long)seg1 * {4 * self.vw}; o += {self.T} * 128LL) prefetch_l2(nx + o);",
                      "}"]
        if regs:
            inner.append(f"{self.vt} rc[{self.rk}];")
        tid, stride = "(int)threadIdx.x", str(self.T)
        stream = streams(f)
        if stream:
            inner += self.stream_issue()
            if f["keep_exp"]:  # each slot's shift, for the write pass after the exchange
                inner.append(f"float mk_[{stream_slots(self.spec, f)}];")
        for pi, ph in enumerate(self.rop.phases):
            src = "regs" if regs else "global" if (pi == 0 or not cache) else "smem"
            inner.append("{")
            if stream and pi == 0:
                inner += ["  " + ln for ln in self.stream_stats(ph)]
            else:
                inner += ["  " + ln for ln in self.phase_stats(pi, ph, src, "seg0", "seg1", tid, stride,
                                                               (cache or regs) and pi == 0)]
            puts = " ".join(f"xs{pi}_{fl.name}[par] = a_{fl.name}0;" for fl in ph.fields)
            if stream:
                inner += ["  " + ln for ln in self.publish_lines(pi, ph, puts)]
            else:
                inner.append("  " + self.reduce_call(pi, ph, "block"))
                inner.append(f"  if (threadIdx.x == 0) {{ {puts} }}")
            inner.append("  cluster_sync();")
            inner.append("  {")
            inner += [f"    {fl.ctype} r_{fl.name} = {fl.init};" for fl in ph.fields]
            gets = " ".join(f"r_{fl.name} = dsmem_load(&xs{pi}_{fl.name}[par], lane_);" for fl in ph.fields)
            inner.append(f"    if (lane_ < {CL}) {{ {gets} }}")
            inner.append(f"    warp_reduce_p{pi}({', '.join(f'r_{n}' for n in ph.names())});")
            inner += [f"    a_{fl.name}0 = r_{fl.name};" for fl in ph.fields]
            inner.append("  }")
            inner += ["  " + ln for ln in self.final_lines(pi, ph)]
            inner.append("}")
        if stream and f["keep_exp"]:
            inner += self.stream_keep_write()
        else:
            inner += self.write_out("regs" if regs else "smem" if cache else "global", "seg0", "seg1", tid, stride,
                                    "crank == 0 && threadIdx.x == 0")
        body += ["  " + ln for ln in inner]
        body.append("}")
        body.append("cluster_sync();")
        return self.signature(self.prefix) + " {\n" + "\n".join("  " + ln for ln in body) + "\n}"

    def kernel_grid(self) -> str:
        """Every block works on every row: its 1/gridDim share stays on chip (shared memory, or registers)
        between the passes, and each pass's per-block statistics meet in ``part`` after a grid-wide barrier (a
        cooperative launch makes all blocks resident, so the barrier cannot deadlock)."""
        f = self.f
        idx = self.idx
        regs = f["cache"] == "regs"
        nf = sum(len(ph.fields) for ph in self.rop.phases)
        tid, stride = "(int)threadIdx.x", str(self.T)
        body = ["extern __shared__ __align__(16) unsigned char smem_raw[];"]
        if not regs:
            body.append(f"{self.vt}* __restrict__ sc = reinterpret_cast<{self.vt}*>(smem_raw);")
        body += [self.nv_line(),
                 "const unsigned G = gridDim.x;",
                 f"const {idx} chunk = (NV + G - 1) / G;",
                 f"const {idx} seg0 = min(NV, ({idx})blockIdx.x * chunk);",
                 f"const {idx} seg1 = min(NV, seg0 + chunk);",
                 "unsigned arrivals = 0;"]
        wrk = weight_regs(self.spec, f) if f["wcache"] and not regs else 0
        wreg = breg = None
        if wrk:
            # The block's slice of the weight is the same for every row: read it once, keep it in registers.
            body += [f"float4 wc[{wrk}];", "#pragma unroll", f"for (int k_ = 0; k_ < {wrk}; ++k_) {{",
                     f"  const {idx} i = seg0 + threadIdx.x + ({idx})k_ * {self.T};",
                     "  wc[k_] = i < seg1 ? __ldg(reinterpret_cast<const float4*>(w) + i)",
                     "                    : make_float4(0.f, 0.f, 0.f, 0.f);",
                     "}"]
        elif f["wcache"]:
            # Beside a register share of the row the weight's slice fits in shared memory, read once for all
            # rows (the first barrier orders these writes before any read).
            body += ["float4* __restrict__ sw = reinterpret_cast<float4*>(smem_raw);",
                     f"for ({idx} i = threadIdx.x; i < seg1 - seg0; i += {self.T}) "
                     "sw[i] = __ldg(reinterpret_cast<const float4*>(w) + seg0 + i);"]
            wreg = "sw[i - seg0]"
            kb = bias_slots(self.spec, f)
            if kb:
                # After the weight's slice, the bias of the first slots of every thread's register cache (slot k
                # of thread t at k * T + t); the write pass reads the others from L2.
                body.append("float4* __restrict__ sb = sw + chunk;")
                body += self.regs_loop("seg0", "seg1", tid, stride, [
                    f"sb[k_ * {self.T} + threadIdx.x] = __ldg(reinterpret_cast<const float4*>(b) + i);"], kb)
                breg = f"(k_ < {kb} ? sb[k_ * {self.T} + threadIdx.x] : {self.param_load('b', 'i', 'float4')})"
        body.append("for (long long row = 0; row < R; ++row) {")
        inner = self.row_prelude()
        if regs:
            inner.append(f"{self.vt} rc[{self.rk}];")
        prefetch = []
        if f["l2_prefetch"]:
            # The slice of the next row goes to L2 now, while this row waits at the barrier and is written
            # out: the next first pass then reads L2, and HBM never idles between rows.
            prefetch = ["if (row + 1 < R) {",
                        "  const char* nx = reinterpret_cast<const char*>(x + (row + 1) * N);",
                        f"  for (long long o = (long long)seg0 * {4 * self.vw} + threadIdx.x * 128LL; "
                        f"o < (long long)seg1 * {4 * self.vw}; o += {self.T} * 128LL) prefetch_l2(nx + o);",
                        "}"]
        off = 0
        for pi, ph in enumerate(self.rop.phases):
            inner.append("{")
            src = "regs" if regs else "global" if pi == 0 else "smem"
            inner += ["  " + ln for ln in self.phase_stats(pi, ph, src, "seg0", "seg1", tid, stride,
                                                           pi == 0)]
            if pi == 0:
                inner += ["  " + ln for ln in prefetch]
            inner.append("  " + self.reduce_call(pi, ph, "block"))
            base = f"(row * G + blockIdx.x) * {nf}"
            puts = " ".join(f"part[{base} + {off + k}] = (double)a_{fl.name}0;" for k, fl in enumerate(ph.fields))
            inner.append(f"  if (threadIdx.x == 0) {{ {puts} }}")
            inner.append("  arrivals += G;")
            inner.append("  grid_barrier(bar, arrivals);")
            # Thread q takes block q's partial (L2 reads: __ldcg skips the possibly stale L1), then one block
            # reduction merges all of them: log-depth, not a loop over every block.
            inner.append(f"  {{ const long long q0 = row * G * {nf};")
            for k, fl in enumerate(ph.fields):
                inner.append(f"    a_{fl.name}0 = threadIdx.x < G ? ({fl.ctype})__ldcg(part + q0 + "
                             f"threadIdx.x * {nf} + {off + k}) : {fl.init};")
            inner.append("  }")
            inner.append(f"  for (unsigned q = threadIdx.x + {self.T}; q < G; q += {self.T}) {{")
            bargs = ", ".join([f"a_{n}0" for n in ph.names()]
                              + [f"({fl.ctype})__ldcg(part + row * G * {nf} + q * {nf} + {off + k})"
                                 for k, fl in enumerate(ph.fields)])
            inner.append(f"    merge_p{pi}({bargs});")
            inner.append("  }")
            inner.append("  " + self.reduce_call(pi, ph, "block"))
            inner += ["  " + ln for ln in self.final_lines(pi, ph)]
            inner.append("}")
            off += len(ph.fields)
        if wrk:
            if self.rop.prelude:
                inner.append(self.rop.prelude)
            inner += ["#pragma unroll", f"for (int k_ = 0; k_ < {wrk}; ++k_) {{",
                      f"  const {idx} i = seg0 + threadIdx.x + ({idx})k_ * {self.T};",
                      "  if (i < seg1) {", "    const float4 v0 = sc[i - seg0];"]
            inner += ["    " + ln for ln in self.apply_lines("v0", "i", wreg="wc[k_]")]
            inner += ["  }", "}"]
        else:
            inner += self.write_out("regs" if regs else "smem", "seg0", "seg1", tid, stride,
                                    "blockIdx.x == 0 && threadIdx.x == 0", wreg, breg)
        body += ["  " + ln for ln in inner]
        body.append("}")
        extra = ", double* __restrict__ part, unsigned* __restrict__ bar"
        return self.signature(self.prefix, extra) + " {\n" + "\n".join("  " + ln for ln in body) + "\n}"

    def kernel_grid_pipe(self) -> str:
        """The whole GPU per row without a grid barrier: each block's warps split into roles that run rows apart.

        Producer warps (``PIPE_PRODUCERS``) read the block's slice of a row from HBM, reduce it to the phase's
        state, and publish it to ``part`` with a counter per row slot; the statistics warp waits for all blocks'
        states of a row, merges them and hands the row constants to the consumer warps through shared memory; the
        consumer warps read the slice back (from L2: the producers brought it in a row earlier) and write the
        output. Producers run ahead of their own block's consumers by at most two thirds of a row beyond the next,
        measured on the H200 (LayerNorm, 16 rows of 16 MiB): a row further and L2 no longer holds the rows between
        the two reads (DRAM reads of 490 MB instead of 300), a third less and the producers wait on the other SMs.
        Every role's wait is a named barrier or a poll with a sleep, so waiting warps take no issue slots from the
        working ones. Blocks' producers are never more than three rows apart (each waits for its consumers, which
        wait for every block's statistics), so ``part`` and the counters are a ring of ``PIPE_RING`` rows. That
        holds for a block whose slice is empty too (a row shorter than 4 floats an SM): its consumers count a unit
        per row begun, so its producers wait like the others; without it they ran ahead, and their arrivals for row
        r + 4 counted toward row r's slot before the other blocks had published row r (RMSNorm of 4096 rows of 8192
        on the H200: four empty blocks, max abs error 0.4).

        Timed per role with %globaltimer on the H200 (LayerNorm, 16 rows), the producers set the pace: a row's
        statistics wait for its slowest block (the median block publishes 3-5 us earlier), and handing out a row's
        slice in pieces through atomic counters (a single one, or stealing from other blocks' slices or their tails)
        evened the blocks out but cost more than it saved (0.199-0.343 ms against 0.192-0.195). What did pay: the
        statistics warp issues all its loads of the blocks' states before its first merge (a single L2 round trip on
        every row's critical path), and the consumers copy the parameters with 8 loads in flight (together 1.2% in a
        5-round run, 0.1946 -> 0.1923 ms, each 0.4-0.8% timed alone). L2 policies on the row itself (producers
        evict-last, consumers evict-first) ran 1.5% slower in a 5-round run (0.196 ms against its parent's 0.193), and
        left lines pinned in L2 after the call.

        With ``ilv`` the blocks' slices interleave in granules of that many float4 (block b: granules b, b + G, ...)
        instead of one contiguous piece each, so at any moment all producers read, and all consumers write, one
        narrow window of the row: 0.181 ms against 0.191 on the H200 (32 to 256 float4 within 1%, 1024 float4
        0.185), DRAM reads 333 MB against 362 (Nsight Compute). More producer bytes in flight did not pay on top of
        either layout: L2 prefetches a granule or an unroll ahead (bulk or per line, by producers or by waiting
        consumers) ran 0.2-6% slower, 12 or 16 loads a producer thread under ``setmaxnreg`` 6-13% slower.

        What bounds it (Nsight Compute, H200): its busiest unit is the link between the two L2 partitions, busy 84% of
        the kernel's cycles (``lts__ltcfabric2ltc_cycles_active``; DRAM 70%). About half of every stream crosses it, the
        copy's too (a write-only kernel: 137 of 268 MB), and at its ~2.2 TB/s the copy's share takes 122 of the copy's
        129 us, near the link's limit as well; this kernel moves 323-332 MB across it where the row's bytes need 285,
        the rest mostly rows evicted from the near partition before their second read. The bias's slots beyond shared
        memory held in registers (consumer batches of 3 free the two float4 a thread needs) took 47 MB off the SMs' L2
        reads but only 8 MB off the link and under 1% off the time: not kept. Consumer warps that help produce while
        they wait (chunks claimed from one shared counter, partial sums merged in chunk order) ran 12-60% slower;
        dropping consumed lines (``discard.global.L2``) 3-4% slower; any evict-first hint on the producers' loads (L2
        policy or ``L1::evict_first``) 24% slower, the rows then read twice from DRAM.

        Keeping the row on chip instead of reading it back from L2 does not pay either (H200, hand-written): a block
        holding its slice of a row in registers, the weight's slice and some of the bias's in shared memory, and the
        next row's first slots streamed into shared memory with ``cp.async`` while it waits for the grid's statistics,
        the row's loads evict-first, reads the minimum from DRAM (302 MB) yet runs 0.189-0.21 ms against this kernel's
        0.182-0.184 in the same calls (the next row prefetched into L2 instead, 0.209-0.236): each thread normalises,
        loads and reduces in turn, and the fence before a block publishes its sums waits for the block's stores of the
        row before (1-2 us a row; left out, which is unsafe, 0.185 ms; a fence-free publish, each block's sums one
        64-bit word polled until written, 0.233).
        Loading the next row's first half into registers as well, before a block reduces its row (480 threads of 17
        float4 each, and a statistics warp that stores no output, so its fence waits on none of the output's stores),
        ran 0.216-0.219 ms: the normalising pass takes 8 us a row (writes at ~2.1 TB/s, the copy's rate for them)
        and the hand-off still 2.5-3 us a row with no stores to overlap it (the bias's overflow from L2: 1 us a row)."""
        f = self.f
        idx = self.idx
        ph = self.rop.phases[0]
        nf = len(ph.fields)
        PW, PU, CB, RING = PIPE_PRODUCERS, PIPE_UNROLL, PIPE_BATCH, PIPE_RING
        PT, CT = 32 * PW, PIPE_CONSUMERS
        CW, SYNC = CT // 32, CT + 32  # consumer warps; threads meeting the statistics warp at its barriers
        has_w, has_b = self.params_read()
        consts = all_consts(self.rop)
        shift = ["const float c_k = __ldg(x + row * N);"] if self.rop.needs_shift else []
        init = [f"{fl.ctype} a_{fl.name}0 = {fl.init};" for fl in ph.fields]
        state = ", ".join(f"a_{n}0" for n in ph.names())
        body = ["extern __shared__ __align__(16) unsigned char smem_raw[];"]
        body += [f"__shared__ {fl.ctype} pw_{fl.name}[2][{PW}];" for fl in ph.fields]
        body += [f"__shared__ float pc_{c};" for c in consts]
        C = f["ilv"]

        def pos(i: str) -> str:
            """Row position (float4) of the block's slot ``i`` past the row pointers' offset (``off``)."""
            return f"at_({i})" if C else i

        def param_pos(i: str) -> str:
            """Position of the block's slot ``i`` in a parameter, whose pointer has no offset."""
            return pos(i) if C else f"seg0 + {i}"

        off = "" if C else " + seg0"  # the row pointers' offset to the block's slice
        body += ["__shared__ unsigned cons_prog;  // consumer rows begun and batches done, the producers' pacing",
                 self.nv_line(),
                 "const unsigned G = gridDim.x;"]
        if C:
            body += [f"// the blocks' slices interleave in granules of {C} float4: "
                     "block b takes granules b, b + G, ...",
                     f"const {idx} CG_ = ({idx})G * {C};",
                     f"const {idx} nr_ = NV / CG_, rm_ = NV - nr_ * CG_;",
                     f"const {idx} chunk = nr_ * {C} + min(({idx}){C}, rm_);  // the largest slice",
                     f"const int len = (int)(nr_ * {C} + max(({idx})0, "
                     f"min(({idx}){C}, rm_ - ({idx})blockIdx.x * {C})));",
                     f"const auto at_ = [=](int i) -> {idx} {{ return ({idx})((unsigned)i / {C}u) * CG_ + "
                     f"({idx})blockIdx.x * {C} + ({idx})((unsigned)i % {C}u); }};"]
        else:
            body += [f"const {idx} chunk = (NV + G - 1) / G;",
                     f"const {idx} seg0 = min(NV, ({idx})blockIdx.x * chunk);",
                     "const int len = (int)(min(NV, seg0 + chunk) - seg0);"]
        body += ["const int warp_ = threadIdx.x >> 5, lane_ = threadIdx.x & 31;",
                 f"const int nbat = ((len + {CT - 1}) / {CT} + {CB - 1}) / {CB};  // consumer batches a row",
                 "if (threadIdx.x == 0) cons_prog = 0u;",
                 "__syncthreads();"]
        # -- producers
        acc = self.acc_lines(ph, 0, "v_[u]")
        put = " ".join(f"pw_{fl.name}[pb_][warp_] = a_{fl.name}0;" for fl in ph.fields)
        merge = ", ".join([f"a_{n}0" for n in ph.names()] + [f"pw_{n}[pb_][k]" for n in ph.names()])
        stores = " ".join(f"pp[{k}] = (double)a_{fl.name}0;" for k, fl in enumerate(ph.fields))
        body += [f"if (warp_ < {PW}) {{",
                 "  for (long long row = 0; row < R; ++row) {",
                 "    if (row >= 2) {  // this block's consumers have row - 2's constants and two thirds of it done",
                 f"      const unsigned need = (unsigned)(((row - 2) * (nbat + 1) + 1 + (2 * nbat + 2) / 3) * {CW});",
                 "      while ((int)(*(volatile unsigned*)&cons_prog - need) < 0) __nanosleep(256);",
                 "    }",
                 f"    const float4* __restrict__ xs = reinterpret_cast<const float4*>(x + row * N){off};"]
        body += ["    " + ln for ln in shift + init]
        body += [f"    for (int base = threadIdx.x; base < len; base += {PT * PU}) {{",
                 f"      float4 v_[{PU}];",
                 "#pragma unroll",
                 f"      for (int u = 0; u < {PU}; ++u) {{ const int i = base + u * {PT}; "
                 f"if (i < len) v_[u] = {cc.load(f['load'], 'xs + ' + pos('i'))}; }}",
                 "#pragma unroll",
                 f"      for (int u = 0; u < {PU}; ++u) {{",
                 f"        if (base + u * {PT} < len) {{"]
        body += ["          " + ln for ln in acc]
        body += ["        }", "      }", "    }",
                 f"    warp_reduce_p0({state});",
                 "    const int pb_ = (int)(row & 1);  // by row parity: thread 0 reads them past one barrier",
                 f"    if (lane_ == 0) {{ {put} }}",
                 f"    bar_sync(1, {PT});",
                 "    if (threadIdx.x == 0) {",
                 f"      for (int k = 1; k < {PW}; ++k) merge_p0({merge});",
                 f"      double* pp = part + ((row % {RING}) * G + blockIdx.x) * {nf};",
                 f"      {stores}",
                 "      __threadfence();",
                 f"      atomicAdd(cnt + (row % {RING}) * 32, 1u);",
                 "    }",
                 "  }"]
        # -- the statistics warp
        MQ = PIPE_MERGE_LOADS

        def state_of(q: str, k: int) -> str:
            """Field k of block q's published state for this row."""
            return f"__ldcg(part + ((row % {RING}) * G + {q}) * {nf} + {k})"

        loads = " ".join(f"pv_{fl.name}[j] = {state_of('lane_ + 32u * j', k)};" for k, fl in enumerate(ph.fields))
        held = ", ".join([f"a_{n}0" for n in ph.names()] + [f"({fl.ctype})pv_{fl.name}[j]" for fl in ph.fields])
        gets = ", ".join([f"a_{n}0" for n in ph.names()]
                         + [f"({fl.ctype}){state_of('q', k)}" for k, fl in enumerate(ph.fields)])
        body += [f"}} else if (warp_ == {PW}) {{",
                 "  for (long long row = 0; row < R; ++row) {",
                 f"    if (row >= 1) bar_sync(3, {SYNC});  // the consumers have taken row - 1's constants",
                 f"    const unsigned goal = G * (unsigned)(row / {RING} + 1);",
                 f"    if (lane_ == 0) while (ld_acquire(cnt + (row % {RING}) * 32) < goal) __nanosleep(64);",
                 "    __syncwarp();"]
        body += ["    " + ln for ln in init]
        body += ["    {  // every load in flight before the first merge: one L2 round trip on the critical path",
                 "      " + " ".join(f"double pv_{fl.name}[{MQ}];" for fl in ph.fields),
                 "#pragma unroll",
                 f"      for (unsigned j = 0; j < {MQ}; ++j) if (lane_ + 32u * j < G) {{ {loads} }}",
                 "#pragma unroll",
                 f"      for (unsigned j = 0; j < {MQ}; ++j) if (lane_ + 32u * j < G) merge_p0({held});",
                 "    }",
                 f"    for (unsigned q = lane_ + {32 * MQ}u; q < G; q += 32) merge_p0({gets});  // a GPU of more SMs",
                 f"    warp_reduce_p0({state});"]
        if consts:
            body.append("    float " + ", ".join(f"{c} = 0.f" for c in consts) + ";")
        body += ["    " + ln for ln in shift + self.final_lines(0, ph)]
        body += ["    if (lane_ == 0) { " + " ".join(f"pc_{c} = {c};" for c in consts) + " }",
                 f"    bar_arrive(2, {SYNC});",
                 "  }"]
        # -- consumers
        body += ["} else {",
                 f"  const int t_ = threadIdx.x - {PT + 32};"]
        wreg = breg = None

        def fill(dst: str, n: str, src: str) -> list[str]:
            """Copy a parameter's slots to shared memory with PIPE_FILL loads in flight a thread rather than one at a
            time (0.1928 ms against 0.1935 and 0.1950 in the same calls)."""
            at = f"const int i = i0 + u * {CT}; if (i < {n})"
            return [f"  for (int i0 = t_; i0 < {n}; i0 += {PIPE_FILL * CT}) {{",
                    f"    float4 t_f[{PIPE_FILL}];",
                    f"    _Pragma(\"unroll\") for (int u = 0; u < {PIPE_FILL}; ++u) {{ {at} "
                    f"t_f[u] = __ldg(reinterpret_cast<const float4*>({src}) + {param_pos('i')}); }}",
                    f"    _Pragma(\"unroll\") for (int u = 0; u < {PIPE_FILL}; ++u) {{ {at} {dst}[i] = t_f[u]; }}",
                    "  }"]

        if has_w:
            body += ["  float4* __restrict__ sw = reinterpret_cast<float4*>(smem_raw);"] + fill("sw", "len", "w")
            wreg = "sw[i]"
        if has_b:
            base = "sw + chunk" if has_w else "reinterpret_cast<float4*>(smem_raw)"
            body += [f"  float4* __restrict__ sb = {base};",
                     "  const int nbb = (int)min((long long)len, nb);"] + fill("sb", "nbb", "b")
            breg = f"(i < nbb ? sb[i] : {self.param_load('b', param_pos('i'), 'float4')})"
        body.append(f"  bar_sync(4, {CT});")

        def batch(dst: str, row: str, k: str) -> str:
            return (f"{{ const float4* __restrict__ xs = reinterpret_cast<const float4*>(x + ({row}) * N){off};"
                    f" _Pragma(\"unroll\") for (int u = 0; u < {CB}; ++u) {{ const int i = t_ + (({k}) * {CB} + u) "
                    f"* {CT}; if (i < len && ({row}) < R) {dst}[u] = {cc.load('ldcs', 'xs + ' + pos('i'))}; }} }}")
        body += [f"  float4 cur_[{CB}], nxt_[{CB}];",
                 "  " + batch("cur_", "0LL", "0"),
                 "  for (long long row = 0; row < R; ++row) {",
                 f"    bar_sync(2, {SYNC});  // row's constants are in shared memory"]
        if consts:
            body.append("    float " + ", ".join(f"{c} = pc_{c}" for c in consts) + ";  // the prelude may set more")
        body += [f"    if (row + 1 < R) bar_arrive(3, {SYNC});",
                 "    if (lane_ == 0) atomicAdd(&cons_prog, 1u);  // a unit a row, even for an empty slice",
                 f"    float4* __restrict__ yr = reinterpret_cast<float4*>(y + row * N){off};"]
        if self.rop.prelude:
            body.append("    " + self.rop.prelude)
        body += ["    for (int k = 0; k < nbat; ++k) {  // the next batch (of this row or the next) loads meanwhile",
                 "      if (k + 1 < nbat) " + batch("nxt_", "row", "k + 1") + " else " + batch("nxt_", "row + 1", "0"),
                 "#pragma unroll",
                 f"      for (int u = 0; u < {CB}; ++u) {{",
                 f"        const int i = t_ + (k * {CB} + u) * {CT};",
                 "        if (i < len) {"]
        body += ["          " + ln for ln in self.apply_lines("cur_[u]", pos("i"), wreg, breg)]
        body += ["        }", "      }",
                 "      __syncwarp();",
                 "      if (lane_ == 0) atomicAdd(&cons_prog, 1u);",
                 "#pragma unroll",
                 f"      for (int u = 0; u < {CB}; ++u) cur_[u] = nxt_[u];",
                 "    }", "  }", "}"]
        extra = ", double* __restrict__ part, unsigned* __restrict__ cnt, long long nb"
        return self.signature(self.prefix, extra) + " {\n" + "\n".join("  " + ln for ln in body) + "\n}"

    def source(self) -> str:
        parts = ["// generated by kernelcraft's offline proposer (rowwise_cuda)"] + self.header()
        parts += self.device_functions()
        mapping = self.f["mapping"]
        if mapping in ("block", "warp"):
            parts.append(self.kernel_rows())
        elif mapping == "split":
            parts += self.kernels_split()
        elif mapping == "grid":
            parts.append(self.kernel_grid_pipe() if self.f["pipe"] else self.kernel_grid())
        else:
            parts.append(self.kernel_cluster())
        return "\n\n".join(parts) + "\n"

    def kernel_names(self) -> list[str]:
        if self.f["mapping"] == "split":
            names = [f"{self.prefix}_p{i}" for i in range(len(self.rop.phases))]
            return names + ([] if self.f["finish"] == "lastblock" else [f"{self.prefix}_apply"])
        return [self.prefix]


def safe_features(spec: OpSpec, f: dict) -> dict:
    """The fallback for run-time shapes the fast path cannot take: scalar, uncached, 64-bit indices."""
    g = dict(f, vec=1, cache="none", cp_async=False, idx32=False)
    if g["mapping"] == "cluster":
        g["mapping"] = "block"
    if g["mapping"] == "grid":
        g["mapping"] = "split"
    return normalise(spec, g)


def fast_conditions(spec: OpSpec, f: dict) -> list[str]:
    """Python expressions (over N, NV, x, out, w, b) that must hold for the fast kernel to be correct."""
    conds = []
    if f["vec"] == 4:
        conds.append("N % 4 == 0")
        ptrs = ["x"] + ([] if spec.op == "sum_lastdim" else ["out"])
        ptrs += [p for p, e in (("w", spec.weight), ("b", spec.bias)) if e is not None]
        conds += [f"{p}.data_ptr() % 16 == 0" for p in ptrs]
    if f["idx32"]:
        conds.append("N < 2**30")
    if f["cache"] == "smem":
        conds.append(f"N * 4 <= {cc.SMEM_CACHE_MAX}")
    if f["cache"] == "regs":
        team = 32 if f["mapping"] == "warp" else f["threads"]
        share = {"cluster": f"-(-(N // {f['vec']}) // {f['cluster']})",
                 "grid": f"-(-(N // {f['vec']}) // _sm_count(x.device.index))"}.get(f["mapping"], f"N // {f['vec']}")
        conds.append(f"{share} <= {team * regs_per_thread(spec, f)}")
    if f["mapping"] == "cluster" and multi_pass(spec, f) and f["cache"] != "regs":
        cl = f["cluster"]
        conds.append(f"-(-(N // {f['vec']}) // {cl}) * {4 * f['vec']} <= {cc.SMEM_CACHE_MAX}")
        if streams(f):  # every block's share exactly fills the unrolled slots
            conds.append(f"N == {4 * cl * stream_slots(spec, f) * f['threads']}")
    if f["pipe"]:  # the weight's slice fits the block's shared memory
        if spec.weight is not None:
            conds.append(f"{pipe_slice_expr(f['ilv'], '_sm_count(x.device.index)')} * 16 <= {PIPE_SMEM}")
    elif f["mapping"] == "grid" and f["cache"] != "regs":
        conds.append(f"-(-(N // {f['vec']}) // _sm_count(x.device.index)) * {4 * f['vec']} <= {cc.SMEM_CACHE_MAX}")
    if f["wcache"] and f["cache"] == "regs":
        kb = bias_slots(spec, f)
        conds.append(f"-(-(N // 4) // _sm_count(x.device.index)) * 16 <= {cc.SMEM_CACHE_MAX}" if not kb else
                     f"(-(-(N // 4) // _sm_count(x.device.index)) + {kb * f['threads']}) * 16 "
                     f"<= {GRID_SMEM - reduce_smem(spec, f)}")
    elif f["wcache"]:
        conds.append(f"-(-(N // 4) // _sm_count(x.device.index)) <= {weight_regs(spec, f) * f['threads']}")
    return conds


def _launch(spec: OpSpec, f: dict, kern: _Kernel, var: str) -> list[str]:
    """Forward-body lines launching the kernels of ``kern`` (objects named ``{var}_<suffix>``)."""
    T = f["threads"]
    vw = f["vec"]
    mapping = f["mapping"]
    out = []
    if mapping in ("block", "warp"):
        rows_per_block = T // 32 if mapping == "warp" else 1
        out.append(f"grid = min(-(-R // {rows_per_block}), 2**31 - 1)")
        if f["grid"] == "persistent":
            out.append(f"grid = min(grid, _sm_count(x.device.index) * {f['bps']})")
        smem = "N * 4" if f["cache"] == "smem" else "0"
        out.append(f"{var}(grid=(grid,), block=({T},), args=args, shared_mem={smem})")
    elif mapping == "grid" and f["pipe"]:
        nf = len(kern.rop.phases[0].fields)
        wslice = "chunk" if kern.params_read()[0] else "0"
        bslots = f"max(0, min(chunk, {PIPE_SMEM // 16} - {wslice}))" if kern.params_read()[1] else "0"
        out += ["G = _sm_count(x.device.index)",
                f"chunk = {pipe_slice_expr(f['ilv'], 'G')}",
                f"nb = {bslots}",
                f"part = torch.empty({PIPE_RING} * G * {nf}, dtype=torch.float64, device=x.device)",
                f"cnt = torch.zeros({PIPE_RING * 32}, dtype=torch.int32, device=x.device)",
                f"{var}(grid=(G,), block=({T},), args=args + (part, cnt, nb), "
                f"shared_mem=({wslice} + nb) * 16, cooperative=True)"]
    elif mapping == "grid":
        nf = sum(len(p.fields) for p in kern.rop.phases)
        # shared memory holds the block's share of the row, or beside a register share the weight's slice
        smem = ("0" if not f["wcache"] else f"(-(-(N // 4) // G) + {bias_slots(spec, f) * T}) * 16") \
            if f["cache"] == "regs" else f"-(-(N // {vw}) // G) * {4 * vw}"
        out += ["G = _sm_count(x.device.index)",
                f"part = torch.empty(R * G * {nf}, dtype=torch.float64, device=x.device)",
                "bar = torch.zeros(1, dtype=torch.int32, device=x.device)",
                f"{var}(grid=(G,), block=({T},), args=args + (part, bar), "
                f"shared_mem={smem}, cooperative=True)"]
    elif mapping == "cluster":
        cl = f["cluster"]
        if f["grid"] == "persistent":  # bps blocks per SM loop over the rows
            out.append(f"ncl = min(R, max(1, _sm_count(x.device.index) * {f['bps']} // {cl}), (2**31 - 1) // {cl})")
        else:  # a cluster per row: the hardware keeps every SM full as clusters retire
            out.append(f"ncl = min(R, (2**31 - 1) // {cl})")
        smem = f"-(-(N // {vw}) // {cl}) * {4 * vw}" if multi_pass(spec, f) and f["cache"] != "regs" else "0"
        out.append(f"{var}(grid=(ncl * {cl},), block=({T},), args=args, shared_mem={smem})")
    else:
        nphases = len(kern.rop.phases)
        nf = sum(len(p.fields) for p in kern.rop.phases)
        out += [f"NV = N // {vw}",
                # bps=2 asks for one full-occupancy wave of blocks over all rows, bps=1 half, bps=8 four waves
                f"S = max(1, min(-(-_sm_count(x.device.index) * {max(1, 2048 // T * f['bps'] // 2)} // R), "
                f"-(-NV // {T * 4})))",
                "chunk = max(1, -(-NV // S))",
                "S = max(1, -(-NV // chunk))",
                f"part = torch.empty(R * S * {nf}, dtype=torch.float64, device=x.device)",
                "sargs = args + (part, S, chunk)"]
        if f["finish"] == "lastblock":
            out.append("counters = torch.zeros(R, dtype=torch.int32, device=x.device)")
            out.append(f"{var}_p0(grid=(R * S,), block=({T},), args=sargs + (counters,))")
        else:
            for pi in range(nphases):
                out.append(f"{var}_p{pi}(grid=(R * S,), block=({T},), args=sargs)")
            grid = "R" if spec.op == "sum_lastdim" else "R * S"
            out.append(f"{var}_apply(grid=({grid},), block=({T},), args=sargs)")
    return out


def render(spec: OpSpec, f: dict) -> tuple[str, list[str]]:
    """(module-level code defining sources and kernel objects, forward-body lines) for features ``f``."""
    f = normalise(spec, f)
    fast = _Kernel(spec, f, "rowwise_fast")
    conds = fast_conditions(spec, f)
    opts = cc.options(f["fast_math"])
    mod = [f"SRC = r'''\n{fast.source()}'''", ""]
    suffixes = _suffixes(fast)
    for name, suffix in zip(fast.kernel_names(), suffixes, strict=True):
        mod.append(f'_fast{suffix} = cuda_kernel(SRC, "{name}", options={opts})')
    safe = None
    if conds:
        sf = safe_features(spec, f)
        safe = _Kernel(spec, sf, "rowwise_safe")
        mod += ["", "# Scalar fallback for shapes or pointers the fast path cannot take (see forward).",
                f"SRC_SAFE = r'''\n{safe.source()}'''", ""]
        for name, suffix in zip(safe.kernel_names(), _suffixes(safe), strict=True):
            mod.append(f'_safe{suffix} = cuda_kernel(SRC_SAFE, "{name}", options={opts})')
    mod.append(cc.SM_COUNT_PY)

    fwd = _forward_prelude(spec)
    if safe is None:
        fwd += _launch(spec, f, fast, "_fast")
    else:
        fwd.append("if " + " and ".join(conds) + ":")
        fwd += ["    " + ln for ln in _launch(spec, f, fast, "_fast")]
        fwd.append("else:")
        fwd += ["    " + ln for ln in _launch(spec, safe.f, safe, "_safe")]
    fwd.append("return out")
    return "\n".join(mod), fwd


def _suffixes(k: _Kernel) -> list[str]:
    return [name[len(k.prefix):] for name in k.kernel_names()]


def _forward_prelude(spec: OpSpec) -> list[str]:
    """Shapes, output allocation, empty-input early exit and the uniform kernel argument tuple."""
    nd = spec.row_dims
    out = ["x = x.contiguous()"]
    if nd == 1:
        out.append("N = x.shape[-1]")
    else:
        out.append(f"N = math.prod(x.shape[x.dim() - {nd}:])")
    out.append(f"R = math.prod(x.shape[:x.dim() - {nd}])")
    if spec.op == "sum_lastdim":
        shape = "x.shape[:-1] + (1,)" if spec.keepdim else "x.shape[:-1]"
        out.append(f"out = torch.empty({shape}, dtype=x.dtype, device=x.device)")
        out.append("if R == 0:")
    else:
        out.append("out = torch.empty_like(x)")
        out.append("if R == 0 or N == 0:")
    out.append("    return out")
    out.append(f"w = {spec.weight or 'x'}")
    out.append(f"b = {spec.bias or 'x'}")
    out.append(f"args = (x, out, w, b, R, N, {float(spec.eps)!r})")
    return out

