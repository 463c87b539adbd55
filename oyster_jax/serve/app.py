"""The HTTP layer: a FastAPI app answering the OpenAI API from a continuous-batching `infer.Engine`.

Bodies are read with a size cap and parsed here (not by FastAPI) so that every bad request, including
malformed JSON, a lone surrogate or 200,000-deep nesting, gets an OpenAI-style JSON error naming the field;
then validated by the strict pydantic models of `schemas.py`. Streaming sends one server-sent event per
released piece of text as the engine produces it.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator

import pydantic
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from uvicorn.protocols.http.h11_impl import H11Protocol

from oyster_jax.core import chat
from oyster_jax.infer.constrained import GrammarError
from oyster_jax.infer.engine import Engine, EngineClosed, QueueFull, SamplingParams, TokenEvent, held_back_length
from oyster_jax.serve.schemas import ChatCompletionRequest, CompletionRequest

__all__ = ["APIError", "IdleTimeoutProtocol", "Server", "create_app"]

MAX_BODY_BYTES = 8 * 1024 * 1024
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class APIError(Exception):
    """A request we refuse: HTTP status, message, the offending field (`param`) and an error code."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None, headers=None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        kind = {401: "authentication_error", 429: "rate_limit_error"}.get(
            self.status, "invalid_request_error" if self.status < 500 else "server_error"
        )
        body = {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def _param(loc) -> str | None:
    """pydantic's error location ('messages', 0, 'content', 'str') -> 'messages[0].content'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in part or "-" in part or part in {"str", "int", "float", "bool", "list", "dict", "none"}:
            continue  # a union member's tag, not a field
        else:
            out += ("." if out else "") + part
    return out or None


def _validation_error(e: pydantic.ValidationError) -> APIError:
    err = max(e.errors(), key=lambda err: len(err["loc"]))  # the most specific (a union reports every member)
    param = _param(err["loc"])
    if err["type"] == "extra_forbidden":
        return APIError(400, f"unsupported field {param!r} (this server does not implement it)", param)
    msg = err["msg"].removeprefix("Value error, ")
    return APIError(400, f"{param or 'body'}: {msg}", param)


def _check_text(obj) -> None:
    """Refuse strings that are not valid Unicode (lone surrogates), naming where (iterative: no recursion)."""
    stack = [(obj, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise APIError(400, f"{path or 'body'}: the text holds a lone surrogate", path or None) from None
        elif isinstance(value, dict):
            stack += [(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()]
            stack += [(k, path or None) for k in value if isinstance(k, str)]
        elif isinstance(value, list):
            stack += [(v, f"{path}[{i}]") for i, v in enumerate(value)]


async def _read_json(request: Request):
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
        raise APIError(413, f"the request body is over {MAX_BODY_BYTES} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise APIError(413, f"the request body is over {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except RecursionError:
        raise APIError(400, "the request body is nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise APIError(400, f"the request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    _check_text(body)
    return body


class IdleTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol with the keep-alive timer also running before the first request, so a
    connection that never sends one is closed after `timeout_keep_alive` seconds (uvicorn itself only times
    out the wait between two requests). Use with `uvicorn.Config(..., http=IdleTimeoutProtocol)`."""

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)


class Server:
    """What the endpoints need: the engine, the tokenizer, the chat format and the model's name."""

    def __init__(
        self,
        engine: Engine,
        model_name: str,
        *,
        chat_format: str = "chatml",
        max_tokens_default: int = 512,
        api_key: str | None = None,
        request_timeout_s: float = 600.0,
    ):
        self.engine, self.tokenizer = engine, engine.tokenizer
        self.model_name = model_name
        self.fmt = chat.get_format(chat_format).name
        # End-of-turn markers that are not single tokens (those stop inside the engine) end a chat reply too.
        self.turn_stops = tuple(s for s in chat.stop_strings(self.fmt) if self.tokenizer.token_to_id(s) is None)
        self.max_tokens_default = max_tokens_default
        self._api_key = api_key
        self.request_timeout_s = request_timeout_s
        self.created = int(time.time())

    # --- request -> engine ---
    def check_key(self, request: Request) -> None:
        if self._api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), self._api_key.encode()):
            raise APIError(401, "a valid API key is required (Authorization: Bearer ...)", code="invalid_api_key")

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise APIError(
                404, f"model {model!r} does not exist; this server has {self.model_name!r}", "model", "model_not_found"
            )

    def sampling(self, req, max_tokens: int | None, *, logprobs: bool, top_logprobs: int, grammar=None, stops=()):
        bias = []
        for key, value in (req.logit_bias or {}).items():
            if int(key) >= self.engine.cfg.vocab_size:
                raise APIError(400, f"logit_bias: token id {key} is outside the vocabulary", "logit_bias")
            bias.append((int(key), float(value)))
        if req.seed is not None and not 0 <= req.seed < 2**32:
            raise APIError(400, "seed must be in [0, 2**32)", "seed")
        return SamplingParams(
            max_tokens=max_tokens or self.max_tokens_default,
            temperature=0.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            top_k=req.top_k or 0,
            seed=req.seed,
            stop=req.stops() + tuple(stops),
            presence_penalty=req.presence_penalty or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0,
            logit_bias=tuple(bias),
            logprobs=logprobs,
            top_logprobs=top_logprobs,
            grammar=grammar,
        )

    def grammar(self, response_format) -> str | None:
        if response_format is None or response_format.type == "text":
            return None
        try:
            if response_format.type == "json_object":
                return self.engine.grammars.json_object()
            if response_format.json_schema is None:
                raise APIError(
                    400, "response_format.json_schema is required for type json_schema", "response_format.json_schema"
                )
            return self.engine.grammars.json_schema(response_format.json_schema.schema_)
        except GrammarError as e:
            raise APIError(400, f"response_format: {e}", "response_format.json_schema") from None

    def chat_prompt(self, req: ChatCompletionRequest) -> list[int]:
        messages = []
        for m in req.messages:
            msg = {"role": _ROLES[m.role], "content": m.text()}
            if msg["role"] == "assistant" and m.reasoning_content is not None:
                msg["thinking"] = m.reasoning_content
            messages.append(msg)
        if messages[-1]["role"] == "assistant":
            raise APIError(400, "the last message must not be from the assistant", f"messages[{len(messages) - 1}]")
        try:
            text = chat.render_generation_prompt(messages, self.fmt)
        except ValueError as e:
            raise APIError(400, str(e), "messages") from None
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def check_prompt(self, prompt: list[int], param: str) -> None:
        if not prompt:
            raise APIError(400, "the prompt is empty", param)
        if len(prompt) >= self.engine.max_seq_len:
            raise APIError(
                400,
                f"the prompt has {len(prompt)} tokens; this server's context is {self.engine.max_seq_len}",
                param,
                "context_length_exceeded",
            )
        if any(not 0 <= t < self.engine.cfg.vocab_size for t in prompt):
            raise APIError(400, f"token ids must be in [0, {self.engine.cfg.vocab_size})", param)

    def submit(self, prompt: list[int], params: SamplingParams, n: int) -> tuple[asyncio.Queue, object]:
        """Queue on the engine; events arrive on the returned asyncio queue."""
        if n > self.engine.max_batch:
            raise APIError(400, f"n must be <= {self.engine.max_batch} on this server", "n")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def sink(event: TokenEvent):
            loop.call_soon_threadsafe(events.put_nowait, event)

        try:
            handle = self.engine.submit(prompt, params, n, sink)
        except QueueFull:
            raise APIError(
                429, "the server is busy; retry shortly", code="rate_limit_exceeded", headers={"Retry-After": "1"}
            ) from None
        except EngineClosed:
            raise APIError(503, "the server is shutting down") from None
        except ValueError as e:
            raise APIError(400, str(e)) from None
        return events, handle

    async def events(self, queue: asyncio.Queue, handle, choices: int) -> AsyncIterator[TokenEvent]:
        """The engine's events until every choice finished; cancels the request if the consumer leaves."""
        open_choices = choices
        try:
            while open_choices:
                try:
                    event = await asyncio.wait_for(queue.get(), self.request_timeout_s)
                except TimeoutError:
                    raise APIError(504, f"no token within {self.request_timeout_s} s") from None
                if event.finish_reason is not None:
                    open_choices -= 1
                if event.finish_reason == "error":
                    raise APIError(500, f"generation failed: {event.error}")
                yield event
        finally:
            if open_choices:
                handle.cancel()

    # --- tokens -> OpenAI shapes ---
    @functools.lru_cache(maxsize=65536)  # noqa: B019  (one server per process; the cache is the vocabulary)
    def token_text(self, token: int) -> str:
        return self.tokenizer.decode([token], skip_special_tokens=False)

    def chat_logprob(self, event: TokenEvent) -> dict:
        def entry(token, logprob):
            text = self.token_text(token)
            return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

        return entry(event.token, event.logprob) | {"top_logprobs": [entry(t, lp) for t, lp in event.top_logprobs]}

    def finish_reason(self, event: TokenEvent) -> str:
        return "length" if event.finish_reason == "length" else "stop"


class _ThinkingSplitter:
    """Streams an assistant turn's raw text as (reasoning delta, content delta), agreeing with
    `chat.split_thinking` on the whole text."""

    def __init__(self, fmt: str):
        # The generation prompt may already open the think block (DeepSeek): split as if it were generated.
        self.fmt, self.raw, self.reasoning, self.content = fmt, chat.get_format(fmt).generation_suffix, "", ""

    def feed(self, text: str, final: bool = False) -> tuple[str, str]:
        self.raw += text
        held = 0 if final else held_back_length(self.raw, (chat.THINK_OPEN, chat.THINK_CLOSE))
        reasoning, content = chat.split_thinking(self.raw[: len(self.raw) - held], self.fmt)
        deltas = []
        for name, new in (("reasoning", reasoning), ("content", content)):
            old = getattr(self, name)
            if new.startswith(old) and new != old:  # a non-prefix change (whitespace stripping) waits
                deltas.append(new[len(old) :])
                setattr(self, name, new)
            else:
                deltas.append("")
        return deltas[0], deltas[1]


def _sse(payload) -> bytes:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()


def create_app(server: Server) -> FastAPI:
    app = FastAPI(title="oyster_jax", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        where = f"{request.method} {request.url.path}"
        message = {404: f"no such endpoint: {where}", 405: f"method not allowed: {where}"}
        message = message.get(exc.status_code, str(exc.detail))
        return APIError(exc.status_code, message, headers=getattr(exc, "headers", None)).response()

    @app.exception_handler(Exception)
    async def _crash(request, exc: Exception):
        return APIError(500, f"internal error: {type(exc).__name__}").response()

    @app.get("/health")
    async def health():
        engine = server.engine
        return {"status": "ok", "model": server.model_name, "running": engine.running, "waiting": engine.waiting}

    @app.get("/v1/models")
    async def models(request: Request):
        server.check_key(request)
        return {"object": "list", "data": [_card(server)]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str, request: Request):
        server.check_key(request)
        if name != server.model_name:
            raise APIError(404, f"model {name!r} does not exist", "model", "model_not_found")
        return _card(server)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        server.check_key(request)
        body = await _read_json(request)
        try:
            req = ChatCompletionRequest.model_validate(body)
        except pydantic.ValidationError as e:
            raise _validation_error(e) from None
        server.check_model(req.model)
        prompt = server.chat_prompt(req)
        server.check_prompt(prompt, "messages")
        if req.top_logprobs and not req.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", "top_logprobs")
        params = server.sampling(
            req,
            req.max_completion_tokens or req.max_tokens,
            logprobs=req.logprobs,
            top_logprobs=req.top_logprobs or 0,
            grammar=server.grammar(req.response_format),
            stops=server.turn_stops,
        )
        queue, handle = server.submit(prompt, params, req.n)
        events = server.events(queue, handle, req.n)
        meta = {"id": "chatcmpl-" + uuid.uuid4().hex[:24], "created": int(time.time()), "model": server.model_name}
        if req.stream:
            usage = req.stream_options is not None and req.stream_options.include_usage
            first = await _first(events)  # errors before the first token are still a plain JSON error
            return StreamingResponse(
                _chat_stream(server, meta, first, events, req, len(prompt), usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        return await _chat_response(server, meta, events, req, len(prompt))

    @app.post("/v1/completions")
    async def completions(request: Request):
        server.check_key(request)
        body = await _read_json(request)
        try:
            req = CompletionRequest.model_validate(body)
        except pydantic.ValidationError as e:
            raise _validation_error(e) from None
        server.check_model(req.model)
        if req.echo:
            raise APIError(400, "echo is not supported", "echo")
        if req.suffix:
            raise APIError(400, "suffix is not supported", "suffix")
        if req.best_of not in (None, req.n):
            raise APIError(400, "best_of must equal n (no server-side ranking)", "best_of")
        prompts = _completion_prompts(server, req.prompt)
        params = server.sampling(req, req.max_tokens, logprobs=req.logprobs is not None, top_logprobs=req.logprobs or 0)
        streams = []
        try:
            for prompt in prompts:
                queue, handle = server.submit(prompt, params, req.n)
                streams.append(server.events(queue, handle, req.n))
        except APIError:
            for s in streams:
                await s.aclose()
            raise
        meta = {"id": "cmpl-" + uuid.uuid4().hex[:24], "created": int(time.time()), "model": server.model_name}
        prompt_tokens = sum(map(len, prompts))
        if req.stream:
            usage = req.stream_options is not None and req.stream_options.include_usage
            return StreamingResponse(
                _completion_stream(server, meta, streams, req, prompt_tokens, usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        return await _completion_response(server, meta, streams, req, prompt_tokens)

    return app


def _card(server: Server) -> dict:
    return {"id": server.model_name, "object": "model", "created": server.created, "owned_by": "oyster_jax"}


async def _first(events):
    try:
        return await anext(events)
    except StopAsyncIteration:
        return None


def _completion_prompts(server: Server, prompt) -> list[list[int]]:
    if isinstance(prompt, str):
        prompt = [prompt]
    if prompt and all(isinstance(t, int) for t in prompt):
        prompt = [prompt]
    if not prompt:
        raise APIError(400, "the prompt is empty", "prompt")
    out = []
    for i, p in enumerate(prompt):
        ids = server.tokenizer.encode(p, add_special_tokens=False).ids if isinstance(p, str) else list(p)
        server.check_prompt(ids, f"prompt[{i}]" if len(prompt) > 1 else "prompt")
        out.append(ids)
    return out


async def _chat_response(server: Server, meta, events, req, prompt_tokens) -> dict:
    raw = [""] * req.n
    logprobs = [[] for _ in range(req.n)]
    finish = [None] * req.n
    completion_tokens = 0
    async for event in events:
        raw[event.choice] += event.text
        if event.token is not None:
            completion_tokens += 1
            if req.logprobs and event.token not in server.engine.eos_ids:
                logprobs[event.choice].append(server.chat_logprob(event))
        if event.finish_reason:
            finish[event.choice] = server.finish_reason(event)
    choices = []
    for i in range(req.n):
        reasoning, content = chat.split_thinking(chat.get_format(server.fmt).generation_suffix + raw[i], server.fmt)
        message = {"role": "assistant", "content": content, "reasoning_content": reasoning}
        choices.append(
            {
                "index": i,
                "message": message,
                "logprobs": {"content": logprobs[i]} if req.logprobs else None,
                "finish_reason": finish[i],
            }
        )
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    return meta | {"object": "chat.completion", "choices": choices, "usage": usage}


async def _chat_stream(server: Server, meta, first, events, req, prompt_tokens, include_usage):
    base = meta | {"object": "chat.completion.chunk"}
    extra = {"usage": None} if include_usage else {}
    splitters = [_ThinkingSplitter(server.fmt) for _ in range(req.n)]
    started = [False] * req.n
    completion_tokens = 0

    async def all_events():
        if first is not None:
            yield first
        async for e in events:
            yield e

    try:
        async for event in all_events():
            i = event.choice
            delta = {}
            if not started[i]:
                delta["role"], started[i] = "assistant", True
            reasoning, content = splitters[i].feed(event.text, final=event.finish_reason is not None)
            if reasoning:
                delta["reasoning_content"] = reasoning
            if content or "role" in delta:
                delta["content"] = content
            logprobs = None
            if event.token is not None:
                completion_tokens += 1
                if req.logprobs and event.token not in server.engine.eos_ids:
                    logprobs = {"content": [server.chat_logprob(event)]}
            finish = server.finish_reason(event) if event.finish_reason else None
            if delta or logprobs or finish:
                choice = {"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
                yield _sse(base | {"choices": [choice]} | extra)
    except APIError as e:  # mid-stream: the status is already sent, so the error is an event
        yield _sse({"error": {"message": e.message, "type": "server_error", "param": None, "code": e.code}})
        return
    for chunk in _stream_end(base, include_usage, prompt_tokens, completion_tokens):
        yield chunk


class _CompletionLogprobs:
    def __init__(self):
        self.tokens, self.token_logprobs, self.top_logprobs, self.text_offset = [], [], [], []
        self.offset = 0

    def add(self, server: Server, event: TokenEvent) -> None:
        text = server.token_text(event.token)
        self.tokens.append(text)
        self.token_logprobs.append(event.logprob)
        self.top_logprobs.append({server.token_text(t): lp for t, lp in event.top_logprobs})
        self.text_offset.append(self.offset)
        self.offset += len(text)

    def body(self) -> dict:
        return {
            "tokens": self.tokens,
            "token_logprobs": self.token_logprobs,
            "top_logprobs": self.top_logprobs,
            "text_offset": self.text_offset,
        }


async def _merged(streams):
    """Events of several engine requests as (stream index, event), in arrival order."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(k, stream):
        try:
            async for event in stream:
                await queue.put((k, event, None))
        except APIError as e:
            await queue.put((k, None, e))
        await queue.put((k, None, None))

    tasks = [asyncio.create_task(pump(k, s)) for k, s in enumerate(streams)]
    try:
        left = len(streams)
        while left:
            k, event, error = await queue.get()
            if error is not None:
                raise error
            if event is None:
                left -= 1
                continue
            yield k, event
    finally:
        for t in tasks:
            t.cancel()
        for s in streams:
            await s.aclose()


async def _completion_response(server: Server, meta, streams, req, prompt_tokens) -> dict:
    count = len(streams) * req.n
    text = [""] * count
    logprobs = [_CompletionLogprobs() for _ in range(count)]
    finish = [None] * count
    completion_tokens = 0
    async for k, event in _merged(streams):
        i = k * req.n + event.choice
        text[i] += event.text
        if event.token is not None:
            completion_tokens += 1
            if req.logprobs is not None and event.token not in server.engine.eos_ids:
                logprobs[i].add(server, event)
        if event.finish_reason:
            finish[i] = server.finish_reason(event)
    choices = [
        {
            "index": i,
            "text": text[i],
            "logprobs": logprobs[i].body() if req.logprobs is not None else None,
            "finish_reason": finish[i],
        }
        for i in range(count)
    ]
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    return meta | {"object": "text_completion", "choices": choices, "usage": usage}


async def _completion_stream(server: Server, meta, streams, req, prompt_tokens, include_usage):
    base = meta | {"object": "text_completion"}
    extra = {"usage": None} if include_usage else {}
    completion_tokens = 0
    try:
        async for k, event in _merged(streams):
            logprobs = None
            if event.token is not None:
                completion_tokens += 1
                if req.logprobs is not None and event.token not in server.engine.eos_ids:
                    lp = _CompletionLogprobs()
                    lp.add(server, event)
                    logprobs = lp.body()
            finish = server.finish_reason(event) if event.finish_reason else None
            if event.text or logprobs or finish:
                choice = {
                    "index": k * req.n + event.choice,
                    "text": event.text,
                    "logprobs": logprobs,
                    "finish_reason": finish,
                }
                yield _sse(base | {"choices": [choice]} | extra)
    except APIError as e:
        yield _sse({"error": {"message": e.message, "type": "server_error", "param": None, "code": e.code}})
        return
    for chunk in _stream_end(base, include_usage, prompt_tokens, completion_tokens):
        yield chunk


def _stream_end(base: dict, include_usage: bool, prompt_tokens: int, completion_tokens: int):
    """The closing events of a stream: the usage chunk when asked for (stream_options.include_usage), then
    the `[DONE]` sentinel."""
    if include_usage:
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        yield _sse(base | {"choices": [], "usage": usage})
    yield b"data: [DONE]\n\n"
