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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernelcraft.harness.env import scrubbed_env

MAX_RSS_ENV = "KERNELCRAFT_MAX_RSS_BYTES"


@dataclass
class Outcome:
    """What one task in one child came to. ``reason`` is set whenever ``ok`` is false."""

    ok: bool
    result: dict = field(default_factory=dict)
    reason: str | None = None
    wall_s: float = 0.0
    log: str | None = None
    # With a shared result: seconds from the start to the child's release (the rest of wall_s is its exit).
    released_s: float | None = None


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
        src = str(Path(__file__).resolve().parents[2])
        self._env["PYTHONPATH"] = os.pathsep.join(p for p in (src, self._env.get("PYTHONPATH", "")) if p)
        self._work_dir = Path(work_dir or tempfile.mkdtemp(prefix="kernelcraft-worker-"))
        self._work_dir.mkdir(parents=True, exist_ok=True)
        self._start_timeout = start_timeout
        self._proc: subprocess.Popen | None = None
        self._ready = False
        self._starts = 0
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
            self._launched = time.perf_counter()
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "kernelcraft.harness.zygote"],
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
        assert self._proc is not None and self._proc.stdout is not None
        if timeout is not None:
            ready, _, _ = select.select([self._proc.stdout], [], [], max(timeout, 0.0))
            if not ready:
                return None
        line = self._proc.stdout.readline()
        if not line:
            return {"eof": True}
        return json.loads(line)

    def close(self) -> None:
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
    def call(self, task: str, kwargs: dict, timeout: float, log: str | Path | None = None,
             on_result: Callable[[dict], Any] | None = None) -> Outcome:
        """Run ``task`` in a fresh child; never raises for anything the candidate does.

        With ``on_result``, the child stays alive after writing its result until ``on_result(result)`` has
        returned (it holds memory the parent reads through CUDA IPC); what ``on_result`` returns is put in the
        outcome's ``result["handled"]``, and an exception it raises becomes the outcome's reason.
        """
        if self._proc is None or self._proc.poll() is not None or not self._ready:
            self._start()
        n = next(self._counter)
        result_path = self._work_dir / f"task-{os.getpid()}-{n}.json"
        log_path = Path(log) if log else self._work_dir / f"task-{os.getpid()}-{n}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        request = {"task": task, "kwargs": kwargs, "result": str(result_path), "log": str(log_path)}
        release_path = self._work_dir / f"task-{os.getpid()}-{n}.release"
        if on_result is not None:
            request["release"] = str(release_path)
        handled: dict = {}
        start = time.perf_counter()
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
        except BrokenPipeError:
            self.close()
            return Outcome(False, reason="worker died before the task started", log=str(log_path))
        started = self._read(self._start_timeout)
        if not started or "pid" not in started:
            self.close()
            return Outcome(False, reason="worker died before the task started", log=str(log_path))
        pid = started["pid"]
        try:
            done = self._wait(pid, start + timeout, result_path, release_path, on_result, handled)
        finally:
            release_path.unlink(missing_ok=True)
        timed_out = done is None
        if timed_out or handled.get("rss"):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            done = self._read(30.0)  # the zygote reports the killed child's end
        wall = time.perf_counter() - start
        if handled.get("rss"):
            if done is None or done.get("eof"):
                self.close()
            result_path.unlink(missing_ok=True)
            return Outcome(False, reason=(f"exceeded the host memory limit: {handled['rss'] / 2**30:.1f} GiB resident, "
                                          f"limit {self._max_rss / 2**30:.1f} GiB"), wall_s=wall, log=str(log_path))
        if done is None or done.get("eof"):
            # The zygote itself is gone (killed by the candidate, or wedged): replace it next call, and take the
            # orphaned candidate down with it.
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.close()
            if timed_out:
                return Outcome(False, reason=f"timeout after {timeout:g} s", wall_s=wall, log=str(log_path))
            return Outcome(False, reason="candidate killed its worker process", wall_s=wall, log=str(log_path))
        if timed_out:
            result_path.unlink(missing_ok=True)
            return Outcome(False, reason=f"timeout after {timeout:g} s", wall_s=wall, log=str(log_path))
        payload = None
        if result_path.exists():
            try:
                payload = json.loads(result_path.read_text())
            except (OSError, ValueError):
                payload = None
            result_path.unlink(missing_ok=True)
        if done.get("signal"):
            name = _signal_name(done["signal"])
            return Outcome(False, reason=f"crashed with {name}", wall_s=wall, log=str(log_path))
        if payload is None:
            tail = _log_tail(log_path)
            reason = f"process exited with code {done.get('exit')} and no result"
            return Outcome(False, reason=reason + (f": {tail}" if tail else ""), wall_s=wall, log=str(log_path))
        if not payload.get("ok"):
            return Outcome(False, reason=payload.get("error") or "failed", wall_s=wall, log=str(log_path))
        if handled.get("error"):
            return Outcome(False, reason=handled["error"], wall_s=wall, log=str(log_path))
        result = payload.get("result") or {}
        released = handled["released"] - start if "released" in handled else None
        if on_result is not None:
            result = {"handled": handled.get("value")}
        return Outcome(True, result=result, wall_s=wall, log=str(log_path), released_s=released)

    def _wait(self, pid: int, deadline: float, result_path: Path, release_path: Path,
              on_result: Callable[[dict], Any] | None, handled: dict) -> dict | None:
        """Wait for the child to end (its message), or None at the deadline. On the way: hand a shared result to
        ``on_result`` (then release the child), and stop a child whose resident memory passes the limit
        (``handled["rss"]``)."""
        poll = 0.002 if on_result is not None else 0.05
        next_rss = 0.0
        while True:
            now = time.perf_counter()
            if now >= deadline:
                return None
            wait = min(poll, deadline - now)
            if on_result is not None and not handled and result_path.exists():
                wait = 0.0
            msg = self._read(wait)
            if msg is not None:
                return msg
            if self._max_rss and now >= next_rss:
                next_rss = now + 0.05
                rss = _resident_bytes(pid)
                if rss > self._max_rss:
                    handled["rss"] = rss
                    return {"over_memory": True}
            if on_result is not None and not handled and result_path.exists():
                try:
                    payload = json.loads(result_path.read_text())
                except (OSError, ValueError):
                    continue  # written by rename, so this is rare: read again
                handled["seen"] = True
                if payload.get("ok"):
                    try:
                        handled["value"] = on_result(payload.get("result") or {})
                    except Exception as exc:  # the child's data could not be used: its failure
                        handled["error"] = f"unusable shared outputs: {type(exc).__name__}: {exc}"[:300]
                release_path.touch()
                handled["released"] = time.perf_counter()
