"""The bundled seed dataset: coverage, held-out template families, placeholders only, short records,
taxonomy consistency, and byte-for-byte reproducibility from the committed generator."""

import collections
import hashlib
import json

import numpy as np
import pytest

from oyster_jax.core import schemas, taxonomy
from oyster_jax.data import SEED_DIR, features, seed
from oyster_jax.data.seed import categories, generate
from oyster_jax.data.vocab import default_vocabulary


def _read(name, kind):
    return schemas.read_records(seed.path(name), kind)


def test_sizes_and_coverage():
    sft = _read("sft_train", "sft") + _read("sft_test", "sft")
    pref = _read("pref_train", "pref") + _read("pref_test", "pref")
    assert len(sft) >= 2000 and len(pref) >= 2000
    for records in (sft, pref):
        cells = collections.Counter(
            (r["risk"]["category_l2"], r["language"], r["persona"]["user_type"], r["risk"]["level"]) for r in records
        )
        assert len({c[0] for c in cells}) == 32
        expected = {
            (c, lang, ut, generate.LEVEL_OF[ut])
            for c in categories.LEVEL2_NAMES
            for lang in ("en", "zh")
            for ut in ("benign", "sensitive", "malicious")
        }
        assert set(cells) == expected
        for r in records:
            assert r["risk"]["category_l1"] == taxonomy.LEVEL2_TO_LEVEL1[r["risk"]["category_l2"]]
    assert {r["risk"]["level"] for r in sft} == {"R0", "R1", "R2"}
    assert len(categories.LEVEL2_NAMES) == 32 and len(set(taxonomy.LEVEL2_TO_LEVEL1.values())) == 9


def test_test_split_holds_out_whole_template_families():
    for kind in ("sft", "pref"):
        train = {r["family"] for r in _read(f"{kind}_train", kind)}
        test = {r["family"] for r in _read(f"{kind}_test", kind)}
        assert train.isdisjoint(test)
        assert {f.rsplit("/", 1)[1] for f in test} == {f"f{generate.HELD_OUT_FAMILY}"}
        assert len(test) == 6  # 2 languages x 3 user types
    # The held-out phrasing never appears in training prompts.
    train_prompts = {r["prompt_messages"][0]["content"] for r in _read("pref_train", "pref")}
    test_prompts = {r["prompt_messages"][0]["content"] for r in _read("pref_test", "pref")}
    assert train_prompts.isdisjoint(test_prompts)


def test_unsafe_behaviour_is_only_a_placeholder():
    pairs = _read("pref_train", "pref") + _read("pref_test", "pref")
    kinds = collections.Counter(r["rejected_kind"] for r in pairs)
    assert kinds["refusal"] > 500 and kinds["unsafe_compliance"] > 500
    for r in pairs:
        if r["rejected_kind"] == "unsafe_compliance":
            response = r["rejected"]["response"]
            assert "[" in response and response.rstrip("。.").endswith("]"), response
        assert "[" not in r["chosen"]["response"]


def test_records_are_short_for_the_tiny_model():
    vocab = default_vocabulary()
    sft = _read("sft_train", "sft")
    lengths = [len(t) for t, _ in features.tokenize_segments(vocab, [features.sft_segments(r) for r in sft])]
    assert 60 <= np.median(lengths) <= 150, np.median(lengths)
    pref = _read("pref_test", "pref")
    texts = [t for r in pref for t in features.pref_texts(r)[1:]]
    completion_lengths = [len(t) for t in features.tokenize_texts(vocab, texts)]
    assert max(completion_lengths) < 200


def test_constructive_items_and_general_chat():
    items = _read("constructive_items", "constructive")
    assert len(items) == 40
    assert {i["risk_level"] for i in items} == {"R0", "R1", "R2"}
    assert all(i["category"] in taxonomy.LEVEL2_TO_LEVEL1 for i in items)
    general = _read("general_train", "sft") + _read("general_test", "sft")
    assert len(general) >= 250 and all(r["chain"]["risk_intent"] == "" for r in general)


def test_generator_reproduces_the_committed_files(tmp_path):
    generate.main(["--out", str(tmp_path), "--no_tokenizer"])
    assert sorted(p.name for p in tmp_path.glob("*.jsonl")) == sorted(
        [p.name for p in SEED_DIR.glob("*.jsonl")] + list(seed.GENERATED)
    )
    for path in tmp_path.glob("*.jsonl"):
        assert path.read_bytes() == seed.path(path.stem).read_bytes(), path.name
    # every shipped file stays under the 2 MiB limit for tracked files; the larger ones are rebuilt on first use
    assert all(p.stat().st_size < 2 * 2**20 for p in SEED_DIR.glob("*.json*"))
    assert all(seed.path(name).stat().st_size >= 2 * 2**20 for name in seed.GENERATED)


def test_a_rebuilt_seed_file_is_checked_and_cached(tmp_path, monkeypatch):
    """A file that is not shipped is generated once into $OYSTER_CACHE with the pinned bytes; a generator whose
    output changed is an error, and nothing is cached then."""
    monkeypatch.setenv("OYSTER_CACHE", str(tmp_path))
    [(name, digest)] = seed.GENERATED.items()
    first = seed.path(name)
    assert first.is_relative_to(tmp_path) and hashlib.sha256(first.read_bytes()).hexdigest() == digest
    assert seed.path(name.removesuffix(".jsonl")) == first
    monkeypatch.setenv("OYSTER_CACHE", str(tmp_path / "other"))
    monkeypatch.setattr(generate, "render_file", lambda stem, seed=0: b"{}\n")
    with pytest.raises(RuntimeError, match=f"{name}: the generator now writes sha256"):
        seed.path(name)
    assert not list((tmp_path / "other").rglob("*.jsonl"))


def test_no_benchmark_prompt_is_in_the_seed_data(data_dir):
    benchmark = set()
    for path in (data_dir / "strata_sword").glob("*.jsonl"):
        benchmark |= {json.loads(line)["prompt"].strip() for line in path.open(encoding="utf-8") if line.strip()}
    seed_prompts = {
        r["prompt_messages"][0]["content"].strip() for n in ("pref_train", "pref_test") for r in _read(n, "pref")
    }
    seed_prompts |= {r["messages"][0]["content"].strip() for n in ("sft_train", "sft_test") for r in _read(n, "sft")}
    assert len(benchmark) == 700 and benchmark.isdisjoint(seed_prompts)


def test_tfds_seed_builder(tmp_path):
    import oyster_jax.data.tfds_builders  # noqa: F401  (registers the builders)
    from oyster_jax.data.tf_setup import tfds

    builder = tfds.builder("oyster_csa_seed/sft", data_dir=str(tmp_path))
    builder.download_and_prepare()
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": 1728, "test": 384}
    ex = next(iter(tfds.as_numpy(builder.as_dataset(split="test"))))
    record = json.loads(ex["record"])
    assert ex["response"].decode() == record["messages"][-1]["content"] and ex["thinking"]
