"""What the offline-proposer test modules share: a private build cache (CUDA kernels for sm_90a where no GPU says
otherwise), importing a generated candidate file, the suite's problems, the kernels a search can reach, and checking
a candidate against its reference."""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import os
from concurrent.futures import ThreadPoolExecutor
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


def close(got: torch.Tensor, want: torch.Tensor, tol: float = 1e-4) -> bool:
    """atol=rtol=tol, and also relative to the output's scale (softmax outputs are ~1/N, far below atol)."""
    if got.shape != want.shape:
        return False
    if want.numel() == 0:
        return True
    scale = want.abs().max()
    return bool(torch.allclose(got, want, atol=tol, rtol=tol)
                and ((got - want).abs() <= tol / 10 * scale + tol * want.abs()).all())


def odd_inputs(shape: tuple[int, ...], device: str) -> list[torch.Tensor]:
    """A plain input, one with a large offset (cancellation), and a misaligned view (scalar fallbacks)."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(shape, generator=gen) * 2 + 0.5
    flat = torch.randn(x.numel() + 1, generator=gen)[1:].view(shape)  # contiguous, 4 bytes off 16-byte alignment
    return [x.to(device), (x + 30.0).to(device), flat.to(device)]


@contextlib.contextmanager
def one_thread():
    """torch's CPU build and the C kernels share one OpenMP runtime; with both pools busy on a 2-core CI box
    the spinning threads slow each other several-fold, and correctness does not need the parallelism."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def check_candidate(module, problem, inputs: list, device: str, tol: float = 1e-4) -> None:
    """ModelNew and Model built from the same seed agree on every input (to ``tol``); weights made non-trivial
    first. An input is a tensor, or a tuple of forward arguments."""
    init = list(problem.init_inputs())
    mod = problem.load_module()
    torch.manual_seed(0)
    ref = mod.Model(*init)
    torch.manual_seed(0)
    new = module.ModelNew(*init)
    assert [n for n, _ in ref.named_parameters()] == [n for n, _ in new.named_parameters()]
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p_ref, p_new in zip(ref.parameters(), new.parameters(), strict=True):
            assert torch.equal(p_ref, p_new)
            r = torch.randn(p_ref.shape, generator=gen)
            p_ref.copy_(r)
            p_new.copy_(r)
    ref, new = ref.to(device), new.to(device)
    with torch.no_grad():
        for x in inputs:
            args = x if isinstance(x, tuple) else (x,)
            want = ref(*[a.clone() if isinstance(a, torch.Tensor) else a for a in args])
            got = new(*[a.clone() if isinstance(a, torch.Tensor) else a for a in args])
            err = (got - want).abs().max().item() if want.numel() else 0.0
            shapes = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]
            assert close(got, want, tol), f"{shapes[0] if len(shapes) == 1 else shapes}: max abs err {err:.3g}"


def sampled_jobs(problems: dict, backend: str, parents: list[dict], every: int = 1) -> list[tuple]:
    """(problem, spec, features) for every ``every``-th kernel a search reaches from ``parents``, per problem."""
    from kernelcraft.search.offline_kernels.opspec import describe

    return [(p, s, f) for p in problems.values() for s in [describe(p)]
            for f in reachable(s, backend, parents)[::every]]


def five_round_sources(problem, backend: str, seed: int = 4, min_kinds: int = 1) -> list[str]:
    """The candidate files of five offline rounds (four ideas of two implementations each, every round seeded by the
    previous round's first candidate), asserting that no idea is proposed twice for one parent, that a round has
    fewer than four ideas only when its seed has no other untried idea, and that each round's ideas span at least
    ``min_kinds`` kinds (or all of them are of different kinds)."""
    from kernelcraft.search.offline import OfflineProposer

    p = OfflineProposer(seed)
    seeds = [{"id": "reference", "source": None, "features": None}]
    tried, sources, seen = [], [], set()
    for round_ in range(1, 6):
        ideas = p.ideas(problem, backend, seeds, tried, 4, round_)
        assert ideas and len({i["kind"] for i in ideas}) >= min(min_kinds, len(ideas))
        if len(ideas) < 4:  # the seed's catalogue is exhausted: a fresh proposer finds nothing else to offer
            assert OfflineProposer(seed).ideas(problem, backend, seeds, tried + ideas, 1, round_) == []
        for idea in ideas:
            pair = (idea["spec"]["key"], idea["spec"]["parent_digest"])
            assert pair not in seen
            seen.add(pair)
        impls = [p.implement(problem, backend, i, seeds[0], 2, round_) for i in ideas]
        sources += [x["source"] for impl in impls for x in impl]
        tried += ideas
        seeds = [{"id": f"r{round_}", "source": impls[0][0]["source"], "features": impls[0][0]["features"]}]
    return sources


def import_candidates(jobs, folder: Path, backend: str = "cuda") -> list:
    """Each (problem, spec, features) job's candidate module, or the exception its build raised, in job order.
    Built on every core at once (NVRTC and the C compiler run outside the GIL): a family's reachable kernels are
    a few hundred builds, which one at a time outlast a GPU test's budget."""
    from kernelcraft.search.offline_kernels import candidate_source

    def build(job):
        try:
            return import_source(candidate_source(job[1], backend, job[2], "t", "reference"), folder)
        except Exception as exc:  # noqa: BLE001 - reported by the caller, every failing combination at once
            return exc

    with ThreadPoolExecutor(max(2, os.cpu_count() or 2)) as pool:
        return list(pool.map(build, jobs))


def build_failures(jobs, folder: Path) -> list[str]:
    """One line per (problem, spec, features) job whose CUDA candidate does not build."""
    return [f"{job[0].id} {job[2]}: {str(m)[:400]}" for job, m in zip(jobs, import_candidates(jobs, folder),
                                                                       strict=True) if isinstance(m, Exception)]


def gpu_mismatches(jobs, folder: Path, inputs, tol=lambda f: 1e-4) -> list[str]:
    """One line per job whose CUDA candidate does not build or differs from its reference on the GPU on
    ``inputs(problem, spec, features)``, to ``tol(features)``."""
    failures = []
    for (prob, spec, f), module in zip(jobs, import_candidates(jobs, folder), strict=True):
        try:
            if isinstance(module, Exception):
                raise AssertionError(f"build: {str(module)[:300]}")
            check_candidate(module, prob, inputs(prob, spec, f), "cuda", tol(f))
        except AssertionError as exc:
            failures.append(f"{prob.id} {f}: {exc}")
    return failures
