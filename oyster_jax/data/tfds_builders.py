"""TFDS builders: ``strata_sword`` (manual dir; configs en, cn; splits level1..3) and ``oyster_csa_seed``.

    from oyster_jax.data.tf_setup import tfds
    import oyster_jax.data.tfds_builders  # registers the builders
    ds = tfds.load("strata_sword/en", split="level2", data_dir="/tmp/tfds",
                   download_and_prepare_kwargs={"download_config": tfds.download.DownloadConfig(
                       manual_dir=os.environ["OYSTER_DATA_DIR"] + "/strata_sword")})
    ds = tfds.load("oyster_csa_seed/pref", split="test", data_dir="/tmp/tfds")

``strata_sword`` reads ``{config}_level_{1,2,3}.jsonl`` from the manual dir (default:
``$OYSTER_DATA_DIR/strata_sword``) through ``oyster_jax.data.strata_sword``, the loader the harness and the
SeqIO tasks use: records are validated (eval kind), so a broken file fails the build with file:line:field,
and missing files give an error that says how to import the release. Features: id, language, level,
attack_method, prompt.

``oyster_csa_seed`` packages the bundled seed data (no download): config ``sft`` (id, language,
prompt, response, thinking (the chain rendered as prose), category_l1, category_l2, risk_level,
user_type, record (the full JSON record)), config ``pref`` (id, language, prompt, chosen_thinking,
chosen_response, rejected_thinking, rejected_response, rejected_kind, category_l2, risk_level,
user_type, record) and config ``general`` (like sft); splits train and test (held-out template families).
"""

from __future__ import annotations

import json
import pathlib

from etils import epath

from oyster_jax.core import chat, schemas
from oyster_jax.data import seed, strata_sword
from oyster_jax.data.tf_setup import tf, tfds

py_utils = tfds.core.utils.py_utils

_TEXT = tfds.features.Text


def _manual_dir(dl_manager) -> pathlib.Path | None:
    """The manual dir when TFDS has one, else None (the loader then falls back to $OYSTER_DATA_DIR)."""
    try:
        manual = pathlib.Path(dl_manager.manual_dir)
        if manual.is_dir():
            return manual
    except (AssertionError, ValueError, OSError):  # TFDS asserts when its default manual dir is missing
        pass
    return None


class _LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Builder whose code path is this file.

    TFDS finds a builder's code path through ``importlib_resources`` (not in our pinned set); these
    builders live in one known file, so we give the path directly (there is no checksums file: nothing
    is downloaded).
    """

    @py_utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(__file__)


class StrataSword(_LocalBuilder):
    """Strata-Sword jailbreak prompts (700: en 400, cn 300) by reasoning-complexity level."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "JSONL files of the public Strata-Sword release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put en_level_{1,2,3}.jsonl and cn_level_{1,2,3}.jsonl (fields id, language, level, attack_method, "
        "prompt) in the manual dir, or set OYSTER_DATA_DIR to a directory holding strata_sword/. To make them: "
        + strata_sword.HOWTO
    )
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="en", description="English prompts (100/100/200 per level)"),
        tfds.core.BuilderConfig(name="cn", description="Chinese prompts (100/100/100 per level)"),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {"id": _TEXT(), "language": _TEXT(), "level": tf.int32, "attack_method": _TEXT(), "prompt": _TEXT()}
            ),
            homepage="https://github.com/Alibaba-AAIG/Strata-Sword",
        )

    def _split_generators(self, dl_manager):
        manual = _manual_dir(dl_manager)
        lang = self.builder_config.name
        return {f"level{n}": self._generate_examples(lang, n, manual) for n in strata_sword.LEVELS}

    def _generate_examples(self, language: str, level: int, data_dir: pathlib.Path | None):
        for r in strata_sword.load_file(language, level, data_dir):
            yield r["id"], {k: r[k] for k in ("id", "language", "level", "attack_method", "prompt")}


def _sft_example(r: dict) -> dict:
    thinking = r.get("thinking")
    if thinking is None and r.get("chain"):
        thinking = chat.render_chain(r["chain"], "prose", r["language"])
    risk = r.get("risk") or {}
    persona = r.get("persona") if isinstance(r.get("persona"), dict) else {}
    return {
        "id": r["id"],
        "language": r["language"],
        "prompt": r["messages"][-2]["content"] if len(r["messages"]) > 1 else "",
        "response": r["messages"][-1]["content"],
        "thinking": thinking or "",
        "category_l1": risk.get("category_l1", ""),
        "category_l2": risk.get("category_l2", ""),
        "risk_level": risk.get("level", ""),
        "user_type": persona.get("user_type", ""),
        "record": json.dumps(r, ensure_ascii=False),
    }


def _pref_example(r: dict) -> dict:
    risk = r.get("risk") or {}
    persona = r.get("persona") if isinstance(r.get("persona"), dict) else {}
    return {
        "id": r["id"],
        "language": r["language"],
        "prompt": r["prompt_messages"][-1]["content"],
        "chosen_thinking": r["chosen"].get("thinking", ""),
        "chosen_response": r["chosen"]["response"],
        "rejected_thinking": r["rejected"].get("thinking", ""),
        "rejected_response": r["rejected"]["response"],
        "rejected_kind": r.get("rejected_kind", ""),
        "category_l2": risk.get("category_l2", ""),
        "risk_level": risk.get("level", ""),
        "user_type": persona.get("user_type", ""),
        "record": json.dumps(r, ensure_ascii=False),
    }


_SFT_FIELDS = ("id", "language", "prompt", "response", "thinking", "category_l1", "category_l2", "risk_level")
_PREF_FIELDS = (
    "id",
    "language",
    "prompt",
    "chosen_thinking",
    "chosen_response",
    "rejected_thinking",
    "rejected_response",
    "rejected_kind",
    "category_l2",
    "risk_level",
)


class OysterCsaSeed(_LocalBuilder):
    """The bundled constructive-safety seed data (project-written; see oyster_jax/data/seed/generate.py)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Seed data generated by oyster_jax.data.seed.generate."}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="sft", description="constructive SFT records"),
        tfds.core.BuilderConfig(name="pref", description="preference pairs (constructive vs refusal/compliance)"),
        tfds.core.BuilderConfig(name="general", description="benign general chat"),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        names = _PREF_FIELDS if self.builder_config.name == "pref" else _SFT_FIELDS
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({k: _TEXT() for k in (*names, "user_type", "record")}),
            homepage="https://github.com/oyster-jax",
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        stem = self.builder_config.name
        return {split: self._generate_examples(seed.path(f"{stem}_{split}")) for split in ("train", "test")}

    def _generate_examples(self, path: pathlib.Path):
        kind = "pref" if self.builder_config.name == "pref" else "sft"
        make = _pref_example if kind == "pref" else _sft_example
        for r in schemas.read_records(path, kind):
            yield r["id"], make(r)
