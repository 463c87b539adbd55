"""Numpy iterators: loss masks, packing without leakage, exact resume, sharding, preference layout,
truncation policy, and equality of the SeqIO (tf.data graph) path with the numpy path."""

import collections
import json

import numpy as np
import pytest
import tokenizers

from oyster_jax.core import chat
from oyster_jax.data import features, pipeline, tasks
from oyster_jax.data.tf_setup import seqio
from oyster_jax.data.vocab import default_tokenizer_path, default_vocabulary

MULTI_TURN = {
    "id": "mt",
    "language": "en",
    "messages": [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hi 🦪, 你好?"},
        {"role": "assistant", "content": "Hello there."},
        {"role": "user", "content": "How do I sleep better?"},
        {"role": "assistant", "content": "Keep a regular bedtime."},
    ],
    "thinking": "Give one concrete tip.",
}


def _sft_file(tmp_path, records):
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


def _short_records(n):
    """Records of different lengths (so packing has to carry examples over to the next row)."""
    out = []
    for i in range(n):
        words = " ".join(["word"] * (1 + (i * 7) % 23))
        out.append(
            {
                "id": f"r{i}",
                "language": "en",
                "messages": [
                    {"role": "user", "content": f"Question {i}: {words}"},
                    {"role": "assistant", "content": f"Answer {i}."},
                ],
                "thinking": f"Think {i}.",
            }
        )
    return out


@pytest.mark.parametrize("fmt", ["chatml", "deepseek_r1"])
def test_loss_weights_are_exactly_the_assistant_turns(tmp_path, fmt):
    path = _sft_file(tmp_path, [MULTI_TURN])
    it = pipeline.make_sft_iterator(
        path, batch_size=1, seq_len=256, shard_index=0, shard_count=1, shuffle=False, repeat=False, chat_format=fmt
    )
    batch = next(it)
    n = int((batch["segment_ids"][0] > 0).sum())
    tokens, weights = batch["tokens"][0, :n], batch["loss_weights"][0, :n]
    # Reference: the `tokenizers` ids of the whole rendered conversation, encoded in one call.
    messages = MULTI_TURN["messages"][:-1] + [{**MULTI_TURN["messages"][-1], "thinking": MULTI_TURN["thinking"]}]
    if fmt == "deepseek_r1":  # every DeepSeek assistant turn carries a think block (empty when absent)
        messages[2] = {**messages[2], "thinking": ""}
    reference = tokenizers.Tokenizer.from_file(default_tokenizer_path())
    assert tokens.tolist() == reference.encode(chat.render(messages, fmt), add_special_tokens=False).ids
    # Trained spans, decoded, are exactly the two assistant turns (thinking + answer + end-of-turn).
    spans, current = [], []
    for tok, w in zip(tokens.tolist(), weights.tolist()):
        if w:
            current.append(tok)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    decoded = [reference.decode(s, skip_special_tokens=False) for s in spans]
    if fmt == "chatml":
        assert decoded == [
            "Hello there.<|im_end|>",
            "<think>\nGive one concrete tip.\n</think>\n\nKeep a regular bedtime.<|im_end|>",
        ]
    else:
        assert decoded == [
            "<think>\n\n</think>\n\nHello there.<｜end▁of▁sentence｜>",
            "<think>\nGive one concrete tip.\n</think>\n\nKeep a regular bedtime.<｜end▁of▁sentence｜>",
        ]
    untrained = reference.decode(tokens[weights == 0].tolist(), skip_special_tokens=False)
    assert "Hello there" not in untrained and "bedtime" not in untrained and "sleep better" in untrained


def _attention(x, allowed):
    """One softmax attention head in numpy: x [T, D], allowed [T, S] bool."""
    scores = (x @ x.T) / np.sqrt(x.shape[-1])
    scores = np.where(allowed, scores, -1e30)
    probs = np.exp(scores - scores.max(-1, keepdims=True)) * allowed
    return (probs / probs.sum(-1, keepdims=True)) @ x


def test_packing_segments_positions_and_no_attention_leakage(tmp_path):
    records = _short_records(40)
    path = _sft_file(tmp_path, records)
    T = 64
    it = pipeline.make_sft_iterator(
        path, batch_size=3, seq_len=T, shard_index=0, shard_count=1, shuffle=False, repeat=False
    )
    vocab = default_vocabulary()
    expected = features.tokenize_segments(vocab, [features.sft_segments(r) for r in records])
    rng = np.random.default_rng(0)
    token_emb, pos_emb = rng.normal(size=(vocab.vocab_size, 16)), rng.normal(size=(T, 16))
    seen = 0
    for batch in it:
        for b in range(batch["tokens"].shape[0]):
            seg, pos = batch["segment_ids"][b], batch["positions"][b]
            toks, w = batch["tokens"][b], batch["loss_weights"][b]
            real = seg > 0
            if not real.any():
                continue
            # Padding only at the end, with zeros everywhere else.
            n = int(real.sum())
            assert real[:n].all() and not real[n:].any()
            assert (pos[n:] == 0).all() and (w[n:] == 0).all() and (toks[n:] == vocab.pad_id).all()
            # Segments are 1, 2, ... in order; positions restart at 0 and count up inside each.
            ids = seg[:n]
            assert ids[0] == 1 and set(np.diff(ids)) <= {0, 1}
            for s in np.unique(ids):
                where = np.flatnonzero(ids == s)
                assert (np.diff(where) == 1).all() and (pos[where] == np.arange(len(where))).all()
                # Each segment is one whole example, in file order (greedy packing never splits one).
                ex_tokens, ex_weights = expected[seen]
                length = min(len(ex_tokens), T)
                assert toks[where].tolist() == ex_tokens[:length].tolist()
                assert w[where].tolist() == ex_weights[:length].tolist()
                seen += 1
            # No leakage: attention over the packed row (same segment, causal) equals running each
            # example on its own with positions 0..L-1.
            x = token_emb[toks[:n]] + pos_emb[pos[:n]]
            causal = np.tril(np.ones((n, n), dtype=bool))
            packed = _attention(x, causal & (ids[:, None] == ids[None, :]))
            for s in np.unique(ids):
                where = np.flatnonzero(ids == s)
                alone_x = token_emb[toks[where]] + pos_emb[np.arange(len(where))]
                alone = _attention(alone_x, np.tril(np.ones((len(where), len(where)), dtype=bool)))
                np.testing.assert_allclose(packed[where], alone, rtol=1e-12, atol=1e-12)
    assert seen == len(records)


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


@pytest.mark.parametrize("kind", ["sft", "pref"])
def test_restored_iterator_yields_exactly_the_same_batches(kind):
    if kind == "sft":
        make = lambda: pipeline.make_sft_iterator(  # noqa: E731
            "oyster_csa_sft_mix",
            batch_size=8,
            seq_len=256,
            seed=3,
            shard_index=1,
            shard_count=2,
            rates={"oyster_general_seed_sft": 0.5},
        )
    else:
        make = lambda: pipeline.make_pref_iterator(  # noqa: E731
            "oyster_csa_seed_pref", batch_size=64, seq_len=128, seed=3, split="test", shard_index=0, shard_count=1
        )
    original = make()
    _take(original, 5)
    state = json.loads(json.dumps(original.get_state()))  # must survive a JSON round trip
    want = _take(original, 12)  # crosses epoch boundaries (general chat: ~150 examples per shard)
    restored = make()
    restored.set_state(state)
    _assert_batches_equal(_take(restored, 12), want)
    # state_dict/load_state_dict are the same thing.
    again = make()
    again.load_state_dict(original.state_dict())
    _assert_batches_equal(_take(again, 2), _take(original, 2))


def test_determinism_seed_and_state_mismatch():
    make = lambda seed: pipeline.make_sft_iterator(  # noqa: E731
        "oyster_csa_seed_sft", batch_size=4, seq_len=256, seed=seed, shard_index=0, shard_count=1
    )
    _assert_batches_equal(_take(make(0), 3), _take(make(0), 3))
    assert not np.array_equal(next(make(0))["tokens"], next(make(1))["tokens"])
    with pytest.raises(pipeline.StateMismatchError, match="seed: saved 0 vs now 1"):
        make(1).set_state(make(0).get_state())


def test_shards_partition_each_epoch():
    def rows(shard_index, shard_count):
        it = pipeline.make_pref_iterator(
            "oyster_csa_seed_pref",
            split="test",
            batch_size=16,
            seq_len=256,
            seed=0,
            shard_index=shard_index,
            shard_count=shard_count,
            repeat=False,
        )
        out = collections.Counter()
        for batch in it:
            for i in range(batch["tokens"].shape[0]):
                if batch["segment_ids"][i, 0, 0]:
                    out[batch["tokens"][i].tobytes()] += 1  # the pair's chosen and rejected rows
        return out, it.num_examples

    whole, n = rows(0, 1)
    parts = [rows(i, 3) for i in range(3)]
    assert n == 384 and sum(whole.values()) == 384
    assert sum((p for p, _ in parts), collections.Counter()) == whole
    assert sorted(m for _, m in parts) == [128, 128, 128]


def test_pref_layout_chosen_then_rejected_with_completion_masks():
    B, T = 4, 256
    it = pipeline.make_pref_iterator(
        "oyster_csa_seed_pref", split="test", batch_size=B, seq_len=T, shard_index=0, shard_count=1, shuffle=False
    )
    batch = next(it)
    assert sorted(batch) == ["completion_mask", "positions", "segment_ids", "tokens"]
    assert all(v.shape == (B, 2, T) and v.dtype == np.int32 for v in batch.values())
    records = tasks.seqio.TaskRegistry.get("oyster_csa_seed_pref").source.records("test")[:B]
    vocab = default_vocabulary()
    for i, record in enumerate(records):
        prompt, chosen, rejected = features.pref_texts(record)
        for j, completion in ((0, chosen), (1, rejected)):
            seg, w, toks = batch["segment_ids"][i, j], batch["completion_mask"][i, j], batch["tokens"][i, j]
            n = int((seg > 0).sum())
            assert vocab.decode(toks[:n][w[:n] == 0].tolist()) == prompt
            assert vocab.decode(toks[w == 1].tolist()) == completion
            assert (batch["positions"][i, j, :n] == np.arange(n)).all() and (w[n:] == 0).all()
            assert (toks[n:] == vocab.pad_id).all()
        # Same prompt tokens for the chosen and the rejected row of a pair.
        p = int((batch["completion_mask"][i, 0] == 0).sum() - (batch["segment_ids"][i, 0] == 0).sum())
        np.testing.assert_array_equal(batch["tokens"][i, 0, :p], batch["tokens"][i, 1, :p])


def test_shared_row_lengths_are_what_the_batches_hold():
    """One shared-prompt row per pair needs prompt + chosen + rejected tokens: measured from the lengths
    without building batches, equal to what one ordered pass of the batches holds (truncation included)."""
    B, T = 16, 96  # short rows: many pairs are truncated
    it = pipeline.make_pref_iterator(
        "oyster_csa_seed_pref", split="test", batch_size=B, seq_len=T, shard_index=0, shard_count=1,
        shuffle=False, repeat=False,
    )  # fmt: skip
    want = it.shared_row_lengths()
    got = []
    for batch in it:
        for i in range(B):
            chosen, rejected = (int((batch["segment_ids"][i, j] > 0).sum()) for j in (0, 1))
            if chosen:
                prompt = chosen - int(batch["completion_mask"][i, 0].sum())
                got.append(chosen + rejected - prompt)
    assert len(want) == it.num_examples == 384
    np.testing.assert_array_equal(want, got)
    assert want.max() <= 2 * T and want.max() > T


def test_truncation_policy_hand_computed():
    prompt, chosen, rejected = np.arange(10), np.arange(100, 108), np.arange(200, 203)
    p, c, r = features.truncate_pref(prompt, chosen, rejected, seq_len=12)
    # longest completion 8 -> prompt keeps max(12 - 8, min(10, 12 // 2)) = 6 tokens, from the left cut.
    assert (
        p.tolist() == [4, 5, 6, 7, 8, 9]
        and c.tolist() == [100, 101, 102, 103, 104, 105]
        and r.tolist() == [200, 201, 202]
    )
    p, c, r = features.truncate_pref(np.arange(3), chosen, rejected, seq_len=12)
    assert p.tolist() == [0, 1, 2] and c.tolist() == list(range(100, 108))  # fits: unchanged
    p, c, r = features.truncate_pref(prompt, np.arange(100, 103), rejected, seq_len=12, max_prompt_len=2)
    assert p.tolist() == list(range(1, 10)) and c.tolist() == [100, 101, 102]  # short completions keep more prompt


def test_seqio_graph_path_equals_numpy_path(tmp_path):
    records = _short_records(6) + [MULTI_TURN]
    path = _sft_file(tmp_path, records)
    task = tasks.register_jsonl_task("test_pipeline_graph_sft", path, "sft", overwrite=True)
    ds = task.get_dataset(sequence_length=None, split="train", shuffle=False)
    graph = [
        (
            ex["inputs"].tolist() + ex["targets"].tolist(),
            [0] * len(ex["inputs"]) + ex["targets_loss_weights"].tolist(),
        )
        for ex in ds.as_numpy_iterator()
    ]
    numpy_path = features.tokenize_segments(default_vocabulary(), [features.sft_segments(r) for r in records])
    assert graph == [(t.tolist(), w.tolist()) for t, w in numpy_path]
    assert all(ex["targets_loss_weights"][0] == 1 for ex in ds.as_numpy_iterator())  # targets start trainable
    # The generic (non-record) seqio path of the iterator reads the same features.
    columns = pipeline._columns("sft", pipeline._from_seqio("sft", task, "train", 0, 1))
    assert [c.tolist() for c in columns["tokens"]] == [t.tolist() for t, _ in numpy_path]
    assert [c.tolist() for c in columns["loss_weights"]] == [w.tolist() for _, w in numpy_path]
    # The seqio feature converter packs them into the same four model features.
    packed = seqio.get_dataset(
        "test_pipeline_graph_sft",
        {"inputs": 128, "targets": 128, "targets_loss_weights": 128},
        tasks.SftPackingConverter(pack=True),
        dataset_split="train",
        shuffle=False,
    )
    first = next(packed.as_numpy_iterator())
    assert set(first) == {"tokens", "loss_weights", "segment_ids", "positions"}
    n1 = len(numpy_path[0][0])
    assert (
        first["tokens"][:n1].tolist() == numpy_path[0][0].tolist() and (first["positions"][:n1] == np.arange(n1)).all()
    )


def test_holdout_split_is_stable_and_disjoint(tmp_path):
    records = _short_records(200)
    kept, held = tasks.holdout_split(records, 0.2, seed=1)
    assert len(kept) + len(held) == 200 and 20 <= len(held) <= 60
    assert {r["id"] for r in kept}.isdisjoint({r["id"] for r in held})
    kept2, held2 = tasks.holdout_split(list(reversed(records)) + _short_records(250)[200:], 0.2, seed=1)
    assert {r["id"] for r in held} <= {r["id"] for r in held2}  # order-free; adding records moves none
    path = _sft_file(tmp_path, records)
    tasks.register_jsonl_task(
        "test_pipeline_holdout", path, "sft", holdout_fraction=0.2, holdout_seed=1, overwrite=True
    )
    it = pipeline.make_sft_iterator(
        "test_pipeline_holdout",
        split="validation",
        batch_size=2,
        seq_len=128,
        shard_index=0,
        shard_count=1,
        repeat=False,
    )
    assert it.num_examples == len(held)
