"""Which offline kernel family fits a reference, read from its traced operator graph (``graph.trace``).

The answer is what a user checks before a long run: the family and op tag a code generator would take, with the
parameters it needs (the dimension reduced or normalised over, eps, strides, ...), or one line saying why no
family fits and what the graph holds instead. Patterns are matched on ATen operations, so every spelling of a
computation (functional, module, method, helper) is recognised alike, and near misses are named (a softmax over a
dimension other than the last, a convolution with groups) rather than silently searched without help.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kernelcraft.problems.graph import OpGraph, OpNode, Ref, TraceError, trace
from kernelcraft.problems.loader import Problem
from kernelcraft.problems.ops import op_family


@dataclass(frozen=True)
class Recognition:
    """``op`` (and its ``family``) when a family fits, else ``reason``; ``graph`` is the one-line summary."""

    op: str | None
    params: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    graph: str = ""

    @property
    def family(self) -> str | None:
        return op_family(self.op)

    def line(self) -> str:
        if self.op is not None:
            shown = ", ".join(f"{k}={v}" for k, v in sorted(self.params.items()))
            return f"{self.family}/{self.op}" + (f" ({shown})" if shown else "")
        return f"no offline family fits: {self.reason}"


class _Miss(Exception):
    """A pattern that almost fits; the message says what is off."""


def recognise(graph: OpGraph) -> Recognition:
    summary = graph.summary()
    nodes = graph.compute_nodes()
    try:
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
    return recognise(graph)


# ------------------------------------------------------------------------------------------------ patterns


def _is_input(a: Any, index: int | None = None) -> bool:
    return isinstance(a, Ref) and a.kind == "input" and (index is None or a.index == index)


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
        return _single(graph, nodes[0])
    rms = _rmsnorm(graph, nodes)
    if rms is not None:
        return rms
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


def _single(graph: OpGraph, node: OpNode) -> tuple[str, dict] | None:
    x = node.args[0] if node.args else None
    if node.op not in ("aten.mm", "aten.convolution") and not _is_input(x, 0):
        return None
    _float32(graph, node)
    rank = len(x.info.shape) if isinstance(x, Ref) else 0
    if node.op == "aten.relu":
        return "relu", {}
    if node.op == "aten.gelu":
        return "gelu", {"approximate": _arg(node, 1, "approximate", "none")}
    if node.op in ("aten._softmax", "aten._log_softmax"):
        dim = _arg(node, 1, "dim", -1)
        name = "softmax" if node.op == "aten._softmax" else "log_softmax"
        if not _last(dim, rank):
            raise _Miss(f"{name} over dimension {dim} of a rank-{rank} tensor (the rowwise family normalises the "
                        "last dimension)")
        return name, {"dim": -1}
    if node.op == "aten.sum" and node.overload.endswith("dim_IntList"):
        dims = _arg(node, 1, "dim", None)
        if not _last(dims, rank):
            raise _Miss(f"a sum over dimension(s) {dims} of a rank-{rank} tensor (the rowwise family sums the last)")
        return "sum_lastdim", {"dim": -1, "keepdim": bool(_arg(node, 2, "keepdim", False))}
    if node.op == "aten.native_layer_norm":
        shape = list(_arg(node, 1, "normalized_shape", []))
        weight, bias = _arg(node, 2, "weight", None), _arg(node, 3, "bias", None)
        if weight is None or bias is None:
            raise _Miss("a layer norm without an affine weight and bias (the rowwise family applies both)")
        return "layernorm", {"normalized_dims": len(shape), "eps": _arg(node, 4, "eps", 1e-5)}
    if node.op == "aten.mm":
        a, b = node.args[0], node.args[1]
        if not (_is_input(a, 0) and _is_input(b, 1)):
            raise _Miss("a matrix product of transposed, reshaped or computed operands (the matmul family takes "
                        "A @ B of the two inputs as given)")
        return "matmul", {}
    if node.op == "aten.convolution":
        return _conv(graph, node)
    return None


def _conv(graph: OpGraph, node: OpNode) -> tuple[str, dict]:
    _float32(graph, node)
    x, w = node.args[0], node.args[1]
    if not _is_input(x, 0) or not (isinstance(w, Ref) and w.kind == "param"):
        raise _Miss("a convolution of a computed input or with weights that are not the model's parameters")
    stride, padding, dilation = (list(node.args[i]) for i in (3, 4, 5))
    transposed, groups = node.args[6], node.args[8]
    kernel = list(w.info.shape[2:])
    what = f"{'transposed ' if transposed else ''}{len(kernel)}-D convolution, kernel {kernel}, groups {groups}"
    if transposed or len(kernel) != 2 or groups != 1 or len(set(kernel)) != 1:
        raise _Miss(f"a {what} (the conv family takes 2-D, square kernel, groups 1, not transposed)")
    if len(set(stride)) != 1 or len(set(padding)) != 1 or len(set(dilation)) != 1:
        raise _Miss(f"a {what} with stride {stride}, padding {padding}, dilation {dilation} (the conv family takes "
                    "the same value along both axes)")
    return "conv2d", {"kernel_size": kernel[0], "stride": stride[0], "padding": padding[0],
                      "dilation": dilation[0], "groups": 1}


def _rmsnorm(graph: OpGraph, nodes: list[OpNode]) -> tuple[str, dict] | None:
    """x * rsqrt(mean(x^2) + eps) [* weight], or x / sqrt(mean(x^2) + eps) [* weight] (x^2 as pow or x * x)."""
    ops = [n.op for n in nodes]
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
    if not _last(dims, rank) or not _arg(mean, 2, "keepdim", False):
        raise _Miss(f"an RMS norm over dimension(s) {dims} of a rank-{rank} tensor (the rowwise family normalises "
                    "the last dimension)")
    if len(nodes) == 6:
        scale = nodes[5]
        if not _is_node(scale.args[0], apply, graph) or not (isinstance(scale.args[1], Ref)
                                                              and scale.args[1].kind == "param"):
            return None
    return "rmsnorm", {"eps": add.args[1]}
