"""Which offline kernel family fits a reference, read from its traced operator graph (``graph.trace``).

The answer is what a user checks before a long run: the family and op tag a code generator would take, with the
parameters it needs (the dimension reduced or normalised over, eps, strides, ...), or one line saying why no
family fits and what the graph holds instead. Patterns are matched on ATen operations, so every spelling of a
computation (functional, module, method, helper) is recognised alike, and near misses are named (a softmax over a
dimension other than the last, a convolution with groups) rather than silently searched without help.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from kernelcraft.problems.graph import OpGraph, OpNode, Ref, TensorInfo, TraceError, trace
from kernelcraft.problems.loader import Problem
from kernelcraft.problems.ops import op_family


@dataclass(frozen=True)
class Recognition:
    """``op`` (and its ``family``) when a family fits, else ``reason``; ``graph`` is the one-line summary."""

    op: str | None
    params: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    graph: str = ""
    # traced in eval mode (the forward draws random numbers when training: a dropout), so probed in eval mode too
    eval_mode: bool = False

    @property
    def family(self) -> str | None:
        return op_family(self.op)

    def line(self) -> str:
        if self.op is not None:
            shown = ", ".join(f"{k}={v}" for k, v in sorted(self.params.items()) if k not in HIDDEN_PARAMS)
            return f"{self.family}/{self.op}" + (f" ({shown})" if shown else "")
        return f"no offline family fits: {self.reason}"


# long generated text and shapes a listing does not show
HIDDEN_PARAMS = ("body", "in_shape", "out_shape", "a_batched", "b_batched", "diagonal", "elem", "terms", "rows",
                 "out")


class _Miss(Exception):
    """A pattern that almost fits; the message says what is off."""


_OTHER_FLOATS = frozenset({"torch.float16", "torch.bfloat16", "torch.float64", "torch.complex64",
                           "torch.complex128"})


def recognise(graph: OpGraph) -> Recognition:
    summary = graph.summary()
    nodes = graph.compute_nodes()
    # Every family computes in float32: a half, bfloat16 or double input is named as such, whatever its graph
    # (a half-precision SDPA traces through casts and the math path, which would otherwise be the reason).
    wide = [str(t) for t in graph.inputs if isinstance(t, TensorInfo) and t.dtype in _OTHER_FLOATS]
    try:
        if wide:
            raise _Miss(f"the offline families take float32 tensors, not {', '.join(wide)}")
        found = _match(graph, nodes)
    except _Miss as miss:
        return Recognition(None, reason=f"{miss}; the graph holds {summary}", graph=summary)
    if found is None:
        return Recognition(None, reason=f"the graph holds {summary}", graph=summary)
    op, params = found
    return Recognition(op, params, graph=summary)


def recognise_problem(problem: Problem) -> Recognition:
    """Trace ``problem`` under fake tensors and recognise it; a forward that cannot be traced is a reason too."""
    try:
        graph = trace(problem)
    except TraceError as err:
        return Recognition(None, reason=f"the forward could not be traced ({str(err).split(': ', 1)[-1]})")
    found = recognise(graph)
    return replace(found, eval_mode=True) if graph.eval_mode else found


def recognise_cached(problem: Problem, cache_dir: Path) -> Recognition:
    """:func:`recognise_problem`, kept in ``cache_dir`` under a key of the problem file, its size, torch's version
    and this recogniser's own code: the workflow plans its DAG from recognitions on every invocation (and under a
    cluster executor, in every job), and only the first has to import torch and trace."""
    digest = hashlib.sha256()
    for part in (problem.path.read_bytes(), problem.size.encode(), _torch_version().encode(),
                 Path(__file__).read_bytes(), (Path(__file__).parent / "graph.py").read_bytes()):
        digest.update(hashlib.sha256(part).digest())
    path = Path(cache_dir) / f"{problem.id}-{digest.hexdigest()[:20]}.json"
    try:
        return Recognition(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        pass
    found = recognise_problem(problem)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as out:
        json.dump(asdict(found), out)
    os.replace(tmp, path)  # concurrent planners write the same content; the rename keeps each file whole
    return found


def _torch_version() -> str:
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return "none"


# ------------------------------------------------------------------------------------------------ patterns


def _is_input(a: Any, index: int | None = None) -> bool:
    return isinstance(a, Ref) and a.kind == "input" and (index is None or a.index == index)


def _is_param(a: Any, name: str) -> bool:
    return isinstance(a, Ref) and a.kind == "param" and a.index == name


def _is_node(a: Any, node: OpNode, graph: OpGraph) -> bool:
    return isinstance(a, Ref) and a.kind == "node" and graph.nodes[a.index] is node


def _float32(graph: OpGraph, node: OpNode) -> None:
    bad = [str(t.info) for t in node.tensors() if t.info.dtype != "torch.float32"]
    if bad:
        raise _Miss(f"the offline families take float32 tensors, not {', '.join(bad)}")


def _arg(node: OpNode, position: int, name: str, default: Any) -> Any:
    if len(node.args) > position:
        return node.args[position]
    return node.kwargs.get(name, default)


def _last(dim: Any, rank: int) -> bool:
    dims = dim if isinstance(dim, list | tuple) else [dim]
    return len(dims) == 1 and isinstance(dims[0], int) and dims[0] % rank == rank - 1


def _match(graph: OpGraph, nodes: list[OpNode]) -> tuple[str, dict] | None:
    if not nodes:
        raise _Miss("the forward computes nothing (only views or copies)")
    if len(nodes) == 1:
        single = _single(graph, nodes[0])
        if single is not None:
            return single
    if [n.op for n in nodes] in (["aten.mm", "aten.triu"], ["aten.mm", "aten.tril"], ["aten.bmm", "aten.triu"],
                                 ["aten.bmm", "aten.tril"]):
        return _matmul(graph, nodes)
    point = _pointwise(graph, nodes)
    if point is not None:
        return point
    if [n.op for n in nodes] in (["aten.div", "aten._softmax"], ["aten.mul", "aten._softmax"]):
        return _scaled_softmax(graph, nodes)
    if [n.op for n in nodes] == ["aten.diag_embed", "aten.mm"]:
        return _diagonal_product(graph, nodes)
    if [n.op for n in nodes] == ["aten._log_softmax", "aten.nll_loss_forward"]:
        return _cross_entropy(graph, nodes)
    if len(nodes) == 1 and nodes[0].op in _ATTENTION:
        return _attention(graph, nodes[0])
    if [n.op for n in nodes] in (_SDPA_MATH, _SDPA_MATH_CAUSAL):
        return _attention_math(graph, nodes)
    manual = _attention_by_hand(graph, nodes)
    if manual is not None:
        return manual
    row = _row_loss(graph)
    if row is not None:
        return row
    loss = _loss(graph, nodes)
    if loss is not None:
        return loss
    rms = _rmsnorm(graph, nodes)
    if rms is not None:
        return rms
    norm = _normalisation(graph, nodes)
    if norm is not None:
        return norm
    scan = _scan(graph, nodes)
    if scan is not None:
        return scan
    if [n.op for n in nodes] == ["aten.convolution", "aten.relu", "aten.max_pool2d_with_indices"]:
        conv, relu, pool = nodes
        op, params = _conv(graph, conv)
        if not _is_node(relu.args[0], conv, graph) or not _is_node(pool.args[0], relu, graph):
            return None
        kernel = list(_arg(pool, 1, "kernel_size", []))
        stride = list(_arg(pool, 2, "stride", []) or kernel)
        padding = list(_arg(pool, 3, "padding", [0, 0]))
        dilation = list(_arg(pool, 4, "dilation", [1, 1]))
        if len(set(kernel)) != 1 or len(set(stride)) != 1 or len(set(padding)) != 1 or set(dilation) != {1} \
                or _arg(pool, 5, "ceil_mode", False):
            raise _Miss("the conv+ReLU+pool family takes square max pooling without dilation or ceil_mode")
        return "conv2d_relu_maxpool", params | {"pool_kernel_size": kernel[0], "pool_stride": stride[0],
                                                "pool_padding": padding[0]}
    return None


def _scaled_softmax(graph: OpGraph, nodes: list[OpNode]) -> tuple[str, dict] | None:
    """softmax(x / t) or softmax(x * c) over the last dimension for a positive number (a temperature): the rowwise
    family scales every exponent's argument, a difference from the row's maximum, which keeps its place."""
    scale, softmax = nodes
    number = scale.args[1] if len(scale.args) > 1 else None
    if not (_is_input(scale.args[0], 0) and isinstance(number, int | float) and not isinstance(number, bool)
            and _is_node(softmax.args[0], scale, graph) and _is_output(graph, softmax)):
        return None
    _float32(graph, scale)
    c = 1.0 / float(number) if scale.op == "aten.div" else float(number)
    if not (c > 0 and math.isfinite(c)):
        raise _Miss(f"a softmax of the input scaled by {c!r} (the rowwise family takes a positive finite scale)")
    if not _last(_arg(softmax, 1, "dim", -1), len(scale.args[0].info.shape)):
        raise _Miss("a softmax of the scaled input over a dimension other than the last")
    return "softmax", {"dim": -1, "scale": c}


def _single(graph: OpGraph, node: OpNode) -> tuple[str, dict] | None:
    x = node.args[0] if node.args else None
    if node.op in POOL_OPS:
        return _pool(graph, node)
    if node.op in ("aten.adaptive_max_pool2d", "aten.adaptive_max_pool3d"):
        return _adaptive_max(graph, node)
    if node.op in REDUCTIONS and not _is_input(x, 0):
        return _reduce(graph, node)  # of a view of the input
    if node.op not in ("aten.mm", "aten.addmm", "aten.bmm", "aten.mv", "aten.convolution") and not _is_input(x, 0):
        return None
    _float32(graph, node)
    rank = len(x.info.shape) if isinstance(x, Ref) else 0
    if node.op == "aten.relu":
        return "relu", {}
    if node.op == "aten.gelu" and _arg(node, 1, "approximate", "none") == "none":
        return "gelu", {"approximate": "none"}  # the tanh form is a pointwise chain
    if node.op in ("aten._softmax", "aten._log_softmax"):
        dim = _arg(node, 1, "dim", -1)
        name = "softmax" if node.op == "aten._softmax" else "log_softmax"
        if not _last(dim, rank):  # the reduce family normalises over any dimension
            return "normalize", {"kind": name, "dims": _dims(dim, rank), "in_shape": list(x.info.shape)}
        return name, {"dim": -1}
    if node.op == "aten.sum" and node.overload.endswith("dim_IntList") \
            and _last(_arg(node, 1, "dim", None), rank):
        return "sum_lastdim", {"dim": -1, "keepdim": bool(_arg(node, 2, "keepdim", False))}
    if node.op in REDUCTIONS:
        return _reduce(graph, node)
    if node.op == "aten.native_layer_norm":
        shape = list(_arg(node, 1, "normalized_shape", []))
        weight, bias = _arg(node, 2, "weight", None), _arg(node, 3, "bias", None)
        if (weight is None) != (bias is None):
            raise _Miss("a layer norm with a weight but no bias (the rowwise family applies both or neither)")
        return "layernorm", {"normalized_dims": len(shape), "eps": _arg(node, 4, "eps", 1e-5)}
    if node.op in ("aten.mm", "aten.addmm", "aten.bmm", "aten.mv"):
        return _matmul(graph, [node])
    if node.op == "aten.convolution":
        return _conv(graph, node)
    return None


# Operations a matrix operand may pass through between a graph input and the product: they move no data (views,
# dimension permutations), so the operand is the input read in some order.
_LAYOUT_OPS = frozenset({"aten.view", "aten._unsafe_view", "aten.reshape", "aten.unsqueeze",
                                           "aten.squeeze", "aten.clone", "aten.contiguous", "aten.alias",
                                           "aten.detach", "aten.lift_fresh_copy", "aten.flatten", "aten.unflatten",
                                           "aten.permute", "aten.transpose", "aten.t", "aten.expand"})


def _chain(graph: OpGraph, a: Any, params: bool = False) -> tuple[Any, list[OpNode]] | None:
    """The graph input ``a`` reads (or, with ``params``, the model parameter) and the layout operations in
    between, first applied first."""
    ops: list[OpNode] = []
    while isinstance(a, Ref) and a.kind == "node":
        node = graph.nodes[a.index]
        if node.op not in _LAYOUT_OPS:
            return None
        ops.append(node)
        a = node.args[0]
    kinds = ("input", "param") if params else ("input",)
    return (a, ops[::-1]) if isinstance(a, Ref) and a.kind in kinds else None


def _order(start: tuple[int, ...], ops: list[OpNode]) -> tuple[bool, bool] | None:
    """Follow a tensor's element order through layout operations: each dimension of size above one is tagged with
    the axis of the contiguous tensor it walks (size-one dimensions carry none). A reshape is taken only of a
    tensor read in order, or with its last two axes swapped and kept; a permutation reorders the tags. The answer
    is (swapped, broadcast): the result is the start read in order, or with its last two axes swapped, and whether
    an expand repeats it over a batch; None for any other order."""
    tags: list[int | None] = [i if n > 1 else None for i, n in enumerate(start)]
    shape = list(start)
    broadcast = False

    def state() -> str | None:
        ids = [t for t in tags if t is not None]
        if ids == sorted(ids):
            return "in order"
        if len(ids) >= 2 and ids[:-2] + [ids[-1], ids[-2]] == sorted(ids):
            return "swapped"
        return None

    for node in ops:
        out = node.out if isinstance(node.out, TensorInfo) else None
        if out is None:
            return None
        new = list(out.shape)
        if node.op in ("aten.permute", "aten.transpose", "aten.t"):
            rank = len(shape)
            if node.op == "aten.permute":
                perm = [int(d) % rank for d in node.args[1]]
            else:
                d0, d1 = (int(node.args[1]) % rank, int(node.args[2]) % rank) if node.op == "aten.transpose" \
                    else (0, 1)
                perm = list(range(rank))
                perm[d0], perm[d1] = perm[d1], perm[d0]
            tags = [tags[i] for i in perm]
        elif node.op == "aten.expand":
            if len(new) < len(shape) or any(o != n and o != 1 for o, n in zip(shape, new[len(new) - len(shape):],
                                                                              strict=True)):
                return None
            broadcast = broadcast or new != shape
            tags = [None] * (len(new) - len(shape)) + [t if o == n else None for t, o, n in
                                                       zip(tags, shape, new[len(new) - len(shape):], strict=True)]
        elif node.op in ("aten.unsqueeze", "aten.squeeze") or new == shape:
            kept = [t for t in tags if t is not None]
            tags = [kept.pop(0) if n > 1 else None for n in new] if len(kept) == sum(n > 1 for n in new) else None
            if tags is None:
                return None
        else:  # a reshape: in order, or swapped with the last two axes kept whole
            st = state()
            if st is None or broadcast:
                return None
            big = [n for n in new if n > 1]
            if st == "in order":
                fresh = iter(range(len(big)))
                tags = [next(fresh) if n > 1 else None for n in new]
            else:
                old_big = [n for t, n in zip(tags, shape, strict=True) if t is not None]
                if len(big) < 2 or big[-2:] != old_big[-2:]:
                    return None
                ids = list(range(len(big)))
                ids[-2], ids[-1] = ids[-1], ids[-2]
                fresh = iter(ids)
                tags = [next(fresh) if n > 1 else None for n in new]
        shape = new
    st = state()
    return None if st is None else (st == "swapped", broadcast)


def _linear_bias(graph: OpGraph, mm: OpNode) -> str:
    """The parameter ``addmm`` adds to the product (a linear layer's bias, one value per output column), or a
    miss: the matmul family adds a bias vector and nothing else."""
    bias = mm.args[0]
    n = mm.args[2].info.shape[-1]
    if float(_arg(mm, 3, "beta", 1)) != 1.0 or float(_arg(mm, 4, "alpha", 1)) != 1.0:
        raise _Miss("a scaled addmm (beta or alpha other than 1); the matmul family adds a linear layer's bias")
    if not (isinstance(bias, Ref) and bias.kind == "param" and tuple(bias.info.shape) == (n,)):
        raise _Miss("an addmm whose added term is not a parameter vector of the output's width (a linear layer's "
                    "bias)")
    return str(bias.index)


def _matmul(graph: OpGraph, nodes: list[OpNode]) -> tuple[str, dict] | None:
    """A (batched) product of the two inputs, each read in order or transposed (any views in between), optionally
    kept upper or lower triangular; or a linear layer: the input times a parameter matrix read transposed, plus a
    parameter bias vector (``addmm``) or not. The plain 2-D A @ B of the inputs as given has no layout
    parameters."""
    mm = nodes[0]
    _float32(graph, mm)
    operands = mm.args[1:3] if mm.op == "aten.addmm" else mm.args[:2]
    a_shape, b_shape = operands[0].info.shape, operands[1].info.shape
    if mm.op == "aten.mv":  # a matrix times a vector: the vector is the one column of B
        b_shape = (*b_shape, 1)
    found = [_chain(graph, x, params=True) for x in operands]
    linear = (found[0] is not None and found[1] is not None and found[0][0].kind == "input"
              and found[0][0].index == 0 and found[1][0].kind == "param" and len(graph.inputs) == 1
              and mm.op in ("aten.mm", "aten.addmm"))
    bias = _linear_bias(graph, mm) if mm.op == "aten.addmm" and linear else ""
    if not linear and (mm.op == "aten.addmm" or any(f is None or f[0].kind != "input" for f in found)
                       or [f[0].index for f in found] != [0, 1]):
        raise _Miss("a matrix product of operands other than the two inputs or the input and a parameter matrix "
                    "(the matmul family takes the first input times the second, viewed or transposed, or a linear "
                    "layer's input times its weight)")
    orders = [_order(f[0].info.shape, f[1]) for f in found]
    if any(o is None for o in orders):
        raise _Miss("a matrix product of operands permuted beyond a transpose (the matmul family takes the two "
                    "inputs read in order or transposed)")
    last = nodes[-1]
    tri, diagonal = 0, 0
    if last is not mm:
        if not _is_node(last.args[0], mm, graph):
            return None
        tri = 1 if last.op == "aten.triu" else 2
        diagonal = int(_arg(last, 1, "diagonal", 0))
    if not _is_output_view(graph, last):
        return None
    batch = a_shape[0] if len(a_shape) == 3 else 1
    m, k, n = a_shape[-2], a_shape[-1], b_shape[-1]
    (ta, a_bcast), (tb, b_bcast) = orders
    plain = len(a_shape) == 2 and not (ta or tb or tri) and not found[0][1] and not found[1][1] \
        and mm.op != "aten.mv" and not linear
    if plain:
        return "matmul", {}
    # each input holds one matrix (repeated over the batch) or one per batch entry
    sizes = [math.prod(f[0].info.shape) for f in found]
    if sizes[0] not in (m * k, batch * m * k) or sizes[1] not in (k * n, batch * k * n) \
            or (a_bcast and sizes[0] != m * k) or (b_bcast and sizes[1] != k * n):
        return None
    return "matmul", {"m": m, "n": n, "k": k, "batch": batch, "ta": ta, "tb": tb,
                      "a_batched": batch > 1 and sizes[0] == batch * m * k,
                      "b_batched": batch > 1 and sizes[1] == batch * k * n, "tri": tri, "diagonal": diagonal,
                      "out_shape": list(graph.outputs[0].info.shape)} \
        | ({"b_param": str(found[1][0].index)} if linear else {}) | ({"bias_param": bias} if bias else {})


def _diagonal_product(graph: OpGraph, nodes: list[OpNode]) -> tuple[str, dict] | None:
    """``diag(a) @ B`` or ``B @ diag(a)`` of a vector input and a matrix input: each row (column) of B scaled by
    one entry of a, which is what it computes; the pointwise family's broadcast operand, as for
    ``a.unsqueeze(1) * B``, never the N x N matrix."""
    diag, mm = nodes
    src = _chain(graph, diag.args[0])
    if src is None or src[1] or int(_arg(diag, 1, "offset", 0)) != 0 or len(src[0].info.shape) != 1:
        return None
    left = _is_node(mm.args[0], diag, graph)
    other = mm.args[1] if left else mm.args[0]
    if not (left or _is_node(mm.args[1], diag, graph)) or not _is_input(other) or other.index == src[0].index:
        return None
    if len(graph.inputs) != 2 or any(not isinstance(t, TensorInfo) or t.dtype != "torch.float32"
                                     for t in graph.inputs):
        return None
    rows, cols = other.info.shape
    n = src[0].info.shape[0]
    if (rows if left else cols) != n or not _is_output_view(graph, mm):
        return None
    return "pointwise", {"y_input": src[0].index, "y_inner": cols if left else 1, "y_size": n,
                         "x_input": other.index, "chain": "diag_embed -> mm",
                         "body": "const float t0 = (y * x); return t0;"}


def _is_output_view(graph: OpGraph, node: OpNode) -> bool:
    """The forward returns ``node``'s result read in order (through views and size-one permutations)."""
    if len(graph.outputs) != 1 or not isinstance(graph.outputs[0], Ref):
        return False
    chain: list[OpNode] = []
    a = graph.outputs[0]
    while isinstance(a, Ref) and a.kind == "node" and graph.nodes[a.index] is not node:
        current = graph.nodes[a.index]
        if current.op not in _LAYOUT_OPS or current.op == "aten.expand":
            return False
        chain.append(current)
        a = current.args[0]
    if not (isinstance(a, Ref) and a.kind == "node" and graph.nodes[a.index] is node):
        return False
    order = _order(node.out.shape, chain[::-1])
    return order == (False, False)


def _conv(graph: OpGraph, node: OpNode) -> tuple[str, dict]:
    _float32(graph, node)
    x, w = node.args[0], node.args[1]
    if not _is_input(x, 0) or not (isinstance(w, Ref) and w.kind == "param"):
        raise _Miss("a convolution of a computed input or with weights that are not the model's parameters")
    stride, padding, dilation, output_padding = (list(node.args[i]) for i in (3, 4, 5, 7))
    transposed, groups = bool(node.args[6]), int(node.args[8])
    kernel = list(w.info.shape[2:])
    if not 1 <= len(kernel) <= 3:
        raise _Miss(f"a {len(kernel)}-D convolution (the window family takes 1-D, 2-D and 3-D)")
    if (not transposed and len(kernel) == 2 and groups == 1 and len(set(kernel)) == 1 and len(set(stride)) == 1
            and len(set(padding)) == 1 and len(set(dilation)) == 1):
        return "conv2d", {"kernel_size": kernel[0], "stride": stride[0], "padding": padding[0],
                          "dilation": dilation[0], "groups": 1}
    # every other convolution: the window family's direct (or gathering, when transposed) kernel
    out = node.out if isinstance(node.out, TensorInfo) else None
    if out is None:
        return None
    return "conv", {"nd": len(kernel), "kernel": kernel, "stride": stride, "padding": padding, "dilation": dilation,
                    "groups": groups, "transposed": transposed, "output_padding": output_padding,
                    "in_shape": list(x.info.shape), "out_shape": list(out.shape)}


POOL_OPS = ("aten.max_pool1d", "aten.max_pool2d", "aten.max_pool3d", "aten.max_pool2d_with_indices",
            "aten.max_pool3d_with_indices", "aten.avg_pool1d", "aten.avg_pool2d", "aten.avg_pool3d")
# Views that only reshape (a contiguous tensor stays contiguous, element order unchanged): a kernel indexing
# flat memory reads the graph input through them as it is.
_RESHAPES = frozenset({"aten.view", "aten._unsafe_view", "aten.reshape", "aten.unsqueeze", "aten.squeeze",
                       "aten.clone", "aten.contiguous", "aten.alias", "aten.detach", "aten.flatten",
                       "aten.unflatten", "aten.lift_fresh_copy"})


def _reshaped_input(graph: OpGraph, a: Any) -> bool:
    """``a`` is the first graph input, possibly through views that only reshape it."""
    while isinstance(a, Ref) and a.kind == "node":
        node = graph.nodes[a.index]
        if node.op not in _RESHAPES or not node.args:
            return False
        a = node.args[0]
    return _is_input(a, 0)


def _is_output(graph: OpGraph, node: OpNode) -> bool:
    """The forward returns ``node``'s (first) result, possibly through views that only reshape it."""
    if len(graph.outputs) != 1:
        return False
    a = graph.outputs[0]
    while isinstance(a, Ref) and a.kind == "node":
        current = graph.nodes[a.index]
        if current is node:
            return True
        if current.op == "getitem" and current.args[1] == 0 or current.op in _RESHAPES:
            a = current.args[0]
        else:
            return False
    return False


def _pool(graph: OpGraph, node: OpNode) -> tuple[str, dict] | None:
    """Max or average pooling of the input (1-D pooling traces as 2-D on an unsqueezed view): the window family
    reads the input through the view as it is, so the kernel works on the traced shapes."""
    x = node.args[0]
    if not _reshaped_input(graph, x) or not _is_output(graph, node):
        return None
    _float32(graph, node)
    out = node.out[0] if isinstance(node.out, tuple) else node.out
    nd = len(x.info.shape) - 2
    kernel = list(_arg(node, 1, "kernel_size", []))
    kernel = kernel * nd if len(kernel) == 1 else kernel
    stride = list(_arg(node, 2, "stride", []) or kernel)
    stride = stride * nd if len(stride) == 1 else stride
    padding = list(_arg(node, 3, "padding", [0]))
    padding = padding * nd if len(padding) == 1 else padding
    params: dict[str, Any] = {"kind": "max" if "max_pool" in node.op else "avg", "nd": nd, "kernel": kernel,
                              "stride": stride, "padding": padding, "in_shape": list(x.info.shape),
                              "out_shape": list(out.shape)}
    if params["kind"] == "max":
        dilation = list(_arg(node, 4, "dilation", [1]))
        params["dilation"] = dilation * nd if len(dilation) == 1 else dilation
        params["ceil_mode"] = bool(_arg(node, 5, "ceil_mode", False))
    else:
        params["dilation"] = [1] * nd
        params["ceil_mode"] = bool(_arg(node, 4, "ceil_mode", False))
        params["count_include_pad"] = bool(_arg(node, 5, "count_include_pad", True))
        params["divisor_override"] = _arg(node, 6, "divisor_override", None)
    if not (len(kernel) == len(stride) == len(padding) == len(params["dilation"]) == nd) or not 1 <= nd <= 3:
        raise _Miss(f"a {nd}-D pooling with kernel {kernel}, stride {stride}, padding {padding} (the window "
                    "family takes 1-D to 3-D pooling with one value per spatial dimension)")
    return "pool", params


def _adaptive_max(graph: OpGraph, node: OpNode) -> tuple[str, dict] | None:
    """An adaptive max pooling to one element per channel (1-D ones trace as 2-D on an unsqueezed view): the
    maximum over the spatial dimensions, kept, which the reduce family computes (adaptive average pooling to one
    element traces as a mean already)."""
    x = node.args[0]
    if not _reshaped_input(graph, x) or not _is_output(graph, node):
        return None
    _float32(graph, node)
    size = list(_arg(node, 1, "output_size", []))
    if not size or any(int(o) != 1 for o in size):
        raise _Miss(f"an adaptive max pooling to {size} (the reduce family takes one element per channel)")
    rank = len(x.info.shape)
    return "reduce", {"kind": "max", "dims": list(range(rank - len(size), rank)), "keepdim": True,
                      "in_shape": list(x.info.shape)}


def _rmsnorm(graph: OpGraph, nodes: list[OpNode]) -> tuple[str, dict] | None:
    """x * rsqrt(mean(x^2) + eps) [* weight], or x / sqrt(mean(x^2) + eps) [* weight] (x^2 as pow or x * x; the
    eps added in place, as nn.RMSNorm does, when nothing else reads the mean)."""
    ops = [n.op for n in nodes]
    if len(ops) > 2 and ops[2] == "aten.add_" and _in_place_alone(
            graph, next(i for i, n in enumerate(graph.nodes) if n is nodes[2]), nodes[2]):
        ops[2] = "aten.add"
    shapes = (["aten.mean", "aten.add", "aten.rsqrt", "aten.mul"], ["aten.mean", "aten.add", "aten.sqrt", "aten.div"])
    if len(ops) not in (5, 6) or ops[1:5] not in shapes or (len(ops) == 6 and ops[5] != "aten.mul"):
        return None
    square, mean, add, root, apply = nodes[:5]
    x = square.args[0]
    if not _is_input(x, 0):
        return None
    if not ((square.op == "aten.pow" and square.args[1] == 2)
            or (square.op == "aten.mul" and _is_input(square.args[1], 0))):
        return None
    if not _is_node(mean.args[0], square, graph) or not _is_node(add.args[0], mean, graph) \
            or not isinstance(add.args[1], int | float):
        return None
    if not _is_node(root.args[0], add, graph) or not _is_input(apply.args[0], 0) \
            or not _is_node(apply.args[1], root, graph):
        return None
    _float32(graph, square)
    rank = len(x.info.shape)
    dims = _arg(mean, 1, "dim", None)
    if not _arg(mean, 2, "keepdim", False):
        raise _Miss(f"an RMS norm over dimension(s) {dims} without keepdim")
    if not _last(dims, rank):  # the reduce family normalises over any dimensions
        if len(nodes) == 6 or root.op != "aten.sqrt":
            raise _Miss(f"an RMS norm over dimension(s) {dims} of a rank-{rank} tensor with a weight or rsqrt (the "
                        "reduce family takes x / sqrt(mean(x^2) + eps) over other dimensions)")
        return "normalize", {"kind": "rms", "dims": _dims(dims, rank), "eps": add.args[1],
                             "in_shape": list(x.info.shape)}
    if len(nodes) == 6:
        scale = nodes[5]
        if not _is_node(scale.args[0], apply, graph) or not (isinstance(scale.args[1], Ref)
                                                              and scale.args[1].kind == "param"):
            return None
    return "rmsnorm", {"eps": add.args[1]}


# ------------------------------------------------------------------------------------------------ reductions

# ATen reductions over dimensions, and what the reduce family calls them
REDUCTIONS = {"aten.sum": "sum", "aten.mean": "mean", "aten.amax": "max", "aten.amin": "min", "aten.max": "max",
              "aten.min": "min", "aten.prod": "prod", "aten.argmax": "argmax", "aten.argmin": "argmin",
              "aten.var": "var", "aten.std": "std", "aten.logsumexp": "logsumexp",
              "aten.linalg_vector_norm": "norm"}


def _dims(dim: Any, rank: int) -> list[int]:
    """Reduced dimensions as sorted non-negative ints (None or [] meaning all of them)."""
    if dim is None or dim == []:
        return list(range(rank))
    dims = dim if isinstance(dim, list | tuple) else [dim]
    return sorted({int(d) % rank for d in dims})


def contiguous_runs(dims: list[int]) -> list[tuple[int, int]]:
    """Sorted dimensions as maximal runs of consecutive ones, (first, last) each: [0, 1, 3] -> [(0, 1), (3, 3)]."""
    runs: list[tuple[int, int]] = []
    for d in sorted(dims):
        if runs and d == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], d)
        else:
            runs.append((d, d))
    return runs


def _runs(dims: list[int], rank: int) -> bool:
    """The reduce family's layout: reduced dimensions are one contiguous run, or a run from dimension 0 and one
    later run (batch norm's (N, H, W) around the kept channels, a sum over (0, 2))."""
    runs = contiguous_runs(dims)
    return rank > 0 and (len(runs) == 1 or len(runs) == 2 and runs[0][0] == 0)


def _reduce(graph: OpGraph, node: OpNode) -> tuple[str, dict] | None:
    """A reduction of the input (read through views that only reshape it) over a run of its dimensions."""
    x = node.args[0]
    if not _reshaped_input(graph, x) or not _is_output(graph, node):
        return None
    _float32(graph, node)
    rank = len(x.info.shape)
    kind = REDUCTIONS[node.op]
    params: dict[str, Any] = {}
    full = node.overload.endswith(".default") and node.op in ("aten.sum", "aten.mean", "aten.prod", "aten.max",
                                                              "aten.min")
    if full:
        dim, keepdim = None, False  # the whole tensor
    elif node.op == "aten.linalg_vector_norm":
        order = _arg(node, 1, "ord", 2)
        if order not in (1, 2) or _arg(node, 4, "dtype", None) is not None:
            raise _Miss(f"a vector norm of order {order} (the reduce family takes orders 1 and 2)")
        kind = f"norm{int(order)}"
        dim, keepdim = _arg(node, 2, "dim", None), bool(_arg(node, 3, "keepdim", False))
    else:
        dim, keepdim = _arg(node, 1, "dim", None), bool(_arg(node, 2, "keepdim", False))
    if kind in ("var", "std"):
        correction = node.kwargs.get("correction", 1)
        params["correction"] = 1.0 if correction is None else float(correction)
    dims = _dims(dim, rank) if rank else []
    split = len(contiguous_runs(dims)) > 1  # a run from dimension 0 and a later one
    if not dims or not _runs(dims, rank) or (split and kind in ("argmax", "argmin")):
        raise _Miss(f"a {kind} over dimension(s) {dims} of a rank-{rank} tensor (the reduce family takes one "
                    "contiguous run of dimensions, or a run from dimension 0 and one later run)")
    return "reduce", {"kind": kind, "dims": dims, "keepdim": keepdim, "in_shape": list(x.info.shape)} | params


def _normalisation(graph: OpGraph, nodes: list[OpNode]) -> tuple[str, dict] | None:
    """x divided by a norm of itself over some dimensions (L1 as mean or sum of |x|, L2, Frobenius), or a batch,
    instance or group norm (training-mode statistics of the input, optional per-channel affine)."""
    ops = [n.op for n in nodes]
    if ops in (["aten.abs", "aten.mean", "aten.div"], ["aten.abs", "aten.sum", "aten.div"]):
        a, red, div = nodes
        x = a.args[0]
        if not (_is_input(x, 0) and _is_node(red.args[0], a, graph) and _is_input(div.args[0], 0)
                and _is_node(div.args[1], red, graph) and _arg(red, 2, "keepdim", False) and _is_output(graph, div)):
            return None
        _float32(graph, a)
        rank = len(x.info.shape)
        dims = _dims(_arg(red, 1, "dim", None), rank)
        if not _runs(dims, rank) or 0 in dims and len(dims) > 1 and dims[0] == 0 and 1 not in dims:
            raise _Miss(f"an L1 norm over dimension(s) {dims} (the reduce family takes one contiguous run)")
        kind = "l1mean" if red.op == "aten.mean" else "l1sum"
        return "normalize", {"kind": kind, "dims": dims, "in_shape": list(x.info.shape)}
    if ops in (["aten.linalg_vector_norm", "aten.div"], ["aten.linalg_vector_norm", "aten.clamp_min", "aten.div"]):
        norm, div = nodes[0], nodes[-1]
        x = norm.args[0]
        order = _arg(norm, 1, "ord", 2)
        denominator = div.args[1]
        floor = 0.0
        if len(nodes) == 3:  # F.normalize: the norm clamped below by eps, broadcast back
            clamp = nodes[1]
            if not _is_node(clamp.args[0], norm, graph) or not isinstance(clamp.args[1], int | float):
                return None
            floor = float(clamp.args[1])
            while isinstance(denominator, Ref) and denominator.kind == "node" \
                    and graph.nodes[denominator.index].op in ("aten.expand", "aten.expand_as"):
                denominator = graph.nodes[denominator.index].args[0]
            if not _is_node(denominator, clamp, graph):
                return None
        elif not _is_node(denominator, norm, graph):
            return None
        if not (_is_input(x, 0) and _is_input(div.args[0], 0) and _is_output(graph, div)) or order not in (2, math.inf):
            return None
        kind, name = ("l2", "an L2 norm") if order == 2 else ("linf", "an infinity norm")
        _float32(graph, norm)
        rank = len(x.info.shape)
        dims = _dims(_arg(norm, 2, "dim", None), rank)
        if dims != list(range(rank)) and not _arg(norm, 3, "keepdim", False):
            return None
        if not _runs(dims, rank) or 0 in dims and len(dims) > 1 and 1 not in dims:
            raise _Miss(f"{name} over dimension(s) {dims} (the reduce family takes one contiguous run)")
        return "normalize", {"kind": kind, "dims": dims, "in_shape": list(x.info.shape), "eps": floor}
    # batch norm (its running-statistics counter bumped first), or instance norm (an affine one repeats its
    # weight and bias per image)
    if ops[-1:] == ["aten.native_batch_norm"] and ops[:-1] in ([], ["aten.add_"], ["aten.repeat", "aten.repeat"]):
        bn = nodes[-1]
        if ops[0] == "aten.repeat" and not all(isinstance(n.args[0], Ref) and n.args[0].kind == "param"
                                               and _is_node(bn.args[i], n, graph) for i, n in ((1, nodes[0]),
                                                                                               (2, nodes[1]))):
            return None
        x = bn.args[0]
        if not _reshaped_input(graph, x) or not _is_output(graph, bn):
            return None
        _float32(graph, bn)
        if not bn.args[5]:
            raise _Miss("a batch norm in eval mode (running statistics): an elementwise affine map, not searched")
        user = graph.inputs[0]
        rank = len(user.shape)
        affine = bn.args[1] is not None and bn.args[2] is not None
        common = {"kind": "meanvar", "eps": bn.args[7], "in_shape": list(user.shape), "affine": affine}
        if _is_input(x, 0):  # batch norm: statistics per channel over the batch and the spatial dimensions
            return "normalize", common | {"norm": "batch", "dims": [0, *range(2, rank)]}
        # instance norm: batch norm of the (1, N * C, ...) view, so statistics per image and channel
        if rank >= 3 and x.info.shape[0] == 1 and x.info.shape[1] == user.shape[0] * user.shape[1]:
            return "normalize", common | {"norm": "instance", "dims": list(range(2, rank))}
        return None
    if ops == ["aten.native_group_norm"]:
        gn = nodes[0]
        x = gn.args[0]
        if not _is_input(x, 0) or not _is_output(graph, gn):
            return None
        _float32(graph, gn)
        groups, eps = gn.args[6], gn.args[7]
        affine = gn.args[1] is not None and gn.args[2] is not None
        return "normalize", {"kind": "meanvar", "norm": "group", "dims": list(range(1, len(x.info.shape))),
                             "eps": eps, "in_shape": list(x.info.shape), "groups": groups, "affine": affine}
    return None


def _scan(graph: OpGraph, nodes: list[OpNode]) -> tuple[str, dict] | None:
    """A cumulative sum or product along one dimension of the input: plain, reversed (flip, scan, flip), exclusive
    (a zero, then the scan of all but the last value), or of the input times a boolean mask (the second input)."""
    ops = [n.op.removeprefix("aten.") for n in nodes]
    scans = [n for n in nodes if n.op in ("aten.cumsum", "aten.cumprod")]
    if len(scans) != 1:
        return None
    node = scans[0]
    x = graph.inputs[0]
    if not isinstance(x, TensorInfo) or x.dtype != "torch.float32":
        return None
    rank = len(x.shape)
    dim = int(node.args[1]) % rank if rank else 0
    params: dict[str, Any] = {"kind": "sum" if node.op == "aten.cumsum" else "prod", "dim": dim, "reverse": False,
                              "exclusive": False, "masked": False, "in_shape": list(x.shape)}
    src = node.args[0]
    if ops in (["cumsum"], ["cumprod"]) and _reshaped_input(graph, src) and _is_output(graph, node):
        pass
    elif ops == ["flip", ops[1], "flip"] and _is_node(src, nodes[0], graph) and _is_input(nodes[0].args[0], 0) \
            and list(nodes[0].args[1]) == list(nodes[2].args[1]) == [dim] and _is_node(nodes[2].args[0], node, graph):
        params["reverse"] = True
    elif ops == ["cumsum", "cat"] and _is_output(graph, nodes[1]) and any(
            _is_node(t, node, graph) for t in nodes[1].args[0]) and len(graph.inputs) == 1:
        params["exclusive"] = True  # the probe confirms the zero goes first and the last value is dropped
    elif ops == ["cumsum", "sub"] and _is_input(src, 0) and _is_node(nodes[1].args[0], node, graph) \
            and _is_input(nodes[1].args[1], 0) and _arg(nodes[1], 2, "alpha", 1) == 1 \
            and _is_output(graph, nodes[1]) and len(graph.inputs) == 1:
        params["exclusive"] = True  # the inclusive sum less each value: the sum of the values before it
    elif ops == ["mul", ops[1]] and _is_node(src, nodes[0], graph) and _is_input(nodes[0].args[0], 0) \
            and _is_input(nodes[0].args[1], 1) and nodes[0].args[1].info.dtype == "torch.bool" \
            and nodes[0].args[1].info.shape == x.shape and _is_output(graph, node):
        params["masked"] = True
    elif ops == ["where", ops[1]] and _is_node(src, nodes[0], graph) and _is_input(nodes[0].args[1], 0) \
            and _is_input(nodes[0].args[0], 1) and nodes[0].args[0].info.dtype == "torch.bool" \
            and nodes[0].args[0].info.shape == x.shape and _zero(graph, nodes[0].args[2]) \
            and _is_output(graph, node):
        params["masked"] = True
        params["select"] = True  # where(mask, x, 0): a masked-out inf or NaN is 0, not x * 0
    else:
        return None
    if len(graph.inputs) != (2 if params["masked"] else 1):
        return None
    return "scan", params


def _number_of(node: OpNode) -> int | float | None:
    """The Python number a ``scalar_tensor`` node holds (a number passed where a tensor goes: torch.where's
    branches, a tensor bound of clamp_min), else None."""
    v = node.args[0] if node.op == "aten.scalar_tensor" and node.args else None
    return v if isinstance(v, int | float) and not isinstance(v, bool) else None


def _zero(graph: OpGraph, a: Any) -> bool:
    """``a`` is the number 0, or a tensor of zeros made in the forward (``zeros_like``, ``scalar_tensor(0)``)."""
    if isinstance(a, int | float) and not isinstance(a, bool):
        return a == 0
    if not (isinstance(a, Ref) and a.kind == "node"):
        return False
    node = graph.nodes[a.index]
    return node.op in ("aten.zeros_like", "aten.zeros") or _number_of(node) == 0


# ------------------------------------------------------------------------------------------------ pointwise


def _f(v: Any) -> str:
    """A Python number as a float literal both C and CUDA read."""
    v = float(v)
    if v != v or v in (float("inf"), float("-inf")):
        return "NAN" if v != v else ("INFINITY" if v > 0 else "(-INFINITY)")
    return f"{v!r}f".replace("e+", "e")


def _scalar(node: OpNode, position: int, name: str, default: Any) -> str | None:
    v = _arg(node, position, name, default)
    return None if v is None else _f(v)


# ATen elementwise operations as float expressions of their operands (a, b) and scalar arguments. Semantics follow
# PyTorch's: relu keeps NaN, elu's negative branch is expm1, softplus switches to the identity above its threshold.
def _pointwise_expr(node: OpNode, a: str, b: str | None) -> str | None:
    op = node.op.removeprefix("aten.")
    unary = {
        "relu": f"({a} < 0.f ? 0.f : {a})", "sigmoid": f"(1.f / (1.f + expf(-{a})))", "tanh": f"tanhf({a})",
        "abs": f"fabsf({a})", "neg": f"(-{a})", "exp": f"expf({a})", "log": f"logf({a})", "sqrt": f"sqrtf({a})",
        "rsqrt": f"(1.f / sqrtf({a}))", "reciprocal": f"(1.f / {a})", "erf": f"erff({a})", "sin": f"sinf({a})",
        "cos": f"cosf({a})", "log1p": f"log1pf({a})", "expm1": f"expm1f({a})", "silu": f"({a} / (1.f + expf(-{a})))",
        "hardsigmoid": f"(fminf(fmaxf({a} + 3.f, 0.f), 6.f) / 6.f)",
        "hardswish": f"({a} * fminf(fmaxf({a} + 3.f, 0.f), 6.f) / 6.f)",
        "mish": f"({a} * tanhf({a} > 20.f ? {a} : log1pf(expf({a}))))",
        "sign": f"({a} > 0.f ? 1.f : ({a} < 0.f ? -1.f : 0.f))",  # NaN and -0 give 0, as PyTorch's
        "log_sigmoid_forward": f"({a} < 0.f ? {a} - log1pf(expf({a})) : -log1pf(expf(-{a})))",
        "floor": f"floorf({a})", "ceil": f"ceilf({a})", "trunc": f"truncf({a})", "round": f"rintf({a})",
        "sinh": f"sinhf({a})", "cosh": f"coshf({a})", "tan": f"tanf({a})", "atan": f"atanf({a})",
        "asin": f"asinf({a})", "acos": f"acosf({a})", "log2": f"log2f({a})", "log10": f"log10f({a})",
        "exp2": f"exp2f({a})", "erfc": f"erfcf({a})", "square": f"({a} * {a})",
    }
    if op in unary:
        return unary[op]
    if op == "gelu":
        if _arg(node, 1, "approximate", "none") == "tanh":
            return f"(0.5f * {a} * (1.f + tanhf(0.7978845608028654f * ({a} + 0.044715f * {a} * {a} * {a}))))"
        return f"(0.5f * {a} * (1.f + erff({a} * 0.7071067811865476f)))"
    if op == "celu":
        alpha = _scalar(node, 1, "alpha", 1.0)
        return f"({a} > 0.f ? {a} : {alpha} * expm1f({a} / {alpha}))"
    if op == "hardshrink":
        lambd = _scalar(node, 1, "lambd", 0.5)
        return f"(({a} >= -{lambd} && {a} <= {lambd}) ? 0.f : {a})"
    if op == "softshrink":
        lambd = _scalar(node, 1, "lambd", 0.5)
        return f"({a} > {lambd} ? {a} - {lambd} : ({a} < -{lambd} ? {a} + {lambd} : {a} * 0.f))"
    if op == "leaky_relu":
        return f"({a} > 0.f ? {a} : {a} * {_scalar(node, 1, 'negative_slope', 0.01)})"
    if op == "elu":
        alpha, scale = _scalar(node, 1, "alpha", 1.0), _scalar(node, 2, "scale", 1.0)
        inner = _scalar(node, 3, "input_scale", 1.0)
        return f"({a} > 0.f ? {scale} * {a} : {scale} * {alpha} * expm1f({a} * {inner}))"
    if op == "softplus":
        beta, threshold = _scalar(node, 1, "beta", 1.0), _scalar(node, 2, "threshold", 20.0)
        return f"({a} * {beta} > {threshold} ? {a} : log1pf(expf({a} * {beta})) / {beta})"
    if op in ("clamp_min", "clamp_max") and b is not None:  # the bound a tensor (cosine similarity's eps)
        return f"{'fmaxf' if op == 'clamp_min' else 'fminf'}({a}, {b})"
    if op in ("hardtanh", "clamp", "clamp_min", "clamp_max"):
        lo = {"hardtanh": _scalar(node, 1, "min_val", -1.0), "clamp": _scalar(node, 1, "min", None),
              "clamp_min": _scalar(node, 1, "min", None), "clamp_max": None}[op]
        hi = {"hardtanh": _scalar(node, 2, "max_val", 1.0), "clamp": _scalar(node, 2, "max", None),
              "clamp_min": None, "clamp_max": _scalar(node, 1, "max", None)}[op]
        out = a
        if lo is not None:
            out = f"fmaxf({out}, {lo})"
        if hi is not None:
            out = f"fminf({out}, {hi})"
        return out
    if op == "threshold":
        return f"({a} > {_scalar(node, 1, 'threshold', 0.0)} ? {a} : {_scalar(node, 2, 'value', 0.0)})"
    if op == "pow" and b is None:
        e = float(_arg(node, 1, "exponent", 1.0))
        powers = {1.0: a, 2.0: f"({a} * {a})", 3.0: f"({a} * {a} * {a})", 0.5: f"sqrtf({a})"}
        return powers.get(e, f"powf({a}, {_f(e)})")
    if b is None:
        return None
    alpha = _arg(node, 2, "alpha", 1)
    scaled = b if alpha == 1 else f"({_f(alpha)} * {b})"
    binary = {"add": f"({a} + {scaled})", "sub": f"({a} - {scaled})", "rsub": f"({scaled} - {a})" if alpha == 1
              else f"({b} - {_f(alpha)} * {a})", "mul": f"({a} * {b})", "div": f"({a} / {b})",
              "maximum": f"fmaxf({a}, {b})", "minimum": f"fminf({a}, {b})", "pow": f"powf({a}, {b})",
              "_prelu_kernel": f"({a} > 0.f ? {a} : {b} * {a})",
              # xlogy(0, y) is 0 unless y is NaN, as PyTorch's
              "xlogy": f"({b} != {b} ? {b} : ({a} == 0.f ? 0.f : {a} * logf({b})))"}
    if op == "div" and _arg(node, 2, "rounding_mode", None) is not None:
        return None
    return binary.get(op)


def _pointwise(graph: OpGraph, nodes: list[OpNode]) -> tuple[str, dict] | None:
    """A forward that is a chain (or DAG) of elementwise operations, each value kept in float: one function body,
    ``const float t<i> = ...;`` per operation, that a generator calls per element. Its operands are one float32
    input of the output's shape (``x``), optionally a second one broadcast over it (``y``, see _broadcast), and
    constants, including Python numbers passed to forward (the trace bakes them in: ``scalars`` records them, and
    the candidate refuses any other value)."""
    tensors = [i for i, t in enumerate(graph.inputs) if isinstance(t, TensorInfo)]
    scalars = [[i, v] for i, v in enumerate(graph.inputs) if not isinstance(v, TensorInfo)]
    # a module's one parameter may be the broadcast operand (PReLU's slopes) when the input is the only tensor
    param = next(iter(graph.params)) if len(graph.params) == 1 and len(tensors) == 1 else None
    if not tensors or len(tensors) > 2 or (graph.params and param is None) or any(
            isinstance(v, bool) or not isinstance(v, int | float) for _, v in scalars):
        return None
    if any(graph.inputs[i].dtype != "torch.float32" for i in tensors):
        return None
    last = graph.outputs[0] if len(graph.outputs) == 1 else None
    if not (isinstance(last, Ref) and last.kind == "node"):
        return None
    shape = tuple(last.info.shape)
    main = next((i for i in tensors if tuple(graph.inputs[i].shape) == shape), None)
    if main is None:
        return None
    inputs, aliases, params = {main: "x"}, {}, {}
    # the broadcast operand y: the second input, or the module's parameter
    source: tuple[Any, tuple[int, ...], dict] | None = None
    if len(tensors) == 2:
        other = tensors[0] if tensors[1] == main else tensors[1]
        inputs[other] = "y"
        source = (lambda a: _is_input(a, other), tuple(graph.inputs[other].shape), {"y_input": other})
    elif param is not None:
        source = (lambda a: _is_param(a, param), tuple(graph.params[param].shape), {"y_param": param})
    if source is not None:
        found_y = _broadcast(graph, source[0], source[1], shape)
        if found_y is None:
            return None
        aliases, (inner, size) = found_y
        params = source[2] | {"y_inner": inner, "y_size": size}
    found = _elementwise_body(graph, len(graph.nodes), inputs, shape, aliases, param)
    if found is None or last.index not in found[2] or last.info.dtype != "torch.float32":
        return None
    lines, chain, names = found
    if (len(tensors) > 1 or param is not None) and not re.search(r"\by\b", " ".join(lines)):
        return None  # the second operand goes unused: not a function of both
    if len(graph.inputs) > 1:
        params |= {"x_input": main} | ({"scalars": scalars} if scalars else {})
    return "pointwise", params | {"chain": " -> ".join(chain),
                                  "body": " ".join(lines) + f" return {names[last.index]};"}


# Views of an input that keep its elements in order (a broadcast operand may reach its operation through them).
_BROADCAST_VIEWS = frozenset({"aten.view", "aten._unsafe_view", "aten.reshape", "aten.unsqueeze", "aten.squeeze",
                              "aten.expand", "aten.alias", "aten.detach", "aten.clone", "aten.contiguous"})


def _broadcast_map(view: tuple[int, ...], shape: tuple[int, ...]) -> tuple[int, int] | None:
    """Where a tensor of shape ``view``, broadcast against ``shape`` (aligned on the right), finds element e of
    the result: (inner, size) such that it reads element (e / inner) % size, when its dimensions above one are one
    run of the result's dimensions; None for any other broadcast."""
    if len(view) > len(shape):
        return None
    padded = (1,) * (len(shape) - len(view)) + tuple(view)
    if any(v != 1 and v != n for v, n in zip(padded, shape, strict=True)):
        return None
    varying = [p for p, v in enumerate(padded) if v > 1]
    if not varying:
        return 1, 1
    lo, hi = varying[0], varying[-1]
    if any(padded[p] != shape[p] for p in range(lo, hi + 1)):
        return None
    return math.prod(shape[hi + 1:]), math.prod(shape[lo:hi + 1])


def _broadcast(graph: OpGraph, is_source: Any, source_shape: tuple[int, ...], shape: tuple[int, ...]) \
        -> tuple[dict[int, str], tuple[int, int]] | None:
    """The operand ``is_source`` picks (an input, or a parameter), of ``source_shape``, as a broadcast operand of a
    result of ``shape``: the view nodes it passes through (named ``y``, as the operand itself) and the one (inner,
    size) map every use shares; None if the uses disagree or any broadcast is not one run of dimensions. An expand
    keeps its source's map (it only repeats it)."""
    maps: dict[int, tuple[int, int] | None] = {}
    direct = _broadcast_map(source_shape, shape)
    aliases: dict[int, str] = {}
    used: set[tuple[int, int] | None] = set()
    for i, node in enumerate(graph.nodes):
        src = node.args[0] if node.args else None
        from_input = is_source(src)
        from_alias = isinstance(src, Ref) and src.kind == "node" and src.index in aliases
        if node.op in _BROADCAST_VIEWS and (from_input or from_alias):
            before = direct if from_input else maps[src.index]
            maps[i] = before if node.op == "aten.expand" else _broadcast_map(tuple(node.out.shape), shape)
            aliases[i] = "y"
            continue
        for a in [*node.args, *node.kwargs.values()]:
            if is_source(a):
                used.add(direct)
            elif isinstance(a, Ref) and a.kind == "node" and a.index in aliases:
                used.add(maps[a.index])
    if len(used) != 1 or None in used:
        return None
    return aliases, used.pop()


def _elementwise_body(graph: OpGraph, stop: int, inputs: dict[int, str], shape: tuple[int, ...],
                      aliases: dict[int, str] | None = None, param: str | None = None) \
        -> tuple[list[str], list[str], dict[int, str]] | None:
    """The graph's first ``stop`` nodes as float statements over the named inputs (``inputs``: graph input index
    to its name; the first has ``shape``, which every computed value must have, the others that shape or a part of
    it the caller maps; ``aliases``: view nodes that stand for an input): (statements, operation names, node index
    to its value's name), or None when a node is not elementwise."""
    names: dict[int, str] = dict(aliases or {})
    lines: list[str] = []
    chain: list[str] = []
    tensors = set(inputs.values()) | ({"y"} if param is not None else set())
    truth: set[str] = set()  # the values that are comparisons

    def operand(a: Any) -> str | None:
        if isinstance(a, Ref) and a.kind == "input" and a.index in inputs:
            return inputs[a.index]
        if param is not None and _is_param(a, param):  # the module's parameter broadcast as y (_pointwise)
            return "y"
        if isinstance(a, Ref) and a.kind == "node" and a.index in names:
            return names[a.index]
        if isinstance(a, bool):
            return None
        if isinstance(a, int | float):
            return _f(a)
        return None

    for index, node in enumerate(graph.nodes[:stop]):
        if index in names:
            continue
        if node.op in SHAPE_OPS_KEPT:
            return None
        if node.op == "getitem":  # a multi-result node's first result is its value; the others go unused
            src = node.args[0]
            if isinstance(src, Ref) and src.kind == "node" and src.index in names and node.args[1] == 0:
                names[index] = names[src.index]
            continue
        if node.op in _POINTWISE_SKIP:
            src = node.args[0] if node.args else None
            if isinstance(src, Ref) and (src.kind == "input" and src.index in inputs or src.index in names) \
                    and src.info.shape == shape:
                names[index] = operand(src)
                continue
            return None
        if _number_of(node) is not None:
            names[index] = _f(_number_of(node))
            continue
        out = node.out[0] if isinstance(node.out, tuple) and node.op == "aten.log_sigmoid_forward" else node.out
        if not hasattr(out, "shape") or out.shape != shape:
            return None
        op = node.op.removeprefix("aten.")
        if op in _COMPARISONS and out.dtype == "torch.bool" and len(node.args) == 2:
            # a comparison is an int (0 or 1) in C and CUDA alike, as a bool tensor is in arithmetic
            a, b = operand(node.args[0]), operand(node.args[1])
            if a is None or b is None:
                return None
            names[index] = f"t{len(lines)}"
            truth.add(names[index])
            lines.append(f"const int t{len(lines)} = ({a} {_COMPARISONS[op]} {b});")
            chain.append(op)
            continue
        if out.dtype != "torch.float32":
            return None
        if op == "where" and len(node.args) == 3:
            c, a, b = (operand(x) for x in node.args)
            if c not in truth or a is None or b is None:
                return None
            names[index] = f"t{len(lines)}"
            lines.append(f"const float t{len(lines)} = ({c} ? {a} : {b});")
            chain.append(op)
            continue
        a = operand(node.args[0]) if node.args else None
        b = operand(node.args[1]) if len(node.args) > 1 and isinstance(node.args[1], Ref | int | float) \
            and not isinstance(node.args[1], bool) else None
        if a is None or (len(node.args) > 1 and isinstance(node.args[1], Ref) and b is None):
            return None
        if a not in tensors and not a.startswith("t") and b is not None and (b in tensors or b.startswith("t")):
            a, b = b, a  # scalar first (rsub, mul by a constant): the expressions take the tensor first
            if node.op in ("aten.sub", "aten.div", "aten.pow", "aten.rsub", "aten.xlogy"):
                return None
        expr = _pointwise_expr(node, a, b if len(node.args) > 1 else None)
        if expr is None:
            return None
        names[index] = f"t{len(lines)}"
        lines.append(f"const float t{len(lines)} = {expr};")
        chain.append(node.op.removeprefix("aten."))
    return (lines, chain, names) if lines else None


_COMPARISONS = {"gt": ">", "lt": "<", "ge": ">=", "le": "<=", "eq": "==", "ne": "!="}


# Losses that are one ATen node: their elementwise term of (x, y), and PyTorch's reduction codes (1 mean, 2 sum)
def _loss_term(node: OpNode) -> str | None:
    op = node.op.removeprefix("aten.")
    if op == "mse_loss":
        return "const float t0 = (x - y) * (x - y);"
    if op == "l1_loss":
        return "const float t0 = fabsf(x - y);"
    if op in ("smooth_l1_loss", "huber_loss"):
        beta = float(_arg(node, 3, "beta" if op == "smooth_l1_loss" else "delta", 1.0))
        if beta <= 0:
            return None
        b = _f(beta)
        quad = f"0.5f * d * d / {b}" if op == "smooth_l1_loss" else "0.5f * d * d"
        lin = f"ad - 0.5f * {b}" if op == "smooth_l1_loss" else f"{b} * (ad - 0.5f * {b})"
        return f"const float d = x - y; const float ad = fabsf(d); const float t0 = ad < {b} ? {quad} : {lin};"
    if op == "binary_cross_entropy" and _arg(node, 2, "weight", None) is None:
        # PyTorch clamps each log at -100, so a probability of exactly 0 or 1 costs 100, not infinity
        return ("const float t0 = (y - 1.f) * fmaxf(log1pf(-x), -100.f) - y * fmaxf(logf(x), -100.f);")
    if op == "binary_cross_entropy_with_logits" and _arg(node, 2, "weight", None) is None \
            and _arg(node, 3, "pos_weight", None) is None:
        # (1 - y) x - log(sigmoid(x)), with log(sigmoid(x)) = min(x, 0) - log1p(exp(-|x|)): no overflow either way
        return "const float t0 = (1.f - y) * x - fminf(x, 0.f) + log1pf(expf(-fabsf(x)));"
    return None


# The ATen losses _loss_term spells out, and the position of their reduction argument
_ATEN_LOSSES = {"aten.mse_loss": 2, "aten.l1_loss": 2, "aten.smooth_l1_loss": 2, "aten.huber_loss": 2,
                "aten.binary_cross_entropy": 3, "aten.binary_cross_entropy_with_logits": 4}


def _loss_operands(graph: OpGraph, node: OpNode, last: int, shape: tuple[int, ...]) \
        -> tuple[list[str], tuple[str, str], list[str]] | None:
    """An ATen loss's two operands as float expressions of the inputs x and y: the inputs themselves, or elementwise
    chains of them computed first (``binary_cross_entropy(sigmoid(x), y)``): (statements, operand names, operation
    names); None when anything before the loss is not elementwise or an operand is neither."""
    found = _elementwise_body(graph, last, {0: "x", 1: "y"}, shape) if last else ([], [], {})
    if found is None:
        return None
    lines, chain, names = found
    operands = []
    for arg in node.args[:2]:
        if _is_input(arg):  # _loss takes exactly two inputs, x and y
            operands.append("xy"[arg.index])
        elif isinstance(arg, Ref) and arg.kind == "node" and arg.index in names:
            operands.append(names[arg.index])
        else:
            return None
    return lines, (operands[0], operands[1]), chain


def _loss(graph: OpGraph, nodes: list[OpNode]) -> tuple[str, dict] | None:
    """A loss of the two inputs: an elementwise term (a chain of elementwise operations, or one ATen loss) summed or
    averaged over every element, optionally divided by a constant (KL divergence's batchmean). The second input
    may broadcast over the first's leading dimensions."""
    if len(graph.inputs) != 2 or not all(isinstance(t, TensorInfo) for t in graph.inputs) or graph.params:
        return None
    x, y = graph.inputs
    if x.dtype != "torch.float32" or y.dtype != "torch.float32" or \
            tuple(x.shape[len(x.shape) - len(y.shape):]) != tuple(y.shape) or len(y.shape) > len(x.shape):
        return None
    if len(graph.outputs) != 1 or not isinstance(graph.outputs[0], Ref) or graph.outputs[0].kind != "node":
        return None
    last = graph.outputs[0].index
    scale = 1.0
    node = graph.nodes[last]
    if node.op in ("aten.div", "aten.mul") and isinstance(node.args[1], int | float) \
            and not isinstance(node.args[1], bool) and isinstance(node.args[0], Ref) and node.args[0].kind == "node":
        scale = 1.0 / float(node.args[1]) if node.op == "aten.div" else float(node.args[1])
        last = node.args[0].index
        node = graph.nodes[last]
    if node.op in _ATEN_LOSSES:
        reduction = int(_arg(node, _ATEN_LOSSES[node.op], "reduction", 1))
        term = _loss_term(node)
        if term is None or reduction not in (1, 2) or x.shape != y.shape:
            return None
        operands = _loss_operands(graph, node, last, tuple(x.shape))
        if operands is None:
            return None
        lines, (a, b), chain = operands
        # the term's own names kept apart from the operands' t<i>: its inputs are a and b, its value lt
        term = re.sub(r"\b([xy]|t0)\b", lambda m: {"x": a, "y": b, "t0": "lt"}[m.group()], term)
        return "reduce", {"kind": "mean" if reduction == 1 else "sum", "dims": list(range(len(x.shape))),
                          "keepdim": False, "in_shape": list(x.shape),
                          "body": " ".join([*lines, term, "return lt;"]),
                          "chain": " -> ".join([*chain, node.op.removeprefix("aten.")]), "scale": scale,
                          "y_shape": list(y.shape)}
    if node.op not in ("aten.mean", "aten.sum") or not node.overload.endswith("default") \
            or not isinstance(node.args[0], Ref) or node.args[0].kind != "node":
        return None
    found = _elementwise_body(graph, last, {0: "x", 1: "y"}, tuple(x.shape))
    if found is None or node.args[0].index not in found[2]:
        return None
    lines, chain, names = found
    if any(i not in names for i in range(last) if graph.nodes[i].op not in _POINTWISE_SKIP):
        return None
    body = " ".join(lines) + f" return {names[node.args[0].index]};"
    return "reduce", {"kind": "mean" if node.op == "aten.mean" else "sum", "dims": list(range(len(x.shape))),
                      "keepdim": False, "in_shape": list(x.shape), "body": body, "chain": " -> ".join(chain),
                      "scale": scale, "y_shape": list(y.shape)}


# Scaled dot-product attention as the trace spells it (the CPU kernel under fake tensors, or the composite op):
# the argument positions of dropout_p, is_causal and attn_mask; scale is keyword-only.
_ATTENTION = {"aten._scaled_dot_product_flash_attention_for_cpu": (3, 4, None),
              "aten.scaled_dot_product_attention": (4, 5, 3)}
ATTENTION_MAX_D = 2048  # head dimensions the attention kernels stage in shared memory


# The math path PyTorch's scaled_dot_product_attention traces to where its CPU kernel does not apply (a value
# head dimension other than the query's, a causal mask): q and k^T each scaled by sqrt(scale), a batched product,
# (a causal mask built with tril and added), a softmax, a product with v.
_SDPA_MATH = ["aten.mul", "aten.mul", "aten.bmm", "aten._safe_softmax", "aten.bmm"]
_SDPA_MATH_CAUSAL = ["aten.mul", "aten.tril", "aten.where", "aten.mul", "aten.bmm", "aten.add", "aten._safe_softmax",
                     "aten.bmm"]


def _attention_shapes(graph: OpGraph, q: Ref, k: Ref, v: Ref) -> None:
    qs, ks, vs = (tuple(a.info.shape) for a in (q, k, v))
    if any(graph.inputs[a.index].dtype != "torch.float32" for a in (q, k, v)):
        raise _Miss("the offline families take float32 tensors")
    if len(qs) < 2 or not (len(qs) == len(ks) == len(vs)) or qs[:-2] != ks[:-2] or ks[:-2] != vs[:-2] \
            or qs[-1] != ks[-1] or ks[-2] != vs[-2]:
        raise _Miss("an attention whose query, key and value do not share batch dimensions and sizes (no "
                    "broadcasting or grouped heads in the attention family)")
    if max(qs[-1], vs[-1]) > ATTENTION_MAX_D:
        raise _Miss(f"an attention head dimension above {ATTENTION_MAX_D} (the kernels stage a row in shared memory)")


def _attention_math(graph: OpGraph, nodes: list[OpNode]) -> tuple[str, dict] | None:
    causal = nodes[1].op == "aten.tril"
    muls = [n for n in nodes if n.op == "aten.mul"]
    bmm1, soft, bmm2 = [n for n in nodes if n.op in ("aten.bmm", "aten._safe_softmax")]
    if len(graph.inputs) != 3 or not all(isinstance(t, TensorInfo) for t in graph.inputs) or graph.params:
        return None
    found = [_chain(graph, m.args[0]) for m in muls] + [_chain(graph, bmm2.args[1])]
    consts = [m.args[1] for m in muls]
    if any(f is None for f in found) or not all(isinstance(c, int | float) and not isinstance(c, bool)
                                                 for c in consts):
        return None
    q, k, v = (f[0] for f in found)
    if causal and int(_arg(nodes[1], 1, "diagonal", 0)) != 0:
        return None
    if int(_arg(soft, 1, "dim", -1)) % 3 != 2 or len({q.index, k.index, v.index}) != 3:
        return None
    if not (_is_node(bmm1.args[0], muls[0], graph) or _chain_to(graph, bmm1.args[0], muls[0])) or \
            not _chain_to(graph, bmm2.args[0], soft):
        return None
    _attention_shapes(graph, q, k, v)
    out = graph.outputs[0] if len(graph.outputs) == 1 else None
    if not _chain_to(graph, out, bmm2):
        return None
    return "attention", {"q": q.index, "k": k.index, "v": v.index, "causal": causal,
                         "scale": float(consts[0]) * float(consts[1])}


def _attention_by_hand(graph: OpGraph, nodes: list[OpNode]) -> tuple[str, dict] | None:
    """``softmax(q @ k^T / c) @ v`` written out: two (batched) products, a softmax over the scores' last
    dimension, and at most one number scaling the scores or the query (``* c`` or ``/ c``); the rest views. It is
    the attention family's computation with that scale (1 when there is none)."""
    ops = [n.op for n in nodes]
    products = [n for n in nodes if n.op in ("aten.bmm", "aten.mm")]
    softmax = [n for n in nodes if n.op in ("aten._softmax", "aten._safe_softmax")]
    scales = [n for n in nodes if n.op in ("aten.mul", "aten.div")]
    if len(products) != 2 or len(softmax) != 1 or len(scales) > 1 or len(ops) != 3 + len(scales) or \
            len(graph.inputs) != 3 or graph.params or not all(isinstance(t, TensorInfo) for t in graph.inputs):
        return None
    first, second, soft = products[0], products[1], softmax[0]
    scale, on_query = 1.0, False
    if scales:
        node = scales[0]
        number = node.args[1] if len(node.args) > 1 else None
        if not isinstance(number, int | float) or isinstance(number, bool) or number == 0:
            return None
        scale = float(number) if node.op == "aten.mul" else 1.0 / float(number)
        on_query = _chain_to(graph, first.args[0], node)
        if not (on_query or _chain_to(graph, node.args[0], first) and _chain_to(graph, soft.args[0], node)):
            return None
    if not scales or on_query:
        if not _chain_to(graph, soft.args[0], first):
            return None
    rank = len(soft.out.shape) if isinstance(soft.out, TensorInfo) else 0
    if rank < 2 or int(_arg(soft, 1, "dim", -1)) % rank != rank - 1 or _arg(soft, 2, "half_to_float", False) or \
            not _chain_to(graph, second.args[0], soft):
        return None
    q = _chain(graph, scales[0].args[0] if on_query else first.args[0])
    k, v = _chain(graph, first.args[1]), _chain(graph, second.args[1])
    if q is None or k is None or v is None or len({q[0].index, k[0].index, v[0].index}) != 3:
        return None
    if _order(q[0].info.shape, q[1]) != (False, False) or _order(k[0].info.shape, k[1]) != (True, False) or \
            _order(v[0].info.shape, v[1]) != (False, False):
        return None
    out = graph.outputs[0] if len(graph.outputs) == 1 else None
    if not _chain_to(graph, out, second) or tuple(out.info.shape) != tuple(q[0].info.shape[:-1]) + \
            (v[0].info.shape[-1],):
        return None
    _attention_shapes(graph, q[0], k[0], v[0])
    return "attention", {"q": q[0].index, "k": k[0].index, "v": v[0].index, "causal": False, "scale": scale}


def _chain_to(graph: OpGraph, a: Any, node: OpNode) -> bool:
    """``a`` is ``node``'s value, read through layout operations only."""
    while isinstance(a, Ref) and a.kind == "node":
        if graph.nodes[a.index] is node:
            return True
        if graph.nodes[a.index].op not in _LAYOUT_OPS:
            return False
        a = graph.nodes[a.index].args[0]
    return False


def _attention(graph: OpGraph, node: OpNode) -> tuple[str, dict] | None:
    """softmax(Q K^T * scale [+ causal mask]) V over the last two dimensions of the three inputs (any batch and head
    dimensions in front, the same for all three), without dropout or an explicit mask."""
    drop_at, causal_at, mask_at = _ATTENTION[node.op]
    q, k, v = node.args[:3]
    if not (_is_input(q) and _is_input(k) and _is_input(v)) or len(graph.inputs) != 3:
        return None
    _attention_shapes(graph, q, k, v)
    if float(_arg(node, drop_at, "dropout_p", 0.0)) != 0.0 or (mask_at is not None and
                                                               _arg(node, mask_at, "attn_mask", None) is not None) \
            or node.kwargs.get("attn_mask") is not None or node.kwargs.get("enable_gqa"):
        raise _Miss("an attention with dropout, an explicit mask or grouped heads (the family computes causal or "
                    "unmasked attention)")
    out = graph.outputs[0] if len(graph.outputs) == 1 else None
    first = out is not None and isinstance(out, Ref) and out.kind == "node" and \
        graph.nodes[out.index].op == "getitem" and graph.nodes[out.index].args[1] == 0
    if not (first or _is_node(out, node, graph)):
        return None
    scale = node.kwargs.get("scale")
    return "attention", {"q": q.index, "k": k.index, "v": v.index,
                         "causal": bool(_arg(node, causal_at, "is_causal", False)),
                         "scale": float(scale) if scale is not None else 1.0 / math.sqrt(q.info.shape[-1])}


_ROW_REDUCTIONS = frozenset({"aten.norm", "aten.linalg_vector_norm", "aten.sum", "aten.mean"})


def _row_stat(node: OpNode, last: int) -> tuple[str, str] | None:
    """A reduction of a row's values over the last dimension as (the per-element term added to a sum of ``{v}``,
    the row's value from that sum ``{s}``): sums, means and p-norms; None for anything else."""
    dims = _arg(node, 2 if node.op in ("aten.norm", "aten.linalg_vector_norm") else 1, "dim", None)
    keep = _arg(node, 3 if node.op in ("aten.norm", "aten.linalg_vector_norm") else 2, "keepdim", False)
    if keep not in (False, True) or not isinstance(dims, list | tuple) or len(dims) != 1 or \
            int(dims[0]) % (last + 1) != last:
        return None
    if node.op == "aten.sum":
        return "{v}", "{s}"
    if node.op == "aten.mean":
        return "{v}", "{s} / (float)D_"
    p = _arg(node, 1, "p" if node.op == "aten.norm" else "ord", 2)
    if not isinstance(p, int | float) or isinstance(p, bool) or not 0 < float(p) < math.inf:
        return None
    if float(p) == 2.0:
        return "{v} * {v}", "sqrtf({s})"
    if float(p) == 1.0:
        return "fabsf({v})", "{s}"
    return f"powf(fabsf({{v}}), {_f(p)})", f"powf({{s}}, {_f(1.0 / float(p))})"


def _in_place_alone(graph: OpGraph, index: int, node: OpNode) -> OpNode | None:
    """An in-place elementwise op (``clamp_min_``, ``mul_``) as its out-of-place form, when nothing after it reads
    the tensor it overwrote (so an expression of the old value stays right); None otherwise."""
    target = node.args[0] if node.args else None
    if not (isinstance(target, Ref) and target.kind == "node"):
        return None
    readers = [r for n in graph.nodes[index + 1:] for r in n.tensors()]
    readers += [r for r in graph.outputs if isinstance(r, Ref)]
    if any(r.kind == "node" and r.index == target.index for r in readers):
        return None
    return replace(node, op=node.op[:-1])


def _row_loss(graph: OpGraph) -> tuple[str, dict] | None:
    """A loss over rows of same-shaped inputs: elementwise values of the inputs, reduced over the last dimension
    (sums, means, p-norms: one pass over a row gives them all), elementwise operations on those row values, and the
    rows' results averaged or summed (the triplet margin loss, a sum of pairwise distances; the cosine similarity
    loss). Each element value is ``const float e<i>``, each row value ``r<i>``, the inputs ``x0`` ... in the
    generators' per-element code.

    An element value may be scaled by row values (``x / ||x||``, as cosine similarity normalises its operands):
    that scale is kept apart, as a factor, and applied to the row sums the value feeds, since a sum of ``e / r`` over
    a row is ``sum(e) / r``; so one pass still gives every sum. Only products and sums (means) take factored values."""
    ins = graph.inputs
    if not 1 <= len(ins) <= 4 or graph.params or not all(
            isinstance(t, TensorInfo) and t.dtype == "torch.float32" for t in ins):
        return None
    shape = tuple(ins[0].shape)
    if len(shape) < 2 or any(tuple(t.shape) != shape for t in ins):
        return None
    out = graph.outputs[0] if len(graph.outputs) == 1 else None
    if not (isinstance(out, Ref) and out.kind == "node"):
        return None
    final = graph.nodes[out.index]
    if final.op not in ("aten.mean", "aten.sum") or not final.overload.endswith("default"):
        return None
    last = len(shape) - 1
    row_shapes = (shape[:-1], shape[:-1] + (1,))
    kinds: dict[int, tuple[str | None, str]] = {}  # node index: ("e", "r" or None for a number, its value)
    factor: dict[int, str] = {}  # node index of an element value: the row values scaling it (" / r2 * r0")
    elem: list[str] = []
    rows: list[str] = []
    terms: list[str] = []

    def operand(a: Any) -> tuple[str | None, str] | None:
        if isinstance(a, Ref) and a.kind == "input":
            return "e", f"x{a.index}"
        if isinstance(a, Ref) and a.kind == "node":
            return kinds.get(a.index)
        if isinstance(a, int | float) and not isinstance(a, bool):
            return None, _f(a)
        return None

    def scale(a: Any) -> str:
        return factor.get(a.index, "") if isinstance(a, Ref) and a.kind == "node" else ""

    for index, node in enumerate(graph.nodes[:out.index]):
        if _number_of(node) is not None:
            kinds[index] = (None, _f(_number_of(node)))
            continue
        if node.op.endswith("_") and not node.op.endswith("__"):
            node = _in_place_alone(graph, index, node)
            if node is None:
                return None
        if node.op in _POINTWISE_SKIP or node.op == "getitem":
            src = operand(node.args[0]) if node.args else None
            if src is None or src[0] is None or not hasattr(node.out, "shape") or \
                    tuple(node.out.shape) not in ((shape,) if src[0] == "e" else row_shapes):
                return None
            kinds[index] = src
            if scale(node.args[0]):
                factor[index] = scale(node.args[0])
            continue
        if node.op in _ROW_REDUCTIONS:
            src = operand(node.args[0])
            stat = _row_stat(node, last)
            if src is None or src[0] != "e" or stat is None or scale(node.args[0]) and stat[0] != "{v}":
                return None
            kinds[index] = ("r", f"r{len(rows)}")
            value = stat[1].replace("{s}", f"(float)S{len(terms)}")
            rows.append(f"const float r{len(rows)} = " +
                        (f"({value}){scale(node.args[0])};" if scale(node.args[0]) else f"{value};"))
            terms.append(stat[0].replace("{v}", src[1]))
            continue
        args = [a for a in node.args[:2] if isinstance(a, Ref | int | float) and not isinstance(a, bool)]
        opnds = [operand(a) for a in args]
        if not opnds or any(o is None for o in opnds) or opnds[0][0] is None and (len(opnds) < 2 or
                                                                                 opnds[1][0] is None):
            return None
        kind = {o[0] for o in opnds} - {None}
        if not hasattr(node.out, "shape"):
            return None
        if kind == {"e", "r"}:  # an element value scaled by a row value: kept as a factor
            e_at = 0 if opnds[0][0] == "e" else 1
            r_name = opnds[1 - e_at][1]
            r_info = getattr(args[1 - e_at], "info", None)  # kept as [..., 1]: the row's value for each element
            scales = node.op == "aten.mul" or (node.op == "aten.div" and e_at == 0
                                                and _arg(node, 2, "rounding_mode", None) is None)
            if not scales or tuple(node.out.shape) != shape or \
                    tuple(getattr(r_info, "shape", ())) != shape[:-1] + (1,):
                return None
            kinds[index] = opnds[e_at]
            factor[index] = scale(args[e_at]) + (" * " if node.op == "aten.mul" else " / ") + r_name
            continue
        want = (shape,) if kind == {"e"} else row_shapes
        if len(kind) != 1 or tuple(node.out.shape) not in want:
            return None
        if any(scale(a) for a in args) and node.op != "aten.mul":
            return None
        expr = _pointwise_expr(node, opnds[0][1], opnds[1][1] if len(opnds) > 1 else None)
        if expr is None:
            return None
        if kind == {"e"}:
            kinds[index] = ("e", f"e{len(elem)}")
            elem.append(f"const float e{len(elem)} = {expr};")
            if scaled := "".join(scale(a) for a in args):  # a product: the factors multiply
                factor[index] = scaled
        else:
            kinds[index] = ("r", f"r{len(rows)}")
            rows.append(f"const float r{len(rows)} = {expr};")
    result = operand(final.args[0])
    if not terms or result is None or result[0] != "r" or len(terms) > 4:
        return None
    return "row_loss", {"kind": "mean" if final.op == "aten.mean" else "sum", "inputs": len(ins),
                        "elem": " ".join(elem), "terms": terms, "rows": " ".join(rows), "out": result[1],
                        "chain": " -> ".join(graph.nodes[i].op.removeprefix("aten.") for i in sorted(kinds)
                                             if graph.nodes[i].op not in _POINTWISE_SKIP)}


def _cross_entropy(graph: OpGraph, nodes: list[OpNode]) -> tuple[str, dict] | None:
    """Cross-entropy of class scores x [N, C] against class indices t [N]: a log-softmax over the classes and the
    negative log-likelihood of the target (cross_entropy, or nll_loss of log_softmax), averaged over the targets
    not ignored, or summed. Class weights and label smoothing change the sum, and are named."""
    lsm, nll = nodes
    if len(graph.inputs) != 2 or not all(isinstance(t, TensorInfo) for t in graph.inputs) or graph.params:
        return None
    x, t = graph.inputs
    if not (_is_input(lsm.args[0], 0) and _is_node(nll.args[0], lsm, graph) and _is_input(nll.args[1], 1)):
        return None
    if x.dtype != "torch.float32" or t.dtype != "torch.int64" or len(x.shape) != 2 or tuple(t.shape) != x.shape[:1]:
        raise _Miss("the cross-entropy family takes float32 scores [N, C] and int64 class indices [N]")
    if int(_arg(lsm, 1, "dim", -1)) % 2 != 1:
        raise _Miss("a log-softmax over the batch dimension (the cross-entropy family normalises over classes)")
    if _arg(nll, 2, "weight", None) is not None:
        raise _Miss("a cross-entropy with class weights (the family's sum is unweighted)")
    reduction, ignore = int(_arg(nll, 3, "reduction", 1)), int(_arg(nll, 4, "ignore_index", -100))
    if reduction not in (1, 2):
        raise _Miss("a cross-entropy without reduction (the family averages or sums the losses)")
    out = graph.outputs[0] if len(graph.outputs) == 1 else None
    if not (isinstance(out, Ref) and out.kind == "node" and graph.nodes[out.index].op == "getitem"
            and _is_node(graph.nodes[out.index].args[0], nll, graph) and graph.nodes[out.index].args[1] == 0):
        return None
    return "cross_entropy", {"reduction": "mean" if reduction == 1 else "sum", "ignore_index": ignore}


# Views and copies a pointwise chain may pass through unchanged (same shape), and those that move data around.
_POINTWISE_SKIP = frozenset({"aten.clone", "aten.detach", "aten.alias", "aten.contiguous", "aten.view",
                             "aten._unsafe_view", "aten.reshape", "aten.lift_fresh_copy", "aten._to_copy"})
SHAPE_OPS_KEPT = frozenset({"aten.permute", "aten.transpose", "aten.t", "aten.flip", "aten.cat", "aten.slice",
                            "aten.select", "aten.expand", "aten.roll"})
