"""Formats in: TRL preference records, chat SFT records, Hugging Face datasets (save_to_disk, parquet, arrow,
JSON through `datasets`), hashed ids, detected language, and rejections that name file:line / row and field."""

import json

import datasets
import numpy as np
import pytest

from oyster_jax.core import schemas
from oyster_jax.data import features, formats, pipeline, tasks
from oyster_jax.data.vocab import default_vocabulary

TRL_STRINGS = [
    {"prompt": "How do I bake bread at home?", "chosen": "Mix flour, water, yeast; knead; bake.", "rejected": "No."},
    {"prompt": "如何在家做面包？", "chosen": "<think>列出步骤</think>和面、发酵、烘烤。", "rejected": "不知道。"},
]
TRL_CONVERSATIONAL = [
    {
        "prompt": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Tips for a first 5k?"}],
        "chosen": [{"role": "assistant", "content": "Start slow and build up.", "reasoning_content": "Beginner."}],
        "rejected": [{"role": "assistant", "content": "Just sprint."}],
    },
    {  # implicit prompt: the shared leading turns
        "chosen": [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "Seven."}],
        "rejected": [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "Nine."}],
        "chosen_reasoning": "Seven has no divisors but 1 and 7.",
    },
]
CHAT_SFT = [
    {
        "messages": [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": "What is 2 + 2?"},
            {"role": "assistant", "content": "4.", "reasoning_content": "Add them."},
            {"role": "user", "content": "And times 3?"},
            {"role": "assistant", "content": "12."},
        ]
    },
    {"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！有什么可以帮你？"}]},
]


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def test_trl_preference_records_become_project_records(tmp_path):
    records = formats.read_records(_jsonl(tmp_path / "p.jsonl", TRL_STRINGS + TRL_CONVERSATIONAL), "pref")
    a, b, c, d = records
    assert a["prompt_messages"] == [{"role": "user", "content": TRL_STRINGS[0]["prompt"]}]
    assert a["chosen"] == {"response": TRL_STRINGS[0]["chosen"]} and a["language"] == "en"
    assert b["chosen"] == {"thinking": "列出步骤", "response": "和面、发酵、烘烤。"} and b["language"] == "zh"
    assert c["prompt_messages"][0] == {"role": "system", "content": "Be kind."}
    assert c["chosen"] == {"thinking": "Beginner.", "response": "Start slow and build up."}
    assert d["prompt_messages"] == [{"role": "user", "content": "Name a prime."}]
    assert d["chosen"]["thinking"].startswith("Seven has") and d["rejected"] == {"response": "Nine."}
    # ids: a stable content hash, the same when read again or from another file
    again = formats.read_records(_jsonl(tmp_path / "q.jsonl", TRL_STRINGS + TRL_CONVERSATIONAL), "pref")
    assert [r["id"] for r in records] == [r["id"] for r in again] and len({r["id"] for r in records}) == 4
    assert all(r["id"].startswith("h") and len(r["id"]) == 17 for r in records)
    # the tokens the training path sees: prompt / completion as a project record would render them
    prompt, chosen, _ = features.pref_texts(b)
    assert prompt.endswith("<|im_start|>assistant\n") and "列出步骤" in chosen and chosen.endswith("<|im_end|>")


def test_chat_sft_records_multi_turn_with_reasoning(tmp_path):
    a, b = formats.read_records(_jsonl(tmp_path / "s.jsonl", CHAT_SFT), "sft")
    assert a["messages"][2] == {"role": "assistant", "content": "4.", "thinking": "Add them."}
    assert a["language"] == "en" and b["language"] == "zh"
    [(ids, weights)] = features.tokenize_segments(default_vocabulary(), [features.sft_segments(a)])
    text = default_vocabulary().decode([int(t) for t, w in zip(ids, weights, strict=True) if w])
    assert "Add them." in text and "4." in text and "12." in text and "And times 3?" not in text


def test_project_records_still_read_and_pref_thinking_is_optional(tmp_path):
    project = {
        "id": "p1",
        "language": "en",
        "prompt_messages": [{"role": "user", "content": "hi"}],
        "chosen": {"response": "hello"},
        "rejected": {"thinking": "", "response": "go away"},
    }
    [r] = formats.read_records(_jsonl(tmp_path / "p.jsonl", [project]), "pref")
    assert r == project


@pytest.mark.parametrize(
    "record, field",
    [
        ({"prompt": "x", "chosen": 3, "rejected": "y"}, "chosen"),
        ({"prompt": "x", "chosen": "y"}, "rejected"),
        ({"chosen": "a", "rejected": "b"}, "prompt"),
        ({"prompt": "x", "chosen": [{"role": "user", "content": "u"}], "rejected": "y"}, "chosen"),
        ({"prompt": "x", "chosen": "  ", "rejected": "y"}, "chosen.response"),
    ],
)
def test_bad_trl_records_name_file_line_and_field(tmp_path, record, field):
    path = _jsonl(tmp_path / "bad.jsonl", [TRL_STRINGS[0], record])
    with pytest.raises(schemas.RecordError) as e:
        formats.read_records(path, "pref")
    assert str(e.value).startswith(f"{path}:2: field '{field}'"), str(e.value)


def test_exact_duplicates_without_ids_get_distinct_stable_ids(tmp_path):
    records = formats.read_records(_jsonl(tmp_path / "d.jsonl", [TRL_STRINGS[0]] * 3), "pref")
    first = records[0]["id"]
    assert [r["id"] for r in records] == [first, f"{first}-2", f"{first}-3"]


def _hf_dataset(records):
    return datasets.Dataset.from_list(records)


def test_hf_datasets_save_to_disk_parquet_arrow_and_json(tmp_path):
    ds = _hf_dataset(TRL_STRINGS)
    expected = formats.read_records(_jsonl(tmp_path / "p.jsonl", TRL_STRINGS), "pref")
    ds.save_to_disk(str(tmp_path / "single"))
    datasets.DatasetDict({"train": ds, "test": ds.select([1])}).save_to_disk(str(tmp_path / "dict"))
    ds.to_parquet(str(tmp_path / "p.parquet"))
    (tmp_path / "arrow").mkdir()
    ds.save_to_disk(str(tmp_path / "arrow_src"))
    arrow_file = next((tmp_path / "arrow_src").glob("*.arrow"))
    for spec in (
        str(tmp_path / "single"),
        f"hf:{tmp_path / 'dict'}",
        str(tmp_path / "p.parquet"),
        str(arrow_file),
        f"hf:{tmp_path / 'p.jsonl'}",
    ):
        assert formats.read_records(spec, "pref") == expected, spec
    assert formats.read_records(f"hf:{tmp_path / 'dict'}:test", "pref") == expected[1:]
    with pytest.raises(ValueError, match="no split 'validation'"):
        formats.read_records(f"hf:{tmp_path / 'dict'}:validation", "pref")


def test_hf_dataset_rejection_names_the_row(tmp_path):
    ds = _hf_dataset(
        [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "b", "rejected": None}]
    )
    ds.to_parquet(str(tmp_path / "bad.parquet"))
    with pytest.raises(schemas.RecordError) as e:
        formats.read_records(str(tmp_path / "bad.parquet"), "pref")
    assert str(e.value).startswith(f"hf:{tmp_path / 'bad.parquet'}[train] row 1: field 'rejected'"), str(e.value)


def test_user_files_feed_the_iterators_through_a_seqio_task(tmp_path):
    sft = _jsonl(tmp_path / "chat.jsonl", CHAT_SFT * 3)
    it = pipeline.make_sft_iterator(str(sft), batch_size=2, seq_len=64, seed=0, shard_index=0, shard_count=1)
    batch = next(it)
    assert batch["tokens"].shape == (2, 64) and batch["loss_weights"].sum() > 0
    [m] = it.mixture
    assert m["source"] == str(sft) and m["task"].startswith("data_sft_") and m["examples"] == 6
    # the auto-registered task is a seqio task like the built-ins
    task = tasks.task_for_spec(str(sft), "sft")
    first = next(task.get_dataset(sequence_length=None, split="train", shuffle=False).as_numpy_iterator())
    assert set(first) == {"id", "inputs", "targets", "targets_loss_weights"}
    ds = _hf_dataset(TRL_STRINGS * 2)
    ds.save_to_disk(str(tmp_path / "pairs"))
    pref = pipeline.make_pref_iterator(
        f"hf:{tmp_path / 'pairs'}", batch_size=2, seq_len=64, seed=0, shard_index=0, shard_count=1
    )
    assert np.asarray(next(pref)["completion_mask"]).sum() > 0 and pref.num_examples == 4
