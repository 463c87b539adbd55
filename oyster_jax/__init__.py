"""oyster_jax: Constructive Safety Alignment (Oyster-I) in JAX."""
