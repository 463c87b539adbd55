"""Every `python -m oyster_jax.*` command: `--help` works, shows underscore flags only, and no entry point
touches CUDA_VISIBLE_DEVICES (hiding accelerators from TensorFlow must never hide them from JAX)."""

import ast
import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

from oyster_jax import cli

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / "oyster_jax"


def _entry_points() -> list[str]:
    """Modules with an `if __name__ == "__main__":` block, and packages with a `__main__.py`, found by reading
    the package (new ones join in)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__main__.py":  # `python -m oyster_jax.serve` runs the package
            found.append(".".join(path.parent.relative_to(REPO).parts))
            continue
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if (
                isinstance(node, ast.If)
                and isinstance(node.test, ast.Compare)
                and isinstance(node.test.left, ast.Name)
                and node.test.left.id == "__name__"
            ):
                found.append(".".join(path.relative_to(REPO).with_suffix("").parts))
                break
    return found


ENTRY_POINTS = _entry_points()

# Runs in a fresh interpreter whose environment has no CUDA_VISIBLE_DEVICES: each entry point as
# `python -m X --help` (runpy, as -m does), then `python -m oyster_jax.main` for two SFT steps, recording after
# each whether the variable appeared.
PROBE = textwrap.dedent(
    """
    import contextlib, io, json, os, runpy, sys
    modules, main_args = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    report = {}
    for name in modules:
        sys.argv = [name, "--help"]
        out = io.StringIO()
        code = 0
        with contextlib.redirect_stdout(out):
            try:
                runpy.run_module(name, run_name="__main__", alter_sys=True)
            except SystemExit as e:
                code = e.code or 0
        report[name] = {"code": code, "help": out.getvalue(), "cuda_set": "CUDA_VISIBLE_DEVICES" in os.environ}
    from oyster_jax import main
    rc = main.main(main_args)
    report["main_run"] = {"code": rc, "cuda_set": "CUDA_VISIBLE_DEVICES" in os.environ}
    print("PROBE" + json.dumps(report))
    """
)


def test_entry_points_are_found():
    for expected in ("oyster_jax.main", "oyster_jax.demo", "oyster_jax.serve", "oyster_jax.tools.aot"):
        assert expected in ENTRY_POINTS
    assert any(m.startswith("oyster_jax.convert.") for m in ENTRY_POINTS)
    assert any(m.startswith("oyster_jax.eval.") for m in ENTRY_POINTS)
    assert any(m.startswith("oyster_jax.bench.") for m in ENTRY_POINTS)


def test_help_and_a_short_run_leave_cuda_visible_devices_alone(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    main_args = [
        "--config", "tiny_csa", "--workdir", str(tmp_path / "run"), "--no_progress",
        "--config.stages=sft", "--config.sft.num_steps=2", "--config.sft.batch_size=2",
        "--config.data.seq_len=64", "--config.peak_tflops=1", "--config.checkpoint.async_save=false",
    ]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(ENTRY_POINTS), json.dumps(main_args)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.split("PROBE", 1)[1])
    for name in ENTRY_POINTS:
        r = report[name]
        assert r["code"] == 0, f"python -m {name} --help exited {r['code']}"
        assert not r["cuda_set"], f"python -m {name} set CUDA_VISIBLE_DEVICES"
        if name != "oyster_jax.xla_env":  # prints its environment; it takes no flags
            assert "usage:" in r["help"], f"python -m {name} --help printed no usage"
        hyphenated = sorted(set(re.findall(r"(?<![\w-])--[a-z0-9]+(?:-[a-z0-9]+)+", r["help"])))
        assert not hyphenated, f"python -m {name} --help shows hyphenated flags {hyphenated}"
    assert report["main_run"] == {"code": 0, "cuda_set": False}
    assert (tmp_path / "run" / "sft" / "DONE.json").is_file()


# Setting, exporting or clearing the variable, in Python, shell, Make or a notebook cell.
SETS_CUDA_VISIBLE_DEVICES = re.compile(
    r"""CUDA_VISIBLE_DEVICES["']?\s*\]?\s*:?=(?!=)|["']CUDA_VISIBLE_DEVICES["']\s*:|export\s+CUDA_VISIBLE_DEVICES"""
    r"""|(?:pop|setdefault|putenv|unsetenv)\(\s*["']CUDA_VISIBLE_DEVICES|del\s+os\.environ\[\s*["']CUDA_VISIBLE_DEVICES"""
)


def _source_lines(path: pathlib.Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".ipynb":  # the code cells as Python, not their JSON-escaped text
        cells = json.loads(text)["cells"]
        text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    return text.splitlines()


def test_nothing_in_the_repository_sets_cuda_visible_devices():
    """A static check beside the run above: no code, Makefile, launcher, config or notebook sets or clears it."""
    paths = [
        REPO / "Makefile",
        *PACKAGE.rglob("*.py"),
        *(REPO / "tests").glob("*.py"),
        *(REPO / "configs").rglob("*.py"),
    ]
    paths += [*(REPO / "launch").glob("*"), *(REPO / "colabs").glob("*.ipynb")]
    offenders = [
        f"{p.relative_to(REPO)}:{i}: {line.strip()}"
        for p in paths
        if p.is_file() and p.resolve() != pathlib.Path(__file__).resolve()
        for i, line in enumerate(_source_lines(p), 1)
        if SETS_CUDA_VISIBLE_DEVICES.search(line)
    ]
    assert not offenders, offenders


@pytest.mark.parametrize(
    "line, sets",
    [
        ('os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")', True),  # the old main.py / demo.py / conftest
        ("export CUDA_VISIBLE_DEVICES :=", True),  # the old Makefile
        ('        CUDA_VISIBLE_DEVICES="",', True),  # the old test_multiprocess env
        ('os.environ["CUDA_VISIBLE_DEVICES"] = "0"', True),
        ('env = {"CUDA_VISIBLE_DEVICES": ""}', True),
        ('env.pop("CUDA_VISIBLE_DEVICES", None)', True),
        ("CUDA_VISIBLE_DEVICES=0 python -m oyster_jax.main", True),
        ("# One process, every local GPU (CUDA_VISIBLE_DEVICES, when set, still restricts them).", False),
        ('if os.environ.get("CUDA_VISIBLE_DEVICES") == "":', False),
    ],
)
def test_static_check_tells_setting_from_mentioning(line, sets):
    assert bool(SETS_CUDA_VISIBLE_DEVICES.search(line)) == sets


def test_tensorflow_sees_no_accelerator_after_its_one_import():
    from oyster_jax.data.tf_setup import tf

    assert tf.config.get_visible_devices("GPU") == [] and tf.config.get_visible_devices("TPU") == []


def test_hyphen_spellings_are_hidden_aliases():
    parser = cli.ArgumentParser(prog="x")
    parser.add_argument("--judge_retries", type=int, default=3)
    parser.add_argument("--no_progress", action="store_true")
    parser.add_argument("--name")
    args = parser.parse_args(["--judge-retries", "5", "--no-progress", "--name=--not-a-flag"])
    assert (args.judge_retries, args.no_progress, args.name) == (5, True, "--not-a-flag")
    assert parser.parse_args(["--judge-retries=7"]).judge_retries == 7
    help_text = parser.format_help()
    assert "--judge_retries" in help_text and "--judge-retries" not in help_text
    known, rest = parser.parse_known_args(["--no-progress", "--", "--judge-retries"])
    assert known.no_progress and rest == ["--", "--judge-retries"]  # nothing after "--" is rewritten
    with pytest.raises(SystemExit):
        parser.parse_args(["--unknown-flag"])
    with pytest.raises(ValueError, match="underscores"):
        parser.add_argument("--max-retries")
