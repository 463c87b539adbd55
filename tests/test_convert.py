"""Conversion CLIs, Orbax model checkpoints and bad-input errors."""

import json
import re
import shutil
import struct

import jax
import numpy as np
import pytest
import tokenizers
from eval_fakes import TINY_CHAT_CFG, random_params
from hf_models import make_hf_model, save_hf_model

from oyster_jax import convert, models
from oyster_jax.convert import hf_to_orbax, orbax_to_hf
from oyster_jax.models import ConfigError
from oyster_jax.train.checkpoint import Checkpointer


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return save_hf_model(make_hf_model("qwen3_gqa_tied"), tmp_path_factory.mktemp("conv") / "hf")


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_cli_round_trip_hf_orbax_hf(hf_dir, tmp_path, capsys):
    assert hf_to_orbax.main(["--hf_dir", str(hf_dir), "--out", str(tmp_path / "ckpt")]) == 0
    assert (tmp_path / "ckpt" / "model_config.json").exists()
    args = ["--ckpt", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf_out"), "--no_tokenizer"]  # 101-id vocabulary
    assert orbax_to_hf.main(args) == 0
    assert "wrote" in capsys.readouterr().out
    cfg0, p0 = convert.from_hf(hf_dir)
    cfg1, p1 = convert.from_hf(tmp_path / "hf_out")
    assert cfg0 == cfg1
    tokens = np.arange(12)[None] % cfg0.vocab_size
    np.testing.assert_array_equal(models.forward(cfg0, p0, tokens), models.forward(cfg1, p1, tokens))


def test_bf16_export_halves_size_and_loads(hf_dir, tmp_path):
    import transformers

    cfg, params = convert.from_hf(hf_dir)
    out = convert.to_hf(cfg, params, tmp_path / "bf16", dtype="bfloat16", tokenizer=False)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    total = json.loads((out / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
    assert total == 2 * cfg.num_params()
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert str(model.dtype) == "torch.bfloat16"


def test_failed_export_keeps_previous_output(hf_dir, tmp_path):
    cfg, params = convert.from_hf(hf_dir)
    out = convert.to_hf(cfg, params, tmp_path / "export", tokenizer=False)
    before = sorted(p.name for p in out.iterdir())
    broken = dict(params, norm={"scale": np.zeros(3, np.float32)})  # wrong shape: the write must fail
    with pytest.raises(ValueError, match=r"model.norm.weight.*\[3\].*\[48\]"):
        convert.to_hf(cfg, broken, tmp_path / "export", tokenizer=False)
    assert sorted(p.name for p in out.iterdir()) == before
    convert.from_hf(out)  # still loads


def test_unsupported_architecture(hf_dir, tmp_path):
    d = _copy(hf_dir, tmp_path / "m")
    c = json.loads((d / "config.json").read_text())
    c["architectures"] = ["MixtralForCausalLM"]
    c["model_type"] = "mixtral"
    (d / "config.json").write_text(json.dumps(c))
    with pytest.raises(ConfigError, match="MixtralForCausalLM"):
        convert.from_hf(d)


def _rewrite_tensors(src, dst, edit):
    """Copy an HF dir, letting `edit(dict name->array)` change the tensors of its one safetensors file."""
    from oyster_jax.convert.safetensors_io import SafetensorsFile, write_file

    d = _copy(src, dst)
    f = d / "model.safetensors"
    sf = SafetensorsFile(f)
    tensors = {k: np.array(sf.get(k)) for k in sf.keys()}
    del sf
    edit(tensors)
    write_file(f, tensors.items())
    return d


def test_missing_tensor_is_named(hf_dir, tmp_path):
    d = _rewrite_tensors(hf_dir, tmp_path / "m", lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(
        convert.CheckpointFormatError, match=r"missing tensors: \['model.layers.1.mlp.up_proj.weight'\]"
    ):
        convert.from_hf(d)


def test_extra_tensor_is_named(hf_dir, tmp_path):
    def add(t):
        t["model.layers.0.self_attn.rotary_extra"] = np.zeros(4, np.float32)

    d = _rewrite_tensors(hf_dir, tmp_path / "m", add)
    with pytest.raises(convert.CheckpointFormatError, match="unexpected tensors.*rotary_extra"):
        convert.from_hf(d)


def test_shape_mismatch_names_tensor_and_both_shapes(hf_dir, tmp_path):
    def shrink(t):
        t["model.layers.0.mlp.gate_proj.weight"] = t["model.layers.0.mlp.gate_proj.weight"][:-1]

    d = _rewrite_tensors(hf_dir, tmp_path / "m", shrink)
    with pytest.raises(convert.CheckpointFormatError) as e:
        convert.from_hf(d)
    msg = str(e.value)
    assert "model.layers.0.mlp.gate_proj.weight" in msg
    assert re.search(r"\[79, 48\].*\[80, 48\]", msg), msg


def test_pickle_checkpoints_are_refused(hf_dir, tmp_path):
    d = tmp_path / "pickled"
    d.mkdir()
    shutil.copy(hf_dir / "config.json", d)
    (d / "pytorch_model.bin").write_bytes(b"not opened: we refuse before reading")
    with pytest.raises(convert.CheckpointFormatError, match="never unpickles.*safetensors"):
        convert.from_hf(d)


def test_corrupt_safetensors_header_names_file(hf_dir, tmp_path):
    d = _copy(hf_dir, tmp_path / "m")
    f = d / "model.safetensors"
    f.write_bytes(struct.pack("<Q", 10) + b"{not json}")
    with pytest.raises(convert.CheckpointFormatError, match="model.safetensors"):
        convert.from_hf(d)


def test_every_config_file_loads():
    import pathlib

    files = sorted(p for p in pathlib.Path("configs/models").glob("*.py") if not p.name.startswith("_"))
    assert len(files) >= 8
    expected_billions = {"qwen3_14b": 14.8, "qwen3_8b": 8.2, "llama3_1_8b": 8.0, "ds_r1_distill_qwen_14b": 14.8}
    for f in files:
        assert f.read_text().startswith('"""'), f"{f} needs a docstring saying what it is for"
        cfg = models.model_config_from_file(f)
        assert models.ModelConfig.from_hf_config(cfg.to_hf_config()).replace(param_dtype=cfg.param_dtype) == cfg, f
        if f.stem in expected_billions:
            assert abs(cfg.num_params() / 1e9 - expected_billions[f.stem]) < 0.1, (f, cfg.num_params())
    tiny = models.model_config_from_file("tiny")
    assert 4.9e6 < tiny.num_params() < 5.1e6


# ------------------------------------------------------------------------------------------------
# open_model: one entry for HF dirs, Orbax checkpoints and trainer workdirs
# ------------------------------------------------------------------------------------------------
def _word_tokenizer(path, n_ids):
    """A tokenizer.json with `n_ids` ids, written by the tokenizers library itself."""
    vocab = {f"w{i}": i for i in range(n_ids - 1)} | {"[UNK]": n_ids - 1}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def _assert_same_params(a, b):
    fa, fb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in fa] == [p for p, _ in fb]
    for (path, x), (_, y) in zip(fa, fb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))


def test_open_model_hf_dir_and_tokenizer_checks(hf_dir, tmp_path):
    d = _copy(hf_dir, tmp_path / "hf")
    ref_cfg, ref_params = convert.from_hf(hf_dir)
    with pytest.raises(FileNotFoundError, match=r"tokenizer.json not found .*pass the tokenizer"):
        convert.open_model(d)
    _word_tokenizer(d / "tokenizer.json", ref_cfg.vocab_size)
    assert convert.checkpoint_format(d) == "hf"
    cfg, params, tok = convert.open_model(d)
    assert cfg == ref_cfg and tok.get_vocab_size() == ref_cfg.vocab_size
    _assert_same_params(params, ref_params)
    # Placed on the device once, not left as host arrays that every jitted call would copy again.
    assert all(isinstance(a, jax.Array) for a in jax.tree.leaves(params))
    assert tok.encode("w3 w5 zzz").ids == [3, 5, ref_cfg.vocab_size - 1]
    # A tokenizer with more ids than the model's embedding is refused, naming the file.
    big = _word_tokenizer(tmp_path / "big" / "tokenizer.json", ref_cfg.vocab_size + 1)
    with pytest.raises(ValueError, match=rf"{big}: tokenizer has {ref_cfg.vocab_size + 1} ids"):
        convert.open_model(d, tokenizer=big)
    with pytest.raises(FileNotFoundError, match="the tokenizer passed"):
        convert.open_model(d, tokenizer=tmp_path / "nowhere.json")
    (tmp_path / "garbage.json").write_text("{not a tokenizer")
    with pytest.raises(ValueError, match="garbage.json: not a valid tokenizer.json"):
        convert.open_model(d, tokenizer=tmp_path / "garbage.json")


def test_open_model_orbax_checkpoint(hf_dir, tmp_path):
    ref_cfg, ref_params = convert.from_hf(hf_dir)
    ckpt = convert.save_model(tmp_path / "ckpt", ref_cfg, ref_params)
    tok_dir = _word_tokenizer(tmp_path / "tok" / "tokenizer.json", 50).parent
    assert convert.checkpoint_format(ckpt) == "orbax"
    cfg, params, tok = convert.open_model(ckpt, tokenizer=tok_dir)  # a folder holding tokenizer.json
    assert cfg == ref_cfg and tok.get_vocab_size() == 50
    _assert_same_params(params, ref_params)
    _word_tokenizer(tmp_path / "tokenizer.json", 60)  # beside the checkpoint, as LocalJaxBackend always allowed
    assert convert.open_model(ckpt)[2].get_vocab_size() == 60


def _trainer_stage(stage_dir, cfg, steps):
    """A stage folder written by the trainer's own Checkpointer: {step: params}, plus model_config.json."""
    ckpt = Checkpointer(stage_dir / "checkpoints", keep=10, async_save=False)
    for step, params in steps.items():
        ckpt.save(step, {"params": params, "step": np.int32(step)}, {"position": step}, {"stages": "x"})
    ckpt.close()
    (stage_dir / "model_config.json").write_text(cfg.to_json())
    return stage_dir


def test_open_model_trainer_workdir(tmp_path, caplog):
    cfg = TINY_CHAT_CFG
    p = {seed: random_params(cfg, seed) for seed in (1, 2, 3)}
    w = tmp_path / "W"
    _trainer_stage(w / "sft", cfg, {5: p[1], 10: p[2]})
    _trainer_stage(w / "pref", cfg, {4: p[3]})
    (w / "config.json").write_text(json.dumps({"stages": "sft,pref", "seed": 0}))
    tok_file = _word_tokenizer(w / "pref" / "tokenizer" / "tokenizer.json", 100)
    assert convert.checkpoint_format(w) == "trainer_workdir"
    assert (
        convert.checkpoint_format(w / "sft") == convert.checkpoint_format(w / "sft" / "checkpoints") == "trainer_stage"
    )

    # W: the last stage of the run, its newest checkpoint, and the tokenizer the stage carries.
    got_cfg, params, tok = convert.open_model(w)
    assert got_cfg == cfg and tok.get_vocab_size() == 100
    _assert_same_params(params, p[3])
    assert convert.find_tokenizer(w) == tok_file

    # W/sft: newest step; that stage carries no tokenizer, so one must be passed.
    with pytest.raises(FileNotFoundError, match=r"W/sft/tokenizer/tokenizer.json, .*; pass the tokenizer"):
        convert.open_model(w / "sft")
    _, params, _ = convert.open_model(w / "sft", tokenizer=tok_file)
    _assert_same_params(params, p[2])
    _, params, _ = convert.open_model(w / "sft" / "checkpoints", tokenizer=tok_file)
    _assert_same_params(params, p[2])

    # A newest step that does not restore is skipped (and left in place): the previous one is the model.
    for f in (w / "sft" / "checkpoints" / "10" / "params").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "metadata" not in f.name:
            f.write_bytes(b"\0" * 7)
    with caplog.at_level("WARNING"):
        _, params, _ = convert.open_model(w / "sft", tokenizer=tok_file)
    _assert_same_params(params, p[1])
    assert "could not be restored" in caplog.text and (w / "sft" / "checkpoints" / "10").is_dir()

    # Without the experiment config, two stages are ambiguous: the error names them.
    (w / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"stages pref, sft; pass .*W/<stage>"):
        convert.open_model(w)
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        convert.checkpoint_format(tmp_path)
