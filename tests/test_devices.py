"""One GPU per GPU job (kernelcraft.devices): N fake devices, real processes, real locks, real kills."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from kernelcraft.devices import gpu_lease, host_devices

JOB = r"""
import json, os, sys, time
from kernelcraft.devices import gpu_lease
out, hold = sys.argv[1], float(sys.argv[2])
with gpu_lease(poll_s=0.02) as lease:
    start = time.time()
    print("held", lease.device, flush=True)
    seen = os.environ["CUDA_VISIBLE_DEVICES"]
    time.sleep(hold)
    end = time.time()
with open(out, "w") as fh:
    json.dump({"device": lease.device, "visible": seen, "start": start, "end": end}, fh)
"""


def _env(tmp_path: Path, devices: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "CUDA_VISIBLE_DEVICES"}
    return env | {"KERNELCRAFT_GPUS": devices, "KERNELCRAFT_GPU_LOCK_DIR": str(tmp_path / "locks")}


def _job(tmp_path: Path, name: str, devices: str, hold: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", JOB, str(tmp_path / f"{name}.json"), str(hold)],
                            env=_env(tmp_path, devices), stdout=subprocess.PIPE, text=True)


def test_concurrent_jobs_always_hold_distinct_devices_and_every_job_runs(tmp_path):
    jobs = [_job(tmp_path, f"j{i}", "3", 0.4) for i in range(8)]
    assert all(job.wait(60) == 0 for job in jobs)
    done = [json.loads((tmp_path / f"j{i}.json").read_text()) for i in range(8)]
    assert len(done) == 8
    assert {d["device"] for d in done} == {"0", "1", "2"}  # more jobs than devices: every device was used
    assert all(d["visible"] == d["device"] for d in done)  # the job saw only its own device
    for device in ("0", "1", "2"):
        spans = sorted((d["start"], d["end"]) for d in done if d["device"] == device)
        assert all(prev_end <= start for (_, prev_end), (start, _) in zip(spans, spans[1:], strict=False)), spans
    # Three devices, eight jobs of 0.4 s: they ran three at a time, not one after another.
    assert max(d["end"] for d in done) - min(d["start"] for d in done) < 8 * 0.4


def test_a_killed_job_frees_its_device(tmp_path):
    holder = _job(tmp_path, "holder", "1", 600)
    assert holder.stdout.readline().split() == ["held", "0"]
    waiter = _job(tmp_path, "waiter", "1", 0.0)
    time.sleep(0.5)
    assert waiter.poll() is None  # the only device is held: the second job waits instead of sharing it
    holder.send_signal(signal.SIGKILL)
    holder.wait(10)
    assert waiter.wait(10) == 0
    assert json.loads((tmp_path / "waiter.json").read_text())["device"] == "0"


def test_a_device_assigned_by_slurm_is_used_as_it_is_and_not_locked(tmp_path):
    env = {"SLURM_JOB_ID": "42", "CUDA_VISIBLE_DEVICES": "0", "KERNELCRAFT_GPU_LOCK_DIR": str(tmp_path / "locks")}
    with gpu_lease(env) as lease:
        assert (lease.device, lease.how, lease.lock) == ("0", "scheduler", None)
        assert env["CUDA_VISIBLE_DEVICES"] == "0"
    assert not (tmp_path / "locks").exists()


def test_the_lease_stays_within_the_devices_the_user_made_visible_and_restores_them(tmp_path):
    env = {"CUDA_VISIBLE_DEVICES": "1,3", "KERNELCRAFT_GPU_LOCK_DIR": str(tmp_path / "locks")}
    other = dict(env)  # a second job, started with the same environment
    assert host_devices(env) == ["1", "3"]
    with gpu_lease(env) as first, gpu_lease(other) as second:
        assert {first.device, second.device} == {"1", "3"}
        assert (env["CUDA_VISIBLE_DEVICES"], other["CUDA_VISIBLE_DEVICES"]) == (first.device, second.device)
    assert env["CUDA_VISIBLE_DEVICES"] == other["CUDA_VISIBLE_DEVICES"] == "1,3"


def test_a_host_without_gpus_leases_nothing(tmp_path):
    env = {"CUDA_VISIBLE_DEVICES": "", "KERNELCRAFT_GPU_LOCK_DIR": str(tmp_path / "locks")}
    with gpu_lease(env) as lease:
        assert lease is None
