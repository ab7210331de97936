"""The warm candidate runner: a process that has imported torch once and forks one child per candidate task.

Why fork from a zygote: a fresh Python + torch (+ CUDA) start costs seconds (6.5 s measured on the H100 host), far
more than most candidates' work. The zygote never initialises CUDA and never runs a parallel torch op, so forking it
is safe; each child initialises CUDA for itself, runs one untrusted candidate, writes its result file and exits.
A child that crashes, hangs or corrupts its context takes nothing with it: the zygote and the comparing parent
live in other processes.

Protocol (one JSON object per line): the parent writes ``{"task", "kwargs", "result", "log"}`` on stdin; the
zygote answers ``{"pid"}`` as soon as the child exists (so the parent can kill it on timeout) and then
``{"pid", "exit", "signal"}`` when it ends. The child's stdout/stderr go to ``log``, never into the protocol.

Run as ``python -m kernelcraft.harness.zygote``.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback

# Set to keep one spare child with its CUDA context already created (GPU jobs of the cuda backend).
SPARE_ENV = "KERNELCRAFT_SPARE_CUDA"
MAX_FILE_ENV = "KERNELCRAFT_MAX_FILE_BYTES"
# Outputs handed over through a file (CPU backend) must fit: a full-size problem's outputs and inputs are a few GiB.
DEFAULT_MAX_FILE_BYTES = 32 * 2**30


def _child(request: dict, proto_out: int) -> None:
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
        from kernelcraft.harness import tasks
        from kernelcraft.jsonio import write_json

        try:
            result = tasks.run(request["task"], request["kwargs"])
            write_json(request["result"], {"ok": True, "result": result})
            release = request.get("release")
            if release:
                # Shared GPU memory must outlive the parent's reading of it: wait to be released (or killed).
                while not os.path.exists(release):
                    time.sleep(0.0005)
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


def _spare(requests: int, proto_out: int) -> None:
    """In a spare child: create the CUDA context now (a fifth of a second alone, more when several start at
    once), then wait for the one task this process will ever run. The spare is forked while the previous
    candidate runs, so a candidate finds its context ready; no candidate code has run in it before."""
    try:
        if os.getpgid(0) != os.getpid():
            os.setpgid(0, 0)
        import torch

        torch.empty(1, device="cuda")
        torch.cuda.synchronize()
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
    _child(json.loads(b"".join(chunks)), proto_out)


def _fork_spare(proto_out: int) -> tuple[int, int]:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(write_end)
        _spare(read_end, proto_out)
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


def _start(request: dict, proto_out: int, spare: tuple[int, int] | None) -> int:
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
    pid = os.fork()
    if pid == 0:
        _child(request, proto_out)
    _own_group(pid)
    return pid


def main() -> None:
    # Imported before any fork, once: this is the start-up cost the zygote exists to amortise.
    import torch  # noqa: F401

    from kernelcraft.harness import audit, tasks  # noqa: F401

    proto_out = os.dup(1)
    # Nothing the zygote itself prints may corrupt the protocol.
    os.dup2(2, 1)
    out = os.fdopen(proto_out, "w", buffering=1)
    use_spares = bool(os.environ.get(SPARE_ENV))
    spare = _fork_spare(proto_out) if use_spares else None
    out.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    try:
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            request = json.loads(line)
            pid = _start(request, proto_out, spare)
            # The next candidate's process warms up while this one runs.
            spare = _fork_spare(proto_out) if use_spares else None
            out.write(json.dumps({"pid": pid}) + "\n")
            _, status = os.waitpid(pid, 0)
            exit_code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
            signal = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
            out.write(json.dumps({"pid": pid, "exit": exit_code, "signal": signal}) + "\n")
    finally:
        if spare is not None:
            os.close(spare[1])  # an unused spare sees EOF and exits
            os.waitpid(spare[0], 0)


if __name__ == "__main__":
    main()
