"""Entry points re-execute once with malloc huge pages (oyster_jax/xla_env.py); libraries never do."""

import os
import subprocess
import sys

import pytest

from oyster_jax import xla_env

needs_glibc = pytest.mark.skipif(not xla_env._glibc_with_hugetlb(), reason="needs glibc >= 2.35")


def _run(**env_extra):
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "OYSTER_KEEP_MALLOC")}
    out = subprocess.run(
        [sys.executable, "-m", "oyster_jax.xla_env"], env=env | env_extra, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


@needs_glibc
def test_cli_reexecutes_with_huge_page_malloc():
    assert "GLIBC_TUNABLES=glibc.malloc.hugetlb=1 " in _run()


@needs_glibc
def test_users_own_settings_win():
    assert "GLIBC_TUNABLES= " in _run(OYSTER_KEEP_MALLOC="1")
    assert "GLIBC_TUNABLES=glibc.malloc.mmap_max=0 " in _run(GLIBC_TUNABLES="glibc.malloc.mmap_max=0")


def test_importing_the_library_does_not_reexecute():
    # This pytest process imported xla_env (through oyster_jax.main in other tests or here) and is still here.
    xla_env.reexec_with_huge_pages()
    assert "_pytest" in sys.modules
