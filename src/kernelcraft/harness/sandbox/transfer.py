"""Handing a candidate's CUDA outputs to the comparing parent without copying them: CUDA IPC.

Why: the parent must see the very bytes the candidate produced (anything computed inside the candidate's process
could be tampered with), but copying a 1 GiB softmax output and its inputs through host memory and a file costs
seconds per trial. With CUDA IPC the child exports memory handles, the parent maps the child's allocations and
compares on the GPU, then releases the child. Handles travel as JSON (base64); the parent checks that every
view lies inside the storage it maps before using it.
"""

from __future__ import annotations

import base64
from typing import Any

_DTYPES = {"float32", "float64", "float16", "bfloat16", "int8", "int16", "int32", "int64", "uint8", "bool",
           "complex64", "complex128"}


def _b64(value: bytes | None) -> str | None:
    return base64.b64encode(value).decode() if value is not None else None


def _unb64(value: str | None) -> bytes | None:
    return base64.b64decode(value) if value is not None else None


def export_cuda(t: Any) -> dict:
    """In the child: an IPC description of a CUDA tensor (the child must keep ``t`` alive until released)."""
    from torch.multiprocessing.reductions import reduce_tensor

    _, args = reduce_tensor(t.detach())
    (_, size, stride, offset, _, dtype, device, handle, storage_bytes, storage_offset_bytes, _,
     ref_handle, ref_offset, event_handle, event_sync) = args
    return {"shape": list(size), "stride": list(stride), "offset": int(offset), "dtype": str(dtype).split(".")[-1],
            "device": int(device), "handle": _b64(handle), "storage_bytes": int(storage_bytes),
            "storage_offset_bytes": int(storage_offset_bytes), "ref_handle": _b64(ref_handle),
            "ref_offset": int(ref_offset), "event_handle": _b64(event_handle), "event_sync": bool(event_sync)}


def import_cuda(desc: dict) -> Any:
    """In the parent: map a tensor the child exported; validates the view against the mapped storage."""
    import torch
    from torch.multiprocessing.reductions import rebuild_cuda_tensor

    if desc["dtype"] not in _DTYPES:
        raise ValueError(f"unexpected dtype {desc['dtype']!r} in an exported tensor")
    dtype = getattr(torch, desc["dtype"])
    shape, stride, offset = [int(s) for s in desc["shape"]], [int(s) for s in desc["stride"]], int(desc["offset"])
    itemsize = torch.empty((), dtype=dtype).element_size()
    if any(s < 0 for s in shape) or any(s < 0 for s in stride) or offset < 0:
        raise ValueError("negative size, stride or offset in an exported tensor")
    extent = offset + (sum((n - 1) * s for n, s in zip(shape, stride, strict=True)) + 1 if all(shape) else 0)
    if extent * itemsize > int(desc["storage_bytes"]):
        raise ValueError("an exported tensor's view reaches past its storage")
    return rebuild_cuda_tensor(
        torch.Tensor, torch.Size(shape), tuple(stride), offset, torch.storage.TypedStorage, dtype,
        int(desc["device"]), _unb64(desc["handle"]), int(desc["storage_bytes"]), int(desc["storage_offset_bytes"]),
        False, _unb64(desc["ref_handle"]), int(desc["ref_offset"]), _unb64(desc["event_handle"]),
        bool(desc["event_sync"]),
    )
