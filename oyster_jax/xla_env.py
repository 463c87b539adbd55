"""Process settings the trainers' entry points make before JAX starts (import this module before `jax`).

1. XLA flag. XLA:CPU's YNNPACK dot fusions run the train step's [B·T, D] x [D, F] matmuls at about
   155 GFLOP/s on the 2-core x86 test machine where its default dot path reaches about 245 (K = 256: the
   tiny model's MLP and attention projections); turning them off made the tiny ORPO step ~12% faster
   (`python -m oyster_jax.bench.train_step`). Only applied when the user has not set that flag; it is a
   CPU-only flag, harmless on GPU and TPU.

2. Huge pages for malloc. A CPU train step allocates and frees tens of MB-sized buffers (logits, activations,
   XLA's temporary arena) every step; glibc serves each from fresh 4 KiB pages, and on a virtual machine the
   page faults cost more than the arithmetic (a [2048, 4096] multiply-by-2 took 14.7 ms instead of 0.9).
   `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` makes malloc ask for transparent huge pages; glibc reads it only
   at process start, so a command-line entry point (`python -m oyster_jax.main`, `.demo`, `.bench.*`)
   re-executes itself once with it set. Measured: the tiny ORPO step 950-990 ms -> 770-810 ms. Set
   `OYSTER_KEEP_MALLOC=1` (or any GLIBC_TUNABLES of your own) to opt out. Library imports (pytest, notebooks)
   never re-execute.
"""

import os
import platform
import sys

_FLAG = "--xla_cpu_experimental_ynn_fusion_type="
_HUGETLB = "glibc.malloc.hugetlb=1"


def apply() -> None:
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_experimental_ynn_fusion_type" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " " + _FLAG).strip()


def _glibc_with_hugetlb() -> bool:
    lib, version = platform.libc_ver()
    try:
        return lib == "glibc" and tuple(int(x) for x in version.split(".")[:2]) >= (2, 35)
    except ValueError:
        return False


def reexec_with_huge_pages() -> None:
    """Re-run this process's command line with malloc huge pages, when this process is one of our CLIs."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    is_our_cli = spec is not None and spec.name.startswith("oyster_jax.")
    if (
        not is_our_cli
        or "GLIBC_TUNABLES" in os.environ  # already set (by us, or by the user on purpose)
        or os.environ.get("OYSTER_KEEP_MALLOC")
        or not sys.platform.startswith("linux")
        or not _glibc_with_hugetlb()
        or not getattr(sys, "orig_argv", None)
    ):
        return
    env = dict(os.environ, GLIBC_TUNABLES=_HUGETLB)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable] + sys.orig_argv[1:], env)


reexec_with_huge_pages()
apply()

if __name__ == "__main__":  # `python -m oyster_jax.xla_env`: show what an entry point runs with
    print(f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')} XLA_FLAGS={os.environ.get('XLA_FLAGS', '')}")
