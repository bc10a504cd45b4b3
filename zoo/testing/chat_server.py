"""A loopback OpenAI-compatible chat endpoint (``POST /v1/chat/completions``) for tests and demos.

Stdlib only: a ``ThreadingHTTPServer`` on ``127.0.0.1`` with a free port, in a daemon thread.
Answers come from a ``respond(request_body) -> str`` callable (default: echo the last user
text); every request body is logged. Failures can be scripted: ``fail_next(status, times)``
answers with an OpenAI-style error, ``delay_next(seconds, times)`` sleeps before answering
(to exercise client timeouts), ``garble_next(times)`` sends a body that is not JSON.

    with LoopbackChat(respond=lambda body: "Score: 0.5", api_key="sk-test") as server:
        tool = OpenAIChatTool(server.base_url, model="judge", api_key_env=None, api_key="sk-test")
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["LoopbackChat", "last_user_text"]


def last_user_text(body: dict) -> str:
    """The text of the last user message of a chat request (text parts joined by spaces)."""
    for message in reversed(body.get("messages", [])):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            return " ".join(part.get("text", "") for part in content or [] if part.get("type") == "text")
    return ""


class LoopbackChat:
    """An OpenAI-compatible chat server on 127.0.0.1; ``base_url`` ends with ``/v1``."""

    def __init__(self, respond: Callable[[dict], str] | None = None, *, api_key: str | None = None):
        self.respond = respond or last_user_text
        self.api_key = api_key
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self._script: list[tuple[str, object]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ scripting
    def fail_next(self, status: int, times: int = 1, message: str = "scripted failure",
                  retry_after: float | None = None) -> None:
        """The next ``times`` requests get HTTP ``status`` with an OpenAI error body."""
        with self._lock:
            self._script += [("fail", (status, message, retry_after))] * times

    def delay_next(self, seconds: float, times: int = 1) -> None:
        """The next ``times`` requests wait ``seconds`` before answering normally."""
        with self._lock:
            self._script += [("delay", seconds)] * times

    def garble_next(self, times: int = 1) -> None:
        """The next ``times`` requests get a 200 whose body is not JSON."""
        with self._lock:
            self._script += [("garble", None)] * times

    def _next_action(self):
        with self._lock:
            return self._script.pop(0) if self._script else (None, None)

    # ------------------------------------------------------------------ server
    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``, what :class:`zoo.tools.OpenAIChatTool` takes as ``base_url``.

        Raises ``RuntimeError`` before :meth:`start`.
        """
        if self._server is None:
            raise RuntimeError("LoopbackChat is not started; use it as a context manager or call start().")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "LoopbackChat":
        """Serve ``POST /v1/chat/completions`` on a free loopback port in a daemon thread; returns ``self``.

        Each request is recorded (``requests``, ``headers``), checked (route, ``Authorization: Bearer`` when an
        ``api_key`` is set, JSON body with ``model`` and ``messages``: 404/401/400 with an OpenAI error body
        otherwise), then answered by the next scripted action (``fail_next``, ``delay_next``, ``garble_next``)
        or by ``respond(body)`` as an OpenAI ``chat.completion``.
        """
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, status: int, payload: bytes, headers: dict | None = None):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)

            def _error(self, status: int, message: str, kind: str, headers: dict | None = None):
                body = {"error": {"message": message, "type": kind, "code": status}}
                self._send(status, json.dumps(body).encode(), headers)

            def do_POST(self):  # noqa: N802 (http.server naming)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._error(404, f"no route {self.path}", "invalid_request_error")
                if server.api_key is not None and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    return self._error(401, "Incorrect API key provided.", "invalid_request_error")
                try:
                    body = json.loads(raw)
                except ValueError:
                    return self._error(400, "body is not JSON", "invalid_request_error")
                with server._lock:
                    server.requests.append(body)
                    server.headers.append(dict(self.headers))
                action, value = server._next_action()
                if action == "fail":
                    status, message, retry_after = value
                    extra = {"Retry-After": str(retry_after)} if retry_after is not None else None
                    return self._error(status, message, "server_error" if status >= 500 else "rate_limit_error",
                                       extra)
                if action == "delay":
                    time.sleep(float(value))
                if action == "garble":
                    return self._send(200, b"<html>not json</html>")
                if not isinstance(body.get("messages"), list) or not body.get("model"):
                    return self._error(400, "'model' and 'messages' are required", "invalid_request_error")
                text = server.respond(body)
                reply = {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion",
                         "created": int(time.time()), "model": body["model"],
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                      "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}
                try:
                    self._send(200, json.dumps(reply).encode())
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="zoo-loopback-chat", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Shut the server down and free its port (no-op when not started)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "LoopbackChat":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
