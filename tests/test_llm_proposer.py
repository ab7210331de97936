"""The model-backed proposer, with a fake of our own client interface (complete / complete_many): what it asks,
how samples differ, how a bad reply becomes a failed candidate, when it asks for a repair, and how the implement
stage records failed and duplicate candidates so the compile stage skips them."""

from pathlib import Path

import pytest

from kernelcraft import layout
from kernelcraft.config import load_config, merge
from kernelcraft.context import RunContext
from kernelcraft.harness.build.compile_round import compile_candidates
from kernelcraft.jsonio import write_json
from kernelcraft.llm.types import Reply, Usage
from kernelcraft.problems import load_problem
from kernelcraft.search import rounds
from kernelcraft.search.llm_proposer import LLMProposer, PromptSettings

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = REPO / "workflow" / "templates"
TOL = {"atol": 1e-2, "rtol": 1e-2}


def settings(templates=TEMPLATES):
    return PromptSettings(Path(templates), "test CPU", "fast", "reject", TOL)
RELU = REPO / "src/kernelcraft/problems/suite/relu_4096x32768.py"
ENTRY = {"provider": "openai", "model": "o3", "weight": 1}

GOOD = '''import torch
import torch.nn as nn
from kernelcraft.harness.build import c_kernel

SRC = r"""
#include <stdint.h>
void relu_k(const float* x, float* y, int64_t n) { for (int64_t i = 0; i < n; ++i) y[i] = x[i] > 0.f ? x[i] : 0.f; }
"""
relu_k = c_kernel(SRC, "relu_k")


class ModelNew(nn.Module):
    def forward(self, x):
        x = x.contiguous()
        y = torch.empty_like(x)
        relu_k(x, y, x.numel())
        return y
'''
# The same kernel, commented and re-spaced: a duplicate.
GOOD_RESTYLED = GOOD.replace("class ModelNew", "# the kernel's module\nclass ModelNew").replace(
    "y[i] = x[i] > 0.f", "y[i]=x[i]>0.f")
# A different kernel: not a duplicate.
OTHER = GOOD.replace("0.f ? x[i] : 0.f", "0.f ? x[i] : -0.f")
FALLBACK = GOOD.replace("        relu_k(x, y, x.numel())\n", "        try:\n            relu_k(x, y, x.numel())\n"
                        "        except Exception:\n            return torch.relu(x)\n")


def fenced(source):
    return f"Here is the file.\n```python\n{source}```\n"


class FakeClient:
    """Answers each request with ``answer(request) -> (text, finish_reason)``; an exception is an error reply."""

    def __init__(self, answer):
        self.answer = answer
        self.batches = []

    def complete(self, request):
        try:
            text, finish = self.answer(request)
        except RuntimeError as err:
            return Reply(key=request.key(), text=None, error=str(err))
        return Reply(key=request.key(), text=text, finish_reason=finish, usage=Usage(100, 50), cost_usd=0.01)

    def complete_many(self, requests):
        self.batches.append(list(requests))
        return [self.complete(r) for r in requests]


@pytest.fixture(scope="module")
def relu():
    return load_problem(RELU, "small")


def proposer(client, repair_attempts=1):
    return LLMProposer(ENTRY, client, settings(), 7,
                       repair_attempts=repair_attempts)


IDEAS = [{"id": "r1_i0", "kind": "memory access", "text": "Use 128-bit loads.", "parent": "reference"},
         {"id": "r1_i1", "kind": "control flow and loops", "text": "Unroll by 8.", "parent": "reference"}]
REF_SEED = {"id": "reference", "source": None, "time_ms": 1.0, "speedup_eager": 1.0}


def test_implementations_are_independent_samples_issued_in_one_batch(relu):
    client = FakeClient(lambda r: (fenced(GOOD.replace("n; ++i", f"n; i += 1 + {r.sample} - {r.sample}")), "stop"))
    out = proposer(client).implement_many(relu, "cpu", [(IDEAS[0], REF_SEED, 3), (IDEAS[1], REF_SEED, 3)], 1)
    assert len(client.batches) == 1 and len(client.batches[0]) == 6
    reqs = client.batches[0]
    assert [r.sample for r in reqs] == [0, 1, 2, 0, 1, 2]
    assert len({r.key() for r in reqs}) == 6
    assert reqs[0].messages == reqs[1].messages == reqs[2].messages != reqs[3].messages
    assert {r.purpose for r in reqs} == {"implement"}
    assert [r.tags["idea"] for r in reqs] == ["r1_i0"] * 3 + ["r1_i1"] * 3
    assert [r.seed for r in reqs[:3]] == [7, 8, 9]
    assert "Use 128-bit loads." in reqs[0].messages[1].content
    assert [len(x) for x in out] == [3, 3]
    first = out[0][0]
    assert first["failure"] is None and "class ModelNew" in first["source"]
    assert first["transcript"] == reqs[0].key()
    assert first["usage"] == {"input_tokens": 100, "output_tokens": 50, "reasoning_tokens": 0, "cost_usd": 0.01,
                              "calls": 1, "cached": False}
    assert first["repairs"] == 0


def test_a_bad_reply_becomes_a_failed_candidate_with_its_reason(relu):
    def answer(request):
        if request.sample == 0:
            return fenced(GOOD), "length"
        if request.sample == 1:
            raise RuntimeError("HTTP 503 after 4 retries")
        return "I would rather not.", "stop"

    results = proposer(FakeClient(answer)).implement(relu, "cpu", IDEAS[0], REF_SEED, 3, 1)
    assert [r["source"] for r in results] == [None, None, None]
    assert [r["failure"] for r in results] == ["model reply: truncated (finish_reason=length)",
                                               "model call failed: HTTP 503 after 4 retries",
                                               "model reply: no ```python code block"]


def test_the_ideas_call_carries_the_tried_ideas_and_the_schema(relu):
    reply = ('{"ideas": [{"kind": "memory access", "idea": "Stage tiles in shared memory.", "parent": "r1_i0_m0"},'
             ' {"kind": "compute and instructions", "idea": "Use fmaxf.", "parent": "reference"}]}')
    client = FakeClient(lambda r: (reply, "stop"))
    seeds = [{"id": "r1_i0_m0", "source": GOOD, "time_ms": 0.5, "speedup_eager": 2.0}, REF_SEED]
    tried = [{"kind": "memory access", "text": "Use 128-bit loads.", "parent": "reference"},
             {"kind": "control flow and loops", "text": "Unroll by 8.", "parent": "reference"}]
    ideas = proposer(client).ideas(relu, "cuda", seeds, tried, 2, 2)
    (request,) = client.batches[0]
    assert request.purpose == "ideas" and request.tags == {"problem": "relu_4096x32768", "round": 2}
    assert request.json_schema["properties"]["ideas"]["items"]["properties"]["parent"]["enum"] == [
        "r1_i0_m0", "reference"]
    for t in tried:
        assert t["text"] in request.messages[1].content
    assert [(i["kind"], i["text"], i["parent"]) for i in ideas] == [
        ("memory access", "Stage tiles in shared memory.", "r1_i0_m0"),
        ("compute and instructions", "Use fmaxf.", "reference")]
    assert {i["transcript"] for i in ideas} == {request.key()}


def test_code_that_does_not_parse_is_sent_back_once_with_its_error(relu):
    broken = GOOD.replace("def forward(self, x):", "def forward(self, x)")
    client = FakeClient(lambda r: (fenced(GOOD if r.purpose == "repair" else broken), "stop"))
    (result,) = proposer(client).implement(relu, "cpu", IDEAS[0], REF_SEED, 1, 1)
    assert [len(b) for b in client.batches] == [1, 1]
    repair = client.batches[1][0]
    assert repair.purpose == "repair" and repair.tags["attempt"] == 1
    assert "model reply: syntax error at line 13: expected ':'" in repair.messages[1].content
    assert "def forward(self, x)\n" in repair.messages[1].content
    assert result["source"] == GOOD and result["failure"] is None and result["repairs"] == 1
    assert result["transcript"] == repair.key()
    assert result["usage"]["calls"] == 2 and result["usage"]["input_tokens"] == 200


def test_a_fallback_to_pytorch_is_sent_back_and_without_repairs_the_failure_stands(relu):
    client = FakeClient(lambda r: (fenced(GOOD if r.purpose == "repair" else FALLBACK), "stop"))
    (fixed,) = proposer(client).implement(relu, "cpu", IDEAS[0], REF_SEED, 1, 1)
    assert "try/except fallback to PyTorch around the kernel" in client.batches[1][0].messages[1].content
    assert fixed["source"] == GOOD

    client = FakeClient(lambda r: (fenced("class ModelNew(:\n    pass\n"), "stop"))
    (result,) = proposer(client, repair_attempts=0).implement(relu, "cpu", IDEAS[0], REF_SEED, 1, 1)
    assert len(client.batches) == 1
    assert result["failure"].startswith("model reply: syntax error at line 1")


# -- the implement stage ------------------------------------------------------------------------------------------


def _context(tmp_path: Path) -> RunContext:
    config = load_config(overrides={"run": "llm-proposer", "backend": "cpu", "implementations_per_idea": 3})
    config["models"]["implement"] = [ENTRY]
    resolved = {"backend": "cpu", "size": "small", "cuda_arch": None, "problems": {"relu": str(RELU)}}
    ctx = RunContext.from_config(merge(config, {"_resolved": resolved}), results=tmp_path / "results")
    write_json(layout.baseline_file(ctx.root, "relu"), {"eager_ms": 1.0})
    return ctx


def test_implement_records_failed_and_duplicate_candidates_and_compile_skips_them(tmp_path, monkeypatch):
    ctx = _context(tmp_path)
    answers = {1: [fenced(GOOD), fenced(GOOD_RESTYLED), (fenced(GOOD), "length")],
               2: [fenced(GOOD_RESTYLED), fenced(OTHER), "no code today"]}

    def answer(request):
        text = answers[request.tags["round"]][request.sample]
        return text if isinstance(text, tuple) else (text, "stop")

    client = FakeClient(answer)
    monkeypatch.setattr(rounds, "job_proposers", lambda ctx, entries, templates: [
        LLMProposer(entries[0], client, settings(templates), ctx.seed)])

    doc1 = rounds.implement_ideas(ctx, "relu", 1, {"ideas": [IDEAS[0]]}, TEMPLATES)
    c = {x["id"]: x for x in doc1["candidates"]}
    assert list(c) == ["r1_i0_m0", "r1_i0_m1", "r1_i0_m2"]
    assert c["r1_i0_m0"]["path"] == "relu/round_1/candidates/r1_i0_m0.py"
    assert (ctx.root / c["r1_i0_m0"]["path"]).read_text() == GOOD
    assert c["r1_i0_m1"]["duplicate_of"] == "r1_i0_m0" and c["r1_i0_m1"]["path"] is None
    assert c["r1_i0_m2"]["failure"] == "model reply: truncated (finish_reason=length)"
    assert c["r1_i0_m2"]["path"] is None and "digest" not in c["r1_i0_m2"]
    assert c["r1_i0_m0"]["model"] == "openai/o3" and c["r1_i0_m0"]["transcript"] == client.batches[0][0].key()
    assert not (ctx.root / "relu/round_1/candidates/r1_i0_m1.py").exists()

    write_json(layout.stage_file(ctx.root, "relu", 1, "implement"), doc1)
    write_json(layout.stage_file(ctx.root, "relu", 1, "select"), {"seeds": []})
    idea2 = IDEAS[1] | {"id": "r2_i0"}
    doc2 = rounds.implement_ideas(ctx, "relu", 2, {"ideas": [idea2]}, TEMPLATES)
    c2 = {x["id"]: x for x in doc2["candidates"]}
    assert c2["r2_i0_m0"]["duplicate_of"] == "r1_i0_m0"
    assert c2["r2_i0_m1"]["path"] == "relu/round_2/candidates/r2_i0_m1.py" and "duplicate_of" not in c2["r2_i0_m1"]
    assert c2["r2_i0_m2"]["failure"] == "model reply: no ```python code block"

    skipped = [c["r1_i0_m1"], c["r1_i0_m2"], c2["r2_i0_m0"], c2["r2_i0_m2"]]
    built = compile_candidates(ctx, "relu", 2, skipped, 1, 60)
    assert {k: (v["compiled"], v["reason"], v["build_s"]) for k, v in built.items()} == {
        "r1_i0_m1": (False, "duplicate of r1_i0_m0", 0.0),
        "r1_i0_m2": (False, "model reply: truncated (finish_reason=length)", 0.0),
        "r2_i0_m0": (False, "duplicate of r1_i0_m0", 0.0),
        "r2_i0_m2": (False, "model reply: no ```python code block", 0.0),
    }
    assert not (ctx.root / "logs" / "candidates").exists()  # nothing was built


# -- through the real client and the wire-format server -----------------------------------------------------------


@pytest.mark.parametrize("wire", ["chat", "responses", "gemini"])
def test_the_proposer_works_through_the_real_client_in_each_wire_format(tmp_path, relu, wire):
    from llm_server import LLMServer

    from kernelcraft.llm.client import LLMClient

    ideas_json = ('{"ideas": [{"kind": "memory access", "idea": "Use float4 loads.", "parent": "reference"}, '
                  '{"kind": "control flow and loops", "idea": "Unroll by 4.", "parent": "reference"}]}')

    def responder(req):
        return ideas_json if "Propose 2 new optimization ideas" in req.messages[-1]["content"] else fenced(GOOD)

    with LLMServer(responder) as server:
        entry = ({"provider": "gemini", "model": "m", "base_url": server.gemini_url} if wire == "gemini" else
                 {"provider": "openai", "model": "m", "base_url": server.openai_url, "api": wire})
        client = LLMClient(tmp_path, {"timeout_s": 5, "max_retries": 0, "prices": {}},
                           env={"OPENAI_API_KEY": "k", "GEMINI_API_KEY": "k"})
        prop = LLMProposer(entry, client, settings(), 0)
        ideas = prop.ideas(relu, "cpu", [REF_SEED], [], 2, 1)
        impls = prop.implement(relu, "cpu", ideas[0] | {"id": "r1_i0"}, REF_SEED, 2, 1)
        assert server.count == 3
    assert [i["text"] for i in ideas] == ["Use float4 loads.", "Unroll by 4."]
    assert [(r["source"], r["failure"]) for r in impls] == [(GOOD, None), (GOOD, None)]
    assert impls[0]["transcript"] != impls[1]["transcript"]
    for key in (ideas[0]["transcript"], impls[0]["transcript"], impls[1]["transcript"]):
        assert (layout.transcripts_dir(tmp_path) / key[:2] / f"{key}.json").is_file()


# -- the compile stage's repair of compile errors -----------------------------------------------------------------

# GOOD with an undeclared C identifier: the C compiler rejects it.
BROKEN = GOOD.replace("y[i] = x[i] > 0.f", "y[i] = undeclared_v > 0.f")
# GOOD with another C error (a missing semicolon): what a first repair that did not fix the build looks like.
STILL_BROKEN = GOOD.replace(": 0.f; }", ": 0.f }")
OFFLINE_ENTRY = {"provider": "offline", "model": "offline-v1", "weight": 1}


def _repair_context(tmp_path: Path, monkeypatch, client: FakeClient,
                    repair_attempts: int = 1) -> tuple[RunContext, list]:
    """A run whose implement ensemble is o3 plus the offline proposer, with the fake client behind every model
    proposer the stage makes (through the real rounds.job_proposers); also the list of clients made."""
    from kernelcraft.llm.client import LLMClient

    ctx = _context(tmp_path)
    ctx.config["models"]["implement"] = [ENTRY, OFFLINE_ENTRY]
    ctx.config["llm"]["repair_attempts"] = repair_attempts
    made = []
    monkeypatch.setattr(LLMClient, "from_config", classmethod(lambda cls, root, config: made.append(root) or client))
    return ctx, made


def _write_candidates(ctx: RunContext, sources: dict[str, tuple[str, str]]) -> list[dict]:
    """Implement-stage records for ``{cid: (model label, source)}``, their files written."""
    out_dir = layout.candidates_dir(ctx.root, "relu", 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    cands = []
    for cid, (model, source) in sources.items():
        (out_dir / f"{cid}.py").write_text(source)
        cands.append({"id": cid, "idea_id": "r1_i0", "idea": IDEAS[0]["text"], "kind": IDEAS[0]["kind"],
                      "parent": "reference", "model": model, "path": f"relu/round_1/candidates/{cid}.py"})
    return cands


def test_a_models_candidate_with_a_compile_error_is_repaired_built_and_recorded(tmp_path, monkeypatch):
    client = FakeClient(lambda r: (fenced(GOOD), "stop"))
    ctx, _ = _repair_context(tmp_path, monkeypatch, client)
    cands = _write_candidates(ctx, {"r1_i0_m0": ("openai/o3", BROKEN), "r1_i0_m1": ("offline/offline-v1", BROKEN),
                                    "r1_i0_m2": ("openai/o3", OTHER)})
    built = compile_candidates(ctx, "relu", 1, cands, 2, 60, templates=TEMPLATES)

    (batch,) = client.batches
    (request,) = batch  # only the model's broken candidate was sent back; the offline one never is
    assert request.purpose == "repair" and request.model == "o3"
    assert request.tags == {"problem": "relu_4096x32768", "round": 1, "idea": "r1_i0", "attempt": 1,
                            "candidate": "r1_i0_m0"}
    prompt = request.messages[1].content
    assert "undeclared_v > 0.f" in prompt and IDEAS[0]["text"] in prompt
    assert "compile error: C compiler failed on kernel 'relu_k'" in prompt
    assert "error: 'undeclared_v' undeclared" in prompt
    # The build log's paths are cut to the run's own layout, so the request key does not depend on the machine,
    # and of the traceback only the candidate's own frames are shown.
    assert str(tmp_path) not in prompt and 'File "relu/round_1/candidates/r1_i0_m0.py", line 9' in prompt
    assert "zygote.py" not in prompt and "note: each undeclared identifier" in prompt

    fixed = built["r1_i0_m0"]
    assert fixed["compiled"] is True and fixed["reason"] is None
    assert fixed["path"] == "relu/round_1/candidates/r1_i0_m0.repair1.py"
    assert (ctx.root / fixed["path"]).read_text() == GOOD
    assert (ctx.root / "relu/round_1/candidates/r1_i0_m0.py").read_text() == BROKEN  # the original is kept
    (repair,) = fixed["repairs"]
    assert repair["attempt"] == 1 and repair["path"] == fixed["path"] and repair["transcript"] == request.key()
    assert repair["reason_before"].startswith("compile error: C compiler failed on kernel 'relu_k'")
    assert [k["name"] for k in fixed["kernels"]] == ["relu_k"]

    offline = built["r1_i0_m1"]
    assert offline["compiled"] is False and offline["reason"].startswith("compile error")
    assert "repairs" not in offline and offline["path"] == "relu/round_1/candidates/r1_i0_m1.py"
    assert built["r1_i0_m2"]["compiled"] is True and "repairs" not in built["r1_i0_m2"]
    assert built["r1_i0_m2"]["path"] == "relu/round_1/candidates/r1_i0_m2.py"
    assert (ctx.root / "logs/candidates/relu/round_1/r1_i0_m0.repair1.compile.log").exists()


def test_a_repair_reply_without_code_leaves_the_candidate_failed_with_its_compile_reason(tmp_path, monkeypatch):
    client = FakeClient(lambda r: ("I cannot see what is wrong with it.", "stop"))
    ctx, _ = _repair_context(tmp_path, monkeypatch, client, repair_attempts=3)
    cands = _write_candidates(ctx, {"r1_i0_m0": ("openai/o3", BROKEN)})
    result = compile_candidates(ctx, "relu", 1, cands, 1, 60, templates=TEMPLATES)["r1_i0_m0"]

    assert len(client.batches) == 1  # a failed call ends the candidate's repairs, whatever attempts remain
    (repair,) = result["repairs"]
    original = repair["reason_before"]
    assert original.startswith("compile error: C compiler failed on kernel 'relu_k'")
    assert repair["path"] is None and repair["transcript"] == client.batches[0][0].key()
    assert result["compiled"] is False
    assert result["reason"] == f"{original} (repair 1 failed: model reply: no ```python code block)"
    assert result["path"] == "relu/round_1/candidates/r1_i0_m0.py"
    assert not list(layout.candidates_dir(ctx.root, "relu", 1).glob("*.repair*"))


def test_a_repair_that_still_fails_to_build_is_sent_back_again_from_its_own_code(tmp_path, monkeypatch):
    client = FakeClient(lambda r: (fenced(STILL_BROKEN if r.tags["attempt"] == 1 else GOOD), "stop"))
    ctx, _ = _repair_context(tmp_path, monkeypatch, client, repair_attempts=2)
    cands = _write_candidates(ctx, {"r1_i0_m0": ("openai/o3", BROKEN)})
    result = compile_candidates(ctx, "relu", 1, cands, 1, 60, templates=TEMPLATES)["r1_i0_m0"]

    first, second = (batch[0] for batch in client.batches)
    assert (first.tags["attempt"], second.tags["attempt"]) == (1, 2)
    failed_code = second.messages[1].content.split("# What went wrong")[0]
    assert ": 0.f }" in failed_code and "undeclared_v" not in failed_code  # the second asks about the first repair
    assert [r["path"] for r in result["repairs"]] == ["relu/round_1/candidates/r1_i0_m0.repair1.py",
                                                      "relu/round_1/candidates/r1_i0_m0.repair2.py"]
    assert "undeclared_v" in result["repairs"][0]["reason_before"]
    assert "expected ';'" in result["repairs"][1]["reason_before"]
    assert result["compiled"] is True and result["path"] == "relu/round_1/candidates/r1_i0_m0.repair2.py"
    assert (ctx.root / "relu/round_1/candidates/r1_i0_m0.repair1.py").read_text() == STILL_BROKEN


def test_repair_attempts_zero_sends_no_compile_error_back(tmp_path, monkeypatch):
    client = FakeClient(lambda r: (fenced(GOOD), "stop"))
    ctx, made = _repair_context(tmp_path, monkeypatch, client, repair_attempts=0)
    cands = _write_candidates(ctx, {"r1_i0_m0": ("openai/o3", BROKEN)})
    result = compile_candidates(ctx, "relu", 1, cands, 1, 60, templates=TEMPLATES)["r1_i0_m0"]
    assert client.batches == [] and made == []
    assert result["compiled"] is False and result["reason"].startswith("compile error") and "repairs" not in result
    assert result["path"] == "relu/round_1/candidates/r1_i0_m0.py"


def test_a_repaired_candidate_seeds_the_next_round_with_its_repaired_code(tmp_path, monkeypatch):
    client = FakeClient(lambda r: (fenced(GOOD), "stop"))
    ctx, _ = _repair_context(tmp_path, monkeypatch, client)
    cands = _write_candidates(ctx, {"r1_i0_m0": ("openai/o3", BROKEN)})
    built = compile_candidates(ctx, "relu", 1, cands, 1, 60, templates=TEMPLATES)
    # What verify and benchmark record for it (they carry the compile result's path on).
    verified = {"results": {"r1_i0_m0": {"correct": True, "path": built["r1_i0_m0"]["path"]}}}
    timed = {"results": {"r1_i0_m0": {"timed": True, "time_ms": 0.5, "time_iqr_ms": 0.01, "eager_ms": 1.0,
                                      "speedup_eager": 2.0}}}
    doc = rounds.select_seeds(ctx, "relu", 1, {"candidates": cands}, verified, timed)
    assert [s["path"] for s in doc["seeds"]] == ["relu/round_1/candidates/r1_i0_m0.repair1.py"]
    write_json(layout.stage_file(ctx.root, "relu", 1, "select"), doc)
    (seed,) = rounds.current_seeds(ctx, "relu", 2)
    assert seed["id"] == "r1_i0_m0" and seed["source"] == GOOD
