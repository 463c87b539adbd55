"""Strata-Sword through the SeqIO tasks and the TFDS builder, read from OYSTER_DATA_DIR (skips when absent)."""

import collections

import pytest

from oyster_jax.core import chat
from oyster_jax.data import tasks
from oyster_jax.data.tf_setup import seqio
from oyster_jax.data.vocab import default_vocabulary

# Counts from the benchmark's documentation (../shared/data/README.md).
EXPECTED = {("en", 1): 100, ("en", 2): 100, ("en", 3): 200, ("cn", 1): 100, ("cn", 2): 100, ("cn", 3): 100}
L2_METHODS = {"Contradictory", "Shuffle", "Long Text", "Opposing", "ASCII Drawing", "Template"}
L3_METHODS = {
    "cn": {"Character Split", "Acrostic Poem", "Lantern Riddle", "Multi-Turn", "Shuffle+Template", "Script+Template"},
    "en": {"CodeAttack", "DRAttack", "Multi-Turn", "Shuffle+Template", "Script+Template"},
}


def _records(lang, level):
    return seqio.TaskRegistry.get(f"strata_sword_{lang}_l{level}").source.records("test")


def test_counts_levels_and_attack_methods(data_dir):
    counts, methods = {}, collections.defaultdict(set)
    for lang, level in EXPECTED:
        records = _records(lang, level)
        counts[lang, level] = len(records)
        assert {r["level"] for r in records} == {level} and {r["language"] for r in records} == {lang}
        methods[lang, level] = {r["attack_method"] for r in records}
    assert counts == EXPECTED
    assert sum(counts.values()) == 700
    assert sum(n for (lang, _), n in counts.items() if lang == "cn") == 300
    assert sum(n for (lang, _), n in counts.items() if lang == "en") == 400
    for lang in ("en", "cn"):
        assert methods[lang, 1] == {"Direct"}
        assert methods[lang, 2] == L2_METHODS
        assert methods[lang, 3] == L3_METHODS[lang]
    assert len(set().union(*methods.values())) == 15


def test_task_outputs_generation_prompts(data_dir):
    ds = seqio.TaskRegistry.get("strata_sword_cn_l2").get_dataset(sequence_length=None, split="test", shuffle=False)
    first = next(ds.as_numpy_iterator())
    record = _records("cn", 2)[0]
    text = chat.render_generation_prompt([{"role": "user", "content": record["prompt"]}])
    assert first["prompt_text"].decode() == text
    assert first["inputs"].tolist() == list(default_vocabulary().encode(text))
    assert first["level"] == 2 and first["attack_method"].decode() == record["attack_method"]


def test_tfds_builder_splits_by_level(data_dir, tmp_path):
    import oyster_jax.data.tfds_builders  # noqa: F401  (registers the builders)
    from oyster_jax.data.tf_setup import tfds

    builder = tfds.builder("strata_sword/cn", data_dir=str(tmp_path))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(data_dir / "strata_sword"))
    )
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"level1": 100, "level2": 100, "level3": 100}
    ex = next(iter(tfds.as_numpy(builder.as_dataset(split="level3"))))
    assert ex["level"] == 3 and ex["language"] == b"cn"


def test_missing_data_dir_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("OYSTER_DATA_DIR", raising=False)
    source = seqio.TaskRegistry.get("strata_sword_en_l1").source
    assert isinstance(source, tasks.JsonlSource)
    with pytest.raises(FileNotFoundError, match="set OYSTER_DATA_DIR"):
        source.records("test")
