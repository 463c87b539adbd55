"""`LocalJaxBackend`: our own JAX model behind the Backend protocol.

    backend = LocalJaxBackend("runs/demo/ckpt", tokenizer="oyster_jax/data/seed/tokenizer.json")
    thinking, answer = backend.chat([{"role": "user", "content": "hi"}], temperature=0.0, max_tokens=64)

`ckpt` is anything `convert.open_model` opens: a Hugging Face directory, an Orbax model checkpoint or a
trainer workdir (with the tokenizer it carries). The chat template is `oyster_jax.core.chat` (Qwen3
ChatML by default); generation is `oyster_jax.infer.generate`. Concurrent `achat` calls are gathered into
batches (same sampling settings, up to `max_batch`, waiting at most `batch_window_s` for company, and only
when the previous batch had company or calls are queued, so a lone caller pays no wait) and run one batch at
a time on a single worker thread, so the engine's concurrency turns into batch size. Every new (batch,
length) bucket compiles once per process: short benchmarks should warm up first.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import queue
import threading
import time

from oyster_jax import convert, infer
from oyster_jax.core import chat
from oyster_jax.infer.engine import Engine, QueueFull, SamplingParams
from oyster_jax.llm.base import BackendError, BaseBackend, Completion, validate_messages

__all__ = ["LocalJaxBackend"]

_SAMPLING_KEYS = ("temperature", "top_p", "top_k", "max_tokens", "seed", "stop")


@dataclasses.dataclass
class _Request:
    tokens: list[int]
    key: tuple  # sampling settings; only requests with equal keys share a batch
    future: concurrent.futures.Future


class LocalJaxBackend(BaseBackend):
    """Args:
    ckpt: a model directory `convert.open_model` opens (HF, Orbax checkpoint, trainer workdir or stage).
    tokenizer: `tokenizer.json` file or a directory holding one; default: `convert.find_tokenizer(ckpt)`.
    chat_format: 'chatml' (Qwen3) or 'deepseek_r1'.
    max_new_tokens: default budget when a call gives no max_tokens.
    max_batch / batch_window_s: micro-batching of concurrent calls; adaptive_window=False always waits
      the window (otherwise only after a batch that had company, or with calls already queued).
    cfg / params: pass an already loaded model instead of reading `ckpt` (tests, notebooks).
    """

    def __init__(
        self,
        ckpt: str | None = None,
        tokenizer: str | None = None,
        *,
        chat_format: str = "chatml",
        max_new_tokens: int = 512,
        max_batch: int = 16,
        batch_window_s: float = 0.05,
        adaptive_window: bool = True,
        cfg=None,
        params=None,
        **generate_options,
    ):

        self._chat = chat
        self.chat_format = chat.get_format(chat_format).name
        if (cfg is None) != (params is None):
            raise ValueError("pass both cfg and params, or neither (then ckpt is loaded)")
        if cfg is None:
            if not ckpt:
                raise ValueError("LocalJaxBackend needs ckpt (or cfg and params)")
            cfg, params, self.tokenizer = convert.open_model(ckpt, tokenizer=tokenizer)
        else:
            tok_path = convert.find_tokenizer(ckpt, tokenizer)
            self.tokenizer = convert.load_tokenizer(tok_path)
            convert.check_tokenizer(self.tokenizer, cfg, tok_path)
        self.cfg, self.params = cfg, params
        self.name = f"local:{ckpt or '<in-memory>'}"
        self.max_new_tokens = max_new_tokens
        self.max_batch = max_batch
        self.batch_window_s = batch_window_s
        self.adaptive_window = adaptive_window
        self.generate_options = generate_options
        # End-of-turn markers that are single tokens stop inside the decode loop; others as stop strings.
        self._eos_ids, self._stop_strings = [], []
        for s in chat.stop_strings(self.chat_format):
            tid = self.tokenizer.token_to_id(s)
            (self._eos_ids.append(tid) if tid is not None else self._stop_strings.append(s))
        if cfg.eos_token_id is not None:
            ids = cfg.eos_token_id if isinstance(cfg.eos_token_id, (list, tuple)) else [cfg.eos_token_id]
            self._eos_ids.extend(i for i in ids if i not in self._eos_ids)
        self._queue: queue.Queue = queue.Queue()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._last_batch = 1
        self._engine = None
        self.batches = 0  # counters for tests and benchmarks
        self.requests = 0

    # --- tokens in, tokens out ---
    def prompt_tokens(self, messages) -> list[int]:
        text = self._chat.render_generation_prompt(validate_messages(messages), self.chat_format)
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=False)

    def _generate(self, batch: list[_Request]) -> list[list[int]]:

        temperature, top_p, top_k, max_tokens, seed, stop = batch[0].key
        return infer.generate(
            self.cfg,
            self.params,
            [r.tokens for r in batch],
            max_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            eos_ids=self._eos_ids,
            stop_strings=tuple(self._stop_strings) + tuple(stop),
            decode_fn=self.decode,
            seed=seed,
            **self.generate_options,
        )

    # --- micro-batching worker ---
    def _run_worker(self):
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, deferred = [first], []
            # Wait for company only when calls have been arriving together (a lone caller pays no latency).
            busy = self._last_batch > 1 or not self._queue.empty() or not self.adaptive_window
            window = self.batch_window_s if busy else 0.002
            deadline = time.monotonic() + window
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    deferred.append(None)
                    break
                (batch if item.key == first.key else deferred).append(item)
            for item in deferred:  # different settings: next round
                self._queue.put(item)
            self._last_batch = len(batch)
            try:
                outputs = self._generate(batch)
                self.batches += 1
            except Exception as e:  # noqa: BLE001  (delivered to every caller of the batch)
                for r in batch:
                    r.future.set_exception(BackendError(f"local generation failed: {type(e).__name__}: {e}"))
                continue
            for r, out in zip(batch, outputs):
                r.future.set_result(out)

    def _submit(self, messages, sampling) -> concurrent.futures.Future:
        unknown = set(sampling) - set(_SAMPLING_KEYS)
        if unknown:
            raise ValueError(f"unknown sampling keyword(s) {sorted(unknown)}; known: {list(_SAMPLING_KEYS)}")
        stop = sampling.get("stop") or ()
        key = (
            float(sampling.get("temperature") or 0.0),
            sampling.get("top_p"),
            sampling.get("top_k"),
            int(sampling.get("max_tokens") or self.max_new_tokens),
            int(sampling.get("seed") or 0),
            (stop,) if isinstance(stop, str) else tuple(stop),
        )
        tokens = self.prompt_tokens(messages)
        room = self.cfg.max_position_embeddings - len(tokens)
        if room <= 0:
            raise BackendError(
                f"prompt of {len(tokens)} tokens does not fit the model's {self.cfg.max_position_embeddings} positions"
            )
        if key[3] > room:  # a generous default budget must not fail small models: generate what fits
            key = key[:3] + (room,) + key[4:]
        with self._lock:
            if self._closed:
                raise BackendError("LocalJaxBackend is closed")
            if self._worker is None:
                self._worker = threading.Thread(target=self._run_worker, name="oyster-local-gen", daemon=True)
                self._worker.start()
            self.requests += 1
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.n_prompt, future.max_tokens = len(tokens), key[3]  # for acomplete's usage and finish reason
        self._queue.put(_Request(tokens, key, future))
        return future

    def _finish(self, new_tokens: list[int]) -> tuple[str, str]:
        thinking, content = self._chat.split_thinking(self.decode(new_tokens), self.chat_format)
        return thinking.strip(), content.strip()

    async def achat(self, messages, **sampling) -> tuple[str, str]:
        completion = await self.acomplete(messages, **sampling)
        return completion.reasoning, completion.content

    async def acomplete(self, messages, **sampling) -> Completion:
        """The answer with its token counts; finish_reason 'length' when the token budget ran out."""
        response_format = sampling.pop("response_format", None)
        if response_format is not None and response_format.get("type", "text") != "text":
            n_prompt, tokens, finish = await self._constrained(messages, sampling, response_format)
        else:
            future = self._submit(messages, sampling)
            tokens = await asyncio.wrap_future(future)
            n_prompt, budget = future.n_prompt, future.max_tokens
            finish = "length" if len(tokens) >= budget else "stop"
        reasoning, content = self._finish(tokens)
        usage = {"prompt_tokens": n_prompt, "completion_tokens": len(tokens)}
        return Completion(reasoning, content, usage, finish)

    def chat(self, messages, **sampling) -> tuple[str, str]:
        if sampling.get("response_format") is not None:
            return super().chat(messages, **sampling)
        return self._finish(self._submit(messages, sampling).result())

    # Honours `response_format` ({"type": "json_object"} or {"type": "json_schema", "json_schema": {"schema":
    # ...}}, as OpenAI) by constrained decoding on the engine: the reply always parses.
    constrains_json = True

    async def _constrained(self, messages, sampling, response_format) -> tuple[int, list[int], str]:
        """(prompt tokens, new tokens, finish reason) of a grammar-constrained generation."""

        unknown = set(sampling) - set(_SAMPLING_KEYS)
        if unknown:
            raise ValueError(f"unknown sampling keyword(s) {sorted(unknown)}; known: {list(_SAMPLING_KEYS)}")
        engine = self.engine()
        kind = response_format.get("type")
        if kind == "json_object":
            grammar = engine.grammars.json_object()
        elif kind == "json_schema":
            grammar = engine.grammars.json_schema((response_format.get("json_schema") or {}).get("schema"))
        else:
            raise ValueError(f"response_format type {kind!r}: expected text, json_object or json_schema")
        stop = sampling.get("stop") or ()
        params = SamplingParams(
            max_tokens=int(sampling.get("max_tokens") or self.max_new_tokens),
            temperature=float(sampling.get("temperature") or 0.0),
            top_p=1.0 if sampling.get("top_p") is None else float(sampling["top_p"]),
            top_k=int(sampling.get("top_k") or 0),
            seed=int(sampling.get("seed") or 0),
            stop=(stop,) if isinstance(stop, str) else tuple(stop),
            grammar=grammar,
        )
        loop = asyncio.get_running_loop()
        done, tokens = loop.create_future(), []

        def sink(event):
            if event.token is not None and event.token not in engine.eos_ids:
                tokens.append(event.token)
            if event.finish_reason is not None:
                loop.call_soon_threadsafe(lambda: done.done() or done.set_result(event))

        prompt = self.prompt_tokens(messages)
        while True:
            try:
                engine.submit(prompt, params, 1, sink)
                break
            except QueueFull:
                await asyncio.sleep(0.05)
            except ValueError as e:
                raise BackendError(f"local generation refused: {e}") from None
        last = await done
        if last.finish_reason == "error":
            raise BackendError(f"local generation failed: {last.error}")
        return len(prompt), tokens, last.finish_reason

    def engine(self, **options):
        """The continuous-batching engine over this model (`infer.engine.Engine`, created on the first call;
        `options`: max_batch, max_seq_len, max_queue, decode_attention). The server and constrained calls
        use it."""
        with self._lock:
            if self._closed:
                raise BackendError("LocalJaxBackend is closed")
            if self._engine is None:
                options.setdefault("max_batch", self.max_batch)
                self._engine = Engine(self.cfg, self.params, self.tokenizer, eos_ids=self._eos_ids, **options)
            return self._engine

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._worker is not None:
                self._queue.put(None)
            if self._engine is not None:
                self._engine.close()
