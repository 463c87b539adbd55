"""Our forward vs transformers on tiny random models, through the public API (from_hf / forward / to_hf)."""

import numpy as np
import pytest
from hf_models import TINY_HF, hf_logits, make_hf_model, save_hf_model
from tolerances import HF_LOGITS_F32

from oyster_jax import convert, models

LENGTHS = [13, 8, 1]  # rows of different lengths in one batch (right padding)


def _batch(vocab, seed=0):
    rng = np.random.default_rng(seed)
    T = max(LENGTHS)
    tokens = rng.integers(0, vocab, (len(LENGTHS), T))
    mask = (np.arange(T)[None] < np.array(LENGTHS)[:, None]).astype(np.int32)
    return tokens, mask


def _max_err(a, b):
    return max(float(np.abs(a[i, :n] - b[i, :n]).max()) for i, n in enumerate(LENGTHS))


@pytest.fixture(scope="module", params=sorted(TINY_HF))
def hf_case(request, tmp_path_factory):
    kind = request.param
    model = make_hf_model(kind)
    path = save_hf_model(model, tmp_path_factory.mktemp(kind) / "hf")
    return kind, model, path


def test_from_hf_matches_transformers(hf_case):
    kind, model, path = hf_case
    cfg, params = convert.from_hf(path)
    assert cfg.arch == TINY_HF[kind][0].lower()
    if "llama3_gqa" in kind:
        assert cfg.rope_scaling_dict["rope_type"] == "llama3"
    tokens, mask = _batch(cfg.vocab_size)
    ref = hf_logits(model, tokens, mask)
    ours = np.asarray(models.forward(cfg, params, tokens, segment_ids=mask))
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    err = _max_err(ours, ref)
    print(f"{kind}: max |dlogits| = {err:.3e}")
    assert err <= HF_LOGITS_F32
    assert np.abs(ref).max() > 1.0  # the comparison is not trivially small


def test_to_hf_loads_in_transformers_and_round_trips(hf_case, tmp_path):
    import transformers

    kind, model, path = hf_case
    cfg, params = convert.from_hf(path)
    # force several shards; a 101-id test vocabulary has no tokenizer to ship
    out = convert.to_hf(cfg, params, tmp_path / "export", max_shard_bytes=20_000, tokenizer=False)
    files = sorted(p.name for p in out.iterdir())
    assert "config.json" in files and "generation_config.json" in files
    assert "model.safetensors.index.json" in files
    shards = [f for f in files if f.endswith(".safetensors")]
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"

    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    tokens, mask = _batch(cfg.vocab_size, seed=1)
    err = _max_err(hf_logits(reloaded, tokens, mask), hf_logits(model, tokens, mask))
    assert err <= HF_LOGITS_F32

    cfg2, params2 = convert.from_hf(out)
    assert cfg2 == cfg
    flat1, flat2 = _flat(params), _flat(params2)
    assert flat1.keys() == flat2.keys()
    for k in flat1:
        assert flat1[k].dtype == flat2[k].dtype and np.array_equal(flat1[k], flat2[k]), k  # bit-identical


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out |= _flat(v, f"{prefix}{k}/")
        else:
            out[prefix + k] = np.asarray(v)
    return out


def test_packed_row_equals_separate_documents(hf_case):
    _, _, path = hf_case
    cfg, params = convert.from_hf(path)
    rng = np.random.default_rng(3)
    doc_a, doc_b = rng.integers(0, cfg.vocab_size, 7), rng.integers(0, cfg.vocab_size, 5)
    packed = np.concatenate([doc_a, doc_b, [0, 0]])[None]
    segment_ids = np.array([[1] * 7 + [2] * 5 + [0, 0]])
    positions = np.array([list(range(7)) + list(range(5)) + [0, 0]])
    out = np.asarray(models.forward(cfg, params, packed, positions=positions, segment_ids=segment_ids))
    a = np.asarray(models.forward(cfg, params, doc_a[None]))
    b = np.asarray(models.forward(cfg, params, doc_b[None]))
    np.testing.assert_allclose(out[0, :7], a[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(out[0, 7:12], b[0], atol=1e-5, rtol=0)
    # positions default to restarting per segment
    out_default = np.asarray(models.forward(cfg, params, packed, segment_ids=segment_ids))
    np.testing.assert_array_equal(out_default[0, :12], out[0, :12])


def test_scan_layers_and_bf16_agree(hf_case):
    _, model, path = hf_case
    cfg, params = convert.from_hf(path)
    cfg_s, params_s = convert.from_hf(path, scan_layers=True, remat_policy="full")
    tokens, mask = _batch(cfg.vocab_size)
    ref = np.asarray(models.forward(cfg, params, tokens, segment_ids=mask))
    scanned = np.asarray(models.forward(cfg_s, params_s, tokens, segment_ids=mask))
    assert _max_err(scanned, ref) <= HF_LOGITS_F32
    cfg_b = cfg.replace(dtype="bfloat16")
    low = np.asarray(models.forward(cfg_b, params, tokens, segment_ids=mask))
    assert low.dtype == np.float32
    assert _max_err(low, ref) < 0.25  # bf16 compute: same model, coarse agreement
