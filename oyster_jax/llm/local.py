"""`LocalJaxBackend`: our own JAX model behind the Backend protocol.

    backend = LocalJaxBackend("runs/demo/ckpt", tokenizer="oyster_jax/data/seed/tokenizer.json")
    thinking, answer = backend.chat([{"role": "user", "content": "hi"}], temperature=0.0, max_tokens=64)

`ckpt` is anything `convert.open_model` opens: a Hugging Face directory, an Orbax model checkpoint or a
trainer workdir (with the tokenizer it carries). The chat template is `oyster_jax.core.chat` (Qwen3
ChatML by default). Generation has one path: the continuous-batching engine `infer.engine.Engine` (created on
the first call), the same one `python -m oyster_jax.serve` runs. Concurrent `achat` calls share its decode
batch whatever their sampling settings: each joins the running batch between two steps and leaves it when
done, so the callers' concurrency turns into batch size with no batching window. `response_format`
(`{"type": "json_object"}` or `{"type": "json_schema", "json_schema": {"schema": ...}}`, as OpenAI) is
honoured by constrained decoding inside the same steps, so a local judge's reply always parses.

Sampling keys: temperature (0 = greedy, the default), top_p, top_k, max_tokens, seed, stop, response_format.
As with OpenAI, a sampled call without a seed draws a fresh one; a seeded call gives the same tokens alone or
beside other calls.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

from oyster_jax import convert
from oyster_jax.core import chat
from oyster_jax.infer.engine import Engine, QueueFull, SamplingParams, TokenEvent
from oyster_jax.llm.base import BackendError, BaseBackend, Completion, validate_messages

__all__ = ["LocalJaxBackend"]

_SAMPLING_KEYS = ("temperature", "top_p", "top_k", "max_tokens", "seed", "stop", "response_format")
_QUEUE_RETRY_S = 0.05  # a full engine queue: try again after this long (the caller waits, never fails)


class LocalJaxBackend(BaseBackend):
    """Args:
    ckpt: a model directory `convert.open_model` opens (HF, Orbax checkpoint, trainer workdir or stage).
    tokenizer: `tokenizer.json` file or a directory holding one; default: `convert.find_tokenizer(ckpt)`.
    chat_format: 'chatml' (Qwen3) or 'deepseek_r1'.
    max_new_tokens: default budget when a call gives no max_tokens.
    max_batch: decode slots of the engine (calls decoded together). max_seq_len: positions per slot
      (prompt + reply; default: the model's, at most 4096). max_queue: calls that wait for a slot before
      further callers poll. decode_attention: "xla" | "pallas".
    cfg / params: pass an already loaded model instead of reading `ckpt` (tests, notebooks).
    """

    # Honours `response_format` by constrained decoding: the judge client asks for each task's schema.
    constrains_json = True

    def __init__(
        self,
        ckpt: str | None = None,
        tokenizer: str | None = None,
        *,
        chat_format: str = "chatml",
        max_new_tokens: int = 512,
        max_batch: int = 16,
        max_seq_len: int | None = None,
        max_queue: int = 1024,
        decode_attention: str = "xla",
        cfg=None,
        params=None,
    ):
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
        self._engine_options = dict(
            max_batch=max_batch, max_seq_len=max_seq_len, max_queue=max_queue, decode_attention=decode_attention
        )
        # End-of-turn markers that are single tokens stop inside the decode loop; others as stop strings.
        self._eos_ids, self._stop_strings = [], []
        for s in chat.stop_strings(self.chat_format):
            tid = self.tokenizer.token_to_id(s)
            (self._eos_ids.append(tid) if tid is not None else self._stop_strings.append(s))
        if cfg.eos_token_id is not None:
            ids = cfg.eos_token_id if isinstance(cfg.eos_token_id, (list, tuple)) else [cfg.eos_token_id]
            self._eos_ids.extend(i for i in ids if i not in self._eos_ids)
        self._lock = threading.Lock()
        self._closed = False
        self._engine: Engine | None = None
        self.requests = 0  # calls made (tests and benchmarks)

    # --- tokens in, tokens out ---
    def prompt_tokens(self, messages) -> list[int]:
        text = chat.render_generation_prompt(validate_messages(messages), self.chat_format)
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=False)

    def engine(self, **options) -> Engine:
        """The continuous-batching engine over this model (`infer.engine.Engine`, created on the first call;
        `options` override the constructor's max_batch, max_seq_len, max_queue, decode_attention). Every call
        of this backend and `python -m oyster_jax.serve` run on it."""
        with self._lock:
            if self._closed:
                raise BackendError("LocalJaxBackend is closed")
            if self._engine is None:
                opts = self._engine_options | options
                self._engine = Engine(self.cfg, self.params, self.tokenizer, eos_ids=self._eos_ids, **opts)
            return self._engine

    def sampling_params(self, engine: Engine, sampling: dict) -> SamplingParams:
        """The engine's SamplingParams for a call's keywords (unknown keys are refused)."""
        unknown = set(sampling) - set(_SAMPLING_KEYS)
        if unknown:
            raise ValueError(f"unknown sampling keyword(s) {sorted(unknown)}; known: {list(_SAMPLING_KEYS)}")
        stop = sampling.get("stop") or ()
        seed = sampling.get("seed")
        return SamplingParams(
            max_tokens=int(sampling.get("max_tokens") or self.max_new_tokens),
            temperature=float(sampling.get("temperature") or 0.0),
            top_p=1.0 if sampling.get("top_p") is None else float(sampling["top_p"]),
            top_k=int(sampling.get("top_k") or 0),
            seed=None if seed is None else int(seed),
            stop=tuple(self._stop_strings) + ((stop,) if isinstance(stop, str) else tuple(stop)),
            grammar=self._grammar(engine, sampling.get("response_format")),
        )

    @staticmethod
    def _grammar(engine: Engine, response_format) -> str | None:
        if response_format is None or response_format.get("type", "text") == "text":
            return None
        kind = response_format.get("type")
        if kind == "json_object":
            return engine.grammars.json_object()
        if kind == "json_schema":
            return engine.grammars.json_schema((response_format.get("json_schema") or {}).get("schema"))
        raise ValueError(f"response_format type {kind!r}: expected text, json_object or json_schema")

    # --- calls ---
    async def _run(self, messages, sampling) -> tuple[str, str, int, int]:
        """(raw text of the assistant turn, finish reason, prompt tokens, new tokens) of one engine request."""
        engine = self.engine()
        params = self.sampling_params(engine, sampling)
        prompt = self.prompt_tokens(messages)
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()
        pieces: list[str] = []
        n_new = 0

        def sink(event: TokenEvent):  # engine thread
            nonlocal n_new
            pieces.append(event.text)
            if event.token is not None:
                n_new += 1
            if event.finish_reason is not None:
                loop.call_soon_threadsafe(lambda: done.done() or done.set_result(event))

        while True:
            try:
                request = engine.submit(prompt, params, 1, sink)
                break
            except QueueFull:
                await asyncio.sleep(_QUEUE_RETRY_S)
            except ValueError as e:
                raise BackendError(f"local generation refused: {e}") from None
        with self._lock:
            self.requests += 1
        try:
            last = await done
        except asyncio.CancelledError:
            request.cancel()  # frees the slot at the next step
            raise
        if last.finish_reason != "stop" and last.finish_reason != "length":
            raise BackendError(f"local generation failed: {last.error or last.finish_reason}")
        return "".join(pieces), last.finish_reason, len(prompt), n_new

    async def agenerate(self, messages, **sampling) -> str:
        """The raw text of the assistant turn (thinking included; end-of-turn markers and stop strings cut)."""
        text, _, _, _ = await self._run(messages, sampling)
        return text

    def _finish(self, text: str) -> tuple[str, str]:
        thinking, content = chat.split_thinking(text, self.chat_format)
        return thinking.strip(), content.strip()

    async def acomplete(self, messages, **sampling) -> Completion:
        """The answer with its token counts and the engine's finish reason ('length': the budget ran out)."""
        text, finish, n_prompt, n_new = await self._run(messages, sampling)
        reasoning, content = self._finish(text)
        return Completion(reasoning, content, {"prompt_tokens": n_prompt, "completion_tokens": n_new}, finish)

    async def achat(self, messages, **sampling) -> tuple[str, str]:
        completion = await self.acomplete(messages, **sampling)
        return completion.reasoning, completion.content

    def chat(self, messages, **sampling) -> tuple[str, str]:
        """Blocking `achat`, also where an event loop already runs (a notebook): the call gets its own loop on a
        short-lived thread, and the engine's thread answers it there."""
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, self.achat(messages, **sampling)).result()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            engine = self._engine
        if engine is not None:
            engine.close()
