"""The run manifest (DESIGN.md §6): what produced these results, so a run can be compared and reproduced."""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

from kernelcraft.context import RunContext

_PACKAGES = ("kernelcraft", "torch", "numpy", "snakemake", "jinja2", "jsonschema", "cuda-bindings",
             "nvidia-cuda-nvrtc", "triton", "openai", "google-genai")


def _run(cmd: list[str], cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_state(repo: Path) -> dict:
    """The commit and dirty state of the checkout the workflow ran from.

    Inside the container there is no .git: the image records the commit it was built from (build arguments, see
    containers/Dockerfile), so a run there still names its source. Nulls when neither is known.
    """
    commit = _run(["git", "rev-parse", "HEAD"], cwd=repo)
    if commit is None and os.environ.get("KERNELCRAFT_GIT_COMMIT"):
        dirty = os.environ.get("KERNELCRAFT_GIT_DIRTY", "").strip()
        return {"commit": os.environ["KERNELCRAFT_GIT_COMMIT"], "dirty": int(dirty) > 0 if dirty.isdigit() else None,
                "source": "image"}
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo)
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def container_state() -> dict | None:
    """Which container the run's jobs ran in, or None on the host.

    Docker marks its containers with /.dockerenv; Apptainer sets APPTAINER_CONTAINER (the image file). The image's
    reference is baked into it (KERNELCRAFT_IMAGE); its digest exists only after the build, so the user passes it
    (KERNELCRAFT_IMAGE_DIGEST, README "Containers") and it is recorded when given.
    """
    sif = os.environ.get("APPTAINER_CONTAINER") or os.environ.get("SINGULARITY_CONTAINER")
    runtime = "apptainer" if sif else "docker" if os.path.exists("/.dockerenv") else None
    image = os.environ.get("KERNELCRAFT_IMAGE")
    if runtime is None and image is None:
        return None
    return {"runtime": runtime, "image": image, "image_file": sif,
            "digest": os.environ.get("KERNELCRAFT_IMAGE_DIGEST")}


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def gpu_info() -> list[dict]:
    """GPU names, driver and memory through nvidia-smi: no CUDA context is created for the manifest."""
    if not shutil.which("nvidia-smi"):
        return []
    out = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
                "--format=csv,noheader"])
    gpus = []
    for line in (out or "").splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4:
            gpus.append({"name": parts[0], "driver": parts[1], "memory": parts[2], "compute_capability": parts[3]})
    return gpus


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _utc(timestamp: float) -> str:
    return _dt.datetime.fromtimestamp(timestamp, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def nvrtc_version() -> str | None:
    try:
        from kernelcraft.harness.build.nvrtc import nvrtc_version as version

        return version()
    except Exception:  # noqa: BLE001 - no NVRTC on this host: nothing was compiled with it
        return None


def config_digest(config: dict) -> str:
    """sha256 of the resolved configuration (keys sorted): two runs with the same digest ran the same
    experiment, whatever the files and command lines that produced it."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def gpu_jobs(stage_files: list[str] | None) -> dict[str, str]:
    """Which GPU each GPU job ran on (the baseline and evaluate jobs record their lease, kernelcraft.devices), by
    job: evidence that concurrent jobs used distinct devices, next to the timings they produced."""
    used: dict[str, str] = {}
    for path in map(Path, stage_files or []):
        if path.name == "baseline.json":  # <problem>/baseline.json
            source, job = path, f"{path.parent.name} baseline"
        else:  # <problem>/round_<r>/select.json: that round's evaluate job wrote benchmark.json beside it
            source, job = path.with_name("benchmark.json"), f"{path.parent.parent.name} evaluate {path.parent.name}"
        try:
            gpu = json.loads(source.read_text()).get("gpu")
        except (OSError, ValueError):
            continue
        if gpu is not None:
            used[job] = str(gpu)
    return used


def build_manifest(ctx: RunContext, workflow_dir: str | Path | None = None,
                   stage_files: list[str] | None = None) -> dict:
    """What produced the run. ``stage_files`` are the run's finished stage outputs: the earliest of them dates the
    start, and the manifest, written after the last, the end."""
    import torch

    config = {k: v for k, v in ctx.config.items() if not k.startswith("_")}
    now = time.time()
    mtimes = [os.stat(p).st_mtime for p in stage_files or [] if os.path.exists(p)]
    return {
        "run": ctx.config["run"],
        "created": _utc(now),
        "started": _utc(min(mtimes)) if mtimes else None,
        "finished": _utc(now),
        "host": platform.node(),
        "git": git_state(Path(workflow_dir) if workflow_dir is not None else Path.cwd()),
        "packages": package_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpus": gpu_info(),
        "gpu_jobs": gpu_jobs(stage_files),
        "torch_cuda": torch.version.cuda,
        "nvrtc": nvrtc_version(),
        "nvcc": (_run(["nvcc", "--version"]) or "").splitlines()[-1:] or None,
        "container": container_state(),
        "backend": ctx.backend,
        "size": ctx.size,
        "cuda_arch": ctx.cuda_arch,
        "problems": ctx.problems,
        "seed": ctx.seed,
        "config": config,
        "config_sha256": config_digest(ctx.config),
        # The ensembles the run used, what was configured, and which models fell back to the offline proposer.
        "models": (ctx.config.get("_resolved") or {}).get("models"),
    }
