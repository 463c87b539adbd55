"""colabs/*.ipynb: committed with outputs stripped and one `parameters` cell, and executed end to end with
nbclient on the tiny CPU config (parameters injected after the `parameters` cell, as papermill does)."""

from __future__ import annotations

import pathlib
import re

import nbformat
import pytest

from tests import tolerances

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = {
    "quickstart_cpu": {
        "SFT_STEPS": 2,
        "PREF_STEPS": 2,
        "SEQ_LEN": 64,
        "HELDOUT_BATCHES": 1,
        "CHAT_MAX_TOKENS": 8,
    },
    "constructive_finetune": {
        "TINY": True,
        "INSTALL": False,
        "SFT_STEPS": 2,
        "PREF_STEPS": 2,
        "SFT_BATCH": 8,
        "PREF_BATCH": 8,
        "SEQ_LEN": 64,
        "LOGITS_CHUNK": 128,  # the chunked LM head and remat of the real settings, at tiny scale
        "REMAT": "full",
        "HELDOUT_BATCH": 8,
        "HELDOUT_BATCHES": 1,
        "STRATA_SWORD_PROMPTS": 3,
        "MAX_NEW_TOKENS": 8,
        # CI runs the LoRA path (the full fine-tuning path is quickstart_cpu's); a float32 base so that the
        # merged and PEFT exports match our logits to the float32 tolerance.
        "LORA": True,
        "LORA_RANK": 4,
        "LORA_BASE_DTYPE": "float32",
    },
}
CELL_TIMEOUT_S = 240


def load(name: str):
    return nbformat.read(REPO / "colabs" / f"{name}.ipynb", as_version=4)


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_committed_clean(name):
    nb = load(name)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    dirty = [i for i, c in enumerate(code) if c.outputs or c.execution_count is not None]
    assert not dirty, f"{name}.ipynb: code cells {dirty} carry outputs; strip them before committing"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, f"{name}.ipynb needs exactly one cell tagged 'parameters'"
    for key in NOTEBOOKS[name]:
        assert re.search(rf"^{key} = ", params[0].source, re.M), f"{name}.ipynb: parameter {key} missing"
    source = "\n".join(c.source for c in code)
    assert "from oyster_jax" in source  # the notebook drives the library; it does not carry its own copy


def execute(name: str, workdir: pathlib.Path):
    from nbclient import NotebookClient

    nb = load(name)
    overrides = dict(NOTEBOOKS[name], REPO_DIR=str(REPO), WORKDIR=str(workdir))
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    injected = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in overrides.items()))
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(index + 1, injected)
    client = NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
    )
    client.execute()
    return "\n".join(
        out.get("text", "")
        for c in nb.cells
        if c.cell_type == "code"
        for out in c.outputs
        if out.output_type == "stream"
    )


def logit_diff(text: str) -> float:
    match = re.search(r"max \|logit difference\|[^=:]*[=:] ([0-9.e+-]+)", text)
    assert match, f"no transformers load check in the output:\n{text[-2000:]}"
    return float(match.group(1))


def test_quickstart_cpu_runs(tmp_path):
    text = execute("quickstart_cpu", tmp_path / "run")
    assert "SFT: done at step 2" in text
    assert re.search(r"held-out accuracy \d\.\d{3} -> \d\.\d{3}", text)
    assert "ANSWER:" in text
    assert logit_diff(text) <= tolerances.HF_LOGITS_F32
    assert (tmp_path / "run" / "hf" / "config.json").is_file()


def test_constructive_finetune_runs_tiny(tmp_path, data_dir):
    text = execute("constructive_finetune", tmp_path / "run")
    assert "tiny random model:" in text and "base (frozen, read from the HF directory):" in text
    assert "SFT: done at step 2" in text
    assert re.search(r"held-out accuracy \d\.\d{3} -> \d\.\d{3}", text)
    assert "Strata-Sword ASR %" in text and "keyword" in text
    responses = (tmp_path / "run" / "strata_sword" / "responses.jsonl").read_text().splitlines()
    assert len(responses) == NOTEBOOKS["constructive_finetune"]["STRATA_SWORD_PROMPTS"]
    assert logit_diff(text) <= tolerances.HF_LOGITS_F32  # the merged export in transformers
    peft_check = re.search(r"peft loaded the adapter; max \|logit difference\| vs JAX: ([0-9.e+-]+)", text)
    assert peft_check, text[-2000:]
    assert float(peft_check.group(1)) <= tolerances.HF_LOGITS_F32
    adapter = tmp_path / "run" / "peft_adapter"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
