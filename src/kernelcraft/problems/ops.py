"""Operation tags for problems: which single, well-known op a reference computes.

Code generators (the offline proposer's templates, prompt hints, speed-of-light estimates) need to know *what*
a problem computes, not just its shapes. Built-in problems say so in their ``KERNELCRAFT`` metadata; external
KernelBench files do not, so :func:`detect_op` reads the source's syntax tree -- never imports it, because
problem discovery runs at Snakemake DAG-build time and must not pay for importing torch.

The detector is deliberately strict. A tag is a promise to a code generator ("this forward is exactly a
softmax over the last dimension"), so it only answers when the whole forward is one recognised op applied
directly to the inputs, with any dimension argument provably the last one; everything else is ``None`` (the
problem is still searched, just without op-specific help).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Any

OPS: tuple[str, ...] = (
    "relu",
    "gelu",
    "softmax",
    "log_softmax",
    "layernorm",
    "rmsnorm",
    "sum_lastdim",
    "matmul",
    "conv2d",
    "conv2d_relu_maxpool",
)

FAMILIES: dict[str, str] = {
    "relu": "elementwise",
    "gelu": "elementwise",
    "pointwise": "elementwise",  # graph-only: a chain of elementwise ops (problems/recognise.py), not a source tag
    "softmax": "rowwise",
    "log_softmax": "rowwise",
    "layernorm": "rowwise",
    "rmsnorm": "rowwise",
    "sum_lastdim": "rowwise",
    "matmul": "matmul",
    "conv2d": "conv",
    "conv2d_relu_maxpool": "conv",
    "conv": "window",  # graph-only: any N-d, grouped, dilated or transposed convolution the conv family does not take
    "pool": "window",  # graph-only: N-d max or average pooling
    "reduce": "reduce",  # graph-only: sum/mean/max/min/prod/argmax/argmin over any run of dimensions
    "normalize": "reduce",  # graph-only: x scaled by statistics of itself over dimensions (softmax, norms)
    "scan": "scan",  # graph-only: cumulative sum or product along a dimension (reversed, exclusive, masked)
    "cross_entropy": "xent",  # graph-only: log-softmax over classes and the target's negative log-likelihood
    "attention": "attn",  # graph-only: scaled dot-product attention, causal or not
    "row_loss": "rowloss",  # graph-only: sums and norms over rows of elementwise values, combined, then averaged
}


def op_family(op: str | None) -> str | None:
    """The kernel family of an op tag ("elementwise", "rowwise", "matmul", "conv", "window"); None for None or an
    unknown tag.

    Families group ops that share a kernel skeleton (one thread per element, one block per row, tiled GEMM,
    ...).
    """
    if op is None:
        return None
    return FAMILIES.get(op)


@dataclass(frozen=True)
class OpMatch:
    """A recognised forward: its tag and the parameters a code generator needs beyond shapes."""

    op: str
    params: dict[str, Any] = field(default_factory=dict, compare=True, hash=False)


def detect_op(source: str) -> str | None:
    """The op tag of a KernelBench-format source when its forward is a single recognised op, else None."""
    match = match_op(source)
    return match.op if match else None


def match_op(source: str) -> OpMatch | None:
    """Like :func:`detect_op`, plus the op's parameters (dim, eps, stride, ...), resolved statically.

    Parameters that cannot be resolved from the source (computed at run time, say) are left out of ``params``.
    Unparsable source, or source without ``class Model``, gives None.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    ctx = _Context.from_tree(tree)
    if ctx is None:
        return None
    result = ctx.forward_ir()
    if result is None:
        return None
    return _classify(result, ctx)


# ------------------------------------------------------------------------------------------------------------
# A tiny intermediate representation of the forward's return value.


class _Unknown:
    """Anything the detector does not model; it matches no pattern."""

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN = _Unknown()


@dataclass
class _Param:
    """A forward argument (index = its position among the forward's inputs)."""

    name: str
    index: int


@dataclass
class _Value:
    """A value known statically (a number, a tuple of numbers, a string)."""

    value: Any


@dataclass
class _SelfAttr:
    """A module attribute without a static value (an nn.Parameter, a buffer)."""

    name: str


@dataclass
class _Op:
    name: str
    inputs: tuple
    attrs: dict[str, Any]


@dataclass
class _Bin:
    op: str  # "+", "-", "*", "/"
    left: Any
    right: Any


# Canonical op name for torch functions (after resolving import aliases) ...
_FUNCTIONS: dict[str, str] = {
    "torch.relu": "relu",
    "torch.nn.functional.relu": "relu",
    "torch.nn.functional.gelu": "gelu",
    "torch.softmax": "softmax",
    "torch.nn.functional.softmax": "softmax",
    "torch.special.softmax": "softmax",
    "torch.log_softmax": "log_softmax",
    "torch.nn.functional.log_softmax": "log_softmax",
    "torch.special.log_softmax": "log_softmax",
    "torch.sum": "sum",
    "torch.mean": "mean",
    "torch.sqrt": "sqrt",
    "torch.rsqrt": "rsqrt",
    "torch.square": "square",
    "torch.pow": "pow",
    "torch.matmul": "matmul",
    "torch.mm": "mm",
    "torch.layer_norm": "layer_norm",
    "torch.nn.functional.layer_norm": "layer_norm",
    "torch.rms_norm": "rms_norm",
    "torch.nn.functional.rms_norm": "rms_norm",
    "torch.conv2d": "conv2d",
    "torch.nn.functional.conv2d": "conv2d",
    "torch.max_pool2d": "max_pool2d",
    "torch.nn.functional.max_pool2d": "max_pool2d",
}
# ... for tensor methods (x.softmax(dim=-1), x.pow(2).mean(-1, keepdim=True), A.matmul(B)) ...
_METHODS: dict[str, str] = {
    name: name for name in ("relu", "softmax", "log_softmax", "sum", "mean", "sqrt", "rsqrt", "square", "pow",
                            "matmul", "mm")
}
# ... and for nn modules built in __init__ and called in forward.
_MODULES: dict[str, str] = {
    "torch.nn.ReLU": "relu",
    "torch.nn.GELU": "gelu",
    "torch.nn.Softmax": "softmax",
    "torch.nn.LogSoftmax": "log_softmax",
    "torch.nn.LayerNorm": "layer_norm",
    "torch.nn.RMSNorm": "rms_norm",
    "torch.nn.Conv2d": "conv2d",
    "torch.nn.MaxPool2d": "max_pool2d",
}

# Functional signatures: (number of leading tensor arguments, names of the positional arguments after them).
_SIGNATURES: dict[str, tuple[int, tuple[str, ...]]] = {
    "relu": (1, ("inplace",)),
    "gelu": (1, ("approximate",)),
    "softmax": (1, ("dim",)),
    "log_softmax": (1, ("dim",)),
    "sum": (1, ("dim", "keepdim")),
    "mean": (1, ("dim", "keepdim")),
    "sqrt": (1, ()),
    "rsqrt": (1, ()),
    "square": (1, ()),
    "pow": (1, ("exponent",)),
    "matmul": (2, ()),
    "mm": (2, ()),
    "layer_norm": (1, ("normalized_shape", "weight", "bias", "eps")),
    "rms_norm": (1, ("normalized_shape", "weight", "eps")),
    "conv2d": (1, ("weight", "bias", "stride", "padding", "dilation", "groups")),
    "max_pool2d": (1, ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")),
}
# nn module constructor signatures (positional argument names).
_CTOR_SIGNATURES: dict[str, tuple[str, ...]] = {
    "relu": ("inplace",),
    "gelu": ("approximate",),
    "softmax": ("dim",),
    "log_softmax": ("dim",),
    "layer_norm": ("normalized_shape", "eps", "elementwise_affine", "bias"),
    "rms_norm": ("normalized_shape", "eps", "elementwise_affine"),
    "conv2d": ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
               "bias", "padding_mode"),
    "max_pool2d": ("kernel_size", "stride", "padding", "dilation", "return_indices", "ceil_mode"),
}
_TENSOR_KWARGS = ("input", "other")

# Factories whose arguments give the shape (hence the rank) of an input in get_inputs().
_SHAPE_FACTORIES = {"torch.randn", "torch.rand", "torch.zeros", "torch.ones", "torch.empty"}
_SHAPE_PRESERVING_METHODS = {"cuda", "cpu", "to", "float", "double", "half", "bfloat16", "contiguous"}


@dataclass
class _ModuleRecord:
    """An nn module assigned to ``self.<name>`` in __init__, with its constructor arguments resolved."""

    op: str
    attrs: dict[str, Any]


class _Context:
    """Static facts about one source: import aliases, module constants, __init__ attributes, input ranks."""

    def __init__(self, tree: ast.Module, model: ast.ClassDef) -> None:
        self.tree = tree
        self.model = model
        self.aliases = _import_aliases(tree)
        self._module_assigns = _module_assigns(tree)
        self._module_cache: dict[str, Any] = {}
        self._resolving: set[str] = set()
        self.functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
        methods = {n.name: n for n in model.body if isinstance(n, ast.FunctionDef)}
        self.forward = methods.get("forward")
        self.init = methods.get("__init__")
        self.self_attrs: dict[str, Any] = self._init_attrs()

    @classmethod
    def from_tree(cls, tree: ast.Module) -> _Context | None:
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name == "Model":
                return cls(tree, node)
        return None

    # ---- static values -------------------------------------------------------------------------------------

    def module_value(self, name: str) -> Any:
        """The value of a module-level constant such as ``batch_size = 16 * 2``, or UNKNOWN."""
        if name in self._module_cache:
            return self._module_cache[name]
        node = self._module_assigns.get(name)
        if node is None or name in self._resolving:
            return UNKNOWN
        self._resolving.add(name)
        try:
            value = self.static(node, {})
        finally:
            self._resolving.discard(name)
        self._module_cache[name] = value
        return value

    def static(self, node: ast.expr | None, scope: dict[str, Any]) -> Any:
        """Evaluate a constant expression over literals, names in ``scope`` and module constants; else
        UNKNOWN."""
        if node is None:
            return UNKNOWN
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            if node.id in scope:
                return scope[node.id]
            return self.module_value(node.id)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            value = getattr(self, "self_attrs", {}).get(node.attr, UNKNOWN)
            return value if not isinstance(value, _ModuleRecord | _SelfAttr) else UNKNOWN
        if isinstance(node, ast.Tuple | ast.List):
            items = [self.static(e, scope) for e in node.elts]
            return UNKNOWN if any(i is UNKNOWN for i in items) else tuple(items)
        if isinstance(node, ast.UnaryOp):
            operand = self.static(node.operand, scope)
            if isinstance(operand, int | float) and not isinstance(operand, bool):
                if isinstance(node.op, ast.USub):
                    return -operand
                if isinstance(node.op, ast.UAdd):
                    return operand
            return UNKNOWN
        if isinstance(node, ast.BinOp):
            return _arith(node.op, self.static(node.left, scope), self.static(node.right, scope))
        return UNKNOWN

    # ---- __init__ ------------------------------------------------------------------------------------------

    def _init_scope(self) -> dict[str, Any]:
        """__init__'s parameters bound to what get_init_inputs() returns (or their defaults)."""
        if self.init is None:
            return {}
        args = self.init.args
        params = [a.arg for a in args.posonlyargs + args.args][1:]  # drop self
        defaults = dict(zip(params[len(params) - len(args.defaults):], args.defaults, strict=True))
        given = self._init_inputs()
        scope: dict[str, Any] = {}
        for i, name in enumerate(params):
            if given is UNKNOWN:
                scope[name] = UNKNOWN
            elif i < len(given):
                scope[name] = given[i]
            elif name in defaults:
                scope[name] = self.static(defaults[name], {})
            else:
                scope[name] = UNKNOWN
        return scope

    def _init_inputs(self) -> Any:
        """The statically known list get_init_inputs() returns (elements may be UNKNOWN), or UNKNOWN."""
        fn = self.functions.get("get_init_inputs")
        ret = _single_return(fn)
        if not isinstance(ret, ast.List | ast.Tuple):
            return UNKNOWN
        if any(isinstance(e, ast.Starred) for e in ret.elts):
            return UNKNOWN
        return [self.static(e, {}) for e in ret.elts]

    def _init_attrs(self) -> dict[str, Any]:
        """What __init__ stores on self: nn modules we model, static values, or opaque attributes."""
        attrs: dict[str, Any] = {}
        if self.init is None:
            return attrs
        scope = self._init_scope()
        for stmt in self.init.body:
            if not isinstance(stmt, ast.Assign | ast.AnnAssign) or stmt.value is None:
                continue
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            for target in targets:
                if (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
                        and target.value.id == "self"):
                    attrs[target.attr] = self._init_value(stmt.value, scope, target.attr)
        return attrs

    def _init_value(self, node: ast.expr, scope: dict[str, Any], name: str) -> Any:
        if isinstance(node, ast.Call):
            op = _MODULES.get(self.dotted(node.func) or "")
            if op is not None:
                if _has_unpacking(node):
                    return _SelfAttr(name)
                attrs = {key: self.static(arg, scope) for key, arg in zip(_CTOR_SIGNATURES[op], node.args,
                                                                          strict=False)}
                attrs.update({k.arg: self.static(k.value, scope) for k in node.keywords if k.arg})
                return _ModuleRecord(op, attrs)
            return _SelfAttr(name)
        value = self.static(node, scope)
        return _SelfAttr(name) if value is UNKNOWN else value

    # ---- names ---------------------------------------------------------------------------------------------

    def dotted(self, node: ast.expr) -> str | None:
        """``F.gelu`` -> ``torch.nn.functional.gelu`` through the file's imports; None for non-module
        names."""
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name) or node.id not in self.aliases:
            return None
        parts.append(self.aliases[node.id])
        return ".".join(reversed(parts))

    # ---- inputs --------------------------------------------------------------------------------------------

    def input_ranks(self) -> list[int | None]:
        """The rank of each tensor get_inputs() returns, where the factory call shows it (None where not)."""
        fn = self.functions.get("get_inputs")
        ret = _single_return(fn)
        if fn is None or not isinstance(ret, ast.List | ast.Tuple):
            return []
        local: dict[str, ast.expr] = {}
        for stmt in fn.body:
            if _is_name_assign(stmt):
                local[stmt.targets[0].id] = stmt.value
        ranks: list[int | None] = []
        for elt in ret.elts:
            if isinstance(elt, ast.Name) and elt.id in local:
                elt = local[elt.id]
            ranks.append(self._rank_of(elt))
        return ranks

    def _rank_of(self, node: ast.expr) -> int | None:
        while (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
               and node.func.attr in _SHAPE_PRESERVING_METHODS and self.dotted(node.func) is None):
            node = node.func.value
        if not isinstance(node, ast.Call):
            return None
        name = self.dotted(node.func)
        if name == "torch.randint":
            return _shape_len(self.static(_size_arg(node, -1), {}))
        if name == "torch.full":
            return _shape_len(self.static(_size_arg(node, 0), {}))
        if name not in _SHAPE_FACTORIES:
            return None
        if len(node.args) == 1 and not isinstance(node.args[0], ast.Starred):
            return _shape_len(self.static(node.args[0], {}))
        if any(isinstance(a, ast.Starred) for a in node.args):
            known = 0
            for a in node.args:
                value = self.static(a.value if isinstance(a, ast.Starred) else a, {})
                if value is UNKNOWN:
                    return None
                known += len(value) if isinstance(a, ast.Starred) else 1
            return known
        return len(node.args) if node.args else None

    # ---- forward -------------------------------------------------------------------------------------------

    def forward_ir(self) -> Any:
        """The forward's return value as IR, with local assignments inlined; None when the body is not
        simple."""
        if self.forward is None:
            return None
        args = self.forward.args
        if args.vararg or args.kwarg or args.kwonlyargs:
            return None
        params = [a.arg for a in args.posonlyargs + args.args][1:]
        env: dict[str, Any] = {name: _Param(name, i) for i, name in enumerate(params)}
        body = list(self.forward.body)
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]  # docstring
        if not body or not isinstance(body[-1], ast.Return) or body[-1].value is None:
            return None
        for stmt in body[:-1]:
            if _is_name_assign(stmt):
                env[stmt.targets[0].id] = self.ir(stmt.value, env)
            elif (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                  and stmt.value is not None):
                env[stmt.target.id] = self.ir(stmt.value, env)
            else:
                return None
        return self.ir(body[-1].value, env)

    def ir(self, node: ast.expr, env: dict[str, Any]) -> Any:
        if isinstance(node, ast.Name):
            if node.id in env:
                return env[node.id]
            value = self.module_value(node.id)
            return UNKNOWN if value is UNKNOWN else _Value(value)
        if isinstance(node, ast.Constant):
            return _Value(node.value)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            attr = self.self_attrs.get(node.attr, UNKNOWN)
            if attr is UNKNOWN or isinstance(attr, _ModuleRecord):
                return UNKNOWN
            return attr if isinstance(attr, _SelfAttr) else _Value(attr)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            value = self.static(node, {})
            return UNKNOWN if value is UNKNOWN else _Value(value)
        if isinstance(node, ast.BinOp):
            return self._binop(node, env)
        if isinstance(node, ast.Call):
            return self._call(node, env)
        return UNKNOWN

    def _binop(self, node: ast.BinOp, env: dict[str, Any]) -> Any:
        left = self.ir(node.left, env)
        right = self.ir(node.right, env)
        if isinstance(node.op, ast.MatMult):
            return _Op("matmul", (left, right), {})
        if isinstance(node.op, ast.Pow):
            exponent = right.value if isinstance(right, _Value) else UNKNOWN
            return _Op("pow", (left,), {"exponent": exponent})
        symbol = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}.get(type(node.op))
        if symbol is None:
            return UNKNOWN
        return _Bin(symbol, left, right)

    def _call(self, node: ast.Call, env: dict[str, Any]) -> Any:
        if _has_unpacking(node):
            return UNKNOWN
        func = node.func
        dotted = self.dotted(func)
        if dotted is not None:
            op = _FUNCTIONS.get(dotted)
            if op is None:
                return UNKNOWN
            return self._op(op, [], node, env)
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "self":
            record = self.self_attrs.get(func.attr)
            if not isinstance(record, _ModuleRecord) or len(node.args) != 1 or node.keywords:
                return UNKNOWN
            return _Op(record.op, (self.ir(node.args[0], env),), dict(record.attrs))
        if isinstance(func, ast.Attribute) and func.attr in _METHODS:
            receiver = self.ir(func.value, env)
            return self._op(_METHODS[func.attr], [receiver], node, env)
        return UNKNOWN

    def _op(self, op: str, leading: list, node: ast.Call, env: dict[str, Any]) -> Any:
        n_tensors, names = _SIGNATURES[op]
        args = list(node.args)
        tensors = list(leading)
        while len(tensors) < n_tensors and args:
            tensors.append(self.ir(args.pop(0), env))
        attrs: dict[str, Any] = {}
        for key, arg in zip(names, args, strict=False):
            attrs[key] = self._attr_value(arg, env)
        if len(args) > len(names):
            return UNKNOWN
        for kw in node.keywords:
            if kw.arg in _TENSOR_KWARGS and len(tensors) < n_tensors:
                tensors.append(self.ir(kw.value, env))
            else:
                attrs[kw.arg] = self._attr_value(kw.value, env)
        if len(tensors) != n_tensors:
            return UNKNOWN
        return _Op(op, tuple(tensors), attrs)

    def _attr_value(self, node: ast.expr, env: dict[str, Any]) -> Any:
        """A non-tensor argument's static value; a tensor-valued one (a weight) stays as IR."""
        value = self.static(node, {})
        if value is not UNKNOWN:
            return value
        return self.ir(node, env)


def _import_aliases(tree: ast.Module) -> dict[str, str]:
    """Local name -> full module path, for the file's top-level torch imports."""
    aliases: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    aliases[a.asname] = a.name
                else:
                    root = a.name.split(".")[0]
                    aliases[root] = root
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    return {k: v for k, v in aliases.items() if v == "torch" or v.startswith("torch.")}


def _module_assigns(tree: ast.Module) -> dict[str, ast.expr]:
    """Module-level ``name = expr`` assignments (the last one wins, as at run time)."""
    assigns: dict[str, ast.expr] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    assigns[target.id] = node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            assigns[node.target.id] = node.value
    return assigns


def _has_unpacking(call: ast.Call) -> bool:
    return any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords)


def _is_name_assign(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)


def _size_arg(call: ast.Call, position: int) -> ast.expr | None:
    """The ``size`` argument of a factory such as torch.randint/torch.full (keyword, else positional)."""
    for kw in call.keywords:
        if kw.arg == "size":
            return kw.value
    return call.args[position] if call.args else None


def _single_return(fn: ast.FunctionDef | None) -> ast.expr | None:
    if fn is None:
        return None
    returns = [s for s in fn.body if isinstance(s, ast.Return)]
    return returns[-1].value if len(returns) == 1 else None


def _arith(op: ast.operator, a: Any, b: Any) -> Any:
    numbers = int | float
    if not isinstance(a, numbers) or not isinstance(b, numbers) or isinstance(a, bool) or isinstance(b, bool):
        return UNKNOWN
    try:
        if isinstance(op, ast.Add):
            return a + b
        if isinstance(op, ast.Sub):
            return a - b
        if isinstance(op, ast.Mult):
            return a * b
        if isinstance(op, ast.Div):
            return a / b
        if isinstance(op, ast.FloorDiv):
            return a // b
        if isinstance(op, ast.Mod):
            return a % b
        if isinstance(op, ast.Pow) and abs(b) <= 64:
            return a**b
    except (ZeroDivisionError, OverflowError):
        return UNKNOWN
    return UNKNOWN


def _shape_len(value: Any) -> int | None:
    if isinstance(value, tuple):
        return len(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return 1
    return None


# ------------------------------------------------------------------------------------------------------------
# Classification of the forward's IR.


def _classify(ir: Any, ctx: _Context) -> OpMatch | None:
    ranks = ctx.input_ranks()

    def rank(p: _Param) -> int | None:
        return ranks[p.index] if p.index < len(ranks) else None

    if not isinstance(ir, _Op | _Bin):
        return None
    rms = _match_rmsnorm(ir, rank)
    if rms is not None:
        return rms
    if not isinstance(ir, _Op):
        return None
    args = ir.inputs
    attrs = ir.attrs
    if ir.name in ("matmul", "mm"):
        if all(isinstance(a, _Param) for a in args) and (ir.name == "mm" or all(rank(a) == 2 for a in args)):
            return OpMatch("matmul", {})
        return None
    if ir.name == "max_pool2d":
        inner = args[0]
        if (isinstance(inner, _Op) and inner.name == "relu" and isinstance(inner.inputs[0], _Op)
                and inner.inputs[0].name == "conv2d" and isinstance(inner.inputs[0].inputs[0], _Param)):
            return OpMatch("conv2d_relu_maxpool", _conv_params(inner.inputs[0].attrs) | _pool_params(attrs))
        return None
    if len(args) != 1 or not isinstance(args[0], _Param):
        return None
    x = args[0]
    if ir.name == "relu":
        return OpMatch("relu", {})
    if ir.name == "gelu":
        return OpMatch("gelu", _known({"approximate": attrs.get("approximate", "none")}))
    if ir.name in ("softmax", "log_softmax"):
        if _is_last_dim(attrs.get("dim"), rank(x)) and attrs.get("dtype") is None:
            return OpMatch(ir.name, {"dim": -1})
        return None
    if ir.name == "sum":
        keepdim = attrs.get("keepdim", False)
        plain = isinstance(keepdim, bool) and attrs.get("dtype") is None
        if plain and _is_last_dim(attrs.get("dim"), rank(x)):
            return OpMatch("sum_lastdim", {"dim": -1, "keepdim": keepdim})
        return None
    if ir.name == "layer_norm":
        shape = attrs.get("normalized_shape", UNKNOWN)
        dims = _shape_len(shape)
        return OpMatch("layernorm", _known({"normalized_dims": dims if dims else UNKNOWN,
                                             "eps": attrs.get("eps", 1e-5)}))
    if ir.name == "rms_norm":
        return OpMatch("rmsnorm", _known({"eps": attrs.get("eps")}))
    if ir.name == "conv2d":
        return OpMatch("conv2d", _conv_params(attrs))
    return None


def _known(params: dict[str, Any]) -> dict[str, Any]:
    """Drop parameters whose value is not a plain static value."""
    return {k: v for k, v in params.items() if v is None or isinstance(v, int | float | str | tuple)}


def _conv_params(attrs: dict[str, Any]) -> dict[str, Any]:
    params = {
        "kernel_size": attrs.get("kernel_size", UNKNOWN),
        "stride": attrs.get("stride", 1),
        "padding": attrs.get("padding", 0),
        "dilation": attrs.get("dilation", 1),
        "groups": attrs.get("groups", 1),
    }
    return _known(params)


def _pool_params(attrs: dict[str, Any]) -> dict[str, Any]:
    kernel = attrs.get("kernel_size", UNKNOWN)
    stride = attrs.get("stride")
    params = {
        "pool_kernel_size": kernel,
        "pool_stride": kernel if stride is None else stride,  # nn.MaxPool2d: stride defaults to kernel_size
        "pool_padding": attrs.get("padding", 0),
    }
    return _known(params)


def _is_last_dim(dim: Any, rank: int | None) -> bool:
    if isinstance(dim, tuple) and len(dim) == 1:
        dim = dim[0]
    if not isinstance(dim, int) or isinstance(dim, bool):
        return False
    return dim == -1 or (rank is not None and dim == rank - 1)


def _factors(node: Any, sign: int, out: list[tuple[Any, int]]) -> None:
    """Flatten a product/quotient into (factor, +1 | -1) pairs, so ``x / r * w`` and ``x * (w / r)`` agree."""
    if isinstance(node, _Bin) and node.op in ("*", "/"):
        _factors(node.left, sign, out)
        _factors(node.right, sign if node.op == "*" else -sign, out)
    else:
        out.append((node, sign))


def _match_rmsnorm(ir: Any, rank: Any) -> OpMatch | None:
    """``x / sqrt(mean(x*x, -1, keepdim=True) + eps) [* w]`` and its rsqrt / pow(-0.5) spellings."""
    factors: list[tuple[Any, int]] = []
    _factors(ir, 1, factors)
    factors = [(f, s) for f, s in factors if not (isinstance(f, _Value) and f.value == 1)]
    params = [f for f, s in factors if isinstance(f, _Param) and s == 1]
    weights = [f for f, s in factors if isinstance(f, _SelfAttr) and s == 1]
    rest = [(f, s) for f, s in factors if not (isinstance(f, _Param) and s == 1)
            and not (isinstance(f, _SelfAttr) and s == 1)]
    if len(params) != 1 or len(weights) > 1 or len(rest) != 1:
        return None
    x = params[0]
    node, sign = rest[0]
    if not isinstance(node, _Op) or len(node.inputs) != 1:
        return None
    power = {"sqrt": 0.5, "rsqrt": -0.5}.get(node.name)
    if node.name == "pow":
        power = node.attrs.get("exponent")
    if not isinstance(power, int | float) or power * sign != -0.5:
        return None
    matched, eps = _mean_square_plus_eps(node.inputs[0], x, rank)
    if not matched:
        return None
    return OpMatch("rmsnorm", _known({"eps": eps}))


def _mean_square_plus_eps(node: Any, x: _Param, rank: Any) -> tuple[bool, Any]:
    """(True, eps) if node is ``mean(x^2 over the last dim, keepdim=True) + eps``; eps is UNKNOWN when it is a
    module attribute without a static value."""
    if not isinstance(node, _Bin) or node.op != "+":
        return False, UNKNOWN
    for mean, eps in ((node.left, node.right), (node.right, node.left)):
        if not (isinstance(mean, _Op) and mean.name == "mean" and mean.attrs.get("keepdim") is True
                and _is_last_dim(mean.attrs.get("dim"), rank(x)) and _is_square_of(mean.inputs[0], x)):
            continue
        if isinstance(eps, _Value) and isinstance(eps.value, int | float) and not isinstance(eps.value, bool):
            return True, eps.value
        if isinstance(eps, _SelfAttr):
            return True, UNKNOWN
    return False, UNKNOWN


def _is_square_of(node: Any, x: _Param) -> bool:
    if isinstance(node, _Op) and node.name == "square":
        return node.inputs[0] == x
    if isinstance(node, _Op) and node.name == "pow":
        return node.inputs[0] == x and node.attrs.get("exponent") == 2
    if isinstance(node, _Bin) and node.op == "*":
        return node.left == x and node.right == x
    return False
