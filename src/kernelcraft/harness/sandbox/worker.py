"""Parent side of the candidate runner: start a zygote, hand it tasks, enforce timeouts, turn every way a candidate
can fail into a recorded reason.

The parent is the trusted side. It never imports candidate code; it only reads the result file a child wrote
(JSON, and tensors through ``torch.load(weights_only=True)``), so a candidate cannot reach the comparator or the
decision.
"""

from __future__ import annotations

import itertools
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernelcraft.harness.sandbox.env import scrubbed_env
from kernelcraft.jsonio import write_json

MAX_RSS_ENV = "KERNELCRAFT_MAX_RSS_BYTES"


@dataclass
class Outcome:
    """What one task in one child came to. ``reason`` is set whenever ``ok`` is false."""

    ok: bool
    result: dict = field(default_factory=dict)
    reason: str | None = None
    wall_s: float = 0.0
    log: str | None = None
    # With ``on_result``: seconds from the start to the moment the result was handled (the child then released, or
    # held for the caller with ``keep``).
    released_s: float | None = None
    # Hand-overs answered, and when (seconds from the start).
    partials: int = 0
    marks: list[float] = field(default_factory=list)
    # A child kept alive after its result (``keep``): the caller ends it with Worker.release(pid).
    held_pid: int | None = None


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def _log_tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def _resident_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def default_max_rss() -> int:
    """Half the machine's memory, unless KERNELCRAFT_MAX_RSS_BYTES says otherwise: a candidate that allocates
    without bound is stopped with a reason before the kernel's OOM killer picks a victim (maybe the parent)."""
    override = os.environ.get(MAX_RSS_ENV)
    if override:
        return int(override)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


class Worker:
    """One zygote process. Not thread-safe: give each thread its own Worker."""

    _counter = itertools.count()

    def __init__(self, env: dict[str, str] | None = None, work_dir: str | Path | None = None,
                 start_timeout: float = 120.0, max_rss_bytes: int | None = None) -> None:
        self._max_rss = default_max_rss() if max_rss_bytes is None else max_rss_bytes
        self._env = scrubbed_env(extra=env or {})
        # The package must be importable in the zygote even when it is not installed (PYTHONPATH=src use).
        src = str(Path(__file__).resolve().parents[3])
        self._env["PYTHONPATH"] = os.pathsep.join(p for p in (src, self._env.get("PYTHONPATH", "")) if p)
        self._work_dir = Path(work_dir or tempfile.mkdtemp(prefix="kernelcraft-worker-"))
        self._work_dir.mkdir(parents=True, exist_ok=True)
        self._start_timeout = start_timeout
        self._proc: subprocess.Popen | None = None
        self._ready = False
        self._starts = 0
        # Children that finished their task but whose end is not yet reported: pid -> killed already (False while
        # held for the caller, see ``keep``). The current call does not wait for them; timing waits for them all.
        self._detached: dict[int, bool] = {}
        self._pending = b""
        self._launched = 0.0
        # Seconds from launching the zygote to its "ready" (imports done), for the job's own phase timings.
        self.ready_s: float | None = None

    @property
    def restarts(self) -> int:
        """How often a zygote had to be replaced because a candidate took it down."""
        return max(0, self._starts - 1)

    # -- process management -------------------------------------------------------------------------------
    def start(self) -> None:
        """Launch the zygote now, without waiting for it: its imports (seconds) overlap whatever the caller does
        next; the first call waits for it to be ready."""
        if self._proc is None or self._proc.poll() is not None:
            self._starts += 1
            self._ready = False
            self._pending = b""
            self._detached.clear()
            self._launched = time.perf_counter()
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "kernelcraft.harness.sandbox.zygote"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None,
                env=self._env, text=True, bufsize=1,
            )

    def _start(self) -> None:
        self.start()
        if self._ready:
            return
        msg = self._read(self._start_timeout)
        if not msg or not msg.get("ready"):
            self.close()
            raise RuntimeError("candidate worker failed to start (see the job log for its error)")
        self._ready = True
        self.ready_s = time.perf_counter() - self._launched

    def _read(self, timeout: float | None) -> dict | None:
        """One protocol line, parsed; None at the timeout, ``{"eof": True}`` when the zygote is gone. Lines are
        split here from raw reads, so several arriving together are never stranded in a buffer select cannot see."""
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        deadline = None if timeout is None else time.perf_counter() + max(timeout, 0.0)
        while b"\n" not in self._pending:
            if deadline is not None:
                ready, _, _ = select.select([fd], [], [], max(deadline - time.perf_counter(), 0.0))
                if not ready:
                    return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return {"eof": True}
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        return json.loads(line)

    def close(self) -> None:
        for pid in list(self._detached):
            self.release(pid)  # a held child would otherwise keep the zygote waiting for it
        if self._proc is not None:
            try:
                if self._proc.stdin:
                    self._proc.stdin.close()
                self._proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- tasks ---------------------------------------------------------------------------------------------
    def call(self, task: str, kwargs: dict, timeout: float | Sequence[float], log: str | Path | None = None,
             on_result: Callable[[dict], Any] | None = None,
             on_partial: Callable[[dict], dict] | None = None, keep: bool = False,
             while_running: Callable[[], None] | None = None,
             exclusive: Callable[[dict], bool] | None = None) -> Outcome:
        """Run ``task`` in a fresh child; never raises for anything the candidate does.

        ``on_partial(result)`` answers each intermediate hand-over of the task (see zygote.py) with the dict the
        child receives. An answer after which the child needs the device alone (``exclusive(answer)`` true; every
        answer when ``exclusive`` is None) is sent only once every earlier child has exited, so what the child does
        next (timing) never shares the device with a previous candidate's process; any other answer (one more
        verification trial) is sent at once, and the earlier child's exit overlaps this one's work. ``timeout`` is
        per stage when a sequence: the k-th hand-over ends stage k, and its clock restarts there.

        With ``on_result``, the child stays alive after writing its final result until ``on_result(result)`` has
        returned (it holds memory the parent reads through CUDA IPC), and is then killed, with everything it
        started in its process group, without waiting for it to finish exiting; what ``on_result`` returns is put
        in the outcome's ``result["handled"]``, and an exception it raises becomes the outcome's reason. With
        ``keep`` as well, the child is not killed but held (``Outcome.held_pid``) until the caller's
        :meth:`release`, so the caller can still read its memory after the call; a held child never outlives the
        next hand-over, since no child is timed while another lives.

        ``while_running()`` runs in this process once the child has started, before waiting for it: the caller's
        own work for an earlier candidate (it must not raise) overlaps this candidate's start.
        """
        if self._proc is None or self._proc.poll() is not None or not self._ready:
            self._start()
        limits = [float(t) for t in timeout] if isinstance(timeout, Sequence) else [float(timeout)]
        n = next(self._counter)
        stem = self._work_dir / f"task-{os.getpid()}-{n}"
        result_path = stem.with_suffix(".json")
        log_path = Path(log) if log else stem.with_suffix(".log")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        request = {"task": task, "kwargs": kwargs, "result": str(result_path), "log": str(log_path),
                   "reply": str(stem.with_suffix(".reply")), "hold": on_result is not None}
        state = _CallState(start=time.perf_counter(), limits=limits, exclusive=exclusive)
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
        except BrokenPipeError:
            self.close()
            return Outcome(False, reason="worker died before the task started", log=str(log_path))
        started = self._message(None, self._start_timeout)
        if not started or "pid" not in started:
            self.close()
            return Outcome(False, reason="worker died before the task started", log=str(log_path))
        pid = started["pid"]
        if while_running is not None:
            while_running()
        try:
            done = self._wait(pid, result_path, Path(request["reply"]), on_result, on_partial, state, keep)
        finally:
            for k in range(state.partials + 1):
                Path(f"{request['reply']}.{k}").unlink(missing_ok=True)
                Path(f"{result_path}.{k}").unlink(missing_ok=True)
        wall = time.perf_counter() - state.start
        common = {"wall_s": wall, "log": str(log_path), "partials": state.partials, "marks": state.marks}
        if done is _HANDLED:
            result_path.unlink(missing_ok=True)
            if state.error:
                return Outcome(False, reason=state.error, **common)
            return Outcome(True, result={"handled": state.value}, released_s=state.released - state.start,
                           held_pid=pid if keep else None, **common)
        timed_out = done is None
        if timed_out or state.rss:
            self._kill(pid)
            done = self._message(pid, 30.0)  # the zygote reports the killed child's end
        if state.rss:
            if done is None or done.get("eof"):
                self.close()
            result_path.unlink(missing_ok=True)
            return Outcome(False, reason=(f"exceeded the host memory limit: {state.rss / 2**30:.1f} GiB resident, "
                                          f"limit {self._max_rss / 2**30:.1f} GiB"), **common)
        limit = state.limit()
        if done is None or done.get("eof"):
            # The zygote itself is gone (killed by the candidate, or wedged): replace it next call, and take the
            # orphaned candidate down with it.
            self._kill(pid)
            self.close()
            if timed_out:
                return Outcome(False, reason=f"timeout after {limit:g} s", **common)
            return Outcome(False, reason="candidate killed its worker process", **common)
        if timed_out:
            result_path.unlink(missing_ok=True)
            return Outcome(False, reason=f"timeout after {limit:g} s", **common)
        payload = None
        if result_path.exists():
            try:
                payload = json.loads(result_path.read_text())
            except (OSError, ValueError):
                payload = None
            result_path.unlink(missing_ok=True)
        if done.get("signal"):
            name = _signal_name(done["signal"])
            return Outcome(False, reason=f"crashed with {name}", **common)
        if payload is None:
            tail = _log_tail(log_path)
            reason = f"process exited with code {done.get('exit')} and no result"
            return Outcome(False, reason=reason + (f": {tail}" if tail else ""), **common)
        if not payload.get("ok"):
            return Outcome(False, reason=payload.get("error") or "failed", **common)
        if state.error:
            return Outcome(False, reason=state.error, **common)
        return Outcome(True, result=payload.get("result") or {}, **common)

    @staticmethod
    def _kill(pid: int) -> None:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def release(self, pid: int) -> None:
        """End a child held by ``call(keep=True)``, without waiting for its exit (the next hand-over waits)."""
        if self._detached.get(pid) is False:
            self._kill(pid)
            self._detached[pid] = True

    def _message(self, pid: int | None, timeout: float) -> dict | None:
        """The next protocol message that concerns the current task (None at the timeout): reports of earlier,
        detached children ending are consumed here on the way."""
        deadline = time.perf_counter() + max(timeout, 0.0)
        while True:
            msg = self._read(max(deadline - time.perf_counter(), 0.0))
            if msg is not None and "exit" in msg and msg.get("pid") != pid and msg.get("pid") in self._detached:
                self._detached.pop(msg["pid"])
                continue
            return msg

    def wait_for_exits(self) -> None:
        """Block until every earlier child has exited (see :meth:`_await_detached`)."""
        if self._proc is not None and self._ready:
            self._await_detached()

    def _await_detached(self, timeout: float = 30.0) -> None:
        """Block until every earlier child has exited: a held one is released now (its holder is done with it by
        the time anything is timed), a stuck one is killed again and then left behind."""
        for pid in list(self._detached):
            self.release(pid)
        deadline = time.perf_counter() + timeout
        while self._detached and time.perf_counter() < deadline:
            msg = self._read(min(0.05, max(deadline - time.perf_counter(), 0.0)))
            if msg is None:
                continue
            if msg.get("eof"):
                self._detached.clear()
                return
            if "exit" in msg:
                self._detached.pop(msg.get("pid"), None)
        for pid in self._detached:
            self._kill(pid)

    def _wait(self, pid: int, result_path: Path, reply: Path, on_result: Callable[[dict], Any] | None,
              on_partial: Callable[[dict], dict] | None, state: _CallState, keep: bool) -> dict | object | None:
        """Wait for the child to end (its message), or None at the deadline, or _HANDLED once a held child's
        result has been handled and the child killed (or, with ``keep``, left held). On the way: answer
        hand-overs, and stop a child whose resident memory passes the limit (``state.rss``)."""
        fast = on_result is not None or on_partial is not None
        next_rss = 0.0
        while True:
            now = time.perf_counter()
            deadline = state.deadline()
            if now >= deadline:
                return None
            partial = Path(f"{result_path}.{state.partials}")
            if partial.exists():
                self._answer(partial, Path(f"{reply}.{state.partials}"), on_partial, state)
                continue
            if on_result is not None and result_path.exists():
                try:
                    payload = json.loads(result_path.read_text())
                except (OSError, ValueError):
                    continue  # written by rename, so this is rare: read again
                if not payload.get("ok"):
                    # The task failed: the child is not held, and its end says the rest.
                    return self._message(pid, max(deadline - time.perf_counter(), 0.0))
                try:
                    state.value = on_result(payload.get("result") or {})
                except Exception as exc:  # the child's data could not be used: its failure
                    state.error = f"unusable shared outputs: {type(exc).__name__}: {exc}"[:300]
                state.released = time.perf_counter()
                self._detached[pid] = False
                if not keep or state.error:
                    self.release(pid)
                return _HANDLED
            msg = self._message(pid, min(0.002 if fast else 0.05, deadline - now))
            if msg is not None:
                return msg
            if self._max_rss and now >= next_rss:
                next_rss = now + 0.05
                rss = _resident_bytes(pid)
                if rss > self._max_rss:
                    state.rss = rss
                    return {"over_memory": True}

    def _answer(self, partial: Path, reply: Path, on_partial: Callable[[dict], dict] | None,
                state: _CallState) -> None:
        try:
            payload = json.loads(partial.read_text())
        except (OSError, ValueError):
            return  # written by rename, so this is rare: read again
        answer: dict = {}
        if on_partial is None:
            state.error = "the task handed over a result nobody asked for"
        else:
            try:
                answer = on_partial(payload.get("result") or {})
            except Exception as exc:  # the child's data could not be used: its failure
                state.error = f"unusable hand-over: {type(exc).__name__}: {exc}"[:300]
                answer = {}
        # Judging needs no exclusive device, so earlier children finish exiting meanwhile; what the child does once
        # answered may need it alone (timing): then no earlier child may still hold it.
        if state.exclusive is None or state.exclusive(answer):
            self._await_detached()
        write_json(reply, answer)
        partial.unlink(missing_ok=True)
        state.partials += 1
        state.marks.append(time.perf_counter() - state.start)


_HANDLED = object()


@dataclass
class _CallState:
    """What one call has seen so far."""

    start: float
    limits: list[float]
    partials: int = 0
    marks: list[float] = field(default_factory=list)
    value: Any = None
    error: str | None = None
    released: float = 0.0
    rss: int = 0
    exclusive: Callable[[dict], bool] | None = None

    def limit(self) -> float:
        return self.limits[min(self.partials, len(self.limits) - 1)]

    def deadline(self) -> float:
        return (self.start + self.marks[-1] if self.marks else self.start) + self.limit()
