"""Assembling a candidate file: header comment, imports, kernel code, and a ModelNew that mirrors the Model.

The header carries the idea, the parent and the exact feature dict as JSON, so a later round (or a person
reading the report) can tell what a seed is without parsing its code. ModelNew takes the reference's
constructor arguments and recreates its parameters the same way (see opspec), so building both after the same
``torch.manual_seed`` gives the same weights; its forward only allocates outputs and launches kernels.
"""

from __future__ import annotations

import json
import re
import textwrap

from kernelcraft.search.offline_kernels.opspec import OpSpec

_IMPORTS = {
    "cuda": ("import functools\nimport math\n\nimport torch\nimport torch.nn as nn\n\n"
             "from kernelcraft.harness.build import cuda_kernel\n"),
    "cpu": "import math\n\nimport torch\nimport torch.nn as nn\n\nfrom kernelcraft.harness.build import c_kernel\n",
}


# The header line holding a candidate's feature dict, as :func:`assemble` writes it (read back by the offline
# proposer for its seeds and by the seed bank).
FEATURES_LINE = re.compile(r"^# features: (\{.*\})\s*$", re.MULTILINE)


def input_guard(shape: tuple[int, ...]) -> list[str]:
    """ModelNew's first forward lines for kernels whose sizes are compiled in: the one input made contiguous, and
    refused with its shape when it is not the shape those constants describe (a kernel would read out of bounds)."""
    return ["x = x.contiguous()", f"if tuple(x.shape) != {shape!r}:",
            f"    raise ValueError(f'expected an input of shape {shape}, got {{tuple(x.shape)}}')"]


def broadcast_index(spec: OpSpec, e: str) -> str:
    """The index of output element ``e``'s value of a broadcast operand (OpSpec.broadcast): 32-bit unsigned
    arithmetic where the output allows (a division by a constant is then a multiply-high, which compilers
    vectorise), no division for a trailing run and no remainder for a leading one."""
    inner, size = spec.broadcast
    numel = 1
    for d in spec.input_shape:
        numel *= d
    v = f"(uint32_t)({e})" if numel < 2**32 else f"(int64_t)({e})"
    q = v if inner == 1 else f"{v} / {inner}u" if numel < 2**32 else f"{v} / {inner}"
    return q if inner * size == numel else f"({q}) % {size}u" if numel < 2**32 else f"({q}) % {size}"


def scores_guard(spec: OpSpec) -> list[str]:
    """ModelNew's first forward lines for cross-entropy: scores and int64 targets contiguous, and refused unless of
    the sizes the kernels compiled in."""
    (n, c), _ = spec.input_shapes
    return ["x = x.contiguous()", "t = t.contiguous()",
            f"if tuple(x.shape) != {(n, c)!r} or tuple(t.shape) != {(n,)!r} or t.dtype != torch.int64:",
            f"    raise ValueError(f'expected scores of shape {(n, c)} and int64 targets of shape {(n,)}, got "
            "{tuple(x.shape)} and {t.dtype} {tuple(t.shape)}')"]


def attention_guard(spec: OpSpec) -> list[str]:
    """ModelNew's first forward lines for attention: q, k and v contiguous and refused unless of the shapes the
    kernels compiled in."""
    shapes = dict(zip(spec.args, spec.input_shapes, strict=True))
    lines = [f"{a} = {a}.contiguous()" for a in ("q", "k", "v")]
    test = " or ".join(f"tuple({a}.shape) != {shapes[a]!r}" for a in ("q", "k", "v"))
    return lines + [f"if {test}:", f"    raise ValueError('expected q, k, v of shapes {shapes['q']}, {shapes['k']}, "
                                   f"{shapes['v']}')"]


def rows_guard(spec: OpSpec) -> list[str]:
    """ModelNew's first forward lines for a row loss: every input contiguous and refused unless of the shape the
    kernels compiled in."""
    lines = [f"{a} = {a}.contiguous()" for a in spec.args]
    shapes = " or ".join(f"tuple({a}.shape) != {spec.input_shape!r}" for a in spec.args)
    return lines + [f"if {shapes}:", f"    raise ValueError('expected {len(spec.args)} inputs of shape "
                                     f"{spec.input_shape}')"]


def operand_guard(spec: OpSpec) -> list[str]:
    """ModelNew's first forward lines for a pointwise op of several arguments: the numbers the kernel has compiled
    in refused when they differ, the broadcast operand made contiguous and refused when its shape is not the one the
    kernel's index map describes."""
    lines = []
    for name, value in spec.scalars:
        lines += [f"if float({name}) != {value!r}:",
                  f"    raise ValueError(f'compiled for {name} = {value!r}, got {{{name}}}')"]
    if spec.broadcast:
        shape = tuple(spec.input_shapes[1])
        if "y" not in spec.args:  # the broadcast operand is the model's own parameter (PReLU's slopes)
            lines.append(f"y = {spec.weight}")
        lines += ["y = y.contiguous()", f"if tuple(y.shape) != {shape!r} or tuple(x.shape) != {spec.input_shape!r}:",
                  f"    raise ValueError(f'expected inputs of shapes {spec.input_shape} and {shape}, got "
                  "{tuple(x.shape)} and {tuple(y.shape)}')"]
    return lines


def _comment(label: str, text: str) -> list[str]:
    wrapped = textwrap.wrap(" ".join(text.split()), width=104) or [""]
    return [f"# {label}: {wrapped[0]}"] + [f"#   {line}" for line in wrapped[1:]]


def assemble(spec: OpSpec, backend: str, idea: str, parent: str, features: dict, module_code: str,
             forward: list[str]) -> str:
    """The complete candidate source for one implementation."""
    head = _comment("idea", idea) + [f"# parent: {parent}", f"# problem: {spec.problem_id} ({spec.op})",
                                     "# features: " + json.dumps(features, sort_keys=True, separators=(",", ":"))]
    init = ["super().__init__()"] + list(spec.init_body)
    lines = ["", "", "class ModelNew(nn.Module):",
             f'    """{spec.op} computed entirely by the generated kernel(s) above."""', "",
             f"    def __init__{spec.init_signature}:"]
    lines += [f"        {ln}" for ln in init]
    numbers = dict(spec.scalars)
    params = ", ".join(f"{a}: float" if a in numbers else f"{a}: torch.Tensor" for a in spec.args)
    lines += ["", f"    def forward(self, {params}) -> torch.Tensor:"]
    lines += [f"        {ln}" if ln else "" for ln in forward]
    return "\n".join(head) + '\n"""Generated by kernelcraft\'s offline proposer."""\n\n' + _IMPORTS[backend] + "\n" \
        + module_code.rstrip() + "\n" + "\n".join(lines) + "\n"
