"""Constructive Safety Alignment: Stackelberg game, judges, Lingo-BP engine (the taxonomy and the safety
chain are core types, in ``oyster_jax.core``).

    from oyster_jax.core import chain, taxonomy
    from oyster_jax.csa import game
    taxonomy.adaptive_guideline("Mental Health", "declarative", "R1", "sensitive")
    game.best_strategy(level="R2", beta=2.0).strategy
    chain.parse_chain(model_output)

The engine and its CLI: `python -m oyster_jax.csa.lingo_bp --help`.
"""
