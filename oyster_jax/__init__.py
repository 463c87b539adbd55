"""oyster_jax."""
