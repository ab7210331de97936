"""Everything a stage needs to know about the run, resolved once from the config.

The Snakefile resolves ``backend: auto`` and ``build.cuda_arch: auto`` when the workflow starts and stores the
answers under ``config["_resolved"]``, so every job of a run agrees on them even if a job runs where the GPU is not
visible (a compile job on a CPU node, say). The same goes for the models: an entry whose API key is not set where
the workflow starts is replaced by the offline proposer once, loudly, and every job uses the effective ensembles.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kernelcraft import layout
from kernelcraft.config import ConfigError, resolve_backend, resolve_size

RESOLVED_KEY = "_resolved"
ROLES = ("ideas", "implement")
OFFLINE_ENTRY = {"provider": "offline", "model": "offline-v1"}


def _warn(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def resolve_models(config: dict, env: Mapping[str, str] | None = None,
                   warn: Callable[[str], None] = _warn) -> dict:
    """The ensembles the run will actually use, and why they differ from the configured ones.

    An openai or gemini entry whose key variable is not set is replaced by the offline proposer (its weight goes
    to one offline entry per role, so two replaced models do not become two identical offline proposers), with one
    warning per model naming the variable; ``llm.fallback: error`` stops instead. Replay mode needs no keys: the
    answers come from the recorded run. Returns ``{"ideas": [...], "implement": [...], "requested": {...},
    "substituted": [{"model", "env", "roles"}]}``."""
    from kernelcraft.llm.models import key_env_names, needs_key
    from kernelcraft.llm.settings import replay_transcripts

    env = os.environ if env is None else env
    llm = config.get("llm") or {}
    requested = {role: [dict(e) for e in config["models"][role]] for role in ROLES}
    if llm.get("replay"):
        replay_transcripts(llm["replay"])  # one-line error when it is not a recorded run
    missing: dict[str, dict] = {}
    effective: dict[str, list[dict]] = {}
    for role in ROLES:
        kept: list[dict] = []
        offline_weight = 0.0
        offline_at: int | None = None
        for entry in requested[role]:
            names = key_env_names(entry)
            lacks_key = (not llm.get("replay") and needs_key(entry["provider"])
                         and not any(env.get(n) for n in names))
            if not lacks_key:
                kept.append(entry)
                continue
            label, wanted = f"{entry['provider']}/{entry['model']}", " or ".join(names)
            missing.setdefault(f"{label} {wanted}", {"model": label, "env": wanted, "roles": []})["roles"].append(role)
            offline_weight += float(entry.get("weight", 1))
            offline_at = len(kept) if offline_at is None else offline_at
        if offline_at is not None:
            same = next((e for e in kept if e["provider"] == "offline" and e["model"] == OFFLINE_ENTRY["model"]), None)
            if same is not None:
                same["weight"] = float(same.get("weight", 1)) + offline_weight
            else:
                kept.insert(offline_at, {**OFFLINE_ENTRY, "weight": offline_weight})
        effective[role] = kept
    for item in missing.values():
        where = ", ".join(f"models.{r}" for r in item["roles"])
        if llm.get("fallback", "offline") == "error":
            raise ConfigError(f"{item['model']} ({where}) needs an API key in {item['env']}, which is not set, and "
                              f"llm.fallback is error; set the variable, or llm.fallback: offline to use the offline "
                              f"proposer instead")
        warn(f"kernelcraft: warning: {item['env']} is not set, so {item['model']} ({where}) is replaced by the "
             f"offline proposer; set the variable for live calls, or llm.fallback: error to stop instead")
    return {**effective, "requested": requested, "substituted": list(missing.values())}


# Where the traced-graph recognitions of problem files are kept, relative to the workflow's working directory (on
# the shared filesystem under a cluster): tracing imports torch, so the DAG is planned from these after the first run.
RECOGNITION_CACHE = layout.recognition_dir("results")


def resolve(config: dict, env: Mapping[str, str] | None = None) -> dict:
    """The values ``auto`` stands for on this machine, the problem list and the effective model ensembles."""
    from kernelcraft.harness.build.gpu import detect_cuda_arch
    from kernelcraft.problems import discover
    from kernelcraft.problems.recognise import recognise_cached
    from kernelcraft.search.ensemble import may_propose

    backend = resolve_backend(config["backend"])
    size = resolve_size(config["problems"]["size"], backend)
    arch = config["build"]["cuda_arch"]
    if arch == "auto":
        arch = detect_cuda_arch() if backend == "cuda" else None
    pcfg = config["problems"]
    problems = discover(pcfg["builtin"], pcfg["dirs"], pcfg["include"], pcfg["exclude"], size)
    models = resolve_models(config, env)
    return {
        "backend": backend,
        "size": size,
        "cuda_arch": arch,
        "problems": {p.id: str(p.path) for p in problems},
        "searched": [p.id for p in problems
                     if may_propose(models, lambda p=p: recognise_cached(p, RECOGNITION_CACHE).op, backend)],
        "models": models,
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
        """``config["models"]`` of the context is the effective ensembles (keyless entries replaced by the
        offline proposer); what was configured stays in ``config["_resolved"]["models"]["requested"]``."""
        resolved = config.get(RESOLVED_KEY) or resolve(config)
        models = resolved.get("models")
        if models is not None:
            config = {**config, "models": {role: models[role] for role in ROLES}}
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

    def worker_env(self, *, gpu: bool, threads: int = 1, spares: int = 0) -> dict[str, str]:
        """Environment of candidate processes: the build cache of this run, the CUDA target, and, for compile jobs
        on the cuda backend, no GPU at all (builds must not depend on one); GPU jobs that run one candidate after
        another keep ``spares`` children with their CUDA context ready (a job with one task wants none: a spare
        warming up beside it would only share the GPU with its timing)."""
        from kernelcraft.harness.build import inline_build_env
        from kernelcraft.harness.sandbox.zygote import SPARE_ENV

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
        if self.backend == "cuda" and gpu and spares > 0:
            env[SPARE_ENV] = str(spares)
        return env

    def log_path(self, *parts: str) -> Path:
        path = layout.logs_dir(self.root).joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path
