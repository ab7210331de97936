"""What a candidate's forward actually did, recorded in the candidate's child process during verification.

Run-time evidence rather than pattern matching on source: every PyTorch operator that reaches the dispatcher is
recorded (a TorchDispatchMode sees Python and C++ callers alike, so `torch.softmax` inside a helper or a
load_inline extension calling `at::softmax` is seen too), and so is every launch of a kernel built through
kernelcraft's fast path and every call into a compiled extension (load_inline). The trusted parent applies the
policy; see :func:`judge`.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode

# Operators that allocate, describe or move memory without computing the problem's result: a kernel's forward
# legitimately calls these to make its output buffers, views and contiguous copies.
GLUE_OPS = frozenset({
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "zeros", "zeros_like", "zero_",
    "fill_", "full", "full_like", "new_zeros", "new_full", "ones", "ones_like",
    "view", "_unsafe_view", "reshape", "_reshape_alias", "as_strided", "alias", "detach", "lift_fresh",
    "t", "transpose", "permute", "expand", "unsqueeze", "squeeze", "select", "slice", "narrow", "split",
    "unbind", "flatten", "unflatten", "view_as", "expand_as", "contiguous", "clone", "copy_", "_to_copy",
    "to", "resize_", "set_", "is_same_size", "size", "stride", "sym_size", "sym_stride", "sym_numel",
    "dim", "numel", "is_contiguous", "_local_scalar_dense", "item",
})


class _OpCounter(TorchDispatchMode):
    """Counts every aten operator that reaches the dispatcher while active, then runs it unchanged."""

    def __init__(self, ops: Counter[str]) -> None:
        super().__init__()
        self.ops = ops

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        """Keep this counter's ``__torch_dispatch__`` unwrapped: PyTorch otherwise wraps it to disable Dynamo,
        and that wrapper's first call imports all of torch._dynamo (1.4 s here, up to 7 s on a cold H100 host),
        which every verification worker would pay before its first candidate. Counting needs no Dynamo."""
        return False

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


class _Recorder:
    """Context manager recording aten operators and compiled-extension calls made inside it."""

    def __init__(self, extension_roots: tuple[str, ...]) -> None:
        self.ops: Counter[str] = Counter()
        self.extension_calls: Counter[str] = Counter()
        self._mode = _OpCounter(self.ops)
        self._roots = extension_roots
        self._known: dict[str, bool] = {}

    def _is_extension(self, module: str) -> bool:
        """load_inline builds extension NAME under <extensions dir>/NAME/ (the module is not in sys.modules)."""
        if module not in self._known:
            self._known[module] = bool(module) and "." not in module and any(
                os.path.isdir(os.path.join(root, module)) for root in self._roots)
        return self._known[module]

    def _profile(self, frame: Any, event: str, arg: Any) -> None:
        if event != "c_call":
            return
        module = getattr(arg, "__module__", None)
        if isinstance(module, str) and self._is_extension(module):
            self.extension_calls[f"{module}.{getattr(arg, '__name__', '?')}"] += 1

    def __enter__(self) -> _Recorder:
        sys.setprofile(self._profile)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._mode.__exit__(*exc)
        sys.setprofile(None)


def recorder() -> _Recorder:
    from kernelcraft.harness.build import build_dir

    roots = {str(build_dir())}
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        roots.add(os.environ["TORCH_EXTENSIONS_DIR"])
    return _Recorder(tuple(sorted(roots)))


def aliased_inputs(outputs: list, inputs: list) -> list[int]:
    """Indices of inputs whose storage an output shares: returning (a view of) an input is not computing."""
    import torch

    hits = []
    for k, t in enumerate(inputs):
        if not isinstance(t, torch.Tensor) or t.numel() == 0:
            continue
        start = t.untyped_storage().data_ptr()
        end = start + t.untyped_storage().nbytes()
        for o in outputs:
            if o.numel() == 0:
                continue
            o_start = o.untyped_storage().data_ptr()
            o_end = o_start + o.untyped_storage().nbytes()
            if o_start < end and start < o_end:
                hits.append(k)
                break
    return hits


def judge(torch_ops: dict[str, int], launches: dict[str, int], extension_calls: dict[str, int],
          policy: str) -> list[str]:
    """Reasons to reject, from what the forward did. ``policy`` is the config's ``verify.pytorch_compute``:
    ``reject`` (any PyTorch compute operator rejects) or ``allow_partial`` (PyTorch may do part of the work as
    long as a compiled kernel of the candidate ran)."""
    reasons = []
    compute = {op: n for op, n in sorted(torch_ops.items()) if op not in GLUE_OPS}
    if not launches and not extension_calls:
        if compute:
            listed = ", ".join(f"aten.{op}" for op in list(compute)[:4])
            reasons.append(f"the work is done by PyTorch, not a kernel ({listed}); no compiled kernel ran")
        else:
            reasons.append("never launches a compiled kernel")
    elif compute and policy == "reject":
        listed = ", ".join(f"aten.{op}" for op in list(compute)[:4])
        reasons.append(f"part of the work is done by PyTorch ({listed}); verify.pytorch_compute is reject")
    return reasons

