"""The run manifest: what a Lingo-BP output folder was made with, so that a resume cannot mix settings.

    manifest = build_manifest(settings)                # {"format", "settings", "versions", "created"}
    manifest = reconcile(out_dir, manifest)            # raises ManifestMismatch naming the differing keys
    write(out_dir, manifest)                           # (check_and_write does both)

`settings` is everything that changes the data a run produces: backend SPECs, sampling per role (seed
included), endpoint extras, the prompts' SHA-256, α/β/γ, rounds, retries, the game's fingerprint, the
guideline source. It is compared key by key (nested keys joined with '.') with the folder's
`manifest.json`; any difference refuses the resume unless `force`, which appends what was overridden to
the manifest's `forced` list. `versions` (package, Python, numpy, JAX when loaded) is recorded but not
compared: a code update alone does not lock a folder. Settings that only change speed (concurrency,
timeouts, HTTP retries, progress bars, --limit) are not in the manifest.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import os
import pathlib
import platform
import sys

from oyster_jax.core.files import atomic_write_json
from oyster_jax.csa import judges

__all__ = [
    "MANIFEST_NAME",
    "ManifestMismatch",
    "build_manifest",
    "check_and_write",
    "differences",
    "reconcile",
    "write",
    "prompt_hashes",
    "versions",
]

MANIFEST_NAME = "manifest.json"
FORMAT = 1


class ManifestMismatch(ValueError):
    """A resume into a folder made with other settings; `keys` are the differing settings."""

    def __init__(self, path, diffs: dict):
        self.path, self.diffs, self.keys = str(path), diffs, sorted(diffs)
        shown = "; ".join(f"{k}: {_short(v['old'])} -> {_short(v['new'])}" for k, v in sorted(diffs.items())[:8])
        more = f" (and {len(diffs) - 8} more)" if len(diffs) > 8 else ""
        super().__init__(
            f"{path}: this folder was made with other settings ({', '.join(self.keys)}): {shown}{more}. "
            "Use another --out, or --force to resume anyway (the manifest records what was overridden)"
        )


def _short(value) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def prompt_hashes() -> dict[str, str]:
    """'<language>/<task>' -> SHA-256 of the prompt template."""
    return {
        f"{lang}/{task}": _sha256(judges.load_prompt(task, lang).encode("utf-8"))
        for lang in ("en", "zh")
        for task in judges.TASKS
    }


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("oyster_jax", "numpy", "jax"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    if "jax" in sys.modules:
        out["jax"] = sys.modules["jax"].__version__
    return out


def build_manifest(settings: dict) -> dict:
    # A JSON round trip: what is compared later is exactly what the file holds (tuples become lists).
    settings = json.loads(json.dumps(settings, ensure_ascii=False, sort_keys=True, allow_nan=False))
    return {
        "format": FORMAT,
        "settings": settings,
        "versions": versions(),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _flatten(obj, prefix: str = "") -> dict:
    if isinstance(obj, dict) and obj:
        out = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def differences(old_settings: dict, new_settings: dict) -> dict[str, dict]:
    """{dotted key: {"old", "new"}} for every setting that differs (None where a side lacks it)."""
    a, b = _flatten(old_settings), _flatten(new_settings)
    return {k: {"old": a.get(k), "new": b.get(k)} for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def reconcile(out_dir, manifest: dict, *, force: bool = False) -> dict:
    """The manifest to write into `out_dir` after comparing with its `manifest.json` (if any); nothing is
    written. Raises ManifestMismatch on a difference unless `force` (then the differences are appended to
    `forced`); an unreadable manifest is a mismatch too (it names the file), never silently replaced."""
    path = pathlib.Path(out_dir) / MANIFEST_NAME
    if not path.exists():
        return manifest
    try:
        old = json.loads(path.read_text("utf-8"))
        old_settings = old["settings"]
        if not isinstance(old_settings, dict):
            raise TypeError("settings is not an object")
    except (OSError, ValueError, KeyError, TypeError) as e:
        if not force:
            unreadable = {"manifest.json": {"old": f"unreadable ({e})", "new": "this run"}}
            raise ManifestMismatch(path, unreadable) from None
        old, old_settings = {}, {}
    diffs = differences(old_settings, manifest["settings"])
    if diffs and not force:
        raise ManifestMismatch(path, diffs)
    history = list(old.get("forced") or [])  # one entry per forced resume, oldest first
    if diffs:
        history.append({"at": manifest["created"], "differences": diffs})
    else:
        manifest = {**manifest, "created": old.get("created", manifest["created"])}
    if history:
        manifest = {**manifest, "forced": history}
    return manifest


def write(out_dir, manifest: dict) -> None:
    os.makedirs(out_dir, exist_ok=True)
    atomic_write_json(pathlib.Path(out_dir) / MANIFEST_NAME, manifest)


def check_and_write(out_dir, manifest: dict, *, force: bool = False) -> dict:
    """`reconcile`, then `write`; returns what was written."""
    manifest = reconcile(out_dir, manifest, force=force)
    write(out_dir, manifest)
    return manifest
