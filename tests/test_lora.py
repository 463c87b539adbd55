"""LoRA (models.lora, config.lora): PEFT loads our adapters and we load PEFT's, merged export, the DPO/IPO
reference with the adapters off, exact resume, a different base refused."""

import json
import signal
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from oyster_jax import convert, models
from oyster_jax.convert import orbax_to_hf
from oyster_jax.models import lora
from oyster_jax.train import WorkdirMismatchError, train
from oyster_jax.train import stage as stage_lib
from oyster_jax.train import step as step_lib
from tests import tolerances as tol
from tests.hf_models import hf_logits, make_hf_model, save_hf_model
from tests.test_train_trainer import _cli, _env, _wait_for_step, micro_config

TOKENS = np.array([[3, 17, 42, 8, 99, 5, 61, 23, 7, 11], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]], np.int32)


def _random_adapters(cfg, params, seed=1, scale=0.2):
    """Base + adapters with every A and B random (a fresh B is zero, which would test nothing)."""
    base, adapters = lora.split(params)
    leaves, treedef = jax.tree.flatten(adapters)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    new = [scale * jax.random.normal(k, x.shape, jnp.float32) for k, x in zip(keys, leaves)]
    return lora.merge(base, jax.tree.unflatten(treedef, new))


def _peft_model(hf_dir, adapter_dir):
    import peft
    import transformers

    base = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="eager").eval()
    return peft.PeftModel.from_pretrained(base, adapter_dir).eval()


@pytest.mark.parametrize(
    "kind,targets,scan",
    [
        ("qwen3_gqa_tied", "q,k,v,o,gate,up,down", False),
        ("qwen2_gqa_untied", "q,v,down", True),  # biases on q, k, v; some targets only; scanned layers
        ("llama3_gqa_untied", "o,gate,up", False),
    ],
)
def test_peft_loads_our_adapter_and_logits_match(tmp_path, kind, targets, scan):
    hf_dir = save_hf_model(make_hf_model(kind), tmp_path / "hf")
    base_cfg, base = convert.from_hf(hf_dir, scan_layers=scan)
    cfg = base_cfg.replace(lora=models.LoraConfig(rank=4, alpha=8.0, targets=targets))
    params = _random_adapters(cfg, lora.merge(base, lora.split(models.init_params(cfg, jax.random.key(0)))[1]))
    ours = np.asarray(models.forward(cfg, params, TOKENS))
    assert np.max(np.abs(ours - np.asarray(models.forward(base_cfg, base, TOKENS)))) > 0.1  # adapters matter

    out = convert.to_peft(cfg, params, tmp_path / "adapter", base_model_name_or_path=str(hf_dir))
    theirs = hf_logits(_peft_model(hf_dir, out), TOKENS)
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=tol.HF_LOGITS_F32)

    # The merged export: base + (alpha/r)·A·B folded in, in our forward and in transformers.
    merged = lora.merged_weights(cfg, params)
    np.testing.assert_allclose(
        np.asarray(models.forward(base_cfg, merged, TOKENS)), ours, rtol=0, atol=tol.HF_LOGITS_F32
    )
    convert.to_hf(cfg, params, tmp_path / "merged", tokenizer=False)
    import transformers

    hf_merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged", attn_implementation="eager")
    np.testing.assert_allclose(hf_logits(hf_merged.eval(), TOKENS), ours, rtol=0, atol=tol.HF_LOGITS_F32)


@pytest.mark.parametrize("rslora", [False, True])
def test_adapter_made_by_peft_imports_and_matches(tmp_path, rslora):
    import peft

    hf_dir = save_hf_model(make_hf_model("qwen3_bias_untied"), tmp_path / "hf")
    model = make_hf_model("qwen3_bias_untied")
    conf = peft.LoraConfig(
        r=3,
        lora_alpha=5,
        target_modules=["q_proj", "k_proj", "o_proj", "up_proj", "down_proj"],
        init_lora_weights=False,  # random B too: the adapter changes the output
        use_rslora=rslora,
        task_type="CAUSAL_LM",
    )
    pm = peft.get_peft_model(model, conf).eval()
    pm.save_pretrained(tmp_path / "adapter")
    want = hf_logits(pm, TOKENS)

    cfg, params = convert.from_peft(hf_dir, tmp_path / "adapter")
    assert cfg.lora.rank == 3 and cfg.lora.targets == ("q", "k", "o", "up", "down")
    np.testing.assert_allclose(np.asarray(models.forward(cfg, params, TOKENS)), want, rtol=0, atol=tol.HF_LOGITS_F32)
    # Our writer uses the very names peft wrote.
    from safetensors.numpy import load_file

    theirs = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    mine = convert.peft.peft_tensors(cfg, params)
    assert sorted(mine) == sorted(theirs)
    for k in theirs:
        np.testing.assert_allclose(mine[k], theirs[k], rtol=0, atol=1e-7, err_msg=k)


def test_all_linear_bf16_peft_adapter_on_a_tied_mqa_llama_imports_and_matches(tmp_path):
    """PEFT's "all-linear" shorthand (every decoder projection, not the tied head) with its tensors saved in
    bfloat16: the targets come from the tensor names, and bf16 is read exactly."""
    import peft
    import torch

    hf_dir = save_hf_model(make_hf_model("llama3_mqa_tied"), tmp_path / "hf")
    conf = peft.LoraConfig(r=2, lora_alpha=7, lora_dropout=0.1, target_modules="all-linear", init_lora_weights=False,
                           task_type="CAUSAL_LM")  # fmt: skip
    pm = peft.get_peft_model(make_hf_model("llama3_mqa_tied"), conf).eval()
    for name, p in pm.named_parameters():
        if "lora_" in name:
            p.data = p.data.to(torch.bfloat16)
    pm.save_pretrained(tmp_path / "adapter")
    want = hf_logits(pm.float(), TOKENS)  # the bf16 values, computed in f32 as ours are

    cfg, params = convert.from_peft(hf_dir, tmp_path / "adapter")
    assert cfg.lora.targets == ("q", "k", "v", "o", "gate", "up", "down") and cfg.lora.dropout == 0.1
    np.testing.assert_allclose(np.asarray(models.forward(cfg, params, TOKENS)), want, rtol=0, atol=tol.HF_LOGITS_F32)


def test_peft_adapter_with_dora_is_refused_naming_the_field(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "use_dora": True, "r": 4}))
    cfg = models.ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=1, num_heads=2,
                             num_kv_heads=1, head_dim=16)  # fmt: skip
    with pytest.raises(convert.CheckpointFormatError, match="use_dora"):
        convert.peft.read_peft(cfg, tmp_path / "a")


@pytest.mark.parametrize("loss", ["dpo", "ipo"])
def test_lora_reference_equals_a_frozen_copy_reference(loss):
    """The DPO/IPO reference of a LoRA run is the forward with the adapters off: the same values as a frozen,
    separately held copy of the base model (as a full fine-tune would keep), for loss and gradients."""
    cfg = models.ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=2,
                             num_kv_heads=1, head_dim=16, lora=models.LoraConfig(rank=4))  # fmt: skip
    params = _random_adapters(cfg, models.init_params(cfg, jax.random.key(0)))
    base, adapters = lora.split(params)
    rng = np.random.default_rng(0)
    P, T = 2, 12
    tokens = rng.integers(1, 64, size=(P, 2, T)).astype(np.int32)
    mask = np.zeros((P, 2, T), np.float32)
    mask[:, :, 6:] = 1
    mb = {
        "tokens": tokens,
        "completion_mask": mask,
        "segment_ids": np.ones((P, 2, T), np.int32),
        "positions": np.broadcast_to(np.arange(T, dtype=np.int32), (P, 2, T)).copy(),
    }
    hp = stage_lib.Hyper(loss_name=loss, num_steps=1, batch_size=P, microbatches=1, learning_rate=1e-3,
                         warmup_steps=0, min_lr_ratio=0.1, weight_decay=0.0, b1=0.9, b2=0.95, eps=1e-8,
                         grad_clip=0.0, logits_chunk=0, beta=0.2)  # fmt: skip
    totals = step_lib._batch_totals(hp, mb)

    def with_adapters_off(ad):
        return step_lib.pref_microbatch_loss(cfg, hp, lora.merge(base, ad), mb, totals, 1, ref_params=base)

    copy_cfg = lora.without_adapters(cfg)  # a plain model with its own copy of the weights
    frozen_copy = jax.tree.map(jnp.array, base)
    sums, counts = step_lib.pair_logprobs(copy_cfg, frozen_copy, mb)
    ref = sums / jnp.maximum(counts, 1.0) if loss == "ipo" else sums

    def with_copy(ad):
        return step_lib.pref_microbatch_loss(cfg, hp, lora.merge(base, ad), dict(mb, ref_logps=ref), totals, 1)

    (la, ma), ga = jax.value_and_grad(with_adapters_off, has_aux=True)(adapters)
    (lb, mb_), gb = jax.value_and_grad(with_copy, has_aux=True)(adapters)
    np.testing.assert_allclose(float(la), float(lb), rtol=0, atol=1e-6)
    for k in ma:
        np.testing.assert_allclose(float(ma[k]), float(mb_[k]), rtol=0, atol=1e-6, err_msg=k)
    for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=1e-6)
    assert float(optax_norm(ga)) > 0


def optax_norm(tree):
    return jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree.leaves(tree)))


def _micro_hf(tmp_path):
    """A transformers model of the trainer tests' micro architecture, saved as the LoRA runs' base."""
    model = make_hf_model("qwen3_gqa_tied", vocab_size=256, hidden_size=32, intermediate_size=64,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=16)  # fmt: skip
    return save_hf_model(model, tmp_path / "base_hf")


@pytest.mark.parametrize("loss", ["orpo", "dpo", "ipo", "simpo"])
def test_every_trainer_trains_only_the_adapters(tmp_path, loss):
    hf_dir = _micro_hf(tmp_path)
    extra = {"lora.rank": 4, "init_from": str(hf_dir), "sft.num_steps": 2, "pref.num_steps": 2, "pref.loss": loss}
    extra["stages"] = "pref"
    if loss == "dpo":  # SFT then DPO on the SFT adapters, with adapter dropout, accumulation and a bf16 base
        extra |= {"stages": "sft,pref", "lora.dropout": 0.1, "pref.microbatches": 2, "lora.base_dtype": "bfloat16"}
    results = train(micro_config(**extra), tmp_path / "w", progress=False)
    _, base = convert.from_hf(hf_dir)
    for stage in results:
        r = results[stage]
        assert np.isfinite(r.final_metrics["loss"])
        got_base, got_adapters = lora.split(r.params)
        want_base = base if loss != "dpo" else jax.tree.map(lambda x: x.astype(jnp.bfloat16), base)
        for x, y in zip(jax.tree.leaves(got_base), jax.tree.leaves(want_base)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # the base never moves
        assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(got_adapters))
        assert max(float(jnp.max(jnp.abs(b))) for b in jax.tree.leaves(got_adapters) if b.shape[0] == 4) > 0
    # The checkpoint holds adapters (and their Adam moments) only.
    step = tmp_path / "w" / "pref" / "checkpoints" / "2"
    import orbax.checkpoint as ocp
    from etils import epath

    from oyster_jax.convert.checkpoint import saved_shape_problems

    adapters = lora.split(models.abstract_params(results["pref"].model_config))[1]
    assert not saved_shape_problems(step / "params", adapters)  # exactly the adapters, no base tensor
    n_adapter = sum(x.size for x in jax.tree.leaves(adapters))
    opt = ocp.StandardCheckpointHandler().metadata(epath.Path(step / "train_state"))
    n_opt = sum(int(np.prod(m.shape)) for m in jax.tree.leaves(opt["opt_state"]))
    assert 2 * n_adapter <= n_opt < 2 * n_adapter + 100  # Adam's two moments of the adapters, and counters


def test_adapter_export_loads_in_peft_and_merged_export_in_transformers(tmp_path):
    import transformers

    hf_dir = _micro_hf(tmp_path)
    config = micro_config(**{"stages": "sft", "sft.num_steps": 3, "lora.rank": 4, "init_from": str(hf_dir)})
    r = train(config, tmp_path / "w", progress=False)["sft"]
    tokens = TOKENS % 256
    ours = np.asarray(models.forward(r.model_config, r.params, tokens))
    assert (
        orbax_to_hf.main(["--ckpt", str(tmp_path / "w" / "sft"), "--out", str(tmp_path / "ad"), "--adapter_only"]) == 0
    )
    assert json.loads((tmp_path / "ad" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(hf_dir)
    np.testing.assert_allclose(hf_logits(_peft_model(hf_dir, tmp_path / "ad"), tokens), ours, atol=tol.HF_LOGITS_F32)
    assert orbax_to_hf.main(["--ckpt", str(tmp_path / "w"), "--out", str(tmp_path / "m"), "--no_tokenizer"]) == 0
    merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m", attn_implementation="eager").eval()
    np.testing.assert_allclose(hf_logits(merged, tokens), ours, rtol=0, atol=tol.HF_LOGITS_F32)


def test_adapter_only_of_a_full_checkpoint_exits_2(tmp_path, capfd):
    train(micro_config(**{"stages": "sft", "sft.num_steps": 1}), tmp_path / "w", progress=False)
    with pytest.raises(SystemExit) as e:
        orbax_to_hf.main(["--ckpt", str(tmp_path / "w" / "sft"), "--out", str(tmp_path / "ad"), "--adapter_only"])
    assert e.value.code == 2
    assert "not a LoRA trainer stage" in capfd.readouterr().err


def test_resume_refuses_another_base_naming_it(tmp_path):
    hf_dir = _micro_hf(tmp_path)
    work = tmp_path / "w"
    train(micro_config(**{"stages": "sft", "sft.num_steps": 2, "lora.rank": 4}), work, progress=False)
    (work / "sft" / "DONE.json").unlink()
    more = {"stages": "sft", "sft.num_steps": 4, "lora.rank": 4}
    with pytest.raises(WorkdirMismatchError, match="random init, seed 0") as e:
        train(micro_config(**more, init_from=str(hf_dir)), work, progress=False)
    assert str(hf_dir) in str(e.value)
    from oyster_jax import main as main_lib

    args = _cli(work, init_from=str(hf_dir), **more)[3:]  # the command line, without `python -m oyster_jax.main`
    assert main_lib.main(args) == 2


def test_lora_resume_after_sigkill_is_bit_identical(tmp_path):
    common = {"stages": "sft", "sft.num_steps": "8", "throttle_seconds": "0.5", "lora.rank": "4", "lora.dropout": "0.1"}
    env = _env()
    reference = subprocess.run(_cli(tmp_path / "ref", **common), env=env, capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr
    work = tmp_path / "killed"
    proc = subprocess.Popen(_cli(work, **common), env=env, stderr=subprocess.PIPE, text=True)
    _wait_for_step(work / "sft" / "checkpoints", 4, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (work / "sft" / "DONE.json").exists()
    finish = subprocess.run(_cli(work, **common), env=env, capture_output=True, text=True)
    assert finish.returncode == 0, finish.stderr
    assert "resumed from step" in finish.stderr
    _, got, _ = convert.load_lora_stage(work / "sft")
    _, want, _ = convert.load_lora_stage(tmp_path / "ref" / "sft")
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


@pytest.mark.real_model
def test_peft_loads_our_adapter_on_the_real_smollm2(tmp_path):
    import torch
    import transformers

    from oyster_jax.convert import fetch

    name = "smollm2-135m-instruct"
    model_dir = fetch.default_dir(name)
    if not fetch.is_fetched(model_dir, name):
        msg = f"{model_dir}: real model not fetched; run `make real-model`"
        if __import__("os").environ.get("OYSTER_REQUIRE_REAL_MODEL") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    base_cfg, base = convert.from_hf(model_dir, scan_layers=True)
    cfg = base_cfg.replace(lora=models.LoraConfig(rank=8, alpha=16.0))
    fresh = lora.split(models.init_params(cfg, jax.random.key(0)))[1]
    params = _random_adapters(cfg, lora.merge(base, fresh), scale=0.05)
    tokens = np.array([[1, 9690, 314, 253, 5356, 30, 2, 198, 1681, 288]], np.int32)
    ours = np.asarray(models.forward(cfg, params, tokens))
    assert np.max(np.abs(ours - np.asarray(models.forward(base_cfg, base, tokens)))) > 0.1
    out = convert.to_peft(cfg, params, tmp_path / "adapter", base_model_name_or_path=str(model_dir))
    import peft

    hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    theirs = hf_logits(peft.PeftModel.from_pretrained(hf, out).eval(), tokens)
    assert np.max(np.abs(theirs - ours)) <= tol.HF_LOGITS_F32
