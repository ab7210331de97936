"""What the offline-proposer test modules share: a private build cache (CUDA kernels for sm_90a where no GPU says
otherwise), importing a generated candidate file, the suite's problems, and the kernels a search can reach."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
from pathlib import Path

import pytest
import torch

from kernelcraft.problems import builtin_dir, load_problem
from kernelcraft.search.offline_kernels import generator
from kernelcraft.search.offline_kernels.catalogue import catalogue

GPU = torch.cuda.is_available()


@pytest.fixture(scope="module", autouse=True)
def build_env(tmp_path_factory):
    """Kernels build into a private cache; CUDA ones for sm_90a unless a GPU says otherwise. Autouse in every
    module that imports it."""
    old = {k: os.environ.get(k) for k in ("KERNELCRAFT_BUILD_DIR", "KERNELCRAFT_CUDA_ARCH")}
    os.environ["KERNELCRAFT_BUILD_DIR"] = str(tmp_path_factory.mktemp("build"))
    if not GPU:
        os.environ["KERNELCRAFT_CUDA_ARCH"] = "sm_90a"
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def suite(pid: str, size: str = "small"):
    return load_problem(builtin_dir() / f"{pid}.py", size)


_counter = itertools.count()


def import_source(source: str, folder: Path):
    """Import a candidate file (which builds its kernels) and return the module."""
    name = f"offline_cand_{next(_counter)}"
    path = folder / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def distinct_normalised(spec, backend: str, features: list[dict]) -> list[dict]:
    """The feature dicts normalised by their generator, each distinct kernel once, in order."""
    gen = generator(spec.family, backend)
    out, seen = [], set()
    for f in features:
        g = gen.normalise(spec, f)
        key = json.dumps(g, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(g)
    return out


def reachable(spec, backend: str, parents: list[dict]) -> list[dict]:
    """Every catalogue idea applied to each parent, plus each tunable changed alone: the kernels a search can
    write from those parents, normalised and distinct."""
    gen = generator(spec.family, backend)
    kids = []
    for parent in parents:
        p = gen.normalise(spec, gen.baseline(spec) | parent)
        kids += [p] + [p | i.delta for i in catalogue(spec.family, backend) if i.applies(spec, p)]
        kids += [p | {k: v} for k, values in gen.TUNABLES.items() for v in values]
    return distinct_normalised(spec, backend, kids)
