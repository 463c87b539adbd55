"""Configs: one source of ModelConfig defaults, enum fields checked against the tables that use them (exit 2
naming the choices), and `python -m oyster_jax.main --print_config`."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tolerances import REMAT_VS_NO_REMAT_F32

from oyster_jax import main as main_lib
from oyster_jax import models
from oyster_jax.configs.sharding import RECIPES
from oyster_jax.core.chat import FORMATS
from oyster_jax.models.config import ATTENTION_IMPLS, DTYPES, REMAT_POLICIES, RUNTIME_FIELDS, ModelConfig
from oyster_jax.sharding.mesh import MESH_AXES
from oyster_jax.train import config as config_lib
from oyster_jax.train.losses import PREFERENCE_LOSSES

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_model_config_defaults_are_the_tiny_model():
    tiny = models.model_config_from_file("tiny")
    assert tiny == ModelConfig()
    assert not set(RUNTIME_FIELDS) & set(config_lib.load_config("tiny", "models"))  # an architecture only
    # By hand: per layer q, o 256x256, k, v 256x128, MLP 3 x 256x1024, two norms of 256, q/k norms of 64;
    # 4 layers, tied 4096x256 embedding, final norm 256.
    per_layer = 2 * 256 * 256 + 2 * 256 * 128 + 3 * 256 * 1024 + 2 * 256 + 2 * 64
    assert tiny.num_params() == 4 * per_layer + 4096 * 256 + 256 == 4_983_552
    assert (tiny.intermediate_size, tiny.rope_theta, tiny.max_position_embeddings) == (1024, 10_000.0, 2048)


def _expect_exit_2(capsys, override: str, choices) -> str:
    rc = main_lib.main(["--config", "tiny_csa", "--print_config", override])
    err = capsys.readouterr().err
    assert rc == 2, err
    for choice in choices:
        assert str(choice) in err, (override, choice, err)
    return err


@pytest.mark.parametrize(
    "override, choices",
    [
        ("--config.model.remat_policy=minimal", list(REMAT_POLICIES)),  # used to pass, then KeyError in the model
        ("--config.model.attention_impl=flash", ATTENTION_IMPLS),
        ("--config.model.dtype=float8", DTYPES),
        ("--config.model.param_dtype=int8", DTYPES),
        ("--config.model.arch=gpt2", ["llama", "qwen2", "qwen3"]),
        ("--config.pref.loss=kto", PREFERENCE_LOSSES),
        ("--config.pref.reference=online", config_lib.REFERENCES),
        ("--config.stages=sft,rl", config_lib.STAGES),
        ("--config.sharding=zero3", tuple(RECIPES)),
        ("--config.data.chat_format=llama2", tuple(FORMATS)),
        ("--config.mesh=data=1,pipeline=2", MESH_AXES),
    ],
)
def test_bad_enum_value_exits_2_naming_the_choices(capsys, override, choices):
    err = _expect_exit_2(capsys, override, choices)
    assert override.split("=", 1)[0].removeprefix("--config.").split(".")[-1] in err  # names the field


def test_remat_choices_are_exactly_the_table_the_model_reads():
    assert set(REMAT_POLICIES) == {"none", "full", "dots", "dots_no_batch"}
    for policy in REMAT_POLICIES.values():
        assert policy is None or callable(getattr(jax.checkpoint_policies, policy))


@pytest.mark.parametrize("scan_layers", [False, True])
def test_every_remat_policy_builds_and_gives_the_gradients_of_no_remat(scan_layers):
    base = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                       num_kv_heads=1, head_dim=16, scan_layers=scan_layers)  # fmt: skip
    params = models.init_params(base, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, base.vocab_size)

    def grads(cfg):
        loss = lambda p: jnp.mean(jax.nn.log_softmax(models.forward(cfg, p, tokens))[..., 0])
        return jax.grad(loss)(params)

    reference = grads(base)
    for name in REMAT_POLICIES:
        got = grads(base.replace(remat_policy=name))
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(reference), strict=True):
            np.testing.assert_allclose(a, b, rtol=REMAT_VS_NO_REMAT_F32, atol=REMAT_VS_NO_REMAT_F32, err_msg=name)


def test_print_config_prints_the_resolved_config_without_a_workdir(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = main_lib.main(["--config", "tiny_csa", "--print_config", "--config.pref.loss=dpo", "--config.seed", "7"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    printed = json.loads(out)
    expected = config_lib.load_experiment(REPO / "configs" / "experiments" / "tiny_csa.py")  # by path
    config_lib.apply_overrides(expected, {"pref.loss": "dpo", "seed": "7"})
    assert printed == config_lib.to_dict(expected)
    assert (printed["pref"]["loss"], printed["seed"], printed["model"]["intermediate_size"]) == ("dpo", 7, 1024)
    assert list(tmp_path.iterdir()) == []  # nothing written: no workdir, no run


def test_workdir_is_required_to_train(capsys):
    with pytest.raises(SystemExit) as e:
        main_lib.main(["--config", "tiny_csa"])
    assert e.value.code == 2 and "--workdir" in capsys.readouterr().err


def test_unknown_bundled_config_name_exits_2_with_close_matches(capsys):
    rc = main_lib.main(["--config", "tiny_cs", "--print_config"])
    err = capsys.readouterr().err
    assert rc == 2 and "did you mean tiny_csa" in err and "qwen3_14b_sft" in err
