"""HfTokenizerVocabulary: id parity with `tokenizers` (eager and tf.data graph mode) on a tokenizer built
here, on the bundled one and on a hand-checkable WordLevel one; special ids; SentencePiece support."""

import json

import numpy as np
import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from oyster_jax.data import features
from oyster_jax.data.tf_setup import seqio, tf
from oyster_jax.data.vocab import HfTokenizerVocabulary, default_tokenizer_path, load_vocabulary

TEXTS = [
    "Hello, world! How are you today?",
    "你好，世界！今天天气怎么样？",
    "Mixed 混合 text with emoji 🦪🔥 and numbers 12345.",
    "<|im_start|>user\nWhat's up? 🙂<|im_end|>\n",
    "",
    "  leading spaces and\ttabs\nnewlines  ",
]


@pytest.fixture(scope="module")
def bpe_path(tmp_path_factory):
    """A small byte-level BPE tokenizer trained here (independent of the bundled one), GPT-2 style."""
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    corpus = ["the quick brown fox jumps over the lazy dog", "中文分词测试，你好世界", "emoji 🦪 ok"] * 20
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "</s>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    tok.save(str(path))
    return path


@pytest.fixture(scope="module", params=["trained_here", "bundled"])
def tokenizer_path(request, bpe_path):
    return bpe_path if request.param == "trained_here" else default_tokenizer_path()


def test_eager_ids_equal_tokenizers(tokenizer_path):
    vocab = HfTokenizerVocabulary(tokenizer_path)
    reference = tokenizers.Tokenizer.from_file(str(tokenizer_path))
    for text in TEXTS:
        want = reference.encode(text, add_special_tokens=False).ids
        assert list(vocab.encode(text)) == want, text
        # seqio's decode stops after the first EOS.
        cut = want[: want.index(vocab.eos_id) + 1] if vocab.eos_id in want else want
        assert vocab.decode(want) == reference.decode(cut, skip_special_tokens=False)
    assert vocab.vocab_size == reference.get_vocab_size(with_added_tokens=True)


def test_graph_mode_ids_equal_tokenizers(tokenizer_path):
    vocab = HfTokenizerVocabulary(tokenizer_path)
    reference = tokenizers.Tokenizer.from_file(str(tokenizer_path))
    want = [reference.encode(t, add_special_tokens=False).ids for t in TEXTS]

    # Scalar strings inside a tf.data map (graph mode).
    ds = tf.data.Dataset.from_tensor_slices(TEXTS).map(vocab.encode_tf)
    got = [ids.tolist() for ids in ds.as_numpy_iterator()]
    assert got == want

    # A batch of strings inside a tf.function -> ragged [B, None].
    @tf.function
    def encode_batch(batch):
        return vocab.encode_tf(batch)

    ragged = encode_batch(tf.constant(TEXTS))
    assert isinstance(ragged, tf.RaggedTensor)
    assert ragged.to_list() == want

    # decode_tf in graph mode equals decode on every row (padded ids, truncation through EOS included).
    ids = [w for w in want if w]
    width = max(len(w) for w in ids)
    pad = vocab.pad_id
    padded = np.array([w + [pad] * (width - len(w)) for w in ids], dtype=np.int32)
    decoded = tf.function(vocab.decode_tf)(tf.constant(padded)).numpy().tolist()
    assert [d.decode("utf-8") for d in decoded] == [vocab.decode(row.tolist()) for row in padded]


def test_word_level_hand_computed_ids(tmp_path):
    vocab_map = {"[UNK]": 0, "<pad>": 1, "</s>": 2, "hello": 3, "world": 4, "!": 5}
    tok = tokenizers.Tokenizer(models.WordLevel(vocab_map, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    vocab = HfTokenizerVocabulary(path)
    assert list(vocab.encode("hello world !")) == [3, 4, 5]
    assert list(vocab.encode("hello mars")) == [3, 0]
    assert (vocab.eos_id, vocab.pad_id, vocab.unk_id) == (2, 1, 0)
    assert tf.data.Dataset.from_tensors("world hello").map(vocab.encode_tf).get_single_element().numpy().tolist() == [
        4,
        3,
    ]


def test_special_ids_from_tokenizer_config_and_overrides(bpe_path, tmp_path):
    (tmp_path / "tokenizer.json").write_bytes(bpe_path.read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": {"content": "<|im_end|>"}, "pad_token": "<pad>"})
    )
    vocab = HfTokenizerVocabulary(tmp_path)  # a directory works too
    reference = tokenizers.Tokenizer.from_file(str(bpe_path))
    assert vocab.eos_id == reference.token_to_id("<|im_end|>")
    assert vocab.pad_id == reference.token_to_id("<pad>")
    assert HfTokenizerVocabulary(bpe_path, eos_token="</s>").eos_id == reference.token_to_id("</s>")
    with pytest.raises(ValueError, match="not in the vocabulary"):
        HfTokenizerVocabulary(bpe_path, eos_token="<nope>")


def test_bundled_tokenizer_specials_and_size():
    vocab = HfTokenizerVocabulary(default_tokenizer_path())
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
    assert [vocab.token_to_id(s) for s in specials] == [0, 1, 2, 3, 4]
    assert vocab.vocab_size == 4096 and vocab.eos_id == 0 and vocab.pad_id == 0
    # Chat markers are single tokens, so rendered chats split cleanly at them.
    assert list(vocab.encode("<think>\n"))[:1] == [3]


def test_malformed_tokenizer_file_names_the_path(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=str(bad)):
        HfTokenizerVocabulary(bad)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        HfTokenizerVocabulary(tmp_path / "missing.json")


def test_sentencepiece_vocabulary_is_supported(tmp_path):
    import sentencepiece as spm

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(["the cat sat on the mat", "a dog ran in the park", "hello world again"] * 30))
    prefix = tmp_path / "sp"
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(prefix),
        vocab_size=40,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        model_type="unigram",
        minloglevel=2,
        hard_vocab_limit=False,
    )
    vocab = load_vocabulary(f"{prefix}.model")
    assert isinstance(vocab, seqio.SentencePieceVocabulary)
    reference = spm.SentencePieceProcessor(model_file=f"{prefix}.model")
    assert list(vocab.encode("the cat ran")) == reference.encode("the cat ran")
    # The data pipeline's tokenization works with it (segment-by-segment path).
    [(ids, weights)] = features.tokenize_segments(vocab, [[("the cat", False), ("sat on the mat", True)]])
    assert ids.tolist() == reference.encode("the cat") + reference.encode("sat on the mat")
    assert weights.tolist() == [0] * len(reference.encode("the cat")) + [1] * len(reference.encode("sat on the mat"))
