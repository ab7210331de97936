"""The evaluate stage: one process per candidate verifies it and, only when the parent accepts its outputs, times
it; each stage has its own time limit; nothing a candidate starts survives its evaluation. CPU backend."""

import os
import sys
import time
from pathlib import Path

import pytest

from kernelcraft.config import load_config, merge
from kernelcraft.context import RunContext
from kernelcraft.harness.evaluate_round import evaluate_candidates
from kernelcraft.harness.verify.trials import LATE_CALLS

sys.path.insert(0, str(Path(__file__).parent))
from test_exploits import HEADER, REFERENCE  # noqa: E402
from test_worker import running  # noqa: E402

BENCH_TIMEOUT_S = 6


@pytest.fixture(autouse=True)
def _instrumented_candidates(monkeypatch):
    """These candidates instrument the harness from inside (they write their pids to files, allocate, hang),
    which the source allow-list rejects before anything runs: here the process machinery is under test, so the
    allow-list steps aside (tests/test_static_checks.py pins it)."""
    monkeypatch.setattr("kernelcraft.harness.verify.verify_round.check_source", lambda source: [])


def _evaluate(tmp_path: Path, sources: dict[str, str], benchmark: dict | None = None, **kw) -> tuple[dict, dict]:
    ref = tmp_path / "softmax_ref.py"
    ref.write_text(REFERENCE)
    config = load_config(overrides={"run": "evaluate", "backend": "cpu", "verify": {"trials": 3},
                                    "benchmark": {"timeout_s": BENCH_TIMEOUT_S, "min_time_ms": 20} | (benchmark or {})})
    resolved = {"backend": "cpu", "size": "full", "cuda_arch": None, "problems": {"softmax_ref": str(ref)}}
    ctx = RunContext.from_config(merge(config, {"_resolved": resolved}), results=tmp_path / "results")
    entries = []
    for name, src in sources.items():
        path = tmp_path / f"{name}.py"
        path.write_text(HEADER + src)
        entries.append({"id": name, "path": str(path)})
    verified, timed = evaluate_candidates(ctx, "softmax_ref", 1, entries, dict.fromkeys(sources, {"compiled": True}),
                                          **kw)
    return verified["results"], timed["results"]


def _records_pid(log: Path) -> str:
    return f'''
import os

class ModelNew(nn.Module):
    def forward(self, x):
        with open({str(log)!r}, "a") as f:
            f.write(f"{{os.getpid()}}\\n")
        return kernel_softmax(x)
'''


@pytest.mark.slow
def test_each_candidate_is_verified_and_timed_in_one_fresh_process_of_its_own(tmp_path):
    logs = {name: tmp_path / f"{name}.pids" for name in ("a", "b")}
    verified, timed = _evaluate(tmp_path, {name: _records_pid(log) for name, log in logs.items()})
    for name in logs:
        assert verified[name]["correct"] is True, verified[name]["reasons"]
        assert timed[name]["timed"] is True, timed[name]["reason"]
    pids = {name: set(log.read_text().split()) for name, log in logs.items()}
    assert len(pids["a"]) == 1 and len(pids["b"]) == 1  # verification and timing calls: one process
    assert pids["a"] != pids["b"]  # a fresh one per candidate
    assert int(pids["a"].pop()) != os.getpid()


HANGS_WHEN_TIMED = '''
import time

class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls > 30:  # verification makes about a dozen calls
            time.sleep(3600)
        return kernel_softmax(x)
'''


@pytest.mark.slow
def test_a_candidate_that_hangs_while_timed_keeps_its_verdict_and_stops_at_the_benchmark_limit(tmp_path):
    start = time.perf_counter()
    # no early stop: on a loaded machine the C kernel can be 10x slower than eager and stop before it hangs
    verified, timed = _evaluate(tmp_path, {"hangs": HANGS_WHEN_TIMED}, benchmark={"stop_slower_than": 0})
    assert verified["hangs"]["correct"] is True, verified["hangs"]["reasons"]
    assert timed["hangs"]["timed"] is False
    assert timed["hangs"]["reason"] == f"timeout after {BENCH_TIMEOUT_S:g} s"
    assert time.perf_counter() - start < 60


SLOW = '''
import time

class ModelNew(nn.Module):
    def forward(self, x):
        time.sleep(0.05)  # correct, and hundreds of times slower than the reference's 16x4096 softmax
        return kernel_softmax(x)
'''


def test_a_correct_candidate_far_slower_than_the_reference_is_timed_only_until_that_is_clear(tmp_path):
    verified, timed = _evaluate(tmp_path, {"slow": SLOW})
    assert verified["slow"]["correct"] is True, verified["slow"]["reasons"]
    record = timed["slow"]
    assert record["timed"] is True, record["reason"]
    assert 3 <= record["samples"] < 20  # benchmark.iters is 20: stopped after at least STOP_AFTER_CALLS calls
    assert record["time_ms"] >= 50
    assert record["speedup_eager"] < 0.1
    assert record["stopped"].startswith(f"timing stopped after {record['samples']} calls: ")
    assert record["stopped"].endswith("x slower than eager (benchmark.stop_slower_than)")


def test_with_stop_slower_than_zero_a_slow_candidate_is_timed_in_full(tmp_path):
    _, timed = _evaluate(tmp_path, {"slow": SLOW}, benchmark={"stop_slower_than": 0})
    assert timed["slow"]["timed"] is True, timed["slow"]["reason"]
    assert timed["slow"]["samples"] >= 20
    assert "stopped" not in timed["slow"]


def test_verification_alone_times_nothing(tmp_path):
    log = tmp_path / "a.pids"
    verified, timed = _evaluate(tmp_path, {"a": _records_pid(log)}, time_kernels=False)
    assert verified["a"]["correct"] is True, verified["a"]["reasons"]
    assert timed == {}
    # The three trials, the late one and the calls before it; no timed calls.
    assert len(log.read_text().split()) == 3 + 1 + LATE_CALLS


def test_nothing_a_candidate_started_outlives_its_evaluation(tmp_path):
    marker = tmp_path / "background.pid"
    source = f'''
import subprocess

_bg = subprocess.Popen(["sleep", "300"])  # in the candidate's process group, as anything it starts would be
open({str(marker)!r}, "w").write(str(_bg.pid))

class ModelNew(nn.Module):
    def forward(self, x):
        return kernel_softmax(x)
'''
    verified, _ = _evaluate(tmp_path, {"spawns": source})
    assert verified["spawns"]["correct"] is True, verified["spawns"]["reasons"]
    pid = int(marker.read_text())
    deadline = time.monotonic() + 5
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(pid)


def _out_of_memory_once(marker: Path) -> str:
    """Runs out of memory the first time it is loaded (as a candidate can when the previous candidate's check
    still holds device memory beside it), and is an honest kernel after that."""
    return f'''
import os

if not os.path.exists({str(marker)!r}):
    open({str(marker)!r}, "w").close()
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

class ModelNew(nn.Module):
    def forward(self, x):
        return kernel_softmax(x)
'''


def test_running_out_of_memory_beside_the_previous_candidates_check_is_judged_again_alone(tmp_path):
    honest = "class ModelNew(nn.Module):\n    def forward(self, x):\n        return kernel_softmax(x)\n"
    verified, timed = _evaluate(tmp_path, {"before": honest, "oom": _out_of_memory_once(tmp_path / "loaded")})
    assert verified["oom"]["correct"] is True, verified["oom"]["reasons"]
    assert timed["oom"]["timed"] is True, timed["oom"]


def test_running_out_of_memory_alone_is_the_candidates_own_failure(tmp_path):
    verified, timed = _evaluate(tmp_path, {"oom": _out_of_memory_once(tmp_path / "loaded")})
    assert verified["oom"]["correct"] is False
    assert verified["oom"]["reasons"] == ["OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"]
    assert "oom" not in timed
