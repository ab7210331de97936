"""What must hold across processes (Snakemake runs jobs as separate processes): the concurrency limit is shared by
every client of a run, and a client killed mid-call leaves a run that a second client resumes without repeating
any call that returned."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from llm_server import LLMServer

from kernelcraft import layout
from kernelcraft.llm import LLMClient, request_for
from kernelcraft.llm.types import Message

CLIENT = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from kernelcraft.llm import LLMClient, request_for
    from kernelcraft.llm.types import Message

    run_root, base_url, name, n, concurrency, go = sys.argv[1:7]
    client = LLMClient(run_root, {"concurrency": int(concurrency), "timeout_s": 30, "max_retries": 0,
                                  "prices": {}}, env={"OPENAI_API_KEY": "sk-test"})
    entry = {"provider": "openai", "model": "test-model", "base_url": base_url}
    requests = [request_for(entry, [Message("user", f"{name} {i}")], purpose="implement") for i in range(int(n))]
    Path(go + "." + name).touch()              # ready
    while not Path(go).exists():               # start together with the other clients
        time.sleep(0.01)
    for reply in client.complete_many(requests):
        print(reply.text if reply.ok else reply.error, flush=True)
""")


@pytest.fixture()
def server():
    with LLMServer() as s:
        yield s


def start_clients(tmp_path: Path, server: LLMServer, names: list[str], n: int, concurrency: int):
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", CLIENT, str(tmp_path / "run"), server.openai_url, name, str(n),
                               str(concurrency), str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in names]
    deadline = time.monotonic() + 30
    while not all(Path(f"{go}.{name}").exists() for name in names):
        assert time.monotonic() < deadline, "clients did not start"
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.02)
    go.touch()
    return procs


@pytest.mark.parametrize("concurrency", [1, 2])
def test_the_concurrency_limit_holds_across_processes(tmp_path, server, concurrency):
    server.delay_s = 0.25
    procs = start_clients(tmp_path, server, ["a", "b"], n=3, concurrency=concurrency)
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert len(out.split("\n")) == 4 and out.startswith("echo: ")
    assert server.count == 6
    # Each process alone would keep `concurrency` calls in flight; together they may not exceed it either.
    assert server.max_in_flight == concurrency


def test_a_killed_client_leaves_a_run_that_resumes_without_repeating_returned_calls(tmp_path, server):
    server.answer(times=2)
    server.hang(30)  # the third call never returns: the client is killed while waiting for it
    (proc,) = start_clients(tmp_path, server, ["k"], n=4, concurrency=1)
    deadline = time.monotonic() + 30
    while server.count < 3:
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)

    run_root = tmp_path / "run"
    assert len(list(layout.transcripts_dir(run_root).glob("??/*.json"))) == 2
    assert not list(layout.transcripts_dir(run_root).glob("??/.*.tmp"))
    client = LLMClient(run_root, {"concurrency": 1, "timeout_s": 5, "max_retries": 0, "prices": {}},
                       env={"OPENAI_API_KEY": "sk-test"})
    entry = {"provider": "openai", "model": "test-model", "base_url": server.openai_url}
    replies = client.complete_many([request_for(entry, [Message("user", f"k {i}")], purpose="implement")
                                    for i in range(4)])
    assert [r.text for r in replies] == [f"echo: k {i}" for i in range(4)]
    assert [r.cached for r in replies] == [True, True, False, False]
    assert server.count == 3 + 2  # only the two calls that never returned are made again
