"""The environment candidate processes get: an allow-list, so no API key, token or credential can leak to
generated code whatever the variable is called."""

from __future__ import annotations

import os
from collections.abc import Mapping

# Exact names a kernel build or run legitimately needs.
_ALLOWED = {
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM",
    "LD_LIBRARY_PATH", "LIBRARY_PATH", "CPATH", "C_INCLUDE_PATH", "CPLUS_INCLUDE_PATH",
    "CC", "CXX", "CUDA_HOME", "CUDA_PATH", "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "CUDA_LAUNCH_BLOCKING",
    "CUDA_MODULE_LOADING", "NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MAX_JOBS",
    "PYTHONPATH", "PYTHONHASHSEED", "PYTHONUNBUFFERED", "VIRTUAL_ENV",
    "TORCH_EXTENSIONS_DIR", "TORCH_CUDA_ARCH_LIST", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR",
    "XDG_CACHE_HOME",
}
# Prefixes of settings (not secrets) that the build and runtime read.
_ALLOWED_PREFIXES = ("LC_", "KERNELCRAFT_")
# Anything that looks like a secret is dropped even if a prefix above would admit it.
_SECRET_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "AUTH", "COOKIE", "SESSION")


def is_secret_name(name: str) -> bool:
    upper = name.upper()
    return any(marker in upper for marker in _SECRET_MARKERS)


def scrubbed_env(base: Mapping[str, str] | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The allow-listed part of ``base`` (default: this process's environment) plus ``extra``."""
    base = os.environ if base is None else base
    env = {
        k: v
        for k, v in base.items()
        if (k in _ALLOWED or k.startswith(_ALLOWED_PREFIXES)) and not is_secret_name(k)
    }
    for k, v in (extra or {}).items():
        if is_secret_name(k):
            raise ValueError(f"refusing to pass {k} to a candidate process: it looks like a secret")
        env[k] = v
    return env
