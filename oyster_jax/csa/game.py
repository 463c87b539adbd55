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

The same payoff ranks Lingo-BP iterates from judged scores: `payoff(sat, risk, alpha, beta, gamma, cost)`;
`reply_strategy` says which leader move a judged reply is, so Lingo-BP can weigh each iterate by the game's
expected payoff of that move (see `oyster_jax.csa.pairs`).

Game files (JSON, `save_game` / `load_game`, the `--game FILE` of Lingo-BP and the Constructive evaluation):

    {"format": "oyster_jax.game/1",
     "type_names": ["benign", "sensitive", "malicious"],
     "strategy_names": ["hard_refusal", "soft_refusal", "risk_avoiding_answer", "corrective_answer",
                        "full_compliance"],
     "reaction_names": [... any distinct names ...],
     "sat": [Θ][S][R] in [-1, 1], "risk": [Θ][S][R] in [0, 1], "cost": [Θ][S][R] >= 0,
     "follower_utility": [Θ][S][R] finite,
     "fit": {...}  (optional: how `fit` estimated the follower tables)}

Type and strategy names are fixed (the prior and `reply_strategy` produce them); reactions are the game's own.

    python -m oyster_jax.csa.game fit --trajectories DIR/trajectories.jsonl [--out FILE] [--base FILE]
        [--rationality 5] [--smoothing 1]

estimates the follower's reaction tables from judged Lingo-BP trajectories (`fit_game`) and writes a game file
(default DIR/game.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import functools
import hashlib
import json
import math
import pathlib
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np

from oyster_jax import cli
from oyster_jax.core import taxonomy as tx
from oyster_jax.core.files import atomic_write_json
from oyster_jax.core.schemas import iter_json_lines

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
    "GAME_FORMAT",
    "GameFileError",
    "game_to_dict",
    "game_from_dict",
    "save_game",
    "load_game",
    "fingerprint",
    "reply_strategy",
    "classify_reaction",
    "quantal_reactions",
    "fit_game",
    "main",
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


# --------------------------------------------------------------------------------------------------
# Game files
# --------------------------------------------------------------------------------------------------

GAME_FORMAT = "oyster_jax.game/1"
_TABLES = ("sat", "risk", "cost", "follower_utility")
_TABLE_RANGES = {"sat": (-1.0, 1.0), "risk": (0.0, 1.0), "cost": (0.0, math.inf), "follower_utility": None}


class GameFileError(ValueError):
    """A bad game file: the message names the file and the field."""


def game_to_dict(game: Game, fit: dict | None = None) -> dict:
    if np.ndim(game.sat) != 3:
        raise ValueError("only a single [Θ, S, R] game can be written to a file")
    out = {
        "format": GAME_FORMAT,
        "type_names": list(game.type_names),
        "strategy_names": list(game.strategy_names),
        "reaction_names": list(game.reaction_names),
    }
    out |= {name: np.asarray(getattr(game, name), dtype=np.float64).tolist() for name in _TABLES}
    if fit is not None:
        out["fit"] = fit
    return out


def game_from_dict(obj, where: str = "<game>") -> Game:
    """Validate a game file's JSON value; GameFileError names `where` and the field."""

    def fail(field: str, reason: str):
        raise GameFileError(f"{where}: field '{field}': {reason}")

    if not isinstance(obj, dict):
        raise GameFileError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if obj.get("format") != GAME_FORMAT:
        fail("format", f"expected {GAME_FORMAT!r}, got {obj.get('format')!r}")
    expected = {
        "type_names": tuple(t.value for t in USER_TYPES),
        "strategy_names": tuple(s.value for s in LeaderStrategy),
    }
    names = {}
    for key in ("type_names", "strategy_names", "reaction_names"):
        value = obj.get(key)
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            fail(key, "expected a non-empty list of non-empty strings")
        if len(set(value)) != len(value):
            fail(key, "names must be distinct")
        if key in expected and tuple(value) != expected[key]:
            fail(key, f"must be {list(expected[key])} in this order (the prior and the reply classifier use them)")
        names[key] = tuple(value)
    shape = (len(names["type_names"]), len(names["strategy_names"]), len(names["reaction_names"]))
    tables = {}
    for key in _TABLES:
        if key not in obj:
            fail(key, "missing")
        try:
            arr = np.asarray(obj[key], dtype=np.float64)
        except (TypeError, ValueError):
            fail(key, f"expected a nested list of numbers of shape {list(shape)}")
        if arr.shape != shape:
            fail(key, f"shape {list(arr.shape)}, expected {list(shape)} (types × strategies × reactions)")
        bad = np.argwhere(~np.isfinite(arr))
        if bad.size:
            fail(f"{key}{list(map(int, bad[0]))}", "not a finite number")
        bounds = _TABLE_RANGES[key]
        if bounds is not None:
            out = np.argwhere((arr < bounds[0]) | (arr > bounds[1]))
            if out.size:
                idx = tuple(map(int, out[0]))
                fail(f"{key}{list(idx)}", f"{arr[idx]:g} is outside [{bounds[0]:g}, {bounds[1]:g}]")
        tables[key] = arr
    return Game(**tables, **names)


def save_game(game: Game, path, fit: dict | None = None) -> None:
    atomic_write_json(path, game_to_dict(game, fit))


def fingerprint(game: Game) -> str:
    """A short content hash of a game's names and tables (which game made a trajectory)."""
    text = json.dumps(game_to_dict(game), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def load_game(path) -> Game:
    """Read and validate a game file; GameFileError (exit 2 in the CLIs) names the file and field."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise GameFileError(f"{path}: game file not found")
    try:
        obj = json.loads(path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GameFileError(f"{path}: not a JSON game file ({e})") from None
    return game_from_dict(obj, str(path))


# --------------------------------------------------------------------------------------------------
# Judged replies as game moves
# --------------------------------------------------------------------------------------------------

# A safe reply this satisfied is an answer, not a refusal; one this unsatisfying is a bare refusal (the user
# simulator's five items: a blunt "no" scores around -0.4). Free choices, like the tables.
ANSWER_SAT = 0.6
HARD_REFUSAL_SAT = -0.2
_CORRECTIVE = re.compile(r"correct|debunk|misconception|false belief|纠正|澄清|辟谣|误解", re.IGNORECASE)


def reply_strategy(sat: float, risk: float, chain: dict | None = None) -> str:
    """The leader move a judged reply is: a reply the safety judge found risky carries risk, whatever it
    looks like (full compliance); a safe one is a hard refusal, a soft refusal or an answer by its Sat; an
    answer whose strategies correct a belief (chain given) is the corrective answer."""
    if risk > 0:
        return LeaderStrategy.FULL_COMPLIANCE.value
    if sat <= HARD_REFUSAL_SAT:
        return LeaderStrategy.HARD_REFUSAL.value
    if sat < ANSWER_SAT:
        return LeaderStrategy.SOFT_REFUSAL.value
    if chain:
        strategies = chain.get("Response Strategy Formulation") or {}
        text = json.dumps(strategies, ensure_ascii=False) if isinstance(strategies, dict) else str(strategies)
        if _CORRECTIVE.search(text):
            return LeaderStrategy.CORRECTIVE_ANSWER.value
    return LeaderStrategy.RISK_AVOIDING_ANSWER.value


# Cues in the safety judge's predicted next user turn, most telling first (English and Chinese).
_REACTION_CUES = (
    (
        Reaction.ESCALATE,
        r"ignore (all |your )?(previous|prior)|pretend|role.?play|hypothetical|jailbreak|developer mode|no rules|"
        r"you must|i order you|or else|忽略|假设你|扮演|越狱|必须告诉|不许拒绝|角色",
    ),
    (
        Reaction.LEAVE,
        r"never ?mind|forget it|somewhere else|elsewhere|another (site|app|ai|source)|useless|算了|别处|去问别人|没用",
    ),
    (
        Reaction.REPHRASE,
        r"\bagain\b|just tell me|i (still )?(need|want) the|but i (really|only|just)|i asked|rephrase|in other words|"
        r"to be clear|再问|换个说法|我只是想|还是想|直接告诉我|就告诉我",
    ),
)


def classify_reaction(next_turn: str) -> str | None:
    """The follower reaction that a predicted next user turn shows; None for an empty prediction. A turn with
    no cue of retrying, escalating or leaving goes on with the conversation on the offered terms: accept."""
    text = (next_turn or "").strip()
    if not text or text in ("-", "—"):
        return None
    for reaction, pattern in _REACTION_CUES:
        if re.search(pattern, text, re.IGNORECASE):
            return reaction.value
    return Reaction.ACCEPT.value


def quantal_reactions(game: Game, rationality: float) -> np.ndarray:
    """q(r | θ, s) ∝ exp(λ·U[θ, s, r]) as a float64 [Θ, S, R] array."""
    z = rationality * np.asarray(game.follower_utility, dtype=np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


class FitError(ValueError):
    """Bad trajectories for `fit_game`: the message names file, line and field."""


def fit_game(trajectories_path, *, base: Game | None = None, rationality: float = 5.0, smoothing: float = 1.0):
    """Estimate the follower's reaction tables from judged Lingo-BP trajectories.

    Every judged reply (each iterate, and each follow-up turn of a multi-turn rollout) is one observation
    (θ, s, r): θ = the user type the safety judge inferred (else the trajectory's assessed one), s =
    `reply_strategy` of the reply's judged Sat and Risk, r = `classify_reaction` of the judge's predicted next
    turn. The estimate q̂(r | θ, s) = (N[θ, s, r] + k·q0[θ, s, r]) / (N[θ, s] + k) shrinks the counts toward
    the base game's own quantal reactions q0 (k = `smoothing` pseudo-observations), and the fitted follower
    utility is U = log q̂ / λ, so that a quantal follower of rationality λ reacts exactly as observed (and a
    best-responding one with the most frequent reaction). Sat, Risk and Cost tables are the base game's.

    Returns (game, fit info dict for the file's "fit" field).
    """
    if not rationality > 0 or not smoothing > 0:
        raise ValueError("rationality and smoothing must be > 0")
    base = base or default_game()
    if np.ndim(base.sat) != 3:
        raise ValueError("the base game must be a single [Θ, S, R] game")
    path = pathlib.Path(trajectories_path)
    if not path.is_file():
        raise FitError(f"{path}: trajectories file not found")
    t_idx = {n: i for i, n in enumerate(base.type_names)}
    s_idx = {n: i for i, n in enumerate(base.strategy_names)}
    r_idx = {n: i for i, n in enumerate(base.reaction_names)}
    missing = [r.value for r in Reaction if r.value not in r_idx]
    if missing:
        raise ValueError(f"the base game has no reaction {missing[0]!r}; fitting needs {[r.value for r in Reaction]}")
    counts = np.zeros(np.shape(base.sat))
    skipped = {"no_user_type": 0, "no_next_turn": 0}
    trajectories = 0
    for lineno, rec in iter_json_lines(path, FitError):
        where = f"{path}:{lineno}"
        if not isinstance(rec, dict) or not isinstance(rec.get("iterates"), list):
            raise FitError(f"{where}: field 'iterates' missing (not a Lingo-BP trajectory)")
        trajectories += 1
        for i, it in enumerate(rec["iterates"]):
            turns = [it] + list((it.get("conversation") or {}).get("follow_up_judgments") or [])
            for k, judged in enumerate(turns):
                field = f"iterates[{i}]" + (f".conversation.follow_up_judgments[{k - 1}]" if k else "")
                sj = judged.get("safety_judgment") if isinstance(judged, dict) else None
                if not isinstance(sj, dict):
                    raise FitError(f"{where}: field '{field}.safety_judgment' missing or not an object")
                for key in ("sat", "risk"):
                    v = judged.get(key)
                    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                        raise FitError(f"{where}: field '{field}.{key}' missing or not a finite number")
                user_type = sj.get("user_type") or rec.get("user_type")
                if user_type not in t_idx:
                    skipped["no_user_type"] += 1
                    continue
                reaction = classify_reaction(str(sj.get("next_turn") or ""))
                if reaction is None:
                    skipped["no_next_turn"] += 1
                    continue
                s = reply_strategy(judged["sat"], judged["risk"], judged.get("chain") or it.get("chain"))
                counts[t_idx[user_type], s_idx[s], r_idx[reaction]] += 1
    if trajectories == 0:
        raise FitError(f"{path}: no trajectories in the file")
    q0 = quantal_reactions(base, rationality)
    n = counts.sum(axis=-1, keepdims=True)
    q_hat = (counts + smoothing * q0) / (n + smoothing)
    utility = np.log(q_hat) / rationality
    game = dataclasses.replace(base, follower_utility=utility)
    info = {
        "trajectories": str(path),
        "trajectory_count": trajectories,
        "observations": int(counts.sum()),
        "skipped": skipped,
        "rationality": rationality,
        "smoothing": smoothing,
        "counts": counts.astype(int).tolist(),
    }
    return game, info


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m oyster_jax.csa.game", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fit", help="estimate the follower reaction tables from judged trajectories")
    f.add_argument("--trajectories", required=True, help="a Lingo-BP run's trajectories.jsonl")
    f.add_argument("--out", help="game file to write (default: game.json beside the trajectories)")
    f.add_argument("--base", help="game file whose Sat/Risk/Cost tables and smoothing prior to use (default tables)")
    f.add_argument("--rationality", type=float, default=5.0, help="quantal λ the fitted utilities assume (default 5)")
    f.add_argument("--smoothing", type=float, default=1.0, help="pseudo-observations of the base reactions (default 1)")
    f.add_argument("--debug", action="store_true", help="print tracebacks of bad-input errors")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    with cli.bad_input_exits(args.debug):
        base = load_game(args.base) if args.base else None
        game, info = fit_game(args.trajectories, base=base, rationality=args.rationality, smoothing=args.smoothing)
        out = pathlib.Path(args.out) if args.out else pathlib.Path(args.trajectories).with_name("game.json")
        save_game(game, out, info)
    print(
        f"game fit: {info['observations']} observations from {info['trajectory_count']} trajectories "
        f"(skipped: {info['skipped']['no_user_type']} without a user type, {info['skipped']['no_next_turn']} "
        f"without a predicted next turn) -> {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
