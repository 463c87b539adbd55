"""Evaluation: the Strata-Sword harness, the Constructive Score, perplexity and the keyword judge.

    python -m oyster_jax.eval.strata_sword --target local:CKPT --judge keyword --out OUT
    python -m oyster_jax.eval.constructive --target local:CKPT --judge openai:URL#MODEL --items FILE --out OUT
    python -m oyster_jax.eval.perplexity --ckpt CKPT --text FILE

Submodules are imported on use (the CLIs load JAX only when a local model is involved).
"""
