"""The bundled configs, importable as `oyster_jax.configs` (setup.py `package_dir`, in the wheel and in an
editable install alike). Select one by name: `--config tiny_csa`, `model_fields("qwen3_14b")`."""
