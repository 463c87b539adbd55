"""An OpenAI-compatible chat server for our own JAX model (stdlib HTTP, 127.0.0.1 by default).

    python -m oyster_jax.serve --ckpt runs/demo/ckpt --tokenizer oyster_jax/data/seed/tokenizer.json --port 8000
    curl -s http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
         -d '{"model": "ckpt", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 32}'

Endpoints: `GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/chat/completions` (also with "stream": true,
sent as server-sent events once the reply is complete). The chat template of `oyster_jax.core.chat` is
applied; the model's thinking comes back separately as `message.reasoning_content`. Requests are checked
field by field and bad ones get a 4xx with an OpenAI-style `{"error": {...}}` body naming the field.
Concurrent requests with the same sampling settings are batched by `LocalJaxBackend`. Unlike OpenAI, a
request without `temperature` is decoded greedily (judges and evals want determinism); `top_k` is accepted
as an extension.

The server has no authentication: it binds 127.0.0.1 unless `--host` says otherwise.
"""

from __future__ import annotations

import http.server
import json
import math
import sys
import threading
import time
import uuid

from oyster_jax import cli

__all__ = ["ChatService", "RequestError", "make_server", "main"]

MAX_BODY_BYTES = 8 * 1024 * 1024
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# Fields OpenAI clients commonly send that do not change what this server does.
_IGNORED_FIELDS = {
    "user",
    "logprobs",
    "top_logprobs",
    "response_format",
    "stream_options",
    "metadata",
    "store",
    "parallel_tool_calls",
    "service_tier",
    "reasoning_effort",
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
}
_FIELDS = {
    "model",
    "messages",
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "max_completion_tokens",
    "seed",
    "stop",
    "n",
    "stream",
} | _IGNORED_FIELDS


class RequestError(Exception):
    """A request we refuse: HTTP status, message, the offending field (`param`) and an error code."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def _number(body: dict, field: str, lo: float, hi: float, *, lo_open: bool = False):
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RequestError(400, f"'{field}' must be a number, got {value!r}", field)
    if value < lo or value > hi or (lo_open and value == lo):
        bound = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
        raise RequestError(400, f"'{field}' must be in {bound}, got {value}", field)
    return float(value)


def _integer(body: dict, field: str, lo: int, hi: int | None = None):
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(400, f"'{field}' must be an integer, got {value!r}", field)
    if value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" + (f" and <= {hi}" if hi is not None else "")
        raise RequestError(400, f"'{field}' must be {bound}, got {value}", field)
    return value


def _messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty array of {role, content}", "messages")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise RequestError(400, f"{where} must be an object", where)
        role = m.get("role")
        if role not in _ROLES:
            raise RequestError(400, f"{where}.role must be one of {sorted(_ROLES)}, got {role!r}", f"{where}.role")
        content = m.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            parts = []
            for j, part in enumerate(content):
                if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                    raise RequestError(
                        400, f"{where}.content[{j}]: only text parts are supported", f"{where}.content[{j}]"
                    )
                parts.append(part["text"])
            content = "".join(parts)
        if not isinstance(content, str):
            raise RequestError(400, f"{where}.content must be a string", f"{where}.content")
        msg = {"role": _ROLES[role], "content": content}
        if _ROLES[role] == "assistant" and isinstance(m.get("reasoning_content"), str):
            msg["thinking"] = m["reasoning_content"]
        out.append(msg)
    if out[-1]["role"] == "assistant":
        raise RequestError(400, "the last message must not be from the assistant", f"messages[{len(out) - 1}]")
    return out


class ChatService:
    """Validates chat requests and answers them with a `LocalJaxBackend` (HTTP-free, so tests call it)."""

    def __init__(self, backend, model_name: str, *, max_tokens_default: int = 512):
        from oyster_jax.core import chat  # noqa: PLC0415

        self.backend = backend
        self.model_name = model_name
        self.max_tokens_default = max_tokens_default
        self.created = int(time.time())
        self._chat = chat
        fmt = backend.chat_format
        self.turn_stops = tuple(chat.stop_strings(fmt))
        eos = {backend.tokenizer.token_to_id(s) for s in self.turn_stops} - {None}
        cfg_eos = backend.cfg.eos_token_id
        eos |= set(cfg_eos if isinstance(cfg_eos, list | tuple) else [] if cfg_eos is None else [cfg_eos])
        self.eos_ids = eos

    def models(self) -> dict:
        return {"object": "list", "data": [self.model_card()]}

    def model_card(self) -> dict:
        return {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "oyster_jax"}

    def parse(self, body) -> tuple[list[dict], dict, bool]:
        """Request body -> (messages, sampling, stream). Raises RequestError."""
        if not isinstance(body, dict):
            raise RequestError(400, "the request body must be a JSON object")
        unknown = sorted(set(body) - _FIELDS)
        if unknown:
            raise RequestError(400, f"unrecognized request field(s): {unknown}", unknown[0])
        model = body.get("model")
        if model is not None and model != self.model_name:
            raise RequestError(404, f"model {model!r} does not exist; this server has {self.model_name!r}", "model",
                               "model_not_found")  # fmt: skip
        messages = _messages(body)
        n = _integer(body, "n", 1)
        if n not in (None, 1):
            raise RequestError(400, "'n' must be 1 (one completion per request)", "n")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise RequestError(400, "'stream' must be true or false", "stream")
        max_tokens = _integer(body, "max_completion_tokens", 1)
        max_tokens = _integer(body, "max_tokens", 1) if max_tokens is None else max_tokens
        stop = body.get("stop")
        if isinstance(stop, str):
            stop = [stop]
        if stop is not None and not (
            isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) and s for s in stop)
        ):
            raise RequestError(400, "'stop' must be a non-empty string or an array of up to 4 of them", "stop")
        sampling = {
            "temperature": _number(body, "temperature", 0.0, 2.0),
            "top_p": _number(body, "top_p", 0.0, 1.0, lo_open=True),
            "top_k": _integer(body, "top_k", 1),
            "max_tokens": max_tokens or self.max_tokens_default,
            "seed": _integer(body, "seed", 0, 2**31 - 1),
            "stop": tuple(stop or ()),
        }
        return messages, {k: v for k, v in sampling.items() if v is not None}, stream

    def reply(self, new_tokens: list[int], user_stops=()) -> tuple[str, str, str]:
        """Generated tokens -> (reasoning, content, finish_reason). A user stop string and what follows is
        cut (OpenAI semantics); the end-of-turn marker is never shown."""
        text = self.backend.decode(new_tokens)
        finish = "stop" if new_tokens and new_tokens[-1] in self.eos_ids else "length"
        cuts = [text.find(s) for s in tuple(user_stops) + self.turn_stops if s in text]
        if cuts:
            text, finish = text[: min(cuts)], "stop"
        reasoning, content = self._chat.split_thinking(text, self.backend.chat_format)
        return reasoning, content, finish

    def complete(self, body) -> tuple[dict, bool]:
        messages, sampling, stream = self.parse(body)
        try:
            prompt = self.backend.prompt_tokens(messages)
        except ValueError as e:  # the chat template refused the messages
            raise RequestError(400, str(e), "messages") from None
        room = self.backend.cfg.max_position_embeddings - len(prompt)
        if room <= 0:
            raise RequestError(
                400,
                f"the prompt has {len(prompt)} tokens; this model's context is "
                f"{self.backend.cfg.max_position_embeddings}",
                "messages",
                "context_length_exceeded",
            )
        try:
            new_tokens = self.backend._submit(messages, sampling).result()
        except Exception as e:  # noqa: BLE001
            raise RequestError(500, f"generation failed: {type(e).__name__}: {e}") from None
        reasoning, content, finish = self.reply(new_tokens, sampling.get("stop", ()))
        message = {"role": "assistant", "content": content, "reasoning_content": reasoning}
        response = {
            "id": "chatcmpl-" + uuid.uuid4().hex[:24],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_name,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {
                "prompt_tokens": len(prompt),
                "completion_tokens": len(new_tokens),
                "total_tokens": len(prompt) + len(new_tokens),
            },
        }
        return response, stream


def _stream_events(response: dict) -> list[dict]:
    """A finished completion as `chat.completion.chunk` events: role, reasoning, content, finish."""
    base = {k: response[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
    message = response["choices"][0]["message"]
    deltas = [{"role": "assistant", "content": ""}]
    if message["reasoning_content"]:
        deltas.append({"reasoning_content": message["reasoning_content"]})
    if message["content"]:
        deltas.append({"content": message["content"]})
    events = [base | {"choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
    finish = response["choices"][0]["finish_reason"]
    events.append(base | {"choices": [{"index": 0, "delta": {}, "finish_reason": finish}], "usage": response["usage"]})
    return events


def make_server(service: ChatService, host: str = "127.0.0.1", port: int = 8000) -> http.server.ThreadingHTTPServer:
    """A ThreadingHTTPServer answering for `service` (port 0 picks a free port: see `server.server_address`)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "oyster_jax"

        def log_message(self, fmt, *args):  # one short line per request, on stderr
            sys.stderr.write(f"[serve] {self.address_string()} {fmt % args}\n")

        def _send_json(self, status: int, payload: dict):
            data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, err: RequestError):
            self._send_json(err.status, err.body())

        def _route(self) -> str:
            return self.path.split("?", 1)[0].rstrip("/")

        def do_GET(self):  # noqa: N802
            route = self._route()
            if route == "/v1/models":
                return self._send_json(200, service.models())
            if route.startswith("/v1/models/"):
                name = route[len("/v1/models/") :]
                if name == service.model_name:
                    return self._send_json(200, service.model_card())
                return self._error(RequestError(404, f"model {name!r} does not exist", "model", "model_not_found"))
            if route == "/v1/chat/completions":
                return self._error(RequestError(405, "use POST for /v1/chat/completions"))
            self._error(RequestError(404, f"no such endpoint: GET {route}"))

        def do_POST(self):  # noqa: N802
            route = self._route()
            length = self.headers.get("Content-Length")
            if route not in ("/v1/chat/completions",):
                self.close_connection = True
                if route == "/v1/models":
                    return self._error(RequestError(405, "use GET for /v1/models"))
                return self._error(RequestError(404, f"no such endpoint: POST {route}"))
            if length is None or not length.isdigit():
                self.close_connection = True
                return self._error(RequestError(411, "a Content-Length header is required"))
            if int(length) > MAX_BODY_BYTES:
                self.close_connection = True  # the body is not read
                return self._error(RequestError(413, f"request body over {MAX_BODY_BYTES} bytes"))
            raw = self.rfile.read(int(length))
            try:
                body = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                return self._error(RequestError(400, f"the request body is not valid JSON: {e}"))
            try:
                response, stream = service.complete(body)
            except RequestError as e:
                return self._error(e)
            if not stream:
                return self._send_json(200, response)
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            for event in _stream_events(response):
                self.wfile.write(f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")

    server = http.server.ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def main(argv=None) -> int:
    parser = cli.ArgumentParser(prog="python -m oyster_jax.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="model: Hugging Face dir, Orbax checkpoint or trainer workdir")
    parser.add_argument("--tokenizer", help="tokenizer.json (default: the one --ckpt carries)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (0 = any free port)")
    parser.add_argument("--model_name", help="the model id clients send (default: the checkpoint folder's name)")
    parser.add_argument("--chat_format", default="chatml", help="chatml (Qwen3) | deepseek_r1")
    parser.add_argument("--max_tokens", type=int, default=512, help="default max_tokens of a request")
    parser.add_argument("--max_batch", type=int, default=16, help="concurrent requests batched together")
    args = parser.parse_args(argv)

    import pathlib  # noqa: PLC0415

    from oyster_jax.llm.local import LocalJaxBackend  # noqa: PLC0415

    ckpt = pathlib.Path(args.ckpt)
    if not ckpt.exists():
        parser.error(f"--ckpt {ckpt}: no such directory")
    print(f"[serve] loading {ckpt} ...", flush=True)
    try:
        backend = LocalJaxBackend(
            str(ckpt), args.tokenizer, chat_format=args.chat_format, max_new_tokens=args.max_tokens,
            max_batch=args.max_batch,
        )  # fmt: skip
    except (FileNotFoundError, ValueError) as e:
        print(f"[serve] error: {e}", file=sys.stderr)
        return 2
    service = ChatService(backend, args.model_name or ckpt.absolute().name, max_tokens_default=args.max_tokens)
    server = make_server(service, args.host, args.port)
    host, port = server.server_address[:2]
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"[serve] WARNING: bound to {args.host}: anyone who can reach it can use the model (no auth)")
    print(f"[serve] model {service.model_name!r} at http://{host}:{port}/v1 (Ctrl-C stops)", flush=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.5)
    except KeyboardInterrupt:
        print("[serve] stopping", flush=True)
    finally:
        server.shutdown()
        backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
