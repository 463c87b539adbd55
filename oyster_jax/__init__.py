"""oyster_jax: Constructive Safety Alignment (Oyster-I) in JAX."""

import importlib.util
import pathlib
import sys


def _checkout_configs() -> None:
    """In a source checkout, make the repository's `configs/` importable as `oyster_jax.configs`.

    The configs live once, at the top of the repository; the wheel ships that folder as the package
    `oyster_jax.configs` (setup.py `package_dir`), and an editable install maps it the same way. Running
    from a checkout without installing it (`PYTHONPATH=$PWD`) has neither, so the same mapping is made here.
    """
    here = pathlib.Path(__file__).resolve().parent
    src = here.parent / "configs"
    if "oyster_jax.configs" in sys.modules or (here / "configs").is_dir():
        return  # already mapped (editable install) or installed from the wheel
    if not ((here.parent / "setup.py").is_file() and (src / "__init__.py").is_file()):
        return
    spec = importlib.util.spec_from_file_location(
        "oyster_jax.configs", src / "__init__.py", submodule_search_locations=[str(src)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["oyster_jax.configs"] = module
    spec.loader.exec_module(module)
    globals()["configs"] = module  # what the import system does for a submodule it loads itself


_checkout_configs()
