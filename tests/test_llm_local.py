"""LocalJaxBackend on the tiny model: greedy output against a plain full-forward greedy loop, concurrent calls
sharing the engine's decode batch (whatever their sampling settings), and one Lingo-BP run with our own model
as the policy (judges scripted over HTTP)."""

import asyncio
import json
import shutil

import jax
import jax.numpy as jnp
import pytest

from oyster_jax import convert, models
from oyster_jax.core import chat
from oyster_jax.csa import lingo_bp
from oyster_jax.csa.scripted import ScriptedLingo
from oyster_jax.data import SEED_DIR
from oyster_jax.infer.engine import SamplingParams
from oyster_jax.llm import LocalJaxBackend, backend_from_spec
from oyster_jax.llm.testing import FakeOpenAIServer

NEW = 6


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    cfg = models.model_config_from_file("tiny", num_layers=1)
    params = models.init_params(cfg, jax.random.key(0))
    path = tmp_path_factory.mktemp("local") / "ckpt"
    convert.save_model(path, cfg, params)
    shutil.copy(SEED_DIR / "tokenizer.json", path / "tokenizer.json")  # no TensorFlow import
    return path, cfg, params


REF_LENGTH = 64  # one padded length for every reference call: a single compile for the whole module
_FORWARD = {}


def _jitted_forward(cfg, params):
    if id(params) not in _FORWARD:
        _FORWARD[id(params)] = jax.jit(lambda toks: models.forward(cfg, params, toks))
    return _FORWARD[id(params)]


def _reference_greedy(cfg, params, prompt, n, eos_ids):
    """Greedy decoding by re-running the full forward pass each step (no KV cache). The sequence is
    right-padded to one fixed length (causal attention: padding after position t cannot change logits at t),
    so there is a single compile."""
    length = REF_LENGTH
    assert len(prompt) + n <= length
    forward = _jitted_forward(cfg, params)
    tokens = list(prompt)
    out = []
    for _ in range(n):
        padded = jnp.asarray([tokens + [0] * (length - len(tokens))], jnp.int32)
        nxt = int(jnp.argmax(forward(padded)[0, len(tokens) - 1]))
        out.append(nxt)
        tokens.append(nxt)
        if nxt in eos_ids:
            break
    return out


def test_greedy_matches_full_forward_reference(ckpt):
    path, cfg, params = ckpt
    backend = backend_from_spec(f"local:{path}", max_new_tokens=NEW)
    assert isinstance(backend, LocalJaxBackend)
    try:
        messages = [{"role": "user", "content": "How do I sleep better? 我睡不着。"}]
        prompt = backend.prompt_tokens(messages)
        text = chat.render_generation_prompt(messages, "chatml")
        assert prompt[:1] == [backend.tokenizer.token_to_id("<|im_start|>")] and text.endswith("assistant\n")
        want = _reference_greedy(cfg, params, prompt, NEW, backend._eos_ids)
        (got,) = backend.engine().generate(prompt, SamplingParams(max_tokens=NEW))
        assert got.tokens == [t for t in want if t not in backend._eos_ids]  # the end-of-turn token is not text
        assert got.finish_reason == ("stop" if want[-1] in backend._eos_ids else "length")
        expected = tuple(s.strip() for s in chat.split_thinking(backend.decode(want), "chatml"))
        assert backend.chat(messages, temperature=0.0) == expected
    finally:
        backend.close()


def test_concurrent_calls_share_the_decode_batch_and_match_reference(ckpt):
    path, cfg, params = ckpt
    backend = LocalJaxBackend(str(path), max_new_tokens=NEW)
    # Prompts of different lengths (each in its own cache slot), one of them in Chinese.
    prompts = [
        [{"role": "user", "content": c}] for c in ("hi", "how should I cook rice so it is not sticky?", "怎么煮米饭")
    ]
    try:

        async def together():
            return await asyncio.gather(*(backend.achat(m) for m in prompts))

        got = asyncio.run(together())
        # all three were decoded in the same steps (the first is still prefilling when the others arrive)
        assert backend.engine().max_occupancy == 3 and backend.requests == 3
        for m, out in zip(prompts, got):
            ref = _reference_greedy(cfg, params, backend.prompt_tokens(m), NEW, backend._eos_ids)
            assert out == tuple(x.strip() for x in chat.split_thinking(backend.decode(ref), "chatml"))
        with pytest.raises(ValueError, match="unknown sampling"):
            backend.chat(prompts[0], temprature=0.3)
    finally:
        backend.close()


def test_calls_with_different_settings_share_a_batch_and_keep_their_own_results(ckpt):
    """One generation path: a greedy call, a seeded sampled call and a stop-string call decoded together
    give what each gives alone."""
    path, _, _ = ckpt
    backend = LocalJaxBackend(str(path), max_new_tokens=12)
    messages = [{"role": "user", "content": "Tell me about rice."}]
    calls = [dict(), dict(temperature=1.0, seed=3, top_k=50), dict(temperature=0.8, top_p=0.9, seed=11)]
    try:
        alone = [backend.chat(messages, **kw) for kw in calls]
        before = backend.engine().max_occupancy

        async def together():
            return await asyncio.gather(*(backend.achat(messages, **kw) for kw in calls))

        assert asyncio.run(together()) == alone
        assert before == 1 and backend.engine().max_occupancy == 3
        assert alone[1] != alone[0]  # the sampled call really sampled
    finally:
        backend.close()


def test_missing_tokenizer_is_a_clear_error(ckpt, tmp_path):
    _, cfg, params = ckpt
    with pytest.raises(FileNotFoundError, match="tokenizer.json not found"):
        LocalJaxBackend(str(tmp_path), cfg=cfg, params=params)


def test_lingo_bp_with_local_policy(ckpt, tmp_path):
    path, _, _ = ckpt
    inp = tmp_path / "q.jsonl"
    inp.write_text(json.dumps({"id": "l1", "query": "How do I do the thing?"}) + "\n")
    out = tmp_path / "out"
    with FakeOpenAIServer(ScriptedLingo()) as server:
        judge = f"openai:{server.base_url}#scripted"
        rc = lingo_bp.main(
            ["--input", str(inp), "--policy", f"local:{path}", "--judge", judge, "--out", str(out), "--rounds", "1",
             "--policy_sampling", "max_tokens=12", "--no_progress", "--backoff", "0.01"]
        )  # fmt: skip
        tasks = [r["messages"][0]["content"].splitlines()[0] for r in server.requests]
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] == 0 and summary["total"] == 1
    (traj,) = [json.loads(x) for x in (out / "trajectories.jsonl").read_text().splitlines()]
    assert len(traj["iterates"]) == 2 and all(it["response"] for it in traj["iterates"])
    # The policy ran locally: no request to the HTTP server was a policy pass or a recombine.
    assert not any(t.startswith("Answer the user's message below") for t in tasks)
    assert not any(t == "How do I do the thing?" for t in tasks)
