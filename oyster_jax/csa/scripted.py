"""A deterministic scripted policy + judge for the Lingo-BP engine, served by `llm.testing.FakeOpenAIServer`.

Used by the tests and the throughput benchmark; it plays every role (policy, judges, optimizer) from
fixed rules, so the engine's arithmetic can be checked by hand. Unsafe content is only ever a harmless
placeholder. Markers in the query text choose the behaviour:

  (none)            initial reply is a blunt refusal (Safe, Sat = -0.4); round 1 is constructive (Safe, Sat = 1)
  #perfect          initial reply is already constructive (full marks at round 0: no backward step)
  #unsafe-first     initial reply complies with a placeholder (Unsafe, Sat = 1); round 1 constructive
  #never-full       constructive replies score Sat = 0.6, so the loop runs all rounds
  #judge-garbage    the user-simulator judge always answers without valid JSON
  #judge-500        the safety judge always answers HTTP 500
  #judge-timeout    the safety judge never answers (until the server stops): the client's timeout fires
  #judge-drop       the safety judge always closes the connection without an answer
  #flaky            every role's first attempt for this query gets HTTP 500 or 429 (retries recover)
  #bad-chain        the optimizer's chain extraction never holds a chain
  #slips            multi-turn: after a constructive reply the user pushes on and the policy's follow-up
                    complies with a placeholder (Unsafe); after a refusal the follow-up stays a refusal
  #retry-turn       the safety judge predicts that the user asks again ("Just tell me ...")

Follow-up turns (a policy request holding an assistant message): the policy repeats the kind of its last reply
(constructive stays constructive, a refusal stays a refusal), except under #slips. The user simulator's
`user_turn` answer is "Follow-up: " + the predicted next turn.
"""

from __future__ import annotations

import json
import threading

from oyster_jax.csa.judges import TASKS, load_prompt
from oyster_jax.llm.testing import Reply

__all__ = ["ScriptedLingo", "identify_task", "REFUSAL", "CONSTRUCTIVE", "PLACEHOLDER"]

REFUSAL = "I can't help with that."
CONSTRUCTIVE = "[constructive] I hear you. Here is what I can safely help with: [safe, useful guidance]."
PLACEHOLDER = "Sure. [gives the requested instructions]"
HANG_SECONDS = 3600.0  # longer than any client timeout; the server's stop() ends the wait early

_FIRST_LINES = {
    (lang, task): load_prompt(task, lang).splitlines()[0].strip() for task in TASKS for lang in ("en", "zh")
}


def identify_task(request: dict) -> tuple[str, str]:
    """(task, language) of a request the engine sent; ('policy', '') for a plain query to the policy."""
    text = "\n".join(m.get("content", "") for m in request.get("messages", []))
    for (lang, task), first in _FIRST_LINES.items():
        if first and first in text:
            return task, lang
    return "policy", ""


def _block(obj) -> str:
    return "Here is my answer.\n```json\n" + json.dumps(obj, ensure_ascii=False) + "\n```"


_CHAIN_INITIAL = {
    "User Needs Analysis": "The user wants help with a risky request.",
    "Risk Intent Analysis": "inquiry; request for risky information",
    "Safety Guidelines": "Withhold harmful detail.",
    "Response Strategy Formulation": {"Safety Strategies": "refuse", "Usefulness Strategies": ""},
}
_CHAIN_IMPROVED = {
    "User Needs Analysis": "The user needs safe, practical help with the underlying problem.",
    "Risk Intent Analysis": "inquiry; request for risky information",
    "Safety Guidelines": "Withhold harmful detail; guide to safe options.",
    "Response Strategy Formulation": {
        "Safety Strategies": "refuse; explain the risk",
        "Usefulness Strategies": "offer safe alternatives",
    },
}


class ScriptedLingo:
    """A FakeOpenAIServer handler: `FakeOpenAIServer(ScriptedLingo())`."""

    def __init__(self):
        self._lock = threading.Lock()
        self._seen: set[tuple[str, str]] = set()  # (task, query marker key) first attempts, for #flaky
        self.calls: dict[str, int] = {}

    def __call__(self, request: dict) -> Reply | str:
        task, lang = identify_task(request)
        text = "\n".join(m.get("content", "") for m in request.get("messages", []))
        with self._lock:
            self.calls[task] = self.calls.get(task, 0) + 1
        if "#flaky" in text:
            key = (task, text)
            with self._lock:
                first = key not in self._seen
                self._seen.add(key)
            if first:
                return Reply(status=429 if task == "user_judge" else 500, headers={"Retry-After": "0"})
        if task == "policy":
            return self._policy(text, lang, request.get("messages", []))
        return getattr(self, "_" + task)(text, lang)

    # --- roles ---
    def _policy(self, text, lang, messages=()):
        earlier = [m.get("content", "") for m in messages if m.get("role") == "assistant"]
        if earlier:  # a follow-up turn of a played-out conversation
            last = earlier[-1]
            if "[constructive]" in last:
                if "#slips" in text:
                    return Reply.chat(PLACEHOLDER, reasoning="They pushed again; I will just do it.")
                return Reply.chat(CONSTRUCTIVE, reasoning="Keep helping safely.")
            if "[gives the requested instructions]" in last:
                return Reply.chat(PLACEHOLDER, reasoning="Go on as before.")
            return Reply.chat(REFUSAL, reasoning="Still risky; refuse again.")
        if "#perfect" in text:
            return Reply.chat(CONSTRUCTIVE, reasoning="They need safe, practical help; I will give it.")
        if "#unsafe-first" in text:
            return Reply.chat(PLACEHOLDER, reasoning="The user asks; I will just do it.")
        return Reply.chat(REFUSAL, reasoning="This looks risky, so I will refuse.")

    def _assess(self, text, lang):
        return _block(
            {
                "category": "Illegal Acts",
                "risk_level": "R1",
                "intent": "inquiry",
                "risk_form": "risky_information_request",
                "user_type": "sensitive",
                "reason": "scripted",
            }
        )

    def _extract_chain(self, text, lang):
        if "#bad-chain" in text:
            return "I would rather not produce a chain."
        return _block(_CHAIN_INITIAL)

    def _user_judge(self, text, lang):
        if "#judge-garbage" in text:
            return 'Scores: {"politeness": 1, "willingness": oops'
        # The reply under review sits between the last <<< >>> pair of the prompt.
        reply = text.rsplit("<<<", 1)[-1]
        if "[constructive]" in reply:
            v = 0 if "#never-full" in text else 1
            scores = {"politeness": 1, "willingness": 1, "completion": v, "logic": 1, "informativeness": v}
        elif "[gives the requested instructions]" in reply:
            scores = {"politeness": 1, "willingness": 1, "completion": 1, "logic": 1, "informativeness": 1}
        else:  # blunt refusal
            scores = {"politeness": 0, "willingness": -1, "completion": -1, "logic": 1, "informativeness": -1}
        return _block({"profile": "scripted user", "task": "scripted task", "scores": scores, "suggestions": {}})

    def _safety_judge(self, text, lang):
        if "#judge-500" in text:
            return Reply(status=500, body={"error": "scripted failure"})
        if "#judge-timeout" in text:
            return Reply(delay=HANG_SECONDS)
        if "#judge-drop" in text:
            return Reply(drop_connection=True)
        reply = text.rsplit("<<<", 1)[-1]
        verdict = "Unsafe" if "[gives the requested instructions]" in reply else "Safe"
        return _block(
            {
                "user_type": "sensitive",
                "risk_intent": "scripted",
                "adapted_guideline": "Withhold harmful detail, help safely.",
                "next_turn": "Just tell me the exact steps." if "#retry-turn" in text else "Thanks.",
                "verdict": verdict,
                "suggestion": "Offer safe alternatives.",
            }
        )

    def _user_turn(self, text, lang):
        predicted = text.rsplit("<<<", 1)[-1].split(">>>", 1)[0].strip()
        return Reply.chat("Follow-up: " + predicted)

    def _backward(self, text, lang):
        return _block(_CHAIN_IMPROVED)

    def _recombine(self, text, lang):
        return Reply.chat(
            "<thinking>\nThe person needs practical help; I will keep it safe and point to safe options.\n</thinking>\n"
            f"<response>\n{CONSTRUCTIVE}\n</response>"
        )
