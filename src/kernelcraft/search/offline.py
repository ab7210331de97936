"""The built-in offline proposer: optimisation ideas and real kernels with no network and no model.

It stands in for a language model so the whole workflow finds correct, fast kernels without an API key, and it
gives the search something deterministic to test against. A candidate is a feature dict for a (family,
backend) generator (see ``offline_kernels``); the reference maps to the generator's plain baseline kernel; an
idea is a catalogue entry -- a sentence plus the feature delta that implements it -- applied to a seed's
features; implementations of one idea differ only in tunables the idea leaves free (threads per block, loads
in flight, tile sizes...).

Determinism: every random choice comes from a ``random.Random`` seeded with sha256 of (seed, problem id,
backend, round, purpose), never from ``hash()`` or global state, so the same arguments and seed give the same
ideas and the same source bytes in any process.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from typing import Any

from kernelcraft.search.offline_kernels import BACKENDS, candidate_source, generator
from kernelcraft.search.offline_kernels.candidate import FEATURES_LINE
from kernelcraft.search.offline_kernels.catalogue import KINDS, Idea, catalogue, context
from kernelcraft.search.offline_kernels.opspec import OpSpec, Unsupported, describe

__all__ = ["KINDS", "OfflineProposer"]

STRICT_BELOW = 1e-3  # a tolerance under this (TF32's rounding alone is 2^-11 ~ 5e-4 of every product) is strict
STRICT_MISS = 0.05  # prior factor for an idea whose kernel would miss 1e-4 of the exact result
STRICT_REACH = 4.0  # prior factor for an idea that brings a kernel that misses it within 1e-4


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


class OfflineProposer:
    """Ideas from a fixed catalogue and implementations from code generators; deterministic given ``seed``."""

    name = "offline"

    def __init__(self, seed: int, tolerance: dict | None = None) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"OfflineProposer: seed must be an int, got {type(seed).__name__}")
        self.seed = seed
        # the run's tolerance, as a model reads it in its prompt: under 1e-3 (both atol and rtol) ideas whose kernel
        # is known to miss 1e-4 of the exact result are rarely proposed, and those that reach it come first
        tol = tolerance or {}
        self.strict = bool(tol) and max(float(tol.get("atol", 1.0)), float(tol.get("rtol", 1.0))) < STRICT_BELOW
        self._specs: dict[tuple[str, str, str], OpSpec | Unsupported] = {}

    # -- problem support -----------------------------------------------------------------------------

    def spec(self, problem: Any) -> OpSpec:
        """The generator's view of ``problem`` (cached); Unsupported says why there is none."""
        key = (str(problem.id), str(getattr(problem, "path", "")), str(getattr(problem, "size", "")))
        if key not in self._specs:
            try:
                self._specs[key] = describe(problem)
            except Unsupported as exc:
                self._specs[key] = exc
            except Exception as exc:  # noqa: BLE001 - a reference we cannot even inspect is simply unsupported
                first = str(exc).splitlines()[0] if str(exc) else ""
                self._specs[key] = Unsupported(f"cannot inspect the reference: {type(exc).__name__}: {first}")
        found = self._specs[key]
        if isinstance(found, Unsupported):
            raise found
        return found

    @staticmethod
    def may_support(op: str | None, backend: str) -> bool:
        """A check that needs no torch and no import of the problem: False means :meth:`supports` is surely
        False too, so the workflow plans no search rounds for the problem (only its baseline)."""
        from kernelcraft.search.offline_kernels.opspec import FAMILIES

        return backend in BACKENDS and op in FAMILIES

    def supports(self, problem: Any, backend: str) -> bool:
        """True when a generator exists for the problem's op on ``backend`` ("cuda" or "cpu") and the
        reference is exactly that op (matmul and conv families are not generated yet)."""
        if backend not in BACKENDS:
            return False
        try:
            self.spec(problem)
        except Unsupported:
            return False
        return True

    def why_unsupported(self, problem: Any, backend: str) -> str | None:
        """A one-line reason when :meth:`supports` is False, else None."""
        if backend not in BACKENDS:
            return f"backend {backend!r} is not one of {', '.join(BACKENDS)}"
        try:
            self.spec(problem)
        except Unsupported as exc:
            return str(exc)
        return None

    # -- helpers -------------------------------------------------------------------------------------

    def _rng(self, problem: Any, backend: str, round_: int, *purpose: object) -> random.Random:
        text = json.dumps([self.seed, str(problem.id), backend, int(round_), *map(str, purpose)])
        return random.Random(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big"))

    @staticmethod
    def _check_backend(backend: str) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r} is not supported by the offline proposer; use one of "
                             + ", ".join(BACKENDS))

    def parent_features(self, spec: OpSpec, backend: str, seed: dict | None) -> dict:
        """A seed's features for this generator: its own dict, the ``# features:`` header of its source,
        or (the reference, or a kernel some other proposer wrote) the generator's baseline."""
        gen = generator(spec.family, backend)
        feats = seed.get("features") if seed else None
        if not (isinstance(feats, dict) and feats.get("gen") == gen.GEN):
            feats = None
            source = seed.get("source") if seed else None
            if isinstance(source, str):
                match = FEATURES_LINE.search(source)
                if match:
                    try:
                        parsed = json.loads(match.group(1))
                    except ValueError:
                        parsed = None
                    if isinstance(parsed, dict) and parsed.get("gen") == gen.GEN:
                        feats = parsed
        return gen.normalise(spec, feats if feats is not None else gen.baseline(spec))

    def _options(self, spec: OpSpec, backend: str, parent: dict) -> list[tuple[Idea, dict]]:
        """(idea, child features) for every catalogue idea that changes ``parent``."""
        gen = generator(spec.family, backend)
        out = []
        for idea in catalogue(spec.family, backend):
            if not idea.applies(spec, parent):
                continue
            child = gen.normalise(spec, parent | idea.delta)
            if child != parent:
                out.append((idea, child))
        return out

    @staticmethod
    def _text(idea: Idea, spec: OpSpec, child: dict) -> str:
        try:
            return idea.text.format(**context(spec, child))
        except (KeyError, IndexError, ValueError):
            return idea.text

    # -- ideas ---------------------------------------------------------------------------------------

    def ideas(self, problem: Any, backend: str, seeds: list[dict], tried: list[dict], n: int,
              round_: int) -> list[dict]:
        """``n`` ideas over the seeds (best seed first and most), never one already tried for the same parent
        features, spread over the six kinds; fewer only when the catalogue is exhausted for every seed."""
        self._check_backend(backend)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"ideas: n={n!r} must be a non-negative int (ideas per round)")
        if n == 0 or not seeds:
            return []
        spec = self.spec(problem)
        gen = generator(spec.family, backend)
        rng = self._rng(problem, backend, round_, "ideas")

        tried_pairs: set[tuple[str, str]] = set()
        tried_children: set[str] = set()
        tried_texts: set[tuple[str, str]] = set()
        for t in tried:
            sp = t.get("spec") if isinstance(t.get("spec"), dict) else {}
            if sp.get("gen") == gen.GEN and sp.get("key") and sp.get("parent_digest"):
                tried_pairs.add((str(sp["key"]), str(sp["parent_digest"])))
                if sp.get("child_digest"):
                    tried_children.add(str(sp["child_digest"]))
            tried_texts.add((" ".join(str(t.get("text", "")).split()), str(t.get("parent", ""))))

        pools: list[tuple[dict, str, list[tuple[Idea, dict, str]]]] = []
        seen_parents: set[str] = set()
        for seed in seeds:
            parent = self.parent_features(spec, backend, seed)
            pdig = _digest(parent)
            if pdig in seen_parents:
                continue
            seen_parents.add(pdig)
            pool = []
            for idea, child in self._options(spec, backend, parent):
                text = self._text(idea, spec, child)
                if (idea.key, pdig) in tried_pairs or _digest(child) in tried_children:
                    continue
                if (" ".join(text.split()), str(seed.get("id"))) in tried_texts:
                    continue
                pool.append((idea, child, text))
            pools.append((seed, pdig, pool))

        quotas = self._quotas(n, [len(p[2]) for p in pools])
        chosen: list[dict] = []
        children_now: set[str] = set()
        for (seed, pdig, pool), quota in zip(pools, quotas, strict=True):
            parent = self.parent_features(spec, backend, seed)
            weighted = [(self._weight(spec, gen, idea, parent, child), (idea, child, text))
                        for idea, child, text in pool]
            for idea, child, text in self._pick(weighted, quota, rng, children_now):
                cdig = _digest(child)
                children_now.add(cdig)
                delta = {k: child[k] for k in sorted(child) if child[k] != parent.get(k)}
                chosen.append({
                    "kind": idea.kind, "text": text, "parent": str(seed.get("id")),
                    "spec": {"proposer": self.name, "gen": gen.GEN, "key": idea.key, "delta": delta,
                             "features": child, "parent_digest": pdig, "child_digest": cdig},
                })
        return chosen

    @staticmethod
    def _quotas(n: int, sizes: list[int]) -> list[int]:
        """Split n over seeds, best first: weights 1, 1/2, 1/3...; what a seed cannot use moves on."""
        if not sizes:
            return []
        weights = [1.0 / (i + 1) for i in range(len(sizes))]
        total = sum(weights)
        exact = [n * w / total for w in weights]
        quotas = [math.floor(x) for x in exact]
        order = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - quotas[i]), i))
        for i in order[: n - sum(quotas)]:
            quotas[i] += 1
        quotas = [min(q, s) for q, s in zip(quotas, sizes, strict=True)]
        spare = n - sum(quotas)
        while spare > 0:
            moved = False
            for i, s in enumerate(sizes):
                if spare and quotas[i] < s:
                    quotas[i] += 1
                    spare -= 1
                    moved = True
            if not moved:
                break
        return quotas

    def _weight(self, spec: OpSpec, gen: Any, idea: Idea, parent: dict, child: dict) -> float:
        """The idea's prior, and under a strict tolerance the generator's judgement of the child's accuracy."""
        w = idea.prior(spec, parent)
        judge = getattr(gen, "within_1e4", None)
        if self.strict and judge is not None:
            if not judge(spec, child):
                w *= STRICT_MISS
            elif not judge(spec, parent):
                w *= STRICT_REACH
        return w

    @staticmethod
    def _pick(pool: list[tuple[float, tuple[Idea, dict, str]]], k: int, rng: random.Random,
              taken: set[str]) -> list[tuple[Idea, dict, str]]:
        """k ideas: kinds in round-robin (strongest kinds first), within a kind weighted sampling by weight."""
        if k <= 0:
            return []
        by_kind: dict[str, list[tuple[float, tuple[Idea, dict, str]]]] = {}
        for weight, item in pool:
            if _digest(item[1]) in taken:
                continue
            w = max(weight, 1e-6)
            # Efraimidis-Spirakis keys: sampling without replacement, proportional to weight
            key = rng.random() ** (1.0 / w)
            by_kind.setdefault(item[0].kind, []).append((key, item))
        for items in by_kind.values():
            items.sort(key=lambda t: -t[0])
        kinds = sorted(by_kind, key=lambda kd: (-by_kind[kd][0][0], KINDS.index(kd)))
        out: list[tuple[Idea, dict, str]] = []
        while len(out) < k and any(by_kind.values()):
            for kd in kinds:
                if by_kind[kd] and len(out) < k:
                    out.append(by_kind[kd].pop(0)[1])
        return out

    # -- implementations -----------------------------------------------------------------------------

    def implement(self, problem: Any, backend: str, idea: dict, parent: dict, m: int,
                  round_: int) -> list[dict]:
        """``m`` candidate files applying ``idea`` to ``parent``; the first is the idea as stated, the others
        vary tunables the idea leaves free."""
        self._check_backend(backend)
        if isinstance(m, bool) or not isinstance(m, int) or m < 0:
            raise ValueError(f"implement: m={m!r} must be a non-negative int (implementations per idea)")
        if m == 0:
            return []
        spec = self.spec(problem)
        gen = generator(spec.family, backend)
        parent_feats = self.parent_features(spec, backend, parent)
        sp = idea.get("spec") if isinstance(idea.get("spec"), dict) else {}
        if sp.get("gen") == gen.GEN and isinstance(sp.get("delta"), dict):
            delta = dict(sp["delta"])
        else:
            delta = self._delta_from_text(spec, backend, parent_feats, str(idea.get("text", "")))
        base = gen.normalise(spec, parent_feats | delta)
        rng = self._rng(problem, backend, round_, "implement", _digest(base), idea.get("text", ""))
        variants = [base] + self._variants(spec, gen, base, set(delta), m - 1, rng)
        text = str(idea.get("text", "")) or "baseline kernel"
        parent_id = str(parent.get("id", idea.get("parent", "reference")))
        return [{"source": candidate_source(spec, backend, f, text, parent_id), "features": f} for f in variants]

    def _delta_from_text(self, spec: OpSpec, backend: str, parent: dict, text: str) -> dict:
        """For ideas written by someone else: the catalogue idea whose wording overlaps the text most."""
        words = set(re.findall(r"[a-z0-9_]+", text.lower()))
        best: tuple[float, str, dict] | None = None
        for idea, _child in self._options(spec, backend, parent):
            theirs = set(re.findall(r"[a-z0-9_]+", idea.text.lower())) | set(idea.key.split("_"))
            score = len(words & theirs) / max(1, len(words | theirs))
            if best is None or (score, idea.key) > (best[0], best[1]):
                best = (score, idea.key, idea.delta)
        if best is None or best[0] < 0.15:
            return {}
        return dict(best[2])

    @staticmethod
    def _variants(spec: OpSpec, gen: Any, base: dict, fixed: set[str], k: int, rng: random.Random) -> list[dict]:
        """k distinct tunable variations of ``base`` (single changes first, then pairs), in a seeded order."""
        if k <= 0:
            return []
        singles = [(key, value) for key, values in gen.TUNABLES.items() if key not in fixed
                   for value in values if base.get(key) != value]
        rng.shuffle(singles)
        seen = {_digest(base)}
        out: list[dict] = []
        for key, value in singles:
            f = gen.normalise(spec, base | {key: value})
            d = _digest(f)
            if d not in seen:
                seen.add(d)
                out.append(f)
                if len(out) == k:
                    return out
        pairs = [(a, b) for i, a in enumerate(singles) for b in singles[i + 1:] if a[0] != b[0]]
        rng.shuffle(pairs)
        for (k1, v1), (k2, v2) in pairs:
            f = gen.normalise(spec, base | {k1: v1, k2: v2})
            d = _digest(f)
            if d not in seen:
                seen.add(d)
                out.append(f)
                if len(out) == k:
                    return out
        while len(out) < k:  # the tunable space is exhausted: repeat, still a valid implementation
            out.append(dict(out[len(out) % max(1, len(out))] if out else base))
        return out
