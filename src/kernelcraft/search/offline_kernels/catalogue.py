"""The ideas catalogue: every optimisation idea the offline proposer knows, per (family, backend).

An idea is a natural-language sentence plus the feature delta that implements it. Applying it to a parent's
features and normalising gives the child kernel; an idea whose delta changes nothing for a parent is not an
idea for that parent. ``weight`` is a prior on how promising the idea usually is (the proposer samples by it,
so different seeds explore differently but the strong ideas come up early); ``when`` restricts an idea to the
problems and parents it makes sense for (e.g. splitting rows across blocks only pays when rows are few).

Texts are templates over a small context (row length, rows, threads, ...) filled from the problem and the child
features, so the sentence a report shows says what this kernel actually does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from kernelcraft.search.offline_kernels import (
    attn_cuda,
    conv_cuda,
    cuda_common,
    matmul_cuda,
    matmul_wgmma,
    reduce_cuda,
    rowloss_cuda,
    rowwise_cuda,
    scan_cuda,
    window_c,
    window_cuda,
    xent_cuda,
)
from kernelcraft.search.offline_kernels.opspec import OpSpec

KINDS = ("memory access", "asynchronous work and latency hiding", "data type and precision",
         "compute and instructions", "parallelism and occupancy", "control flow and loops")
MEM, ASYNC, PREC, COMP, PAR, CTRL = KINDS

H100_SMS = 132  # only for judging which ideas are promising; launch code reads the real SM count


@dataclass(frozen=True)
class Idea:
    key: str
    kind: str
    text: str
    delta: dict
    weight: float = 1.0
    ops: tuple[str, ...] | None = None
    when: Callable[[OpSpec, dict], bool] | None = None
    boost: Callable[[OpSpec, dict], float] | None = None  # multiplies weight for this problem/parent

    def applies(self, spec: OpSpec, parent: dict) -> bool:
        if self.ops is not None and spec.op not in self.ops:
            return False
        return self.when is None or bool(self.when(spec, parent))

    def prior(self, spec: OpSpec, parent: dict) -> float:
        return self.weight * (self.boost(spec, parent) if self.boost else 1.0)


def context(spec: OpSpec, child: dict) -> dict:
    """Values the text templates may use."""
    n = spec.row_len if spec.family == "rowwise" else spec.numel
    kb = round(spec.row_len * 4 / 1024, 1)
    ctx = {"N": n, "R": spec.rows, "rowkb": int(kb) if kb == int(kb) else kb, "op": spec.op,  # 16384, not 16384.0
           "numel": spec.numel, "mb": round(spec.numel * 4 / 2**20)}
    ctx.update({k: v for k, v in child.items() if isinstance(v, int | str | bool)})
    ctx["T"] = child.get("threads", 256)
    ctx["wpb"] = ctx["T"] // 32
    ctx["cl"] = child.get("cluster", 2)
    if spec.family == "rowwise" and child.get("gen") == rowwise_cuda.GEN:
        ctx["rk"] = rowwise_cuda.regs_per_thread(spec, child) * child.get("vec", 1)
        ctx["wrk"] = rowwise_cuda.weight_regs(spec, {"threads": child.get("threads", 256)})
        ctx["slots"] = rowwise_cuda.regs_per_thread(spec, child)
        ctx["kb"] = rowwise_cuda.bias_slots(spec, child)
        ctx["sslots"] = rowwise_cuda.stream_slots(spec, child)
    if spec.family == "conv":
        g = spec.geometry
        ctx |= {"cout": g["cout"], "kd": g["cin"] * g["r"] * g["s"], "M": g["n"] * g["oh"] * g["ow"],
                "ks": g["r"], "T": child.get("threads", 256), "cin": g["cin"],
                "cpad": conv_cuda.channels_padded(spec)}
        if conv_cuda.fold_width(spec):
            q = -(-g["r"] // g["stride"])
            ctx |= {"fq": q, "fks": q * g["stride"], "pw": conv_cuda.fold_width(spec),
                    "pwb": 4 * conv_cuda.fold_width(spec)}
        if child.get("algo") == "mma":
            ctx["T"] = matmul_cuda.mma_threads(child)
            ctx["wtm"], ctx["wtn"] = child["bm"] // child["wm"], child["bn"] // child["wn"]
            fm, fn = ctx["wtm"] // 16, ctx["wtn"] // 8  # a warp's A and B fragments per 8-deep step
            ctx["lds"], ctx["ldsm"] = 4 * fm + 2 * fn, fm + -(-fn // 2)
    if spec.family == "window":
        g = spec.geometry
        kk, cing = window_cuda.kernel_volume(spec), g["cin"] // g["groups"]
        ctx |= {"kk": kk, "cing": cing, "cout": g["cout"], "what": "convolution" if spec.op == "conv" else "pooling",
                "M": g["n"] * g["o0"] * g["o1"] * g["o2"], "kd": cing * kk}
        if child.get("algo") == "mma":
            ctx["T"] = matmul_cuda.mma_threads(window_cuda.gemm_features(child))
            ctx["wtm"], ctx["wtn"] = child["bm"] // child["wm"], child["bn"] // child["wn"]
    if spec.family == "reduce":
        g = spec.geometry
        ctx |= {"kept": g["a"] * g["b"], "red": g["r0"] * g["r"], "kind": g["kind"],
                "what": "statistics" if spec.op == "normalize" else "reduction"}
    if spec.family == "scan":
        g = spec.geometry
        ctx |= {"L": g["l"], "rows": g["a"] * g["b"], "tile": scan_cuda.tile(spec, child) if child.get("gen") ==
                scan_cuda.GEN else 0, "sop": "sum" if g["kind"] == "sum" else "product"}
    if spec.family == "xent":
        ctx |= {"rows": spec.geometry["n"], "C": spec.geometry["c"]}
    if spec.family == "rowloss":
        ctx |= {"rows": spec.geometry["rows"], "D": spec.geometry["d"]}
    if spec.family == "matmul":
        ctx["M"], ctx["N"], ctx["K"] = spec.mnk
        if child.get("algo") == "mma":
            ctx["T"] = matmul_cuda.mma_threads(child)
            ctx["wtm"], ctx["wtn"] = child["bm"] // child["wm"], child["bn"] // child["wn"]
            ctx["nb"] = -(-ctx["N"] // child["bn"])  # the blocks along N, each reading all of A's rows it covers
        elif child.get("algo") == "simt":
            ctx["T"] = matmul_cuda.simt_threads(child)
        elif child.get("algo") == "wgmma":
            ctx["T"] = matmul_wgmma.threads(child)
        elif child.get("algo") == "gemv":
            ctx["T"] = child["gthreads"]
    return ctx


SOFTMAXES = ("softmax", "log_softmax")
NORMS = ("layernorm", "rmsnorm")
SUMMED = ("sum_lastdim", "rmsnorm", "layernorm")


def _few_rows(spec: OpSpec, f: dict) -> bool:
    return spec.rows < 2 * H100_SMS


def _short_rows(spec: OpSpec, f: dict) -> bool:
    return spec.row_len <= 4096


def _multi(spec: OpSpec, f: dict) -> bool:
    return spec.op != "sum_lastdim"


def _smem_fits(spec: OpSpec, f: dict) -> bool:
    return _multi(spec, f) and spec.row_len * 4 <= cuda_common.SMEM_CACHE_MAX


def _regs_fit(spec: OpSpec, f: dict) -> bool:
    return _multi(spec, f) and rowwise_cuda.regs_per_thread(spec, f) > 0


def _cluster_ok(spec: OpSpec, f: dict) -> bool:
    if not _multi(spec, f):
        return True
    return not _smem_fits(spec, f) and rowwise_cuda.cluster_fits(spec, f, 8)


def _cluster_regs_ok(spec: OpSpec, f: dict) -> bool:
    """A row too long for one block's shared memory whose share some cluster's blocks can hold in registers."""
    if not _multi(spec, f) or _smem_fits(spec, f) or (f.get("mapping") == "cluster" and f.get("cache") == "regs"):
        return False
    g = f | {"mapping": "cluster", "cache": "regs"}
    return any(rowwise_cuda.regs_per_thread(spec, g | {"cluster": s}) > 0 for s in rowwise_cuda.TUNABLES["cluster"])


def _keep_exp_ok(spec: OpSpec, f: dict) -> bool:
    """A row held in registers: the sum pass can leave the exponentials there."""
    if f.get("keep_exp"):
        return False
    return rowwise_cuda.normalise(spec, f | {"cache": "regs"})["cache"] == "regs"


_STREAM = {"mapping": "cluster", "cache": "none", "cp_async": True, "vec": 4, "cluster": 4}


def _stream_ok(spec: OpSpec, f: dict) -> bool:
    """A row too long for one block's shared memory whose quarters fill a cluster block's cp.async slots exactly
    (and the parent does not stream already)."""
    g = rowwise_cuda.normalise(spec, f | _STREAM)
    return (_multi(spec, f) and not _smem_fits(spec, f) and rowwise_cuda.streams(g)
            and not rowwise_cuda.streams(rowwise_cuda.normalise(spec, f)))


def _stream_three_ok(spec: OpSpec, f: dict) -> bool:
    """A streaming cluster whose shares let three 512-thread blocks share an SM's shared memory, not yet so."""
    g = rowwise_cuda.normalise(spec, f | {"threads": 512, "launch_min": 3})
    share = spec.row_len * 4 // g["cluster"]
    return (rowwise_cuda.streams(rowwise_cuda.normalise(spec, f)) and rowwise_cuda.streams(g)
            and 3 * (share + 1024) <= rowwise_cuda.GRID_SMEM and (f.get("threads"), f.get("launch_min")) != (512, 3))


def _grid_ok(spec: OpSpec, f: dict) -> bool:
    """Few rows too long for a cluster but short enough for one block per SM to hold a share (a grid-wide
    barrier per row and pass costs microseconds, so many rows would spend their time waiting)."""
    return (_multi(spec, f) and spec.rows <= 64 and not rowwise_cuda.cluster_fits(spec, f, 8)
            and rowwise_cuda.grid_fits(spec, H100_SMS) and f.get("mapping") != "grid")


def _grid_regs_ok(spec: OpSpec, f: dict) -> bool:
    """Few rows too long for a cluster whose 1/#SM shares fit a 1024-thread block's registers."""
    g = {"mapping": "grid", "cache": "regs", "threads": 1024, "vec": 4}
    return (_multi(spec, f) and spec.rows <= 64 and not rowwise_cuda.cluster_fits(spec, f, 8)
            and rowwise_cuda.regs_per_thread(spec, g) > 0 and (f.get("mapping"), f.get("cache")) != ("grid", "regs"))


_PIPE = {"mapping": "grid", "pipe": True, "threads": 1024, "vec": 4, "stats": "shifted"}


def _grid_pipe_ok(spec: OpSpec, f: dict) -> bool:
    """Few rows too long for a cluster, a whole number of float4s whose weight slice (1/#SM of a row) fits one
    block's shared memory, and a parent not pipelined yet."""
    wslice = rowwise_cuda.pipe_slice(spec.row_len // 4, H100_SMS, 0) * 16 if spec.weight is not None else 0
    return (_multi(spec, f) and spec.rows <= 64 and not rowwise_cuda.cluster_fits(spec, f, 8)
            and spec.row_len % 4 == 0 and wslice <= rowwise_cuda.PIPE_SMEM and not f.get("pipe")
            and rowwise_cuda.normalise(spec, f | _PIPE)["pipe"])


def _interleave_ok(spec: OpSpec, f: dict) -> bool:
    """A pipelined whole-GPU kernel with contiguous slices, whose weight slice still fits shared memory when the
    slices are granules (the largest can be a granule longer than a ceiling share)."""
    g = rowwise_cuda.normalise(spec, f | {"ilv": 64})
    wslice = rowwise_cuda.pipe_slice(spec.row_len // 4, H100_SMS, 64) * 16 if spec.weight is not None else 0
    return bool(f.get("pipe")) and not f.get("ilv") and g["ilv"] == 64 and wslice <= rowwise_cuda.PIPE_SMEM


def _bias_slots_ok(spec: OpSpec, f: dict) -> bool:
    """The grid kernel with a register share and the weight in shared memory, whose bias has room beside it."""
    return not f.get("bcache") and rowwise_cuda.bias_slots(spec, rowwise_cuda.normalise(spec, f | {"bcache": True})) > 0


def _not_welford(spec: OpSpec, f: dict) -> bool:
    """Welford's state is a count/mean/M2 triple, not a sum: accumulator ideas do not apply to it."""
    return spec.op != "layernorm" or f.get("stats") != "welford"


def _boost_if(pred: Callable[[OpSpec, dict], bool], factor: float) -> Callable[[OpSpec, dict], float]:
    return lambda spec, f: factor if pred(spec, f) else 1.0


# ------------------------------------------------------------------------------------------------ rowwise CUDA

ROWWISE_CUDA: list[Idea] = [
    Idea("vec4", MEM, "Load and store each row as 16-byte float4 vectors so every thread moves four floats per "
         "memory instruction (a scalar kernel takes rows whose length is not a multiple of 4 or misaligned "
         "pointers).", {"vec": 4}, 3.0),
    Idea("smem_cache", MEM, "Keep the {rowkb} KiB row in shared memory during the first pass so the later passes "
         "over it read shared memory instead of going back to L2/HBM.", {"cache": "smem"}, 2.5, when=_smem_fits),
    Idea("regs_cache", MEM, "Hold each thread's {rk} elements of the row in registers across all passes "
         "(fully unrolled loop), so every element is read from HBM exactly once.", {"cache": "regs"}, 2.5,
         when=_regs_fit),
    Idea("regs_cache_1024", MEM, "Use 1024-thread blocks and keep each thread's {rk} row elements in registers "
         "across all passes, so the row is read from HBM once without any shared-memory traffic.",
         {"cache": "regs", "threads": 1024}, 1.5,
         when=lambda s, f: _multi(s, f) and rowwise_cuda.regs_per_thread(s, f | {"threads": 1024}) > 0),
    Idea("ldg", MEM, "Read the input through the read-only data cache with __ldg() so repeated passes over the "
         "row hit the non-coherent texture path.", {"load": "ldg"}, 1.0),
    Idea("noalloc", MEM, "Load the row with ld.global.nc.L1::no_allocate so streaming data does not evict useful "
         "lines from L1.", {"load": "noalloc"}, 0.7),
    Idea("ldcs", MEM, "Read the input with evict-first streaming loads (__ldcs): each element is used once, so "
         "it should not displace other data in L2.", {"load": "ldcs"}, 0.8, ops=("sum_lastdim",)),
    Idea("stream_last", MEM, "Use evict-first streaming hints on the last pass: __ldcs() for the final read of the "
         "row and __stcs() for the output, so write-once output does not evict rows still being reused from "
         "L2.", {"stream": True}, 1.2, when=_multi),
    Idea("cluster", MEM, "Give each row to a cluster of {cl} thread blocks on neighbouring SMs: each block keeps "
         "its 1/{cl} share of the {rowkb} KiB row in shared memory and the blocks exchange partial statistics "
         "through distributed shared memory, so a row no single SM can hold is read from HBM only once.",
         {"mapping": "cluster", "cache": "none"}, 3.0, when=_cluster_ok,
         boost=lambda s, f: 3.0 if _multi(s, f) else 0.3),
    Idea("cluster_regs", MEM, "Give each row to a cluster of {cl} thread blocks and keep each thread's {rk} "
         "elements of its block's share in registers (fully unrolled, every load issued before the first use; no "
         "shared-memory copy): the {rowkb} KiB row is read from HBM once, every later pass runs from registers, "
         "and only the blocks' partial statistics cross the cluster through distributed shared memory.",
         {"mapping": "cluster", "cache": "regs", "vec": 4}, 9.0, when=_cluster_regs_ok),
    Idea("cluster_stream", ASYNC, "Give each row to a cluster of 4 blocks whose threads copy their {sslots} "
         "float4 slots of the block's quarter of the {rowkb} KiB row straight into shared memory with cp.async (no "
         "registers), each slot its own commit group, all issued at the start of the row, and fold each slot into "
         "the statistics as soon as its group lands (cp.async.wait_group): the statistics run under the copies "
         "instead of after them, the row is read from HBM once, and its exchange waits on 4 SMs, not 8.",
         _STREAM, 6.0, ops=("log_softmax",) + NORMS, when=_stream_ok),
    Idea("cluster_stream_keep", ASYNC, "Give each row to a cluster of 4 blocks whose threads copy their {sslots} "
         "float4 slots of the block's quarter of the {rowkb} KiB row straight into shared memory with cp.async (no "
         "registers), each slot its own commit group, all issued at the start of the row, and fold each slot into "
         "one online (max, sum) pass as soon as its group lands (cp.async.wait_group), overwriting it with its "
         "exponentials against the thread's running maximum at that slot (kept in a register per slot): the "
         "statistics run under the copies, the row is read from HBM once, its exchange waits on 4 SMs, not 8, and "
         "the write pass scales each slot by exp(slot max - row max) / sum: one exponential per element. Compile "
         "it with --use_fast_math (approximate exponentials and the one division a row: far inside 1e-4).",
         _STREAM | {"stats": "online", "keep_exp": True, "recip": True, "fast_math": True}, 9.0, ops=("softmax",),
         when=_stream_ok),
    Idea("grid_resident", MEM, "Spread each of the {R} rows over the whole GPU: a cooperative launch of one "
         "1024-thread block per SM, each keeping its share of every {rowkb} KiB row in shared memory between the "
         "statistics and the normalisation, publishing its partial statistics to a workspace and merging all of "
         "them after a grid-wide barrier, so a row too long for any cluster is read from HBM once.",
         {"mapping": "grid", "threads": 1024, "vec": 4}, 1.0, when=_grid_ok),
    Idea("grid_weight_regs", MEM, "In the whole-GPU-per-row kernel, read each block's slice of the weight once and "
         "keep it in registers for all {R} rows ({wrk} float4 per thread), so the only per-row traffic is the "
         "input read once, the output written once and the bias from L2.",
         {"mapping": "grid", "threads": 1024, "vec": 4, "wcache": True}, 2.5,
         ops=NORMS, when=lambda s, f: s.weight is not None and rowwise_cuda.weight_regs(s, f | {"threads": 1024}) > 0
         and (f.get("mapping") == "grid" or _grid_ok(s, f))),
    Idea("grid_regs", MEM, "Spread each of the {R} rows over the whole GPU with every block's share of a row held in "
         "registers ({rk} floats a thread, fully unrolled, every load issued before the first use) instead of shared "
         "memory, which then keeps the block's slice of the weight, if the op has one, for all rows: each {rowkb} KiB "
         "row is read from HBM once and the weight once per call.",
         {"mapping": "grid", "cache": "regs", "threads": 1024, "vec": 4, "wcache": True}, 3.0, when=_grid_regs_ok),
    Idea("grid_bias_smem", MEM, "In the whole-GPU-per-row kernel, keep the bias of the first {kb} of each thread's "
         "{slots} register slots in shared memory beside the weight's slice, read once for all {R} rows: the write "
         "pass then reads only the rest of the bias from L2, a dependent load less per slot on every row's critical "
         "path.", {"bcache": True}, 3.0, ops=("layernorm",), when=_bias_slots_ok),
    Idea("grid_pipe", ASYNC, "Replace the whole-GPU kernel's grid barrier by a pipeline inside each 1024-thread "
         "block: 8 producer warps read the block's slice of the next row from HBM and publish its one-pass "
         "statistics (shifted sums for a LayerNorm), one warp merges all blocks' statistics of a row as soon as they "
         "are complete, and 23 consumer warps normalise the current row, reading the slice back from L2 "
         "(evict-first) with the weight's slice and as much of the bias as fits in shared memory and streaming "
         "the output out; the producers stay within two thirds of a row of their consumers so L2 still holds each "
         "{rowkb} KiB row when it is read back: every row is read from HBM once and no SM waits for the others.",
         _PIPE, 9.0, ops=NORMS, when=_grid_pipe_ok),
    Idea("grid_interleave", MEM, "In the pipelined whole-GPU kernel, interleave the blocks' slices of each "
         "{rowkb} KiB row in 1 KiB granules (block b takes granules b, b + #SM, b + 2 #SM, ...; the weight and bias "
         "slices in shared memory follow the same map) instead of one contiguous 1/#SM piece each: at any moment "
         "all producers read, and all consumers write, one narrow window of the row, so HBM serves a few "
         "sequential streams rather than a read and a write stream per SM, far apart.",
         {"ilv": 64}, 9.0, ops=NORMS, when=_interleave_ok),
    Idea("params_evict_last", MEM, "Read the weight and bias under an L2 evict-last cache policy (createpolicy + "
         "ld.global.nc.L2::cache_hint): they are read again for every row, so they should stay in L2 while the "
         "rows stream past them.", {"phint": True}, 1.5, ops=NORMS,
         when=lambda s, f: (s.weight or s.bias) is not None and not f.get("phint")),
    Idea("ilp2", ASYNC, "Unroll the row loops by 2 with independent loads issued before any use (and separate "
         "partial accumulators), doubling the bytes each thread keeps in flight.", {"ilp": 2}, 1.5),
    Idea("ilp4", ASYNC, "Unroll the row loops by 4 with four independent loads in flight per thread and four "
         "partial accumulators merged at the end, to hide HBM latency.", {"ilp": 4}, 1.8),
    Idea("cp_async", ASYNC, "Fill a shared-memory copy of the row with cp.async 16-byte asynchronous copies "
         "(global to shared without passing through registers), then run every pass from shared memory.",
         {"cache": "smem", "vec": 4, "cp_async": True}, 1.5, when=_smem_fits),
    Idea("l2_prefetch", ASYNC, "Make the grid persistent and, while a block reduces its current row, prefetch its "
         "next row into L2 with prefetch.global.L2 so the next first pass finds it on chip.",
         {"l2_prefetch": True, "grid": "persistent"}, 1.0),
    Idea("exp_fast", PREC, "Compute the exponentials with the __expf() hardware intrinsic (ex2.approx, a few ulp: "
         "far inside 1e-4) instead of the full-precision expf().", {"exp": "fast"}, 2.0, ops=SOFTMAXES),
    Idea("exp2", PREC, "Rewrite exp(x - max) as exp2f((x - max) * log2(e)) so each exponential is a multiply and "
         "the native base-2 exponential.", {"exp": "exp2"}, 1.5, ops=SOFTMAXES),
    Idea("fast_math", PREC, "Compile with --use_fast_math (approximate division, square root and exponentials; "
         "denormals flushed): the row statistics stay accurate to ~1e-6.", {"fast_math": True}, 1.2,
         ops=SOFTMAXES + NORMS),
    Idea("rsqrt", PREC, "Use the rsqrtf() intrinsic for 1/sqrt(var + eps) instead of a division and a "
         "correctly-rounded square root.", {"rsqrt": True}, 0.8, ops=NORMS),
    Idea("welford", PREC, "Compute mean and variance with Welford's update per thread, merged across threads with "
         "Chan's formula: a single pass over the row with no cancellation.", {"stats": "welford"}, 1.5,
         ops=("layernorm",)),
    Idea("double_acc", PREC, "Accumulate the per-thread partial sums in double precision and round to float once "
         "per row, so a {N}-element sum loses no low-order bits.", {"accum": "double"}, 0.6, ops=SUMMED,
         when=_not_welford),
    Idea("kahan", PREC, "Use Kahan compensated summation for the per-thread partial sums (and when merging them), "
         "keeping the accuracy of long rows at float cost.", {"accum": "kahan"}, 0.6, ops=SUMMED,
         when=_not_welford),
    Idea("float_acc", PREC, "Accumulate the row sum in float instead of double: no float-to-double conversions "
         "(the result may then differ from torch's by a few 1e-4 when a row sums to nearly zero).",
         {"accum": "float"}, 0.5, ops=("sum_lastdim",)),
    Idea("online", COMP, "Fuse the max and sum-of-exp passes into one online pass that keeps a running max and "
         "rescales the running sum (a float4 shares one rescale), removing one full read of the row.",
         {"stats": "online"}, 3.0, ops=SOFTMAXES),
    Idea("shifted", COMP, "Compute mean and variance in one pass as sums of (x - x0) and (x - x0)^2, shifted by the "
         "row's first element so there is no cancellation, instead of a separate variance pass.",
         {"stats": "shifted"}, 2.5, ops=("layernorm",)),
    Idea("keep_exp", COMP, "With the row held in registers, let the sum pass overwrite each element with its "
         "exponential exp(x - max) (in the online pass, max is the thread's own maximum of its cached elements, "
         "taken first, and the scale exp(thread max - row max) / sum is one per thread), so the write pass "
         "multiplies instead of computing all {N} exponentials of the row a second time.",
         {"keep_exp": True, "cache": "regs", "recip": True}, 2.0,
         ops=("softmax",), when=_keep_exp_ok),
    Idea("recip", COMP, "Compute 1/sum once per row and multiply every output by it instead of dividing each "
         "element.", {"recip": True}, 1.5, ops=("softmax",)),
    Idea("fma_apply", COMP, "Fold the normalisation into two FMAs per element: y = fma(fma(x, rstd, -mean*rstd), "
         "w, b) with -mean*rstd computed once per row.", {"fma_apply": True}, 1.0, ops=("layernorm",)),
    Idea("idx32", COMP, "Use 32-bit index arithmetic inside rows (64-bit only for the row base; a 64-bit fallback "
         "kernel for rows of 2^30 elements or more) to cut integer instructions in the loops.", {"idx32": True},
         0.8),
    Idea("threads128", PAR, "Use 128-thread blocks so more rows are resident per SM and reductions need fewer "
         "steps.", {"threads": 128}, 0.8),
    Idea("threads512", PAR, "Use 512-thread blocks so each row gets more threads and bytes in flight.",
         {"threads": 512}, 1.0),
    Idea("threads1024", PAR, "Use 1024-thread blocks: one block per row keeps the most loads in flight for long "
         "rows of {N} elements.", {"threads": 1024}, 1.0, boost=lambda s, f: 1.5 if s.row_len >= 16384 else 0.5),
    Idea("warp_rows", PAR, "Map one warp to each row and reduce with warp shuffles only (no shared memory, no "
         "__syncthreads), {wpb} rows per block: rows of {N} elements are too short to keep a whole block busy.",
         {"mapping": "warp"}, 2.0, when=_short_rows),
    Idea("split_rows", PAR, "Split each row across several blocks so all SMs work ({R} rows alone would occupy "
         "only {R} blocks): each block reduces a chunk into a partial state in a workspace, a second kernel "
         "merges them per row and writes the output.", {"mapping": "split"}, 1.0,
         boost=_boost_if(_few_rows, 20.0)),
    Idea("persistent1", PAR, "Launch a persistent grid of one block per SM that loops over rows, so blocks never "
         "retire and relaunch and there is no tail wave.", {"grid": "persistent", "bps": 1}, 0.8),
    Idea("persistent2", PAR, "Launch a persistent grid of two blocks per SM that loops over rows: one block's "
         "reduction barriers overlap the other's loads.", {"grid": "persistent", "bps": 2}, 1.2),
    Idea("persistent4", PAR, "Launch a persistent grid of four blocks per SM looping over rows, for more "
         "independent rows in flight per SM.", {"grid": "persistent", "bps": 4}, 0.8),
    Idea("stream_three_blocks", PAR, "Use 512-thread blocks under __launch_bounds__(512, 3) in the streamed "
         "cluster: three of the {cl} blocks' shares fill an SM's shared memory, and capping the registers at 40 a "
         "thread keeps all three resident (1536 threads, 24 KiB of copies each in flight), where 256-thread blocks "
         "leave half the SM's threads idle.", {"threads": 512, "launch_min": 3}, 2.5, when=_stream_three_ok),
    Idea("launch_bounds2", PAR, "Add __launch_bounds__({T}, 2) so the compiler caps registers to keep at least two "
         "blocks resident per SM.", {"launch_min": 2}, 0.8),
    Idea("shuffle_reduce", CTRL, "Replace the shared-memory tree reduction (log2({T}) barrier steps) with warp "
         "shuffles: a butterfly within each warp, one shared-memory exchange of the per-warp partials, two "
         "barriers in total.", {"reduce": "shuffle"}, 2.0),
    Idea("unroll", CTRL, "Add #pragma unroll 4 to the strided row loops so the compiler overlaps iterations.",
         {"unroll": True}, 0.6),
    Idea("lastblock", CTRL, "Split each row across blocks and finish in the same kernel: every block publishes its "
         "partial sum, and the last block to arrive (atomic ticket after __threadfence) adds the partials and "
         "writes the result, saving the second launch.", {"mapping": "split", "finish": "lastblock"}, 1.5,
         ops=("sum_lastdim",), boost=_boost_if(_few_rows, 5.0)),
    Idea("rows_grid", CTRL, "Go back to one block per row (a grid of {R} blocks) instead of looping over rows in a "
         "persistent grid, letting the hardware scheduler balance the rows.", {"grid": "rows"}, 0.5,
         when=lambda s, f: f.get("grid") == "persistent"),
]

# ------------------------------------------------------------------------------------------------ rowwise C

ROWWISE_C: list[Idea] = [
    Idea("omp_rows", PAR, "Process rows in parallel with an OpenMP parallel-for over rows (static schedule): "
         "each core takes a contiguous band of rows.", {"par": "rows"}, 4.0),
    Idea("split_rows", PAR, "Split every row into {chunk}-element chunks processed in parallel, with per-chunk "
         "partial statistics merged per row: {R} rows alone cannot keep every core busy.", {"par": "split"}, 1.0,
         boost=_boost_if(lambda s, f: s.rows < 64, 8.0)),
    Idea("sched_dynamic", PAR, "Hand rows to threads dynamically (schedule(dynamic, 1)) so a core that finishes "
         "early takes the next row.", {"par": "rows", "schedule": "dynamic"}, 0.8),
    Idea("sched_guided", PAR, "Use a guided schedule over rows: big row batches first, smaller ones at the end to "
         "balance the tail.", {"par": "rows", "schedule": "guided"}, 0.7),
    Idea("sched_cyclic", PAR, "Interleave rows across threads (schedule(static, 1)) so neighbouring rows run on "
         "different cores at the same time.", {"par": "rows", "schedule": "static1"}, 0.4),
    Idea("bind_close", PAR, "Pin OpenMP threads close together (proc_bind(close)) so threads stay on their cores "
         "and caches.", {"proc_bind": "close"}, 0.5, when=lambda s, f: f.get("par") != "serial"),
    Idea("bind_spread", PAR, "Spread OpenMP threads across the machine (proc_bind(spread)) to use every memory "
         "channel.", {"proc_bind": "spread"}, 0.4, when=lambda s, f: f.get("par") != "serial"),
    Idea("if_parallel", CTRL, "Fork the OpenMP team only when the tensor holds more than 32K elements (an if "
         "clause), so small calls skip the fork/join cost.", {"if_parallel": True}, 0.5,
         when=lambda s, f: f.get("par") != "serial"),
    Idea("simd", COMP, "Vectorise the row reductions and the output loop with #pragma omp simd (reduction "
         "clauses), which lets GCC reassociate the float sums and maxima into SIMD lanes.", {"simd": True}, 3.0),
    Idea("accs4", COMP, "Break the floating-point add dependency chain with 4 independent accumulators per "
         "reduction (manually unrolled), merged at the end of the row.", {"accs": 4}, 1.5),
    Idea("accs8", COMP, "Use 8 independent accumulators per reduction so 8 adds are in flight each cycle.",
         {"accs": 8}, 1.2),
    Idea("exp_poly", PREC, "Replace libm expf with an inlined Cephes-style polynomial exp (about 1 ulp, "
         "branch-free) so the exponential loops vectorise.", {"exp": "poly"}, 2.5, ops=SOFTMAXES),
    Idea("online", COMP, "Fuse max and sum-of-exp into one pass over L1-sized tiles of {tile} elements: tile max, "
         "rescale the running sum, then add the tile's exponentials while it is still in L1.",
         {"stats": "online"}, 2.0, ops=SOFTMAXES),
    Idea("store_exp", COMP, "Store exp(x - max) into the output during the sum pass and rescale it in place, so "
         "the last pass multiplies cache-hot outputs instead of recomputing every exponential.",
         {"store_exp": True}, 1.5, ops=("softmax",)),
    Idea("recip", COMP, "Compute 1/sum once per row and multiply instead of dividing every element.",
         {"recip": True}, 1.0, ops=("softmax",)),
    Idea("shifted", COMP, "Compute mean and variance in one pass as sums of (x - x0) and (x - x0)^2, shifted by "
         "the row's first element to avoid cancellation, instead of two passes.", {"stats": "shifted"}, 2.0,
         ops=("layernorm",)),
    Idea("welford", PREC, "Compute mean and variance blockwise: exact two-pass statistics per {tile}-element tile "
         "while it sits in L1, merged into running (count, mean, M2) with Chan's formula.",
         {"stats": "welford"}, 1.0, ops=("layernorm",)),
    Idea("fma_apply", COMP, "Normalise with two FMAs per element: y = fma(fma(x, rstd, -mean*rstd), w, b).",
         {"fma_apply": True}, 0.8, ops=("layernorm",)),
    Idea("double_acc", PREC, "Accumulate the row sums in double precision and round once per row.",
         {"accum": "double"}, 0.6, ops=SUMMED, when=_not_welford),
    Idea("kahan", PREC, "Use Kahan compensated summation for the row sums so long rows keep float accuracy "
         "(costs vectorisation of the sums).", {"accum": "kahan"}, 0.4, ops=SUMMED, when=_not_welford),
    Idea("float_acc", PREC, "Accumulate the row sums in float instead of double so the sum loop runs twice as many "
         "lanes per SIMD instruction (blocked partial sums keep the error small).", {"accum": "float"}, 0.6,
         ops=("sum_lastdim",)),
    Idea("restrict", MEM, "Declare the input, output and weight pointers restrict so the compiler knows they never "
         "alias and can vectorise and keep loads in registers.", {"restrict": True}, 1.2),
    Idea("prefetch64", ASYNC, "Software-prefetch 64 elements (four cache lines) ahead in every row loop with "
         "__builtin_prefetch.", {"prefetch": 64}, 0.6),
    Idea("prefetch256", ASYNC, "Software-prefetch 256 elements (1 KiB) ahead in the row loops so memory latency is "
         "covered by the work on the current lines.", {"prefetch": 256}, 0.6),
    Idea("nt_store", MEM, "Write the output with non-temporal streaming stores (_mm_stream_ps): written once, it "
         "should not take a read-for-ownership nor evict the row being processed.", {"nt_store": True}, 0.8,
         when=_multi),
    Idea("unroll4", CTRL, "Ask GCC to unroll the row loops by 4 (#pragma GCC unroll 4).", {"unroll": 4}, 0.5),
    Idea("unroll8", CTRL, "Ask GCC to unroll the row loops by 8 (#pragma GCC unroll 8).", {"unroll": 8}, 0.4),
    Idea("tile256", CTRL, "Use 256-element tiles for the fused single pass so each tile stays in L1 between its two "
         "sweeps.", {"tile": 256}, 0.5, when=lambda s, f: f.get("stats") in ("online", "welford")),
    Idea("tile4096", CTRL, "Use 4096-element tiles for the fused single pass, fewer rescale steps per row.",
         {"tile": 4096}, 0.5, when=lambda s, f: f.get("stats") in ("online", "welford")),
    Idea("chunk16k", CTRL, "Split rows into 16K-element chunks so there are more parallel tasks per row.",
         {"chunk": 16384}, 0.5, when=lambda s, f: f.get("par") == "split"),
    Idea("chunk256k", CTRL, "Split rows into 256K-element chunks so each task streams a long contiguous range.",
         {"chunk": 262144}, 0.5, when=lambda s, f: f.get("par") == "split"),
]

# ------------------------------------------------------------------------------------------------ elementwise CUDA

ELEMENTWISE_CUDA: list[Idea] = [
    Idea("vec4", MEM, "Vectorise global loads and stores to 16-byte float4 accesses so each thread moves 4 "
         "elements per instruction (scalar tail for the last n % 4, scalar kernel for misaligned pointers).",
         {"vec": 4}, 3.0),
    Idea("vec2", MEM, "Use 8-byte float2 loads and stores so each thread moves 2 elements per instruction.",
         {"vec": 2}, 1.0),
    Idea("ldg", MEM, "Read the input through the read-only data cache with __ldg().", {"load": "ldg"}, 0.8),
    Idea("ldcs", MEM, "Load with evict-first streaming hints (__ldcs): each input element is read once, so it "
         "should not displace other lines in L2.", {"load": "ldcs"}, 1.0),
    Idea("noalloc", MEM, "Load with ld.global.nc.L1::no_allocate so the streamed input never allocates L1 lines.",
         {"load": "noalloc"}, 0.8),
    Idea("stcs", MEM, "Write the output with streaming stores (__stcs, evict-first): written once, never re-read "
         "by this kernel.", {"store": "stcs"}, 1.0),
    Idea("restrict", MEM, "Mark the input and output pointers __restrict__ so the compiler may use the "
         "non-coherent load path and reorder loads ahead of stores.", {"restrict": True}, 0.8),
    Idea("ept2", ASYNC, "Have each thread handle 2 vectors per tile, issuing both loads before computing, to keep "
         "more bytes in flight per thread.", {"ept": 2}, 1.5),
    Idea("ept4", ASYNC, "Have each thread issue 4 independent vector loads per tile before any compute (memory-"
         "level parallelism), then compute and store all 4.", {"ept": 4}, 2.0),
    Idea("ept8", ASYNC, "Have each thread keep 8 independent vector loads in flight per tile.", {"ept": 8}, 1.0),
    Idea("pipeline", ASYNC, "Use a persistent grid-stride loop that double-buffers in registers: load the next "
         "tile before computing and storing the current one.", {"grid": "persistent", "pipeline": True}, 1.2),
    Idea("l2_prefetch", ASYNC, "Use a persistent grid-stride loop that prefetches the tile after the next one into "
         "L2 (prefetch.global.L2) while working on the current one.",
         {"grid": "persistent", "l2_prefetch": True}, 0.8),
    Idea("gelu_normcdf", PREC, "Compute GELU as x * normcdff(x), the CUDA normal CDF, instead of "
         "0.5 * x * (1 + erff(x / sqrt(2))).", {"gelu": "normcdf"}, 1.0, ops=("gelu",)),
    Idea("fast_math", PREC, "Compile with --use_fast_math: approximate division and flush-to-zero denormals for the "
         "GELU arithmetic (erf stays accurate to a few ulp).", {"fast_math": True}, 0.8, ops=("gelu",)),
    Idea("gelu_fma", COMP, "Evaluate GELU as fmaf(0.5x, erff(x/sqrt(2)), 0.5x): one multiply and one FMA around "
         "the erf.", {"gelu": "fma"}, 1.0, ops=("gelu",)),
    Idea("idx32", COMP, "Use 32-bit index arithmetic (a 64-bit kernel takes tensors of 2^30 elements or more) to "
         "halve the integer instructions per element.", {"idx32": True}, 0.8),
    Idea("threads128", PAR, "Use 128-thread blocks: more, smaller blocks spread over the SMs evenly.",
         {"threads": 128}, 0.7),
    Idea("threads512", PAR, "Use 512-thread blocks for fewer, larger blocks.", {"threads": 512}, 0.8),
    Idea("threads1024", PAR, "Use 1024-thread blocks, the fewest blocks for the {mb} MiB stream.", {"threads": 1024},
         0.5),
    Idea("persistent2", PAR, "Launch a persistent grid of 2 blocks per SM that strides over the tensor instead of "
         "one block per tile.", {"grid": "persistent", "bps": 2}, 0.8),
    Idea("persistent4", PAR, "Launch a persistent grid of 4 blocks per SM that strides over the tensor.",
         {"grid": "persistent", "bps": 4}, 1.0),
    Idea("persistent8", PAR, "Launch a persistent grid of 8 blocks per SM that strides over the tensor.",
         {"grid": "persistent", "bps": 8}, 1.0),
    Idea("persistent16", PAR, "Launch a persistent grid of 16 blocks per SM that strides over the tensor.",
         {"grid": "persistent", "bps": 16}, 0.6),
    Idea("launch_bounds2", PAR, "Add __launch_bounds__({T}, 2) to cap registers for at least two resident blocks "
         "per SM.", {"launch_min": 2}, 0.5),
    Idea("launch_bounds4", PAR, "Add __launch_bounds__({T}, 4) to cap registers for at least four resident blocks "
         "per SM.", {"launch_min": 4}, 0.5),
    Idea("full_tiles", CTRL, "Give full tiles a branch-free path (no per-element bounds checks) and keep the "
         "guarded path only for the last partial tile.", {"full_tiles": True}, 1.0),
    Idea("exact_grid", CTRL, "Size the grid to the data again (one tile per block) instead of a persistent loop, "
         "so no block loops.", {"grid": "exact"}, 0.5, when=lambda s, f: f.get("grid") == "persistent"),
]

# ------------------------------------------------------------------------------------------------ elementwise C

ELEMENTWISE_C: list[Idea] = [
    Idea("omp", PAR, "Parallelise the loop over elements with an OpenMP parallel-for (static schedule): every core "
         "streams its own contiguous share.", {"par": "omp"}, 4.0),
    Idea("manual_ranges", PAR, "Open one OpenMP parallel region and give each thread a contiguous range cut at "
         "64-byte boundaries, so no cache line of the output is written by two threads.", {"par": "manual"}, 1.0),
    Idea("dynamic_tiles", PAR, "Hand out 16K-element tiles dynamically (schedule(dynamic)) so faster cores take "
         "more tiles.", {"par": "omp", "schedule": "dynamic", "tile": 16384}, 0.8),
    Idea("guided_tiles", PAR, "Hand out tiles with a guided schedule: large batches first, small ones to balance "
         "the end.", {"par": "omp", "schedule": "guided", "tile": 16384}, 0.6),
    Idea("bind_close", PAR, "Pin OpenMP threads close together (proc_bind(close)).", {"proc_bind": "close"}, 0.4,
         when=lambda s, f: f.get("par") != "serial"),
    Idea("bind_spread", PAR, "Spread OpenMP threads across the machine (proc_bind(spread)) to use every memory "
         "channel.", {"proc_bind": "spread"}, 0.4, when=lambda s, f: f.get("par") != "serial"),
    Idea("if_parallel", CTRL, "Fork the OpenMP team only for tensors of more than 32K elements (if clause), so small "
         "calls skip the fork/join.", {"if_parallel": True}, 0.5, when=lambda s, f: f.get("par") != "serial"),
    Idea("simd", COMP, "Vectorise the element loop with #pragma omp simd so the formula runs in SIMD registers.",
         {"simd": True}, 3.0),
    Idea("gelu_poly", COMP, "Replace libm erff with the Abramowitz-Stegun 7.1.26 rational approximation "
         "(|error| <= 1.5e-7, branch-free) so the GELU loop can vectorise.", {"gelu": "poly"}, 2.0, ops=("gelu",)),
    Idea("gelu_poly_exp", COMP, "Use a polynomial erf and an inlined polynomial exp (no libm calls at all) so the "
         "whole GELU loop vectorises.", {"gelu": "poly_exp"}, 2.5, ops=("gelu",)),
    Idea("gelu_fma", COMP, "Evaluate GELU as fmaf(0.5x, erff(x/sqrt(2)), 0.5x).", {"gelu": "fma"}, 0.6,
         ops=("gelu",)),
    Idea("gelu_double", PREC, "Evaluate GELU in double precision (erf on doubles) and round once, for results "
         "within half an ulp of exact.", {"gelu": "double"}, 0.3, ops=("gelu",)),
    Idea("restrict", MEM, "Declare the pointers restrict so the compiler knows input and output never alias and "
         "can vectorise without runtime overlap checks.", {"restrict": True}, 1.5),
    Idea("aligned", MEM, "When both pointers are 64-byte aligned (torch's allocations are), tell the compiler "
         "with __builtin_assume_aligned so it emits aligned vector moves and no peeling.", {"aligned": True}, 0.7),
    Idea("prefetch64", ASYNC, "Software-prefetch 64 elements (four cache lines) ahead with __builtin_prefetch.",
         {"prefetch": 64}, 0.5),
    Idea("prefetch512", ASYNC, "Software-prefetch 512 elements (2 KiB) ahead so DRAM latency is covered.",
         {"prefetch": 512}, 0.5),
    Idea("batch8", ASYNC, "Process elements in batches of 8 held in a small local array: 8 loads back to back, "
         "then 8 evaluations, then 8 stores, so loads overlap the arithmetic.", {"batch": 8}, 0.6),
    Idea("batch32", ASYNC, "Process elements in batches of 32 (load all, compute all, store all) to keep many "
         "independent loads in flight per core.", {"batch": 32}, 0.5),
    Idea("nt_store", MEM, "Write the output with non-temporal streaming stores (_mm_stream_ps), avoiding the "
         "read-for-ownership of output lines and cache pollution.", {"nt_store": True}, 1.0),
    Idea("tile4k", CTRL, "Block the loop into 4096-element tiles (16 KiB, L1-sized) handed to threads whole.",
         {"tile": 4096}, 0.6),
    Idea("tile16k", CTRL, "Block the loop into 16K-element tiles (64 KiB, L2-friendly) handed to threads whole.",
         {"tile": 16384}, 0.6),
    Idea("tile64k", CTRL, "Block the loop into 64K-element tiles so each task is a long contiguous stream.",
         {"tile": 65536}, 0.5),
    Idea("unroll4", CTRL, "Ask GCC to unroll the element loop by 4 (#pragma GCC unroll 4).", {"unroll": 4}, 0.5),
    Idea("unroll8", CTRL, "Ask GCC to unroll the element loop by 8 (#pragma GCC unroll 8).", {"unroll": 8}, 0.4),
]

# ------------------------------------------------------------------------------------------------ matmul CUDA


def _algo(*algos: str) -> Callable[[OpSpec, dict], bool]:
    return lambda spec, f: f.get("algo") in algos


def _mma_precision(*precisions: str) -> Callable[[OpSpec, dict], bool]:
    """An mma.sync kernel (matmul or convolution) of one of these precisions."""
    return lambda spec, f: f.get("algo") == "mma" and f.get("precision") in precisions


# A first tensor-core port in the usual shape for float32 inputs on sm_80+: 128x256x32 block tiles of eight 64x64
# warp tiles, three cp.async stages (measured on the H200 at 4096^2, 3xTF32: 1.85 ms, against 2.0-2.6 ms for
# 128x128 tiles with two stages)
_TENSOR_CORES = {"algo": "mma", "bm": 128, "bn": 256, "bk": 32, "wm": 2, "wn": 4, "vec": 4, "cp_async": True,
                 "stages": 3, "pad": 4}

def _gemv_parent(spec: OpSpec, f: dict) -> bool:
    return f.get("algo") == "gemv"


MATMUL_CUDA: list[Idea] = [
    Idea("gemv", MEM, "Compute the product as the matrix-vector product it is (N = 1): one block of {T} threads per "
         "row of A streams the row once with float4 loads (evict-first, it is never reused) while the vector stays "
         "in cache, and reduces the row's dot product with warp shuffles; GEMM tiles would compute 63 wasted "
         "columns of every 64.", {"algo": "gemv", "gthreads": 256, "vec": 4}, 6.0,
         when=lambda s, f: matmul_cuda.gemv_ok(s) and f.get("algo") != "gemv"),
    Idea("gemv_threads512", PAR, "Give each row of A 512 threads: twice the loads in flight per row, for rows of "
         "{K} values.", {"gthreads": 512}, 1.2, when=lambda s, f: _gemv_parent(s, f) and f.get("gthreads") != 512),
    Idea("gemv_threads1024", PAR, "Give each row of A 1024 threads, the most a block holds.", {"gthreads": 1024},
         0.8, when=lambda s, f: _gemv_parent(s, f) and f.get("gthreads") != 1024),
    Idea("gemv_threads128", PAR, "Give each row of A 128 threads, so more rows' blocks are resident per SM.",
         {"gthreads": 128}, 0.8, when=lambda s, f: _gemv_parent(s, f) and f.get("gthreads") != 128),
    Idea("smem_tiles", MEM, "Stage {tile}x{tile} tiles of A and B in shared memory, one output per thread, so each "
         "value read from HBM serves {tile} multiply-adds instead of one.", {"algo": "smem", "tile": 32}, 3.0,
         when=_algo("naive")),
    Idea("register_block", COMP, "Give each thread an {tm}x{tn} tile of C in registers under {bm}x{bn}x{bk} block "
         "tiles in shared memory (A stored transposed, so a thread's rows are one vector read): every value read "
         "from shared memory feeds {tn} multiply-adds.",
         {"algo": "simt", "bm": 128, "bn": 128, "bk": 8, "tm": 8, "tn": 8}, 3.0, when=_algo("naive", "smem")),
    Idea("tensor_3xtf32", PREC, "Move the multiply-adds onto tensor cores (mma.sync m16n8k8 TF32 instructions, "
         "{T} threads, warp tiles of {wtm}x{wtn}) and keep float32 accuracy with the 3xTF32 split: each operand "
         "becomes a TF32 high part plus a TF32 remainder and three products (hi*hi + hi*lo + lo*hi) replace one.",
         _TENSOR_CORES | {"precision": "3xtf32"}, 3.5, when=_algo("naive", "smem", "simt")),
    Idea("tensor_3xtf32_tiles", PREC, "Move the multiply-adds onto tensor cores keeping the sum within 1e-4 of the "
         "exact product: 3xTF32 mma.sync m16n8k8 products (each operand a TF32 high part plus a TF32 remainder, "
         "hi*hi + hi*lo + lo*hi) over {bm}x{bn}x{bk} block tiles of {T} threads with three cp.async stages, and each "
         "K tile's products summed in fresh registers, then added to the running sums with round-to-nearest float "
         "adds: the tensor core's truncating accumulation stays within {bk} taps and each output's float chain is "
         "K/{bk} adds long instead of {K}.",
         _TENSOR_CORES | {"precision": "3xtf32", "acc": "tile", "bn": 128}, 1.0, when=_algo("naive", "smem", "simt")),
    Idea("tensor_tf32", PREC, "Run the multiply-adds on TF32 tensor cores with one product per fragment pair (a "
         "10-bit mantissa: about 3x the 3xTF32 throughput, but errors near 1e-3 that a 1e-4 tolerance rejects).",
         _TENSOR_CORES | {"precision": "tf32"}, 0.7, when=_algo("naive", "smem", "simt")),
    Idea("drop_to_tf32", PREC, "Drop the 3xTF32 correction terms and multiply the TF32 high parts only: a third "
         "of the tensor-core work, at TF32 accuracy (fails 1e-4, passes 1e-2).", {"precision": "tf32"}, 0.6,
         when=_mma_precision("3xtf32", "tf32bf16", "tf32f16", "f16x3")),
    Idea("bf16_corrections", PREC, "Keep the TF32 product of the high parts, and compute both 3xTF32 correction "
         "products (hi*lo + lo*hi) in one bfloat16 mma.sync m16n8k16 whose 16-deep K concatenates each tap's high "
         "and low part (A's pairs (hi, lo), B's (lo, hi)): two tensor-core instructions per fragment pair instead of "
         "three, and a bfloat16 product runs at twice TF32's rate. Rounding the parts to bfloat16 costs up to about "
         "2^-18 of |a*b| per tap (3xTF32: 2^-22): inside the default tolerance, though over thousands of taps the "
         "outputs near zero miss 1e-4.", {"precision": "tf32bf16"}, 2.0,
         when=_mma_precision("3xtf32")),
    Idea("f16_corrections", PREC, "Scale A and B by powers of two (a first pass finds each matrix's largest "
         "magnitude) so every high and low part of the 3xTF32 split lies in float16's range, keep the TF32 product "
         "of the high parts and compute both corrections (hi*lo + lo*hi) in one float16 mma.sync m16n8k16 whose "
         "16-deep K concatenates each tap's parts (A's pairs (hi, lo), B's (lo, hi)): float16 holds TF32's 11 "
         "significant bits, so the high parts convert exactly and the low parts keep 3xTF32's precision "
         "(float32-accurate, where bfloat16's 8 bits are not) with two tensor-core instructions per fragment pair "
         "instead of three; the scales are undone on the accumulators.", {"precision": "tf32f16"}, 2.5,
         when=_mma_precision("3xtf32", "tf32bf16")),
    Idea("f16_products", PREC, "Multiply the high parts in float16 too: on the power-of-two scaled operands every "
         "high part is itself a float16 value, so pairing two 8-tap steps' high parts in each float16 fragment (the "
         "pair's even k from the first step, its odd k from the second) lets one m16n8k16 product take 16 taps' "
         "hi*hi where TF32 takes two m16n8k8: three float16 tensor-core instructions per 16 taps instead of four, "
         "the same float32 accuracy.", {"precision": "f16x3"}, 2.5,
         when=_mma_precision("tf32f16")),
    Idea("f16_three_products", PREC, "Scale A and B by powers of two (a first pass finds each matrix's largest "
         "magnitude) so that every part of the 3xTF32 split is a float16 value (the high parts exactly, the low "
         "parts to 11 bits as TF32 keeps them), and compute all three products in float16 mma.sync m16n8k16: hi*hi "
         "over 16 taps (each fragment pairs two 8-tap steps' high parts) and hi*lo + lo*hi for each step (A's pairs "
         "(hi, lo), B's (lo, hi)); three float16 instructions per 16 taps, float32-accurate, the scales undone on "
         "the accumulators.", {"precision": "f16x3"}, 1.5,
         when=_mma_precision("3xtf32", "tf32bf16")),
    Idea("split_once", COMP, "Split each operand once, before the product, instead of in every block that reads it "
         "(each of A's values {nb} times): after the absmax pass, a pass writes A's scaled float16 high and low parts "
         "and B's, transposed so that both tiles are rows along K, and the main loop copies float16 tiles with "
         "cp.async and loads each fragment with one ldmatrix: per 16 taps a warp issues its fragment loads and the "
         "three m16n8k16 products and nothing else. The same parts and products, so the same accuracy; a workspace "
         "as large as A and B.", {"split": "once"}, 2.0,
         when=lambda s, f: _mma_precision("f16x3")(s, f) and f.get("split") != "once" and bool(f.get("cp_async"))),
    Idea("step_sums", PREC, "Add each fragment pair's 16-tap products to the running sums as soon as they are "
         "made, with round-to-nearest float adds from a four-register scratch, instead of fresh per-tile sums in a "
         "second set of accumulators: the tensor core's truncating accumulation still stays within 16 taps, and "
         "the registers the second set held are free.", {"acc": "step"}, 1.5,
         when=lambda s, f: _mma_precision("f16x3")(s, f) and f.get("acc") == "tile"),
    Idea("tile_sums", PREC, "Accumulate each K tile's tensor-core products in fresh registers and add them to the "
         "running sums with ordinary round-to-nearest float adds: the tensor core truncates as it accumulates, and "
         "over K = {K} those truncations add up to errors far above float32's.", {"acc": "tile"}, 1.5,
         when=lambda s, f: f.get("algo") in ("mma", "wgmma") and f.get("acc") != "tile"),
    Idea("vec4", MEM, "Load the A and B tiles with 16-byte float4 vector loads (a scalar-load kernel takes "
         "operands whose K or N is not a multiple of 4).", {"vec": 4}, 2.0,
         when=lambda s, f: f.get("algo") == "simt" or (f.get("algo") == "mma" and not f.get("cp_async"))),
    Idea("double_buffer", ASYNC, "Double-buffer the shared-memory tiles: load the next K tile into registers while "
         "the current one is multiplied, then store it to the other buffer, one barrier per tile.",
         {"buffer": 2}, 2.0, when=_algo("simt")),
    Idea("cp_async", ASYNC, "Copy the tiles global to shared with cp.async 16-byte asynchronous copies (zero-filled "
         "past the matrix edges) in a two-stage pipeline, so the next tile streams in while tensor cores work on "
         "this one, without passing through registers.", {"cp_async": True, "vec": 4, "stages": 2}, 2.0,
         when=lambda s, f: f.get("algo") == "mma" and not f.get("cp_async")),
    Idea("stages3", ASYNC, "Deepen the cp.async pipeline to three stages: two K tiles are in flight while the third "
         "is multiplied, hiding HBM latency behind more math.", {"stages": 3, "cp_async": True, "vec": 4}, 1.5,
         when=lambda s, f: f.get("algo") == "mma" and f.get("stages", 1) < 3),
    Idea("pad_smem", MEM, "Pad the shared-memory rows (A's by four floats, and B's by eight on tensor cores), "
         "so the rows a warp reads at once start in different banks and its loads stop conflicting.", {"pad": 4}, 1.2,
         when=lambda s, f: f.get("algo") in ("simt", "mma") and not f.get("pad")),
    Idea("raster8", PAR, "Launch the blocks in groups of 8 block-rows (grouped ordering): blocks running together "
         "share A's row panels and B's column panels, so those come from L2 instead of HBM.", {"raster": 8}, 1.2,
         when=_algo("simt", "mma")),
    Idea("tile_256x128", PAR, "Grow the block tile to 256x128 with 8 warps of 64x64: more multiply-adds per "
         "value loaded into shared memory, fewer blocks.", {"bm": 256, "bn": 128, "wm": 4, "wn": 2}, 1.0,
         when=_algo("mma")),
    Idea("tile_128x64", PAR, "Shrink the block tile to 128x64 with 4 warps: less shared memory per block, so more "
         "blocks are resident per SM to hide latency.", {"bm": 128, "bn": 64, "wm": 2, "wn": 2}, 0.8,
         when=_algo("mma")),
    Idea("warps_4x2", PAR, "Arrange the 8 warps 4x2 instead of 2x4 (warp tiles of {wtm}x{wtn}), changing how "
         "many A and B fragments each warp reloads per K step.", {"wm": 4, "wn": 2}, 0.7,
         when=lambda s, f: f.get("algo") == "mma" and f.get("wm") != 4),
    Idea("tile_64x64", PAR, "Use 64x64 block tiles with 8x8 thread tiles: four times as many blocks, for matrices "
         "too small to fill every SM with 128x128 tiles.", {"bm": 64, "bn": 64}, 0.8, when=_algo("simt"),
         boost=lambda s, f: 3.0 if s.mnk[0] * s.mnk[1] < 132 * 128 * 128 else 0.5),
    Idea("bk16", CTRL, "Deepen the K tile to 16, so each pair of barriers covers twice the multiply-adds.",
         {"bk": 16}, 1.0, when=lambda s, f: f.get("algo") == "simt" and f.get("bk") == 8),
    Idea("bk16_tc", CTRL, "Halve the K tile to 16: half the shared memory per stage, so more stages or blocks fit.",
         {"bk": 16}, 0.5, when=lambda s, f: f.get("algo") == "mma" and f.get("bk") == 32),
    Idea("launch_bounds2", PAR, "Add __launch_bounds__({T}, 2) so the compiler keeps registers low enough for two "
         "resident blocks per SM.", {"launch_min": 2}, 0.6, when=_algo("simt")),
    Idea("raster16", PAR, "Launch the blocks in groups of 16 block-rows: a wider band of A's row panels shares each "
         "column panel of B while it is in L2.", {"raster": 16}, 0.6,
         when=lambda s, f: f.get("algo") in ("simt", "mma", "wgmma") and f.get("raster") != 16),
    Idea("warps_2x2", PAR, "Use four warps with 64x64 warp tiles: each warp reuses every A fragment over eight B "
         "fragments, at the cost of fewer warps to hide latency.", {"wm": 2, "wn": 2}, 0.6,
         when=lambda s, f: f.get("algo") == "mma" and (f.get("wm"), f.get("wn")) != (2, 2)),
    Idea("tile_64x64_tc", PAR, "Use 64x64 block tiles of four warps on the tensor cores: four times the blocks of "
         "128x128 tiles, for products too small to give every SM a tile.", {"bm": 64, "bn": 64, "wm": 2, "wn": 2},
         0.5, when=_algo("mma"), boost=lambda s, f: 3.0 if s.mnk[0] * s.mnk[1] < 132 * 128 * 128 else 0.5),
    Idea("thread_tile_8x4", COMP, "Make each thread's register tile 8x4 (eight rows, one float4 of columns): half "
         "the accumulators, so more threads per block fit in the register file.", {"tm": 8, "tn": 4}, 0.5,
         when=lambda s, f: f.get("algo") == "simt" and (f.get("tm"), f.get("tn")) != (8, 4)),
    Idea("bk32_simt", CTRL, "Deepen the K tile to 32 with one shared-memory buffer: a quarter of the barriers, "
         "each covering 32 multiply-adds per output.", {"bk": 32, "buffer": 1}, 0.5,
         when=lambda s, f: f.get("algo") == "simt" and f.get("bk") != 32),
    Idea("vector_fragments", MEM, "Reorder the eight products inside each mma (A and B agree on the order) so a "
         "lane's A values for two consecutive K steps are one 16-byte shared-memory load, and XOR-swizzle B's "
         "16-byte chunks by row so the four rows a lane reads fall in distinct banks.", {"frag": "vec"}, 1.0,
         when=lambda s, f: f.get("algo") == "mma" and f.get("frag") != "vec"),
    Idea("mask_split", PREC, "Split each operand for the tensor cores by masking off its low 13 bits (exactly the "
         "TF32 high part the hardware reads) instead of a rounding conversion, with the exact remainder as the low "
         "part: one logic op per value instead of a convert, subtract and convert.", {"split": "mask"}, 0.8,
         when=lambda s, f: f.get("algo") == "mma" and f.get("split") != "mask",
         # a matmul's split is all its non-mma work (a convolution's gather outweighs it)
         boost=lambda s, f: 2.5 if s.family == "matmul" else 1.0),
    Idea("wgmma_3xtf32", PAR, "Move the products onto Hopper's warpgroup tensor-core instruction (wgmma.mma_async "
         "m64n{bn}k8, twice the rate of mma.sync): two warpgroups per {bm}x{bn} block tile, both tiles K-major in "
         "shared memory (B transposed once per call), split into TF32 high and low parts in place, three "
         "products per step and each K tile's sums added in round-to-nearest float.",
         {"algo": "wgmma", "precision": "3xtf32", "acc": "tile", "bm": 128, "bn": 128, "bk": 32, "stages": 3,
          "raster": 8}, 1.5, when=_algo("mma")),
    Idea("wgmma_192", PAR, "Grow the warpgroup block tile to 192x{bn} (three warpgroups) with two stages: each B "
         "tile in shared memory feeds half as many rows again.", {"bm": 192, "stages": 2}, 0.8,
         when=lambda s, f: f.get("algo") == "wgmma" and f.get("bm") != 192),
    Idea("wgmma_in_flight", ASYNC, "Keep one K tile's wgmma products in flight while the next tile is split and "
         "issued (wait for all but the latest group), loading {stages} - 2 tiles ahead; the sums accumulate in the "
         "tensor core.", {"overlap": True, "acc": "direct", "stages": 3}, 0.7,
         when=lambda s, f: f.get("algo") == "wgmma" and not f.get("overlap")),
    Idea("wgmma_tf32_wide", PREC, "Drop the 3xTF32 correction and multiply TF32 tiles of {bm}x256 with four stages "
         "and one group in flight: a third of the tensor work, at TF32 accuracy (fails 1e-4).",
         {"precision": "tf32", "bn": 256, "stages": 4, "overlap": True, "acc": "direct"}, 0.5,
         when=lambda s, f: f.get("algo") == "wgmma" and f.get("precision") == "3xtf32"),
]

# ------------------------------------------------------------------------------------------------ matmul C

MATMUL_C: list[Idea] = [
    Idea("ikj", MEM, "Reorder the loops to i-k-j: broadcast A[i,k] over a contiguous row of B and accumulate into a "
         "contiguous row of C, so the inner loop streams memory and vectorises instead of striding down a column "
         "of B.", {"order": "ikj"}, 4.0),
    Idea("omp_rows", PAR, "Parallelise over the {M} rows of C with an OpenMP parallel-for: each core owns whole "
         "rows, so no two threads write the same output.", {"par": "rows"}, 4.0),
    Idea("block", MEM, "Block the loops into {mc}x{nc} tiles of C and {kc}-deep slices of K, so the slice of B a "
         "tile reuses ({kc}x{nc} floats) stays in L2 while every row of the tile passes over it.",
         {"block": True}, 2.5),
    Idea("micro", COMP, "Compute C in 4x16 register blocks across each K slice (four A values broadcast against one "
         "16-float vector of B per k), writing C once per slice instead of once per multiply-add.",
         {"micro": True}, 2.5),
    Idea("simd", COMP, "Mark the inner row loop #pragma omp simd, so it compiles to vector fused multiply-adds "
         "without the compiler's aliasing checks.", {"simd": True}, 2.0),
    Idea("tiles_par", PAR, "Parallelise over C tiles (collapse(2) over tile rows and columns) instead of rows, so "
         "every core has work even when M is small.", {"par": "tiles"}, 1.5),
    Idea("dynamic", PAR, "Hand out the parallel loop's iterations dynamically, so a core that finishes early takes "
         "the next one.", {"schedule": "dynamic"}, 0.6, when=lambda s, f: f.get("par") != "serial"),
    Idea("restrict", MEM, "Declare A, B and C restrict: the compiler may then keep values in registers across "
         "stores to C.", {"restrict": True}, 1.0),
    Idea("unroll4", CTRL, "Unroll the innermost loop by 4 (#pragma GCC unroll 4).", {"unroll": 4}, 0.5,
         when=lambda s, f: not f.get("simd")),
    Idea("micro_8x8", COMP, "Reshape the register block to 8x8 (eight A values against one 8-float vector of B per "
         "k): more rows share each B load, for cores whose vectors are 8 floats wide.", {"micro": True, "mr": 8,
                                                                                       "nr": 8}, 1.0),
    Idea("micro_6x16", COMP, "Reshape the register block to 6x16: six rows of C against two 8-float vectors of B, "
         "twelve accumulators, the shape that fills sixteen vector registers.", {"micro": True, "mr": 6, "nr": 16},
         1.0),
    Idea("micro_4x32", COMP, "Widen the register block to 4x32, so each A value loaded feeds 32 multiply-adds.",
         {"micro": True, "mr": 4, "nr": 32}, 0.7),
    Idea("acc_double", PREC, "Accumulate the register block in double and round to float once per K slice: every "
         "output's sum of {K} products loses no low-order bits.", {"micro": True, "acc": "double"}, 0.5),
    Idea("prefetch4", ASYNC, "Prefetch the row of B four k steps ahead (__builtin_prefetch), so it is in cache by "
         "the time the broadcast reaches it.", {"prefetch": 4}, 0.8, when=lambda s, f: f.get("order") == "ikj"),
    Idea("prefetch16", ASYNC, "Prefetch the row of B sixteen k steps ahead, to cover DRAM latency when the slice "
         "of B is not in cache.", {"prefetch": 16}, 0.6, when=lambda s, f: f.get("order") == "ikj"),
    Idea("guided", PAR, "Use a guided schedule: large chunks of the parallel loop first, smaller ones to balance "
         "the end.", {"schedule": "guided"}, 0.5, when=lambda s, f: f.get("par") != "serial"),
    Idea("bind_close", PAR, "Pin the OpenMP threads close together (proc_bind(close)), so each stays on its core "
         "and its caches.", {"proc_bind": "close"}, 0.5, when=lambda s, f: f.get("par") != "serial"),
    Idea("bind_spread", PAR, "Spread the OpenMP threads over the machine (proc_bind(spread)), so their slices of B "
         "come through every memory channel.", {"proc_bind": "spread"}, 0.4,
         when=lambda s, f: f.get("par") != "serial"),
    Idea("if_parallel", CTRL, "Fork the OpenMP team only when the product has more than 32K multiply-adds (an if "
         "clause), so small calls skip the fork and join.", {"if_parallel": True}, 0.4,
         when=lambda s, f: f.get("par") != "serial"),
    Idea("unroll8", CTRL, "Unroll the innermost loop by 8 (#pragma GCC unroll 8).", {"unroll": 8}, 0.4,
         when=lambda s, f: not f.get("simd")),
    Idea("nc512", MEM, "Widen the C tile to 512 columns, so each A value broadcast in a tile feeds twice the "
         "columns.", {"nc": 512, "block": True}, 0.6, when=lambda s, f: f.get("block") and f.get("nc") != 512),
    Idea("mc32", CTRL, "Shrink the C tile to 32 rows, so there are more tiles to share among the cores.",
         {"mc": 32, "block": True}, 0.4, when=lambda s, f: f.get("block") and f.get("mc") != 32),
    Idea("kc512", CTRL, "Deepen the K slice to 512, halving the passes over each C tile.", {"kc": 512, "block": True},
         0.7, when=lambda s, f: f.get("block") and f.get("kc") != 512),
    Idea("mc128", CTRL, "Grow the C tile to 128 rows, so each B slice loaded into cache serves twice the rows.",
         {"mc": 128, "block": True}, 0.6, when=lambda s, f: f.get("block") and f.get("mc") != 128),
]

# ------------------------------------------------------------------------------------------------ conv CUDA

_IMPLICIT_GEMM = {"algo": "mma", "bm": 128, "bn": 64, "bk": 32, "wm": 4, "wn": 2, "stages": 2, "cp_async": True,
                  "pad": 4}


def _pooled(spec: OpSpec, f: dict) -> bool:
    return bool(spec.geometry.get("pool_k"))


CONV_CUDA: list[Idea] = [
    Idea("implicit_gemm", COMP, "Recast the convolution as an implicit GEMM on tensor cores: rows are the {M} output "
         "pixels, columns the {cout} output channels, depth the {kd} (channel, kernel row, kernel column) taps; each "
         "block gathers its A tile from the input on the fly (taps outside the image read as zero, im2col never "
         "written), reads its B tile from the weights, and multiplies with mma.sync in the 3xTF32 scheme, so the "
         "result keeps float32 accuracy; bias (and ReLU) are added as the accumulators are stored.",
         _IMPLICIT_GEMM | {"precision": "3xtf32"}, 4.0, when=_algo("direct")),
    Idea("implicit_gemm_tf32", PREC, "Recast the convolution as an implicit GEMM ({M} x {cout} x {kd}) on TF32 "
         "tensor cores, one product per fragment pair: three times the 3xTF32 throughput, with errors near 1e-3 "
         "of the outputs' scale.", _IMPLICIT_GEMM | {"precision": "tf32"}, 1.5, when=_algo("direct")),
    Idea("drop_to_tf32", PREC, "Drop the 3xTF32 correction products and multiply the TF32 high parts only: a third "
         "of the tensor-core work at TF32 accuracy.", {"precision": "tf32"}, 1.0,
         when=_mma_precision("3xtf32")),
    Idea("tile_sums", PREC, "Accumulate each K tile's products in fresh registers and add them to the running sums "
         "with round-to-nearest float adds, instead of letting the tensor core's truncating accumulation run over "
         "all {kd} taps.", {"acc": "tile"}, 0.8, when=lambda s, f: f.get("algo") == "mma" and f.get("acc") != "tile"),
    Idea("cp_async", ASYNC, "Gather the A tile and read the B tile with 4-byte cp.async copies (zero-filled outside "
         "the image) into a two-stage pipeline, so the next tile's gathers are in flight while this one is "
         "multiplied.", {"cp_async": True, "stages": 2}, 2.5,
         when=lambda s, f: f.get("algo") == "mma" and not f.get("cp_async")),
    Idea("stages3", ASYNC, "Deepen the cp.async pipeline to three stages, so two K tiles of gathers are in flight.",
         {"cp_async": True, "stages": 3}, 1.5, when=lambda s, f: f.get("algo") == "mma" and f.get("stages", 1) < 3),
    Idea("pad_smem", MEM, "Pad the shared-memory rows (A's by four floats, B's by eight) so a warp's fragment loads "
         "fall in distinct banks.", {"pad": 4}, 1.5, when=lambda s, f: f.get("algo") == "mma" and not f.get("pad")),
    Idea("bn_cout", PAR, "Make the block tile's width {cout} output channels, the whole layer, so no tile column is "
         "wasted and each gathered input tile is read once.", {"bn": 96, "wn": 2}, 1.5,
         when=lambda s, f: f.get("algo") == "mma" and s.geometry["cout"] == 96 and f.get("bn") != 96),
    Idea("bn128", PAR, "Widen the block tile to 128 output channels, so each gathered A tile feeds more products.",
         {"bn": 128, "wn": 2}, 0.8, when=lambda s, f: f.get("algo") == "mma" and f.get("bn") != 128),
    Idea("bm256", PAR, "Grow the block tile to 256 output pixels with 8 warps: the weights' B tile is reused over "
         "twice the pixels.", {"bm": 256, "wm": 4}, 1.0,
         when=lambda s, f: f.get("algo") == "mma" and f.get("bm") != 256),
    Idea("bm64", PAR, "Shrink the block tile to 64 output pixels: more blocks in flight per SM to hide the gathers' "
         "latency.", {"bm": 64, "wm": 2}, 0.7, when=lambda s, f: f.get("algo") == "mma" and f.get("bm") != 64),
    Idea("warps_2x4", PAR, "Arrange the warps 2x4 (warp tiles of {wtm}x{wtn}), changing how many A and B fragments "
         "each warp reloads per K step.", {"wm": 2, "wn": 4}, 0.6,
         when=lambda s, f: f.get("algo") == "mma" and (f.get("wm"), f.get("wn")) != (2, 4)),
    Idea("bk16", CTRL, "Halve the K tile to 16 taps: half the shared memory per stage, so more stages or blocks "
         "fit.", {"bk": 16}, 0.6, when=lambda s, f: f.get("algo") == "mma" and f.get("bk") != 16),
    Idea("raster8", PAR, "Launch the blocks in groups of 8 block-rows, so blocks running together share the "
         "weights' tiles and neighbouring input rows in L2.", {"raster": 8}, 0.6,
         when=lambda s, f: f.get("algo") == "mma" and not f.get("raster")),
    Idea("ldg", MEM, "Read input and weights through the read-only data cache (__ldg): the {ks}x{ks} windows of "
         "neighbouring outputs overlap, so most taps hit in cache.", {"load": "ldg"}, 1.0, when=_algo("direct")),
    Idea("unroll_taps", CTRL, "Fully unroll the {ks}x{ks} tap loops (the kernel size is a compile-time constant), "
         "so the tap offsets become immediates.", {"unroll": True}, 1.2, when=_algo("direct")),
    Idea("threads128", PAR, "Use 128-thread blocks so more blocks are resident per SM.", {"threads": 128}, 0.6,
         when=lambda s, f: f.get("algo") == "direct" and f.get("threads") != 128),
    Idea("threads512", PAR, "Use 512-thread blocks: more output pixels of the same channel per block share their "
         "weights in L1.", {"threads": 512}, 0.6,
         when=lambda s, f: f.get("algo") == "direct" and f.get("threads") != 512),
    Idea("persistent", PAR, "Launch a persistent grid of eight blocks per SM looping over the outputs, so no tail "
         "wave.", {"grid": "persistent"}, 0.5, when=_algo("direct")),
    Idea("launch_bounds2", PAR, "Add __launch_bounds__({T}, 2) so the compiler keeps registers low enough for two "
         "resident blocks per SM.", {"launch_min": 2}, 0.5, when=_algo("direct")),
    Idea("fast_math", PREC, "Compile the direct kernel with --use_fast_math (fused multiply-adds everywhere, denormals "
         "flushed).", {"fast_math": True}, 0.4, when=_algo("direct")),
    Idea("pool_threads128", PAR, "Run the max pool with 128-thread blocks, more blocks over the pooled outputs.",
         {"pool_threads": 128}, 0.4, when=lambda s, f: _pooled(s, f) and f.get("pool_threads") != 128),
    Idea("pool_threads512", PAR, "Run the max pool with 512-thread blocks.", {"pool_threads": 512}, 0.3,
         when=lambda s, f: _pooled(s, f) and f.get("pool_threads") != 512),
    Idea("pool_reverse", MEM, "Walk the max pool's outputs from the last image to the first: the convolution wrote "
         "the last images last, so the pool's first blocks read them from L2 instead of HBM.",
         {"pool_order": "reverse"}, 1.0, when=lambda s, f: _pooled(s, f) and f.get("pool_order") != "reverse"),
    Idea("bf16_intermediate", PREC, "Store the convolution's ReLU output for the pool as bfloat16 (float's exponent "
         "range, an 8-bit mantissa: a relative error of at most 2^-9, inside the 1e-2 tolerance but not 1e-4) and "
         "widen each value back to float in the pool: half the bytes written by the convolution and read by the "
         "pool, the block's largest traffic.", {"mid": "bf16"}, 1.5,
         when=lambda s, f: _pooled(s, f) and f.get("algo") == "mma" and f.get("mid") != "bf16"),
    Idea("fold_stride", MEM, "Fold the stride into the order of the GEMM's depth (space-to-depth, without writing "
         "the rearranged input): {fq}x{fq} tap blocks, then channels, then the stride's row and column phases, the "
         "{ks}x{ks} kernel padded with zero taps to {fks}x{fks}; a tap block's column phases are neighbouring input "
         "floats, so each thread gathers {pw}-float pieces with one {pwb}-byte cp.async where it copied one float, "
         "and the weights, rearranged into that order once per call, load as 16-byte rows.", {"gather": "fold"},
         4.0, when=lambda s, f: f.get("algo") == "mma" and f.get("gather") != "fold" and conv_cuda.fold_width(s) > 0),
    Idea("channels_last", MEM, "Copy the input once per call to channels-last order ({cin} channels per pixel, "
         "padded with zeros to {cpad}), and order the GEMM's depth as (kernel row, kernel column, channel): a tap's "
         "channels are then neighbouring floats, so each thread gathers 4 channels with one 16-byte cp.async where "
         "it copied one float; the weights, rearranged into that order once per call, load as 16-byte rows.",
         {"gather": "nhwc"}, 1.0, when=lambda s, f: f.get("algo") == "mma" and f.get("gather") != "nhwc",
         boost=lambda s, f: 3.0 if s.geometry["cin"] % 4 == 0 or not conv_cuda.fold_width(s) else 1.0),
    Idea("ldmatrix", MEM, "Load the tensor-core fragments with ldmatrix: one instruction gives a warp a whole A "
         "fragment (four 8x4 float matrices) where four 32-bit shared loads did, and with the weights laid out filter "
         "by filter ({cout} x depth, so the B tile is n-major in shared memory) one more gives two B fragments: "
         "{lds} shared-memory load instructions per 8-deep step become {ldsm}, the same bytes.", {"ldsm": True}, 1.5,
         when=lambda s, f: f.get("algo") == "mma" and f.get("frag", "scalar") == "scalar" and not f.get("ldsm")),
    Idea("one_stage", ASYNC, "Go back to one pipeline stage with synchronous loads: the least shared memory per "
         "block, so the most blocks per SM hide the gathers' latency instead.", {"stages": 1, "cp_async": False}, 0.3,
         when=lambda s, f: f.get("algo") == "mma" and f.get("stages", 1) > 1),
]

# The matmul family's fragment refinements apply to the convolution's GEMM as they are (its tiles are shared-memory
# tiles like any other; only how they are filled differs).
CONV_CUDA += [i for i in MATMUL_CUDA if i.key in ("vector_fragments", "mask_split")]

# ------------------------------------------------------------------------------------------------ conv C

CONV_C: list[Idea] = [
    Idea("omp_planes", PAR, "Parallelise over output planes (image, block of output channels) with OpenMP: each core "
         "owns whole planes, so no two threads write the same output.", {"par": "omp"}, 4.0),
    Idea("collapse", PAR, "Collapse the image and channel-block loops into one parallel loop, so a small batch still "
         "gives every core planes.", {"par": "omp", "collapse": True}, 1.5),
    Idea("rows", MEM, "Accumulate a whole output row at a time, tap by tap: the inner loop runs over output columns "
         "with the image-edge bounds computed once per tap, not tested per element.", {"order": "rows"}, 3.0),
    Idea("kblock4", COMP, "Compute four output channels at once: each input value loaded feeds four multiply-adds.",
         {"kblock": 4}, 2.0),
    Idea("kblock8", COMP, "Compute eight output channels at once: each input value loaded feeds eight multiply-adds.",
         {"kblock": 8}, 2.0),
    Idea("kblock16", COMP, "Compute sixteen output channels at once (a whole vector of accumulators per input "
         "value).", {"kblock": 16}, 1.0),
    Idea("simd", COMP, "Mark the row loop #pragma omp simd so it compiles to vector fused multiply-adds.",
         {"order": "rows", "simd": True}, 1.5),
    Idea("hoist", CTRL, "Find the taps inside the image once per output (the valid kernel rows and columns) instead "
         "of testing every tap.", {"hoist": True}, 1.2, when=lambda s, f: f.get("order") == "direct"),
    Idea("wpack", MEM, "Pack the block's weights as [channel][row][column][output channel] once per plane, so the "
         "per-tap loop over output channels reads consecutive floats.", {"wpack": True}, 1.2,
         when=lambda s, f: f.get("kblock", 1) > 1),
    Idea("restrict", MEM, "Declare the input, weight and bias pointers restrict, so loads can be kept in registers "
         "across the stores.", {"restrict": True}, 0.6),
    Idea("pool_fused", MEM, "Pool each plane right after its ReLU, while it is still in cache, instead of a second "
         "pass over the whole convolution output.", {"pool_fused": True}, 1.5, when=_pooled),
    Idea("acc_double", PREC, "Accumulate each output's {kd} products in double and round once.", {"acc": "double"},
         0.4),
    Idea("prefetch", ASYNC, "Prefetch the next input row of the window (stride rows down) while this one is "
         "accumulated.", {"order": "rows", "prefetch": True}, 0.6),
    Idea("owtile64", CTRL, "Tile the output row into 64-column pieces, so the accumulators of a piece stay in L1 "
         "across all taps.", {"order": "rows", "owtile": 64}, 0.6),
    Idea("owtile256", CTRL, "Tile the output row into 256-column pieces.", {"order": "rows", "owtile": 256}, 0.4),
    Idea("unroll4", CTRL, "Unroll the innermost loop by 4 (#pragma GCC unroll 4).", {"unroll": 4}, 0.5,
         when=lambda s, f: not f.get("simd")),
    Idea("unroll8", CTRL, "Unroll the innermost loop by 8 (#pragma GCC unroll 8).", {"unroll": 8}, 0.4,
         when=lambda s, f: not f.get("simd")),
    Idea("dynamic", PAR, "Hand out planes dynamically, so a core that finishes early takes the next.",
         {"schedule": "dynamic"}, 0.6, when=lambda s, f: f.get("par") == "omp"),
    Idea("guided", PAR, "Use a guided schedule over planes: large chunks first, small ones to balance the end.",
         {"schedule": "guided"}, 0.4, when=lambda s, f: f.get("par") == "omp"),
    Idea("bind_close", PAR, "Pin the OpenMP threads close together (proc_bind(close)).", {"proc_bind": "close"}, 0.4,
         when=lambda s, f: f.get("par") == "omp"),
    Idea("bind_spread", PAR, "Spread the OpenMP threads over the machine (proc_bind(spread)).",
         {"proc_bind": "spread"}, 0.3, when=lambda s, f: f.get("par") == "omp"),
    Idea("if_parallel", CTRL, "Fork the OpenMP team only for convolutions of more than 32K multiply-adds (an if "
         "clause).", {"if_parallel": True}, 0.3, when=lambda s, f: f.get("par") == "omp"),
    Idea("direct_order", CTRL, "Go back to one output at a time with every tap (the rows order's accumulator row "
         "costs a memory round trip per tap).", {"order": "direct"}, 0.3,
         when=lambda s, f: f.get("order") == "rows"),
    Idea("acc_float", PREC, "Accumulate in float again: no conversions in the inner loop.", {"acc": "float"}, 0.3,
         when=lambda s, f: f.get("acc") == "double"),
]

def _conv_op(spec: OpSpec, f: dict) -> bool:
    return spec.op == "conv"


def _gather(spec: OpSpec, f: dict) -> bool:
    """A transposed convolution with a stride above one: most taps are of the wrong stride phase."""
    g = spec.geometry
    return spec.op == "conv" and bool(g["transposed"]) and max(g["s0"], g["s1"], g["s2"]) > 1


def _not_gather(spec: OpSpec, f: dict) -> bool:
    return not spec.geometry["transposed"]


def _cpt(n: int) -> Callable[[OpSpec, dict], bool]:
    return lambda spec, f: n in window_cuda.cpts(spec) and f.get("cpt", 1) != n


def _wsmem_ok(spec: OpSpec, f: dict) -> bool:
    return window_cuda.wsmem_fits(spec, f.get("cpt", 1))


def _channels_in_group(spec: OpSpec, f: dict) -> bool:
    """Several input channels per group: loop order and prefetching across channels matter."""
    return spec.op == "conv" and spec.geometry["cin"] // spec.geometry["groups"] > 1


_WINDOW_DIRECT: list[Idea] = [
    Idea("opt2", COMP, "Let each thread compute two neighbouring outputs along the innermost dimension: every "
         "weight it loads feeds two multiply-adds and overlapping windows share cached input rows.", {"opt": 2}, 2.5),
    Idea("opt4", COMP, "Let each thread compute four neighbouring outputs along the innermost dimension, keeping "
         "four accumulators per channel in registers.", {"opt": 4}, 2.0),
    Idea("cpt2", COMP, "Register-block two output channels of the same group per thread: each input value loaded "
         "feeds two multiply-adds.", {"cpt": 2}, 2.0, when=_cpt(2)),
    Idea("cpt4", COMP, "Register-block four output channels of the same group per thread: each input value loaded "
         "feeds four multiply-adds, quartering the input traffic through L1.", {"cpt": 4}, 2.5, when=_cpt(4)),
    Idea("cpt8", COMP, "Register-block eight output channels per thread (32 accumulators with four outputs): the "
         "{cing}-channel input window is read once for eight channels.", {"cpt": 8}, 1.5, when=_cpt(8)),
    Idea("wsmem", MEM, "Stage the block's weights ({cing} channels x {kk} taps per output channel) in shared memory "
         "once, so the inner loop's weight reads are shared-memory broadcasts instead of global loads.",
         {"wsmem": True}, 2.0, when=_wsmem_ok),
    Idea("ldg", MEM, "Read the input and weights through the read-only data cache (__ldg): the windows of "
         "neighbouring threads overlap, and the texture path keeps the reused lines.", {"load": "ldg"}, 1.5),
    Idea("restrict", MEM, "Declare every pointer __restrict__, so the compiler may keep loaded values in registers "
         "and reorder loads across the stores.", {"restrict": True}, 1.0),
    Idea("unroll", CTRL, "Fully unroll the loops over the {kk} kernel taps (their bounds are compile-time "
         "constants), so the tap offsets become immediates and the loads can be issued back to back.",
         {"unroll": True}, 2.0),
    Idea("interior", CTRL, "Split each thread's work into a branch-free path for windows lying wholly inside the "
         "input (almost all of them) and the bounds-tested path for the borders.", {"interior": True}, 2.0,
         when=_not_gather),
    Idea("taps_outer", CTRL, "Loop over the kernel taps outside the {cing} input channels: each tap's bounds (and "
         "stride phase) are found once and reused by every channel, instead of once per channel.",
         {"order": "taps"}, 1.8, when=_channels_in_group),
    Idea("phase", CTRL, "Step over the kernel taps of this output's stride phase only (k = (o + pad) mod stride, then "
         "every stride-th tap), instead of visiting every tap and testing its divisibility.", {"phase": True}, 2.5,
         when=_gather),
    Idea("idx32", COMP, "Index with 32-bit integers (every offset fits): the address arithmetic in the tap loops "
         "takes half the instructions of 64-bit.", {"idx32": True}, 1.2),
    Idea("threads128", PAR, "Use 128-thread blocks: twice as many blocks, so the tail of the grid leaves fewer SMs "
         "idle and more blocks share each SM's latency hiding.", {"threads": 128}, 1.0),
    Idea("threads512", PAR, "Use 512-thread blocks: one block's threads cover more of an output plane, so "
         "neighbouring windows hit the same L1 lines.", {"threads": 512}, 0.8),
    Idea("threads64", PAR, "Use 64-thread blocks, so a plane's few outputs spread over more SMs.", {"threads": 64},
         0.5),
    Idea("launch_min2", PAR, "Bound the kernel to two resident 256-thread blocks per SM (__launch_bounds__), so the "
         "compiler keeps the register-blocked accumulators without spilling.", {"launch_min": 2}, 0.8),
    Idea("launch_min4", PAR, "Ask __launch_bounds__ for four resident blocks per SM: fewer registers per thread, "
         "more warps to hide the input loads' latency.", {"launch_min": 4}, 0.7),
    Idea("raster_channels", PAR, "Order the grid with the channel blocks fastest, so the blocks running at once read "
         "the same input tile and it is served from L2 instead of HBM.", {"raster": "channels"}, 1.2,
         when=_conv_op),
    Idea("l2_prefetch", ASYNC, "Prefetch the next input channel's rows into L2 while this channel's taps are being "
         "multiplied, so the channel loop does not stall on HBM.", {"l2_prefetch": True}, 1.0,
         when=_channels_in_group),
    Idea("acc_double", PREC, "Accumulate each output's {kk}-tap sums in double and round once at the store.",
         {"acc": "double"}, 0.4),
    Idea("acc_float", PREC, "Accumulate in float again: the double accumulators cost a 64-bit add per tap.",
         {"acc": "float"}, 1.0, when=lambda s, f: f.get("acc") == "double"),
    Idea("blocked_smem", MEM, "Register-block four channels per thread and stage their weights in shared memory: "
         "one broadcast weight read feeds four outputs' accumulators.", {"cpt": 4, "wsmem": True}, 1.5,
         when=lambda s, f: 4 in window_cuda.cpts(s) and window_cuda.wsmem_fits(s, 4) and f.get("cpt", 1) < 4),
    Idea("wide_unrolled", COMP, "Compute four outputs per thread with the tap loops fully unrolled, so every input "
         "row load is reused across the four outputs from registers.", {"opt": 4, "unroll": True}, 1.5,
         when=lambda s, f: f.get("opt", 1) < 4),
]


def _window_direct(idea: Idea) -> Idea:
    """A direct-kernel idea, offered only while the parent is the direct kernel (an implicit GEMM ignores it)."""
    when = idea.when
    return dataclasses.replace(idea, when=lambda s, f: f.get("algo", "direct") == "direct" and (
        when is None or bool(when(s, f))))


def _window_gemm(spec: OpSpec, f: dict) -> bool:
    return f.get("algo") == "mma"


def _gemm_shaped(spec: OpSpec, f: dict) -> bool:
    """Enough useful taps and output channels that the convolution is a GEMM worth tensor cores (as cuDNN decides):
    the direct kernel then re-reads every input value once per tap and channel block. A transposed convolution's
    gather wastes all taps but one stride phase in each dimension."""
    g = spec.geometry
    waste = g["s0"] * g["s1"] * g["s2"] if g["transposed"] else 1
    return g["cin"] * window_cuda.kernel_volume(spec) >= 32 * waste and g["cout"] >= 16


_WINDOW_GEMM: list[Idea] = [
    Idea("implicit_gemm", COMP, "Recast the convolution as an implicit GEMM on tensor cores: rows are the {M} output "
         "positions, columns the {cout} output channels, depth the {kd} (channel, kernel tap) pairs; each block "
         "gathers its A tile from the input on the fly (taps outside the input, or of another stride phase of a "
         "transposed convolution, read as zero; im2col never written) "
         "and reads its B tile from the weights, multiplying with mma.sync in the 3xTF32 scheme so the result "
         "keeps float32 accuracy; the bias is added as the accumulators are stored.",
         _IMPLICIT_GEMM | {"precision": "3xtf32"}, 4.0,
         when=lambda s, f: window_cuda.gemm_ok(s) and f.get("algo", "direct") == "direct",
         boost=_boost_if(_gemm_shaped, 8.0)),
    Idea("implicit_gemm_tf32", PREC, "Recast the convolution as an implicit GEMM ({M} x {cout} x {kd}) on TF32 "
         "tensor cores, one product per fragment pair: three times the 3xTF32 throughput, with errors near 1e-3 "
         "of the outputs' scale.", _IMPLICIT_GEMM | {"precision": "tf32"}, 1.2,
         when=lambda s, f: window_cuda.gemm_ok(s) and f.get("algo", "direct") == "direct",
         boost=_boost_if(_gemm_shaped, 4.0)),
    Idea("tile_sums", PREC, "Accumulate each K tile's products in fresh registers and add them to the running sums "
         "with round-to-nearest float adds, instead of letting the tensor core's truncating accumulation run over "
         "all {kd} taps.", {"gacc": "tile"}, 0.8, when=lambda s, f: _window_gemm(s, f) and f.get("gacc") != "tile"),
    Idea("raster8", PAR, "Launch the blocks in groups of 8 block-rows, so blocks running together share the "
         "weights' tiles and neighbouring input rows in L2.", {"graster": 8}, 0.6,
         when=lambda s, f: _window_gemm(s, f) and not f.get("graster")),
]
# The conv family's refinements of a tensor-core kernel apply to the window family's as they are.
_WINDOW_GEMM += [i for i in CONV_CUDA if i.key in ("drop_to_tf32", "cp_async", "stages3", "pad_smem", "bn128",
                                                     "bm256", "bm64", "warps_2x4", "bk16", "one_stage")]


def _wide_gemm(ideas: list[Idea]) -> list[Idea]:
    """The implicit GEMM ideas split by layer width: up to 64 output channels as they are, wider layers with
    128-channel block tiles. A convolution's GEMM waits on its gathers, not its tensor cores, and a 128-wide tile
    feeds each gathered input tile to twice the channels (measured on the H200 at 63, 67, AlexNet's conv1 and
    conv+ReLU+pool: 1.25-1.45x over 64-wide tiles, TF32 and 3xTF32 alike)."""
    out = []
    for i in ideas:
        if not i.key.startswith("implicit_gemm"):
            out.append(i)
            continue
        base = i.when
        out.append(dataclasses.replace(i, when=lambda s, f, base=base: base(s, f) and s.geometry["cout"] <= 64))
        out.append(dataclasses.replace(
            i, key=i.key + "_wide", delta=i.delta | {"bn": 128, "wn": 2},
            text=i.text + " Each block's tile is 128 outputs by 128 channels, so every gathered input tile feeds "
                          "128 channels' products.",
            when=lambda s, f, base=base: base(s, f) and s.geometry["cout"] > 96))
        # 65-96 channels: a 96-wide tile holds them all with no idle column, and 16-tap K tiles halve each stage
        # (AlexNet's conv1 on the H200: 0.47 ms against 0.58 ms for 128 x 128 x 32 tiles, TF32, same pipeline)
        out.append(dataclasses.replace(
            i, key=i.key + "_all_channels", delta=i.delta | {"bn": 96, "wn": 2, "bk": 16},
            text=i.text + " Each block's tile is 128 outputs by all {cout} channels in 16-tap K steps, so every "
                          "gathered input tile feeds the whole layer and no tile column idles.",
            when=lambda s, f, base=base: base(s, f) and 64 < s.geometry["cout"] <= 96))
    return out


CONV_CUDA = _wide_gemm(CONV_CUDA)
_WINDOW_GEMM = _wide_gemm(_WINDOW_GEMM)

WINDOW_CUDA: list[Idea] = [_window_direct(i) for i in _WINDOW_DIRECT] + _WINDOW_GEMM

WINDOW_C: list[Idea] = [
    Idea("omp_planes", PAR, "Parallelise over output planes (image, block of channels) with OpenMP: each core owns "
         "whole planes, so no two threads write the same output.", {"par": "omp"}, 4.0),
    Idea("collapse", PAR, "Collapse the image and channel loops into one parallel loop, so a small batch still "
         "gives every core planes.", {"par": "omp", "collapse": True}, 1.5),
    Idea("dynamic", PAR, "Hand planes to cores dynamically, one at a time, so border-heavy planes do not hold up a "
         "statically scheduled core.", {"par": "omp", "schedule": "dynamic"}, 0.8),
    Idea("guided", PAR, "Use guided scheduling: large chunks first, smaller ones as the planes run out.",
         {"par": "omp", "schedule": "guided"}, 0.6),
    Idea("bind_close", PAR, "Bind OpenMP threads close to their parent (proc_bind(close)), so a thread keeps its "
         "core's cache across planes.", {"par": "omp", "proc_bind": "close"}, 0.5),
    Idea("bind_spread", PAR, "Spread OpenMP threads over the cores (proc_bind(spread)), so each gets a core's whole "
         "cache.", {"par": "omp", "proc_bind": "spread"}, 0.4),
    Idea("if_parallel", PAR, "Fork threads only when the {what} has enough work to pay for waking them.",
         {"par": "omp", "if_parallel": True}, 0.4),
    Idea("rows", MEM, "Accumulate a whole output row at a time in the output itself, tap by tap: the inner loop "
         "runs over output columns with the input's edges computed once per tap, not tested per element.",
         {"order": "rows"}, 3.0),
    Idea("simd", COMP, "Mark the row loop #pragma omp simd so it compiles to vector multiply-adds over output "
         "columns.", {"order": "rows", "simd": True}, 1.8),
    Idea("kblock2", COMP, "Compute two output channels of the same group at once: each input value loaded feeds two "
         "multiply-adds.", {"kblock": 2}, 1.5, when=lambda s, f: 2 in window_c.kblocks(s)),
    Idea("kblock4", COMP, "Compute four output channels at once: each input value loaded feeds four multiply-adds.",
         {"kblock": 4}, 2.0, when=lambda s, f: 4 in window_c.kblocks(s)),
    Idea("kblock8", COMP, "Compute eight output channels at once: the input row is streamed once for eight "
         "accumulating output rows.", {"kblock": 8}, 1.2, when=lambda s, f: 8 in window_c.kblocks(s)),
    Idea("interior", CTRL, "Give windows wholly inside the input a loop without bounds tests; only border outputs "
         "take the tested path.", {"interior": True}, 1.5,
         when=lambda s, f: f.get("order", "direct") == "direct" and _not_gather(s, f)),
    Idea("unroll4", CTRL, "Unroll the innermost tap loop by four (#pragma GCC unroll 4).", {"unroll": 4}, 0.8,
         when=lambda s, f: f.get("order", "direct") == "direct"),
    Idea("unroll8", CTRL, "Unroll the innermost tap loop by eight, so short kernels run without loop overhead.",
         {"unroll": 8}, 0.6, when=lambda s, f: f.get("order", "direct") == "direct"),
    Idea("restrict", MEM, "Declare the input, weight and output pointers restrict, so the compiler may keep loads in "
         "registers across the stores.", {"restrict": True}, 0.8),
    Idea("prefetch", ASYNC, "Prefetch the next input channel's row (__builtin_prefetch) while this channel's taps "
         "accumulate, so the row loop does not wait on memory.", {"order": "rows", "prefetch": True}, 0.8,
         when=_channels_in_group),
    Idea("acc_double", PREC, "Accumulate each output's products in double and round once.", {"acc": "double"}, 0.4,
         when=lambda s, f: f.get("order", "direct") == "direct"),
    Idea("acc_float", PREC, "Accumulate in float again: double accumulators halve the vector width.",
         {"acc": "float"}, 1.0, when=lambda s, f: f.get("acc") == "double"),
    Idea("rows_parallel", PAR, "Accumulate rows tap by tap and spread the planes over every core with OpenMP.",
         {"order": "rows", "par": "omp"}, 2.0),
    Idea("rows_blocked", COMP, "Accumulate rows for four output channels at once, so each input row read feeds four "
         "output rows.", {"order": "rows", "kblock": 4}, 1.5, when=lambda s, f: 4 in window_c.kblocks(s)),
    Idea("rows_simd_parallel", COMP, "Vectorised row accumulation (#pragma omp simd) on every core.",
         {"order": "rows", "simd": True, "par": "omp"}, 1.5),
    Idea("direct_again", CTRL, "Go back to one output at a time with every tap: for tiny rows the per-tap range "
         "computation costs more than it saves.", {"order": "direct", "simd": False}, 0.3,
         when=lambda s, f: f.get("order") == "rows" and s.geometry["o2"] < 16),
    Idea("collapse_dynamic", PAR, "Collapse images and channels into one loop scheduled dynamically, so cores stay "
         "busy to the last plane.", {"par": "omp", "collapse": True, "schedule": "dynamic"}, 0.6),
]


def _few_kept(spec: OpSpec, f: dict) -> bool:
    """Fewer kept indices than it takes to fill the GPU twice over: each needs several blocks."""
    return reduce_cuda.kept_blocks(spec, f.get("threads", 256)) < 2 * H100_SMS and reduce_cuda.splittable(spec)


def _few_kept_unsplit(spec: OpSpec, f: dict) -> bool:
    return _few_kept(spec, f) and f.get("split") != "fill"


def _columns(spec: OpSpec, f: dict) -> bool:
    """One thread per kept index walking its reduced values: the loads in flight per thread set the bandwidth."""
    return not reduce_cuda.row_mapping(spec)


def _normalising(spec: OpSpec, f: dict) -> bool:
    return spec.op == "normalize"


def _sums(spec: OpSpec, f: dict) -> bool:
    return spec.geometry["kind"] in reduce_cuda.SUMS


def _exp_kind(spec: OpSpec, f: dict) -> bool:
    return spec.geometry["kind"] in ("softmax", "log_softmax")


REDUCE_CUDA: list[Idea] = [
    Idea("vec4", MEM, "Read each kept index's values as 16-byte float4 vectors in the {what} pass (and the "
         "normalisation's), four values per load instruction; a scalar kernel takes misaligned inputs.",
         {"vec": 4}, 3.0, when=lambda s, f: reduce_cuda.vec_ok(s)),
    Idea("split_fill", PAR, "Split each kept index's {red} values over several blocks sized to fill every SM, and "
         "merge their partial states in a small combine kernel: {kept} kept indices alone leave most SMs idle.",
         {"split": "fill"}, 3.5, when=_few_kept_unsplit),
    Idea("split_wide", PAR, "Split the reduction over sixteen blocks per SM's worth of partial states, so the "
         "loads of many blocks hide each other's latency.", {"split": "fill", "bps": 16}, 1.2, when=_few_kept),
    Idea("ilp2", COMP, "Give each thread two independent accumulators, alternating between them, so consecutive "
         "adds do not wait on each other.", {"ilp": 2}, 2.0, boost=_boost_if(_columns, 2.0)),
    Idea("ilp4", COMP, "Give each thread four independent accumulators over interleaved values: four loads and "
         "adds in flight per thread.", {"ilp": 4}, 1.8, boost=_boost_if(_columns, 2.5)),
    Idea("unroll", ASYNC, "Unroll the {what} loop four times so each thread issues several loads before the first "
         "is consumed.", {"unroll": True}, 1.5, boost=_boost_if(_columns, 2.5)),
    Idea("ldg", MEM, "Read the input through the read-only data cache (__ldg) in the {what} pass.",
         {"load": "ldg"}, 1.0),
    Idea("ldcs_apply", MEM, "Stream the normalisation pass's reads with evict-first hints (__ldcs): they are the "
         "last use of the input, so they should not push the statistics out of L2.", {"apply_load": "ldcs"}, 1.0,
         when=_normalising),
    Idea("stcs", MEM, "Write the normalised output with streaming stores (__stcs): it is never read again by this "
         "kernel.", {"store": "stcs"}, 1.0, when=_normalising),
    Idea("persistent_apply", PAR, "Launch the normalisation pass as a persistent grid of eight blocks per SM that "
         "loops over the tensor, instead of one block per 256 elements.", {"apply_grid": "persistent"}, 1.0,
         when=_normalising),
    Idea("threads128", PAR, "Use 128-thread blocks: more blocks resident per SM, a shorter tail.", {"threads": 128},
         1.0),
    Idea("threads512", PAR, "Use 512-thread blocks: each block covers more of a long reduction per step.",
         {"threads": 512}, 1.0),
    Idea("threads1024", PAR, "Use 1024-thread blocks, the most values in flight per block.", {"threads": 1024}, 0.6),
    Idea("launch_min2", PAR, "Ask __launch_bounds__ for two resident blocks per SM so the compiler keeps the "
         "accumulators in registers without spilling.", {"launch_min": 2}, 0.5),
    Idea("idx32", COMP, "Index with 32-bit integers (the tensor has fewer than 2^31 elements): the address "
         "arithmetic per value halves.", {"idx32": True}, 1.0),
    Idea("acc_double", PREC, "Accumulate the {red}-value sums in double and round once: the float sum's error grows "
         "with the count.", {"acc": "double"}, 0.5, when=_sums),
    Idea("acc_float", PREC, "Accumulate in float again: double adds run at a fraction of the float rate.",
         {"acc": "float"}, 1.0, when=lambda s, f: f.get("acc") == "double"),
    Idea("fast_exp", PREC, "Use the hardware exponential (__expf) in the online softmax: a few ulp, far inside "
         "1e-4.", {"fast_exp": True}, 1.5, when=_exp_kind),
    Idea("vec4_split", MEM, "Read float4 vectors and split the reduction over enough blocks to fill the GPU.",
         {"vec": 4, "split": "fill"}, 2.0, when=lambda s, f: reduce_cuda.vec_ok(s) and _few_kept_unsplit(s, f)),
    Idea("ilp2_unrolled", ASYNC, "Two accumulators per thread with the loop unrolled four times: eight loads in "
         "flight per thread.", {"ilp": 2, "unroll": True}, 1.2),
    Idea("split_off", CTRL, "Give every kept index one block again and drop the combine kernel: with {kept} kept "
         "indices the grid is full without splitting.", {"split": "none"}, 0.5,
         when=lambda s, f: f.get("split") == "fill" and not _few_kept(s, f)),
    Idea("ilp_off", CTRL, "Go back to one accumulator per thread: the extra states cost registers and a longer "
         "merge.", {"ilp": 1}, 0.3, when=lambda s, f: f.get("ilp", 1) > 1),
    Idea("stream_both", MEM, "Stream the normalisation's reads and writes with evict-first hints (__ldcs, __stcs).",
         {"apply_load": "ldcs", "store": "stcs"}, 0.8, when=_normalising),
    Idea("threads128_ilp4", PAR, "Use 128-thread blocks with four accumulators each: more blocks per SM, the same "
         "loads in flight.", {"threads": 128, "ilp": 4}, 0.8),
    Idea("unroll_off", CTRL, "Stop unrolling the reduction loop: the unrolled body's bounds tests cost more than the "
         "loads they overlap.", {"unroll": False}, 0.3, when=lambda s, f: bool(f.get("unroll"))),
]

REDUCE_C: list[Idea] = [
    Idea("omp", PAR, "Parallelise over work units (a kept row, a block of kept columns) with OpenMP.",
         {"par": "omp"}, 4.0),
    Idea("split_cores", PAR, "Split each kept index's {red} values into chunks so every core has work when the "
         "{kept} kept indices are fewer than the cores, and merge the partial states afterwards.",
         {"par": "omp", "split": "cores"}, 2.5, when=lambda s, f: s.geometry["a"] * s.geometry["b"] < 64),
    Idea("dynamic", PAR, "Hand work units to cores dynamically, one at a time.", {"par": "omp", "schedule": "dynamic"},
         0.8),
    Idea("guided", PAR, "Use guided scheduling: large chunks of units first, smaller ones at the end.",
         {"par": "omp", "schedule": "guided"}, 0.6),
    Idea("bind_close", PAR, "Bind OpenMP threads close to their parent (proc_bind(close)).",
         {"par": "omp", "proc_bind": "close"}, 0.4),
    Idea("bind_spread", PAR, "Spread OpenMP threads over the cores (proc_bind(spread)), a whole cache each.",
         {"par": "omp", "proc_bind": "spread"}, 0.4),
    Idea("if_parallel", PAR, "Fork threads only when the tensor is large enough to pay for waking them.",
         {"par": "omp", "if_parallel": True}, 0.4),
    Idea("bb16", MEM, "Accumulate sixteen kept columns per unit: the states stay in registers.", {"bb": 16}, 1.0,
         when=lambda s, f: s.geometry["b"] > 1),
    Idea("bb256", MEM, "Accumulate 256 kept columns per unit, so each step of the reduced loop reads a whole "
         "kilobyte in order.", {"bb": 256}, 1.2, when=lambda s, f: s.geometry["b"] > 1),
    Idea("restrict", MEM, "Declare the input and output pointers restrict, so loads are not re-read after stores.",
         {"restrict": True}, 0.8),
    Idea("simd_apply", COMP, "Vectorise the normalisation loop with #pragma omp simd.", {"simd": True}, 1.5,
         when=_normalising),
    Idea("unroll4", CTRL, "Unroll the column loop by four (#pragma GCC unroll 4).", {"unroll": 4}, 0.8),
    Idea("unroll8", CTRL, "Unroll the column loop by eight.", {"unroll": 8}, 0.6),
    Idea("acc_double", PREC, "Accumulate the sums in double and round once.", {"acc": "double"}, 0.6, when=_sums),
    Idea("acc_float", PREC, "Accumulate in float again: double halves the vector width.", {"acc": "float"}, 1.0,
         when=lambda s, f: f.get("acc") == "double"),
    Idea("omp_simd", COMP, "Run units on every core and vectorise the normalisation loop.",
         {"par": "omp", "simd": True}, 1.5, when=_normalising),
    Idea("omp_bb256", MEM, "Every core on units of 256 kept columns each.", {"par": "omp", "bb": 256}, 1.0,
         when=lambda s, f: s.geometry["b"] > 1),
    Idea("omp_restrict", MEM, "Every core, restrict pointers.", {"par": "omp", "restrict": True}, 0.8),
    Idea("split_dynamic", PAR, "Split the reduced range over the cores and hand the chunks out dynamically.",
         {"par": "omp", "split": "cores", "schedule": "dynamic"}, 0.8,
         when=lambda s, f: s.geometry["a"] * s.geometry["b"] < 64),
    Idea("unroll_off", CTRL, "Stop unrolling: the short column blocks run fewer iterations than the unroll.",
         {"unroll": 0}, 0.3, when=lambda s, f: f.get("unroll", 0) > 0),
    Idea("split_off", PAR, "Give each kept index one unit again: there are enough of them for the cores.",
         {"split": "none"}, 0.3, when=lambda s, f: f.get("split") == "cores"),
    Idea("bb64", MEM, "Use 64-column units: the states of a unit fit in L1 with its input lines.", {"bb": 64}, 0.5,
         when=lambda s, f: s.geometry["b"] > 1 and f.get("bb", 64) != 64),
    Idea("collapse_guided_simd", COMP, "Guided scheduling with a vectorised normalisation loop.",
         {"par": "omp", "schedule": "guided", "simd": True}, 0.6, when=_normalising),
    Idea("prefetch", ASYNC, "Prefetch the input row eight reduced steps ahead (__builtin_prefetch) while this one "
         "is accumulated: a reduction over a middle dimension jumps {kept}-value strides the hardware prefetcher "
         "does not follow.", {"prefetch": 8}, 0.8, when=lambda s, f: s.geometry["b"] > 1),
]


def _scan_rows(spec: OpSpec, f: dict) -> bool:
    """The scanned values of a row are consecutive (B == 1), so blocks or warps walk rows in tiles."""
    return spec.geometry["b"] == 1


SCAN_CUDA: list[Idea] = [
    Idea("vec4", MEM, "Load and store each thread's values as float4 vectors: four consecutive values per memory "
         "instruction, scanned in registers.", {"vec": 4}, 3.0, when=lambda s, f: scan_cuda.vec_ok(s)),
    Idea("ipt2", COMP, "Let each thread scan two vectors' worth of consecutive values per tile, halving the "
         "cross-thread shuffle scans per value.", {"ipt": 2}, 2.0, when=_scan_rows),
    Idea("ipt4", COMP, "Let each thread scan four vectors' worth of consecutive values per tile: the serial part "
         "in registers grows, the block-wide scan runs a quarter as often.", {"ipt": 4}, 1.5, when=_scan_rows),
    Idea("warp_rows", PAR, "Give each row one warp instead of a block: the tile's scan is shuffles only, with no "
         "shared memory and no block barrier, and a block runs several rows at once.", {"mapping": "warp"}, 2.0,
         when=_scan_rows),
    Idea("warp_vec", PAR, "One warp per row, each lane scanning eight consecutive values held as two float4 "
         "loads.", {"mapping": "warp", "vec": 4, "ipt": 2}, 1.5, when=lambda s, f: scan_cuda.vec_ok(s)),
    Idea("ldcs", MEM, "Read the input with evict-first streaming loads (__ldcs): each value is read once.",
         {"load": "ldcs"}, 1.2),
    Idea("ldg", MEM, "Read the input through the read-only data cache (__ldg).", {"load": "ldg"}, 0.6),
    Idea("stcs", MEM, "Write the scanned output with streaming stores (__stcs), keeping L2 for the input.",
         {"store": "stcs"}, 1.2),
    Idea("full_tiles", CTRL, "Drop the bounds tests: the row of {L} values is a whole number of {tile}-value "
         "tiles.", {"full_tiles": True}, 1.5, when=_scan_rows),
    Idea("threads128", PAR, "Use 128-thread blocks: a shorter block-wide scan per tile and more blocks per SM.",
         {"threads": 128}, 1.0),
    Idea("threads512", PAR, "Use 512-thread blocks: longer tiles, fewer carries between them.", {"threads": 512},
         0.8),
    Idea("threads1024", PAR, "Use 1024-thread blocks: one tile covers {tile} values.", {"threads": 1024}, 0.5),
    Idea("launch_min2", PAR, "Ask __launch_bounds__ for two resident blocks per SM.", {"launch_min": 2}, 0.5),
    Idea("acc_double", PREC, "Carry the running {sop} in double, so its rounding error no longer grows with the "
         "{L}-value row.", {"acc": "double"}, 0.6),
    Idea("acc_float", PREC, "Carry the running {sop} in float again: double shuffles and adds cost twice.",
         {"acc": "float"}, 1.0, when=lambda s, f: f.get("acc") == "double"),
    Idea("idx32", COMP, "Index with 32-bit integers (the tensor has fewer than 2^31 values).", {"idx32": True}, 0.8),
    Idea("stream_both", ASYNC, "Stream loads and stores (__ldcs/__stcs) so the next tile's loads are not queued "
         "behind write-allocations of this one.", {"load": "ldcs", "store": "stcs"}, 1.0),
    Idea("vec4_ipt4", ASYNC, "Issue four float4 loads per thread before scanning any of them: sixteen values in "
         "flight per thread hide the memory latency.", {"vec": 4, "ipt": 4}, 1.5,
         when=lambda s, f: scan_cuda.vec_ok(s)),
]

SCAN_C: list[Idea] = [
    Idea("omp", PAR, "Scan the {rows} independent rows in parallel with OpenMP, each thread owning whole rows.",
         {"par": "omp"}, 4.0),
    Idea("dynamic", PAR, "Hand rows to cores dynamically.", {"par": "omp", "schedule": "dynamic"}, 0.6),
    Idea("guided", PAR, "Guided scheduling of the rows.", {"par": "omp", "schedule": "guided"}, 0.5),
    Idea("bind_close", PAR, "Bind OpenMP threads close to their parent.", {"par": "omp", "proc_bind": "close"}, 0.4),
    Idea("bind_spread", PAR, "Spread OpenMP threads over the cores.", {"par": "omp", "proc_bind": "spread"}, 0.4),
    Idea("if_parallel", PAR, "Fork threads only for scans large enough to pay for it.",
         {"par": "omp", "if_parallel": True}, 0.3),
    Idea("blocked", ASYNC, "Scan each row in {L}-value chunks in two passes (chunk totals, then each chunk from its "
         "carried prefix): the totals pass is a plain reduction the core pipelines.", {"order": "blocked"}, 1.0,
         when=_scan_rows),
    Idea("blocked_small", ASYNC, "Two-pass blocked scan with 1024-value chunks that stay in L1 between passes.",
         {"order": "blocked", "chunk": 1024}, 0.8, when=_scan_rows),
    Idea("simd", COMP, "Vectorise the loop over columns that advance together (#pragma omp simd).",
         {"simd": True}, 2.0, when=lambda s, f: not _scan_rows(s, f)),
    Idea("prefetch", ASYNC, "Prefetch the row four steps ahead while this one is scanned.", {"prefetch": True}, 0.6,
         when=lambda s, f: not _scan_rows(s, f)),
    Idea("restrict", MEM, "Declare the pointers restrict so the compiler need not reload after each store.",
         {"restrict": True}, 1.0),
    Idea("unroll4", CTRL, "Unroll the scan loop by four.", {"unroll": 4}, 0.8),
    Idea("unroll8", CTRL, "Unroll the scan loop by eight.", {"unroll": 8}, 0.6),
    Idea("acc_double", PREC, "Carry the running {sop} in double.", {"acc": "double"}, 0.5),
    Idea("acc_float", PREC, "Carry the running {sop} in float again.", {"acc": "float"}, 1.0,
         when=lambda s, f: f.get("acc") == "double"),
    Idea("omp_restrict", MEM, "Rows on every core, restrict pointers.", {"par": "omp", "restrict": True}, 1.0),
    Idea("direct_again", CTRL, "Scan each row in one pass again: the second pass re-reads the row.",
         {"order": "direct"}, 0.3, when=lambda s, f: f.get("order") == "blocked"),
]


# ------------------------------------------------------------------------------------------------ cross-entropy

XENT_CUDA: list[Idea] = [
    Idea("online", COMP, "Compute each row's maximum and sum of exponentials in one pass, rescaling the running sum "
         "whenever the maximum grows, and merge the threads' (max, sum) pairs the same way: the {C} scores of a row "
         "are read once instead of twice.", {"stats": "online"}, 2.5, when=lambda s, f: f.get("stats") != "online"),
    Idea("vec4", MEM, "Read the scores as float4 vectors: a quarter of the load instructions, 16 bytes in flight "
         "per load.", {"vec": 4}, 3.0, when=lambda s, f: xent_cuda.vec_ok(s) and f.get("vec") != 4),
    Idea("warp_rows", PAR, "Give each row one warp instead of a block: the reductions are shuffles only, with no "
         "shared memory or barrier, and the {rows} rows still fill every SM.", {"mapping": "warp"}, 2.0,
         when=lambda s, f: f.get("mapping") != "warp" and s.geometry["c"] <= 16384),
    Idea("threads512", PAR, "Use 512 threads per row's block: more loads in flight per row.",
         {"threads": 512, "mapping": "block"}, 1.0, when=lambda s, f: f.get("threads") != 512),
    Idea("threads128", PAR, "Use 128-thread blocks: shorter block reductions and more rows resident per SM.",
         {"threads": 128}, 1.0, when=lambda s, f: f.get("threads") != 128),
    Idea("threads1024", PAR, "Use 1024-thread blocks, the most loads in flight per row.",
         {"threads": 1024, "mapping": "block"}, 0.6, when=lambda s, f: f.get("threads") != 1024),
    Idea("fast_exp", PREC, "Use the __expf intrinsic (the special-function unit's exp2 with a multiply): a few ulp "
         "off expf, far inside the tolerance of a mean over {rows} rows.", {"exp": "fast"}, 1.5,
         when=lambda s, f: f.get("exp") != "fast"),
    Idea("ldg", MEM, "Load the scores through the read-only data cache (__ldg): the second pass over a row then "
         "finds it in L1.", {"load": "ldg"}, 1.0, when=lambda s, f: f.get("load") != "ldg"),
    Idea("ldcs", MEM, "Stream the scores with evict-first loads (__ldcs): read once in the online pass, they "
         "should not displace anything in L2.", {"load": "ldcs"}, 0.8,
         when=lambda s, f: f.get("stats") == "online" and f.get("load") != "ldcs"),
    Idea("warp_vec", MEM, "One warp per row reading float4 vectors: each lane has four scores per load and no "
         "barrier stands between rows.", {"mapping": "warp", "vec": 4}, 1.5,
         when=lambda s, f: xent_cuda.vec_ok(s) and (f.get("mapping"), f.get("vec")) != ("warp", 4)),
    Idea("ilp2", ASYNC, "Give each thread two independent accumulators fed by alternate loads: two loads and two "
         "dependency chains in flight per thread.", {"ilp": 2}, 2.0, when=lambda s, f: f.get("ilp", 1) != 2),
    Idea("unroll", CTRL, "Unroll each thread's loop over its scores by four, so its loads issue back to back.",
         {"unroll": True}, 1.0, when=lambda s, f: not f.get("unroll")),
    Idea("launch_min2", CTRL, "Ask __launch_bounds__ for two resident blocks per SM: the compiler caps registers "
         "so more rows are in flight.", {"launch_min": 2}, 0.6, when=lambda s, f: not f.get("launch_min")),
    Idea("persistent", PAR, "Launch a persistent grid of four blocks per SM that walk the {rows} rows, instead of "
         "one short-lived block per row.", {"grid": "persistent", "bps": 4}, 1.0,
         when=lambda s, f: f.get("grid") != "persistent"),
    Idea("exp2", PREC, "Compute the exponentials as exp2f of the score times log2(e): the hardware's exp2 with "
         "one multiply folded in.", {"exp": "exp2"}, 1.0, when=lambda s, f: f.get("exp") not in ("exp2", "fast")),
    Idea("threads256", PAR, "Go back to 256-thread blocks, the middle ground between loads in flight and "
         "reduction cost.", {"threads": 256}, 0.6, when=lambda s, f: f.get("threads", 256) != 256),
]

XENT_C: list[Idea] = [
    Idea("omp_rows", PAR, "Split the {rows} rows over all cores with OpenMP: each thread owns whole rows.",
         {"par": "omp"}, 3.0, when=lambda s, f: f.get("par") != "omp"),
    Idea("simd", COMP, "Vectorise both passes over a row as SIMD reductions (max, then sum): eight scores per "
         "instruction.", {"simd": True, "stats": "two_pass"}, 2.0, when=lambda s, f: not f.get("simd")),
    Idea("poly_exp", COMP, "Replace libm's expf with an inlined polynomial exp that the compiler vectorises.",
         {"exp": "poly"}, 2.0, when=lambda s, f: f.get("exp") != "poly"),
    Idea("online", ASYNC, "One online pass per row (running maximum, rescaled sum): the row is read once.",
         {"stats": "online"}, 1.0, when=lambda s, f: f.get("stats") != "online"),
    Idea("unroll4", CTRL, "Unroll the row loops by four.", {"unroll": 4}, 0.8,
         when=lambda s, f: not f.get("simd") and f.get("unroll") != 4),
    Idea("restrict", MEM, "Declare the pointers restrict: the compiler may keep values in registers across "
         "stores.", {"restrict": True}, 0.6, when=lambda s, f: not f.get("restrict")),
    Idea("dynamic", PAR, "Hand out rows dynamically, so a thread slowed by the machine does not hold the others "
         "up.", {"par": "omp", "schedule": "dynamic"}, 0.6, when=lambda s, f: f.get("schedule") != "dynamic"),
    Idea("guided", PAR, "Hand out rows in shrinking chunks (guided schedule): few scheduling events, a balanced "
         "end.", {"par": "omp", "schedule": "guided"}, 0.5, when=lambda s, f: f.get("schedule") != "guided"),
    Idea("static1", PAR, "Deal the rows out round-robin (schedule(static, 1)), so neighbouring rows run on "
         "different cores at once.", {"par": "omp", "schedule": "static1"}, 0.4,
         when=lambda s, f: f.get("schedule") != "static1"),
    Idea("bind_close", PAR, "Pin the OpenMP threads to neighbouring cores (proc_bind(close)): each keeps its "
         "cache.", {"par": "omp", "proc_bind": "close"}, 0.5, when=lambda s, f: f.get("proc_bind") != "close"),
    Idea("bind_spread", PAR, "Spread the OpenMP threads over the sockets (proc_bind(spread)): every memory "
         "controller streams rows.", {"par": "omp", "proc_bind": "spread"}, 0.4,
         when=lambda s, f: f.get("proc_bind") != "spread"),
    Idea("if_parallel", PAR, "Fork threads only when the scores are many enough to pay for it.",
         {"par": "omp", "if_parallel": True}, 0.4, when=lambda s, f: not f.get("if_parallel")),
    Idea("double_sum", PREC, "Sum each row's exponentials in double: no float rounding over {C} terms, the "
         "conversions vectorised with the rest.", {"acc": "double"}, 0.8, when=lambda s, f: f.get("acc") != "double"),
    Idea("prefetch", ASYNC, "Prefetch the next row's cache lines while this one is reduced, so its first pass "
         "does not wait on memory.", {"prefetch": True}, 0.8, when=lambda s, f: not f.get("prefetch")),
    Idea("unroll8", CTRL, "Unroll the row loops by eight.", {"unroll": 8}, 0.6,
         when=lambda s, f: not f.get("simd") and f.get("unroll") != 8),
    Idea("two_pass", COMP, "Go back to two passes per row (maximum, then shifted exponentials): each is a "
         "vectorisable reduction, the second reading the row from cache.", {"stats": "two_pass"}, 0.8,
         when=lambda s, f: f.get("stats") == "online"),
]

# ------------------------------------------------------------------------------------------------ row losses

ROWLOSS_CUDA: list[Idea] = [
    Idea("vec4", MEM, "Read every input as float4 vectors: a quarter of the load instructions, 16 bytes in flight "
         "per load and input.", {"vec": 4}, 3.0, when=lambda s, f: rowloss_cuda.vec_ok(s) and f.get("vec") != 4),
    Idea("warp_rows", PAR, "Give each row one warp instead of a block: the row sums are shuffles only, with no "
         "shared memory or barrier, and the {rows} rows still fill every SM.", {"mapping": "warp"}, 2.0,
         when=lambda s, f: f.get("mapping") != "warp" and s.geometry["d"] <= 16384),
    Idea("warp_vec", MEM, "One warp per row reading float4 vectors of every input.", {"mapping": "warp", "vec": 4},
         1.5, when=lambda s, f: rowloss_cuda.vec_ok(s) and (f.get("mapping"), f.get("vec")) != ("warp", 4)),
    Idea("ldcs", MEM, "Stream the inputs with evict-first loads (__ldcs): each value is read once.",
         {"load": "ldcs"}, 1.0, when=lambda s, f: f.get("load") != "ldcs"),
    Idea("ldg", MEM, "Load the inputs through the read-only data cache (__ldg).", {"load": "ldg"}, 0.6,
         when=lambda s, f: f.get("load") != "ldg"),
    Idea("unroll", ASYNC, "Unroll each thread's loop over its values by four, so the loads of four steps issue "
         "before the first sum needs them.", {"unroll": True}, 1.5, when=lambda s, f: not f.get("unroll")),
    Idea("double_acc", PREC, "Keep each thread's partial sums in double: no float rounding over the {D} terms of "
         "a row.", {"acc": "double"}, 0.8, when=lambda s, f: f.get("acc") != "double"),
    Idea("float_acc", PREC, "Go back to float partial sums: half the registers and shuffles of double.",
         {"acc": "float"}, 0.5, when=lambda s, f: f.get("acc") == "double"),
    Idea("threads512", PAR, "Use 512 threads per row's block: more loads in flight per row.",
         {"threads": 512, "mapping": "block"}, 1.0, when=lambda s, f: f.get("threads") != 512),
    Idea("threads128", PAR, "Use 128-thread blocks: shorter block reductions and more rows resident per SM.",
         {"threads": 128}, 1.0, when=lambda s, f: f.get("threads") != 128),
    Idea("threads1024", PAR, "Use 1024-thread blocks, the most loads in flight per row.",
         {"threads": 1024, "mapping": "block"}, 0.6, when=lambda s, f: f.get("threads") != 1024),
    Idea("threads256", PAR, "Go back to 256-thread blocks.", {"threads": 256}, 0.5,
         when=lambda s, f: f.get("threads", 256) != 256),
    Idea("persistent", PAR, "Launch a persistent grid of four blocks per SM that walk the {rows} rows.",
         {"grid": "persistent", "bps": 4}, 1.0, when=lambda s, f: f.get("grid") != "persistent"),
    Idea("launch_min2", CTRL, "Ask __launch_bounds__ for two resident blocks per SM: the compiler caps registers "
         "so more rows are in flight.", {"launch_min": 2}, 0.6, when=lambda s, f: not f.get("launch_min")),
    Idea("launch_min4", CTRL, "Ask __launch_bounds__ for four resident blocks per SM.", {"launch_min": 4}, 0.4,
         when=lambda s, f: f.get("launch_min") != 4),
    Idea("fewer_blocks", COMP, "Persistent blocks of 128 threads, eight per SM: each block's rows are summed by "
         "fewer threads with fewer barriers.", {"grid": "persistent", "bps": 8, "threads": 128}, 0.6,
         when=lambda s, f: (f.get("grid"), f.get("bps")) != ("persistent", 8)),
]

ROWLOSS_C: list[Idea] = [
    Idea("omp_rows", PAR, "Split the {rows} rows over all cores with OpenMP: each thread owns whole rows.",
         {"par": "omp"}, 3.0, when=lambda s, f: f.get("par") != "omp"),
    Idea("simd", COMP, "Vectorise the pass over a row as SIMD reductions of all its sums at once.", {"simd": True},
         2.5, when=lambda s, f: not f.get("simd")),
    Idea("double_acc", PREC, "Sum each row in double: no float rounding over the {D} terms.", {"acc": "double"}, 0.8,
         when=lambda s, f: f.get("acc") != "double"),
    Idea("float_acc", PREC, "Go back to float sums: twice the SIMD lanes of double.", {"acc": "float"}, 0.5,
         when=lambda s, f: f.get("acc") == "double"),
    Idea("prefetch", ASYNC, "Prefetch the next row of every input while this one is summed.", {"prefetch": True},
         0.8, when=lambda s, f: not f.get("prefetch")),
    Idea("unroll4", CTRL, "Unroll the row loop by four.", {"unroll": 4}, 0.8,
         when=lambda s, f: not f.get("simd") and f.get("unroll") != 4),
    Idea("unroll8", CTRL, "Unroll the row loop by eight.", {"unroll": 8}, 0.6,
         when=lambda s, f: not f.get("simd") and f.get("unroll") != 8),
    Idea("restrict", MEM, "Declare the pointers restrict: the compiler may keep values in registers across "
         "stores.", {"restrict": True}, 0.6, when=lambda s, f: not f.get("restrict")),
    Idea("dynamic", PAR, "Hand out rows dynamically, so a thread slowed by the machine does not hold the others "
         "up.", {"par": "omp", "schedule": "dynamic"}, 0.6, when=lambda s, f: f.get("schedule") != "dynamic"),
    Idea("guided", PAR, "Hand out rows in shrinking chunks (guided schedule).", {"par": "omp", "schedule": "guided"},
         0.5, when=lambda s, f: f.get("schedule") != "guided"),
    Idea("static1", PAR, "Deal the rows out round-robin (schedule(static, 1)).", {"par": "omp", "schedule": "static1"},
         0.4, when=lambda s, f: f.get("schedule") != "static1"),
    Idea("bind_close", PAR, "Pin the OpenMP threads to neighbouring cores (proc_bind(close)).",
         {"par": "omp", "proc_bind": "close"}, 0.5, when=lambda s, f: f.get("proc_bind") != "close"),
    Idea("bind_spread", PAR, "Spread the OpenMP threads over the sockets (proc_bind(spread)): every memory "
         "controller streams rows.", {"par": "omp", "proc_bind": "spread"}, 0.4,
         when=lambda s, f: f.get("proc_bind") != "spread"),
    Idea("if_parallel", PAR, "Fork threads only when the rows are many enough to pay for it.",
         {"par": "omp", "if_parallel": True}, 0.4, when=lambda s, f: not f.get("if_parallel")),
    Idea("simd_double", COMP, "SIMD reductions in double: exact enough for long rows, still vectorised.",
         {"simd": True, "acc": "double"}, 0.6, when=lambda s, f: (f.get("simd"), f.get("acc")) != (True, "double")),
    Idea("serial", MEM, "Stay on one core for few short rows: no fork, and each row streams through one cache.",
         {"par": "serial"}, 0.3, when=lambda s, f: f.get("par") == "omp" and s.geometry["rows"] * s.geometry["d"]
         < 1 << 16),
]

# ------------------------------------------------------------------------------------------------ attention

ATTN_CUDA: list[Idea] = [
    Idea("bq8", PAR, "Give each block eight query rows: every key tile staged in shared memory serves twice the "
         "queries.", {"bq": 8}, 2.5, when=lambda s, f: f.get("bq", 4) != 8),
    Idea("bq16", PAR, "Give each block sixteen query rows: each key tile serves sixteen queries (more output "
         "registers per thread).", {"bq": 16}, 1.2, when=lambda s, f: f.get("bq", 4) != 16),
    Idea("bq4", PAR, "Go back to four query rows per block: more blocks in flight and fewer output registers.",
         {"bq": 4}, 0.5, when=lambda s, f: f.get("bq", 4) != 4),
    Idea("bk16", CTRL, "Stage sixteen keys per tile: half the barriers and running-softmax updates per key.",
         {"bk": 16}, 1.5, when=lambda s, f: f.get("bk", 8) != 16),
    Idea("bk32", CTRL, "Stage thirty-two keys per tile: a quarter of the barriers per key of eight-key tiles.",
         {"bk": 32}, 1.0, when=lambda s, f: f.get("bk", 8) != 32),
    Idea("bk8", CTRL, "Go back to eight keys per tile: less shared memory per block, more blocks per SM.",
         {"bk": 8}, 0.5, when=lambda s, f: f.get("bk", 8) != 8),
    Idea("vec4", MEM, "Stage the query and key tiles with float4 loads: a quarter of the load instructions.",
         {"vec": 4}, 2.0, when=lambda s, f: attn_cuda.vec_ok(s) and f.get("vec") != 4),
    Idea("vldg", MEM, "Read the value rows through the read-only data cache (__ldg): the blocks of one head read "
         "the same rows.", {"vload": "ldg"}, 1.0, when=lambda s, f: f.get("vload") != "ldg"),
    Idea("fast_exp", PREC, "Use the __expf intrinsic for the softmax's exponentials: a few ulp off expf, inside the "
         "tolerance.", {"exp": "fast"}, 1.2, when=lambda s, f: f.get("exp") != "fast"),
    Idea("exact_exp", PREC, "Go back to expf for the exponentials.", {"exp": "expf"}, 0.3,
         when=lambda s, f: f.get("exp") == "fast"),
    Idea("threads128", PAR, "Use 128-thread blocks: each thread owns more output columns, more blocks fit per SM.",
         {"threads": 128}, 0.8, when=lambda s, f: f.get("threads", 256) != 128),
    Idea("threads512", PAR, "Use 512-thread blocks: more warps score the tile's pairs at once.", {"threads": 512},
         0.8, when=lambda s, f: f.get("threads", 256) != 512),
    Idea("threads256", PAR, "Go back to 256-thread blocks.", {"threads": 256}, 0.4,
         when=lambda s, f: f.get("threads", 256) != 256),
    Idea("unroll", ASYNC, "Unroll the loop over key tiles by four, so one tile's loads are issued while the "
         "previous tile's scores are folded in.", {"unroll": True}, 0.8, when=lambda s, f: not f.get("unroll")),
    Idea("launch_min2", CTRL, "Ask __launch_bounds__ for two resident blocks per SM.", {"launch_min": 2}, 0.5,
         when=lambda s, f: not f.get("launch_min")),
    Idea("square_tiles", COMP, "Square tiles of sixteen queries by sixteen keys: as many scores per staged byte as "
         "the registers allow.", {"bq": 16, "bk": 16}, 0.8,
         when=lambda s, f: (f.get("bq"), f.get("bk")) != (16, 16)),
]

ATTN_C: list[Idea] = [
    Idea("omp_rows", PAR, "Split the query rows of every batch and head over all cores with OpenMP.",
         {"par": "omp"}, 3.0, when=lambda s, f: f.get("par") != "omp"),
    Idea("simd", COMP, "Vectorise the dot products and the value-row updates as SIMD loops.", {"simd": True}, 2.5,
         when=lambda s, f: not f.get("simd")),
    Idea("online", ASYNC, "One online pass over the keys per query (running maximum, rescaled output): no buffer of "
         "scores.", {"stats": "online"}, 1.0, when=lambda s, f: f.get("stats") != "online"),
    Idea("two_pass", COMP, "Two passes per query: all scores into a buffer, then their softmax and the weighted "
         "sum of value rows (no rescaling of the output).", {"stats": "two_pass"}, 0.8,
         when=lambda s, f: f.get("stats") == "online"),
    Idea("poly_exp", COMP, "Replace libm's expf with an inlined polynomial exp that the compiler vectorises.",
         {"exp": "poly"}, 1.0, when=lambda s, f: f.get("exp") != "poly"),
    Idea("double_dot", PREC, "Accumulate the dot products in double.", {"dot": "double"}, 0.6,
         when=lambda s, f: f.get("dot") != "double"),
    Idea("float_dot", PREC, "Go back to float dot products: twice the SIMD lanes.", {"dot": "float"}, 0.4,
         when=lambda s, f: f.get("dot") == "double"),
    Idea("prefetch", MEM, "Prefetch the next key row while this one is scored.", {"prefetch": True}, 0.8,
         when=lambda s, f: not f.get("prefetch")),
    Idea("restrict", MEM, "Declare the pointers restrict.", {"restrict": True}, 0.6,
         when=lambda s, f: not f.get("restrict")),
    Idea("unroll4", CTRL, "Unroll the inner loops by four.", {"unroll": 4}, 0.8,
         when=lambda s, f: not f.get("simd") and f.get("unroll") != 4),
    Idea("unroll8", CTRL, "Unroll the inner loops by eight.", {"unroll": 8}, 0.6,
         when=lambda s, f: not f.get("simd") and f.get("unroll") != 8),
    Idea("dynamic", PAR, "Hand out query rows dynamically: causal rows grow in cost, and a slowed thread does not "
         "hold the others up.", {"par": "omp", "schedule": "dynamic"}, 0.8,
         when=lambda s, f: f.get("schedule") != "dynamic"),
    Idea("guided", PAR, "Hand out query rows in shrinking chunks (guided schedule).",
         {"par": "omp", "schedule": "guided"}, 0.5, when=lambda s, f: f.get("schedule") != "guided"),
    Idea("static1", PAR, "Deal the query rows out round-robin (schedule(static, 1)): causal rows of every length "
         "on every core.", {"par": "omp", "schedule": "static1"}, 0.5,
         when=lambda s, f: f.get("schedule") != "static1"),
    Idea("bind_close", PAR, "Pin the OpenMP threads to neighbouring cores (proc_bind(close)): the threads of one "
         "head share its keys in cache.", {"par": "omp", "proc_bind": "close"}, 0.5,
         when=lambda s, f: f.get("proc_bind") != "close"),
    Idea("if_parallel", PAR, "Fork threads only when the attention is large enough to pay for it.",
         {"par": "omp", "if_parallel": True}, 0.4, when=lambda s, f: not f.get("if_parallel")),
]

CATALOGUE: dict[tuple[str, str], list[Idea]] = {
    ("attn", "cuda"): ATTN_CUDA,
    ("attn", "cpu"): ATTN_C,
    ("rowloss", "cuda"): ROWLOSS_CUDA,
    ("rowloss", "cpu"): ROWLOSS_C,
    ("xent", "cuda"): XENT_CUDA,
    ("xent", "cpu"): XENT_C,
    ("scan", "cuda"): SCAN_CUDA,
    ("scan", "cpu"): SCAN_C,
    ("reduce", "cuda"): REDUCE_CUDA,
    ("reduce", "cpu"): REDUCE_C,
    ("window", "cuda"): WINDOW_CUDA,
    ("window", "cpu"): WINDOW_C,
    ("conv", "cuda"): CONV_CUDA,
    ("conv", "cpu"): CONV_C,
    ("matmul", "cuda"): MATMUL_CUDA,
    ("matmul", "cpu"): MATMUL_C,
    ("rowwise", "cuda"): ROWWISE_CUDA,
    ("rowwise", "cpu"): ROWWISE_C,
    ("elementwise", "cuda"): ELEMENTWISE_CUDA,
    ("elementwise", "cpu"): ELEMENTWISE_C,
}


def catalogue(family: str, backend: str) -> list[Idea]:
    return CATALOGUE[(family, backend)]


def _check_unique() -> None:
    for (family, backend), ideas in CATALOGUE.items():
        keys = [i.key for i in ideas]
        if len(keys) != len(set(keys)):
            raise AssertionError(f"duplicate idea keys in {family}/{backend}")
        for i in ideas:
            if i.kind not in KINDS:
                raise AssertionError(f"idea {i.key} has unknown kind {i.kind!r}")


_check_unique()
