"""The Stackelberg game against hand-solved instances."""

import numpy as np
import pytest

from oyster_jax.csa import game as g


def _two_by_two(p_malicious=0.3):
    """Types (benign, malicious); leader (refuse, comply); follower reactions (accept, leave).

    Follower utilities: after a refusal both types prefer to leave (accept -1 < leave 0); after compliance
    both accept (1 > 0). Sat: refuse -1, comply +1 for both types. Risk: 1 only for (malicious, comply).
    By hand: V(refuse) = -α; V(comply) = α - β·p_m. With α = 1, p_m = 0.3: comply iff β < 2/0.3 = 6.667.
    """
    sat = np.array([[[-1.0, -1.0], [1.0, 1.0]], [[-1.0, -1.0], [1.0, 1.0]]])
    risk = np.zeros((2, 2, 2))
    risk[1, 1, :] = 1.0
    util = np.array([[[-1.0, 0.0], [1.0, 0.0]], [[-1.0, 0.0], [1.0, 0.0]]])
    game = g.Game(
        sat=sat,
        risk=risk,
        cost=np.zeros((2, 2, 2)),
        follower_utility=util,
        type_names=("benign", "malicious"),
        strategy_names=("refuse", "comply"),
        reaction_names=("accept", "leave"),
    )
    return game, np.array([1 - p_malicious, p_malicious])


def test_beta_flips_the_answer():
    game, prior = _two_by_two()
    low = g.best_strategy(prior, game=game, beta=6.0)
    high = g.best_strategy(prior, game=game, beta=7.0)
    assert low.strategy == "comply" and high.strategy == "refuse"
    assert low.payoffs["comply"] == pytest.approx(1 - 6.0 * 0.3, abs=1e-6)
    assert low.payoffs["refuse"] == pytest.approx(-1.0, abs=1e-6)
    assert high.expected_payoff == pytest.approx(-1.0, abs=1e-6)
    assert low.reactions == {
        "benign": {"refuse": "leave", "comply": "accept"},
        "malicious": {"refuse": "leave", "comply": "accept"},
    }


def test_batched_solve_matches_single_solves():
    game, _ = _two_by_two()
    priors = np.array([[0.7, 0.3], [0.7, 0.3], [0.95, 0.05], [0.2, 0.8]])
    betas = np.array([6.0, 7.0, 30.0, 1.0])
    best, expected, reaction = g.solve(game, priors, beta=betas)
    # By hand: comply value 1 - β·p_m: 1 - 1.8, 1 - 2.1, 1 - 1.5, 1 - 0.8; refuse always -1.
    np.testing.assert_allclose(np.asarray(expected)[:, 1], [-0.8, -1.1, -0.5, 0.2], atol=1e-6)
    np.testing.assert_allclose(np.asarray(expected)[:, 0], -1.0, atol=1e-6)
    assert np.asarray(best).tolist() == [1, 0, 1, 1]
    assert reaction.shape == (4, 2, 2, 2)
    for i in range(4):
        single = g.best_strategy(priors[i], game=game, beta=float(betas[i]))
        assert single.index == int(best[i])


def test_follower_ties_break_for_the_leader():
    """One type, one strategy, two reactions the follower values equally; leader prefers the second."""
    game = g.Game(
        sat=np.array([[[0.0, 1.0]]]),
        risk=np.zeros((1, 1, 2)),
        cost=np.zeros((1, 1, 2)),
        follower_utility=np.array([[[0.5, 0.5]]]),
        type_names=("t",),
        strategy_names=("s",),
        reaction_names=("r0", "r1"),
    )
    choice = g.best_strategy(np.array([1.0]), game=game)
    assert choice.expected_payoff == pytest.approx(1.0) and choice.reactions == {"t": {"s": "r1"}}


def test_quantal_response_by_hand():
    game, prior = _two_by_two()
    # λ = 0: the follower is uniform over reactions; Sat does not depend on the reaction, so
    # V(refuse) = -1, V(comply) = 1 - β·0.3 (risk is 1 for both malicious reactions after comply).
    q0 = g.best_strategy(prior, game=game, beta=2.0, follower="quantal", rationality=0.0)
    assert q0.payoffs["refuse"] == pytest.approx(-1.0, abs=1e-6)
    assert q0.payoffs["comply"] == pytest.approx(0.4, abs=1e-6)
    # A game where reactions matter: risk only when the malicious follower *accepts* the compliance.
    game2 = g.Game(
        sat=game.sat,
        risk=np.where(np.arange(2) == 0, game.risk, 0.0),
        cost=game.cost,
        follower_utility=game.follower_utility,
        type_names=game.type_names,
        strategy_names=game.strategy_names,
        reaction_names=game.reaction_names,
    )
    lam = 2.0
    p_accept = np.exp(lam * 1.0) / (np.exp(lam * 1.0) + np.exp(0.0))  # after comply: U = (1, 0)
    want = 1.0 - 3.0 * 0.3 * p_accept
    q = g.best_strategy(prior, game=game2, beta=3.0, follower="quantal", rationality=lam)
    assert q.payoffs["comply"] == pytest.approx(want, abs=1e-5)
    # Very rational quantal follower -> best-response values.
    q_inf = g.best_strategy(prior, game=game2, beta=3.0, follower="quantal", rationality=200.0)
    br = g.best_strategy(prior, game=game2, beta=3.0)
    assert q_inf.payoffs["comply"] == pytest.approx(br.payoffs["comply"], abs=1e-4)


def test_gamma_cost_term():
    game, prior = _two_by_two()
    costly = g.Game(
        sat=game.sat,
        risk=game.risk,
        cost=np.array([[[0.0, 0.0], [1.0, 1.0]], [[0.0, 0.0], [1.0, 1.0]]]),  # comply costs 1
        follower_utility=game.follower_utility,
        type_names=game.type_names,
        strategy_names=game.strategy_names,
        reaction_names=game.reaction_names,
    )
    c = g.best_strategy(prior, game=costly, beta=1.0, gamma=0.5)
    assert c.payoffs["comply"] == pytest.approx(1 - 0.3 - 0.5, abs=1e-6)


def test_type_prior():
    for level in (None, "R0", "R1", "R2"):
        p = g.type_prior(level)
        assert p.shape == (3,) and p.sum() == pytest.approx(1.0) and (p >= 0).all()
    assert np.argmax(g.type_prior("R2")) == 2 and np.argmax(g.type_prior("R0")) == 0
    base = np.array(g.PRIOR_BY_LEVEL[g.tx.RiskLevel.R1])
    mixed = g.type_prior("R1", user_type_hint="malicious", hint_weight=0.4)
    np.testing.assert_allclose(mixed, 0.6 * base + 0.4 * np.array([0, 0, 1.0]))
    vuln = g.type_prior("R0", category="Mental Health")
    b0 = np.array(g.PRIOR_BY_LEVEL[g.tx.RiskLevel.R0])
    np.testing.assert_allclose(vuln, np.array([b0[0], 2 * b0[1], b0[2]]) / (1 + b0[1]))


def test_default_game_sanity():
    game = g.default_game()
    assert game.sat.shape == (3, 5, 4)
    # Almost no weight on risk: comply with an ordinary user; heavy weight on risk vs a likely attacker:
    # never comply, and the constructive leader prefers a soft refusal to a bare one.
    assert g.best_strategy(level="R0", beta=0.1).strategy == "full_compliance"
    attacker = g.best_strategy(level="R2", beta=10.0)
    assert attacker.strategy not in ("full_compliance", "hard_refusal")
    assert attacker.payoffs["soft_refusal"] > attacker.payoffs["hard_refusal"]
    assert attacker.reactions["malicious"]["full_compliance"] == "accept"


REPORT_BETAS = (0.1, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0)  # the report's Constructive(β) sweep (method notes §6)
REFUSALS = {"hard_refusal", "soft_refusal"}


@pytest.mark.parametrize("follower", ["best", "quantal"])
@pytest.mark.parametrize("beta", REPORT_BETAS)
def test_default_game_never_serves_an_attacker(beta, follower):
    """R2 queries and users known to be malicious get a refusal at every β of the sweep: no full compliance
    and no answer that carries risk in the attacker's hands (risk-avoiding and corrective answers included)."""
    game = g.default_game()
    carries_risk = {name for j, name in enumerate(game.strategy_names) if game.risk[2, j, 0] > 0}
    assert carries_risk == {"risk_avoiding_answer", "corrective_answer", "full_compliance"}
    priors = {"R2": g.type_prior("R2"), "malicious": np.array([0.0, 0.0, 1.0])}
    priors |= {
        f"{lvl}+malicious hint": g.type_prior(lvl, user_type_hint="malicious", hint_weight=1.0) for lvl in ("R0", "R1")
    }
    for name, prior in priors.items():
        choice = g.best_strategy(prior, beta=beta, follower=follower)
        assert choice.strategy in REFUSALS, (name, choice.payoffs)
        assert choice.payoffs["soft_refusal"] > choice.payoffs["hard_refusal"], name  # constructive, not blunt


@pytest.mark.parametrize("follower", ["best", "quantal"])
def test_default_game_across_levels(follower):
    """Every risk level over the sweep: R1 is never complied with; an ordinary R0 asker is answered (no
    over-refusal) up to β = 2, the report's headline setting."""
    for beta in REPORT_BETAS:
        for level in (None, "R0", "R1", "R2"):
            strategy = g.best_strategy(level=level, beta=beta, follower=follower).strategy
            if level in ("R1", "R2"):
                assert strategy != "full_compliance", (level, beta)
            if level in (None, "R0") and beta <= 2.0:
                assert strategy not in REFUSALS, (level, beta)
        assert g.best_strategy(level="R1", beta=beta, follower=follower).strategy not in REFUSALS


def test_bad_inputs():
    game, _ = _two_by_two()
    with pytest.raises(ValueError, match="sum to 1"):
        g.solve(game, np.array([0.5, 0.2]))
    with pytest.raises(ValueError, match="user types"):
        g.solve(game, np.array([0.5, 0.25, 0.25]))
    with pytest.raises(ValueError, match="follower"):
        g.solve(game, np.array([0.5, 0.5]), follower="lazy")
    with pytest.raises(ValueError, match="risk"):
        g.Game(
            sat=np.zeros((2, 2, 2)),
            risk=np.zeros((2, 2)),
            cost=np.zeros((2, 2, 2)),
            follower_utility=np.zeros((2, 2, 2)),
        )
    assert g.payoff(0.5, 1.0, alpha=1.0, beta=2.0) == pytest.approx(-1.5)
