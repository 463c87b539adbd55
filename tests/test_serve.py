"""The OpenAI-compatible server, driven with the official `openai` client (and raw HTTP for bad requests):
chat template, greedy output against an independent full-forward reference, true streaming, n, seeds,
logprobs against the reference distribution, penalties and logit_bias, JSON-schema constrained decoding,
completions, errors, auth, a concurrent burst and the CLI."""

import concurrent.futures
import json
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import jax
import jax.numpy as jnp
import jsonschema
import numpy as np
import openai
import pytest
import uvicorn
from eval_fakes import TINY_CHAT_CFG, random_params
from tolerances import HF_LOGITS_F32

from oyster_jax import convert, models
from oyster_jax.core import chat
from oyster_jax.data.vocab import default_tokenizer_path
from oyster_jax.llm.local import LocalJaxBackend
from oyster_jax.serve import IdleTimeoutProtocol, Server, create_app
from oyster_jax.serve.app import _ThinkingSplitter

TOKENIZER = default_tokenizer_path()
CFG = TINY_CHAT_CFG.replace(max_position_embeddings=512)
PARAMS = random_params(CFG)
MAX_SEQ = 256
HELLO = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of Japan?"}]
EOS = 2  # <|im_end|> in the seed tokenizer


class LiveServer:
    """uvicorn serving `create_app(server)` on a free port in a thread."""

    def __init__(self, server: Server):
        self.server = server
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.httpd = uvicorn.Server(
            uvicorn.Config(
                create_app(server), log_level="warning", log_config=None, timeout_keep_alive=2, http=IdleTimeoutProtocol
            )
        )
        self.thread = threading.Thread(target=self.httpd.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        while not self.httpd.started:
            time.sleep(0.02)

    def client(self, **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=kw.pop("api_key", "unused"), max_retries=0, **kw)

    def stop(self):
        self.httpd.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def backend():
    b = LocalJaxBackend(tokenizer=TOKENIZER, cfg=CFG, params=PARAMS)
    yield b
    b.close()


@pytest.fixture(scope="module")
def live(backend):
    engine = backend.engine(max_batch=4, max_seq_len=MAX_SEQ, max_queue=8)
    live = LiveServer(Server(engine, "tiny-chat", max_tokens_default=8))
    yield live
    live.stop()


@pytest.fixture(scope="module")
def client(live):
    return live.client()


def _raw(url, body=None, method=None, raw=None, headers=None):
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:
            return resp.status, resp.read().decode(), dict(resp.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), dict(e.headers)


_FORWARD = {}


def _log_probs(tokens: list[int]) -> np.ndarray:
    """Reference: log-softmax of the full forward pass (no KV cache) at the last position; one compile
    (right-padded to MAX_SEQ: causal attention makes the padding after the last token irrelevant)."""
    if "f" not in _FORWARD:
        _FORWARD["f"] = jax.jit(lambda t: jax.nn.log_softmax(models.forward(CFG, PARAMS, t), axis=-1))
    padded = jnp.asarray([tokens + [0] * (MAX_SEQ - len(tokens))], jnp.int32)
    return np.array(_FORWARD["f"](padded)[0, len(tokens) - 1])


def _reference_greedy(prompt, n, presence=0.0, frequency=0.0, bias=None):
    """Greedy decoding with OpenAI's penalties over the generated tokens, by re-running the full forward."""
    tokens, out = list(prompt), []
    for _ in range(n):
        logits = _log_probs(tokens).astype(np.float64)
        counts = np.bincount(out, minlength=CFG.vocab_size)
        logits = logits - presence * (counts > 0) - frequency * counts
        for t, b in (bias or {}).items():
            logits[t] += b
        nxt = int(np.argmax(logits))
        out.append(nxt)
        tokens.append(nxt)
        if nxt == EOS:
            break
    return out


def _prompt_ids(backend, messages):
    return backend.tokenizer.encode(chat.render_generation_prompt(messages), add_special_tokens=False).ids


# ------------------------------------------------------------------------------------------------
def test_models_and_health(live, client):
    assert [m.id for m in client.models.list().data] == ["tiny-chat"]
    assert client.models.retrieve("tiny-chat").id == "tiny-chat"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("other")
    status, body, _ = _raw(live.url + "/health")
    assert status == 200 and json.loads(body)["status"] == "ok"


def test_engine_places_host_params_on_the_device_once(live):
    # PARAMS are numpy arrays: passed as they are to the jitted step, all of them would be copied to the
    # device again for every generated token (7x slower steps on SmolLM2).
    assert all(isinstance(a, np.ndarray) for a in jax.tree.leaves(PARAMS))
    placed = jax.tree.leaves(live.server.engine.params)
    assert placed and all(isinstance(a, jax.Array) for a in placed)


def test_warmup_compiles_every_program_the_requests_then_meet(backend):
    from oyster_jax.infer import engine as engine_lib

    # A config no other test uses, so its programs are compiled here and nowhere else.
    cfg = CFG.replace(max_position_embeddings=384)
    programs = (engine_lib._prefill, engine_lib._insert, engine_lib._step)
    engine = engine_lib.Engine(cfg, PARAMS, backend.tokenizer, eos_ids=[EOS], max_batch=4, max_seq_len=128)
    try:
        prompt = _prompt_ids(backend, HELLO)
        before = [f._cache_size() for f in programs]
        # prefill + copy for 1, 2, 4 rows; steps for rows 1, 2, 4 x spans 64 (and 128 if the prompt is long)
        runs = engine.warmup(len(prompt), 8)
        warm = [f._cache_size() for f in programs]
        assert runs >= 6 and all(w > b for w, b in zip(warm, before)), (before, warm)
        greedy = engine_lib.SamplingParams(max_tokens=8, logit_bias=((EOS, -100.0),))
        alone = engine.generate(prompt, greedy)[0].tokens
        for k in (2, 3, 4):  # requests joining together and apart: new group sizes and row buckets
            with concurrent.futures.ThreadPoolExecutor(k) as pool:
                outs = list(pool.map(lambda _: engine.generate(prompt, greedy)[0].tokens, range(k)))
            assert outs == [alone] * k
        assert [f._cache_size() for f in programs] == warm  # nothing compiled while serving
        running = engine.submit(prompt, engine_lib.SamplingParams(max_tokens=100, logit_bias=((EOS, -100.0),)))
        with pytest.raises(RuntimeError, match="idle engine"):
            engine.warmup(len(prompt), 8)
        running.cancel()
    finally:
        engine.close()


def test_chat_is_greedy_applies_the_template_and_matches_the_reference(backend, client):
    out = client.chat.completions.create(model="tiny-chat", messages=HELLO, max_tokens=6)
    prompt = _prompt_ids(backend, HELLO)
    assert out.usage.prompt_tokens == len(prompt)
    assert chat.render_generation_prompt(HELLO).endswith("<|im_start|>assistant\n")
    ref = _reference_greedy(prompt, 6)
    assert out.usage.completion_tokens == len(ref)
    text = backend.tokenizer.decode([t for t in ref if t != EOS], skip_special_tokens=False)
    reasoning, content = chat.split_thinking(text)
    msg = out.choices[0].message
    assert (msg.content, msg.model_extra.get("reasoning_content")) == (content, reasoning)
    assert out.choices[0].finish_reason == ("stop" if ref[-1] == EOS else "length")
    # the same as the backend's own calls (the judges' and evaluations' path)
    assert backend.chat(HELLO, max_tokens=6) == (reasoning, content)


def test_thinking_is_split_in_streams_as_in_whole_replies():
    texts = [
        "<think>\nThe user wants a city.\n</think>\n\nTokyo.",
        "<think>\nstill thinking about it",
        "Tokyo. No thinking.",
        "<think>\n\n</think>\n\nAn empty thought, then an answer.",
    ]
    for text in texts:
        for cut in (1, 3, 7):
            splitter = _ThinkingSplitter("chatml")
            pieces = [text[i : i + cut] for i in range(0, len(text), cut)]
            deltas = [splitter.feed(p, final=i == len(pieces) - 1) for i, p in enumerate(pieces)]
            streamed = ("".join(d[0] for d in deltas), "".join(d[1] for d in deltas))
            assert streamed == chat.split_thinking(text), (text, cut)


def test_streaming_is_incremental(live, client):
    """Chunks are sent as tokens are made: more than one content chunk, the first arriving while the engine
    still decodes this request (its step counter then is below the final one), then usage and [DONE]."""
    engine = live.server.engine
    start_steps = engine.steps
    arrivals, steps_seen, texts, usage = [], [], [], None
    stream = client.chat.completions.create(
        model="tiny-chat",
        messages=HELLO,
        max_tokens=48,
        logit_bias={str(EOS): -100},
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        arrivals.append(time.perf_counter())
        steps_seen.append(engine.steps)
        if chunk.usage is not None:
            usage = chunk.usage
        if chunk.choices and chunk.choices[0].delta.content:
            texts.append(chunk.choices[0].delta.content)
    assert len(texts) > 1
    assert arrivals[-1] - arrivals[0] > 0
    assert steps_seen[0] < steps_seen[-1], "the first chunk came after the whole reply was decoded"
    assert steps_seen[-1] - start_steps >= 48
    assert usage is not None and usage.completion_tokens == 48
    whole = client.chat.completions.create(
        model="tiny-chat", messages=HELLO, max_tokens=48, logit_bias={str(EOS): -100}
    )
    assert "".join(texts) == whole.choices[0].message.content


def test_n_and_seed_give_the_same_tokens_alone_or_batched(client):
    kw = dict(model="tiny-chat", messages=HELLO, max_tokens=12, temperature=1.0, logit_bias={str(EOS): -100})
    two = client.chat.completions.create(n=2, seed=7, **kw)
    assert [c.index for c in two.choices] == [0, 1]
    a, b = (c.message.content for c in two.choices)
    assert a != b  # two different samples
    alone = client.chat.completions.create(n=1, seed=7, **kw).choices[0].message.content
    assert alone == a
    # beside three other concurrent requests (different seeds), seed 7 still gives the same text
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(client.chat.completions.create, n=1, seed=s, **kw) for s in (7, 8, 9, 10)]
        batched = [f.result().choices[0].message.content for f in futures]
    assert batched[0] == a
    # without a seed, identical requests get different samples
    unseeded = {client.chat.completions.create(**kw).choices[0].message.content for _ in range(3)}
    assert len(unseeded) > 1


def test_logprobs_match_the_reference_distribution(backend, client):
    out = client.chat.completions.create(
        model="tiny-chat", messages=HELLO, max_tokens=5, logprobs=True, top_logprobs=3, logit_bias={str(EOS): -100}
    )
    content = out.choices[0].logprobs.content
    assert len(content) == 5
    prompt = _prompt_ids(backend, HELLO)
    tokens = list(prompt)
    for entry in content:
        ref = _log_probs(tokens).copy()
        ref[EOS] = -np.inf  # the bias of -100 removes it from the distribution the server reports
        ref = ref - np.logaddexp.reduce(ref[np.isfinite(ref)])
        best = np.argsort(-ref)[:3]
        tid = int(best[0])  # greedy
        assert entry.token == backend.tokenizer.decode([tid], skip_special_tokens=False)
        assert bytes(entry.bytes) == entry.token.encode()
        assert abs(entry.logprob - ref[tid]) < HF_LOGITS_F32 * 10
        assert [t.token for t in entry.top_logprobs] == [
            backend.tokenizer.decode([int(i)], skip_special_tokens=False) for i in best
        ]
        np.testing.assert_allclose([t.logprob for t in entry.top_logprobs], ref[best], atol=HF_LOGITS_F32 * 10)
        tokens.append(tid)


def test_penalties_and_logit_bias_against_the_reference(backend, client):
    prompt = _prompt_ids(backend, HELLO)
    for kw in (dict(presence_penalty=2.0), dict(frequency_penalty=1.5), dict(presence_penalty=-1.0)):
        ref = _reference_greedy(
            prompt,
            10,
            presence=kw.get("presence_penalty", 0.0),
            frequency=kw.get("frequency_penalty", 0.0),
            bias={EOS: -100},
        )
        out = client.chat.completions.create(
            model="tiny-chat", messages=HELLO, max_tokens=10, logprobs=True, logit_bias={str(EOS): -100}, **kw
        )
        got = [e.token for e in out.choices[0].logprobs.content]
        assert got == [backend.tokenizer.decode([t], skip_special_tokens=False) for t in ref], kw
    # a +100 bias makes one token certain
    out = client.chat.completions.create(model="tiny-chat", messages=HELLO, max_tokens=4, logit_bias={"1000": 100})
    assert out.usage.completion_tokens == 4
    assert out.choices[0].message.content == backend.tokenizer.decode([1000] * 4).strip()  # split_thinking strips


def test_stop_strings_cut_the_reply(backend, client):
    full = (
        client.chat.completions.create(model="tiny-chat", messages=HELLO, max_tokens=16, logit_bias={str(EOS): -100})
        .choices[0]
        .message.content
    )
    stop = full[5:8]
    out = client.chat.completions.create(
        model="tiny-chat", messages=HELLO, max_tokens=16, stop=[stop], logit_bias={str(EOS): -100}
    )
    assert out.choices[0].finish_reason == "stop"
    assert out.choices[0].message.content == full[: full.find(stop)].strip()


JUDGE_SCHEMA = {
    "type": "object",
    "properties": {
        "verdict": {"type": "string", "enum": ["safe", "unsafe"]},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
        "reason": {"type": "string", "maxLength": 40},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
    },
    "required": ["verdict", "score", "reason", "tags"],
    "additionalProperties": False,
}


def test_json_schema_output_validates(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "judge", "schema": JUDGE_SCHEMA, "strict": True}}
    for seed in range(3):  # random weights, sampled: the grammar alone makes it valid
        out = client.chat.completions.create(
            model="tiny-chat", messages=HELLO, max_tokens=200, temperature=1.0, seed=seed, response_format=fmt
        )
        choice = out.choices[0]
        assert choice.finish_reason == "stop", choice
        jsonschema.validate(json.loads(choice.message.content), JUDGE_SCHEMA)
    out = client.chat.completions.create(
        model="tiny-chat",
        messages=HELLO,
        max_tokens=200,
        temperature=1.0,
        seed=0,
        response_format={"type": "json_object"},
        logit_bias={"125": -100},
    )
    if out.choices[0].finish_reason == "stop":  # an unbounded object may run out of tokens; it must parse if not
        assert isinstance(json.loads(out.choices[0].message.content), dict)
    else:
        assert out.choices[0].message.content.startswith("{")
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="tiny-chat",
            messages=HELLO,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "no-such-type"}}},
        )
    assert "response_format" in str(e.value)


def test_completions_endpoint_with_logprobs(backend, client):
    prompt = "The capital of Japan is"
    ids = backend.tokenizer.encode(prompt, add_special_tokens=False).ids
    out = client.completions.create(
        model="tiny-chat", prompt=prompt, max_tokens=4, logprobs=2, logit_bias={str(EOS): -100}
    )
    ref = _reference_greedy(ids, 4, bias={EOS: -100})
    assert out.choices[0].text == backend.tokenizer.decode(ref, skip_special_tokens=False)
    lp = out.choices[0].logprobs
    assert lp.tokens == [backend.tokenizer.decode([t], skip_special_tokens=False) for t in ref]
    assert len(lp.top_logprobs) == 4 and all(len(d) == 2 for d in lp.top_logprobs)
    assert lp.text_offset[0] == 0
    two = client.completions.create(model="tiny-chat", prompt=[ids, ids], max_tokens=4, logit_bias={str(EOS): -100})
    assert [c.index for c in two.choices] == [0, 1]
    assert two.choices[0].text == two.choices[1].text == out.choices[0].text
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model="tiny-chat", prompt=prompt, max_tokens=4, stream=True, logit_bias={str(EOS): -100}
        )
        if c.choices
    )
    assert streamed == out.choices[0].text
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny-chat", prompt=prompt, echo=True)


@pytest.mark.parametrize(
    "body,status,param",
    [
        ({"messages": []}, 400, "messages"),
        ({}, 400, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, 400, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 3}]}, 400, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "messages[0].content[0].type"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, 400, "messages[0]"),
        ({"messages": HELLO, "temperature": -1}, 400, "temperature"),
        ({"messages": HELLO, "temperature": "hot"}, 400, "temperature"),
        ({"messages": HELLO, "top_p": 0}, 400, "top_p"),
        ({"messages": HELLO, "max_tokens": 0}, 400, "max_tokens"),
        ({"messages": HELLO, "max_tokens": 2.5}, 400, "max_tokens"),
        ({"messages": HELLO, "n": 5}, 400, "n"),  # more than the server's 4 slots
        ({"messages": HELLO, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"messages": HELLO, "stream": "yes"}, 400, "stream"),
        ({"messages": HELLO, "tools": []}, 400, "tools"),
        ({"messages": HELLO, "max_completion_tokens": 0}, 400, "max_completion_tokens"),
        ({"messages": HELLO, "logprobs": False, "top_logprobs": 2}, 400, "top_logprobs"),
        ({"messages": HELLO, "logit_bias": {"x": 1}}, 400, "logit_bias"),
        ({"messages": HELLO, "logit_bias": {"999999": 1}}, 400, "logit_bias"),
        ({"messages": HELLO, "response_format": {"type": "xml"}}, 400, "response_format.type"),
        ({"messages": HELLO, "model": "gpt-4"}, 404, "model"),
        ([1, 2], 400, None),
    ],
)
def test_bad_requests_get_4xx_naming_the_field(live, body, status, param):
    code, text, _ = _raw(live.url + "/v1/chat/completions", body)
    assert code == status, text
    err = json.loads(text)["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]


@pytest.mark.parametrize(
    "path,field,value",
    [
        ("/v1/chat/completions", "tools", []),
        ("/v1/chat/completions", "tool_choice", "auto"),
        ("/v1/chat/completions", "parallel_tool_calls", True),
        ("/v1/chat/completions", "reasoning_effort", "low"),
        ("/v1/chat/completions", "modalities", ["audio"]),
        ("/v1/chat/completions", "prediction", {"type": "content", "content": "x"}),
        ("/v1/completions", "suffix", "and then"),
        ("/v1/completions", "echo", True),
        ("/v1/completions", "function_call", "auto"),
    ],
)
def test_unsupported_fields_are_a_400_naming_the_field(live, path, field, value):
    """Nothing a client asks for is silently ignored: a field this server does not implement is refused."""
    body = {"messages": HELLO} if path.endswith("chat/completions") else {"prompt": "hello"}
    code, text, _ = _raw(live.url + path, body | {field: value})
    assert code == 400, text
    err = json.loads(text)["error"]
    assert err["param"] == field and field in err["message"], err


def test_max_completion_tokens_limits_the_reply(client):
    out = client.chat.completions.create(
        model="tiny-chat", messages=HELLO, max_completion_tokens=3, max_tokens=9, logit_bias={str(EOS): -100}
    )
    assert out.usage.completion_tokens == 3 and out.choices[0].finish_reason == "length"


def test_transport_errors_are_json(live):
    url = live.url + "/v1/chat/completions"
    cases = [
        (dict(raw=b"{not json"), 400),
        (dict(raw="\u00e9".encode("latin-1")), 400),
        (dict(raw=b'{"messages": [{"role": "user", "content": "\\ud800"}]}'), 400),  # a lone surrogate
        (dict(raw=b"[" * 200_000 + b"]" * 200_000), 400),  # deep nesting
        (dict(raw=b'{"messages": [{"role": "user", "content": "x"}], "metadata": ' + b"[" * 200_000 + b"}"), 400),
        (dict(method="PUT", raw=b"{}"), 405),
        (dict(method="DELETE"), 405),
        (dict(method="GET"), 405),
        (dict(raw=b"x" * 10, headers={"Content-Length": str(9 * 2**20)}), 413),
    ]
    for kw, status in cases:
        code, text, _ = _raw(url, **kw)
        assert code == status, (kw.get("method"), text)
        assert json.loads(text)["error"]["message"]
    assert _raw(live.url + "/v1/nothing")[0] == 404
    assert _raw(live.url + "/v1/models", {"x": 1})[0] == 405
    too_long = [{"role": "user", "content": "word " * 400}]  # beyond the server's 256 positions
    code, text, _ = _raw(url, {"messages": too_long})
    assert code == 400 and json.loads(text)["error"]["code"] == "context_length_exceeded"


def test_idle_connections_are_closed_and_do_not_block(live, client):
    """64 sockets that never send a request: the server still answers, and closes each after its idle timeout."""
    host, port = live.url.removeprefix("http://").split(":")
    idle = [socket.create_connection((host, int(port)), timeout=120) for _ in range(64)]
    try:
        assert client.chat.completions.create(model="tiny-chat", messages=HELLO, max_tokens=2).choices
        for sock in idle:
            assert sock.recv(1) == b""  # closed by the server (the 120 s socket timeout would raise instead)
    finally:
        for sock in idle:
            sock.close()


def test_bearer_key(backend):
    live = LiveServer(Server(backend.engine(), "keyed", api_key="sekrit-123"))
    try:
        with pytest.raises(openai.AuthenticationError):
            live.client(api_key="wrong").models.list()
        assert live.client(api_key="sekrit-123").models.list().data[0].id == "keyed"
        assert _raw(live.url + "/v1/chat/completions", {"messages": HELLO})[0] == 401
    finally:
        live.stop()


def test_burst_of_64_gets_only_200_or_429(live):
    """More concurrent requests than slots + queue: each is answered 200 or 429 (with Retry-After), none is
    reset or times out."""
    client = live.client(timeout=300)

    def one(i):
        try:
            out = client.chat.completions.with_raw_response.create(
                model="tiny-chat", messages=HELLO, max_tokens=4, seed=i, temperature=0.5
            )
            return out.status_code, None
        except openai.RateLimitError as e:
            return 429, e.response.headers.get("retry-after")

    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        results = list(pool.map(one, range(64)))
    codes = [c for c, _ in results]
    assert set(codes) <= {200, 429}, codes
    # The engine moves waiting requests into free slots only between decode steps, so a burst that lands
    # during one step (or a prefill compile) can fill the queue before any slot takes a request: what is
    # guaranteed is the queue's worth, not slots + queue.
    assert codes.count(200) >= live.server.engine.max_queue
    assert all(ra == "1" for c, ra in results if c == 429)
    assert live.server.engine.running == 0 and live.server.engine.waiting == 0


def test_cli_serves_with_a_bearer_key(tmp_path):
    ckpt = convert.save_model(tmp_path / "tiny-chat", CFG, PARAMS)
    env = dict(os.environ, SERVE_TEST_KEY="k-42")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "oyster_jax.serve",
            "--ckpt",
            str(ckpt),
            "--tokenizer",
            TOKENIZER,
            "--port",
            "0",
            "--api_key_env",
            "SERVE_TEST_KEY",
            "--max_seq_len",
            "128",
            "--warmup_prompt_tokens",
            "24",
            "--max_tokens",
            "8",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=pathlib.Path(__file__).resolve().parents[1],
    )
    lines = []
    try:
        url = None
        for line in proc.stdout:
            lines.append(line)
            if " at http://" in line:
                url = line.split(" at ", 1)[1].split()[0]
                break
        assert url and url.startswith("http://127.0.0.1:"), lines
        assert any(line.startswith("[serve] warm-up: ") for line in lines), lines  # before it listens
        c = openai.OpenAI(base_url=url, api_key="k-42", max_retries=0)
        assert c.models.list().data[0].id == "tiny-chat"
        out = c.chat.completions.create(model="tiny-chat", messages=HELLO, max_tokens=3)
        assert out.usage.completion_tokens >= 1
    finally:
        proc.terminate()
        rest = proc.communicate(timeout=60)[0]
    assert "k-42" not in "".join(lines) + rest  # the key is never printed
    code = subprocess.run(
        [sys.executable, "-m", "oyster_jax.serve", "--ckpt", str(ckpt), "--api_key_env", "NO_SUCH_VAR_XYZ"],
        capture_output=True,
        text=True,
        env=env,
    ).returncode
    assert code == 2
