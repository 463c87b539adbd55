"""Conversion CLIs, Orbax model checkpoints and bad-input errors."""

import json
import re
import shutil
import struct

import numpy as np
import pytest
from hf_models import make_hf_model, save_hf_model

from oyster_jax import convert, models
from oyster_jax.convert import hf_to_orbax, orbax_to_hf
from oyster_jax.models import ConfigError


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
