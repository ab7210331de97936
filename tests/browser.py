"""Loading a page in a real headless Chromium through the DevTools protocol: what the page logged, every request it
made, facts read from the rendered page by a script, and a screenshot. Used by the report tests; Chromium comes from
the system (Debian's ``chromium`` in CI), the protocol client is ``websocket-client``."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Every trajectory chart as [width, height, marks]: laid out (a box of non-zero size) and drawn (points, lines).
CHARTS_JS = ("Array.from(document.querySelectorAll('svg.trajectory')).map(s => { const r = s.getBoundingClientRect(); "
             "return [r.width, r.height, s.querySelectorAll('path, circle, polyline, line, rect').length]; })")


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class PageLoad:
    errors: list[str] = field(default_factory=list)  # console errors, uncaught exceptions, failed loads
    requests: list[str] = field(default_factory=list)  # every URL the page asked for, the page itself first
    facts: Any = None  # the value of the evaluated expression


class _Session:
    def __init__(self, ws_url: str, timeout: float):
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=timeout)
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, **params: Any) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, method: str, deadline: float) -> None:
        if any(e.get("method") == method for e in self.events):
            return
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            self.events.append(msg)
            if msg.get("method") == method:
                return
        raise TimeoutError(f"no {method} before the deadline")


def load(page: Path, screenshot: Path, expression: str, timeout: float = 60.0) -> PageLoad:
    """Open ``page`` (a local file) in a fresh headless Chromium profile, wait for its load event and a moment
    for late errors, evaluate ``expression`` (its JSON-serialisable value becomes ``facts``), and write a full-page
    PNG to ``screenshot``."""
    exe = chromium()
    if exe is None:
        raise RuntimeError("no Chromium on PATH")
    profile = tempfile.mkdtemp(prefix="kc-chromium-")
    # A session of its own, so the browser's helpers (renderer, crash handler), which may still write to the
    # profile after the main process exits, are stopped with it before the profile is removed.
    proc = subprocess.Popen(
        [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
         "--remote-debugging-port=0", f"--user-data-dir={profile}", "--window-size=1280,1600", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not port_file.is_file() or not port_file.read_text().strip():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("Chromium did not open its DevTools port")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout) as resp:
            targets = json.load(resp)
        target = next(t for t in targets if t.get("type") == "page")
        session = _Session(target["webSocketDebuggerUrl"], timeout)
        for domain in ("Network", "Runtime", "Log", "Page"):
            session.call(f"{domain}.enable")
        session.call("Page.navigate", url=page.resolve().as_uri())
        session.wait_for("Page.loadEventFired", time.monotonic() + timeout)
        settle = time.monotonic() + 0.5
        while time.monotonic() < settle:  # late console errors and requests (timers, lazy loads)
            session.call("Runtime.evaluate", expression="0")
            time.sleep(0.1)
        value = session.call("Runtime.evaluate", expression=expression, returnByValue=True)
        shot = session.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        session.ws.close()
    finally:
        _stop(proc)
        _remove(profile)
    out = PageLoad(facts=value.get("result", {}).get("value"))
    if "exceptionDetails" in value:
        out.errors.append(f"the test's expression failed: {value['exceptionDetails']}")
    for event in session.events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Network.requestWillBeSent":
            out.requests.append(params["request"]["url"])
        elif method == "Network.loadingFailed":
            out.errors.append(f"load failed: {params.get('errorText')}")
        elif method == "Runtime.exceptionThrown":
            out.errors.append(f"exception: {params['exceptionDetails'].get('text')}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            out.errors.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            out.errors.append(f"log: {params['entry'].get('text')}")
    return out


def _stop(proc: subprocess.Popen) -> None:
    """The browser and every process of its session: asked to quit, then killed."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # helpers that outlived the main process
    except ProcessLookupError:
        pass
    proc.wait()


def _remove(profile: str) -> None:
    """The profile directory, retried while a helper that was still exiting writes its last files into it."""
    deadline = time.monotonic() + 10
    while True:
        try:
            shutil.rmtree(profile)
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
