"""The wheel: built from this checkout, installed into an empty directory and used from outside the checkout,
with only that directory on PYTHONPATH (the dependencies come from this interpreter's site-packages).

A bundled experiment trains by name (`--config tiny_csa`), and every sharding recipe, model config and
experiment of the repository's configs/ resolves by name to what the checkout's files define."""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest

from oyster_jax.configs.sharding import RECIPES
from oyster_jax.models import model_config_from_file
from oyster_jax.sharding import resolve_rules
from oyster_jax.train import config as config_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
SOURCES = ("setup.py", "pyproject.toml", "README.md", "LICENSE", "oyster_jax", "configs")


def _bundled(group: str) -> list[str]:
    return sorted(p.stem for p in (REPO / "configs" / group).glob("*.py") if not p.name.startswith("_"))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(target dir, a working directory outside the checkout): the wheel built and installed, offline."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"  # a copy, so the build leaves no build/ or egg-info in the checkout
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    run = dict(capture_output=True, text=True, timeout=600)
    offline = ["--no-index", "--no-deps"]
    built = subprocess.run([*pip, "wheel", *offline, "--no-build-isolation", "-w", root / "dist", src], **run)
    assert built.returncode == 0, built.stderr
    [wheel] = (root / "dist").glob("oyster_jax-*.whl")
    target = root / "target"
    done = subprocess.run([*pip, "install", *offline, "--target", target, wheel], **run)
    assert done.returncode == 0, done.stderr
    outside = root / "elsewhere"
    outside.mkdir()
    return target, outside


def _env(target: pathlib.Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OYSTER_DATA_DIR")}
    return env | {"PYTHONPATH": str(target), "JAX_PLATFORMS": "cpu"}


def test_wheel_holds_the_configs_license_and_metadata(installed):
    target, _ = installed
    for group in ("models", "experiments"):
        assert sorted(p.stem for p in (target / "oyster_jax" / "configs" / group).glob("[!_]*.py")) == _bundled(group)
    assert (target / "oyster_jax" / "configs" / "sharding.py").is_file()
    assert (target / "oyster_jax" / "data" / "seed" / "tokenizer.json").is_file()
    [dist_info] = target.glob("oyster_jax-*.dist-info")
    assert "Apache License" in next(dist_info.rglob("LICENSE")).read_text()
    metadata = (dist_info / "METADATA").read_text()
    assert "License: Apache-2.0" in metadata or "License-Expression: Apache-2.0" in metadata
    assert "Home-page: https://" in metadata and "Classifier: Programming Language :: Python :: 3.11" in metadata
    assert "# oyster_jax" in metadata  # the README is the long description


# Run with only the target on PYTHONPATH, from outside the checkout: everything by name, as JSON.
RESOLVE = textwrap.dedent(
    """
    import importlib.util, json, sys
    import oyster_jax, oyster_jax.configs
    from oyster_jax.models import model_config_from_file
    from oyster_jax.models.config import bundled_configs
    from oyster_jax.sharding import resolve_rules
    from oyster_jax.train import config as config_lib
    from oyster_jax.configs.sharding import RECIPES

    experiments = {}
    for name in bundled_configs("experiments"):
        cfg = config_lib.load_experiment(name)
        config_lib.validate(cfg)
        experiments[name] = config_lib.to_dict(cfg)
    print(json.dumps({
        "files": [oyster_jax.__file__, oyster_jax.configs.__file__],
        "repo_configs_importable": importlib.util.find_spec("configs") is not None,
        "recipes": {name: resolve_rules(name) for name in RECIPES},
        "models": {name: model_config_from_file(name).to_dict() for name in bundled_configs("models")},
        "experiments": experiments,
    }))
    """
)


def test_every_bundled_config_resolves_by_name_from_the_wheel(installed):
    target, outside = installed
    proc = subprocess.run(
        [sys.executable, "-c", RESOLVE], cwd=outside, env=_env(target), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(pathlib.Path(f).is_relative_to(target) for f in got["files"]), got["files"]
    assert not got["repo_configs_importable"]
    # Independent of the wheel: what the checkout's own files give when loaded by path.
    assert got["recipes"] == json.loads(json.dumps({name: resolve_rules(name) for name in RECIPES}))
    assert sorted(got["recipes"]) == ["data_parallel", "fsdp_tp"]
    assert sorted(got["models"]) == _bundled("models")
    for name, fields in got["models"].items():
        assert fields == model_config_from_file(REPO / "configs" / "models" / f"{name}.py").to_dict(), name
    assert sorted(got["experiments"]) == _bundled("experiments")
    for name, fields in got["experiments"].items():
        assert fields == config_lib.to_dict(config_lib.load_experiment(REPO / "configs" / "experiments" / f"{name}.py"))


def test_installed_main_trains_a_bundled_experiment_by_name(installed):
    target, outside = installed
    workdir = outside / "W"
    args = ["--config", "tiny_csa", "--workdir", str(workdir), "--no_progress", "--config.stages=sft"]
    args += ["--config.sft.num_steps=2", "--config.sft.batch_size=2", "--config.data.seq_len=64"]
    args += ["--config.peak_tflops=1"]  # no roofline measurement: MFU is not under test
    env = {k: v for k, v in _env(target).items() if k != "CUDA_VISIBLE_DEVICES"}
    main = [sys.executable, "-m", "oyster_jax.main", *args]
    proc = subprocess.run(main, cwd=outside, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "sft: done at step 2" in proc.stdout
    steps = [json.loads(line)["step"] for line in (workdir / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2] and (workdir / "sft" / "DONE.json").is_file()
