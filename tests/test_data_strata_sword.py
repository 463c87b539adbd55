"""Strata-Sword through the SeqIO tasks and the TFDS builder, read from OYSTER_DATA_DIR (skips when absent)."""

import collections
import json

import pytest

from oyster_jax.core import chat
from oyster_jax.data import strata_sword, tasks
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
    with pytest.raises(strata_sword.StrataSwordNotFound, match="OYSTER_DATA_DIR is not set") as e:
        source.records("test")
    assert "python -m oyster_jax.data.import_release strata_sword --src DIR --out DIR" in str(e.value)


# --- one loader for the three readers, on small files written here (never the real prompts) ---------------


def _fixture(folder, sub=True, bad=None):
    """Six tiny files (2 prompts each); `bad` = (lang, level) whose second record claims another level."""
    root = folder / "strata_sword" if sub else folder
    root.mkdir(parents=True)
    for lang in ("en", "cn"):
        for level in (1, 2, 3):
            rows = [
                {"id": f"{lang}-L{level}-{i:03d}", "language": lang, "level": level,
                 "attack_method": "Direct" if level == 1 else f"M{i}", "prompt": f"[placeholder prompt {i}]"}
                for i in range(2)
            ]  # fmt: skip
            if bad == (lang, level):
                rows[1]["level"] = 1 if level != 1 else 2
            (root / f"{lang}_level_{level}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    return folder


def test_loader_reads_both_layouts(tmp_path):
    a = strata_sword.load(_fixture(tmp_path / "a"), ("en",), (2,))
    b = strata_sword.load(_fixture(tmp_path / "b", sub=False) / "", ("en",), (2,))
    assert [r["id"] for r in a["en", 2]] == [r["id"] for r in b["en", 2]] == ["en-L2-000", "en-L2-001"]
    assert set(strata_sword.load(tmp_path / "a")) == {(g, n) for g in ("en", "cn") for n in (1, 2, 3)}


def test_missing_file_says_how_to_get_the_data(tmp_path):
    with pytest.raises(strata_sword.StrataSwordNotFound) as e:
        strata_sword.load_file("cn", 3, tmp_path)
    message = str(e.value)
    assert "cn_level_3.jsonl" in message and "Alibaba-AAIG/Strata-Sword" in message
    assert "python -m oyster_jax.data.import_release strata_sword --src DIR --out DIR" in message
    assert "shared" not in message.replace(str(tmp_path), "")  # no folder of this machine besides the one asked


def test_harness_task_and_tfds_builder_share_the_loader(tmp_path, monkeypatch):
    """A file whose record disagrees with its name fails the same way in all three readers (one loader)."""
    from oyster_jax.data.tf_setup import tfds
    from oyster_jax.eval import strata_sword as harness

    folder = _fixture(tmp_path / "data", bad=("cn", 2))
    monkeypatch.setenv("OYSTER_DATA_DIR", str(folder))
    expected = "cn_level_2.jsonl: record 'cn-L2-001'"
    with pytest.raises(harness.EvalError, match=expected):
        harness.load_prompts(folder, ["cn"], [2])
    with pytest.raises(strata_sword.StrataSwordError, match=expected):
        seqio.TaskRegistry.get("strata_sword_cn_l2").source.records("test")
    import oyster_jax.data.tfds_builders  # noqa: F401  (registers the builders)

    builder = tfds.builder("strata_sword/cn", data_dir=str(tmp_path / "tfds"))
    with pytest.raises(strata_sword.StrataSwordError, match=expected):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(folder / "strata_sword"))
        )
    # the good files read the same through each
    good = [r["id"] for r in strata_sword.load_file("en", 3, folder)]
    assert [it["id"] for it in harness.load_prompts(folder, ["en"], [3])] == good
    assert [r["id"] for r in seqio.TaskRegistry.get("strata_sword_en_l3").source.records("test")] == good
    en = tfds.builder("strata_sword/en", data_dir=str(tmp_path / "tfds"))
    en.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(folder)))
    ids = sorted(ex["id"].decode() for ex in tfds.as_numpy(en.as_dataset(split="level3")))
    assert ids == sorted(good)
