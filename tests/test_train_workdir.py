"""Workdirs that are URLs (gs://, as launch/tpu_pod.sh passes) stay URLs, and metrics reach them.

No object store is reachable from CI, so the remote path of the metrics writer is exercised by telling it a
local directory is remote: it then stages locally and copies up, exactly the code a gs:// directory runs.
"""

import json
import os

import pytest

from oyster_jax.train import metrics as metrics_lib
from oyster_jax.train import workdir as workdir_lib


@pytest.mark.parametrize("url", ["gs://bucket/runs/sft", "s3://b/x"])
def test_urls_are_not_turned_into_local_paths(url):
    path = workdir_lib.resolve(url)
    assert str(path) == url
    assert str(path / "sft" / "checkpoints") == url + "/sft/checkpoints"
    assert workdir_lib.is_remote(path / "sft")


def test_local_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = workdir_lib.resolve("runs/x")
    assert os.fspath(path) == str(tmp_path / "runs" / "x")
    assert not workdir_lib.is_remote(path)


def test_move_aside_keeps_the_contents(tmp_path):
    stage = tmp_path / "sft"
    stage.mkdir()
    (stage / "model_config.json").write_text("{}")
    moved = workdir_lib.move_aside(workdir_lib.resolve(stage), "old")
    assert not stage.exists()
    assert moved.name.startswith("sft.old-")
    assert (moved / "model_config.json").read_text() == "{}"


def _steps(path):
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def test_remote_metrics_are_staged_and_copied_up(tmp_path, monkeypatch):
    remote = tmp_path / "bucket" / "sft"
    monkeypatch.setattr(workdir_lib, "is_remote", lambda p: str(p).startswith(str(tmp_path / "bucket")))

    writer = metrics_lib.MetricsWriter(remote, sync_seconds=3600)
    for step in range(1, 6):
        writer.write(step, {"loss": 1.0 / step})
    assert not (remote / "metrics.jsonl").exists()  # nothing synced yet: appends stay local
    staged = writer._local
    writer.close()
    assert _steps(remote / "metrics.jsonl") == [1, 2, 3, 4, 5]
    assert any((remote / "tensorboard").iterdir()), "TensorBoard events were not copied up"
    assert not staged.exists()  # the staging directory is cleaned up

    # A run resumed from step 3 drops the killed run's later lines, also on the remote copy.
    writer = metrics_lib.MetricsWriter(remote, resume_step=3, sync_seconds=0)
    writer.write(4, {"loss": 0.3})
    assert _steps(remote / "metrics.jsonl") == [1, 2, 3, 4]  # sync_seconds=0: copied on every write
    writer.close()
    records = metrics_lib.read_jsonl(remote / "metrics.jsonl")
    assert [r["loss"] for r in records][-1] == pytest.approx(0.3)


def test_curves_png_is_written_through_epath(tmp_path):
    out = metrics_lib.plot_curves({"sft": [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0}]}, tmp_path / "c.png")
    assert out is not None and (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
