"""SeqIO as a SeqIO user expects it: standard task features, SeqIO's own feature converters, metric_fns, and
the training path reading the same task definitions."""

import numpy as np
import pytest

from oyster_jax.data import metrics, pipeline, tasks
from oyster_jax.data.tf_setup import seqio
from oyster_jax.data.vocab import default_vocabulary


@pytest.fixture(scope="module")
def small_tasks(tmp_path_factory):
    """Small copies of the seed tasks (the first records of each test split): SeqIO's converters tokenize
    ahead through tf.data, which costs seconds per hundred records on a loaded CPU."""
    root = tmp_path_factory.mktemp("seqio_tasks")
    for kind in ("sft", "pref"):
        lines = (tasks.SEED_DIR / f"{kind}_test.jsonl").read_text(encoding="utf-8").splitlines()[:12]
        (root / f"{kind}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        tasks.register_jsonl_task(f"test_seqio_small_{kind}", root / f"{kind}.jsonl", kind, overwrite=True)
    return {"sft": "test_seqio_small_sft", "pref": "test_seqio_small_pref"}


def _numpy_records(name, kind, split):
    task = seqio.get_mixture_or_task(name)
    return tasks.record_features(kind, task.source.records(split), default_vocabulary())


def test_sft_task_through_seqio_decoder_feature_converter(small_tasks):
    task = seqio.get_mixture_or_task(small_tasks["sft"])
    lengths = {"inputs": 512, "targets": 512}
    ds = task.get_dataset(lengths, split="train", shuffle=False)
    assert set(ds.element_spec) == {"id", "inputs", "targets", "targets_loss_weights"}
    expected = _numpy_records(small_tasks["sft"], "sft", "train")
    examples = list(ds.take(8).as_numpy_iterator())
    assert [e["targets"].tolist() for e in examples] == [t[:512].tolist() for t in expected["targets"][:8]]
    ex = next(seqio.DecoderFeatureConverter(pack=False)(ds, lengths).as_numpy_iterator())
    first = examples[0]
    n_in, n_t = len(first["inputs"]), len(first["targets"])
    assert ex["decoder_target_tokens"][: n_in + n_t].tolist() == first["inputs"].tolist() + first["targets"].tolist()
    assert ex["decoder_loss_weights"].tolist() == [0] * n_in + [1] * n_t + [0] * (1024 - n_in - n_t)
    assert ex["decoder_causal_attention"][: n_in + 1].all()  # the prefix (and first target input) see each other


def test_pref_task_triple_and_metric_fns(small_tasks):
    task = seqio.get_mixture_or_task(small_tasks["pref"])
    ds = task.get_dataset({"inputs": 256, "targets": 256}, split="train", shuffle=False)
    assert set(ds.element_spec) == {"id", "inputs", "targets", "rejected_targets"}
    expected = _numpy_records(small_tasks["pref"], "pref", "train")
    ex = next(ds.as_numpy_iterator())
    assert ex["rejected_targets"].tolist() == expected["rejected_targets"][0].tolist()
    # the chosen side is a plain prefix-LM example for SeqIO's converter
    out = next(seqio.DecoderFeatureConverter(pack=False)(ds, {"inputs": 256, "targets": 256}).as_numpy_iterator())
    assert out["decoder_loss_weights"].sum() == min(len(ex["targets"]), 256)
    seed = seqio.get_mixture_or_task("oyster_csa_seed_pref")
    assert seed.metric_fns == [metrics.preference_accuracy] == task.score_metric_fns
    scores = [(-1.0, -2.0), (-3.0, -1.0), (-0.5, -0.5), (-0.1, -0.9)]
    assert metrics.preference_accuracy(["a", "b", "c", "d"], scores) == {"preference_accuracy": 0.5}
    with pytest.raises(ValueError, match="4 targets but 3"):
        metrics.preference_accuracy(["a"] * 4, scores[:3])


def test_mixture_through_seqio_and_the_numpy_packer_read_the_same_tokens():
    mix = seqio.get_mixture_or_task("oyster_csa_sft_mix")
    ds = mix.get_dataset({"inputs": 512, "targets": 512}, split="test", shuffle=False, num_epochs=1)
    seqio_targets = [tuple(e["targets"].tolist()) for e in ds.as_numpy_iterator()]
    it = pipeline.make_sft_iterator(
        "oyster_csa_sft_mix",
        split="test",
        batch_size=4,
        seq_len=1 << 14,
        shuffle=False,
        repeat=False,
        shard_index=0,
        shard_count=1,
    )
    numpy_targets = []
    for src in it.sources:
        for i in range(len(src)):
            start, n = src.starts["tokens"][i], src.lengths["tokens"][i]
            tokens, weights = src.fields["tokens"][start : start + n], src.fields["loss_weights"][start : start + n]
            numpy_targets.append(tuple(tokens[int(np.argmax(weights)) :][:512].tolist()))
    # seqio's sampling of a mixture stops when a task runs out; every example it yields is one of ours
    assert len(seqio_targets) > 10 and set(seqio_targets) <= set(numpy_targets)
    assert [t.name for t in mix.tasks] == [m["task"] for m in it.mixture]


def test_seqio_packing_converter_matches_the_numpy_rows(small_tasks):
    lengths = {"inputs": 256, "targets": 256, "targets_loss_weights": 256}
    ds = seqio.get_dataset(
        small_tasks["sft"], lengths, tasks.SftPackingConverter(), dataset_split="train", shuffle=False
    )
    row = next(ds.as_numpy_iterator())
    it = pipeline.make_sft_iterator(
        small_tasks["sft"], split="train", batch_size=1, seq_len=256, shuffle=False, shard_index=0, shard_count=1
    )
    mine = next(it)
    n = int((row["segment_ids"] == 1).sum())
    assert n == int((mine["segment_ids"][0] == 1).sum())
    for key in ("tokens", "loss_weights", "positions"):
        assert row[key][:n].tolist() == mine[key][0, :n].tolist(), key
