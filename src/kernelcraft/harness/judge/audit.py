"""What a candidate's forward actually did: recorded in the candidate's process, judged in the trusted parent.

The record is on for every call the candidate's process makes, verified or timed, from before the candidate's
module is imported until the process ends, so a candidate cannot tell a checked call from a timed one: there is
no "audit on" state to detect, and switching the record off loses calls, which the parent counts. It is PyTorch's
own profiler (kineto, CPU activity): every aten operator that reaches the dispatcher is recorded, from Python or
from a compiled extension's C++, on any thread; each forward is bracketed by an annotation of the harness's own.
A Python profile hook adds the calls into compiled extensions (load_inline), the evidence that such a kernel ran.

Why not a TorchDispatchMode: it lives in the candidate's Python state, is visible to it
(``_get_current_dispatch_mode``), and can be popped around the work it should see.
Why not CUDA kernel records (CUPTI): a CUDA activity session took 6.1 s to start in a fresh process on the
H200, in every candidate's process; the operator record covers PyTorch doing the work from Python and C++, and
the static allow-list (verify/static_checks.py) keeps candidates away from the APIs that would bypass it.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from typing import Any

import torch.profiler as _tp
from torch.autograd.profiler import record_function as _record_function

# Bound at import, in the zygote, before any candidate code exists in the process.
_setprofile = sys.setprofile
_profile_cls = _tp.profile
_CPU = _tp.ProfilerActivity.CPU

FORWARD = "kernelcraft::forward"

# Operators that allocate, describe or move memory without computing the problem's result: a kernel's forward
# legitimately calls these to make its output buffers, views and contiguous copies.
GLUE_OPS = frozenset({
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "zeros", "zeros_like", "zero_",
    "fill_", "full", "full_like", "new_zeros", "new_full", "ones", "ones_like",
    "view", "_unsafe_view", "reshape", "_reshape_alias", "as_strided", "alias", "detach", "lift_fresh",
    "t", "transpose", "permute", "expand", "unsqueeze", "squeeze", "select", "slice", "narrow", "split",
    "unbind", "flatten", "unflatten", "view_as", "expand_as", "contiguous", "clone", "copy_", "_to_copy",
    "to", "resize_", "set_", "is_same_size", "size", "stride", "sym_size", "sym_stride", "sym_numel",
    "dim", "numel", "is_contiguous", "_local_scalar_dense", "item", "result_type",
    "resolve_conj", "resolve_neg",  # no-ops on real tensors (``tolist`` calls them)
})


def _experimental_config() -> Any:
    """Record every thread, not only the one that started the session: a compiled extension may start its own."""
    from torch._C._profiler import _ExperimentalConfig

    try:
        return _ExperimentalConfig(profile_all_threads=True)
    except TypeError:  # an older torch: the calling thread only
        return _ExperimentalConfig()


def warm() -> None:
    """Start and stop one session: the first start in a process costs about a second (library set-up), which the
    zygote pays once before it forks; each child's start is then well under a millisecond."""
    session = _profile_cls(activities=[_CPU], experimental_config=_experimental_config())
    session.start()
    with _record_function(FORWARD):
        pass
    session.stop()


class _ExtensionCalls:
    """Counts calls into compiled extensions (load_inline builds extension NAME under <extensions dir>/NAME/)."""

    def __init__(self, roots: tuple[str, ...]) -> None:
        self.calls: Counter[str] = Counter()
        self._roots = roots
        self._known: dict[str, bool] = {}

    def _is_extension(self, module: str) -> bool:
        if module not in self._known:
            self._known[module] = bool(module) and "." not in module and any(
                os.path.isdir(os.path.join(root, module)) for root in self._roots)
        return self._known[module]

    def __call__(self, frame: Any, event: str, arg: Any) -> None:
        if event != "c_call":
            return
        module = getattr(arg, "__module__", None)
        if isinstance(module, str) and self._is_extension(module):
            self.calls[f"{module}.{getattr(arg, '__name__', '?')}"] += 1


class Audit:
    """The always-on record of one candidate process. ``forward()`` brackets each call of the candidate;
    ``cut()`` returns the summary of everything since the previous cut and starts recording again (the gap is
    harness code only: no candidate call is in flight)."""

    def __init__(self) -> None:
        from kernelcraft.harness.build import build_dir

        roots = {str(build_dir())}
        if os.environ.get("TORCH_EXTENSIONS_DIR"):
            roots.add(os.environ["TORCH_EXTENSIONS_DIR"])
        self._roots = tuple(sorted(roots))
        self._session: Any = None
        self._extensions = _ExtensionCalls(self._roots)
        self._calls = 0
        self._begin()

    def _begin(self) -> None:
        self._session = _profile_cls(activities=[_CPU], experimental_config=_experimental_config())
        self._session.start()
        self._extensions = _ExtensionCalls(self._roots)
        self._calls = 0

    def forward(self) -> _Forward:
        self._calls += 1
        return _Forward(self._extensions)

    def cut(self) -> dict:
        """Summary since the last cut: calls made, calls the record saw, top-level aten operators inside the
        forwards, calls into compiled extensions and fast-path launches."""
        from kernelcraft.harness.build import launch_counts, reset_launch_counts

        try:
            self._session.stop()
            events = list(self._session.profiler.kineto_results.events())
        except Exception as exc:  # noqa: BLE001 - a record the candidate broke is its failure
            events, broken = [], f"{type(exc).__name__}: {exc}"[:200]
        else:
            broken = None
        summary = summarize(events) | {"calls": self._calls, "extension_calls": dict(self._extensions.calls),
                                       "launches": launch_counts()}
        if broken:
            summary["broken"] = broken
        reset_launch_counts()
        self._begin()
        return summary


class _Forward:
    def __init__(self, extensions: _ExtensionCalls) -> None:
        self._extensions = extensions
        self._annotation = _record_function(FORWARD)

    def __enter__(self) -> None:
        self._annotation.__enter__()
        _setprofile(self._extensions)

    def __exit__(self, *exc: object) -> None:
        _setprofile(None)
        self._annotation.__exit__(*exc)


def summarize(events: list) -> dict:
    """Top-level aten operators (those not nested in another operator on their thread) that ran inside a forward
    window, and how many forward windows the record holds."""
    windows = sorted((e.start_ns(), e.end_ns()) for e in events if e.name() == FORWARD)
    ops_by_thread: dict[int, list[tuple[int, int, str]]] = {}
    for e in events:
        name = e.name()
        if name.startswith("aten::"):
            ops_by_thread.setdefault(e.start_thread_id(), []).append((e.start_ns(), e.end_ns(), name[6:]))
    counted: Counter[str] = Counter()
    for ops in ops_by_thread.values():
        ops.sort(key=lambda o: (o[0], -o[1]))
        open_end = -1
        for start, end, name in ops:
            if start < open_end:
                continue  # nested inside the previous top-level operator
            open_end = end
            if _inside(start, windows):
                counted[name] += 1
    return {"recorded_calls": len(windows), "torch_ops": dict(counted)}


def _inside(t: int, windows: list[tuple[int, int]]) -> bool:
    import bisect

    k = bisect.bisect_right(windows, (t, float("inf"))) - 1
    return k >= 0 and windows[k][0] <= t <= windows[k][1]


def aliased_inputs(outputs: list, inputs: list) -> list[int]:
    """Indices of inputs whose storage an output shares: returning (a view of) an input is not computing. Run by
    the parent on the tensors it was handed (CUDA IPC maps one allocation to one storage; a saved file keeps
    shared storages shared)."""
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


def judge(summary: dict, policy: str) -> list[str]:
    """Reasons to reject, from one segment's summary (verification trials or timed calls alike). ``policy`` is
    the config's ``verify.pytorch_compute``: ``reject`` (any PyTorch compute operator rejects) or
    ``allow_partial`` (PyTorch may do part of the work as long as every call also runs a compiled kernel)."""
    reasons = []
    calls, recorded = int(summary.get("calls") or 0), int(summary.get("recorded_calls") or 0)
    if summary.get("broken") or recorded != calls:
        reasons.append(f"switched the audit off: {recorded} of {calls} calls recorded"
                       + (f" ({summary['broken']})" if summary.get("broken") else ""))
    torch_ops = summary.get("torch_ops") or {}
    compute = {op: n for op, n in sorted(torch_ops.items()) if op not in GLUE_OPS}
    kernel_calls = sum((summary.get("launches") or {}).values()) + sum((summary.get("extension_calls") or {}).values())
    listed = ", ".join(f"aten.{op}" for op in list(compute)[:4])
    if not kernel_calls:
        if compute:
            reasons.append(f"the work is done by PyTorch, not a kernel ({listed}); no compiled kernel ran")
        else:
            reasons.append("never launches a compiled kernel")
        return reasons
    if kernel_calls < calls:
        reasons.append(f"no compiled kernel ran in some calls ({kernel_calls} kernel calls in {calls} calls)")
    if compute and policy == "reject":
        reasons.append(f"part of the work is done by PyTorch ({listed}); verify.pytorch_compute is reject")
    return reasons
