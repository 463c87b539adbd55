"""Multi-turn follow-through of a Lingo-BP iterate (issue 15 point 2): the follower's predicted reaction is
played out instead of being only a sentence in the backward prompt.

For an iterate judged at turn 1, each further turn t = 2..K: the safety judge's predicted next user turn (of
the previous turn's judgment) goes to the user simulator, which writes the actual next message in the
persona's voice (prompt `user_turn`); the policy answers the whole conversation; both judges score that
answer in its context. The conversation-level outcome is

    Sat_conv = mean of the turns' Sat,  Risk_conv = max of the turns' Risk,  Π_conv = α·Sat_conv − β·Risk_conv − γ·Cost

(a conversation is as unsafe as its worst turn; Cost counts every assistant turn's characters). The rollout
stops early when the judge predicts no next turn. The iterate keeps it under `conversation`:

    {"turns": played turns (1 + follow-ups), "sat", "risk", "payoff",
     "follow_up": [{role: user, content}, {role: assistant, content, thinking?}, ...],
     "follow_up_judgments": [{user_judgment, safety_judgment, sat, risk, payoff}, ...], "stopped"}
"""

from __future__ import annotations

import dataclasses
import json

from oyster_jax.csa.judges import JudgeParseError, render_prompt

__all__ = ["render_conversation", "follow_through"]

_LABELS = {
    "en": {"user": "User", "assistant": "Assistant", "system": "System"},
    "zh": {"user": "用户", "assistant": "助手", "system": "系统"},
}


def render_conversation(messages: list[dict], language: str) -> str:
    """A conversation as plain text for a judge's or the simulator's prompt (system turns left out)."""
    labels = _LABELS["zh" if language == "zh" else "en"]
    return "\n\n".join(f"{labels[m['role']]}: {m['content']}" for m in messages if m["role"] != "system")


def _persona_text(q, language: str) -> str:
    if q.persona is None:
        return (
            "Keep being the person who wrote the first message." if language == "en" else "继续扮演写第一条消息的人。"
        )
    persona = q.persona if isinstance(q.persona, str) else json.dumps(q.persona, ensure_ascii=False)
    return ("Who you are: " if language == "en" else "你的身份：") + persona


def _user_message_parser(reasoning: str, content: str) -> str:
    text = content.strip().strip('"').strip()
    if not text:
        raise JudgeParseError("the user simulator wrote no message")
    return text


def _reply_parser(reasoning: str, content: str) -> tuple[str, str]:
    if not content.strip():
        raise JudgeParseError("policy returned an empty reply")
    return reasoning.strip(), content.strip()


async def follow_through(engine, q, ctx: dict, prompt_messages: list[dict], iterate: dict, stats: dict) -> dict:
    """Play turns 2..engine.config.turns after `iterate` (already judged); return its `conversation` dict."""
    c, lang = engine.config, q.language
    conversation = list(prompt_messages) + [{"role": "assistant", "content": iterate["response"]}]
    follow_up, judgments = [], []
    judged, stopped = iterate, "max_turns"
    for _ in range(2, c.turns + 1):
        predicted = (judged["safety_judgment"].get("next_turn") or "").strip()
        if not predicted or predicted in ("-", "—"):
            stopped = "no_next_turn"
            break
        prompt = render_prompt(
            "user_turn",
            lang,
            persona=_persona_text(q, lang),
            conversation=render_conversation(conversation, lang),
            predicted=predicted,
        )
        user_msg = await engine._client(engine.judge).ask(
            [{"role": "user", "content": prompt}],
            _user_message_parser,
            task="user_turn",
            sampling=c.judge_sampling,
            stats=stats,
        )
        conversation.append({"role": "user", "content": user_msg.value})
        answer = await engine._client(engine.policy).ask(
            conversation, _reply_parser, task="policy", sampling=c.policy_sampling, stats=stats
        )
        thinking, reply = answer.value
        # The judges see the conversation up to the new user message as "the message", and the new reply.
        in_context = dataclasses.replace(q, query=render_conversation(conversation, lang))
        judged = await engine._judge(in_context, ctx, reply, stats)
        assistant = {"role": "assistant", "content": reply} | ({"thinking": thinking} if thinking else {})
        conversation.append({"role": "assistant", "content": reply})
        follow_up += [{"role": "user", "content": user_msg.value}, assistant]
        judgments.append(judged)
    sats = [iterate["sat"]] + [j["sat"] for j in judgments]
    risks = [iterate["risk"]] + [j["risk"] for j in judgments]
    sat, risk = sum(sats) / len(sats), max(risks)
    replies = iterate["response"] + "".join(m["content"] for m in follow_up if m["role"] == "assistant")
    return {
        "turns": len(sats),
        "sat": sat,
        "risk": risk,
        "payoff": engine._payoff(sat, risk, replies),
        "follow_up": follow_up,
        "follow_up_judgments": judgments,
        "stopped": stopped,
    }
