"""An OpenAI-compatible server for our own JAX model: FastAPI + uvicorn over a continuous-batching engine.

    python -m oyster_jax.serve --ckpt runs/demo/ckpt --tokenizer oyster_jax/data/seed/tokenizer.json --port 8000
    curl -s http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
         -d '{"model": "ckpt", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 32}'

Endpoints: `POST /v1/chat/completions`, `POST /v1/completions` (both also with "stream": true: one
server-sent event per piece of text as it is generated), `GET /v1/models`, `GET /v1/models/{id}`,
`GET /health`. Supported: n, stop, seed (the same tokens alone or beside other requests), max_tokens /
max_completion_tokens, temperature, top_p, top_k (an extension), presence_penalty, frequency_penalty,
logit_bias, logprobs + top_logprobs, response_format text / json_object / json_schema (constrained
decoding with llguidance), stream_options.include_usage. Any other field is a 400 naming it. The chat
template of `oyster_jax.core.chat` is applied; the model's thinking comes back as `reasoning_content`.
Unlike OpenAI, a request without `temperature` is decoded greedily (judges and evals want determinism).

Requests share the decode batch (`--max_batch` slots of `--max_seq_len` positions); when `--max_queue`
requests already wait for a slot the server answers 429 with Retry-After. `--api_key_env VAR` requires
`Authorization: Bearer $VAR`; without it the server binds 127.0.0.1 unless `--host` says otherwise.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

import uvicorn

from oyster_jax.llm.local import LocalJaxBackend
from oyster_jax.serve.app import APIError, IdleTimeoutProtocol, Server, create_app

__all__ = ["APIError", "IdleTimeoutProtocol", "Server", "create_app", "main"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m oyster_jax.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="model checkpoint dir (Orbax, trainer workdir or Hugging Face)")
    parser.add_argument("--tokenizer", help="tokenizer.json (default: the one in --ckpt)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (0 = any free port)")
    parser.add_argument("--model_name", help="the model id clients send (default: the checkpoint folder's name)")
    parser.add_argument("--chat_format", default="chatml", help="chatml (Qwen3) | deepseek_r1")
    parser.add_argument("--max_tokens", type=int, default=512, help="default max_tokens of a request")
    parser.add_argument("--max_batch", type=int, default=8, help="decode slots (choices decoded together)")
    parser.add_argument("--max_seq_len", type=int, help="positions per slot (default: the model's, <= 4096)")
    parser.add_argument("--max_queue", type=int, default=64, help="requests that may wait for a slot (then 429)")
    parser.add_argument("--decode_attention", default="xla", help="xla | pallas")
    parser.add_argument(
        "--warmup_prompt_tokens",
        type=int,
        default=0,
        help="before listening, compile every program that prompts of about this many tokens and up to "
        "--max_tokens new ones meet (0 = off: the first request to reach each batch size waits for its compile)",
    )
    parser.add_argument("--api_key_env", help="require this environment variable's value as the bearer key")
    parser.add_argument("--request_timeout", type=float, default=600.0, help="seconds a request may wait for a token")
    parser.add_argument("--keep_alive_timeout", type=int, default=5, help="seconds an idle connection is kept")
    args = parser.parse_args(argv)

    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            print(f"[serve] error: --api_key_env {args.api_key_env}: the variable is unset or empty", file=sys.stderr)
            return 2
    ckpt = pathlib.Path(args.ckpt)
    if not ckpt.exists():
        print(f"[serve] error: --ckpt {ckpt}: no such directory", file=sys.stderr)
        return 2

    print(f"[serve] loading {ckpt} ...", flush=True)
    try:
        backend = LocalJaxBackend(str(ckpt), args.tokenizer, chat_format=args.chat_format)
        engine = backend.engine(
            max_batch=args.max_batch,
            max_seq_len=args.max_seq_len,
            max_queue=args.max_queue,
            decode_attention=args.decode_attention,
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"[serve] error: {e}", file=sys.stderr)
        return 2
    if args.warmup_prompt_tokens > 0:
        runs = engine.warmup(args.warmup_prompt_tokens, args.max_tokens)
        print(f"[serve] warm-up: {runs} programs compiled", flush=True)
    server = Server(
        engine,
        args.model_name or ckpt.absolute().name,
        chat_format=args.chat_format,
        max_tokens_default=args.max_tokens,
        api_key=api_key,
        request_timeout_s=args.request_timeout,
    )
    config = uvicorn.Config(
        create_app(server),
        host=args.host,
        port=args.port,
        log_level="warning",
        timeout_keep_alive=args.keep_alive_timeout,
        http=IdleTimeoutProtocol,
        backlog=2048,
    )
    httpd = uvicorn.Server(config)
    config.load()
    sock = config.bind_socket()
    host, port = sock.getsockname()[:2]
    if args.host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        print(f"[serve] WARNING: bound to {args.host} without --api_key_env: anyone who can reach it can use the model")
    auth = f" (bearer key from ${args.api_key_env})" if api_key else ""
    print(f"[serve] model {server.model_name!r} at http://{host}:{port}/v1{auth} (Ctrl-C stops)", flush=True)
    try:
        httpd.run(sockets=[sock])
    finally:
        print("[serve] stopping", flush=True)
        backend.close()
    return 0
