"""Everything a stage needs to know about the run, resolved once from the config.

The Snakefile resolves ``backend: auto`` and ``build.cuda_arch: auto`` when the workflow starts and stores the
answers under ``config["_resolved"]``, so every job of a run agrees on them even if a job runs where the GPU is not
visible (a compile job on a CPU node, say).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kernelcraft import layout
from kernelcraft.config import resolve_backend, resolve_size

RESOLVED_KEY = "_resolved"


def resolve(config: dict) -> dict:
    """The values ``auto`` stands for on this machine, plus the problem list."""
    from kernelcraft.harness.gpu import detect_cuda_arch
    from kernelcraft.problems import discover
    from kernelcraft.search.ensemble import may_propose

    backend = resolve_backend(config["backend"])
    size = resolve_size(config["problems"]["size"], backend)
    arch = config["build"]["cuda_arch"]
    if arch == "auto":
        arch = detect_cuda_arch() if backend == "cuda" else None
    pcfg = config["problems"]
    problems = discover(pcfg["builtin"], pcfg["dirs"], pcfg["include"], pcfg["exclude"], size)
    return {
        "backend": backend,
        "size": size,
        "cuda_arch": arch,
        "problems": {p.id: str(p.path) for p in problems},
        "searched": [p.id for p in problems if may_propose(config["models"], p.op, backend)],
    }


def resolve_or_exit(config: dict) -> dict:
    """For the Snakefile: resolve, or stop with one line (unknown problem id, bad problem directory...)."""
    try:
        return resolve({k: v for k, v in config.items() if not k.startswith("_")})
    except (ValueError, OSError) as err:
        raise SystemExit(f"kernelcraft: {err}") from None


@dataclass(frozen=True)
class RunContext:
    config: dict
    root: Path
    backend: str
    size: str
    cuda_arch: str | None
    problems: dict[str, str] = field(default_factory=dict)
    searched: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: dict, results: str | Path = "results") -> RunContext:
        resolved = config.get(RESOLVED_KEY) or resolve(config)
        return cls(
            config=config,
            root=layout.run_dir(results, config["run"]),
            backend=resolved["backend"],
            size=resolved["size"],
            cuda_arch=resolved["cuda_arch"],
            problems=dict(resolved["problems"]),
            searched=tuple(resolved.get("searched", resolved["problems"])),
        )

    @property
    def device(self) -> str:
        return "cuda" if self.backend == "cuda" else "cpu"

    @property
    def seed(self) -> int:
        return int(self.config["seed"])

    def problem_path(self, problem: str) -> str:
        try:
            return self.problems[problem]
        except KeyError:
            raise KeyError(f"problem {problem!r} is not part of run {self.config['run']!r}") from None

    def load_problem(self, problem: str):
        from kernelcraft.problems import load_problem

        return load_problem(self.problem_path(problem), self.size)

    def worker_env(self, *, gpu: bool, threads: int = 1) -> dict[str, str]:
        """Environment of candidate processes: the build cache of this run, the CUDA target, and, for compile jobs
        on the cuda backend, no GPU at all (builds must not depend on one)."""
        from kernelcraft.harness.build import inline_build_env

        build = layout.build_dir(self.root).resolve()
        env = {
            "KERNELCRAFT_BUILD_DIR": str(build),
            "OMP_NUM_THREADS": str(max(1, threads)),
            "PYTHONUNBUFFERED": "1",
        }
        if self.cuda_arch:
            env["KERNELCRAFT_CUDA_ARCH"] = self.cuda_arch
        env.update(inline_build_env(self.cuda_arch if self.backend == "cuda" else None, max(1, threads), build))
        if self.backend == "cuda" and not gpu:
            env["CUDA_VISIBLE_DEVICES"] = ""
        return env

    def log_path(self, *parts: str) -> Path:
        path = layout.logs_dir(self.root).joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path
