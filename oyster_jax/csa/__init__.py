"""Constructive Safety Alignment: risk taxonomy, Stackelberg game, safety chain, judges, Lingo-BP engine.

    from oyster_jax.csa import taxonomy, game, chain
    taxonomy.adaptive_guideline("Mental Health", "declarative", "R1", "sensitive")
    game.best_strategy(level="R2", beta=2.0).strategy
    chain.parse_chain(model_output)

The engine and its CLI: `python -m oyster_jax.csa.lingo_bp --help`.
"""
