"""One GPU per GPU job: a job takes a free device and holds it for its whole life.

Snakemake counts ``gpu`` as a plain resource and assigns no device ids, so with ``--resources gpu=2`` two evaluate
jobs would both see every GPU and time their kernels on device 0, each skewing the other's timings. Each GPU job
therefore leases a device: an exclusive lock file per device on this host (``flock``, through the filelock
library), held until the job exits. The operating system drops the lock when the process dies, however it dies
(crash, ``kill -9``, a node's OOM killer), so a killed job never strands its device. The job then runs with
``CUDA_VISIBLE_DEVICES`` set to that one device, which its candidate processes inherit.

Under a scheduler that assigns GPUs itself (Slurm with ``--gres``/``--gpus``), the assignment is respected: the
job runs on what ``CUDA_VISIBLE_DEVICES`` already names and takes no lock (two jobs on one node may both see their
own GPU as device 0, and must not be serialised by a lock on the name).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

ENV_FAKE = "KERNELCRAFT_GPUS"  # a device count or comma list standing in for nvidia-smi (tests, odd hosts)
ENV_LOCK_DIR = "KERNELCRAFT_GPU_LOCK_DIR"


@dataclass(frozen=True)
class Lease:
    """The device a job runs on: its id as the job sees it, and how it was obtained."""

    device: str
    how: str  # "lock": leased here; "scheduler": assigned by Slurm
    lock: str | None = None

    def describe(self) -> str:
        if self.how == "scheduler":
            return f"GPU {self.device} (assigned by the scheduler)"
        return f"GPU {self.device} (lock {self.lock})"


def host_devices(env: Mapping[str, str] = os.environ) -> list[str]:
    """The GPU ids jobs on this host may use: CUDA_VISIBLE_DEVICES when the user restricted them, else every GPU
    nvidia-smi lists (without creating a CUDA context), else none."""
    fake = env.get(ENV_FAKE)
    if fake:
        return [str(i) for i in range(int(fake))] if fake.isdigit() else [d for d in fake.split(",") if d]
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, _ in enumerate(ln for ln in out.splitlines() if ln.startswith("GPU "))]


def scheduler_assigned(env: Mapping[str, str] = os.environ) -> bool:
    """Inside a Slurm job step that was given GPUs: Slurm set CUDA_VISIBLE_DEVICES for it."""
    return bool(env.get("SLURM_JOB_ID")) and bool(env.get("CUDA_VISIBLE_DEVICES"))


def lock_dir(env: Mapping[str, str] = os.environ) -> Path:
    """Node-local (a temporary directory, never a shared filesystem: device 0 of two nodes is two devices)."""
    return Path(env.get(ENV_LOCK_DIR) or Path(tempfile.gettempdir()) / "kernelcraft-gpu-locks")


@contextmanager
def gpu_lease(env: MutableMapping[str, str] | None = None, *, poll_s: float = 0.2,
              on_wait: Callable[[list[str]], None] | None = None) -> Iterator[Lease | None]:
    """Hold one free GPU of this host for the ``with`` body and point ``CUDA_VISIBLE_DEVICES`` at it.

    Yields None where there is no GPU to lease (a CPU host). Waits while every device is held: Snakemake's
    ``gpu`` resource normally keeps jobs at or below the device count, and a job that starts anyway must wait
    rather than share. ``on_wait(devices)`` is called once when it has to wait.
    """
    env = os.environ if env is None else env
    if scheduler_assigned(env):
        yield Lease(device=env["CUDA_VISIBLE_DEVICES"], how="scheduler")
        return
    devices = host_devices(env)
    if not devices:
        yield None
        return
    folder = lock_dir(env)
    folder.mkdir(parents=True, exist_ok=True)
    # Start the scan at a different device per process, so simultaneous starters rarely race for the same lock.
    start = os.getpid() % len(devices)
    order = devices[start:] + devices[:start]
    waited = False
    while True:
        for device in order:
            lock = FileLock(str(folder / f"gpu{device}.lock"))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            previous = env.get("CUDA_VISIBLE_DEVICES")
            env["CUDA_VISIBLE_DEVICES"] = device
            try:
                yield Lease(device=device, how="lock", lock=lock.lock_file)
            finally:
                if previous is None:
                    env.pop("CUDA_VISIBLE_DEVICES", None)
                else:
                    env["CUDA_VISIBLE_DEVICES"] = previous
                lock.release()
            return
        if not waited and on_wait is not None:
            on_wait(devices)
        waited = True
        time.sleep(poll_s)
