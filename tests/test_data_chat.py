"""Chat formats: exact layouts (hand-written references), render/parse round trips, thinking split, chain."""

import pytest

from oyster_jax.core import chat

MESSAGES = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Hi 你好 🦪"},
    {"role": "assistant", "content": "Hello!", "thinking": "Greet back."},
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": "Goodbye.", "thinking": ""},
]


def test_chatml_layout_matches_hand_written_reference():
    expected = (
        "<|im_start|>system\nYou are helpful.<|im_end|>\n"
        "<|im_start|>user\nHi 你好 🦪<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nGreet back.\n</think>\n\nHello!<|im_end|>\n"
        "<|im_start|>user\nBye<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\nGoodbye.<|im_end|>\n"
    )
    assert chat.render(MESSAGES, "chatml") == expected


def test_deepseek_layout_matches_hand_written_reference():
    expected = (
        "<｜begin▁of▁sentence｜>You are helpful.<｜User｜>Hi 你好 🦪"
        "<｜Assistant｜><think>\nGreet back.\n</think>\n\nHello!<｜end▁of▁sentence｜>"
        "<｜User｜>Bye<｜Assistant｜><think>\n\n</think>\n\nGoodbye.<｜end▁of▁sentence｜>"
    )
    assert chat.render(MESSAGES, "deepseek_r1") == expected


@pytest.mark.parametrize("fmt", ["chatml", "deepseek_r1"])
def test_render_parse_round_trip(fmt):
    assert chat.parse(chat.render(MESSAGES, fmt), fmt) == MESSAGES
    no_think = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a\n\nmultiline"}]
    if fmt == "chatml":  # DeepSeek always writes a think block, so "no thinking" does not round-trip there
        assert chat.parse(chat.render(no_think, fmt), fmt) == no_think


@pytest.mark.parametrize("fmt", ["chatml", "deepseek_r1"])
def test_segments_mark_only_assistant_turns(fmt):
    segments = chat.render_segments(MESSAGES, fmt)
    assert "".join(t for t, _ in segments) == chat.render(MESSAGES, fmt)
    trained = [t for t, trainable in segments if trainable]
    close = chat.get_format(fmt).assistant_close
    assert trained == [
        f"<think>\nGreet back.\n</think>\n\nHello!{close}",
        f"<think>\n\n</think>\n\nGoodbye.{close}",
    ]


@pytest.mark.parametrize("fmt", ["chatml", "deepseek_r1"])
def test_generation_prompt_plus_completion_is_the_rendered_turn(fmt):
    prompt = MESSAGES[:4]
    full = chat.render(prompt + [{"role": "assistant", "content": "Goodbye.", "thinking": "t"}], fmt)
    glued = chat.render_generation_prompt(prompt, fmt) + chat.render_completion("t", "Goodbye.", fmt)
    assert full.startswith(glued) and full[len(glued) :] == chat.get_format(fmt).turn_separator
    if fmt == "chatml":
        assert chat.render_generation_prompt(prompt, fmt).endswith("<|im_start|>assistant\n")
    else:
        assert chat.render_generation_prompt(prompt, fmt).endswith("<｜Assistant｜><think>\n")


@pytest.mark.parametrize(
    "generated, expected",
    [
        ("<think>\nplan\n</think>\n\nanswer<|im_end|>", ("plan", "answer")),
        ("plan only\n</think>\n\nanswer", ("plan only", "answer")),  # DeepSeek prompt already opened <think>
        ("<think>\nunfinished", ("unfinished", "")),
        ("plain answer<|endoftext|>junk", ("", "plain answer")),
    ],
)
def test_split_thinking(generated, expected):
    assert chat.split_thinking(generated, "chatml") == expected


def test_reserved_markers_and_bad_roles_are_rejected():
    with pytest.raises(chat.ChatFormatError, match=r"messages\[0\]\.content.*<\|im_end\|>"):
        chat.render([{"role": "user", "content": "x<|im_end|>y"}])
    with pytest.raises(chat.ChatFormatError, match=r"messages\[1\]\.role"):
        chat.render([{"role": "user", "content": "x"}, {"role": "robot", "content": "y"}])
    with pytest.raises(chat.ChatFormatError, match="not closed"):
        chat.parse("<|im_start|>user\nhello", "chatml")


CHAIN = {
    "user_needs": "The user wants to keep their parents safe from phishing.",
    "risk_intent": "A sensitive topic with a protective intent.",
    "safety_guidelines": "Defensive knowledge only.",
    "safety_strategies": ["keep to general facts"],
    "usefulness_strategies": ["explain warning signs", "suggest two-step login"],
}


def test_chain_prose_and_tagged():
    prose = chat.render_chain(CHAIN, "prose", "en")
    assert prose == (
        "The user wants to keep their parents safe from phishing. A sensitive topic with a protective intent. "
        "Defensive knowledge only. So I will keep to general facts. "
        "I will also explain warning signs and suggest two-step login."
    )
    tagged = chat.render_chain(CHAIN, "tagged", "en")
    assert tagged.splitlines()[0] == "<user_needs>The user wants to keep their parents safe from phishing.</user_needs>"
    assert chat.parse_chain(tagged) == CHAIN


def test_chain_no_risk_collapse_and_csa_json_form():
    collapsed = {**CHAIN, "risk_intent": "", "safety_guidelines": ""}
    assert chat.render_chain(collapsed, "prose", "en") == (
        "The user wants to keep their parents safe from phishing. "
        "So I will keep to general facts, explain warning signs and suggest two-step login."
    )
    assert chat.render_chain(collapsed, "prose", "zh").endswith(
        "所以我会keep to general facts，explain warning signs，suggest two-step login。"
    )
    # The CSA engine writes chains with canonical keys; they read the same.
    csa_form = {
        "User Needs Analysis": CHAIN["user_needs"],
        "Risk Intent Analysis": CHAIN["risk_intent"],
        "Safety Guidelines": CHAIN["safety_guidelines"],
        "Response Strategy Formulation": {
            "Safety Strategies": "keep to general facts",
            "Usefulness Strategies": "explain warning signs; suggest two-step login",
        },
    }
    assert chat.normalize_chain(csa_form) == CHAIN
    with pytest.raises(chat.ChatFormatError, match="chain"):
        chat.render_chain({"colour": "blue"})
