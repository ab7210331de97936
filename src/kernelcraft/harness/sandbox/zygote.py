"""The warm candidate runner: a process that has imported torch once and forks one child per candidate task.

Why fork from a zygote: a fresh Python + torch (+ CUDA) start costs seconds (6.5 s measured on the H100 host), far
more than most candidates' work. The zygote never initialises CUDA and never runs a parallel torch op, so forking it
is safe; each child initialises CUDA for itself, runs one untrusted candidate, writes its result file and exits.
A child that crashes, hangs or corrupts its context takes nothing with it: the zygote and the comparing parent
live in other processes.

Protocol (one JSON object per line): the parent writes ``{"task", "kwargs", "result", "log"}`` on stdin; the
zygote answers ``{"pid"}`` as soon as the child exists (so the parent can kill it on timeout) and then
``{"pid", "exit", "signal"}`` when it ends. The zygote reaps children without blocking, so the next request can
start while the previous child is still being torn down. The child's stdout/stderr go to ``log``, never into the
protocol.

A task may hand intermediate results to the parent and wait for its reply (``tasks.run``'s ``handover``): the
k-th goes to ``<result>.<k>`` and the reply is read from ``<reply>.<k>``. With ``hold`` set, the child stays alive
after writing its final result (it holds GPU memory the parent reads through CUDA IPC) until the parent kills it.

Run as ``python -m kernelcraft.harness.sandbox.zygote``.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import resource
import select
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any

# Set to the number of spare children to keep with their CUDA context already created (GPU jobs of the cuda
# backend). A spare's warm-up (context, then the profiler's first start) takes longer than one candidate's whole
# evaluation (H200: 0.3-0.6 s of every 0.8 s candidate was spent waiting for the one spare), so two warm in turn.
SPARE_ENV = "KERNELCRAFT_SPARE_CUDA"
CUDA_SPARES = 2
MAX_FILE_ENV = "KERNELCRAFT_MAX_FILE_BYTES"
# Outputs handed over through a file (CPU backend) must fit: a full-size problem's outputs and inputs are a few GiB.
DEFAULT_MAX_FILE_BYTES = 32 * 2**30


def _wait_for(path: str | None, zygote: int) -> bool:
    """Wait until ``path`` exists (forever when None); False once the zygote is gone (the parent is gone too:
    nobody will answer, and a child must not outlive its job holding GPU memory)."""
    while path is None or not os.path.exists(path):
        if os.getppid() != zygote:
            return False
        time.sleep(0.01 if path is None else 0.0005)  # a reply is awaited on the critical path; a kill is not
    return True


def _handover(request: dict, zygote: int) -> Any:
    """The child's side of an intermediate hand-over: write the k-th result, wait for the parent's k-th reply."""
    from kernelcraft.jsonio import read_json, write_json

    count = itertools.count()

    def hand(result: dict) -> dict:
        k = next(count)
        write_json(f"{request['result']}.{k}", {"ok": True, "result": result})
        reply = f"{request['reply']}.{k}"
        if not _wait_for(reply, zygote):
            os._exit(5)
        doc = read_json(reply)
        os.unlink(reply)
        return doc

    return hand


def _child(request: dict, proto_out: int, zygote: int) -> None:
    """In the forked child: isolate, run the task, write the result file, exit without returning."""
    code = 0
    try:
        if os.getpgid(0) != os.getpid():
            os.setpgid(0, 0)
        os.close(proto_out)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        sys.stdout = os.fdopen(1, "w", buffering=1)
        sys.stderr = os.fdopen(2, "w", buffering=1)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        # A candidate may not fill the disk: writes past the cap fail (EFBIG; Python ignores SIGXFSZ).
        max_file = int(os.environ.get(MAX_FILE_ENV, DEFAULT_MAX_FILE_BYTES))
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file, max_file))
        from kernelcraft.harness.sandbox import tasks
        from kernelcraft.jsonio import write_json

        try:
            result = tasks.run(request["task"], request["kwargs"], handover=_handover(request, zygote))
            write_json(request["result"], {"ok": True, "result": result})
            if request.get("hold"):
                # Shared GPU memory must outlive the parent's reading of it: the parent kills this process when
                # it is done (or it leaves once the zygote is gone).
                sys.stdout.flush()
                sys.stderr.flush()
                _wait_for(None, zygote)
        except BaseException as exc:  # the candidate's failure is a result, not our crash
            traceback.print_exc()
            write_json(request["result"], {"ok": False, "error": tasks.describe_error(exc)})
            code = 3
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        code = 4
    finally:
        os._exit(code)


def _preload(cuda: bool) -> None:
    """Import, once and before any fork, everything a candidate's process uses: this is the start-up cost the
    zygote exists to amortise. On the CUDA backend that includes NVRTC (a dlopen of libnvrtc: its version is part
    of every kernel's build-cache key, so each child would otherwise load it just to find its cached cubin) and
    the driver bindings' module, but no driver call: a CUDA context must never exist before a fork."""
    import torch  # noqa: F401

    from kernelcraft.harness import build  # noqa: F401
    from kernelcraft.harness.judge import audit
    from kernelcraft.harness.sandbox import tasks, transfer  # noqa: F401
    from kernelcraft.harness.timing import protocol  # noqa: F401
    from kernelcraft.harness.verify import trials  # noqa: F401
    from kernelcraft.problems import loader  # noqa: F401

    if torch.version.cuda is None:
        # The profiler's first start in a process costs about a second: paid once, here, before any fork. A CUDA
        # build's profiler starts threads and queries the driver, which a forked child must not inherit: there the
        # spare child pays it instead (_warm_cuda), while the previous candidate runs.
        audit.warm()

    if cuda:
        try:
            from cuda.bindings import driver  # noqa: F401

            from kernelcraft.harness.build import nvrtc

            nvrtc.nvrtc_version()
            nvrtc.include_dirs()
            if os.environ.get("KERNELCRAFT_CUDA_ARCH"):
                _adopt_device_kernels()
        except Exception:  # noqa: BLE001 - a missing NVRTC is reported by the build that needs it
            pass


def _adopt_device_kernels() -> None:
    """The evaluator's own kernels (comparison, input renewal), compiled once for every child to inherit. NVRTC
    initialises the CUDA driver when it compiles (measured: every child forked after it failed CUDA's init), so
    the compile runs in a throwaway child and the zygote keeps only the bytes it sends back."""
    import pickle

    from kernelcraft.harness.verify import device_kernels

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read)
            with os.fdopen(write, "wb") as out:
                pickle.dump(device_kernels.cubin(), out)
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) == 0 and data:
        device_kernels.adopt(*pickle.loads(data))


def _warm_cuda() -> None:
    """In a spare: create the CUDA context, and load the device code of the operations the harness itself runs
    around every candidate (input generation, NaN poisoning, copies, events, the timer's sleep and L2 flush), so
    that CUDA's lazy module loading is paid here, while the previous candidate runs, not on the clock of the next.
    Tiny tensors: microseconds of device work."""
    import torch

    x = torch.empty(256, device="cuda")
    x.fill_(float("nan"))
    torch.randn(256, device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    y = torch.rand(256, generator=gen, device="cuda") * 8.0 + 2.0
    x.copy_(y)
    _ = x.clone().abs().max()
    torch.isfinite(x).all()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(1)
    x.zero_()
    end.record()
    torch.cuda.synchronize()
    start.elapsed_time(end)
    from kernelcraft.harness.judge import audit
    from kernelcraft.harness.verify.trials import rehalve

    rehalve([x], 1, 2)  # the in-place renewal of reuse trials and timed calls (its first use took 35 ms on the H200)
    audit.warm()


def _spare(requests: int, proto_out: int, zygote: int) -> None:
    """In a spare child: create the CUDA context now (a fifth of a second alone, more when several start at
    once), then wait for the one task this process will ever run. The spare is forked while the previous
    candidate runs, so a candidate finds its context ready; no candidate code has run in it before."""
    try:
        if os.getpgid(0) != os.getpid():
            os.setpgid(0, 0)
        _warm_cuda()
    except BaseException:  # the task will meet the same error and report it
        pass
    chunks = []
    while True:
        chunk = os.read(requests, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(requests)
    if not chunks:  # the zygote went away without a task for us
        os._exit(0)
    _child(json.loads(b"".join(chunks)), proto_out, zygote)


def _close_request_pipes(spares: Sequence[tuple[int, int]]) -> None:
    """In a new child: close the request pipes of the other spares it inherited. A spare takes its task when the
    pipe closes; a copy held elsewhere kept it waiting, and would let candidate code write another spare's task."""
    for _, write_end in spares:
        try:
            os.close(write_end)
        except OSError:
            pass


def _fork_spare(proto_out: int, others: Sequence[tuple[int, int]] = ()) -> tuple[int, int]:
    read_end, write_end = os.pipe()
    zygote = os.getpid()
    pid = os.fork()
    if pid == 0:
        os.close(write_end)
        _close_request_pipes(others)
        _spare(read_end, proto_out, zygote)
    _own_group(pid)
    os.close(read_end)
    return pid, write_end


def _own_group(pid: int) -> None:
    """Put a new child in its own process group from this side too (the child does the same), so a kill of its
    group can never race the child's own setpgid."""
    try:
        os.setpgid(pid, pid)
    except (PermissionError, ProcessLookupError):  # it got there first, or is already gone
        pass


def _start(request: dict, proto_out: int, spare: tuple[int, int] | None,
           others: Sequence[tuple[int, int]] = ()) -> int:
    """The pid of the process that runs ``request``: the spare when there is one, else a fresh fork."""
    if spare is not None:
        pid, write_end = spare
        try:
            os.write(write_end, json.dumps(request).encode())
            os.close(write_end)
            return pid
        except OSError:  # the spare died while warming up: reap it and fork directly
            os.close(write_end)
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    zygote = os.getpid()
    pid = os.fork()
    if pid == 0:
        _close_request_pipes(others)
        _child(request, proto_out, zygote)
    _own_group(pid)
    return pid


def main() -> None:
    try:
        spares_wanted = max(0, int(os.environ.get(SPARE_ENV) or 0))
    except ValueError:
        spares_wanted = 1
    use_spares = spares_wanted > 0
    _preload(cuda=use_spares)
    proto_out = os.dup(1)
    # Nothing the zygote itself prints may corrupt the protocol.
    os.dup2(2, 1)
    out = os.fdopen(proto_out, "w", buffering=1)
    spares: collections.deque[tuple[int, int]] = collections.deque()
    for _ in range(spares_wanted):
        spares.append(_fork_spare(proto_out, spares))
    out.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    running: set[int] = set()

    def reap(block: bool) -> None:
        for pid in sorted(running):
            done, status = os.waitpid(pid, 0 if block else os.WNOHANG)
            if done:
                running.discard(pid)
                exit_code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
                signal = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
                out.write(json.dumps({"pid": pid, "exit": exit_code, "signal": signal}) + "\n")

    pending = b""
    try:
        while True:
            readable, _, _ = select.select([0], [], [], 0.002 if running else None)
            reap(block=False)
            if not readable:
                continue
            chunk = os.read(0, 1 << 16)
            if not chunk:
                break
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if not line.strip():
                    continue
                # The oldest spare, the one most likely warm by now; a new one warms up while this one runs.
                pid = _start(json.loads(line), proto_out, spares.popleft() if spares else None, spares)
                running.add(pid)
                if use_spares:
                    spares.append(_fork_spare(proto_out, spares))
                out.write(json.dumps({"pid": pid}) + "\n")
    finally:
        reap(block=True)
        for spare_pid, write_end in spares:
            os.close(write_end)  # an unused spare sees EOF and exits
            os.waitpid(spare_pid, 0)

if __name__ == "__main__":
    main()
