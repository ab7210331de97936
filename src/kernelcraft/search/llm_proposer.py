"""The model-backed proposer: ideas and implementations from a language model, with the offline proposer's
interface, so the rounds treat both alike.

Every call goes through the LLM client (transcripts, resume, replay, budget, retries), and all calls of one job go
in one ``complete_many`` so they run concurrently. A reply the model got wrong never raises: an ideas reply yields
fewer ideas (the reason goes to the job log), and an implementation reply becomes a failed candidate with a
one-line reason. Replies whose code exists but does not parse, lacks ``ModelNew`` or breaks the contract in a way
the source shows (a try/except fallback, use of the reference ``Model``) get up to ``repair_attempts`` rounds of
the repair prompt before being given up on or passed on to the evaluator. Candidates that fail to build are sent
back by the compile stage (:mod:`kernelcraft.harness.build.compile_round`) through :meth:`LLMProposer.repair_many`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kernelcraft.harness.verify.static_checks import check_source
from kernelcraft.llm.request import request_for
from kernelcraft.llm.types import Message, Reply
from kernelcraft.progress import report
from kernelcraft.search import prompts
from kernelcraft.search.replies import PYTHON_LANGS, code_blocks, extract_candidate, ideas_schema, parse_ideas

BACKENDS = ("cuda", "cpu")
# Failures a repair prompt can fix: there is code, and what is wrong with it can be said.
REPAIRABLE = ("model reply: syntax error", "model reply: no class ModelNew")


@dataclass(frozen=True)
class PromptSettings:
    """What the prompts say besides the problem: where the templates are, the machine, the build path the worked
    example shows, and the verifier's rules (PyTorch compute policy, tolerance) the contract states."""

    templates: Path
    hardware: str
    build_path: str
    policy: str
    tolerance: dict


def usage_of(replies: list[Reply]) -> dict[str, Any]:
    """Tokens and cost of the calls behind one result (the first answer and its repairs)."""
    costs = [r.cost_usd for r in replies if r.cost_usd is not None]
    return {
        "input_tokens": sum(r.usage.input_tokens for r in replies),
        "output_tokens": sum(r.usage.output_tokens for r in replies),
        "reasoning_tokens": sum(r.usage.reasoning_tokens for r in replies),
        "cost_usd": sum(costs) if costs else None,
        "calls": len(replies),
        "cached": all(r.cached for r in replies),
    }


def _candidate_block(text: str | None) -> str | None:
    """The code a repair should start from: the last Python block that defines ModelNew, else the last one."""
    blocks, _ = code_blocks(text or "")
    python = [body for lang, body in blocks if lang in PYTHON_LANGS and body.strip()]
    with_class = [body for body in python if "class ModelNew" in body]
    return (with_class or python or [None])[-1]


class LLMProposer:
    """Ideas and implementations from the model of one ensemble entry (``{provider, model, ...}``)."""

    def __init__(self, entry: dict, client: Any, settings: PromptSettings, seed: int, *,
                 repair_attempts: int = 1) -> None:
        self.entry = dict(entry)
        self.client = client
        self.settings = settings
        self.seed = int(seed)
        self.repair_attempts = max(0, int(repair_attempts))
        self.name = f"{entry['provider']}/{entry['model']}"

    def supports(self, problem: Any, backend: str) -> bool:
        """A model can be asked about any problem on either backend; whether its kernel works is the evaluator's
        call."""
        return backend in BACKENDS

    # -- ideas ----------------------------------------------------------------------------------------------------

    def ideas(self, problem: Any, backend: str, seeds: list[dict], tried: list[dict], count: int,
              round_: int) -> list[dict]:
        """At most ``count`` ideas ``{kind, text, parent, transcript}`` from one call asking for ``count``."""
        if count <= 0 or not seeds:
            return []
        s = self.settings
        parent_ids = [str(seed.get("id")) for seed in seeds]
        messages = prompts.ideas_messages(s.templates, problem, backend, s.hardware, seeds, tried, count)
        request = request_for(self.entry, messages, purpose="ideas", tags={"problem": str(problem.id),
                                                                            "round": round_},
                              sample=0, json_schema=ideas_schema(parent_ids), seed=self.seed)
        (reply,) = self.client.complete_many([request])
        ideas, reason = parse_ideas(reply, parent_ids, count)
        if reason:
            report(str(problem.id), round_, "ideas", f"{self.name}: {reason}")
        # The call's usage stays in its transcript: copied onto each idea it would be counted once per idea.
        return [idea | {"transcript": reply.key} for idea in ideas]

    # -- implementations ------------------------------------------------------------------------------------------

    def implement(self, problem: Any, backend: str, idea: dict, parent: dict, count: int,
                  round_: int) -> list[dict]:
        """``count`` independent implementations of one idea (same prompt, samples 0..count-1)."""
        return self.implement_many(problem, backend, [(idea, parent, count)], round_)[0]

    def implement_many(self, problem: Any, backend: str, tasks: list[tuple[dict, dict, int]],
                       round_: int) -> list[list[dict]]:
        """For each (idea, parent, count): ``count`` results ``{source, failure, transcript, usage, repairs}``,
        all calls of all tasks issued together."""
        s = self.settings
        requests, owners = [], []
        for t, (idea, parent, count) in enumerate(tasks):
            messages = prompts.implement_messages(s.templates, problem, backend, s.hardware, idea, parent,
                                                  build_path=s.build_path, policy=s.policy, tolerance=s.tolerance)
            tags = {"problem": str(problem.id), "round": round_, "idea": idea.get("id"),
                    "parent": str(parent.get("id"))}
            for k in range(count):
                requests.append(request_for(self.entry, messages, purpose="implement", tags=tags | {"sample": k},
                                            sample=k, seed=self.seed + k))
                owners.append((t, idea))
        replies = self.client.complete_many(requests)
        results = self._repaired(problem, backend, [[r] for r in replies], [idea for _, idea in owners], round_)
        out: list[list[dict]] = [[] for _ in tasks]
        for (t, _), result in zip(owners, results, strict=True):
            out[t].append(result)
        return out

    # -- repair ---------------------------------------------------------------------------------------------------

    def repair(self, problem: Any, backend: str, source: str, errors: str, round_: int, *,
               idea: dict | None = None, sample: int = 0, attempt: int = 1, candidate: str | None = None) -> dict:
        """One fixed candidate for ``source``, which failed with ``errors`` (a compile or verification log tail):
        a result like :meth:`implement`'s."""
        task = {"source": source, "errors": errors, "idea": idea, "sample": sample, "candidate": candidate}
        return self.repair_many(problem, backend, [task], round_, attempt=attempt)[0]

    def repair_many(self, problem: Any, backend: str, tasks: list[dict], round_: int, *,
                    attempt: int = 1) -> list[dict]:
        """:meth:`repair` for each task ``{source, errors, idea, sample, candidate}``, all calls issued together
        (a compile job may hold many failed builds, and a model's answer takes minutes). ``candidate`` labels the
        request, so a replayed run finds each candidate's own repair."""
        requests = [self._repair_request(problem, backend, t["source"], t["errors"], round_, t.get("idea"),
                                         int(t.get("sample", 0)), attempt, candidate=t.get("candidate"))
                    for t in tasks]
        return [self._result([reply]) for reply in self.client.complete_many(requests)]

    def _repair_request(self, problem: Any, backend: str, source: str, errors: str, round_: int,
                        idea: dict | None, sample: int, attempt: int, candidate: str | None = None) -> Any:
        s = self.settings
        messages: tuple[Message, ...] = prompts.repair_messages(
            s.templates, problem, backend, s.hardware, source, errors, idea=idea, build_path=s.build_path,
            policy=s.policy, tolerance=s.tolerance)
        tags = {"problem": str(problem.id), "round": round_, "idea": (idea or {}).get("id"), "attempt": attempt}
        if candidate is not None:
            tags["candidate"] = candidate
        return request_for(self.entry, messages, purpose="repair", tags=tags, sample=sample, seed=self.seed + sample)

    def _needs_repair(self, reply: Reply) -> tuple[str, str] | None:
        """(code, errors) when the reply has code the repair prompt can fix, else None."""
        source, failure = extract_candidate(reply)
        if source is not None:
            problems = check_source(source)
            return (source, "\n".join(problems)) if problems else None
        if failure and failure.startswith(REPAIRABLE):
            code = _candidate_block(reply.text)
            return (code, failure) if code else None
        return None

    def _repaired(self, problem: Any, backend: str, chains: list[list[Reply]], ideas: list[dict],
                  round_: int) -> list[dict]:
        """Each chain of replies (first answer, then repairs) extended by up to ``repair_attempts`` repairs, all
        repairs of one attempt issued together; then one result per chain from its last reply."""
        for attempt in range(1, self.repair_attempts + 1):
            todo = []
            for i, chain in enumerate(chains):
                need = self._needs_repair(chain[-1])
                if need is not None:
                    todo.append((i, self._repair_request(problem, backend, need[0], need[1], round_, ideas[i],
                                                         i, attempt)))
            if not todo:
                break
            for (i, _), reply in zip(todo, self.client.complete_many([r for _, r in todo]), strict=True):
                chains[i].append(reply)
        return [self._result(chain) for chain in chains]

    @staticmethod
    def _result(chain: list[Reply]) -> dict:
        source, failure = extract_candidate(chain[-1])
        return {"source": source, "failure": failure, "transcript": chain[-1].key, "usage": usage_of(chain),
                "repairs": len(chain) - 1}
