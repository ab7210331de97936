"""A real HTTP server on 127.0.0.1 that speaks the OpenAI and Gemini wire formats, for tests of the model layer
and of the workflow: the official SDKs are pointed at it with ``base_url`` and parse its replies as they would
the real services' (no mock of any SDK).

Endpoints: ``POST /v1/chat/completions`` and ``POST /v1/responses`` (OpenAI; SDK ``base_url=server.openai_url``)
and ``POST /v1/models/{model}:generateContent`` (also under ``/v1beta``; Gemini; SDK
``base_url=server.gemini_url``).

Script it:

* ``LLMServer(responder)``: ``responder(req) -> str | Scripted`` answers every request that no fault takes.
  ``req`` is a :class:`Received`: ``req.wire`` (chat | responses | gemini), ``req.model``, ``req.messages``
  (``[{"role": "system"|"user"|"assistant", "content": str}]``, the same for every wire format), ``req.body``.
* faults, consumed one per request in the order queued: ``fail(status, retry_after=..., retry_after_ms=...)``,
  ``hang(seconds)`` (no answer for that long: longer than the client's timeout), ``malformed()`` (HTTP 200 with
  a body that is not JSON), ``empty()`` (HTTP 200 with ``{}``: JSON, but no choices / output / candidates),
  ``drop()`` (the connection closed without an answer), ``truncate()`` (the responder's text cut in half, finish
  reason length / ``incomplete`` with ``max_output_tokens`` / ``MAX_TOKENS``), and ``answer()`` (a normal answer,
  to place a fault after some good requests); each takes ``times=n``.
* ``delay_s``: every answered request takes this long (to make calls overlap).
* ``tokens``: the usage reported per answer unless a :class:`Scripted` says otherwise.

Observe: ``server.received`` (every request, faulted or not, in arrival order), ``server.count``,
``server.max_in_flight``.

As a fixture: ``from llm_server import llm_server`` in a test module, then take ``llm_server`` as an argument
(its responder is an echo; set ``llm_server.responder``).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass
class Scripted:
    """A responder's answer with its own finish reason or usage."""

    text: str
    finish_reason: str = "stop"  # stop | length
    input_tokens: int | None = None
    output_tokens: int | None = None
    reasoning_tokens: int | None = None


@dataclass
class Fault:
    kind: str  # status | hang | malformed | empty | drop | truncate | answer
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    message: str = ""
    seconds: float = 0.0


@dataclass
class Received:
    wire: str  # chat | responses | gemini
    path: str
    model: str
    messages: list[dict[str, str]]
    body: dict[str, Any]
    headers: dict[str, str]
    time: float
    fault: str | None = None


Responder = Callable[[Received], "str | Scripted"]


def echo(req: Received) -> str:
    last = next((m["content"] for m in reversed(req.messages) if m["role"] == "user"), "")
    return f"echo: {last}"


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def messages_of(wire: str, body: dict[str, Any]) -> list[dict[str, str]]:
    """The conversation of a request body, as role/content pairs whatever the wire format."""
    out: list[dict[str, str]] = []
    if wire == "chat":
        for m in body.get("messages", []):
            role = "system" if m.get("role") == "developer" else m.get("role")
            out.append({"role": role, "content": _text_of(m.get("content"))})
    elif wire == "responses":
        if body.get("instructions"):
            out.append({"role": "system", "content": body["instructions"]})
        items = body.get("input", [])
        if isinstance(items, str):
            items = [{"role": "user", "content": items}]
        for m in items:
            out.append({"role": m.get("role", "user"), "content": _text_of(m.get("content"))})
    else:
        system = body.get("systemInstruction") or body.get("system_instruction")
        if system:
            out.append({"role": "system", "content": _text_of(system.get("parts"))})
        for c in body.get("contents", []):
            role = "assistant" if c.get("role") == "model" else "user"
            out.append({"role": role, "content": _text_of(c.get("parts"))})
    return out


_GEMINI_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                  429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
# google-genai 3.x calls v1 by default (v1beta with GOOGLE_GENAI_API_VERSION=beta); both are served.
_GEMINI_PATH = re.compile(r"^/(?:v1|v1beta|v1alpha)/models/([^/:]+):generateContent$")


class LLMServer:
    def __init__(self, responder: Responder | None = None, *, delay_s: float = 0.0,
                 tokens: tuple[int, int, int] = (1000, 500, 100)) -> None:
        self.responder: Responder = responder or echo
        self.delay_s = delay_s
        self.tokens = tokens  # input, output (reasoning included), reasoning
        self.received: list[Received] = []
        self.faults: deque[Fault] = deque()
        self.max_in_flight = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def start(self) -> LLMServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                server._handle(self)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="llm-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def __enter__(self) -> LLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "start the server first"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def openai_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def gemini_url(self) -> str:
        return self.url

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.received)

    # -- scripting -----------------------------------------------------------------------------------------------

    def fail(self, status: int, *, times: int = 1, retry_after: str | float | None = None,
             retry_after_ms: float | None = None, message: str | None = None) -> None:
        headers = {}
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        if retry_after_ms is not None:
            headers["retry-after-ms"] = str(retry_after_ms)
        text = message or f"scripted failure {status}"
        self._queue(Fault("status", status=status, headers=headers, message=text), times)

    def hang(self, seconds: float, *, times: int = 1) -> None:
        self._queue(Fault("hang", seconds=seconds), times)

    def malformed(self, *, times: int = 1) -> None:
        self._queue(Fault("malformed"), times)

    def empty(self, *, times: int = 1) -> None:
        self._queue(Fault("empty"), times)

    def drop(self, *, times: int = 1) -> None:
        self._queue(Fault("drop"), times)

    def truncate(self, *, times: int = 1) -> None:
        self._queue(Fault("truncate"), times)

    def answer(self, *, times: int = 1) -> None:
        self._queue(Fault("answer"), times)

    def _queue(self, fault: Fault, times: int) -> None:
        with self._lock:
            self.faults.extend(Fault(**vars(fault)) for _ in range(times))

    # -- serving -------------------------------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path.split("?", 1)[0]
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._send(h, 400, {"error": {"message": "request body is not JSON"}})
            return
        if path == "/v1/chat/completions":
            wire, model = "chat", body.get("model", "")
        elif path == "/v1/responses":
            wire, model = "responses", body.get("model", "")
        elif m := _GEMINI_PATH.match(path):
            wire, model = "gemini", m.group(1)
        else:
            self._send(h, 404, {"error": {"message": f"no such endpoint {path}"}})
            return
        with self._lock:
            fault = self.faults.popleft() if self.faults else None
            req = Received(wire, path, model, messages_of(wire, body), body,
                           {k.lower(): v for k, v in h.headers.items()}, time.time(), fault.kind if fault else None)
            self.received.append(req)
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            self._answer(h, req, fault)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout): nothing to answer
        finally:
            with self._lock:
                self._in_flight -= 1

    def _answer(self, h: BaseHTTPRequestHandler, req: Received, fault: Fault | None) -> None:
        if fault is not None and fault.kind == "hang":
            self._stop.wait(fault.seconds)
            return
        if fault is not None and fault.kind == "status":
            self._send(h, fault.status, self._error_body(req.wire, fault), fault.headers)
            return
        if fault is not None and fault.kind == "malformed":
            self._send_raw(h, 200, b'{"id": "broken", "choices": [{"index": 0, "message": {"content": "trunc')
            return
        if fault is not None and fault.kind == "empty":
            self._send(h, 200, {})
            return
        if fault is not None and fault.kind == "drop":
            h.close_connection = True
            return
        if self.delay_s:
            self._stop.wait(self.delay_s)
        answer = self.responder(req)
        scripted = answer if isinstance(answer, Scripted) else Scripted(str(answer))
        if fault is not None and fault.kind == "truncate":
            scripted = Scripted(scripted.text[: len(scripted.text) // 2], "length", scripted.input_tokens,
                                scripted.output_tokens, scripted.reasoning_tokens)
        self._send(h, 200, self._reply_body(req, scripted))

    def _error_body(self, wire: str, fault: Fault) -> dict[str, Any]:
        if wire == "gemini":
            return {"error": {"code": fault.status, "message": fault.message,
                              "status": _GEMINI_STATUS.get(fault.status, "UNKNOWN")}}
        kind = "rate_limit_exceeded" if fault.status == 429 else (
            "server_error" if fault.status >= 500 else "invalid_request_error")
        return {"error": {"message": fault.message, "type": kind, "param": None, "code": None}}

    def _reply_body(self, req: Received, s: Scripted) -> dict[str, Any]:
        inp = self.tokens[0] if s.input_tokens is None else s.input_tokens
        out = self.tokens[1] if s.output_tokens is None else s.output_tokens
        reasoning = self.tokens[2] if s.reasoning_tokens is None else s.reasoning_tokens
        now = int(time.time())
        n = len(self.received)
        if req.wire == "chat":
            return {
                "id": f"chatcmpl-{n}", "object": "chat.completion", "created": now, "model": req.model,
                "system_fingerprint": "fp_test",
                "choices": [{"index": 0, "finish_reason": s.finish_reason, "logprobs": None,
                             "message": {"role": "assistant", "content": s.text, "refusal": None}}],
                "usage": {"prompt_tokens": inp, "completion_tokens": out, "total_tokens": inp + out,
                          "completion_tokens_details": {"reasoning_tokens": reasoning},
                          "prompt_tokens_details": {"cached_tokens": 0}},
            }
        if req.wire == "responses":
            incomplete = s.finish_reason == "length"
            return {
                "id": f"resp_{n}", "object": "response", "created_at": now, "model": req.model,
                "status": "incomplete" if incomplete else "completed",
                "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
                "error": None, "instructions": req.body.get("instructions"),
                "output": [{"type": "message", "id": f"msg_{n}", "role": "assistant",
                            "status": "incomplete" if incomplete else "completed",
                            "content": [{"type": "output_text", "text": s.text, "annotations": []}]}],
                "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
                "usage": {"input_tokens": inp, "input_tokens_details": {"cached_tokens": 0},
                          "output_tokens": out, "output_tokens_details": {"reasoning_tokens": reasoning},
                          "total_tokens": inp + out},
            }
        # Gemini reports thinking tokens apart from the candidates' tokens; both are billed as output.
        return {
            "candidates": [{"content": {"role": "model", "parts": [{"text": s.text}]}, "index": 0,
                            "finishReason": "MAX_TOKENS" if s.finish_reason == "length" else "STOP"}],
            "usageMetadata": {"promptTokenCount": inp, "candidatesTokenCount": out - reasoning,
                              "thoughtsTokenCount": reasoning, "totalTokenCount": inp + out},
            "modelVersion": req.model, "responseId": f"gemini-{n}",
        }

    def _send(self, h: BaseHTTPRequestHandler, status: int, body: dict[str, Any],
              headers: dict[str, str] | None = None) -> None:
        self._send_raw(h, status, json.dumps(body).encode(), headers)

    @staticmethod
    def _send_raw(h: BaseHTTPRequestHandler, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)
        h.wfile.flush()


@pytest.fixture()
def llm_server():
    """A started server with the echo responder, stopped after the test."""
    with LLMServer() as server:
        yield server
