"""The model prompts: Jinja templates under ``workflow/templates/prompts`` rendered into chat messages.

The wording lives in templates, not in code, so it can be read and changed as text, and the rendered messages are
the Request's messages, so every transcript holds exactly what the model was shown. Each template defines a
``system`` and a ``user`` block; one message per block. The worked example in the implementation prompt is a real
candidate file under ``prompts/examples/`` (tests build and verify them), chosen by backend and build path.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jinja2

from kernelcraft.llm.types import Message
from kernelcraft.search.offline_kernels.catalogue import KINDS

PROMPTS = "prompts"
BUILD_PATHS = ("fast", "load_inline")
BLOCKS = ("system", "user")


def example_path(templates: str | Path, backend: str, build_path: str) -> Path:
    """The worked example for a backend (cuda | cpu) and build path (fast | load_inline)."""
    if build_path not in BUILD_PATHS:
        raise ValueError(f"build path {build_path!r} is not one of {', '.join(BUILD_PATHS)}")
    if backend not in ("cuda", "cpu"):
        raise ValueError(f"backend {backend!r} is not one of cuda, cpu")
    return Path(templates) / PROMPTS / "examples" / f"{build_path}_{backend}.py"


def num(value: Any, fmt: str, missing: str = "not measured") -> str:
    """A measurement for the prompt, or words saying it is missing (a model must not read None as zero)."""
    if value is None or isinstance(value, bool):
        return missing
    try:
        return fmt % float(value)
    except (TypeError, ValueError):
        return missing


@functools.cache
def _environment(prompts_dir: str) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(prompts_dir), undefined=jinja2.StrictUndefined, autoescape=False,
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False,
    )
    env.filters["num"] = num
    return env


def render(templates: str | Path, name: str, **variables: Any) -> tuple[Message, ...]:
    """Render ``prompts/<name>.j2`` into a system and a user message."""
    env = _environment(str(Path(templates).resolve() / PROMPTS))
    template = env.get_template(f"{name}.j2")
    messages = []
    for block, role in zip(BLOCKS, ("system", "user"), strict=True):
        if block not in template.blocks:
            raise ValueError(f"prompt template {name}.j2 has no {{% block {block} %}}")
        text = "".join(template.blocks[block](template.new_context(variables))).strip()
        messages.append(Message(role=role, content=text + "\n"))
    return tuple(messages)


def _problem_vars(problem: Any, backend: str, hardware: str) -> dict[str, Any]:
    return {"problem_id": str(problem.id), "problem_source": Path(problem.path).read_text(), "backend": backend,
            "hardware": hardware}


def ideas_messages(templates: str | Path, problem: Any, backend: str, hardware: str, seeds: list[dict],
                   tried: list[dict], count: int) -> tuple[Message, ...]:
    """The ideas prompt: the seeds with code and measurements, every idea tried so far, the six kinds, N ideas."""
    seed_vars = [{"id": str(s.get("id")), "source": s.get("source"), "time_ms": s.get("time_ms"),
                  "speedup_eager": s.get("speedup_eager"), "floor_ms": s.get("floor_ms"),
                  "pct_of_floor": s.get("pct_of_floor"), "idea": s.get("idea"),
                  "bank_file": s.get("bank_file")} for s in seeds]
    tried_vars = [{"kind": t.get("kind"), "text": str(t.get("text", "")), "parent": str(t.get("parent", ""))}
                  for t in tried]
    return render(templates, "ideas", **_problem_vars(problem, backend, hardware), seeds=seed_vars,
                  tried=tried_vars, count=int(count), kinds=KINDS)


def _contract_vars(templates: str | Path, backend: str, build_path: str, policy: str,
                   tolerance: dict) -> dict[str, Any]:
    return {"build_path": build_path, "pytorch_compute": policy, "atol": tolerance["atol"],
            "rtol": tolerance["rtol"], "example": example_path(templates, backend, build_path).read_text()}


def implement_messages(templates: str | Path, problem: Any, backend: str, hardware: str, idea: dict, parent: dict,
                       *, build_path: str, policy: str, tolerance: dict) -> tuple[Message, ...]:
    """The implementation prompt: the idea, the parent kernel (the reference in round 1), the contract and one
    worked example for the backend and build path."""
    parent_vars = {"id": str(parent.get("id", "reference")), "source": parent.get("source"),
                   "time_ms": parent.get("time_ms"), "speedup_eager": parent.get("speedup_eager")}
    return render(templates, "implement", **_problem_vars(problem, backend, hardware),
                  **_contract_vars(templates, backend, build_path, policy, tolerance),
                  idea={"kind": idea.get("kind"), "text": str(idea.get("text", ""))}, parent=parent_vars)


def repair_messages(templates: str | Path, problem: Any, backend: str, hardware: str, source: str, errors: str,
                    *, idea: dict | None, build_path: str, policy: str, tolerance: dict) -> tuple[Message, ...]:
    """The repair prompt: a failed candidate and the tail of its compile or verification errors."""
    idea_vars = {"kind": idea.get("kind"), "text": str(idea.get("text", ""))} if idea else None
    return render(templates, "repair", **_problem_vars(problem, backend, hardware),
                  **_contract_vars(templates, backend, build_path, policy, tolerance),
                  source=source, errors=errors, idea=idea_vars)


# GPU families by CUDA target, for the prompts; by target rather than by the visible GPU so a job that runs on a
# node without one (or on another node after an interruption) renders the same prompt, and finds its transcript.
GPU_FAMILIES = {"sm_70": "Volta (V100)", "sm_75": "Turing (T4)", "sm_80": "Ampere (A100)",
                "sm_86": "Ampere (A10, A40, RTX 30xx)", "sm_89": "Ada Lovelace (L4, L40, RTX 40xx)",
                "sm_90": "Hopper (H100, H200)", "sm_100": "Blackwell (B200)", "sm_120": "Blackwell (RTX 50xx)"}


def describe_hardware(backend: str, cuda_arch: str | None) -> str:
    """What the prompts say about the machine: the GPU family of the CUDA target, or the CPU model and cores."""
    if backend == "cuda":
        if not cuda_arch:
            return "an NVIDIA GPU"
        family = GPU_FAMILIES.get(cuda_arch.rstrip("af"))
        return f"an NVIDIA {family + ' ' if family else ''}GPU, CUDA target {cuda_arch}"
    import os

    from kernelcraft.manifest import cpu_model

    return f"{cpu_model()}, {os.cpu_count()} cores"
