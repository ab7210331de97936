"""The real workflow against a local model server (tests/llm_server.py), on the CPU backend: both wire formats, a
run killed mid-job and resumed, the budget cap, and provider faults.

Snakemake itself runs (no mocks) with OpenAI (chat completions) and Gemini (generateContent) entries pointed at the
server through their official SDKs. The server answers the ideas prompt with JSON ideas and the implementation
prompt with a real, correct C kernel for ReLU whose block size depends on the idea and the model, so candidates
differ; one per round is deliberately the same code as an earlier one (new comments only) and must be recorded as
its duplicate, not evaluated again. OpenAI's first kernel for idea #1 does not compile: the compile job sends it back
with the compiler's errors, the server answers the repair prompt with a kernel that builds, and that repair is what
verify and benchmark run.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from llm_server import LLMServer, Received

from kernelcraft.llm.budget import LEDGER

REPO = Path(__file__).resolve().parents[1]
PROBLEM = "relu_4096x32768"
OPENAI, GEMINI = "srv-openai", "srv-gemini"
PRICES = {OPENAI: {"input": 1.0, "output": 2.0}, GEMINI: {"input": 0.5, "output": 4.0}}
TOKENS = (1000, 500, 100)  # input, output (reasoning included), reasoning: what the server reports per answer
COST = {"openai": (1000 * 1.0 + 500 * 2.0) / 1e6, "gemini": (1000 * 0.5 + 500 * 4.0) / 1e6}  # 0.002, 0.0025

KERNEL = '''"""{note}"""

import torch
import torch.nn as nn

from kernelcraft.harness.build import c_kernel

SRC = r"""
#include <stdint.h>
#define CHUNK {chunk}
// {note}
void relu_k(const float* restrict x, float* restrict y, int64_t n) {{
    for (int64_t s = 0; s < n; s += CHUNK) {{
        int64_t e = s + CHUNK < n ? s + CHUNK : n;
        for (int64_t i = s; i < e; ++i) {{
            float v = x[i];
            y[i] = v > 0.f ? v : 0.f;
        }}
    }}
}}
"""

relu_k = c_kernel(SRC, "relu_k")


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        y = torch.empty_like(x)
        relu_k(x, y, x.numel())
        return y
'''


# The kernel with a C error (an undeclared identifier): what OpenAI first answers for idea #1.
BROKEN_IDEA, BROKEN_WIRE = 1, "chat"


def broken(source: str) -> str:
    return source.replace("v > 0.f ? v : 0.f", "v > zero ? v : zero")


# -- the server's side -------------------------------------------------------------------------------------------


def purpose_of(req: Received) -> str:
    system = next((m["content"] for m in req.messages if m["role"] == "system"), "")
    if "propose concrete, testable optimization ideas" in system:
        return "ideas"
    if "You implement one optimization idea" in system:
        return "implement"
    if "You fix a candidate kernel file that failed" in system:
        return "repair"
    return "other"


def user_text(req: Received) -> str:
    return "\n".join(m["content"] for m in req.messages if m["role"] == "user")


def idea_number(req: Received) -> int:
    """Ideas are numbered across the run: an ideas call's number is the count of ideas its prompt lists as tried
    (which includes the ideas other models gave earlier in the same round); an implement call names its idea."""
    text = user_text(req)
    if purpose_of(req) == "ideas":
        return len(re.findall(r"^- \[[^\]]*\] .* \(on seed `[^`]*`\)$", text, re.M))
    return int(re.search(r"\(idea #(\d+)\)", text).group(1))


def ideas_reply(req: Received) -> str:
    n = idea_number(req)
    kind = ["memory access", "control flow and loops"][n % 2]
    return json.dumps({"ideas": [{"kind": kind, "idea": f"Process the rows in blocks of {64 << n} floats "
                                                      f"(idea #{n}).", "parent": "reference"}]})


def variant(n: int, wire: str) -> int:
    """The kernel an implement call gets: distinct per (idea, model), except that Gemini's answer to each round's
    second idea repeats OpenAI's answer to the round's first idea (comments aside)."""
    if wire == "gemini" and n % 2 == 1:
        return 2 * (n - 1)
    return 2 * n + (wire == "gemini")


def kernel_reply(req: Received) -> str:
    n = idea_number(req)
    v = variant(n, req.wire)
    source = KERNEL.format(chunk=64 << v, note=f"idea {n} by {req.model}")
    if (n, req.wire) == (BROKEN_IDEA, BROKEN_WIRE):
        source = broken(source)
    return f"Here is the candidate.\n\n```python\n{source}```\n"


def repair_reply(req: Received) -> str:
    """The fixed kernel, only for the broken one and only when the prompt shows it with its compiler error."""
    n = idea_number(req)
    text = user_text(req)
    assert (n, req.wire) == (BROKEN_IDEA, BROKEN_WIRE) and "error: 'zero' undeclared" in text, text[-2000:]
    source = KERNEL.format(chunk=64 << variant(n, req.wire), note=f"idea {n} by {req.model}, repaired")
    return f"Fixed: `zero` was never declared.\n\n```python\n{source}```\n"


def answer(req: Received) -> str:
    purpose = purpose_of(req)
    if purpose == "ideas":
        return ideas_reply(req)
    if purpose == "implement":
        return kernel_reply(req)
    if purpose == "repair":
        return repair_reply(req)
    raise AssertionError(f"unexpected prompt: {req.messages[0]['content'][:200]}")


class Server(LLMServer):
    """The test server, which also records which request bodies it answered, and can hold chosen requests."""

    def __init__(self) -> None:
        super().__init__(self._respond, tokens=TOKENS)
        self.answered: list[tuple[str, dict]] = []
        self.hold_if = None  # a predicate: requests it accepts wait on `release`
        self.held: list[tuple[str, dict]] = []
        self.release = threading.Event()

    def _respond(self, req: Received) -> str:
        if self.hold_if is not None and self.hold_if(req):
            self.held.append((req.path, req.body))
            self.release.wait(120)
            return "too late: the client was killed"
        text = answer(req)
        self.answered.append((req.path, req.body))
        return text


def body_id(path: str, body: dict) -> str:
    return path + " " + json.dumps(body, sort_keys=True)


# -- the workflow's side -----------------------------------------------------------------------------------------


def write_config(work: Path, server: LLMServer, run: str, **changes) -> None:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config.update({"run": run, "rounds": 2, "ideas_per_round": 2, "implementations_per_idea": 2, "top_k": 2,
                   "backend": "cpu"})
    config["problems"].update({"builtin": [PROBLEM], "size": "small"})
    config["benchmark"].update({"iters": 5, "warmup": 1, "min_time_ms": 2, "torch_compile": False})
    config["verify"]["trials"] = 2
    models = [{"provider": "openai", "model": OPENAI, "base_url": server.openai_url},
              {"provider": "gemini", "model": GEMINI, "base_url": server.gemini_url}]
    config["models"] = {"ideas": models, "implement": models}
    config["llm"].update({"concurrency": 2, "timeout_s": 30, "max_retries": 1, "backoff_s": 0.01,
                          "max_backoff_s": 0.05, "budget_usd": None})
    config["prices"] = PRICES
    for key, value in changes.items():
        if isinstance(value, dict):
            config[key].update(value)
        else:
            config[key] = value
    (work / "config.yaml").write_text(yaml.safe_dump(config))


def snakemake_cmd(*extra: str) -> list[str]:
    snakemake = shutil.which("snakemake", path=str(Path(sys.executable).parent))
    return [snakemake, "-s", str(REPO / "workflow" / "Snakefile"), "--configfile", "config.yaml", "--cores", "2",
            "--resources", "gpu=1", *extra]


def model_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY")}
    env.update({"OPENAI_API_KEY": "sk-test", "GEMINI_API_KEY": "gemini-test", "NO_PROXY": "127.0.0.1,localhost",
                "no_proxy": "127.0.0.1,localhost"})
    return env


def run_snakemake(work: Path, *extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(snakemake_cmd(*extra), cwd=work, env=model_env(), capture_output=True, text=True,
                          timeout=900)
    with (work / "snakemake.stderr").open("a") as fh:
        fh.write(proc.stderr)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def read_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "candidates.csv") as fh:
        return list(csv.DictReader(fh))


def ledger(run_dir: Path) -> list[dict]:
    path = run_dir / "transcripts" / LEDGER
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def transcript_keys(run_dir: Path) -> set[str]:
    return {p.stem for p in (run_dir / "transcripts").glob("??/*.json")}


def implement_doc(run_dir: Path, round_: int) -> dict:
    return json.loads((run_dir / PROBLEM / f"round_{round_}" / "implement.json").read_text())


# -- a run killed in round 2's implement job, then resumed -----------------------------------------------------


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """Run 1 is killed (SIGKILL to Snakemake and its jobs) while round 2's implement job waits for OpenAI's answer
    for its second idea, after its answer for the first idea was stored; run 2 resumes and finishes. Round 1's
    compile job asked OpenAI for one repair before the kill."""
    work = tmp_path_factory.mktemp("llm_e2e")
    with Server() as server:
        write_config(work, server, "llm")
        run_dir = work / "results" / "llm"
        server.hold_if = lambda req: purpose_of(req) == "implement" and req.wire == "chat" and idea_number(req) == 3
        with (work / "snakemake.stderr").open("w") as err:
            proc = subprocess.Popen(snakemake_cmd(), cwd=work, env=model_env(), stdout=subprocess.DEVNULL,
                                    stderr=err, start_new_session=True)
        # 2 + 2 ideas calls, 4 + 1 implement calls and 1 repair call returned, so 10 transcripts, before the kill.
        deadline = time.monotonic() + 600
        while not (server.held and len(transcript_keys(run_dir)) == 10):
            assert proc.poll() is None, (work / "snakemake.stderr").read_text()[-4000:]
            assert time.monotonic() < deadline, "round 2's held implement call never came"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        first = {"answered": list(server.answered), "held": list(server.held), "count": server.count,
                 "transcripts": transcript_keys(run_dir),
                 "implement_2_existed": (run_dir / PROBLEM / "round_2" / "implement.json").exists()}
        server.hold_if = None
        server.release.set()
        n_before = server.count
        run_snakemake(work, "--unlock")
        run_snakemake(work, "--rerun-incomplete")
        second = [(r.path, r.body) for r in server.received[n_before:]]
        yield {"work": work, "run_dir": run_dir, "first": first, "second": second, "server": server}


@pytest.mark.slow
def test_the_resumed_run_repeats_no_call_that_had_returned(resumed):
    first, second = resumed["first"], resumed["second"]
    assert not first["implement_2_existed"]  # the kill did interrupt round 2's implement job
    assert len(first["answered"]) == 10 and first["count"] == 11
    answered_before = {body_id(*a) for a in first["answered"]}
    asked_again = [body_id(*s) for s in second]
    assert not answered_before & set(asked_again)
    # What run 2 asked: the held call (it never returned) and Gemini's two round-2 implementations, nothing else.
    assert len(asked_again) == 3 and body_id(*first["held"][0]) in asked_again
    assert sorted(re.search(r"/models/([^:]+):|chat", p).group(0) for p, _ in second) == [
        "/models/srv-gemini:", "/models/srv-gemini:", "chat"]


@pytest.mark.slow
def test_the_resumed_job_takes_its_stored_answer_from_the_transcript(resumed):
    lines = ledger(resumed["run_dir"])
    cached = [e for e in lines if e["status"] == "cached"]
    # Round 2's implement job re-ran: OpenAI's answer for idea 2 came from its transcript, with no call.
    assert len(cached) == 1
    assert cached[0]["purpose"] == "implement" and cached[0]["model"] == OPENAI and cached[0]["round"] == 2
    assert cached[0]["key"] in resumed["first"]["transcripts"]
    answered = [e for e in lines if e["status"] == "answered"]
    assert len(answered) == 13 and len({e["key"] for e in answered}) == 13


@pytest.mark.slow
def test_every_model_call_has_a_transcript_with_its_prompt_and_usage(resumed):
    run_dir = resumed["run_dir"]
    keys = transcript_keys(run_dir)
    assert keys == {e["key"] for e in ledger(run_dir) if e["status"] == "answered"}
    assert len(keys) == resumed["server"].count - 1  # every call but the held one returned
    for key in keys:
        record = json.loads(next((run_dir / "transcripts").glob(f"??/{key}.json")).read_text())
        assert record["reply"]["usage"] == {"input_tokens": 1000, "output_tokens": 500, "reasoning_tokens": 100}
        assert record["request"]["messages"][0]["role"] == "system" and record["reply"]["text"]
    for round_ in (1, 2):
        ideas = json.loads((run_dir / PROBLEM / f"round_{round_}" / "ideas.json").read_text())["ideas"]
        candidates = implement_doc(run_dir, round_)["candidates"]
        assert {i["transcript"] for i in ideas} | {c["transcript"] for c in candidates} <= keys


@pytest.mark.slow
def test_both_wire_formats_propose_ideas_and_correct_kernels(resumed):
    run_dir = resumed["run_dir"]
    for round_ in (1, 2):
        ideas = json.loads((run_dir / PROBLEM / f"round_{round_}" / "ideas.json").read_text())["ideas"]
        assert [i["model"] for i in ideas] == [f"openai/{OPENAI}", f"gemini/{GEMINI}"]
        first = 2 * (round_ - 1)
        assert [i["text"] for i in ideas] == [f"Process the rows in blocks of {64 << n} floats (idea #{n})."
                                              for n in (first, first + 1)]
    rows = read_rows(run_dir)
    assert [r["candidate_id"] for r in rows] == [f"r{r}_i{i}_m{m}" for r in (1, 2) for i in (0, 1) for m in (0, 1)]
    assert [r["model"] for r in rows] == [f"openai/{OPENAI}", f"gemini/{GEMINI}"] * 4
    evaluated = [r for r in rows if not r["reject_reason"].startswith("duplicate of")]
    assert len(evaluated) == 6
    assert all(r["compiled"] == "true" and r["correct"] == "true" and r["time_ms"] and float(r["time_ms"]) > 0
               for r in evaluated), [(r["candidate_id"], r["reject_reason"]) for r in evaluated]
    assert {r["model"] for r in evaluated} == {f"openai/{OPENAI}", f"gemini/{GEMINI}"}
    assert {r["round"] for r in evaluated} == {"1", "2"}


@pytest.mark.slow
def test_a_kernel_repeating_an_earlier_one_is_recorded_as_its_duplicate_and_not_built(resumed):
    run_dir = resumed["run_dir"]
    rows = {r["candidate_id"]: r for r in read_rows(run_dir)}
    # Gemini's kernel for each round's second idea is OpenAI's for the round's first idea, with other comments.
    for dup, original in (("r1_i1_m1", "r1_i0_m0"), ("r2_i1_m1", "r2_i0_m0")):
        assert rows[dup]["reject_reason"] == f"duplicate of {original}"
        assert rows[dup]["compiled"] == "false" and rows[dup]["time_ms"] == ""
        cand = next(c for c in implement_doc(run_dir, int(dup[1]))["candidates"] if c["id"] == dup)
        assert cand["duplicate_of"] == original and cand["path"] is None


@pytest.mark.slow
def test_the_report_shows_tokens_and_cost_of_the_run_and_the_problem(resumed):
    html = (resumed["run_dir"] / "report.html").read_text()
    usage = html.split('id="usage"')[1].split("</section>")[0]
    # 13 calls returned (6 per model and OpenAI's repair), one answer was reused from its transcript.
    total = 7 * COST["openai"] + 6 * COST["gemini"]
    assert f"${total:.4f}" in usage and "13,000" in usage and "6,500" in usage
    assert re.search(r"Calls</div>\s*<div class=\"value\">13</div>\s*<div class=\"sub\">1 cached", usage)
    assert f"openai/{OPENAI}" in usage and f"gemini/{GEMINI}" in usage
    section = html.split(f'id="p-{PROBLEM}"')[1]
    assert f"${total:.4f}" in section.split("<figure>")[0]
    failures = section.split("Failures by cause")[1].split("</div>")[0]
    assert "No failed candidates." in failures and "2 duplicates" in failures


@pytest.mark.slow
def test_a_kernel_that_does_not_build_is_repaired_by_its_model_and_the_repair_is_what_is_evaluated(resumed):
    run_dir, server = resumed["run_dir"], resumed["server"]
    rdir = run_dir / PROBLEM / "round_1"
    original = f"{PROBLEM}/round_1/candidates/r1_i1_m0.py"
    repaired = f"{PROBLEM}/round_1/candidates/r1_i1_m0.repair1.py"
    # The compile job sent the broken kernel back once, to the model that wrote it, with the compiler's error.
    repairs = [r for r in server.received if purpose_of(r) == "repair"]
    assert [(r.wire, r.model) for r in repairs] == [("chat", OPENAI)]
    prompt = user_text(repairs[0])
    assert "v > zero ? v : zero" in prompt and "error: 'zero' undeclared" in prompt and str(run_dir) not in prompt
    assert "zero" in (run_dir / original).read_text() and "zero" not in (run_dir / repaired).read_text()
    assert "idea 1 by srv-openai, repaired" in (run_dir / repaired).read_text()

    built = json.loads((rdir / "compile.json").read_text())["results"]["r1_i1_m0"]
    assert built["compiled"] is True and built["reason"] is None and built["path"] == repaired
    (repair,) = built["repairs"]
    assert repair["attempt"] == 1 and repair["path"] == repaired and repair["transcript"] in transcript_keys(run_dir)
    assert repair["reason_before"].startswith("compile error: C compiler failed on kernel 'relu_k'")
    verified = json.loads((rdir / "verify.json").read_text())["results"]["r1_i1_m0"]
    assert verified["correct"] is True and verified["path"] == repaired
    timed = json.loads((rdir / "benchmark.json").read_text())["results"]["r1_i1_m0"]
    assert timed["timed"] is True and timed["time_ms"] > 0
    # The candidate's logs: its own build failed, the repair built, and verify and benchmark ran the repair.
    logs = run_dir / "logs" / "candidates" / PROBLEM / "round_1"
    assert "'zero' undeclared" in (logs / "r1_i1_m0.compile.log").read_text()
    assert (logs / "r1_i1_m0.repair1.compile.log").exists()

    rows = {r["candidate_id"]: r for r in read_rows(run_dir)}
    assert (rows["r1_i1_m0"]["compiled"], rows["r1_i1_m0"]["correct"], rows["r1_i1_m0"]["repaired"]) == (
        "true", "true", "true")
    assert float(rows["r1_i1_m0"]["time_ms"]) == pytest.approx(timed["time_ms"], rel=1e-5)
    assert [cid for cid, r in rows.items() if r["repaired"] == "true"] == ["r1_i1_m0"]
    html = (run_dir / "report.html").read_text()
    assert re.search(r'<td class="mono">r1_i1_m0 <span class="tag"[^>]*>repaired</span></td>', html)
    # Every seed is the file its round verified, so a round-2 prompt that shows r1_i1_m0 shows the repair.
    for round_ in (1, 2):
        for seed in json.loads((run_dir / PROBLEM / f"round_{round_}" / "select.json").read_text())["seeds"]:
            ver = json.loads((run_dir / PROBLEM / f"round_{seed['round']}" / "verify.json").read_text())
            assert seed["path"] == ver["results"][seed["id"]]["path"]


# -- archive and replay, with the model server gone ----------------------------------------------------------


@pytest.fixture(scope="module")
def replayed(resumed, tmp_path_factory):
    """The resumed run, archived; the model server stopped; no API key set; the archive replayed in a clean
    directory by ``kernelcraft replay`` (what a colleague with only the archive file does)."""
    from kernelcraft.archive.bundle import write_archive

    archive = write_archive(resumed["run_dir"], tmp_path_factory.mktemp("archive") / "llm.tar.gz")
    server = resumed["server"]
    calls_before = server.count
    server.stop()
    clean = tmp_path_factory.mktemp("replay_elsewhere")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY")}
    done = subprocess.run([sys.executable, "-m", "kernelcraft.cli", "replay", str(archive), "--directory",
                           str(clean), "--snakefile", str(REPO / "workflow" / "Snakefile")], cwd=clean, env=env,
                          capture_output=True, text=True, timeout=900)
    yield {"done": done, "run_dir": clean / "results" / "llm-replay", "calls": server.count - calls_before,
           "original": resumed["run_dir"]}


@pytest.mark.slow
def test_a_run_with_model_answers_replays_from_its_archive_with_no_server_and_no_key(replayed):
    done, run_dir = replayed["done"], replayed["run_dir"]
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "same search: yes" in done.stdout
    assert replayed["calls"] == 0
    # Each of the 13 answers the original run got (the resumed job reused one of them) came from the archive: none
    # was paid for, none refused, and each transcript names the recorded run it was taken from.
    statuses = [e["status"] for e in ledger(run_dir)]
    assert statuses == ["cached"] * len([e for e in ledger(replayed["original"]) if e["status"] == "answered"])
    records = [json.loads(p.read_text()) for p in (run_dir / "transcripts").glob("??/*.json")]
    assert records and all(r["replayed_from"] for r in records)
    # The same candidate files, byte for byte, including the compile job's repair, and the same verdicts.
    original, replay = replayed["original"], run_dir
    sources = sorted(p.relative_to(original) for p in original.glob(f"{PROBLEM}/round_*/candidates/*.py"))
    assert any(p.name.endswith(".repair1.py") for p in sources)
    assert sources == sorted(p.relative_to(replay) for p in replay.glob(f"{PROBLEM}/round_*/candidates/*.py"))
    assert all((original / p).read_bytes() == (replay / p).read_bytes() for p in sources)
    verdicts = [[(r["candidate_id"], r["compiled"], r["correct"], r["reject_reason"]) for r in read_rows(d)]
                for d in (original, replay)]
    assert verdicts[0] == verdicts[1]


# -- the budget cap --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def budgeted(tmp_path_factory):
    """budget_usd 0.005 with one call in flight per provider: round 1's two ideas calls spend $0.0045, the first
    implement call takes it to $0.0065, and from then on no call is made."""
    work = tmp_path_factory.mktemp("llm_budget")
    with Server() as server:
        write_config(work, server, "budget", llm={"budget_usd": 0.005, "concurrency": 1})
        run_snakemake(work)
        yield {"run_dir": work / "results" / "budget", "server": server}


@pytest.mark.slow
def test_the_budget_stops_new_calls_and_the_workflow_finishes_with_what_it_has(budgeted):
    run_dir, server = budgeted["run_dir"], budgeted["server"]
    assert [(purpose_of(r), r.wire) for r in server.received] == [
        ("ideas", "chat"), ("ideas", "gemini"), ("implement", "chat")]
    lines = ledger(run_dir)
    answered = [e for e in lines if e["status"] == "answered"]
    spent = sum(e["cost_usd"] for e in answered)
    assert spent == pytest.approx(COST["openai"] * 2 + COST["gemini"]) and spent >= 0.005
    # Every call after the one that crossed the budget was refused without reaching the server.
    crossed = max(e["time"] for e in answered)
    assert all(e["status"] == "refused" and "budget_usd reached" in e["error"]
               for e in lines if e["time"] > crossed)
    assert sum(e["status"] == "refused" for e in lines) == 3 + 2  # 3 implement calls, round 2's 2 ideas calls
    rows = read_rows(run_dir)
    assert [r["candidate_id"] for r in rows] == ["r1_i0_m0", "r1_i0_m1", "r1_i1_m0", "r1_i1_m1"]
    assert rows[0]["correct"] == "true" and float(rows[0]["time_ms"]) > 0
    assert all(r["reject_reason"].startswith("model call failed: budget_usd reached") for r in rows[1:])
    assert json.loads((run_dir / PROBLEM / "round_2" / "ideas.json").read_text())["ideas"] == []


@pytest.mark.slow
def test_the_report_shows_the_budget_and_what_was_spent(budgeted):
    html = (budgeted["run_dir"] / "report.html").read_text()
    usage = html.split('id="usage"')[1].split("</section>")[0]
    spent = COST["openai"] * 2 + COST["gemini"]
    assert f"${spent:.4f} of $0.0050" in usage and "budget reached" in usage
    assert re.search(r"Calls</div>\s*<div class=\"value\">3</div>\s*<div class=\"sub\">0 cached · 0 failed · "
                     r"5 refused", usage)
    failures = html.split("Failures by cause")[1].split("</table>")[0]
    assert re.search(r"<td>model call refused: budget reached</td><td class=\"num\">3</td>", failures)


# -- provider faults through the workflow -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def faulted(tmp_path_factory):
    """One round, one idea, four implementations (two per model, one call at a time per provider, asked OpenAI's
    first): a malformed body, a reply with no code, 503 until the retries run out, and a truncated kernel."""
    work = tmp_path_factory.mktemp("llm_faults")
    with Server() as server:
        write_config(work, server, "faults", rounds=1, ideas_per_round=1, implementations_per_idea=4,
                     llm={"concurrency": 1, "max_retries": 1, "repair_attempts": 0})
        server.answer()  # the ideas call
        server.malformed()  # OpenAI, sample 0
        server.answer()  # OpenAI, sample 1: the responder is switched to prose below
        server.fail(503, times=2)  # Gemini, sample 0: the first try and its one retry
        server.truncate()  # Gemini, sample 1
        base = server._respond

        def respond(req: Received) -> str:
            if purpose_of(req) == "implement" and req.wire == "chat" and req.body.get("seed") == 1:
                return "I would tile the loop, but I will not write the code."
            return base(req)

        server.responder = respond
        run_snakemake(work)
        yield {"run_dir": work / "results" / "faults", "server": server}


@pytest.mark.slow
def test_provider_faults_become_failed_candidates_with_their_reason(faulted):
    run_dir, server = faulted["run_dir"], faulted["server"]
    assert server.count == 6 and not server.faults
    reasons = {r["candidate_id"]: r["reject_reason"] for r in read_rows(run_dir)}
    assert list(reasons) == ["r1_i0_m0", "r1_i0_m1", "r1_i0_m2", "r1_i0_m3"]
    assert re.fullmatch(rf"model call failed: openai/{OPENAI}: malformed response: .* \(not retried\)",
                        reasons["r1_i0_m0"])
    assert reasons["r1_i0_m1"] == "model reply: no ```python code block"
    assert re.fullmatch(rf"model call failed: gemini/{GEMINI}: HTTP 503: .* \(gave up after 2 attempts\)",
                        reasons["r1_i0_m2"])
    assert reasons["r1_i0_m3"] == "model reply: truncated (finish_reason=length)"
    failed = [json.loads(line) for line in (run_dir / "transcripts" / "failed.jsonl").read_text().splitlines()]
    assert [f["model"] for f in failed] == [OPENAI, GEMINI]


@pytest.mark.slow
def test_the_report_counts_provider_faults_by_cause(faulted):
    html = (faulted["run_dir"] / "report.html").read_text()
    failures = html.split("Failures by cause")[1].split("</table>")[0]
    for cause, n in (("model call failed", 2), ("model reply: no code", 1), ("model reply: truncated", 1)):
        assert re.search(rf"<td>{re.escape(cause)}</td><td class=\"num\">{n}</td>", failures), cause
    usage = html.split('id="usage"')[1].split("</section>")[0]
    assert re.search(r"Calls</div>\s*<div class=\"value\">3</div>\s*<div class=\"sub\">0 cached · 2 failed", usage)
