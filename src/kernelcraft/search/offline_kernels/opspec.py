"""What a code generator needs to know about a problem, derived once from the reference itself.

The offline proposer writes kernels for one op applied to float32 inputs (one tensor, or the two operands of a
matmul). The op tag says *which* op; this module pins down everything else the generated file depends on, from the
reference rather than from guesses: the input shapes (``get_inputs()`` run on the meta device, so a 1 GiB input
costs nothing), how many trailing dimensions form a row, the eps, the output shape (the reference's forward on meta
tensors), and how ModelNew must recreate the reference's parameters so the same seed gives the same weights. A small
real probe then checks that the reference really computes the op we are about to generate for (an external
KernelBench file can call something the static op detector mistook); if anything does not fit, :func:`describe` says
why and the proposer reports the problem as unsupported instead of emitting wrong kernels.
"""

from __future__ import annotations

import ast
import inspect
import math
from dataclasses import dataclass
from typing import Any

from kernelcraft.problems.ops import FAMILIES
from kernelcraft.problems.recognise import contiguous_runs


class Unsupported(ValueError):
    """The problem is outside what the offline generators can write correct code for (message says why)."""


@dataclass(frozen=True)
class OpSpec:
    """One problem as the generators see it. ``row_dims`` trailing dims form a row of ``row_len`` floats."""

    problem_id: str
    op: str
    family: str
    input_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    row_dims: int
    eps: float
    keepdim: bool
    init_signature: str  # "(self, normalized_shape)": ModelNew.__init__'s parameter list, verbatim
    init_body: tuple[str, ...]  # statements after super().__init__() that recreate the parameters
    weight: str | None  # Python expression for the weight tensor inside forward ("self.ln.weight")
    bias: str | None
    # ModelNew.forward's tensor arguments (the generators' names, in the reference's order) and their shapes.
    args: tuple[str, ...] = ("x",)
    input_shapes: tuple[tuple[int, ...], ...] = ()
    # A convolution's geometry (conv family): cin, cout, r, s, stride, pad, dil, bias, pool_k, pool_s (0: no
    # pool), n, h, w, oh, ow (the convolution's output), ph, pw (the pool's).
    conv: tuple[tuple[str, int], ...] = ()
    # A pointwise op's per-element function body in C (float x in, ``return`` out), from the traced graph.
    body: str = ""
    # A pointwise op's second tensor operand ``y`` (its body then takes float x and y): element e of the output reads
    # y's element (e / inner) % size, as (inner, size); empty without one.
    broadcast: tuple[int, ...] = ()
    # Python numbers the reference's forward takes (name, value): the trace compiled them in, so the candidate
    # refuses other values.
    scalars: tuple[tuple[str, float], ...] = ()
    # A row loss (rowloss family): per element of a row, ``body`` defines e<i> from x0, x1, ...; ``terms`` are added
    # up over the row into S0, S1, ...; ``row_body`` then defines r<i> from them, and ``row_out`` is the row's loss.
    terms: tuple[str, ...] = ()
    row_body: str = ""
    row_out: str = ""
    # Attention's softmax scale (attn family); a rowwise softmax's scale of its input, the inverse of a temperature
    # (0: none).
    scale: float = 0.0

    @property
    def geometry(self) -> dict[str, int]:
        return dict(self.conv)

    @property
    def mnk(self) -> tuple[int, int, int]:
        """A matmul's (M, N, K): C[M, N] = A[M, K] @ B[K, N] (per batch entry when batched)."""
        g = self.geometry
        if "m" in g:
            return g["m"], g["n"], g["k"]
        (m, k), (_, n) = self.input_shapes
        return m, n, k

    @property
    def rows(self) -> int:
        return math.prod(self.input_shape[: len(self.input_shape) - self.row_dims])

    @property
    def row_len(self) -> int:
        return math.prod(self.input_shape[len(self.input_shape) - self.row_dims:])

    @property
    def numel(self) -> int:
        return math.prod(self.input_shape)


# Set on the freshly loaded problem module by describe: whether the reference is probed in eval mode
EVAL_MODE_ATTR = "_kernelcraft_eval_mode"


def describe(problem: Any) -> OpSpec:
    """The OpSpec of ``problem`` (a kernelcraft Problem), or Unsupported with a one-line reason."""
    import torch

    from kernelcraft.problems.recognise import recognise_problem

    # What the reference computes comes from its traced operator graph (one spelling per computation), the same
    # recognition `kernelcraft problems` lists; the checks below then confirm the details on the model itself
    recognition = recognise_problem(problem)
    op = recognition.op
    if op is None:
        raise Unsupported(recognition.line())
    if op not in FAMILIES:
        raise Unsupported(f"op {op!r} has no offline generator (supported: {', '.join(FAMILIES)})")
    module = problem.load_module()
    setattr(module, EVAL_MODE_ATTR, recognition.eval_mode)
    params = dict(recognition.params)
    meta = getattr(module, "KERNELCRAFT", None)
    if isinstance(meta, dict) and isinstance(meta.get("params"), dict):
        params = {**params, **meta["params"]}
    init_inputs = list(module.get_init_inputs())

    with torch.device("meta"):
        try:
            inputs = list(module.get_inputs())
        except Exception as exc:  # noqa: BLE001 - any failure just means we cannot see the shapes cheaply
            raise Unsupported(f"get_inputs() does not run on the meta device ({type(exc).__name__})") from exc
    if FAMILIES[op] == "matmul" and "m" in params:
        return _describe_matmul_layout(problem, module, init_inputs, inputs, params)
    if FAMILIES[op] == "matmul":
        return _describe_matmul(problem, module, init_inputs, inputs)
    if FAMILIES[op] == "conv":
        return _describe_conv(problem, module, init_inputs, inputs, op)
    if FAMILIES[op] == "window":
        return _describe_window(problem, module, init_inputs, inputs, op, params)
    if FAMILIES[op] == "reduce":
        return _describe_reduce(problem, module, init_inputs, inputs, op, params)
    if FAMILIES[op] == "scan":
        return _describe_scan(problem, module, init_inputs, inputs, params)
    if FAMILIES[op] == "xent":
        return _describe_xent(problem, module, init_inputs, inputs, params)
    if FAMILIES[op] == "rowloss":
        return _describe_rowloss(problem, module, init_inputs, inputs, params)
    if FAMILIES[op] == "attn":
        return _describe_attn(problem, module, init_inputs, inputs, params)
    if op == "pointwise" and ("x_input" in params or "y_param" in params):
        return _describe_pointwise(problem, module, init_inputs, inputs, params)
    if len(inputs) != 1 or not isinstance(inputs[0], torch.Tensor):
        raise Unsupported("the offline generators handle exactly one tensor input")
    x = inputs[0]
    if x.dtype != torch.float32:
        raise Unsupported(f"input dtype is {x.dtype}; the offline generators write float32 kernels")
    if x.dim() == 0:
        raise Unsupported("input is a 0-d tensor")
    shape = tuple(int(s) for s in x.shape)

    torch.manual_seed(0)
    model = _reference(module, init_inputs)
    named = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    if buffers:
        raise Unsupported(f"the reference has buffers ({', '.join(buffers)}) that ModelNew would have to mirror")

    family = FAMILIES[op]
    row_dims = 1
    eps = 0.0
    keepdim = False
    init_body: list[str] = []
    weight = bias = None
    ctor = _ctor_bindings(module.Model, init_inputs)

    if op == "gelu" and params.get("approximate", "none") != "none":
        raise Unsupported("only the exact (erf) GELU is generated; approximate='tanh' is not")
    if op in ("relu", "gelu", "pointwise", "softmax", "log_softmax", "sum_lastdim") and named:
        raise Unsupported(f"a {op} reference with parameters ({', '.join(named)}) is not a plain {op}")
    if op in ("softmax", "log_softmax", "sum_lastdim") and params.get("dim", -1) not in (-1, len(shape) - 1):
        raise Unsupported(f"{op} over dim {params.get('dim')} is not over the last dim")
    if op == "sum_lastdim":
        keepdim = bool(params.get("keepdim", False))
    if op == "layernorm":
        row_dims, eps, init_body, weight, bias = _layernorm_mirror(model, named, shape, ctor)
    if op == "rmsnorm":
        eps, init_body, weight = _rmsnorm_mirror(model, named, shape, params, ctor)

    if row_dims > len(shape):
        raise Unsupported(f"normalised dims ({row_dims}) exceed the input rank ({len(shape)})")
    out_shape = _out_shape(module, init_inputs, x, op, shape, keepdim)
    spec = OpSpec(problem_id=str(problem.id), op=op, family=family, input_shape=shape, out_shape=out_shape,
                  row_dims=row_dims, eps=float(eps), keepdim=keepdim,
                  init_signature=_render_signature(module.Model), init_body=tuple(init_body),
                  weight=weight, bias=bias, input_shapes=(shape,), body=str(params.get("body", "")),
                  scale=float(params.get("scale", 0.0)) if op == "softmax" else 0.0)
    if op != "pointwise":  # a pointwise body is the traced graph itself, not a guess the probe should confirm
        _probe(spec, model)
    return spec


def _describe_pointwise(problem: Any, module: Any, init_inputs: list, inputs: list, params: dict) -> OpSpec:
    """A pointwise op of several forward arguments (recognise._pointwise): ``x`` the input of the output's shape,
    ``y`` a broadcast one, ``s<i>`` the Python numbers, named in the reference's order."""
    import torch

    torch.manual_seed(0)
    model = _reference(module, init_inputs)
    state = [*model.named_parameters(), *model.named_buffers()]
    init_body: list[str] = []
    weight = None
    if "y_param" in params:  # the broadcast operand is a module's parameter: ModelNew holds the same module
        init_body, weight = _prelu_mirror(model, str(params["y_param"]))
        state = [(n, t) for n, t in state if n != params["y_param"]]
    if state:
        raise Unsupported(f"a pointwise reference holding tensors ({', '.join(n for n, _ in state)}) is not plain")
    names = [f"s{i}" for i in range(len(inputs))]
    names[params.get("x_input", 0)] = "x"
    shapes = [tuple(int(d) for d in inputs[params.get("x_input", 0)].shape)]
    broadcast: tuple[int, ...] = ()
    if "y_input" in params:
        names[params["y_input"]] = "y"
        shapes.append(tuple(int(d) for d in inputs[params["y_input"]].shape))
    elif "y_param" in params:
        shapes.append(tuple(int(d) for d in model.get_parameter(str(params["y_param"])).shape))
    if "y_inner" in params:  # y (an input or the parameter) read at (e / inner) % size
        broadcast = (int(params["y_inner"]), int(params["y_size"]))
    scalars = tuple((f"s{i}", float(v)) for i, v in params.get("scalars", []))
    return OpSpec(problem_id=str(problem.id), op="pointwise", family="elementwise", input_shape=shapes[0],
                  out_shape=shapes[0], row_dims=1, eps=0.0, keepdim=False,
                  init_signature=_render_signature(module.Model), init_body=tuple(init_body), weight=weight, bias=None,
                  args=tuple(names), input_shapes=tuple(shapes), body=str(params["body"]), broadcast=broadcast,
                  scalars=scalars)


def _prelu_mirror(model: Any, name: str) -> tuple[list[str], str]:
    """ModelNew's copy of the module owning the pointwise op's parameter, built as the reference builds it (so the
    same seed gives the same values), and the expression that reads the parameter: only an nn.PReLU held directly
    by the model, whose slopes start as one constant."""
    import torch

    owner, _, attr = name.rpartition(".")
    module = model.get_submodule(owner) if owner else None
    if not isinstance(module, torch.nn.PReLU) or attr != "weight" or "." in owner:
        raise Unsupported(f"a pointwise reference whose parameter {name} is not the slopes of an nn.PReLU attribute")
    w = module.weight.detach().flatten()
    if not bool((w == w[0]).all()):
        raise Unsupported(f"PReLU slopes {name} that do not start as one constant")
    return [f"self.{owner} = nn.PReLU(num_parameters={module.num_parameters}, init={float(w[0])!r})"], \
        f"self.{owner}.weight"


def _describe_matmul(problem: Any, module: Any, init_inputs: list, inputs: list) -> OpSpec:
    """C = A @ B on two float32 matrices, no parameters: the operands' shapes are the whole problem."""
    import torch

    if len(inputs) != 2 or not all(isinstance(t, torch.Tensor) for t in inputs):
        raise Unsupported("matmul: expected exactly two tensor inputs (A, B)")
    a, b = inputs
    if a.dim() != 2 or b.dim() != 2:
        raise Unsupported(f"matmul: operands of shapes {tuple(a.shape)} and {tuple(b.shape)}; only 2-D A @ B is "
                          "generated (batched and matrix-vector products are not yet)")
    if a.dtype != torch.float32 or b.dtype != torch.float32:
        raise Unsupported(f"matmul: operand dtypes {a.dtype}, {b.dtype}; the generators write float32 kernels")
    if a.shape[1] != b.shape[0]:
        raise Unsupported(f"matmul: inner dimensions differ ({tuple(a.shape)} @ {tuple(b.shape)})")
    torch.manual_seed(0)
    model = _reference(module, init_inputs)
    state = [*model.named_parameters(), *model.named_buffers()]
    if state:
        raise Unsupported(f"matmul: the reference holds tensors ({', '.join(n for n, _ in state)}); a plain "
                          "A @ B has none")
    shapes = (tuple(int(s) for s in a.shape), tuple(int(s) for s in b.shape))
    m, n = shapes[0][0], shapes[1][1]
    try:
        with torch.device("meta"):
            out = model(a, b)
        got = tuple(int(s) for s in out.shape) if isinstance(out, torch.Tensor) else None
    except Exception:  # noqa: BLE001 - some references do not run on meta; the probe still checks semantics
        got = (m, n)
    if got != (m, n):
        raise Unsupported(f"matmul: the reference's output shape {got} is not A @ B's {(m, n)}")
    spec = OpSpec(problem_id=str(problem.id), op="matmul", family="matmul", input_shape=shapes[0],
                  out_shape=(m, n), row_dims=1, eps=0.0, keepdim=False,
                  init_signature=_render_signature(module.Model), init_body=(), weight=None, bias=None,
                  args=("a", "b"), input_shapes=shapes)
    _probe_matmul(model)
    return spec


def _describe_matmul_layout(problem: Any, module: Any, init_inputs: list, inputs: list, params: dict) -> OpSpec:
    """A product of the two inputs read in order or transposed, batched or not, optionally triangular: the graph's
    layout analysis (problems.recognise) says how each input is read; the kernels transpose an operand into a
    scratch buffer with their own kernel, run the 2-D product per batch entry and mask the triangle."""
    import torch

    linear = "b_param" in params
    if len(inputs) != (1 if linear else 2) or not all(isinstance(t, torch.Tensor) and t.dtype == torch.float32
                                                      for t in inputs):
        raise Unsupported("matmul: expected " + ("one float32 tensor input" if linear else
                                                 "two float32 tensor inputs"))
    torch.manual_seed(0)
    model = _reference(module, init_inputs)
    keys = ("m", "n", "k", "batch", "ta", "tb", "a_batched", "b_batched", "tri", "diagonal")
    geom = {key: int(params[key]) for key in keys}
    shapes = tuple(tuple(int(v) for v in t.shape) for t in inputs)
    init_body: tuple[str, ...] = ()
    weight = bias = None
    if linear:
        init_body, weight, bias = _linear_mirror(model, str(params["b_param"]), str(params.get("bias_param", "")),
                                                 _ctor_bindings(module.Model, init_inputs))
        shapes = (shapes[0], (geom["n"], geom["k"]))  # B is the weight, stored [N, K]
        geom["bias"] = int(bias is not None)
    elif [*model.named_parameters(), *model.named_buffers()]:
        raise Unsupported("matmul: the reference holds tensors; a product of the inputs has none")
    spec = OpSpec(problem_id=str(problem.id), op="matmul", family="matmul", input_shape=shapes[0],
                  out_shape=tuple(int(v) for v in params["out_shape"]), row_dims=1, eps=0.0, keepdim=False,
                  init_signature=_render_signature(module.Model), init_body=init_body, weight=weight, bias=bias,
                  args=("a",) if linear else ("a", "b"), input_shapes=shapes, conv=tuple(geom.items()))
    return spec


def _linear_mirror(model: Any, weight: str, bias: str, ctor: dict[str, Any]) -> tuple[tuple[str, ...], str, str | None]:
    """(init_body, weight, bias) of a reference whose only tensors are one torch.nn.Linear attribute's: ModelNew
    rebuilds the layer as the reference built it, so the same seed gives the same weight and bias."""
    import torch.nn as nn

    attr = weight.rsplit(".", 1)[0] if weight.endswith(".weight") else ""
    layer = getattr(model, attr, None) if attr and "." not in attr else None
    if type(layer) is not nn.Linear:
        raise Unsupported(f"matmul: the parameter {weight} is not the weight of a torch.nn.Linear attribute of the "
                          "Model (the matmul family rebuilds the layer to hold it)")
    expected = {f"{attr}.weight"} | ({f"{attr}.bias"} if layer.bias is not None else set())
    state = {k for k, _ in [*model.named_parameters(), *model.named_buffers()]}
    if state != expected or (bias and bias != f"{attr}.bias") or (layer.bias is not None) != bool(bias):
        raise Unsupported(f"matmul: the Model holds tensors besides its linear layer's ({sorted(state - expected)}) "
                          "or its bias is not added")
    args = [_expr_for(layer.in_features, ctor, str(layer.in_features)),
            _expr_for(layer.out_features, ctor, str(layer.out_features))]
    if layer.bias is None:
        args.append("bias=False")
    return (f"self.{attr} = nn.Linear({', '.join(args)})",), f"self.{attr}.weight", \
        f"self.{attr}.bias" if layer.bias is not None else None


def _pair(value: Any, what: str) -> int:
    """An int, or a square (k, k) pair, as one int; Unsupported for anything else."""
    if isinstance(value, tuple | list):
        if len(value) != 2 or value[0] != value[1]:
            raise Unsupported(f"conv: {what}={tuple(value)} is not square")
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int):
        raise Unsupported(f"conv: {what}={value!r} is not an integer")
    return int(value)


def _describe_conv(problem: Any, module: Any, init_inputs: list, inputs: list, op: str) -> OpSpec:
    """A 2-D convolution (one nn.Conv2d, groups 1, zero padding), optionally followed by ReLU and one
    nn.MaxPool2d: ModelNew rebuilds the same nn.Conv2d, so the same seed gives the same weights."""
    import torch
    import torch.nn as nn

    if len(inputs) != 1 or not isinstance(inputs[0], torch.Tensor) or inputs[0].dim() != 4:
        raise Unsupported("conv: expected one 4-D (N, C, H, W) input tensor")
    x = inputs[0]
    if x.dtype != torch.float32:
        raise Unsupported(f"conv: input dtype is {x.dtype}; the generators write float32 kernels")
    torch.manual_seed(0)
    model = _reference(module, init_inputs)
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if len(convs) != 1 or not convs[0][0] or "." in convs[0][0]:
        raise Unsupported("conv: expected exactly one nn.Conv2d attribute on the Model")
    attr, conv = convs[0]
    if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise Unsupported(f"conv: groups={conv.groups}, padding={conv.padding!r}, padding_mode={conv.padding_mode!r}"
                          "; only groups=1 with numeric zero padding is generated")
    r, s_ = (int(k) for k in conv.kernel_size)
    if r != s_:
        raise Unsupported(f"conv: kernel {conv.kernel_size} is not square")
    stride, pad, dil = _pair(conv.stride, "stride"), _pair(conv.padding, "padding"), _pair(conv.dilation, "dilation")
    named = dict(model.named_parameters())
    expected = {f"{attr}.weight"} | ({f"{attr}.bias"} if conv.bias is not None else set())
    if set(named) != expected or dict(model.named_buffers()):
        raise Unsupported(f"conv: the Model holds tensors besides its convolution's ({sorted(set(named) - expected)})")
    n, cin, h, w = (int(v) for v in x.shape)
    if cin != conv.in_channels:
        raise Unsupported(f"conv: the input has {cin} channels, the nn.Conv2d takes {conv.in_channels}")
    oh = (h + 2 * pad - dil * (r - 1) - 1) // stride + 1
    ow = (w + 2 * pad - dil * (r - 1) - 1) // stride + 1
    if oh < 1 or ow < 1:
        raise Unsupported("conv: the kernel is larger than the padded input")
    pool_k = pool_s = 0
    ph, pw = oh, ow
    if op == "conv2d_relu_maxpool":
        pools = [m for _, m in model.named_modules() if isinstance(m, nn.MaxPool2d)]
        if len(pools) != 1:
            raise Unsupported("conv2d_relu_maxpool: expected exactly one nn.MaxPool2d")
        pool = pools[0]
        pool_k = _pair(pool.kernel_size, "pool kernel_size")
        pool_s = _pair(pool.stride if pool.stride is not None else pool.kernel_size, "pool stride")
        if _pair(pool.padding, "pool padding") != 0 or _pair(pool.dilation, "pool dilation") != 1 or pool.ceil_mode:
            raise Unsupported("conv2d_relu_maxpool: only a max pool without padding, dilation or ceil_mode")
        ph, pw = (oh - pool_k) // pool_s + 1, (ow - pool_k) // pool_s + 1
        if ph < 1 or pw < 1:
            raise Unsupported("conv2d_relu_maxpool: the pool window is larger than the convolution's output")
    out_shape = (n, conv.out_channels, ph, pw)
    try:
        with torch.device("meta"):
            got = model.to("meta")(x)
        got_shape = tuple(int(v) for v in got.shape)
    except Exception:  # noqa: BLE001 - the probe below still checks semantics
        got_shape = out_shape
    if got_shape != out_shape:
        raise Unsupported(f"{op}: the reference's output shape {got_shape} is not the expected {out_shape}")
    ctor = _ctor_bindings(module.Model, init_inputs)
    args = [_expr_for(conv.in_channels, ctor, str(conv.in_channels)),
            _expr_for(conv.out_channels, ctor, str(conv.out_channels)), _expr_for(r, ctor, str(r))]
    kwargs = [f"stride={_expr_for(stride, ctor, str(stride))}", f"padding={_expr_for(pad, ctor, str(pad))}"]
    if dil != 1:
        kwargs.append(f"dilation={_expr_for(dil, ctor, str(dil))}")
    if conv.bias is None:
        kwargs.append("bias=False")
    body = (f"self.{attr} = nn.Conv2d({', '.join(args + kwargs)})",)
    geometry = {"cin": cin, "cout": int(conv.out_channels), "r": r, "s": r, "stride": stride, "pad": pad,
                "dil": dil, "bias": int(conv.bias is not None), "pool_k": pool_k, "pool_s": pool_s, "n": n, "h": h,
                "w": w, "oh": oh, "ow": ow, "ph": ph, "pw": pw}
    spec = OpSpec(problem_id=str(problem.id), op=op, family="conv", input_shape=(n, cin, h, w),
                  out_shape=out_shape, row_dims=1, eps=0.0, keepdim=False,
                  init_signature=_render_signature(module.Model), init_body=body, weight=f"self.{attr}.weight",
                  bias=f"self.{attr}.bias" if conv.bias is not None else None, input_shapes=((n, cin, h, w),),
                  conv=tuple(geometry.items()))
    torch.manual_seed(0)
    _probe_conv(spec, _reference(module, init_inputs))
    return spec


_NORM_MODULES = {"batch": ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d"),
                 "instance": ("InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"), "group": ("GroupNorm",)}


def reduce_layout(shape: tuple[int, ...], dims: list[int], groups: int = 1) -> tuple[int, int, int, int]:
    """(R0, A, R, B): the input viewed as [R0, A, R, B] with R0 and R reduced and A, B kept, for a contiguous
    run of reduced dimensions (R0 = 1) or a run from dimension 0 and a later one (batch norm's (0, 2, ...) around
    the kept channels, a sum over (0, 2) or (0, 1, 3)); a group norm's
    groups split the first reduced dimension into kept groups and reduced channels."""
    runs = contiguous_runs(dims)
    if len(runs) == 2 and runs[0][0] == 0:
        (_, j), (p, q) = runs
        return (math.prod(shape[:j + 1]), math.prod(shape[j + 1:p]), math.prod(shape[p:q + 1]),
                math.prod(shape[q + 1:]))
    a, r, b = (math.prod(shape[:dims[0]]), math.prod(shape[dims[0]:dims[-1] + 1]), math.prod(shape[dims[-1] + 1:]))
    return (1, a * groups, r // groups, b)


def _describe_reduce(problem: Any, module: Any, init_inputs: list, inputs: list, op: str, params: dict) -> OpSpec:
    """A reduction over a run of dimensions, or x scaled by statistics of itself (softmax or log-softmax over any
    dimension, RMS/L1/L2/Frobenius norms, batch/instance/group norm with training-mode statistics). A norm
    module is rebuilt as the reference built it, so the same seed gives the same parameters and buffers."""
    import torch
    import torch.nn as nn

    loss = "body" in params  # an elementwise term of two inputs, reduced (a loss)
    if len(inputs) != (2 if loss else 1) or not all(isinstance(t, torch.Tensor) for t in inputs):
        raise Unsupported(f"{op}: expected {'two input tensors' if loss else 'one input tensor'}")
    x = inputs[0]
    if any(t.dtype != torch.float32 for t in inputs):
        raise Unsupported(f"{op}: input dtype is {x.dtype}; the generators write float32 kernels")
    user_shape = tuple(int(v) for v in x.shape)
    shape = tuple(int(v) for v in params["in_shape"])  # the reduced view of the input (a reshape of it)
    if math.prod(shape) != math.prod(user_shape):
        raise Unsupported(f"{op}: the traced input {params['in_shape']} is not a view of the input {user_shape}")
    kind, dims = params["kind"], list(params["dims"])
    torch.manual_seed(0)
    model = _reference(module, init_inputs)
    init_body: tuple[str, ...] = ()
    weight = bias = None
    groups = int(params.get("groups", 1)) if params.get("norm") == "group" else 1
    running: dict[str, Any] = {"running": "", "rc": 0}
    chan = (1, 1, 1)  # (CA, CR, CHW): the channel of an element is (a % CA) * CR + r / CHW
    r0, a, r, b = reduce_layout(shape, dims, groups)
    state = [*model.named_parameters(), *model.named_buffers()]
    if kind == "meanvar":
        norm = params["norm"]
        mods = [(n, m) for n, m in model.named_modules() if type(m).__name__ in _NORM_MODULES[norm]
                and type(m) is getattr(nn, type(m).__name__)]
        if state and (len(mods) != 1 or not mods[0][0] or "." in mods[0][0]):
            raise Unsupported(f"{norm} norm: expected its parameters in one torch.nn {norm} norm attribute")
        if mods:
            attr, m = mods[0]
            expected = {f"{attr}.{k}" for k, _ in [*m.named_parameters(), *m.named_buffers()]}
            if {k for k, _ in state} != expected:
                extra = sorted({k for k, _ in state} - expected)
                raise Unsupported(f"{norm} norm: the Model holds other tensors ({extra})")
            if norm == "group":
                args = f"{m.num_groups}, {m.num_channels}, eps={m.eps!r}, affine={m.affine}"
            else:
                args = (f"{m.num_features}, eps={m.eps!r}, momentum={m.momentum!r}, affine={m.affine}, "
                        f"track_running_stats={m.track_running_stats}")
            init_body = (f"self.{attr} = nn.{type(m).__name__}({args})",)
            if m.affine:
                weight, bias = f"self.{attr}.weight", f"self.{attr}.bias"
            if getattr(m, "track_running_stats", False):
                # in eval mode the module normalises with its running statistics, per channel
                running = {"running": f"self.{attr}", "rc": int(m.num_features)}
        elif params.get("affine"):
            raise Unsupported(f"{norm} norm: affine parameters outside a torch.nn norm module")
        if weight is not None:
            c = shape[1]
            chan = {"batch": (a, 1, r), "instance": (c, 1, r), "group": (groups, c // groups, r // (c // groups))}[norm]
    elif state:
        raise Unsupported(f"{op}: a {kind} reference with tensors ({', '.join(k for k, _ in state)})")
    if kind in ("argmax", "argmin") and r0 != 1:
        raise Unsupported(f"{op}: {kind} over a split run of dimensions")
    out_shape = user_shape
    if op == "reduce":
        try:
            with torch.device("meta"):
                got = model.to("meta")(*inputs)
            out_shape = tuple(int(v) for v in got.shape)
        except Exception as exc:  # noqa: BLE001
            raise Unsupported(f"{op}: the reference does not run on meta tensors") from exc
        if math.prod(out_shape) != a * b:
            raise Unsupported(f"{op}: the reference returns {out_shape}, not {a * b} reduced values")
    geom = {"r0": r0, "a": a, "r": r, "b": b, "kind": kind, "ca": chan[0], "cr": chan[1], "chw": chan[2],
            "affine": int(weight is not None)} | running
    if loss:
        geom |= {"pro": 1, "yn": int(inputs[1].numel()), "scale": float(params.get("scale", 1.0))}
    if "correction" in params:
        geom["corr"] = float(params["correction"])
    spec = OpSpec(problem_id=str(problem.id), op=op, family="reduce", input_shape=shape, out_shape=out_shape,
                  row_dims=1, eps=float(params.get("eps", 0.0)), keepdim=bool(params.get("keepdim", False)),
                  init_signature=_render_signature(module.Model), init_body=init_body, weight=weight, bias=bias,
                  args=("x", "y") if loss else ("x",),
                  input_shapes=(user_shape, *(tuple(int(v) for v in t.shape) for t in inputs[1:])),
                  conv=tuple(geom.items()),
                  body=str(params.get("body", "")))
    if not loss:  # a loss's term is the traced graph itself, not a guess the probe should confirm
        torch.manual_seed(0)
        _probe_reduce(spec, _reference(module, init_inputs), params)
    return spec


def reduce_semantics(x: Any, params: dict, weight: Any = None, bias: Any = None) -> Any:
    """What the reduce family computes, in torch, for an input of any shape of the same rank."""
    import torch
    import torch.nn.functional as F

    kind, dims = params["kind"], list(params["dims"])
    keep = bool(params.get("keepdim", False))
    if kind == "sum":
        return x.sum(dims, keepdim=keep)
    if kind == "mean":
        return x.mean(dims, keepdim=keep)
    if kind in ("max", "min"):
        return (x.amax if kind == "max" else x.amin)(dims, keepdim=keep)
    if kind in ("var", "std"):
        fn = torch.var if kind == "var" else torch.std
        return fn(x, dims, correction=params["correction"], keepdim=keep)
    if kind == "logsumexp":
        return torch.logsumexp(x, dims, keepdim=keep)
    if kind in ("norm1", "norm2"):
        return torch.linalg.vector_norm(x, int(kind[-1]), dims, keepdim=keep)
    if kind == "prod":
        return x.prod(dims[0], keepdim=keep) if len(dims) == 1 else x.flatten(dims[0], dims[-1]).prod(dims[0], keep)
    if kind in ("argmax", "argmin"):
        fn = torch.argmax if kind == "argmax" else torch.argmin
        return fn(x) if len(dims) == x.dim() and len(dims) > 1 else fn(x, dims[0], keepdim=keep)
    if kind in ("softmax", "log_softmax"):
        return (torch.softmax if kind == "softmax" else torch.log_softmax)(x, dims[0])
    if kind == "rms":
        return x / torch.sqrt((x * x).mean(dims, keepdim=True) + params["eps"])
    if kind in ("l1mean", "l1sum"):
        return x / (x.abs().mean(dims, keepdim=True) if kind == "l1mean" else x.abs().sum(dims, keepdim=True))
    if kind in ("l2", "linf"):
        order = 2 if kind == "l2" else math.inf
        return x / torch.linalg.vector_norm(x, order, dims, keepdim=True).clamp_min(params.get("eps", 0.0))
    norm, eps = params["norm"], params["eps"]
    if norm == "batch":
        return F.batch_norm(x, None, None, weight, bias, True, 0.0, eps)
    if norm == "instance":
        return F.instance_norm(x, None, None, weight, bias, True, 0.0, eps)
    return F.group_norm(x, params["groups"], weight, bias, eps)


def _probe_reduce(spec: OpSpec, model: Any, params: dict) -> None:
    """The reference on a small real input (its channels kept where a norm's parameters need them) must equal the
    reduce family's semantics."""
    import torch

    shape = spec.input_shape
    if shape != spec.input_shapes[0]:
        # the forward reshapes its input (sizes written in the forward): only the real shape can be probed
        if math.prod(shape) > 1 << 22:
            return  # the reduction is one ATen operation of the graph; nothing for a probe to disambiguate
        probe = shape
    else:
        keep_channels = params["kind"] == "meanvar"
        probe = tuple(s if (i == 1 and keep_channels) else min(s, 2 if i == 0 else 5 + i) for i, s in
                      enumerate(shape))
    if math.prod(probe) > 1 << 22:
        raise Unsupported(f"{spec.op}: even a small probe input {probe} is too large to check the reference")
    x = torch.randn(probe, generator=torch.Generator().manual_seed(1234)) * 2 + 0.5
    user = x.reshape(spec.input_shapes[0]) if probe == shape and shape != spec.input_shapes[0] else x
    with torch.no_grad():
        try:
            got = model(user.clone())
        except Exception as exc:  # noqa: BLE001
            raise Unsupported(f"{spec.op}: the reference fails on a probe input of shape {probe}") from exc
        want = reduce_semantics(x, params, _resolve(model, spec.weight), _resolve(model, spec.bias))
    if not isinstance(got, torch.Tensor) or got.numel() != want.numel() or got.dtype != want.dtype:
        raise Unsupported(f"{spec.op}: the reference does not compute the plain {params['kind']} on a probe input")
    got = got.reshape(want.shape)
    if not (torch.equal(got, want) if got.dtype == torch.int64 else
            torch.allclose(got, want, atol=1e-4, rtol=1e-4, equal_nan=True)):
        raise Unsupported(f"{spec.op}: the reference does not compute the plain {params['kind']} on a probe input")


def _describe_attn(problem: Any, module: Any, init_inputs: list, inputs: list, params: dict) -> OpSpec:
    """Scaled dot-product attention (recognise._attention): geometry bh (batch and head entries), lq, lk, d, dv,
    causal; the inputs named q, k, v in the reference's order."""
    import torch

    torch.manual_seed(0)
    model = _reference(module, init_inputs)
    if [*model.named_parameters(), *model.named_buffers()]:
        raise Unsupported("attention: the reference holds tensors")
    names = ["", "", ""]
    for role in ("q", "k", "v"):
        names[int(params[role])] = role
    qs = tuple(int(d) for d in inputs[int(params["q"])].shape)
    ks = tuple(int(d) for d in inputs[int(params["k"])].shape)
    vs = tuple(int(d) for d in inputs[int(params["v"])].shape)
    geom = {"bh": math.prod(qs[:-2]), "lq": qs[-2], "lk": ks[-2], "d": qs[-1], "dv": vs[-1],
            "causal": int(bool(params["causal"]))}
    shapes = {"q": qs, "k": ks, "v": vs}
    return OpSpec(problem_id=str(problem.id), op="attention", family="attn", input_shape=qs,
                  out_shape=qs[:-1] + vs[-1:], row_dims=1, eps=0.0, keepdim=False,
                  init_signature=_render_signature(module.Model), init_body=(), weight=None, bias=None,
                  args=tuple(names), input_shapes=tuple(shapes[n] for n in names), conv=tuple(geom.items()),
                  scale=float(params["scale"]))


def _describe_rowloss(problem: Any, module: Any, init_inputs: list, inputs: list, params: dict) -> OpSpec:
    """A loss over the rows of same-shaped inputs (recognise._row_loss): geometry rows, d (the row length), mean."""
    import torch

    torch.manual_seed(0)
    model = _reference(module, init_inputs)
    if [*model.named_parameters(), *model.named_buffers()]:
        raise Unsupported("row_loss: the reference holds tensors")
    shape = tuple(int(v) for v in inputs[0].shape)
    geom = {"rows": math.prod(shape[:-1]), "d": shape[-1], "mean": int(params["kind"] == "mean")}
    return OpSpec(problem_id=str(problem.id), op="row_loss", family="rowloss", input_shape=shape, out_shape=(),
                  row_dims=1, eps=0.0, keepdim=False, init_signature=_render_signature(module.Model), init_body=(),
                  weight=None, bias=None, args=tuple(f"x{i}" for i in range(len(inputs))),
                  input_shapes=(shape,) * len(inputs), conv=tuple(geom.items()), body=str(params["elem"]),
                  terms=tuple(params["terms"]), row_body=str(params["rows"]), row_out=str(params["out"]))


def _describe_xent(problem: Any, module: Any, init_inputs: list, inputs: list, params: dict) -> OpSpec:
    """Cross-entropy of scores x [N, C] against int64 targets t [N] (recognise._cross_entropy), averaged over the
    targets that are not ``ignore_index`` or summed: geometry n, c, mean (1 or 0), ignore."""
    import torch

    torch.manual_seed(0)
    model = _reference(module, init_inputs)
    if [*model.named_parameters(), *model.named_buffers()]:
        raise Unsupported("cross_entropy: the reference holds tensors")
    x, t = inputs
    n, c = (int(v) for v in x.shape)
    geom = {"n": n, "c": c, "mean": int(params["reduction"] == "mean"), "ignore": int(params["ignore_index"])}
    return OpSpec(problem_id=str(problem.id), op="cross_entropy", family="xent", input_shape=(n, c), out_shape=(),
                  row_dims=1, eps=0.0, keepdim=False, init_signature=_render_signature(module.Model), init_body=(),
                  weight=None, bias=None, args=("x", "t"), input_shapes=((n, c), (n,)), conv=tuple(geom.items()))


def _describe_scan(problem: Any, module: Any, init_inputs: list, inputs: list, params: dict) -> OpSpec:
    """A cumulative sum or product along one dimension, viewed as [A, L, B] (scanned along L)."""
    import torch

    masked = bool(params["masked"])
    if len(inputs) != (2 if masked else 1) or not all(isinstance(t, torch.Tensor) for t in inputs):
        raise Unsupported("scan: expected the input tensor" + (" and its mask" if masked else ""))
    x = inputs[0]
    if x.dtype != torch.float32 or (masked and inputs[1].dtype != torch.bool):
        raise Unsupported("scan: the generators take a float32 input (and a bool mask)")
    shape = tuple(int(v) for v in x.shape)
    torch.manual_seed(0)
    model = _reference(module, init_inputs)
    if [*model.named_parameters(), *model.named_buffers()]:
        raise Unsupported("scan: the reference holds tensors")
    dim = int(params["dim"])
    geom = {"a": math.prod(shape[:dim]), "l": shape[dim], "b": math.prod(shape[dim + 1:]),
            "kind": params["kind"], "reverse": int(params["reverse"]), "exclusive": int(params["exclusive"]),
            "masked": (2 if params.get("select") else 1) if masked else 0}
    spec = OpSpec(problem_id=str(problem.id), op="scan", family="scan", input_shape=shape, out_shape=shape,
                  row_dims=1, eps=0.0, keepdim=False, init_signature=_render_signature(module.Model), init_body=(),
                  weight=None, bias=None, args=("x", "mask") if masked else ("x",),
                  input_shapes=tuple(tuple(int(v) for v in t.shape) for t in inputs), conv=tuple(geom.items()))
    _probe_scan(spec, model, params)
    return spec


def scan_semantics(x: Any, params: dict, mask: Any = None) -> Any:
    import torch

    dim = int(params["dim"])
    fn = torch.cumsum if params["kind"] == "sum" else torch.cumprod
    if params["masked"]:
        x = torch.where(mask, x, 0.0) if params.get("select") else x * mask
    if params["reverse"]:
        return fn(x.flip(dim), dim).flip(dim)
    if params["exclusive"]:
        ident = torch.zeros_like(x.narrow(dim, 0, 1)) if params["kind"] == "sum" else torch.ones_like(
            x.narrow(dim, 0, 1))
        return torch.cat((ident, fn(x.narrow(dim, 0, x.shape[dim] - 1), dim)), dim)
    return fn(x, dim)


def _probe_scan(spec: OpSpec, model: Any, params: dict) -> None:
    import torch

    probe = tuple(min(s, 9 + i) for i, s in enumerate(spec.input_shape))
    gen = torch.Generator().manual_seed(1234)
    x = torch.rand(probe, generator=gen) + 0.5
    mask = torch.rand(probe, generator=gen) > 0.5
    args = (x, mask) if params["masked"] else (x,)
    with torch.no_grad():
        try:
            got = model(*[a.clone() for a in args])
        except Exception as exc:  # noqa: BLE001
            raise Unsupported(f"scan: the reference fails on a probe input of shape {probe}") from exc
        want = scan_semantics(x, params, mask)
    if not isinstance(got, torch.Tensor) or got.shape != want.shape or not torch.allclose(got, want, atol=1e-5,
                                                                                          rtol=1e-5):
        raise Unsupported("scan: the reference does not compute the plain cumulative "
                          f"{params['kind']} on a probe input")


_CONV_MODULES = ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d")


def _padded3(values: list, fill: int) -> list[int]:
    """Per-dimension values of a 1-D to 3-D window as three (leading dimensions of size one added)."""
    return [fill] * (3 - len(values)) + [int(v) for v in values]


def _describe_window(problem: Any, module: Any, init_inputs: list, inputs: list, op: str, params: dict) -> OpSpec:
    """A convolution (any of nn.Conv1d/2d/3d and nn.ConvTranspose1d/2d/3d: groups, dilation, asymmetric kernels,
    output padding) or a max/average pooling, as a window over a 3-D volume: 1-D and 2-D ones get leading
    dimensions of size one, so one kernel skeleton serves all. The kernel reads the graph's view of the input
    (1-D pooling traces as 2-D on an unsqueezed view) as flat memory, so the input and output shapes are the
    traced operation's and the forward only checks the reference's input shape."""
    import torch
    import torch.nn as nn

    if len(inputs) != 1 or not isinstance(inputs[0], torch.Tensor):
        raise Unsupported(f"{op}: expected one input tensor")
    x = inputs[0]
    if x.dtype != torch.float32:
        raise Unsupported(f"{op}: input dtype is {x.dtype}; the generators write float32 kernels")
    in_shape, out_shape = tuple(params["in_shape"]), tuple(params["out_shape"])
    if math.prod(in_shape) != x.numel():
        raise Unsupported(f"{op}: the traced operation reads {in_shape}, not a reshaped view of the input")
    torch.manual_seed(0)
    model = _reference(module, init_inputs)
    nd = len(in_shape) - 2
    n, cin = in_shape[:2]
    cout = out_shape[1]
    geom = {"nd": nd, "n": n, "cin": cin, "cout": cout, "groups": 1, "transposed": 0, "bias": 0, "pool": 0,
            "cip": 1, "div": 0}
    for axis, (i, o, k, s_, p_, d) in enumerate(zip(_padded3(list(in_shape[2:]), 1), _padded3(list(out_shape[2:]), 1),
                                                    _padded3(params["kernel"], 1), _padded3(params["stride"], 1),
                                                    _padded3(params["padding"], 0), _padded3(params["dilation"], 1),
                                                    strict=True)):
        geom |= {f"i{axis}": i, f"o{axis}": o, f"k{axis}": k, f"s{axis}": s_, f"p{axis}": p_, f"d{axis}": d}
    init_body: tuple[str, ...] = ()
    weight = bias = None
    if op == "conv":
        convs = [(name, m) for name, m in model.named_modules() if type(m).__name__ in _CONV_MODULES
                 and type(m) is getattr(nn, type(m).__name__)]
        if len(convs) != 1 or not convs[0][0] or "." in convs[0][0]:
            raise Unsupported("conv: expected exactly one torch.nn convolution attribute on the Model")
        attr, conv = convs[0]
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise Unsupported(f"conv: padding={conv.padding!r}, padding_mode={conv.padding_mode!r}; only numeric "
                              "zero padding is generated")
        named = dict(model.named_parameters())
        expected = {f"{attr}.weight"} | ({f"{attr}.bias"} if conv.bias is not None else set())
        if set(named) != expected or dict(model.named_buffers()):
            extra = sorted(set(named) - expected)
            raise Unsupported(f"conv: the Model holds tensors besides its convolution's ({extra})")
        geom |= {"groups": int(conv.groups), "transposed": int(bool(conv.transposed)),
                 "bias": int(conv.bias is not None)}
        if cin != conv.in_channels or cout != conv.out_channels or cin % conv.groups or cout % conv.groups:
            raise Unsupported(f"conv: channels {cin}->{cout} do not fit the module's {conv.in_channels}->"
                              f"{conv.out_channels} in {conv.groups} groups")
        kwargs = [f"kernel_size={tuple(conv.kernel_size)!r}", f"stride={tuple(conv.stride)!r}",
                  f"padding={tuple(conv.padding)!r}", f"dilation={tuple(conv.dilation)!r}",
                  f"groups={conv.groups}", f"bias={conv.bias is not None}"]
        if conv.transposed:
            kwargs.insert(3, f"output_padding={tuple(conv.output_padding)!r}")
        init_body = (f"self.{attr} = nn.{type(conv).__name__}({conv.in_channels}, {conv.out_channels}, "
                     + ", ".join(kwargs) + ")",)
        weight = f"self.{attr}.weight"
        bias = f"self.{attr}.bias" if conv.bias is not None else None
    else:
        state = [*model.named_parameters(), *model.named_buffers()]
        if state:
            raise Unsupported(f"pool: the reference holds tensors ({', '.join(k for k, _ in state)})")
        if cin != cout:
            raise Unsupported(f"pool: {cin} channels in, {cout} out")
        divisor = params.get("divisor_override")
        geom |= {"pool": 1 if params["kind"] == "max" else 2, "cip": int(bool(params.get("count_include_pad", True))),
                 "div": int(divisor or 0)}
    if geom["cout"] // max(geom["groups"], 1) > 65535 * 8 or n > 1 << 20:
        raise Unsupported(f"{op}: {cout} output channels of {n} images exceed the launch grid")
    user_out = out_shape
    if op == "pool":  # no parameters, so the reference runs on meta tensors: its own output shape (1-D: squeezed)
        try:
            with torch.device("meta"):
                got = model.to("meta")(x)
            user_out = tuple(int(v) for v in got.shape)
        except Exception as exc:  # noqa: BLE001
            raise Unsupported("pool: the reference does not run on meta tensors") from exc
        if math.prod(user_out) != math.prod(out_shape):
            raise Unsupported(f"pool: the reference returns {user_out}, not a view of the pooled {out_shape}")
    spec = OpSpec(problem_id=str(problem.id), op=op, family="window", input_shape=in_shape, out_shape=user_out,
                  row_dims=1, eps=0.0, keepdim=False, init_signature=_render_signature(module.Model),
                  init_body=init_body, weight=weight, bias=bias, input_shapes=(tuple(int(v) for v in x.shape),),
                  conv=tuple(geom.items()))
    torch.manual_seed(0)
    _probe_window(spec, _reference(module, init_inputs), params)
    return spec


def window_semantics(spec: OpSpec, x: Any, weight: Any, bias: Any, params: dict) -> Any:
    """What the window kernels compute, in torch (on the traced view's rank)."""
    import torch.nn.functional as F

    g, nd = spec.geometry, len(params["kernel"])
    if spec.op == "conv":
        stride, pad, dil = params["stride"], params["padding"], params["dilation"]
        if g["transposed"]:
            fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[nd - 1]
            return fn(x, weight, bias, stride, pad, params["output_padding"], g["groups"], dil)
        return (F.conv1d, F.conv2d, F.conv3d)[nd - 1](x, weight, bias, stride, pad, dil, g["groups"])
    if params["kind"] == "max":
        fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[nd - 1]
        return fn(x, params["kernel"], params["stride"], params["padding"], params["dilation"], params["ceil_mode"])
    fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[nd - 1]
    if nd == 1:
        return fn(x, params["kernel"], params["stride"], params["padding"], params["ceil_mode"],
                  params["count_include_pad"])
    return fn(x, params["kernel"], params["stride"], params["padding"], params["ceil_mode"],
              params["count_include_pad"], params.get("divisor_override"))


def _probe_window(spec: OpSpec, model: Any, params: dict) -> None:
    """The reference on a small real input (its own channels, a few images, short spatial extents that still hold
    several windows) must equal the window op with its weights."""
    import torch

    g = spec.geometry
    spatial = []
    for axis in range(3 - (len(spec.input_shape) - 2), 3):
        reach = (g[f"k{axis}"] - 1) * g[f"d{axis}"] + 1
        spatial.append(min(g[f"i{axis}"], max(reach - 2 * g[f"p{axis}"], 1) + 3 * g[f"s{axis}"]))
    probe_in = (min(spec.input_shape[0], 2), spec.input_shape[1], *spatial)
    if math.prod(probe_in) > 1 << 22:
        raise Unsupported(f"{spec.op}: even a small probe input {probe_in} is too large to check the reference")
    user_shape = spec.input_shapes[0]
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(probe_in, generator=gen)
    # the reference takes its own rank (1-D pooling: the view is unsqueezed inside the forward)
    ref_in = x.reshape(probe_in[:2] + probe_in[len(probe_in) - (len(user_shape) - 2):]) \
        if len(user_shape) != len(probe_in) else x
    with torch.no_grad():
        try:
            got = model(ref_in.clone())
        except Exception as exc:  # noqa: BLE001
            raise Unsupported(f"{spec.op}: the reference fails on a probe input of shape {tuple(ref_in.shape)}") \
                from exc
        want = window_semantics(spec, x, _resolve(model, spec.weight), _resolve(model, spec.bias), params)
    if not isinstance(got, torch.Tensor) or got.numel() != want.numel() or not torch.allclose(
            got.reshape(want.shape), want, atol=1e-4, rtol=1e-4):
        raise Unsupported(f"{spec.op}: the reference does not compute the plain {spec.op} on a probe input")


def _probe_conv(spec: OpSpec, model: Any) -> None:
    """The reference on a small real input must equal F.conv2d (then ReLU and max pooling) with its weights."""
    import torch
    import torch.nn.functional as F

    g = spec.geometry
    size = max(g["dil"] * (g["r"] - 1) + 1 - 2 * g["pad"], 1) + g["stride"] * 4
    if g["pool_k"]:
        size += g["stride"] * (g["pool_k"] + g["pool_s"])
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(2, g["cin"], size, size + 1, generator=gen)
    weight, bias = _resolve(model, spec.weight), _resolve(model, spec.bias)
    with torch.no_grad():
        try:
            got = model(x.clone())
        except Exception as exc:  # noqa: BLE001
            raise Unsupported(f"{spec.op}: the reference fails on a probe input of shape {tuple(x.shape)}") from exc
        want = F.conv2d(x, weight, bias, g["stride"], g["pad"], g["dil"])
        if g["pool_k"]:
            want = F.max_pool2d(torch.relu(want), g["pool_k"], g["pool_s"])
    if not isinstance(got, torch.Tensor) or got.shape != want.shape or not torch.allclose(got, want, atol=1e-4,
                                                                                          rtol=1e-4):
        raise Unsupported(f"{spec.op}: the reference does not compute the plain {spec.op} on a probe input")


def _probe_matmul(model: Any) -> None:
    """The reference on small odd-sized operands must equal A @ B (not A.T @ B, not A @ B + 1, ...)."""
    import torch

    gen = torch.Generator().manual_seed(1234)
    a = torch.randn(5, 7, generator=gen)
    b = torch.randn(7, 3, generator=gen)
    with torch.no_grad():
        try:
            got = model(a.clone(), b.clone())
        except Exception as exc:  # noqa: BLE001
            raise Unsupported("matmul: the reference fails on probe operands of shapes (5, 7) and (7, 3)") from exc
    if not isinstance(got, torch.Tensor) or got.shape != (5, 3) or not torch.allclose(got, a @ b, atol=1e-5,
                                                                                      rtol=1e-5):
        raise Unsupported("matmul: the reference does not compute a plain A @ B on probe operands")


# ------------------------------------------------------------------------------------------------ parameters


def _ctor_bindings(model_cls: type, init_inputs: list) -> dict[str, Any]:
    """Constructor argument name -> value passed by get_init_inputs(), to refer to them by name in ModelNew."""
    try:
        sig = inspect.signature(model_cls.__init__)
        bound = sig.bind(None, *init_inputs)
    except (TypeError, ValueError):
        return {}
    bound.apply_defaults()
    out = dict(bound.arguments)
    out.pop(next(iter(sig.parameters)), None)  # self
    return out


def _expr_for(value: Any, ctor: dict[str, Any], literal: str) -> str:
    """A constructor argument's name when it carries exactly ``value``, else the literal."""
    for name, given in ctor.items():
        if type(given) is type(value) and given == value:
            return name
        if isinstance(given, list | tuple) and isinstance(value, tuple) and tuple(given) == value:
            return f"tuple({name})"
    return literal


def _layernorm_mirror(model: Any, named: dict, shape: tuple[int, ...], ctor: dict[str, Any]):
    import torch.nn as nn

    lns = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.LayerNorm)]
    if len(lns) != 1 or "." in lns[0][0] or not lns[0][0]:
        raise Unsupported("layernorm: expected exactly one nn.LayerNorm attribute on the Model")
    attr, ln = lns[0]
    norm_shape = tuple(int(s) for s in ln.normalized_shape)
    if tuple(shape[len(shape) - len(norm_shape):]) != norm_shape:
        raise Unsupported(f"layernorm: normalized_shape {norm_shape} does not match the input's trailing dims")
    expected = {f"{attr}.weight", f"{attr}.bias"} if ln.elementwise_affine else set()
    if ln.elementwise_affine and ln.bias is None:
        raise Unsupported("layernorm: an affine LayerNorm without bias is not generated")
    if set(named) != expected:
        raise Unsupported(f"layernorm: unexpected parameters {sorted(set(named) - expected)}")
    if ln.elementwise_affine and not (bool((ln.weight == 1).all()) and bool((ln.bias == 0).all())):
        raise Unsupported("layernorm: weight/bias are not LayerNorm's default init (ones/zeros)")
    shape_expr = _expr_for(norm_shape, ctor, repr(norm_shape))
    body = [f"self.{attr} = nn.LayerNorm({shape_expr}, eps={float(ln.eps)!r}, "
            f"elementwise_affine={bool(ln.elementwise_affine)})"]
    if ln.elementwise_affine:
        return len(norm_shape), float(ln.eps), body, f"self.{attr}.weight", f"self.{attr}.bias"
    return len(norm_shape), float(ln.eps), body, None, None


def _rmsnorm_mirror(model: Any, named: dict, shape: tuple[int, ...], params: dict, ctor: dict[str, Any]):
    import torch

    n = shape[-1]
    rms_modules = [(name, m) for name, m in model.named_modules() if type(m).__name__ == "RMSNorm"]
    if rms_modules:
        attr, mod = rms_modules[0]
        norm_shape = tuple(int(s) for s in mod.normalized_shape)
        if len(rms_modules) != 1 or "." in attr or norm_shape != (n,):
            raise Unsupported("rmsnorm: only one nn.RMSNorm over the last dim is generated")
        eps = mod.eps if mod.eps is not None else float(torch.finfo(torch.float32).eps)
        affine = mod.weight is not None
        if affine and not bool((mod.weight == 1).all()):
            raise Unsupported("rmsnorm: weight is not initialised to ones")
        body = [f"self.{attr} = nn.RMSNorm({_expr_for((n,), ctor, repr((n,)))}, eps={mod.eps!r}, "
                f"elementwise_affine={affine})"]
        return float(eps), body, (f"self.{attr}.weight" if affine else None)
    eps = params.get("eps")
    if not isinstance(eps, int | float) or isinstance(eps, bool):
        eps = getattr(model, "eps", None)
    if not isinstance(eps, int | float) or isinstance(eps, bool):
        raise Unsupported("rmsnorm: eps is not known statically (no params['eps'], no float self.eps)")
    if not named:
        return float(eps), [], None
    if len(named) != 1:
        raise Unsupported(f"rmsnorm: expected at most one weight parameter, found {sorted(named)}")
    (name, p), = named.items()
    if "." in name or tuple(p.shape) != (n,):
        raise Unsupported(f"rmsnorm: parameter {name} of shape {tuple(p.shape)} is not a ({n},) weight")
    if bool((p == 1).all()):
        fill = "ones"
    elif bool((p == 0).all()):
        fill = "zeros"
    else:
        raise Unsupported("rmsnorm: weight init is neither ones nor zeros, so ModelNew cannot reproduce it")
    body = []
    model_eps = getattr(model, "eps", None)
    if isinstance(model_eps, float):
        body.append(f"self.eps = {_expr_for(model_eps, ctor, repr(model_eps))}")
    body.append(f"self.{name} = nn.Parameter(torch.{fill}({_expr_for(n, ctor, str(n))}))")
    return float(eps), body, f"self.{name}"


def _render_signature(model_cls: type) -> str:
    """ModelNew.__init__'s parameter list: the reference's names, kinds and (literal) defaults, no annotations."""
    params = list(inspect.signature(model_cls.__init__).parameters.values())
    parts: list[str] = []
    star_done = False
    for i, p in enumerate(params):
        if p.kind is p.VAR_POSITIONAL:
            parts.append(f"*{p.name}")
            star_done = True
            continue
        if p.kind is p.VAR_KEYWORD:
            parts.append(f"**{p.name}")
            continue
        if p.kind is p.KEYWORD_ONLY and not star_done:
            parts.append("*")
            star_done = True
        text = p.name
        if p.default is not p.empty:
            default = repr(p.default)
            try:
                ast.literal_eval(default)
            except (ValueError, SyntaxError):
                default = "None"  # ModelNew never reads it: shapes were fixed when the file was generated
            text += f"={default}"
        parts.append(text)
        if p.kind is p.POSITIONAL_ONLY and (i + 1 == len(params) or params[i + 1].kind is not p.POSITIONAL_ONLY):
            parts.append("/")
    return "(" + ", ".join(parts) + ")"


# ------------------------------------------------------------------------------------------------ semantics


def _out_shape(module: Any, init_inputs: list, x: Any, op: str, shape: tuple[int, ...],
               keepdim: bool) -> tuple[int, ...]:
    import torch

    if op == "sum_lastdim":
        expected = shape[:-1] + ((1,) if keepdim else ())
    else:
        expected = shape
    try:
        with torch.device("meta"):
            out = _reference(module, init_inputs)(x)
    except Exception:  # noqa: BLE001 - some references do not run on meta; the probe still checks semantics
        return expected
    got = tuple(int(s) for s in out.shape) if isinstance(out, torch.Tensor) else None
    if got != expected:
        raise Unsupported(f"the reference's output shape {got} is not the {op} shape {expected}")
    return expected


def semantics(spec: OpSpec, x: Any, weight: Any = None, bias: Any = None) -> Any:
    """What the generated kernels compute, in torch: the yardstick the probe holds the reference to."""
    import torch
    import torch.nn.functional as F

    op = spec.op
    if op == "relu":
        return torch.relu(x)
    if op == "gelu":
        return F.gelu(x)
    if op == "softmax":
        return torch.softmax(x * spec.scale if spec.scale else x, dim=-1)
    if op == "log_softmax":
        return torch.log_softmax(x, dim=-1)
    if op == "sum_lastdim":
        return torch.sum(x, dim=-1, keepdim=spec.keepdim)
    if op == "layernorm":
        return F.layer_norm(x, x.shape[x.dim() - spec.row_dims:], weight, bias, spec.eps)
    if op == "rmsnorm":
        y = x * torch.rsqrt(torch.mean(x * x, dim=-1, keepdim=True) + spec.eps)
        return y * weight if weight is not None else y
    raise Unsupported(f"no semantics for op {op!r}")


def _probe(spec: OpSpec, model: Any) -> None:
    """Run the reference on a small real input and compare with :func:`semantics`; Unsupported on mismatch."""
    import torch

    tail = spec.input_shape[len(spec.input_shape) - spec.row_dims:]
    if spec.family == "elementwise":
        probe_shape = (3,) * (len(spec.input_shape) - 1) + (5,)
    elif spec.op in ("layernorm", "rmsnorm"):
        probe_shape = (2,) * (len(spec.input_shape) - spec.row_dims) + tuple(tail)
    else:
        probe_shape = tuple(2 + i for i in range(len(spec.input_shape) - 1)) + (7,)
    if math.prod(probe_shape) > 1 << 24:
        return  # too big to probe cheaply; the op tag and parameter checks above stand
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(probe_shape, generator=gen) * 2 + 0.25
    weight = _resolve(model, spec.weight)
    bias = _resolve(model, spec.bias)
    with torch.no_grad():
        try:
            got = model(x.clone())
        except Exception as exc:  # noqa: BLE001
            raise Unsupported(f"the reference fails on a probe input of shape {probe_shape}") from exc
        want = semantics(spec, x, weight, bias)
    if not isinstance(got, torch.Tensor) or got.shape != want.shape or not torch.allclose(got, want, atol=1e-5,
                                                                                          rtol=1e-5):
        raise Unsupported(f"the reference does not compute a plain {spec.op} on a probe input")


def _reference(module: Any, init_inputs: list) -> Any:
    """The reference Model as recognition traced it: as constructed, or in eval mode (the evaluator's) where the
    trace was taken so because the forward draws random numbers when training (a dropout, the identity in eval
    mode, so that a probe of a training-mode forward would compare against noise)."""
    model = module.Model(*init_inputs)
    return model.eval() if getattr(module, EVAL_MODE_ATTR, False) else model


def _resolve(model: Any, expr: str | None) -> Any:
    if expr is None:
        return None
    obj = model
    for part in expr.split(".")[1:]:  # drop "self"
        obj = getattr(obj, part)
    return obj.detach()
