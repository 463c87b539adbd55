"""Continuous batching: requests join and leave a running decode batch between steps.

    engine = Engine(cfg, params, tokenizer, eos_ids=[2], max_batch=8, max_seq_len=2048)
    request = engine.submit(prompt_ids, SamplingParams(max_tokens=64, temperature=0.7, seed=1), n=2, sink=print)
    completions = engine.generate(prompt_ids, SamplingParams(max_tokens=64))   # blocking helper
    engine.close()

The KV cache has a fixed number of slots (`max_batch` rows of `max_seq_len` positions). Every step runs one
token of every occupied slot through the model (`infer.decode` with one write slot per row), samples the next
tokens on the device and hands them to the host, which streams them out, checks stop strings, advances the
grammar matchers and frees the slots of finished rows; waiting requests take free slots between two steps
(their prompts, less the last token, are prefilled together, one call per padded prompt length, and copied
into the slots; the last prompt token goes through the next shared step, so the first new token comes out of
the same sampler as every other). A short request never waits for a long one to finish. Slots are taken lowest
first and a step runs only the first slots up to the highest occupied one, over the cache positions written so
far (both rounded up to powers of two), so a lone request does not pay for a full batch or a long context it
does not use; each (rows, positions) bucket compiles once.

Per row, inside the step: presence / frequency penalties over the tokens generated so far, `logit_bias`,
the grammar's token mask, then greedy (temperature 0) or temperature / top-k / top-p sampling with the key
fold_in(fold_in(key(seed), choice), step): a seeded request gives the same tokens alone or beside others.
Log-probabilities are those of the distribution after penalties, bias and mask, before temperature.

`submit` raises `QueueFull` when `max_queue` requests already wait: the caller answers 429.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import secrets
import threading
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from oyster_jax.infer.constrained import Grammars, TokenMatcher, apply_bitmask, bitmask_words
from oyster_jax.infer.decoder import KVCache, decode, init_cache
from oyster_jax.infer.generation import _decode_attention_fn, bucket_batch, bucket_length
from oyster_jax.infer.sampling import filter_logits
from oyster_jax.models.config import ModelConfig

__all__ = [
    "Completion",
    "Engine",
    "EngineClosed",
    "QueueFull",
    "Request",
    "SamplingParams",
    "TokenEvent",
    "MAX_TOP_LOGPROBS",
    "held_back_length",
]

log = logging.getLogger(__name__)

MAX_TOP_LOGPROBS = 20
MAX_LOGIT_BIAS = 300  # entries per request (OpenAI's limit)


class QueueFull(RuntimeError):
    """The engine's waiting queue is full; try again later."""


class EngineClosed(RuntimeError):
    """The engine was closed."""


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None  # None: a fresh random seed per request
    stop: tuple[str, ...] = ()  # stop strings (cut from the text, OpenAI semantics)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0  # alternatives per token, <= MAX_TOP_LOGPROBS
    grammar: str | None = None  # an llguidance grammar (`Grammars.json_schema(...)`)


@dataclasses.dataclass
class TokenEvent:
    """One step of one choice: the token, the text it released, and on the last event the finish reason."""

    choice: int
    token: int | None  # None on a final event that carries no token
    text: str  # newly released text ('' while a possible stop string is held back)
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    finish_reason: str | None = None  # "stop" | "length" | "error" | "cancelled" on the last event
    error: str | None = None


@dataclasses.dataclass
class Completion:
    tokens: list[int]  # generated tokens, the end-of-turn token excluded
    text: str
    finish_reason: str
    logprobs: list[float]
    top_logprobs: list[list[tuple[int, float]]]


class Request:
    """A submitted request (`n` choices); `cancel()` frees its slots at the next step."""

    def __init__(self, engine: Engine, prompt: list[int], params: SamplingParams, n: int, sink):
        self.engine, self.prompt, self.params, self.n, self.sink = engine, prompt, params, n, sink
        self.seed = params.seed if params.seed is not None else secrets.randbits(31)
        self.cancelled = False
        self.unfinished = n

    def cancel(self) -> None:
        self.cancelled = True
        self.engine._wake()


# ------------------------------------------------------------------------------------------------
# Device programs
# ------------------------------------------------------------------------------------------------
@jax.tree_util.register_dataclass
@dataclasses.dataclass
class _DeviceState:
    cache: KVCache  # [L, B, S, K, H]
    counts: jax.Array  # [B, V] int32: how often each token was generated in the row


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class _StepInputs:
    tokens: jax.Array  # [B] int32: the row's last token (the last prompt token on the first step)
    positions: jax.Array  # [B] int32: its position = the cache slot it is written to
    count_input: jax.Array  # [B] bool: the input token was generated (counts for the penalties)
    reset: jax.Array  # [B] bool: a new request took the row (forget the old counts)
    seeds: jax.Array  # [B] uint32
    choices: jax.Array  # [B] int32
    steps: jax.Array  # [B] int32: tokens generated so far
    temperature: jax.Array  # [B] float32
    top_k: jax.Array  # [B] int32
    top_p: jax.Array  # [B] float32
    presence: jax.Array  # [B] float32
    frequency: jax.Array  # [B] float32
    bias_ids: jax.Array  # [B, MAX_LOGIT_BIAS] int32
    bias_values: jax.Array  # [B, MAX_LOGIT_BIAS] float32 (0 where unused)
    bits: jax.Array  # [B, W] uint32 grammar masks
    constrained: jax.Array  # [B] bool


def _choose_rows(logits, keys, temperature, top_k, top_p):  # [B, V], [B] keys, [B] x3 -> [B] int32
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def sample(logits):
        scaled = logits / jnp.maximum(temperature, 1e-6)[:, None]
        filtering = jnp.any((top_k > 0) | (top_p < 1))
        one_row = jax.vmap(lambda row, k, p: filter_logits(row[None], k, p)[0])
        scaled = jax.lax.cond(filtering, lambda x: one_row(x, top_k, top_p), lambda x: x, scaled)
        return jax.vmap(jax.random.categorical)(keys, scaled).astype(jnp.int32)

    sampled = jax.lax.cond(jnp.any(temperature > 0), sample, lambda _: greedy, logits)
    return jnp.where(temperature > 0, sampled, greedy)


@functools.partial(jax.jit, static_argnames=("cfg", "decode_attention", "span"), donate_argnames=("state",))
def _step(cfg: ModelConfig, decode_attention: str, span: int, params, state: _DeviceState, x: _StepInputs):
    """One token of the first B slots (x holds B rows), attending over the first `span` cache positions: the
    slots past B are free and the positions past `span` not yet written, so neither is read or computed."""
    B = x.tokens.shape[0]
    rows = jnp.arange(B)
    counts = jnp.where(x.reset[:, None], 0, state.counts[:B])
    counts = counts.at[rows, x.tokens].add(x.count_input.astype(jnp.int32))
    window = KVCache(state.cache.k[:, :B, :span], state.cache.v[:, :B, :span])
    logits, window = decode(
        cfg,
        params,
        x.tokens[:, None],
        x.positions[:, None],
        window,
        x.positions,
        jnp.zeros((B,), jnp.int32),
        decode_attention=_decode_attention_fn(decode_attention),
    )  # logits [B, V] float32
    cache = KVCache(
        jax.lax.dynamic_update_slice(state.cache.k, window.k, (0, 0, 0, 0, 0)),
        jax.lax.dynamic_update_slice(state.cache.v, window.v, (0, 0, 0, 0, 0)),
    )  # in place: the state is donated
    logits = logits - x.presence[:, None] * (counts > 0) - x.frequency[:, None] * counts
    logits = logits.at[rows[:, None], x.bias_ids].add(x.bias_values)
    logits = apply_bitmask(logits, x.bits, x.constrained)
    logprobs = jax.nn.log_softmax(logits, axis=-1)
    keys = jax.vmap(lambda s, c, t: jax.random.fold_in(jax.random.fold_in(jax.random.key(s), c), t))(
        x.seeds, x.choices, x.steps
    )
    tokens = _choose_rows(logits, keys, x.temperature, x.top_k, x.top_p)
    top_values, top_ids = jax.lax.top_k(logprobs, MAX_TOP_LOGPROBS)
    out = (tokens, logprobs[rows, tokens], top_ids.astype(jnp.int32), top_values)
    return _DeviceState(cache, jax.lax.dynamic_update_slice(state.counts, counts, (0, 0))), out


@functools.partial(jax.jit, static_argnames=("cfg",))
def _prefill(cfg: ModelConfig, params, tokens):  # tokens [R, P] right-padded -> KVCache [L, R, P, K, H]
    R, P = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(P, dtype=jnp.int32), (R, P))
    # Right padding: a real token never sees the padding after it, and the rows' later steps overwrite those
    # slots before reading them, so no mask is needed.
    _, cache = decode(cfg, params, tokens, positions, init_cache(cfg, R, P), 0, jnp.zeros((R,), jnp.int32))
    return cache


@functools.partial(jax.jit, donate_argnames=("cache",))
def _insert(cache: KVCache, part: KVCache, row, slot) -> KVCache:  # part's row `row` -> cache slot `slot`
    def put(dst, src):
        src = jax.lax.dynamic_slice_in_dim(src, row, 1, axis=1)
        return jax.lax.dynamic_update_slice(dst, src, (0, slot, 0, 0, 0))

    return KVCache(put(cache.k, part.k), put(cache.v, part.v))


# ------------------------------------------------------------------------------------------------
# Host side
# ------------------------------------------------------------------------------------------------
def held_back_length(text: str, stops: Sequence[str]) -> int:
    """Length of the longest tail of `text` that could still grow into a stop string."""
    longest = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:k]):
                longest = k
                break
    return longest


class _Choice:
    """One row of the batch: a request's choice and its decoding state."""

    def __init__(self, request: Request, index: int, matcher: TokenMatcher | None):
        self.request, self.index, self.matcher = request, index, matcher
        self.tokens: list[int] = []
        self.generated = 0
        self.text = ""
        self.released = 0  # characters of `text` already handed out
        self.prefix_offset = self.read_offset = 0  # incremental detokenisation (UTF-8 safe)


class Engine:
    """Args:
    cfg, params: the model. tokenizer: a `tokenizers.Tokenizer`. eos_ids: ids that end a turn.
    max_batch: slots decoded together. max_seq_len: positions per slot (prompt + completion;
      default: the model's, at most 4096). max_queue: requests that may wait for a slot.
    decode_attention: "xla" | "pallas" (the single-token attention of `infer.decode`).
    max_prefill_batch: requests joining at the same step whose prompts are prefilled in one call (grouped by
      padded prompt length; 1 = one at a time; default max_batch).
    """

    def __init__(
        self,
        cfg: ModelConfig,
        params,
        tokenizer,
        *,
        eos_ids: Sequence[int],
        max_batch: int = 8,
        max_seq_len: int | None = None,
        max_queue: int = 64,
        decode_attention: str = "xla",
        max_prefill_batch: int | None = None,
    ):
        # Placed once: a host (numpy) tree would be re-sent to the device on every step. Arrays that are
        # already placed (sharded over a mesh) pass through unchanged.
        self.cfg, self.params, self.tokenizer = cfg, jax.device_put(params), tokenizer
        self.max_prefill_batch = max(1, max_prefill_batch or max_batch)
        self.eos_ids = frozenset(int(e) for e in eos_ids)
        self.max_batch = max_batch
        self.max_seq_len = min(max_seq_len or min(cfg.max_position_embeddings, 4096), cfg.max_position_embeddings)
        self.max_queue = max_queue
        self.decode_attention = decode_attention
        _decode_attention_fn(decode_attention)  # validates the name
        self.words = bitmask_words(cfg.vocab_size)
        self._grammars: Grammars | None = None
        self._grammar_lock = threading.Lock()
        B, V = max_batch, cfg.vocab_size
        self._state = _DeviceState(init_cache(cfg, B, self.max_seq_len), jnp.zeros((B, V), jnp.int32))
        self._host = _StepInputs(
            tokens=np.zeros(B, np.int32),
            positions=np.zeros(B, np.int32),
            count_input=np.zeros(B, bool),
            reset=np.zeros(B, bool),
            seeds=np.zeros(B, np.uint32),
            choices=np.zeros(B, np.int32),
            steps=np.zeros(B, np.int32),
            temperature=np.zeros(B, np.float32),
            top_k=np.zeros(B, np.int32),
            top_p=np.ones(B, np.float32),
            presence=np.zeros(B, np.float32),
            frequency=np.zeros(B, np.float32),
            bias_ids=np.zeros((B, MAX_LOGIT_BIAS), np.int32),
            bias_values=np.zeros((B, MAX_LOGIT_BIAS), np.float32),
            bits=np.zeros((B, self.words), np.uint32),
            constrained=np.zeros(B, bool),
        )
        self._slots: list[_Choice | None] = [None] * B
        self._waiting: collections.deque[Request] = collections.deque()
        self._cv = threading.Condition()
        self._device_lock = threading.Lock()  # the loop's admit + step, or a warm-up: never both
        self._closed = False
        self.steps = 0  # counters for tests and benchmarks
        self.prefills = 0  # prefill calls (several requests joining together share one)
        self.finished = 0
        self.max_occupancy = 0
        self._thread = threading.Thread(target=self._loop, name="oyster-engine", daemon=True)
        self._thread.start()

    # --- public API ---
    @property
    def grammars(self) -> Grammars:
        with self._grammar_lock:
            if self._grammars is None:
                self._grammars = Grammars(self.tokenizer, self.cfg.vocab_size, sorted(self.eos_ids))
            return self._grammars

    def warmup(self, prompt_tokens: int, max_tokens: int) -> int:
        """Compile, before serving, every program that requests of about `prompt_tokens` prompt tokens and
        up to `max_tokens` new ones can meet: the prefill and slot copy for each group size, the step for
        each (rows, positions) bucket. Otherwise the first request to reach a new bucket waits for its
        compile (seconds on a real model) and every request in the batch with it. -> programs run.

        Only while idle (nothing running or queued): the programs run on free slots, which every admitted
        request overwrites."""
        with self._cv:
            if self._waiting or any(self._slots):
                raise RuntimeError("warmup() needs an idle engine (call it before submitting requests)")
        P = min(bucket_length(max(1, prompt_tokens - 1)), self.max_seq_len)
        last = min(prompt_tokens + max_tokens, self.max_seq_len)
        spans = sorted({min(bucket_length(n, minimum=64), self.max_seq_len) for n in range(prompt_tokens, last + 1)})
        row_buckets = sorted({min(bucket_batch(n), self.max_batch) for n in range(1, self.max_batch + 1)})
        prefill_rows = sorted({min(bucket_batch(n), self.max_prefill_batch) for n in range(1, self.max_batch + 1)})
        runs = 0
        with self._device_lock:
            for R in prefill_rows:
                cache = _prefill(self.cfg, self.params, jnp.zeros((R, P), jnp.int32))
                self._state.cache = _insert(self._state.cache, cache, jnp.int32(0), jnp.int32(0))
                runs += 1
            for rows in row_buckets:
                x = jax.tree.map(lambda a, rows=rows: a[:rows].copy(), self._host)
                x.reset[:] = True  # free rows' penalty counts start from zero either way
                for span in spans:
                    self._state, out = _step(self.cfg, self.decode_attention, span, self.params, self._state, x)
                    jax.block_until_ready(out)
                    runs += 1
        return runs

    def submit(self, prompt: Sequence[int], params: SamplingParams, n: int = 1, sink=None) -> Request:
        """Queue a request; `sink(TokenEvent)` is called from the engine thread for every step of every
        choice. Raises ValueError for a request that can never run, QueueFull, EngineClosed."""
        prompt = [int(t) for t in prompt]
        if not prompt:
            raise ValueError("the prompt is empty")
        if len(prompt) >= self.max_seq_len:
            raise ValueError(f"the prompt has {len(prompt)} tokens; this server's context is {self.max_seq_len}")
        if any(not 0 <= t < self.cfg.vocab_size for t in prompt):
            raise ValueError(f"prompt token ids must be in [0, {self.cfg.vocab_size})")
        if not 1 <= n <= self.max_batch:
            raise ValueError(f"n={n}: this server decodes at most {self.max_batch} choices at once")
        if params.max_tokens < 1 or params.top_logprobs > MAX_TOP_LOGPROBS or len(params.logit_bias) > MAX_LOGIT_BIAS:
            raise ValueError(f"bad sampling parameters: {params}")
        room = self.max_seq_len - len(prompt)
        if params.max_tokens > room:  # a generous budget must not fail a short context: generate what fits
            params = dataclasses.replace(params, max_tokens=room)
        request = Request(self, prompt, params, n, sink or (lambda event: None))
        with self._cv:
            if self._closed:
                raise EngineClosed("the engine is closed")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are waiting")
            self._waiting.append(request)
            self._cv.notify()
        return request

    def generate(self, prompt: Sequence[int], params: SamplingParams, n: int = 1) -> list[Completion]:
        """Blocking: the finished choices of one request (waits for a queue place instead of raising)."""
        events: list[list[TokenEvent]] = [[] for _ in range(n)]
        done = threading.Event()
        remaining = [n]

        def sink(event: TokenEvent):
            events[event.choice].append(event)
            if event.finish_reason is not None:
                remaining[0] -= 1
                if not remaining[0]:
                    done.set()

        while True:
            try:
                self.submit(prompt, params, n, sink)
                break
            except QueueFull:
                with self._cv:
                    self._cv.wait(0.05)
        done.wait()
        out = []
        for evs in events:
            last = evs[-1]
            if last.finish_reason == "error":
                raise RuntimeError(f"generation failed: {last.error}")
            toks = [e for e in evs if e.token is not None and e.token not in self.eos_ids]
            out.append(
                Completion(
                    tokens=[e.token for e in toks],
                    text="".join(e.text for e in evs),
                    finish_reason=last.finish_reason,
                    logprobs=[e.logprob for e in toks],
                    top_logprobs=[e.top_logprobs for e in toks],
                )
            )
        return out

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return sum(c is not None for c in self._slots)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout=60)

    def _wake(self):
        with self._cv:
            self._cv.notify_all()

    # --- the loop ---
    def _loop(self):
        while True:
            with self._cv:
                while not self._closed and not self._waiting and not any(self._slots):
                    self._cv.wait()
                if self._closed:
                    break
                admitted = self._take_admissible()
                self._cv.notify_all()  # callers blocked on a full queue
            try:
                with self._device_lock:
                    self._admit(admitted)
                    self._drop_cancelled()
                    if any(self._slots):
                        self._step_once()
            except Exception as e:  # noqa: BLE001  (every running row learns why; the engine keeps serving)
                log.exception("engine step failed")
                self._fail_all(f"{type(e).__name__}: {e}")
        self._fail_all("the engine was closed", reason="cancelled")
        for request in list(self._waiting):
            self._finish_request(request, "cancelled", "the engine was closed")

    def _take_admissible(self) -> list[Request]:
        free = sum(c is None for c in self._slots)
        out = []
        while self._waiting:
            head = self._waiting[0]
            if head.cancelled:
                self._waiting.popleft()
                continue
            if head.n > free:
                break  # first come, first served: the head waits for enough slots
            out.append(self._waiting.popleft())
            free -= head.n
        return out

    def _admit(self, requests: list[Request]) -> None:
        """Give each request its slots: prefill the prompts (less their last token) of requests of the same
        padded length together, copy each into its request's slots, set the rows' sampling inputs."""
        ready = []
        for request in requests:
            try:
                grammar = request.params.grammar
                matchers = [self.grammars.matcher(grammar) for _ in range(request.n)] if grammar is not None else []
            except Exception as e:  # noqa: BLE001  (the request learns why; the others go on)
                self._finish_request(request, "error", f"grammar: {e}")
                continue
            slots = [i for i, c in enumerate(self._slots) if c is None][: request.n]
            for index, slot in enumerate(slots):  # taken now, so the next request gets other slots
                self._slots[slot] = _Choice(request, index, matchers[index] if matchers else None)
            ready.append((request, slots))
        groups: dict[int, list] = collections.defaultdict(list)
        for request, slots in ready:
            if len(request.prompt) > 1:
                groups[min(bucket_length(len(request.prompt) - 1), self.max_seq_len)].append((request, slots))
        for P, group in groups.items():
            for at in range(0, len(group), self.max_prefill_batch):
                part = group[at : at + self.max_prefill_batch]
                tokens = np.zeros((min(bucket_batch(len(part)), self.max_prefill_batch), P), np.int32)
                for row, (request, _) in enumerate(part):
                    tokens[row, : len(request.prompt) - 1] = request.prompt[:-1]
                cache = _prefill(self.cfg, self.params, jnp.asarray(tokens))
                self.prefills += 1
                for row, (_, slots) in enumerate(part):
                    for slot in slots:
                        self._state.cache = _insert(self._state.cache, cache, jnp.int32(row), jnp.int32(slot))
        for request, slots in ready:
            self._set_rows(request, slots)
        self.max_occupancy = max(self.max_occupancy, self.running)

    def _set_rows(self, request: Request, slots: list[int]) -> None:
        params, prompt = request.params, request.prompt
        h = self._host
        bias = dict(params.logit_bias)
        for index, slot in enumerate(slots):
            h.tokens[slot] = prompt[-1]
            h.positions[slot] = len(prompt) - 1
            h.count_input[slot] = False
            h.reset[slot] = True
            h.seeds[slot] = request.seed
            h.choices[slot] = index
            h.steps[slot] = 0
            h.temperature[slot] = params.temperature
            h.top_k[slot] = params.top_k
            h.top_p[slot] = params.top_p
            h.presence[slot] = params.presence_penalty
            h.frequency[slot] = params.frequency_penalty
            h.bias_ids[slot] = 0
            h.bias_values[slot] = 0
            h.bias_ids[slot, : len(bias)] = list(bias)
            h.bias_values[slot, : len(bias)] = list(bias.values())
            h.constrained[slot] = self._slots[slot].matcher is not None

    def _drop_cancelled(self):
        for slot, choice in enumerate(self._slots):
            if choice is not None and choice.request.cancelled:
                self._release(slot)

    def _release(self, slot: int):
        self._slots[slot] = None
        self._host.constrained[slot] = False
        self._host.temperature[slot] = 0.0
        self._host.positions[slot] = 0  # a free row inside the step's rows writes inside its window

    def _step_once(self):
        h = self._host
        occupied = [slot for slot, choice in enumerate(self._slots) if choice is not None]
        for slot in occupied:
            if self._slots[slot].matcher is not None:
                h.bits[slot] = self._slots[slot].matcher.bitmask()
        # Slots are taken lowest first, so the occupied ones sit at the front: the step runs the first
        # `rows` slots over the first `span` positions (power-of-two buckets: a few compiles, each reused).
        rows = min(bucket_batch(occupied[-1] + 1), self.max_batch)
        span = min(bucket_length(int(h.positions[occupied].max()) + 1, minimum=64), self.max_seq_len)
        x = jax.tree.map(lambda a: a[:rows], h)
        self._state, out = _step(self.cfg, self.decode_attention, span, self.params, self._state, x)
        tokens, logprobs, top_ids, top_values = jax.device_get(out)
        self.steps += 1
        h.reset[:] = False
        for slot in occupied:
            choice = self._slots[slot]
            token = int(tokens[slot])
            h.tokens[slot] = token
            h.positions[slot] += 1
            h.count_input[slot] = True
            h.steps[slot] += 1
            k = choice.request.params.top_logprobs
            top = [(int(i), float(v)) for i, v in zip(top_ids[slot, :k], top_values[slot, :k])]
            self._advance(slot, choice, token, float(logprobs[slot]), top)

    def _advance(self, slot: int, choice: _Choice, token: int, logprob: float, top):
        params = choice.request.params
        choice.generated += 1
        finish = None
        if choice.matcher is not None and not choice.matcher.consume(token):
            finish = "error"
        if token in self.eos_ids:
            finish = finish or "stop"  # the end-of-turn token adds no text
        else:
            choice.tokens.append(token)
            before = len(choice.text)
            choice.text += self._new_text(choice)
            if params.stop:
                start = max(0, before - max(map(len, params.stop)) + 1)  # a stop string may span tokens
                hits = [choice.text.find(s, start) for s in params.stop if s in choice.text[start:]]
                if hits:
                    choice.text, finish = choice.text[: min(hits)], "stop"
            if finish is None and choice.generated >= params.max_tokens:
                finish = "length"
            if finish is None and choice.matcher is not None and choice.matcher.done:
                finish = "stop"
        end = len(choice.text) if finish else len(choice.text) - held_back_length(choice.text, params.stop)
        end = max(end, choice.released)
        event = TokenEvent(choice.index, token, choice.text[choice.released : end], logprob, top)
        choice.released = end
        if finish is not None:
            if finish == "error":
                event.error = f"the grammar refused token {token}: {choice.matcher.error}"
            event.finish_reason = finish
            self._release(slot)
            self.finished += 1
        self._deliver(choice.request, event)

    def _new_text(self, choice: _Choice) -> str:
        """Text added by the last token, withheld while it ends inside a UTF-8 sequence."""
        toks = choice.tokens
        prefix = self.tokenizer.decode(toks[choice.prefix_offset : choice.read_offset], skip_special_tokens=False)
        full = self.tokenizer.decode(toks[choice.prefix_offset :], skip_special_tokens=False)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            choice.prefix_offset, choice.read_offset = choice.read_offset, len(toks)
            return full[len(prefix) :]
        return ""

    def _deliver(self, request: Request, event: TokenEvent):
        if event.finish_reason is not None:
            request.unfinished -= 1
        try:
            request.sink(event)
        except Exception:  # noqa: BLE001  (a consumer that went away must not stop the engine)
            log.exception("a request's sink failed; cancelling it")
            request.cancelled = True

    def _finish_request(self, request: Request, reason: str, error: str | None = None):
        for index in range(request.n):
            self._deliver(request, TokenEvent(index, None, "", finish_reason=reason, error=error))

    def _fail_all(self, error: str, reason: str = "error"):
        for slot, choice in enumerate(self._slots):
            if choice is not None:
                self._release(slot)
                self._deliver(choice.request, TokenEvent(choice.index, None, "", finish_reason=reason, error=error))


def default_eos_ids(cfg: ModelConfig, tokenizer, stop_strings: Sequence[str]) -> list[int]:
    """End-of-turn ids: the chat format's stop strings that are single tokens, plus the config's EOS."""
    ids = [tokenizer.token_to_id(s) for s in stop_strings]
    ids = [i for i in ids if i is not None]
    cfg_eos = cfg.eos_token_id
    for e in cfg_eos if isinstance(cfg_eos, list | tuple) else [] if cfg_eos is None else [cfg_eos]:
        if e not in ids:
            ids.append(int(e))
    return ids


SinkFn = Callable[[TokenEvent], None]
