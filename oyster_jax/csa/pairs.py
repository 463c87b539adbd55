"""What Lingo-BP keeps of a trajectory: the game-weighted ranking of iterates, the pearl point, the quality
floors of the training data, preference pairs and contrastive rejects (method notes §6-7, issue 15 points 1
and 6).

Ranking. Every judged iterate i is a leader move s_i = `game.reply_strategy(Sat_i, Risk_i, chain_i)` (on the
conversation-level scores when the run played follow-up turns). Its ranking payoff is

    E_i = (1 − w)·Π_i + w·V(s_i),     Π_i = α·Sat_i − β·Risk_i − γ·Cost_i (the judges),
    V(s) = Σ_θ p(θ | x) Σ_r q(r | θ, s)·Π_game[θ, s, r]

where V is the game's expected leader payoff of that move under the query's type prior with the follower's
(best or quantal) response, as the engine's solver computed it for the query (`game.expected_payoffs` of the
trajectory), and w = `game_weight`. So the game decides: the pearl point is the safe iterate with the highest
E (then Sat, then the earliest), and pairs are ordered and kept by E.

Floors. An SFT record is written only for a safe pearl whose Sat ≥ `min_sat`; a pair only when
E_chosen − E_rejected ≥ `min_margin` (and > 0). What the floors drop is counted per trajectory
(`dropped`), and summed by the summary.

Contrastive rejects (`contrastive`: a subset of blunt_refusal, unsafe_compliance): the pearl against a blunt
refusal (when the pearl is not itself a refusal) and, for a query with a risk category, against an
unsafe-compliance placeholder ("[gives the requested instructions]": never real content). They are not
judged: their scores are null and the pair says `rejected_kind`.

One thinking channel. The policy's native reasoning and the tagged thinking of a recombined reply read
differently; a pair whose sides came from different channels would teach the style, not the safety. When
the channels differ (and for every contrastive pair), both sides' thinking is the chain rendered as prose
(`chain.render_prose`), the same channel for both; the pair records `thinking_channel`.
"""

from __future__ import annotations

import dataclasses

from oyster_jax.core import chain as chain_lib
from oyster_jax.csa import game as game_lib

__all__ = [
    "CONTRASTIVE_KINDS",
    "Selection",
    "DROP_KEYS",
    "rank_iterates",
    "contrastive_reply",
    "select",
]

CONTRASTIVE_KINDS = ("blunt_refusal", "unsafe_compliance")
DROP_KEYS = ("sft_unsafe", "sft_min_sat", "pairs_min_margin", "pairs_not_better")
_REFUSALS = {game_lib.LeaderStrategy.HARD_REFUSAL.value, game_lib.LeaderStrategy.SOFT_REFUSAL.value}

# Contrastive rejects: a bare refusal and a compliance placeholder, with the plans that would produce them
# (rendered as prose for the thinking channel). Placeholders only: no real content, ever.
_CONTRASTIVE = {
    "blunt_refusal": {
        "en": ("I can't help with that.", ["refuse"], []),
        "zh": ("抱歉，这个我帮不了。", ["拒绝"], []),
    },
    "unsafe_compliance": {
        "en": ("Sure. [gives the requested instructions]", [], ["do exactly what is asked"]),
        "zh": ("好的。[给出所要求的具体操作]", [], ["完全照做"]),
    },
}


@dataclasses.dataclass(frozen=True)
class Selection:
    pairs: tuple[str, ...] = ("initial", "worst")  # rejected side: the initial iterate, the worst by E; or all
    min_sat: float = 0.6  # SFT floor on the pearl's Sat
    min_margin: float = 0.2  # pair floor on E_chosen − E_rejected (one user-simulator item is 0.2 of Sat)
    game_weight: float = 0.5  # w in E = (1 − w)·Π + w·V(s)
    contrastive: tuple[str, ...] = ()

    def __post_init__(self):
        bad = set(self.pairs) - {"initial", "worst", "all"}
        if bad or not self.pairs:
            raise ValueError(f"pairs must be a subset of initial, worst, all; got {self.pairs}")
        bad = set(self.contrastive) - set(CONTRASTIVE_KINDS)
        if bad:
            raise ValueError(f"contrastive must be a subset of {', '.join(CONTRASTIVE_KINDS)}; got {sorted(bad)}")
        if not 0.0 <= self.game_weight <= 1.0:
            raise ValueError(f"game_weight must be in [0, 1], got {self.game_weight}")
        if not -1.0 <= self.min_sat <= 1.0:
            raise ValueError(f"min_sat must be in [-1, 1], got {self.min_sat}")
        if self.min_margin < 0:
            raise ValueError(f"min_margin must be >= 0, got {self.min_margin}")


def _outcome(it: dict) -> dict:
    """The scores an iterate is ranked on: the conversation's when follow-up turns were played."""
    return it.get("conversation") or it


def rank_iterates(traj: dict, game_weight: float) -> list[dict]:
    """Per iterate: {strategy, judge_payoff, game_value, expected_payoff}; also written into each iterate."""
    values = traj["game"]["expected_payoffs"]
    out = []
    for it in traj["iterates"]:
        o = _outcome(it)
        strategy = game_lib.reply_strategy(o["sat"], o["risk"], it.get("chain"))
        v = float(values[strategy])
        e = (1.0 - game_weight) * o["payoff"] + game_weight * v
        it["strategy"], it["expected_payoff"] = strategy, e
        out.append({"strategy": strategy, "judge_payoff": o["payoff"], "game_value": v, "expected_payoff": e})
    return out


def _scores(it: dict) -> dict:
    o = _outcome(it)
    s = {"round": it["round"], "sat": o["sat"], "risk": o["risk"], "payoff": o["payoff"]}
    return s | {"expected_payoff": it["expected_payoff"]}


def contrastive_reply(kind: str, language: str, user_needs: str) -> tuple[str, str]:
    """(thinking, response) of a contrastive reject, thinking in the chain-prose channel."""
    response, safety, useful = _CONTRASTIVE[kind]["zh" if language == "zh" else "en"]
    chain = chain_lib.SafetyChain(user_needs=user_needs, usefulness_strategies=safety + useful)
    return chain_lib.render_prose(chain, language), response


def _prose(it: dict, language: str) -> str:
    return chain_lib.render_prose(chain_lib.chain_from_dict(it["chain"]), language) if it.get("chain") else ""


def _channel(it: dict) -> str:
    return it.get("thinking_source") or ("reasoning" if it.get("thinking") else "none")


def _thinking_pair(chosen: dict, rejected: dict, language: str) -> tuple[str, str, str]:
    if _channel(chosen) == _channel(rejected):
        return chosen["thinking"], rejected["thinking"], _channel(chosen)
    return _prose(chosen, language), _prose(rejected, language), "chain_prose"


def select(traj: dict, sel: Selection) -> tuple[list[dict], list[dict]]:
    """Fill the trajectory's ranking, pearl/after/outcome and `dropped` fields; return (sft, pairs)."""
    its = traj["iterates"]
    rank_iterates(traj, sel.game_weight)
    e = [it["expected_payoff"] for it in its]
    safe = [i for i, it in enumerate(its) if _outcome(it)["risk"] == 0]
    pearl = max(safe, key=lambda i: (e[i], _outcome(its[i])["sat"], -i)) if safe else None
    best = max(range(len(its)), key=lambda i: (e[i], -i))
    worst = min(range(len(its)), key=lambda i: (e[i], i))
    after = pearl if pearl is not None else best
    dropped = dict.fromkeys(DROP_KEYS, 0)
    traj["pearl_index"] = pearl
    traj["before"] = _scores(its[0])
    traj["after"] = _scores(its[after])
    traj["outcome"] = "improved" if after != 0 and e[after] > e[0] else "unchanged"
    sft, prefs = [], []
    lang = traj["language"]
    history = traj["prompt_messages"]
    if pearl is None:
        dropped["sft_unsafe"] = 1
    else:
        p = its[pearl]
        if _outcome(p)["sat"] >= sel.min_sat:
            rec = {
                "id": traj["id"],
                "language": lang,
                "messages": history + [{"role": "assistant", "content": p["response"]}],
                "thinking": p["thinking"],
                "chain": p["chain"],
            }
            if all(traj["risk"].get(k) for k in ("level", "category_l1", "category_l2", "intent")):
                rec["risk"] = dict(traj["risk"])  # the SFT schema wants every field; a partial assessment is left out
            if traj.get("persona") is not None:
                rec["persona"] = traj["persona"]
            if p.get("conversation"):
                rec["follow_up"] = p["conversation"]["follow_up"]
            rec["scores"] = _scores(p)
            sft.append(rec)
        else:
            dropped["sft_min_sat"] = 1
        rejected = (
            list(range(len(its)))
            if "all" in sel.pairs
            else ([0] if "initial" in sel.pairs else []) + ([worst] if "worst" in sel.pairs else [])
        )
        seen = set()
        for r in rejected:
            if r == pearl or r in seen:
                continue
            seen.add(r)
            margin = e[pearl] - e[r]
            if margin <= 0:
                dropped["pairs_not_better"] += 1
                continue
            if margin < sel.min_margin:
                dropped["pairs_min_margin"] += 1
                continue
            ct, rt, channel = _thinking_pair(p, its[r], lang)
            chosen = {"thinking": ct, "response": p["response"]}
            rej = {"thinking": rt, "response": its[r]["response"]}
            if p.get("conversation"):
                chosen["follow_up"] = p["conversation"]["follow_up"]
            if its[r].get("conversation"):
                rej["follow_up"] = its[r]["conversation"]["follow_up"]
            prefs.append(
                {
                    "id": f"{traj['id']}#pair-r{pearl}-r{r}",
                    "language": lang,
                    "prompt_messages": history,
                    "chosen": chosen,
                    "rejected": rej,
                    "thinking_channel": channel,
                    "scores": {"chosen": _scores(p), "rejected": _scores(its[r])},
                }
            )
        needs = (p.get("chain") or {}).get("User Needs Analysis") or ""
        for kind in sel.contrastive:
            if kind == "blunt_refusal" and p["strategy"] in _REFUSALS:
                continue  # the pearl is a refusal itself: nothing to contrast
            if kind == "unsafe_compliance" and not traj["risk"].get("category_l1"):
                continue  # no risk: compliance is not unsafe here
            rt, rresp = contrastive_reply(kind, lang, needs)
            prefs.append(
                {
                    "id": f"{traj['id']}#pair-r{pearl}-{kind}",
                    "language": lang,
                    "prompt_messages": history,
                    "chosen": {"thinking": _prose(p, lang), "response": p["response"]},
                    "rejected": {"thinking": rt, "response": rresp},
                    "rejected_kind": kind,
                    "thinking_channel": "chain_prose",
                    "scores": {"chosen": _scores(p), "rejected": {"sat": None, "risk": None}},
                }
            )
    traj["dropped"] = dropped
    traj["outputs"] = {"sft": [r["id"] for r in sft], "pairs": [r["id"] for r in prefs]}
    return sft, prefs
