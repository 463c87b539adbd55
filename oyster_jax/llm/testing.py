"""A scripted OpenAI-compatible server for tests and benchmarks (127.0.0.1, ephemeral port, stdlib only).

    def handler(request: dict) -> Reply | str | dict:
        return Reply.chat("hello", reasoning="thinking...")     # or Reply(status=500), Reply(body="garbage")

    with FakeOpenAIServer(handler, latency=0.05) as server:
        backend = OpenAICompatibleBackend(server.base_url, "fake")

A handler returning a str is shorthand for `Reply.chat(str)`; a dict is sent as the JSON body. `Reply`
can delay (to trigger client timeouts), fail with any status, send a non-JSON body, trickle its body a
byte at a time, or drop the connection. The server counts requests and the peak number handled at once.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import threading
import time
import uuid
from collections.abc import Callable

__all__ = ["Reply", "FakeOpenAIServer"]


@dataclasses.dataclass
class Reply:
    status: int = 200
    body: str | dict | None = None  # dict -> JSON; str -> sent as is
    delay: float = 0.0  # seconds before answering (on top of the server latency)
    headers: dict = dataclasses.field(default_factory=dict)
    drop_connection: bool = False  # close the socket without any response
    trickle: float = 0.0  # > 0: send the body one byte every `trickle` seconds (a hostile slow endpoint)

    @classmethod
    def chat(cls, content: str | None, reasoning: str | None = None, model: str = "fake", **kw) -> Reply:
        message = {"role": "assistant", "content": content}
        if reasoning is not None:
            message["reasoning_content"] = reasoning
        body = {
            "id": "chatcmpl-" + uuid.uuid4().hex[:12],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        }
        return cls(body=body, **kw)


class FakeOpenAIServer:
    def __init__(self, handler: Callable[[dict], Reply | str | dict], *, latency: float = 0.0, model: str = "fake"):
        self.handler = handler
        self.latency = latency
        self.model = model
        self.requests: list[dict] = []  # every parsed request body, in arrival order
        self.request_headers: list[dict] = []  # the matching HTTP headers (tests check auth handling)
        self.in_flight = 0
        self.peak_in_flight = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._address
        return f"http://{host}:{port}/v1"

    def start(self) -> FakeOpenAIServer:
        server = self

        class _Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def _send(self, status: int, body: bytes, headers: dict | None = None, trickle: float = 0.0):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                for k, v in (headers or {}).items():
                    self.send_header(k, str(v))
                self.end_headers()
                if trickle > 0:
                    for i in range(len(body)):
                        self.wfile.write(body[i : i + 1])
                        self.wfile.flush()
                        if server._stopping.wait(trickle):
                            break
                else:
                    self.wfile.write(body)
                self.close_connection = True

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    body = {"object": "list", "data": [{"id": server.model, "object": "model"}]}
                    self._send(200, json.dumps(body).encode())
                else:
                    self._send(404, b'{"error": "not found"}')

            def do_POST(self):
                with server._lock:
                    server.in_flight += 1
                    server.peak_in_flight = max(server.peak_in_flight, server.in_flight)
                try:
                    self._handle_post()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _handle_post(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, b'{"error": "not found"}')
                    return
                try:
                    request = json.loads(raw)
                except json.JSONDecodeError:
                    self._send(400, b'{"error": "bad json"}')
                    return
                with server._lock:
                    server.requests.append(request)
                    server.request_headers.append(dict(self.headers.items()))
                try:
                    reply = server.handler(request)
                except Exception as e:  # a broken script shows up as a 500 with the reason
                    reply = Reply(status=500, body={"error": f"handler raised {type(e).__name__}: {e}"})
                if isinstance(reply, str):
                    reply = Reply.chat(reply, model=server.model)
                elif isinstance(reply, dict):
                    reply = Reply(body=reply)
                wait = server.latency + reply.delay
                if wait > 0 and server._stopping.wait(wait):
                    return
                if reply.drop_connection:
                    self.close_connection = True
                    return
                body = reply.body
                if isinstance(body, dict):
                    data = json.dumps(body, ensure_ascii=False).encode("utf-8")
                else:
                    data = (body or "").encode("utf-8")
                self._send(reply.status, data, reply.headers, reply.trickle)

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._address = self._httpd.server_address[:2]  # kept after stop(): tests reuse it as a dead endpoint
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-openai", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc):
        self.stop()
