"""Generation: greedy parity with transformers, the cache path vs `models.forward`, EOS / stop strings,
sampling determinism and the sampling filters against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from eval_fakes import random_params
from hf_models import make_hf_model, save_hf_model
from tolerances import HF_LOGITS_F32

from oyster_jax import convert, infer, models
from oyster_jax.infer import generation as gen_mod

PROMPT_LENGTHS = (7, 3, 12)  # one batch, different lengths
NEW = 24


def _prompts(vocab, seed=0, lengths=PROMPT_LENGTHS):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, n).tolist() for n in lengths]


def _hf_greedy(model, prompt, new, **kw):
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=new, do_sample=False, pad_token_id=0, **kw)
    return out[0, len(prompt) :].tolist()


@pytest.fixture(scope="module", params=["qwen3_gqa_tied", "qwen2_gqa_untied", "llama3_gqa_untied"])
def hf_case(request, tmp_path_factory):
    model = make_hf_model(request.param)
    cfg, params = convert.from_hf(save_hf_model(model, tmp_path_factory.mktemp(request.param) / "hf"))
    return request.param, model, cfg, params


def test_greedy_matches_transformers(hf_case):
    kind, model, cfg, params = hf_case
    prompts = _prompts(cfg.vocab_size)
    ours = infer.generate(cfg, params, prompts, NEW)  # default EOS from config.json, as transformers
    for i, p in enumerate(prompts):
        ref = _hf_greedy(model, p, NEW)
        assert ours[i] == ref, f"{kind} row {i}: ours {ours[i]} vs transformers {ref}"
    assert len({t for row in ours for t in row}) > 3  # not a degenerate constant output


def test_eos_stops_row_like_transformers(hf_case):
    kind, model, cfg, params = hf_case
    prompts = _prompts(cfg.vocab_size, seed=1)
    free = infer.generate(cfg, params, prompts, NEW, eos_ids=[])
    eos = free[0][4]  # a token that row 0 really produces
    ours = infer.generate_full(cfg, params, prompts, NEW, eos_ids=[eos])
    for i, p in enumerate(prompts):
        ref = _hf_greedy(model, p, NEW, eos_token_id=eos)
        while len(ref) > 1 and ref[-1] == 0 and ref[-2] in (eos, 0) and eos != 0:  # strip HF's padding
            ref = ref[:-1]
        assert ours[i].tokens == ref, f"{kind} row {i}"
        assert ours[i].finish_reason == ("stop" if eos in ref else "length")
    assert ours[0].tokens[-1] == eos and len(ours[0].tokens) <= 5


def test_cache_path_matches_forward(tmp_path):
    """Prefill logits at every position, then three single-token decode steps, equal `models.forward`."""
    # q/k/v/o biases and q/k norms: every optional tensor of the layer
    cfg, params = convert.from_hf(save_hf_model(make_hf_model("qwen3_bias_untied"), tmp_path / "hf"))
    assert cfg.qkv_bias and cfg.o_bias and cfg.qk_norm
    rng = np.random.default_rng(2)
    B, P, extra = 2, 8, 3
    seq = rng.integers(0, cfg.vocab_size, (B, P + extra)).astype(np.int32)
    pad = 2  # row 1 is left-padded by 2
    kv_start = jnp.array([0, pad], jnp.int32)
    positions = np.maximum(np.arange(P + extra)[None] - np.array([[0], [pad]]), 0)
    step = jax.jit(infer.decode, static_argnums=0, static_argnames="last_only")
    cache = infer.init_cache(cfg, B, P + extra)
    logits, cache = step(cfg, params, seq[:, :P], positions[:, :P], cache, 0, kv_start, last_only=False)
    forward = jax.jit(models.forward, static_argnums=0)
    ref0 = np.asarray(forward(cfg, params, seq[:1]))
    ref1 = np.asarray(forward(cfg, params, seq[1:, pad:]))
    assert np.abs(np.asarray(logits[0]) - ref0[0, :P]).max() <= HF_LOGITS_F32
    assert np.abs(np.asarray(logits[1, pad:]) - ref1[0, : P - pad]).max() <= HF_LOGITS_F32
    for t in range(extra):
        step_logits, cache = step(
            cfg, params, seq[:, P + t : P + t + 1], positions[:, P + t : P + t + 1], cache, P + t, kv_start
        )
        assert np.abs(np.asarray(step_logits[0]) - ref0[0, P + t]).max() <= HF_LOGITS_F32
        assert np.abs(np.asarray(step_logits[1]) - ref1[0, P + t - pad]).max() <= HF_LOGITS_F32


def test_scan_layers_and_batch_mates_do_not_change_greedy(tmp_path):
    model = make_hf_model("qwen3_mha_untied")
    path = save_hf_model(model, tmp_path / "hf")
    cfg, params = convert.from_hf(path)
    cfg_s, params_s = convert.from_hf(path, scan_layers=True)
    prompts = _prompts(cfg.vocab_size, seed=3, lengths=(5, 17, 2))
    ref = infer.generate(cfg, params, prompts, 12, eos_ids=[])
    assert infer.generate(cfg_s, params_s, prompts, 12, eos_ids=[]) == ref
    assert [_hf_greedy(model, p, 12, eos_token_id=None) for p in prompts] == ref


# Tiny model shared by the tests below; 3 prompts <= 16 tokens and <= 16 new tokens keep them on one
# compiled program (batch bucket 4, prompt bucket 16, budget bucket 16).
@pytest.fixture(scope="module")
def tiny():
    cfg = models.ModelConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8
    )
    return cfg, random_params(cfg)


def test_sampling_is_deterministic_per_seed_and_row(tiny):
    cfg, params = tiny
    prompts = _prompts(cfg.vocab_size, seed=4, lengths=(4, 9, 6))
    kw = dict(max_new_tokens=16, temperature=1.0, eos_ids=[])
    a = infer.generate(cfg, params, prompts, seed=7, **kw)
    assert infer.generate(cfg, params, prompts, seed=7, **kw) == a
    assert infer.generate(cfg, params, prompts, seed=8, **kw) != a
    # a row's randomness depends only on (seed, row index, step): not on its batch mates or its padding
    others = [prompts[0]] + _prompts(cfg.vocab_size, seed=9, lengths=(15, 2))
    assert infer.generate(cfg, params, others, seed=7, **kw)[0] == a[0]
    greedy = infer.generate(cfg, params, prompts, 16, eos_ids=[])
    assert a != greedy
    assert infer.generate(cfg, params, prompts, seed=7, top_k=1, **kw) == greedy  # top-k 1 is greedy
    top = infer.generate(cfg, params, prompts, seed=7, top_k=5, top_p=0.9, **kw)
    assert top == infer.generate(cfg, params, prompts, seed=7, top_k=5, top_p=0.9, **kw)
    assert infer.generate(cfg, params, prompts, 16, eos_ids=[], batch_size=2) == greedy


def test_filter_logits_hand_computed():
    logits = jnp.log(jnp.array([[0.05, 0.4, 0.1, 0.3, 0.15]]))
    keep = lambda k, p: np.isfinite(np.asarray(infer.filter_logits(logits, jnp.int32(k), jnp.float32(p))))[0]  # noqa
    assert keep(2, 1.0).tolist() == [False, True, False, True, False]
    assert keep(0, 1.0).all()
    # top-p 0.65: 0.4 then 0.3 (mass before 0.3 is 0.4 < 0.65; before 0.15 it is 0.7) -> {1, 3}
    assert keep(0, 0.65).tolist() == [False, True, False, True, False]
    assert keep(0, 0.71).tolist() == [False, True, False, True, True]
    assert keep(0, 0.01).tolist() == [False, True, False, False, False]  # always keeps the best one
    # top-k then top-p on the renormalized top-3 (0.4, 0.3, 0.15)/0.85: 0.47, 0.35 -> {1, 3} at p = 0.8
    assert keep(3, 0.8).tolist() == [False, True, False, True, False]


def test_sampling_frequencies_follow_softmax():
    n = 20000
    probs = np.array([0.05, 0.4, 0.1, 0.3, 0.15])
    logits = jnp.broadcast_to(jnp.log(jnp.asarray(probs, jnp.float32)) * 2.0, (n, 5))  # T=2 undoes the x2
    keys = jax.random.split(jax.random.key(0), n)
    choose = jax.jit(infer.choose_tokens)

    def freqs(top_k=0, top_p=1.0):
        tok = choose(logits, keys, jnp.float32(2.0), jnp.int32(top_k), jnp.float32(top_p))
        return np.bincount(np.asarray(tok), minlength=5) / n

    tol = 0.015  # > 4 standard deviations of a frequency at n = 20000
    np.testing.assert_allclose(freqs(), probs, atol=tol)
    np.testing.assert_allclose(freqs(top_k=2), [0, 0.4 / 0.7, 0, 0.3 / 0.7, 0], atol=tol)
    np.testing.assert_allclose(freqs(top_p=0.71), [0, 0.4 / 0.85, 0, 0.3 / 0.85, 0.15 / 0.85], atol=tol)
    greedy = choose(logits, keys, jnp.float32(0.0), jnp.int32(0), jnp.float32(1.0))
    assert (np.asarray(greedy) == 1).all()


def test_stop_strings_cut_at_first_completion(tiny):
    cfg, params = tiny
    prompts = _prompts(cfg.vocab_size, seed=5, lengths=(4, 6, 3))
    free = infer.generate(cfg, params, prompts, 16, eos_ids=[])
    decode_fn = lambda ids: "".join(f"<{t}>" for t in ids)  # noqa: E731
    stop = f"<{free[0][2]}><{free[0][3]}>"  # completed by row 0's 4th token at the latest
    out = infer.generate_full(
        cfg, params, prompts, 16, eos_ids=[], stop_strings=[stop], decode_fn=decode_fn, stop_check_every=2
    )
    assert out[0].finish_reason == "stop" and out[0].stop_string == stop
    assert stop in decode_fn(out[0].tokens) and stop not in decode_fn(out[0].tokens[:-1])
    assert len(out[0].tokens) <= 4
    for row, full in zip(out, free):
        assert row.tokens == full[: len(row.tokens)]
        if stop not in decode_fn(full):
            assert row.tokens == full and row.finish_reason == "length"


def test_buckets_limit_recompiles(tiny):
    assert [infer.bucket_length(n) for n in (1, 16, 17, 1000, 1025, 3000)] == [16, 16, 32, 1024, 2048, 3072]
    assert [infer.bucket_batch(n, m) for n, m in ((1, 1), (3, 1), (5, 1), (3, 4), (9, 4))] == [1, 4, 8, 4, 16]
    cfg, params = tiny
    infer.generate(cfg, params, [[1, 2, 3], [4], [5]], 5)
    before = gen_mod._prefill._cache_size(), gen_mod._decode_until._cache_size()
    # other lengths, counts and budgets in the same buckets, other sampling settings: no new program
    infer.generate(cfg, params, [[4] * 9, [5] * 2, [6]], 7)
    infer.generate(cfg, params, [[4] * 16, [1], [2, 3]], 16, temperature=0.5, top_k=3, top_p=0.5, seed=3)
    assert (gen_mod._prefill._cache_size(), gen_mod._decode_until._cache_size()) == before


def test_bad_arguments_are_named(tiny):
    cfg, params = tiny
    with pytest.raises(infer.GenerationError, match=r"prompt_tokens\[1\] is empty"):
        infer.generate(cfg, params, [[1], []], 4)
    with pytest.raises(infer.GenerationError, match="outside"):
        infer.generate(cfg, params, [[1, 999]], 4)
    with pytest.raises(infer.GenerationError, match="max_new_tokens"):
        infer.generate(cfg, params, [[1]], 0)
    with pytest.raises(infer.GenerationError, match="top_p"):
        infer.generate(cfg, params, [[1]], 4, temperature=1.0, top_p=1.5)
    with pytest.raises(infer.GenerationError, match="decode_fn"):
        infer.generate(cfg, params, [[1]], 4, stop_strings=["x"])


def test_rows_are_grouped_by_length_under_a_token_budget():
    group = gen_mod._group_rows
    assert group([5, 9, 3], None, 65536) == [[0, 1, 2]]  # fits: one call, original order
    assert group([5, 9, 3, 7], 2, None) == [[2, 0], [3, 1]]  # sorted by length, 2 per call
    # 2 rows x bucket 1024 = 2048 tokens fit; a third long row would make it 4 x 1024
    assert group([1000, 10, 900, 20], None, 2048) == [[1, 3], [2, 0]]
    assert group([3000], None, 1024) == [[0]]  # a single row always runs


def test_params_that_do_not_match_the_model_are_refused(tiny):
    # Linen ignores tensors a module does not use: without the check these would run with weights dropped.
    cfg, params = tiny
    mlp = params["layers_0"]["mlp"]
    extra = {**params, "layers_0": {**params["layers_0"], "mlp": {**mlp, "gate_bias": 0.0}}}
    with pytest.raises(ValueError, match="unexpected layers_0/mlp/gate_bias"):
        infer.generate(cfg, extra, [[1]], 2)
    missing = {**params, "layers_0": {**params["layers_0"], "mlp": {k: v for k, v in mlp.items() if k != "up_proj"}}}
    with pytest.raises(ValueError, match="missing layers_0/mlp/up_proj"):
        infer.generate(cfg, missing, [[1]], 2)
    wrong = {**params, "norm": {"scale": params["norm"]["scale"][:-1]}}
    with pytest.raises(ValueError, match=r"norm/scale: shape \(\d+,\), expected"):
        infer.generate(cfg, wrong, [[1]], 2)
