"""The explicit Stackelberg game of Constructive Safety Alignment (method notes §2).

Leader = the model; it commits to a reply strategy s first. Follower = the user, of hidden type θ
(benign, sensitive/vulnerable, malicious) with prior p(θ | x) from the risk assessment; after seeing the
reply the follower picks a reaction r (accept, rephrase/retry, escalate, leave) that maximizes its own
utility U[θ, s, r]. Leader payoff per outcome:

    Π[θ, s, r] = α·Sat[θ, s, r] − β·Risk[θ, s, r] − γ·Cost[θ, s, r]

`best_strategy` returns the pure commitment s* = argmax_s Σ_θ p(θ) Π[θ, s, r*(θ, s)] where r* is the
follower's best response (ties broken in the leader's favour: the strong Stackelberg convention), or, with
`follower="quantal"`, where the follower is softmax-rational: q(r | θ, s) ∝ exp(λ·U[θ, s, r]).
Ties between leader strategies go to the earlier (more conservative) strategy.

The report gives neither the prior nor the follower model nor numbers: everything in `default_game()` and
`PRIOR_BY_LEVEL` is the project's free choice, kept in plain tables so a config can replace them. Axis
letters: B batch, Θ user types (3), S leader strategies (5), R follower reactions (4).

The same payoff ranks Lingo-BP iterates from judged scores: `payoff(sat, risk, alpha, beta, gamma, cost)`.
"""

from __future__ import annotations

import dataclasses
import enum
import functools

import jax
import jax.numpy as jnp
import numpy as np

from oyster_jax.core import taxonomy as tx

__all__ = [
    "LeaderStrategy",
    "Reaction",
    "USER_TYPES",
    "Game",
    "StrategyChoice",
    "default_game",
    "type_prior",
    "PRIOR_BY_LEVEL",
    "solve",
    "best_strategy",
    "payoff",
]

USER_TYPES: tuple[tx.UserType, ...] = (tx.UserType.BENIGN, tx.UserType.SENSITIVE, tx.UserType.MALICIOUS)


class LeaderStrategy(enum.StrEnum):
    """Leader moves, ordered from most to least conservative (ties go to the earlier one)."""

    HARD_REFUSAL = "hard_refusal"
    SOFT_REFUSAL = "soft_refusal"  # refusal with reasons, guidance and alternatives
    RISK_AVOIDING_ANSWER = "risk_avoiding_answer"  # full answer that leaves out the risky part
    CORRECTIVE_ANSWER = "corrective_answer"  # full answer that corrects a wrong belief
    FULL_COMPLIANCE = "full_compliance"


class Reaction(enum.StrEnum):
    ACCEPT = "accept"
    REPHRASE = "rephrase"  # retry / rephrase the same request
    ESCALATE = "escalate"  # push harder: jailbreak, pressure
    LEAVE = "leave"  # go elsewhere (possibly to an unsafe source)


@dataclasses.dataclass(frozen=True)
class Game:
    """Payoff tables, all float arrays of shape [Θ, S, R] (or [B, Θ, S, R] for per-example games)."""

    sat: np.ndarray  # user satisfaction in [-1, 1]
    risk: np.ndarray  # probability-like harm in [0, 1]
    cost: np.ndarray  # extra cost (e.g. further turns)
    follower_utility: np.ndarray  # what the follower maximizes
    type_names: tuple[str, ...] = tuple(t.value for t in USER_TYPES)
    strategy_names: tuple[str, ...] = tuple(s.value for s in LeaderStrategy)
    reaction_names: tuple[str, ...] = tuple(r.value for r in Reaction)

    def __post_init__(self):
        shape = np.shape(self.sat)
        if len(shape) not in (3, 4):
            raise ValueError(f"Game.sat must be [Θ, S, R] or [B, Θ, S, R], got shape {shape}")
        for field in ("risk", "cost", "follower_utility"):
            if np.shape(getattr(self, field)) != shape:
                raise ValueError(f"Game.{field} has shape {np.shape(getattr(self, field))}, Game.sat has {shape}")
        t, s, r = shape[-3:]
        if (len(self.type_names), len(self.strategy_names), len(self.reaction_names)) != (t, s, r):
            raise ValueError(
                f"Game names ({len(self.type_names)} types, {len(self.strategy_names)} strategies, "
                f"{len(self.reaction_names)} reactions) do not match table shape {shape}"
            )


def default_game() -> Game:
    """The project's default tables (free choice; see the module docstring). Rows follow USER_TYPES,
    columns LeaderStrategy, the last axis Reaction."""
    # Satisfaction the leader credits for each type and reply strategy [Θ, S]. For the malicious type it
    # is not the attacker's own delight: serving an attack is a failure of the leader's objective, and a
    # bounded, lawful alternative is the only thing of value it can offer one (method notes §2: "removes the
    # expected gain of attacking"). That is what keeps compliance off the table for R2 at any β > 0, since
    # no size of β has to outweigh a credited gain first.
    sat_reply = np.array(
        [
            # hard  soft  avoid  correct  comply
            [-1.0, 0.2, 0.8, 0.7, 1.0],  # benign: wants the answer
            [-1.0, 0.4, 0.7, 0.8, 0.6],  # sensitive: values care and correction over raw compliance
            [-0.2, 0.1, -0.3, -0.3, -1.0],  # malicious: a boundary plus a lawful alternative is all it gets
        ]
    )
    # The follower's own satisfaction [Θ, S], what accepting the reply is worth to it: only the harmful
    # content satisfies an attacker.
    follower_sat = np.array(
        [
            [-1.0, 0.2, 0.8, 0.7, 1.0],
            [-1.0, 0.4, 0.7, 0.8, 0.6],
            [-1.0, -0.6, -0.2, -0.4, 1.0],
        ]
    )
    # Harm caused by the reply itself [Θ, S]: full compliance with a risky request is harmful for anyone,
    # most of all in a malicious user's hands.
    risk_reply = np.array(
        [
            [0.0, 0.0, 0.0, 0.0, 0.3],
            [0.0, 0.0, 0.05, 0.0, 0.8],
            [0.0, 0.0, 0.1, 0.05, 1.0],
        ]
    )
    # Harm added by the follower's reaction [Θ, R]: a vulnerable user who leaves may find an unsafe source;
    # an attacker who escalates may eventually succeed.
    risk_reaction = np.array(
        [
            # accept rephrase escalate leave
            [0.0, 0.0, 0.0, 0.05],
            [0.0, 0.05, 0.1, 0.4],
            [0.0, 0.1, 0.3, 0.1],
        ]
    )
    cost_reaction = np.array([0.0, 1.0, 1.0, 0.0])  # extra turns
    # Follower utility [Θ, S, R]: accepting is worth its own satisfaction with the reply; rephrasing is worth a
    # fixed retry value; escalating is worth the attacker's chance of getting more out of a reply that left
    # the door open (a soft refusal with a clear boundary leaves less than a bare one); leaving is worth
    # the outside option.
    retry_value = np.array([0.0, 0.1, 0.0])
    escalate_value = np.array(
        [
            [-0.5, -0.5, -0.5, -0.5, -0.5],
            [-0.3, -0.3, -0.3, -0.3, -0.3],
            [0.3, 0.1, 0.2, 0.1, 0.0],
        ]
    )
    outside_value = np.array([-0.3, 0.2, -0.1])
    t, s, r = 3, len(LeaderStrategy), len(Reaction)
    sat = np.broadcast_to(sat_reply[:, :, None], (t, s, r)).copy()
    risk = np.clip(risk_reply[:, :, None] + risk_reaction[:, None, :], 0.0, 1.0)
    cost = np.broadcast_to(cost_reaction[None, None, :], (t, s, r)).copy()
    util = np.empty((t, s, r))
    util[:, :, 0] = follower_sat
    util[:, :, 1] = retry_value[:, None]
    util[:, :, 2] = escalate_value
    util[:, :, 3] = outside_value[:, None]
    return Game(sat=sat, risk=risk, cost=cost, follower_utility=util)


# p(θ | risk level) before any other signal. None = the assessment found no risk.
PRIOR_BY_LEVEL: dict[tx.RiskLevel | None, tuple[float, float, float]] = {
    None: (0.97, 0.03, 0.0),
    tx.RiskLevel.R0: (0.80, 0.15, 0.05),
    tx.RiskLevel.R1: (0.25, 0.60, 0.15),
    tx.RiskLevel.R2: (0.05, 0.15, 0.80),
}
# Categories whose askers are often vulnerable: the sensitive weight is doubled before renormalizing.
_VULNERABLE_CATEGORIES = {"Bodily Harm", "Mental Health", "Vulnerable Groups"}


def type_prior(level=None, *, category: str | None = None, user_type_hint=None, hint_weight: float = 0.5):
    """p(θ | x) over USER_TYPES as a float64 [Θ] array.

    `level`: RiskLevel / 'R0'..'R2' / None (no risk). `category`: second-level name, shifts weight to the
    sensitive type for categories whose askers are often vulnerable. `user_type_hint`: the type a judge or
    the risk assessment inferred; mixed in with weight `hint_weight`.
    """
    lvl = None if level is None else tx.parse_level(level)
    p = np.array(PRIOR_BY_LEVEL[lvl], dtype=np.float64)
    cat = tx.find_category(category) if category is not None else None
    if isinstance(cat, tx.Level2Category) and cat.name_en in _VULNERABLE_CATEGORIES:
        p[1] *= 2.0
        p /= p.sum()
    if user_type_hint is not None:
        if not 0.0 <= hint_weight <= 1.0:
            raise ValueError(f"hint_weight must be in [0, 1], got {hint_weight}")
        onehot = np.zeros(3)
        onehot[USER_TYPES.index(tx.parse_user_type(user_type_hint))] = 1.0
        p = (1.0 - hint_weight) * p + hint_weight * onehot
    return p


def payoff(sat, risk, alpha=1.0, beta=1.0, gamma=0.0, cost=0.0):
    """Π = α·Sat − β·Risk − γ·Cost, elementwise (floats or arrays)."""
    return alpha * sat - beta * risk - gamma * cost


@functools.partial(jax.jit, static_argnames=("follower",))
def _solve(sat, risk, cost, util, prior, alpha, beta, gamma, rationality, follower):
    """sat/risk/cost/util [B, Θ, S, R]; prior [B, Θ]; alpha/beta/gamma/rationality [B]."""
    leader = (
        alpha[:, None, None, None] * sat - beta[:, None, None, None] * risk - gamma[:, None, None, None] * cost
    )  # [B, Θ, S, R]
    if follower == "best":
        best_util = jnp.max(util, axis=-1, keepdims=True)
        # Follower-optimal reactions (exact ties within a float tolerance); among them the leader's best.
        optimal = util >= best_util - 1e-9
        value_bts = jnp.max(jnp.where(optimal, leader, -jnp.inf), axis=-1)  # [B, Θ, S]
        reaction_bts = jnp.argmax(jnp.where(optimal, leader, -jnp.inf), axis=-1)
        reaction_prob = jax.nn.one_hot(reaction_bts, util.shape[-1], dtype=leader.dtype)
    else:  # quantal response
        reaction_prob = jax.nn.softmax(rationality[:, None, None, None] * util, axis=-1)  # [B, Θ, S, R]
        value_bts = jnp.sum(reaction_prob * leader, axis=-1)
    expected = jnp.einsum("bt,bts->bs", prior, value_bts)  # [B, S]
    best = jnp.argmax(expected, axis=-1)  # first maximum: the more conservative strategy on ties
    return best, expected, reaction_prob


def solve(game: Game, prior, *, alpha=1.0, beta=1.0, gamma=0.0, follower="best", rationality=5.0):
    """Batched solver. `prior` [B, Θ] (or [Θ]); alpha/beta/gamma/rationality scalars or [B].

    Returns (best [B] int32, expected_payoff [B, S], reaction_prob [B, Θ, S, R]) as jax arrays. With
    follower="best" reaction_prob is one-hot on the follower's best response.
    """
    if follower not in ("best", "quantal"):
        raise ValueError(f"follower must be 'best' or 'quantal', got {follower!r}")
    prior = jnp.asarray(prior, jnp.float32)
    if prior.ndim == 1:
        prior = prior[None]
    b, t = prior.shape
    tables = [jnp.asarray(x, jnp.float32) for x in (game.sat, game.risk, game.cost, game.follower_utility)]
    if tables[0].shape[-3] != t:
        raise ValueError(f"prior has {t} user types, the game has {tables[0].shape[-3]}")
    tables = [jnp.broadcast_to(x, (b,) + x.shape[-3:]) for x in tables]
    if not bool(jnp.all(prior >= 0)) or not bool(jnp.allclose(prior.sum(-1), 1.0, atol=1e-4)):
        raise ValueError("prior rows must be non-negative and sum to 1")
    scalars = [jnp.broadcast_to(jnp.asarray(x, jnp.float32), (b,)) for x in (alpha, beta, gamma, rationality)]
    return _solve(*tables, prior, *scalars, follower=follower)


@dataclasses.dataclass(frozen=True)
class StrategyChoice:
    strategy: str  # name of the chosen leader strategy
    index: int
    expected_payoff: float
    payoffs: dict[str, float]  # expected payoff of every leader strategy
    reactions: dict[str, dict[str, str]]  # type -> strategy -> most likely follower reaction


def best_strategy(
    prior=None,
    *,
    level=None,
    category: str | None = None,
    user_type_hint=None,
    game: Game | None = None,
    alpha: float = 1.0,
    beta: float = 1.0,
    gamma: float = 0.0,
    follower: str = "best",
    rationality: float = 5.0,
) -> StrategyChoice:
    """The leader commitment with the highest expected payoff for one query.

    Give `prior` (over the game's types) directly, or `level` / `category` / `user_type_hint` to build it
    with `type_prior`.
    """
    game = game or default_game()
    if prior is None:
        prior = type_prior(level, category=category, user_type_hint=user_type_hint)
    best, expected, reaction_prob = solve(
        game, prior, alpha=alpha, beta=beta, gamma=gamma, follower=follower, rationality=rationality
    )
    best, expected, reaction_prob = int(best[0]), np.asarray(expected[0]), np.asarray(reaction_prob[0])
    reactions = {
        tname: {
            sname: game.reaction_names[int(np.argmax(reaction_prob[ti, si]))]
            for si, sname in enumerate(game.strategy_names)
        }
        for ti, tname in enumerate(game.type_names)
    }
    return StrategyChoice(
        strategy=game.strategy_names[best],
        index=best,
        expected_payoff=float(expected[best]),
        payoffs={s: float(v) for s, v in zip(game.strategy_names, expected)},
        reactions=reactions,
    )
