"""The bundled configs, importable as `oyster_jax.configs` (installed: setup.py `package_dir`; in a checkout:
`oyster_jax/__init__.py`). Select one by name: `--config tiny_csa`, `model_fields("qwen3_14b")`."""
