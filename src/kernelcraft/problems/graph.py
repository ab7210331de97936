"""A reference's traced operator graph: what its forward computes, as ATen operations on shapes.

Recognising a problem from its source text (``ops.match_op``) sees only what the author wrote; two files that
compute the same thing with different spellings (``torch.softmax``, ``F.softmax``, ``nn.Softmax()``, a module
attribute, a helper function) look different, and a name says nothing. Tracing the forward into ATen
operations gives one spelling per computation. The trace runs under fake tensors: shapes, dtypes and strides
without storage, so a problem whose inputs take gigabytes traces in milliseconds on a machine without a GPU, and
nothing the reference allocates is ever materialised.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field, replace
from typing import Any

from kernelcraft.problems.loader import Problem

# Operations that only rename memory (views, copies, detaches): they carry shapes through a graph but compute
# nothing a kernel family cares about.
SHAPE_OPS = frozenset({
    "aten.view", "aten._unsafe_view", "aten.reshape", "aten.expand", "aten.clone", "aten.detach", "aten.alias",
    "aten.contiguous", "aten.lift_fresh_copy", "aten.unsqueeze", "aten.squeeze", "aten._to_copy", "aten.slice",
    "aten.select", "aten.t", "aten.transpose", "aten.permute", "aten.flatten", "aten.unflatten", "aten.copy",
    "aten.empty_like", "aten.zeros_like", "aten.ones_like", "aten.full_like", "aten.scalar_tensor",
    "aten.empty", "aten.zeros", "aten.ones", "aten.full", "aten.arange", "aten.expand_as", "aten.view_as",
})


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: str

    def __str__(self) -> str:
        short = self.dtype.replace("torch.", "").replace("float", "f").replace("int", "i").replace("bool", "b")
        return f"{short}[{','.join(str(d) for d in self.shape)}]"


@dataclass(frozen=True)
class Ref:
    """An argument that is a tensor: a graph input (``input``, by position), a parameter or buffer of the model
    (``param``, by name), or the output of an earlier node (``node``, by index)."""

    kind: str
    index: int | str
    info: TensorInfo


@dataclass(frozen=True)
class OpNode:
    op: str  # the overload packet, e.g. "aten.softmax"
    overload: str  # e.g. "aten._softmax.default"
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict, compare=False)
    out: TensorInfo | tuple[TensorInfo, ...] | None = None

    def tensors(self) -> list[Ref]:
        found: list[Ref] = []

        def walk(a: Any) -> None:
            if isinstance(a, Ref):
                found.append(a)
            elif isinstance(a, list | tuple):
                for x in a:
                    walk(x)
        walk(self.args)
        walk(tuple(self.kwargs.values()))
        return found


@dataclass(frozen=True)
class OpGraph:
    inputs: tuple[TensorInfo | Any, ...]  # TensorInfo for tensor inputs, the value itself otherwise
    params: dict[str, TensorInfo]
    nodes: tuple[OpNode, ...]
    outputs: tuple[Any, ...]  # Refs, or constants
    eval_mode: bool = False  # traced with the model in eval mode (see trace)

    def compute_nodes(self) -> list[OpNode]:
        """The nodes that compute something (not views, copies or constructors)."""
        return [n for n in self.nodes if n.op not in SHAPE_OPS and n.op != "getitem"]

    def summary(self) -> str:
        """One line: the computing operations with their first tensor argument's shape, in graph order."""
        parts = []
        for n in self.compute_nodes():
            ts = n.tensors()
            shape = f"({', '.join(str(t.info) for t in ts[:2])})" if ts else "()"
            parts.append(n.op.removeprefix("aten.") + shape)
        return " -> ".join(parts) if parts else "no computing operation"


class TraceError(ValueError):
    """The reference could not be traced; the message is one line."""


# Operations that draw random numbers: in a trace they are a training-mode dropout (or a reference that is random
# in any mode, which no kernel can match).
RANDOM_OPS = frozenset({"aten.bernoulli", "aten.bernoulli_", "aten.native_dropout", "aten.rand", "aten.rand_like",
                        "aten.randn", "aten.randn_like", "aten.randint", "aten.randint_like", "aten.normal",
                        "aten.uniform_", "aten.multinomial", "aten.randperm"})


def trace(problem: Problem) -> OpGraph:
    """Trace ``problem``'s forward, at its own sizes, under fake tensors (no storage, no GPU).

    Traced as constructed (training mode: a batch norm's statistics are the batch's, which is what recognition
    reads, with the module's running statistics taken from the module itself). A forward that draws random numbers
    there is traced again in eval mode, the mode the evaluator runs references in: a dropout module is then the
    identity it is when judged, and a forward random even in eval mode stays random and is refused by name."""
    module = problem.load_module()
    graph = _trace(problem, module, eval_mode=False)
    if any(n.op in RANDOM_OPS for n in graph.nodes):
        graph = replace(_trace(problem, module, eval_mode=True), eval_mode=True)
    return graph


def _trace(problem: Problem, module: Any, eval_mode: bool) -> OpGraph:
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    try:
        with FakeTensorMode(allow_non_fake_inputs=True):
            torch.manual_seed(0)
            model = module.Model(*module.get_init_inputs())
            if eval_mode:
                model.eval()
            inputs = list(module.get_inputs())
            params = {**dict(model.named_parameters()), **dict(model.named_buffers())}
            by_id = {id(t): name for name, t in params.items()}
            gm = make_fx(lambda *xs: model(*xs), tracing_mode="real")(*inputs)
    except Exception as exc:  # noqa: BLE001 - whatever the reference does wrong is reported as one line
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise TraceError(f"{problem.path.name}: tracing the forward failed: {type(exc).__name__}: {text}"[:400]) \
            from None
    return _to_graph(gm, inputs, params, by_id)


def _info(value: Any) -> TensorInfo | None:
    import torch

    if isinstance(value, torch.Tensor):
        return TensorInfo(tuple(int(d) for d in value.shape), str(value.dtype))
    return None


def _to_graph(gm: Any, inputs: list, params: dict, by_id: dict[int, str]) -> OpGraph:
    import torch

    index: dict[str, Ref] = {}
    nodes: list[OpNode] = []
    outputs: tuple[Any, ...] = ()
    placeholder = 0
    param_infos = {name: _info(t) for name, t in params.items()}

    def conv(a: Any) -> Any:
        if isinstance(a, torch.fx.Node):
            return index.get(a.name, a.name)
        if isinstance(a, list | tuple):
            return type(a)(conv(x) for x in a)
        if isinstance(a, torch.dtype | torch.device | torch.layout | torch.memory_format):
            return str(a)
        return a

    for node in gm.graph.nodes:
        val = node.meta.get("val")
        if node.op == "placeholder":
            info = _info(inputs[placeholder]) if placeholder < len(inputs) else None
            index[node.name] = Ref("input", placeholder, info) if info else index.get(node.name)
            placeholder += 1
        elif node.op == "get_attr":
            attr = getattr(gm, node.target)
            name = by_id.get(id(attr), str(node.target))
            info = _info(attr)
            if info is not None:
                index[node.name] = Ref("param", name, info)
        elif node.op == "call_function":
            target = node.target
            if target is operator.getitem:
                op, overload = "getitem", "getitem"
            else:
                op = str(getattr(target, "overloadpacket", target))
                overload = str(target)
            out: Any
            if isinstance(val, list | tuple):
                out = tuple(_info(v) for v in val)
            else:
                out = _info(val)
            nodes.append(OpNode(op, overload, conv(tuple(node.args)), conv(dict(node.kwargs)), out))
            # a node with several results (max pooling with indices, native_layer_norm, ...) is referred to by its
            # first one, which is what a getitem(node, 0) reads
            info = out if isinstance(out, TensorInfo) else (out[0] if out and isinstance(out[0], TensorInfo) else None)
            if info is not None:
                index[node.name] = Ref("node", len(nodes) - 1, info)
        elif node.op == "output":
            outputs = tuple(conv(a) for a in (node.args[0] if isinstance(node.args[0], list | tuple)
                                               else [node.args[0]]))
    tensor_inputs = tuple(_info(x) or x for x in inputs)
    return OpGraph(tensor_inputs, {k: v for k, v in param_infos.items() if v is not None}, tuple(nodes), outputs)
