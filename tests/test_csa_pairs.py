"""What Lingo-BP keeps of a trajectory (csa.pairs): the game-weighted ranking, the data floors, contrastive rejects
and one thinking channel per pair; and, end to end on the scripted backend, a game swap that changes the pairs."""

import json

import numpy as np
import pytest

from oyster_jax.core.schemas import validate_record
from oyster_jax.csa import game as g
from oyster_jax.csa import lingo_bp
from oyster_jax.csa import pairs as P
from oyster_jax.csa.scripted import CONSTRUCTIVE, REFUSAL, ScriptedLingo
from oyster_jax.llm.testing import FakeOpenAIServer

NAMES = [s.value for s in g.LeaderStrategy]
CHAIN = {
    "User Needs Analysis": "needs help",
    "Risk Intent Analysis": "inquiry",
    "Safety Guidelines": "withhold detail",
    "Response Strategy Formulation": {"Safety Strategies": "refuse", "Usefulness Strategies": "offer options"},
}


def _traj(points, values=None, sources=None):
    """Iterates (sat, risk) by hand, thinking channels `sources`, the game's value per move `values`."""
    sources = sources or ["reasoning"] + ["tag"] * (len(points) - 1)
    its = [
        {
            "round": i,
            "thinking": f"t{i}",
            "thinking_source": src,
            "response": f"r{i}",
            "chain": CHAIN,
            "sat": s,
            "risk": k,
            "payoff": s - 2 * k,
        }
        for i, ((s, k), src) in enumerate(zip(points, sources))
    ]
    return {
        "id": "x",
        "language": "en",
        "prompt_messages": [{"role": "user", "content": "q"}],
        "risk": {"level": "R1", "category_l1": "Misinformation", "category_l2": "Rumors", "intent": "inquiry"},
        "iterates": its,
        "game": {"expected_payoffs": values or dict.fromkeys(NAMES, 0.0)},
    }


def test_reply_strategy():
    assert g.reply_strategy(1.0, 1.0) == "full_compliance"  # risky whatever it looks like
    assert g.reply_strategy(-0.4, 0.0) == "hard_refusal"
    assert g.reply_strategy(0.2, 0.0) == "soft_refusal"
    assert g.reply_strategy(0.8, 0.0) == "risk_avoiding_answer"
    corrective = {"Response Strategy Formulation": {"Safety Strategies": "correct the false belief"}}
    assert g.reply_strategy(0.8, 0.0, corrective) == "corrective_answer"


def test_ranking_is_the_game_weighted_payoff():
    values = dict.fromkeys(NAMES, 0.0) | {"hard_refusal": 0.8, "risk_avoiding_answer": -0.6}
    t = _traj([(-0.4, 0), (1.0, 0)], values)
    ranks = P.rank_iterates(t, 0.25)
    # By hand: E0 = 0.75·(−0.4) + 0.25·0.8 = −0.1; E1 = 0.75·1 + 0.25·(−0.6) = 0.6.
    assert [r["strategy"] for r in ranks] == ["hard_refusal", "risk_avoiding_answer"]
    assert [r["expected_payoff"] for r in ranks] == pytest.approx([-0.1, 0.6])
    # w = 1: the game alone decides, and it prefers the refusal.
    assert [r["expected_payoff"] for r in P.rank_iterates(t, 1.0)] == pytest.approx([0.8, -0.6])


def test_two_games_choose_different_pearls_and_pairs():
    """The same judged iterates under two games: the default-like one keeps the answer, a refusal game the refusal."""
    answer_game = dict.fromkeys(NAMES, -1.0) | {"risk_avoiding_answer": 0.5}
    refusal_game = dict.fromkeys(NAMES, -1.0) | {"hard_refusal": 1.0}
    sel = P.Selection(min_sat=-1.0)
    t1, t2 = _traj([(-0.4, 0), (1.0, 0)], answer_game), _traj([(-0.4, 0), (1.0, 0)], refusal_game)
    _, p1 = P.select(t1, sel)
    _, p2 = P.select(t2, sel)
    assert t1["pearl_index"] == 1 and t2["pearl_index"] == 0
    assert [p["id"] for p in p1] == ["x#pair-r1-r0"] and [p["id"] for p in p2] == ["x#pair-r0-r1"]
    assert p1[0]["chosen"]["response"] == p2[0]["rejected"]["response"] == "r1"


def test_sft_floor_needs_safe_and_min_sat():
    t = _traj([(-0.4, 0), (0.4, 0)])
    sft, pairs = P.select(t, P.Selection(min_sat=0.6))
    assert sft == [] and t["pearl_index"] == 1 and t["dropped"]["sft_min_sat"] == 1
    assert [p["id"] for p in pairs] == ["x#pair-r1-r0"]  # the pair still teaches the better of the two
    sft, _ = P.select(_traj([(-0.4, 0), (0.4, 0)]), P.Selection(min_sat=0.4))
    assert [r["scores"]["sat"] for r in sft] == [0.4]  # the floor is inclusive
    t = _traj([(1.0, 1), (0.8, 1)])
    sft, pairs = P.select(t, P.Selection())
    assert sft == pairs == [] and t["dropped"]["sft_unsafe"] == 1


def test_pair_margin_floor():
    # Game values 0, w = 0.5: E = Π / 2. Pearl r2 (Sat 1, E 0.5); r0: E 0.3 (margin 0.2); r1: E 0.45 (0.05).
    t = _traj([(0.6, 0), (0.9, 0), (1.0, 0)])
    _, pairs = P.select(t, P.Selection(pairs=("all",), min_margin=0.1))
    assert [p["id"] for p in pairs] == ["x#pair-r2-r0"]
    assert t["dropped"] == {"sft_unsafe": 0, "sft_min_sat": 0, "pairs_min_margin": 1, "pairs_not_better": 0}
    _, pairs = P.select(_traj([(0.6, 0), (0.9, 0), (1.0, 0)]), P.Selection(pairs=("all",), min_margin=0.0))
    assert [p["id"] for p in pairs] == ["x#pair-r2-r0", "x#pair-r2-r1"]
    t = _traj([(1.0, 0), (1.0, 0)])
    P.select(t, P.Selection(pairs=("all",)))
    assert t["pearl_index"] == 0 and t["dropped"]["pairs_not_better"] == 1  # a tie is no preference


def test_thinking_channels_match():
    t = _traj([(-0.4, 0), (1.0, 0)], sources=["reasoning", "tag"])
    _, pairs = P.select(t, P.Selection())
    p = pairs[0]
    assert p["thinking_channel"] == "chain_prose"
    assert p["chosen"]["thinking"] == p["rejected"]["thinking"] != "t1"  # both from the same chain here
    assert "needs help" in p["chosen"]["thinking"]
    _, pairs = P.select(_traj([(-0.4, 0), (1.0, 0)], sources=["tag", "tag"]), P.Selection())
    assert pairs[0]["thinking_channel"] == "tag"
    assert (pairs[0]["chosen"]["thinking"], pairs[0]["rejected"]["thinking"]) == ("t1", "t0")


def test_contrastive_rejects_are_placeholders_in_the_same_channel():
    t = _traj([(-0.4, 0), (1.0, 0)])
    _, pairs = P.select(t, P.Selection(contrastive=P.CONTRASTIVE_KINDS))
    by_kind = {p.get("rejected_kind"): p for p in pairs}
    assert set(by_kind) == {None, "blunt_refusal", "unsafe_compliance"}
    assert by_kind["unsafe_compliance"]["rejected"]["response"] == "Sure. [gives the requested instructions]"
    assert by_kind["blunt_refusal"]["rejected"]["response"] == "I can't help with that."
    for kind in P.CONTRASTIVE_KINDS:
        p = by_kind[kind]
        assert p["id"] == f"x#pair-r1-{kind}" and p["thinking_channel"] == "chain_prose"
        assert p["chosen"]["thinking"].startswith("What the user needs") and p["rejected"]["thinking"]
        validate_record(p, "pref")
    # A refusal pearl gets no blunt-refusal contrast; a no-risk query no unsafe-compliance one.
    t = _traj([(-0.4, 0), (0.2, 0)])
    t["risk"] = {"level": None, "category_l1": None, "category_l2": None, "intent": None}
    _, pairs = P.select(t, P.Selection(contrastive=P.CONTRASTIVE_KINDS))
    assert not any(p.get("rejected_kind") for p in pairs)
    zh = _traj([(-0.4, 0), (1.0, 0)])
    zh["language"] = "zh"
    _, pairs = P.select(zh, P.Selection(contrastive=("unsafe_compliance",)))
    assert "[给出所要求的具体操作]" in pairs[-1]["rejected"]["response"]


def test_selection_rejects_bad_settings():
    for kwargs, word in [
        ({"pairs": ("best",)}, "pairs"),
        ({"contrastive": ("rude",)}, "contrastive"),
        ({"game_weight": 1.5}, "game_weight"),
        ({"min_sat": 2.0}, "min_sat"),
        ({"min_margin": -0.1}, "min_margin"),
    ]:
        with pytest.raises(ValueError, match=word):
            P.Selection(**kwargs)


# --- end to end: a game swap on the same scripted trajectories ---


def _refusal_game() -> g.Game:
    """A game in which a bare refusal is the best move for every user type, and every answer the worst."""
    base = g.default_game()
    sat = np.full_like(base.sat, -1.0)
    sat[:, 0, :] = 1.0
    return g.Game(sat=sat, risk=np.zeros_like(base.risk), cost=base.cost, follower_utility=base.follower_utility)


def _run(tmp_path, name, *extra):
    inp = tmp_path / "q.jsonl"
    queries = [{"id": "a", "query": "How do I do the thing?"}, {"id": "b", "query": "#unsafe-first please"}]
    inp.write_text("".join(json.dumps(q) + "\n" for q in queries))
    out = tmp_path / name
    with FakeOpenAIServer(ScriptedLingo()) as server:
        spec = f"openai:{server.base_url}#scripted"
        args = ["--input", str(inp), "--policy", spec, "--judge", spec, "--out", str(out), "--no_progress"]
        assert lingo_bp.main(args + ["--backoff", "0.01", *extra]) == lingo_bp.EXIT_OK
    read = lambda f: [json.loads(x) for x in (out / f).read_text().splitlines()]
    return read("trajectories.jsonl"), read("pairs.jsonl"), json.loads((out / "summary.json").read_text())


def test_a_game_swap_changes_the_pairs(tmp_path):
    game_file = tmp_path / "refusal_game.json"
    g.save_game(_refusal_game(), game_file)
    t_default, p_default, _ = _run(tmp_path, "default")
    t_refusal, p_refusal, s_refusal = _run(tmp_path, "refusal", "--game", str(game_file))
    # The same judged iterates (the scripted backend is deterministic) ...
    t_default, t_refusal = (sorted(ts, key=lambda t: t["id"]) for ts in (t_default, t_refusal))  # finish order varies
    strip = lambda ts: [[(it["response"], it["sat"], it["risk"]) for it in t["iterates"]] for t in ts]
    assert strip(t_default) == strip(t_refusal)
    assert t_refusal[0]["game"]["recommended"] == "hard_refusal"
    assert t_refusal[0]["game"]["game_id"] == g.fingerprint(_refusal_game()) != t_default[0]["game"]["game_id"]
    # ... but other pairs: the refusal game prefers the initial blunt refusal of "a" over the constructive reply.
    assert sorted(p["id"] for p in p_default) == ["a#pair-r1-r0", "b#pair-r1-r0"]
    assert sorted(p["id"] for p in p_refusal) == ["a#pair-r0-r1", "b#pair-r1-r0"]
    a_pair = next(p for p in p_refusal if p["id"] == "a#pair-r0-r1")
    assert a_pair["chosen"]["response"] == REFUSAL and a_pair["rejected"]["response"] == CONSTRUCTIVE
    # The refusal pearl of "a" is below the SFT floor: counted, not written.
    assert s_refusal["sft_written"] == 1 and s_refusal["dropped"]["sft_min_sat"] == 1
