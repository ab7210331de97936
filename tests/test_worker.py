"""The candidate worker: every way a candidate process can misbehave becomes a recorded reason, the parent goes
on, and candidates never see secrets from the environment."""

import os
import time

import pytest

from kernelcraft.harness.sandbox.env import scrubbed_env
from kernelcraft.harness.sandbox.worker import Worker


@pytest.fixture()
def worker(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-should-never-leak")
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-should-never-leak")
    w = Worker(env={"KERNELCRAFT_BUILD_DIR": str(tmp_path / "build")}, work_dir=tmp_path / "work")
    yield w
    w.close()


def _candidate(tmp_path, body: str, name: str = "cand.py"):
    path = tmp_path / name
    path.write_text("import torch\nimport torch.nn as nn\n" + body +
                    "\nclass ModelNew(nn.Module):\n    def forward(self, x):\n        return x\n")
    return str(path)


def test_a_hanging_candidate_is_killed_at_its_timeout_and_recorded(worker, tmp_path):
    out = worker.call("build", {"candidate": _candidate(tmp_path, "import time\ntime.sleep(60)")}, timeout=2)
    assert not out.ok
    assert out.reason == "timeout after 2 s"
    assert out.wall_s < 20


def test_a_segfaulting_candidate_is_recorded_as_a_crash(worker, tmp_path):
    out = worker.call("build", {"candidate": _candidate(tmp_path, "import ctypes\nctypes.string_at(0)")}, timeout=30)
    assert not out.ok
    assert out.reason == "crashed with SIGSEGV"


def test_an_exception_is_recorded_with_its_type_and_message(worker, tmp_path):
    out = worker.call("build", {"candidate": _candidate(tmp_path, "raise ValueError('bad tile size')")}, timeout=30)
    assert not out.ok
    assert out.reason == "ValueError: bad tile size"


def test_a_file_without_modelnew_is_rejected(worker, tmp_path):
    path = tmp_path / "nomodel.py"
    path.write_text("x = 1\n")
    out = worker.call("build", {"candidate": str(path)}, timeout=30)
    assert out.reason == "CandidateError: defines no class ModelNew"


def test_candidates_see_no_api_keys_or_tokens(worker, tmp_path):
    body = ("import os\nleaked = sorted(k for k in os.environ if 'KEY' in k or 'TOKEN' in k)\n"
            "raise RuntimeError('seen:' + ','.join(leaked) + ';build=' + str('KERNELCRAFT_BUILD_DIR' in os.environ))")
    out = worker.call("build", {"candidate": _candidate(tmp_path, body)}, timeout=30)
    assert out.reason == "RuntimeError: seen:;build=True"


def test_killing_the_worker_is_recorded_and_the_next_candidate_still_runs(worker, tmp_path):
    killer = _candidate(tmp_path, "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", "killer.py")
    out = worker.call("build", {"candidate": killer}, timeout=30)
    assert not out.ok and out.reason == "candidate killed its worker process"
    good = worker.call("build", {"candidate": _candidate(tmp_path, "", "good.py")}, timeout=30)
    assert good.ok, good.reason
    assert worker.restarts == 1


def test_candidate_output_goes_to_its_log_not_the_protocol(worker, tmp_path):
    log = tmp_path / "c.log"
    out = worker.call("build", {"candidate": _candidate(tmp_path, "print('{\"pid\": 1}')\nprint('hello')")},
                      timeout=30, log=log)
    assert out.ok, out.reason
    assert "hello" in log.read_text()


def test_scrubbed_env_keeps_build_settings_and_drops_secrets():
    env = scrubbed_env({"PATH": "/bin", "HOME": "/h", "AWS_SECRET_ACCESS_KEY": "x", "GEMINI_API_KEY": "y",
                        "HF_TOKEN": "z", "KERNELCRAFT_BUILD_DIR": "/b", "KERNELCRAFT_API_KEY": "k",
                        "SOME_RANDOM_VAR": "r", "LC_ALL": "C"})
    assert env == {"PATH": "/bin", "HOME": "/h", "KERNELCRAFT_BUILD_DIR": "/b", "LC_ALL": "C"}


def test_passing_a_secret_explicitly_is_refused():
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        scrubbed_env({}, extra={"OPENAI_API_KEY": "x"})


def test_the_parent_environment_is_untouched(worker, tmp_path):
    worker.call("build", {"candidate": _candidate(tmp_path, "")}, timeout=30)
    assert os.environ["OPENAI_API_KEY"] == "sk-should-never-leak"


def test_a_candidate_cannot_write_files_past_the_size_cap(tmp_path):
    w = Worker(env={"KERNELCRAFT_MAX_FILE_BYTES": str(2**20)}, work_dir=tmp_path / "work")
    try:
        body = f"open({str(tmp_path / 'big.bin')!r}, 'wb').write(b'x' * (4 * 2**20))"
        out = w.call("build", {"candidate": _candidate(tmp_path, body)}, timeout=30)
    finally:
        w.close()
    assert not out.ok
    assert out.reason == "OSError: [Errno 27] File too large"
    assert (tmp_path / "big.bin").stat().st_size <= 2**20


def test_a_candidate_over_the_host_memory_limit_is_stopped_with_that_reason(tmp_path):
    w = Worker(work_dir=tmp_path / "work", max_rss_bytes=2 * 2**30)
    try:
        body = "import time\nblob = b'x' * (4 * 2**30)\ntime.sleep(60)"
        out = w.call("build", {"candidate": _candidate(tmp_path, body)}, timeout=60)
        again = w.call("build", {"candidate": _candidate(tmp_path, "", name="ok.py")}, timeout=60)
    finally:
        w.close()
    assert not out.ok
    assert out.reason.startswith("exceeded the host memory limit: ")
    assert out.reason.endswith("GiB resident, limit 2.0 GiB")
    assert out.wall_s < 30
    assert again.ok  # the worker goes on with the next candidate


@pytest.mark.parametrize("spares", ["1", "2"])
def test_with_spare_children_every_candidate_still_runs_in_a_fresh_process(tmp_path, spares):
    # With two spares, each must take its task as soon as it is written: a spare holding a copy of another's
    # request pipe once kept that one waiting until it exited.
    from kernelcraft.harness.sandbox.zygote import SPARE_ENV

    body = ("import os, builtins\nseen = getattr(builtins, 'kc_seen', None)\nbuiltins.kc_seen = os.getpid()\n"
            "raise RuntimeError(f'pid={os.getpid()} seen={seen}')")
    w = Worker(env={SPARE_ENV: spares}, work_dir=tmp_path / "work")
    try:
        outs = [w.call("build", {"candidate": _candidate(tmp_path, body, name=f"c{k}.py")}, timeout=60)
                for k in range(3)]
        hung = w.call("build", {"candidate": _candidate(tmp_path, "import time\ntime.sleep(60)", "h.py")}, timeout=3)
        after = w.call("build", {"candidate": _candidate(tmp_path, "", name="ok.py")}, timeout=60)
    finally:
        w.close()
    pids = [o.reason.split()[1] for o in outs]
    assert all(o.wall_s < 20 for o in outs), [o.wall_s for o in outs]
    assert len(set(pids)) == 3
    assert all(o.reason.endswith("seen=None") for o in outs)  # nothing left behind by the previous candidate
    assert hung.reason == "timeout after 3 s"
    assert after.ok, after.reason


def running(pid: int) -> bool:
    """Whether the process exists and has not exited (a zombie has)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_held_child_lives_until_released_and_its_end_is_never_taken_for_the_next_candidates(worker, tmp_path):
    first = worker.call("build", {"candidate": _candidate(tmp_path, "", "held.py")}, timeout=30,
                        on_result=lambda result: "judged", keep=True)
    assert first.ok and first.result == {"handled": "judged"}
    held = first.held_pid
    time.sleep(0.3)
    assert running(held)  # its memory is still readable by the parent
    released_while_next_ran = []

    def release() -> None:
        worker.release(held)
        released_while_next_ran.append(True)

    second = worker.call("build", {"candidate": _candidate(tmp_path, "import time\ntime.sleep(1)", "next.py")},
                         timeout=30, while_running=release)
    assert released_while_next_ran == [True]
    assert second.ok and "kernels" in second.result  # its own result, not the held child's end
    deadline = time.monotonic() + 5
    while running(held) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(held)


def test_closing_the_worker_ends_a_child_still_held(tmp_path):
    w = Worker(work_dir=tmp_path / "work")
    out = w.call("build", {"candidate": _candidate(tmp_path, "")}, timeout=30, on_result=lambda r: None, keep=True)
    start = time.monotonic()
    w.close()
    assert time.monotonic() - start < 3  # not the zygote's 5 s grace: the held child was ended first
    deadline = time.monotonic() + 5
    while running(out.held_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(out.held_pid)


RELU_PROBLEM = '''
import torch
import torch.nn as nn

class Model(nn.Module):
    def forward(self, x):
        return torch.relu(x)

def get_inputs():
    return [torch.randn(4, 8)]

def get_init_inputs():
    return []
'''


def test_only_an_answer_that_starts_timing_waits_for_the_previous_candidates_exit(worker, tmp_path):
    # The previous candidate's process, held (as if its exit were slow).
    first = worker.call("build", {"candidate": _candidate(tmp_path, "", "held.py")}, timeout=30,
                        on_result=lambda result: "judged", keep=True)
    held = first.held_pid
    assert first.ok and running(held)
    problem = tmp_path / "relu_ref.py"
    problem.write_text(RELU_PROBLEM)
    plan = [{"seed": k, "dist": "problem", "reuse": False, "warm_calls": 0} for k in range(3)]
    seen = []

    def on_partial(result: dict) -> dict:
        seen.append(running(held))
        return {"timing": True} if result["trial"] == 1 else {}

    second = worker.call("evaluate", {
        "problem": str(problem), "size": "full", "candidate": _candidate(tmp_path, "", "next.py"), "device": "cpu",
        "weight_seed": 0, "plan": plan, "out": str(tmp_path / "handover.pt")}, timeout=30,
        on_partial=on_partial, exclusive=lambda answer: bool(answer.get("timing")))
    assert second.ok, second.reason
    # Trials 0 and 1 were judged while the previous child still lived; the answer to trial 1 (after which this
    # child would time) was sent only once it had exited.
    assert seen == [True, True, False]
