"""Mixtures from the config: `--config.data.sft_mixture='{spec: rate}'`, deterministic, resumable, reported."""

import json

import numpy as np
import pytest

from oyster_jax.models.config import ConfigError
from oyster_jax.train import batches, stage
from oyster_jax.train import config as config_lib

CHAT = [
    {"messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]}
    for i in range(40)
]


def _spec(tmp_path, overrides):
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in CHAT), encoding="utf-8")
    config = config_lib.base_config()
    config.mesh = "data=1,fsdp=1,tensor=1"
    config.sft.batch_size = 2
    config.sft.num_steps = 50
    config.data.seq_len = 64
    config_lib.apply_overrides(config, {k: v.replace("CHAT", str(path)) for k, v in overrides.items()})
    config_lib.validate(config)
    return stage.describe(config, "sft"), str(path)


def _same(a, b):
    return all(np.array_equal(a[k], b[k]) for k in a)


def test_mixture_from_the_command_line_resumes_exactly(tmp_path):
    # the issue's own example, names as written
    spec, path = _spec(tmp_path, {"data.sft_mixture": '{"CHAT": 0.85, "oyster_seed_general": 0.15}'})
    assert spec.data.mixture == ((path, 0.85), ("oyster_seed_general", 0.15))
    it = batches.make_train_iterator(spec)
    stream = [next(it) for _ in range(6)]
    resumed = batches.make_train_iterator(spec)
    again = batches.make_train_iterator(spec)
    assert all(_same(x, next(again)) for x in stream)  # deterministic
    first = batches.make_train_iterator(spec)
    for _ in range(3):
        next(first)
    state = json.loads(json.dumps(first.get_state()))  # what a checkpoint holds
    resumed.set_state(state)
    assert all(_same(x, next(resumed)) for x in stream[3:])  # resume == uninterrupted
    # the resolved mixture: rates, sizes, epochs; in the state a checkpoint saves, and printed at start-up
    report = batches.mixture_report(spec, it)
    assert [(m["source"], round(m["rate"], 6), m["examples"]) for m in report] == [
        (path, 0.85, 40),
        ("oyster_seed_general", 0.15, len(it.sources[1])),
    ]
    assert all(m["epochs"] > 0 for m in report) and state["mixture"][0]["source"] == path
    text = batches.format_mixture("sft", report)
    assert "85.0%" in text and path in text and "epochs" in text


def test_mixture_draws_follow_the_rates(tmp_path):
    spec, _ = _spec(tmp_path, {"data.sft_mixture": '{"CHAT": 1, "oyster_general_seed_sft": 3}'})
    it = batches.make_train_iterator(spec)
    for _ in range(200):
        next(it)
    consumed = np.asarray(it.get_state()["consumed"], float)
    assert abs(consumed[1] / consumed.sum() - 0.75) < 0.05


@pytest.mark.parametrize(
    "value, match",
    [
        ("{not json", "not a JSON object"),
        ('{"oyster_general_seed_sft": -1}', "must be a finite number >= 0"),
        ('{"oyster_general_seed_sft": 0}', "positive rate"),
        ('["x"]', "pairs"),
    ],
)
def test_bad_mixtures_name_the_key(value, match):
    config = config_lib.base_config()
    config_lib.apply_overrides(config, {"data.sft_mixture": value})
    with pytest.raises(ConfigError, match=f"config.data.sft_mixture.*{match}"):
        config_lib.validate(config)


def test_unknown_spec_in_a_mixture_is_a_data_error(tmp_path):
    spec, _ = _spec(tmp_path, {"data.sft_mixture": '{"no/such/file.jsonl": 1.0}'})
    with pytest.raises(batches.DataError, match="config.data.sft_mixture=.*no/such/file.jsonl.*hf:PATH"):
        batches.make_train_iterator(spec)


def test_mixture_flag_through_the_main_entry_point(tmp_path):
    from oyster_jax import main

    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in CHAT), encoding="utf-8")
    argv = ["--config", "tiny_csa", "--workdir", str(tmp_path / "w")]
    argv += [f'--config.data.sft_mixture={{"{path}": 0.85, "oyster_seed_general": 0.15}}']
    args, overrides = main.parse_args(argv)
    config = main.build_config(args.config, overrides)
    assert config_lib.parse_mixture(config.data.sft_mixture, "data.sft_mixture") == (
        (str(path), 0.85),
        ("oyster_seed_general", 0.15),
    )
