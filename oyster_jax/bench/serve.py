"""Serving throughput and latency: our OpenAI-compatible server under concurrent streaming clients.

    python -m oyster_jax.bench.serve                              # tiny random-weight chat model, in process
    python -m oyster_jax.bench.serve --ckpt runs/demo/pref --tokenizer oyster_jax/data/seed/tokenizer.json
    python -m oyster_jax.bench.serve --url http://127.0.0.1:8000/v1 --model pref    # a server already running

For each concurrency (default 1, 8, 32) `--requests` chat requests are sent by that many client threads with
the official `openai` client, streamed, greedy, EOS disabled by `logit_bias` so every request makes exactly
`--new_tokens` tokens. Reported: requests/s and generated tokens/s over the whole wave, and time to first
token (p50 / p90 over requests, from sending to the first content chunk). A warm-up wave per level compiles
every program first, after `Engine.warmup` compiled every bucket in process. Requests beyond the server's
slots + queue get 429 and are retried by the client after its Retry-After, which shows up in latency, not as
errors. `--max_prefill_batch 1` prefills requests one at a time (the default prefills the requests joining
at the same step together); `--prompt_words N` lengthens the prompt.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import socket
import statistics
import sys
import threading
import time

import jax
import openai
import uvicorn

from oyster_jax.core import chat
from oyster_jax.core.files import atomic_write_json
from oyster_jax.data.vocab import default_tokenizer_path
from oyster_jax.llm.local import LocalJaxBackend
from oyster_jax.models import ModelConfig, init_params
from oyster_jax.serve import Server, create_app

PROMPT = [{"role": "user", "content": "Describe, step by step, how a city keeps its drinking water safe."}]


def _start_local(args, messages):
    if args.ckpt:
        backend = LocalJaxBackend(args.ckpt, args.tokenizer)
    else:
        cfg = ModelConfig(
            vocab_size=4096,
            hidden_size=64,
            intermediate_size=128,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            head_dim=16,
            max_position_embeddings=1024,
        )
        backend = LocalJaxBackend(
            tokenizer=default_tokenizer_path(), cfg=cfg, params=init_params(cfg, jax.random.key(0))
        )
    engine = backend.engine(
        max_batch=args.max_batch,
        max_seq_len=args.max_seq_len,
        max_queue=args.max_queue,
        max_prefill_batch=args.max_prefill_batch,
    )
    # Every (rows, positions) bucket and prefill group size the waves can meet compiles now: which buckets a
    # wave reaches depends on how its requests happen to join, so warm-up waves alone can miss some and put
    # a compile inside a measured wave.
    prompt = backend.tokenizer.encode(chat.render_generation_prompt(messages), add_special_tokens=False).ids
    t0 = time.perf_counter()
    runs = engine.warmup(len(prompt), args.new_tokens)
    print(f"warm-up: {runs} programs for {len(prompt)}-token prompts in {time.perf_counter() - t0:.1f} s", flush=True)
    server = Server(engine, "bench")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    httpd = uvicorn.Server(uvicorn.Config(create_app(server), log_level="warning", log_config=None))
    thread = threading.Thread(target=httpd.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not httpd.started:
        time.sleep(0.02)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"

    def stop():
        httpd.should_exit = True
        thread.join(timeout=30)
        backend.close()

    eos = sorted(engine.eos_ids)
    return url, "bench", eos, stop


def _one(client, model, messages, new_tokens, bias):
    t0 = time.perf_counter()
    first, tokens = None, 0
    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=new_tokens,
        stream=True,
        logit_bias=bias,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - t0
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return first if first is not None else time.perf_counter() - t0, tokens


def _wave(client, model, messages, concurrency, requests, new_tokens, bias):
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda _: _one(client, model, messages, new_tokens, bias), range(requests)))
    wall = time.perf_counter() - t0
    ttft = sorted(r[0] for r in results)
    return {
        "concurrency": concurrency,
        "requests": requests,
        "seconds": wall,
        "requests_per_s": requests / wall,
        "tokens_per_s": sum(r[1] for r in results) / wall,
        "ttft_p50_s": statistics.median(ttft),
        "ttft_p90_s": ttft[min(len(ttft) - 1, int(0.9 * len(ttft)))],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m oyster_jax.bench.serve", description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="benchmark a running server (its /v1 base URL) instead of starting one")
    ap.add_argument("--model", default="bench", help="model id at --url")
    ap.add_argument("--api_key", default="unused")
    ap.add_argument("--eos_ids", default="", help="with --url: end-of-turn ids to disable (comma-separated)")
    ap.add_argument("--ckpt", help="checkpoint to serve in process (default: a tiny random model)")
    ap.add_argument("--tokenizer")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    ap.add_argument("--new_tokens", type=int, default=64)
    ap.add_argument("--max_batch", type=int, default=32)
    ap.add_argument("--max_seq_len", type=int, default=512)
    ap.add_argument("--max_queue", type=int, default=64)
    ap.add_argument(
        "--max_prefill_batch", type=int, help="requests joining together prefilled in one call (1: one at a time)"
    )
    ap.add_argument("--prompt_words", type=int, default=0, help="lengthen the prompt by this many words")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)

    stop = lambda: None  # noqa: E731
    if args.url:
        url, model, eos = args.url, args.model, [int(e) for e in args.eos_ids.split(",") if e]
    messages = PROMPT
    if args.prompt_words:
        messages = [{"role": "user", "content": PROMPT[0]["content"] + " Context:" + " water" * args.prompt_words}]
    if not args.url:
        url, model, eos, stop = _start_local(args, messages)
    client = openai.OpenAI(base_url=url, api_key=args.api_key, max_retries=5, timeout=600)
    bias = {str(e): -100 for e in eos}
    levels = [int(c) for c in args.concurrency.split(",")]
    try:
        for c in levels:  # warm-up: every (rows, positions) bucket of the step that the waves use compiles here
            _wave(client, model, messages, c, c, args.new_tokens, bias)
        results = []
        for c in levels:
            r = _wave(client, model, messages, c, max(args.requests, c), args.new_tokens, bias)
            results.append(r)
            print(
                f"concurrency {c:3d}: {r['requests_per_s']:7.2f} req/s  {r['tokens_per_s']:8.1f} tok/s  "
                f"TTFT p50 {r['ttft_p50_s'] * 1000:7.1f} ms  p90 {r['ttft_p90_s'] * 1000:7.1f} ms",
                flush=True,
            )
    finally:
        stop()
    summary = {
        "url": url if args.url else "in-process",
        "ckpt": args.ckpt or "tiny random",
        "new_tokens": args.new_tokens,
        "prompt_words": args.prompt_words,
        "max_prefill_batch": args.max_prefill_batch,
        "results": results,
    }
    if args.json:
        atomic_write_json(args.json, summary)
    print(f"done: {len(results)} levels, {args.new_tokens} new tokens per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
