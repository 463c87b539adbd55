"""Multi-turn follow-through (--turns), conversation input (`messages`), the follow_up field of the data schemas
(old files still load), and the trust region's threshold from the config; all on the scripted backend."""

import json
import pathlib

import pytest

from oyster_jax.core import chain as chain_lib
from oyster_jax.core.schemas import RecordError, read_records, validate_record
from oyster_jax.csa import game as g
from oyster_jax.csa import lingo_bp
from oyster_jax.csa.scripted import CONSTRUCTIVE, PLACEHOLDER, REFUSAL, ScriptedLingo, identify_task
from oyster_jax.data import seed
from oyster_jax.llm.testing import FakeOpenAIServer

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(tmp_path, queries, *extra, name="out"):
    inp = tmp_path / f"{name}.jsonl"
    inp.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in queries), encoding="utf-8")
    out = tmp_path / name
    with FakeOpenAIServer(ScriptedLingo()) as server:
        spec = f"openai:{server.base_url}#scripted"
        args = ["--input", str(inp), "--policy", spec, "--judge", spec, "--out", str(out), "--no_progress"]
        rc = lingo_bp.main(args + ["--backoff", "0.01", *extra])
    read = lambda f: {r["id"]: r for r in map(json.loads, (out / f).read_text("utf-8").splitlines())}
    return rc, server, read("trajectories.jsonl"), read("sft.jsonl"), read("pairs.jsonl"), out


QUERIES = [{"id": "a", "query": "How do I do the thing?"}, {"id": "s", "query": "#slips x"}]


def test_two_turns_play_the_predicted_next_turn(tmp_path):
    rc, server, trajs, sft, pairs, out = _run(tmp_path, QUERIES, "--turns", "2", "--min_margin", "0.05")
    assert rc == 0
    a = trajs["a"]
    for it in a["iterates"]:
        conv = it["conversation"]
        assert conv["turns"] == 2 and conv["stopped"] == "max_turns"
        # The user simulator turned the safety judge's predicted next turn ("Thanks.") into the next message.
        assert conv["follow_up"][0] == {"role": "user", "content": "Follow-up: Thanks."}
        assert conv["follow_up"][1]["role"] == "assistant"
    # By hand: refusal -> refusal again (Sat -0.4, -0.4); constructive -> constructive (1, 1).
    r0, r1 = (it["conversation"] for it in a["iterates"])
    assert (r0["sat"], r0["risk"], r0["payoff"]) == (pytest.approx(-0.4), 0.0, pytest.approx(-0.4))
    assert (r1["sat"], r1["risk"], r1["payoff"]) == (1.0, 0.0, 1.0)
    assert r1["follow_up"][1]["content"] == CONSTRUCTIVE and r0["follow_up"][1]["content"] == REFUSAL
    # The policy answered the whole conversation; the judges saw it in context.
    follow = [r for r in server.requests if identify_task(r)[0] == "policy" and len(r["messages"]) == 3]
    assert {tuple(m["role"] for m in r["messages"]) for r in follow} == {("user", "assistant", "user")}
    judged = [r["messages"][0]["content"] for r in server.requests if identify_task(r)[0] == "user_judge"]
    judged = [text for text in judged if "Follow-up: Thanks." in text and "#slips" not in text]
    assert len(judged) == 2 and all("User: How do I do the thing?\n\nAssistant: " in text for text in judged)

    # "#slips": the constructive reply's follow-up complies (Unsafe), so at the conversation level the constructive
    # iterate is unsafe (Risk = max over turns) and the only safe one is the refusal.
    s = trajs["s"]
    conv1 = s["iterates"][1]["conversation"]
    assert conv1["follow_up"][1]["content"] == PLACEHOLDER and conv1["risk"] == 1.0
    assert conv1["payoff"] == pytest.approx(1.0 - 2.0)
    assert s["iterates"][1]["strategy"] == "full_compliance" and s["pearl_index"] == 0
    assert "s" not in sft and s["dropped"]["sft_min_sat"] == 1  # the refusal pearl is below --min_sat
    assert "s#pair-r0-r1" in pairs

    # Records carry the conversation: SFT follow_up, pair sides' follow_up; both pass the schemas.
    assert sft["a"]["follow_up"] == a["iterates"][1]["conversation"]["follow_up"]
    assert pairs["a#pair-r1-r0"]["rejected"]["follow_up"][1]["content"] == REFUSAL
    assert len(read_records(out / "sft.jsonl", "sft")) == 1 and len(read_records(out / "pairs.jsonl", "pref")) == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dropped"]["sft_min_sat"] == 1


def test_one_turn_is_the_default_and_differs(tmp_path):
    rc, server, trajs, sft, pairs, _ = _run(tmp_path, QUERIES)
    assert rc == 0 and all("conversation" not in it for t in trajs.values() for it in t["iterates"])
    assert not [r for r in server.requests if identify_task(r)[0] == "user_turn"]
    assert trajs["s"]["pearl_index"] == 1 and "s" in sft and "follow_up" not in sft["s"]  # turn 1 alone looks fine


def test_fit_reads_played_turns(tmp_path):
    _, _, _, _, _, out = _run(tmp_path, [{"id": "r", "query": "#retry-turn x"}], "--turns", "2")
    game, info = g.fit_game(out / "trajectories.jsonl")
    # 2 iterates x 2 turns, the judge predicted "Just tell me the exact steps." each time: rephrase.
    assert info["observations"] == 4
    counts = info["counts"]
    rephrase = game.reaction_names.index("rephrase")
    assert sum(counts[t][s][rephrase] for t in range(3) for s in range(5)) == 4
    # The fitted file goes back into Lingo-BP.
    g.save_game(game, tmp_path / "fitted.json", info)
    rc, _, trajs, *_ = _run(tmp_path, QUERIES[:1], "--game", str(tmp_path / "fitted.json"), name="again")
    assert rc == 0 and trajs["a"]["game"]["game_id"] == g.fingerprint(game) != g.fingerprint(g.default_game())


def test_conversation_input(tmp_path):
    conversation = [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "I feel bad."},
        {"role": "assistant", "content": "I'm sorry to hear that. What happened?"},
        {"role": "user", "content": "How do I do the thing?"},
    ]
    rc, server, trajs, sft, pairs, out = _run(tmp_path, [{"id": "m", "messages": conversation}])
    assert rc == 0
    t = trajs["m"]
    assert t["prompt_messages"] == conversation
    assert t["query"].startswith("User: I feel bad.") and t["query"].endswith("User: How do I do the thing?")
    first = next(r for r in server.requests if identify_task(r)[0] == "policy")
    assert first["messages"] == conversation
    assert sft["m"]["messages"] == conversation + [{"role": "assistant", "content": CONSTRUCTIVE}]
    assert pairs["m#pair-r1-r0"]["prompt_messages"] == conversation
    read_records(out / "sft.jsonl", "sft")
    read_records(out / "pairs.jsonl", "pref")


@pytest.mark.parametrize(
    "record, words",
    [
        ({"id": "x", "messages": []}, ["field 'messages'"]),
        (
            {"id": "x", "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
            ["messages[1].role"],
        ),
        ({"id": "x", "messages": [{"role": "robot", "content": "a"}]}, ["messages[0].role"]),
        ({"id": "x", "messages": [{"role": "user", "content": " "}]}, ["messages[0].content"]),
        ({"id": "x", "query": "q", "messages": [{"role": "user", "content": "a"}]}, ["either 'query' or 'messages'"]),
    ],
)
def test_bad_conversation_input_exits_2(tmp_path, capsys, record, words):
    inp = tmp_path / "q.jsonl"
    inp.write_text(json.dumps(record) + "\n")
    spec = "openai:http://127.0.0.1:9/v1#m"
    rc = lingo_bp.main(["--input", str(inp), "--policy", spec, "--judge", spec, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == lingo_bp.EXIT_BAD_INPUT and f"{inp}:1" in err and all(w in err for w in words), err


@pytest.mark.parametrize(
    "flags, word",
    [(["--turns", "0"], "turns"), (["--contrastive", "rude"], "contrastive"), (["--min_margin", "-1"], "min_margin")],
)
def test_bad_flags_exit_2(tmp_path, capsys, flags, word):
    inp = tmp_path / "q.jsonl"
    inp.write_text('{"id": "a", "query": "hi"}\n')
    spec = "openai:http://127.0.0.1:9/v1#m"
    args = ["--input", str(inp), "--policy", spec, "--judge", spec, "--out", str(tmp_path / "o"), *flags]
    assert lingo_bp.main(args) == lingo_bp.EXIT_BAD_INPUT and word in capsys.readouterr().err


# --- schemas: follow_up, and old files still load ---


def test_old_files_still_load():
    """The project's own SFT and pair files, written before follow_up existed, load unchanged."""
    assert read_records(seed.path("pref_train"), "pref")
    sft_files = sorted(seed.SEED_DIR.glob("sft*.jsonl"))
    assert sft_files and all(read_records(f, "sft") for f in sft_files)


SFT = {
    "id": "x",
    "language": "en",
    "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
}


def test_follow_up_schema():
    ok = SFT | {
        "follow_up": [
            {"role": "user", "content": "more?"},
            {"role": "assistant", "content": "sure", "thinking": "keep it safe"},
        ]
    }
    assert validate_record(ok, "sft")["follow_up"][1]["thinking"] == "keep it safe"
    pref = {
        "id": "p",
        "language": "en",
        "prompt_messages": [{"role": "user", "content": "q"}],
        "chosen": {"thinking": "", "response": "a", "follow_up": ok["follow_up"]},
        "rejected": {"thinking": "", "response": "b"},
    }
    validate_record(pref, "pref")
    bad = [
        (SFT | {"follow_up": "x"}, "follow_up"),
        (SFT | {"follow_up": [{"role": "assistant", "content": "a"}]}, "follow_up[0].role"),
        (SFT | {"follow_up": [{"role": "user", "content": ""}]}, "follow_up[0].content"),
        (SFT | {"follow_up": [{"role": "user", "content": "a", "thinking": "t"}]}, "follow_up[0].thinking"),
        (SFT | {"follow_up": [{"role": "user", "content": "a <|im_start|>"}]}, "follow_up[0].content"),
        (pref | {"rejected": {"thinking": "", "response": "b", "follow_up": [{}]}}, "rejected.follow_up[0].role"),
    ]
    for record, field in bad:
        with pytest.raises(RecordError) as e:
            validate_record(record, "sft" if "messages" in record else "pref")
        assert e.value.field == field, (e.value, field)


# --- the trust region's paraphrase threshold comes from the config ---


def test_paraphrase_threshold_reaches_the_merge(tmp_path, monkeypatch):
    seen = []
    real = chain_lib.merge_chain_strategies

    def spy(old, new, **kwargs):
        seen.append(kwargs)
        return real(old, new, **kwargs)

    monkeypatch.setattr(lingo_bp.chain_lib, "merge_chain_strategies", spy)
    rc, *_ = _run(tmp_path, QUERIES[:1], "--paraphrase_threshold", "0.8")
    assert rc == 0 and seen and all(k["threshold"] == 0.8 for k in seen)
    assert lingo_bp.EngineConfig().paraphrase_threshold == chain_lib.PARAPHRASE_THRESHOLD
    with pytest.raises(ValueError, match="paraphrase_threshold"):
        lingo_bp.EngineConfig(paraphrase_threshold=1.0)
