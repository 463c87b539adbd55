"""JSON schemas of the judges' answers (Lingo-BP's and the evaluations'), for backends that constrain decoding
to a schema; `csa.judge_client` asks for them.

    fmt = response_format("safety_judge", max_tokens=1024)     # {"type": "json_schema", ...} or None
    reasoning, content = await backend.achat(messages, response_format=fmt, max_tokens=1024)

Each schema accepts only answers that `judges.parse_*` (and `core.chain.parse_chain`) parse: enums for
the verdicts, scores and taxonomy labels, every field required. Free-text fields get a `maxLength` sized so
that the whole document fits `max_tokens` even for a model that spends two tokens per character (a weak or
random-weight model would otherwise write one string until the budget runs out and never close the JSON).
Tasks without a JSON answer (the policy's recombined reply) have no schema.
"""

from __future__ import annotations

import json

from oyster_jax.core import chain as chain_lib
from oyster_jax.core import taxonomy as tx

__all__ = ["TASKS", "judge_schema", "response_format"]

_USER_ITEMS = ("politeness", "willingness", "completion", "logic", "informativeness")
_TOKENS_PER_CHAR = 2  # the budget assumption above
_MIN_CHARS, _MAX_CHARS = 8, 2000


# A free-text field must hold at least one character that is not a space, a digit or punctuation: the parsers
# read "; ", " " or "1." as empty (a strategy list of nothing), which `minLength` alone lets through. Written
# without \p{..} classes so that Python's `re` (jsonschema) and llguidance read it the same.
_SOME_WORD = r"[^\s0-9.,;:!?'\"()\[\]{}*&#%/\\|<>=+_~`^@$。，；：！？、（）•…-]"


def _text(n: int) -> dict:
    return {"type": "string", "minLength": 1, "maxLength": n, "pattern": _SOME_WORD}


def _obj(props: dict) -> dict:
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def _schemas(n: int) -> dict[str, dict]:
    categories = sorted({c.name_en for c in tx.LEVEL2} | {c.name_en for c in tx.LEVEL1}) + ["none"]
    keys = chain_lib.KEYS["en"]
    chain = _obj(
        {
            keys["needs"]: _text(n),
            keys["risk"]: _text(n),
            keys["guidelines"]: _text(n),
            keys["strategy"]: _obj({keys["safety"]: _text(n), keys["usefulness"]: _text(n)}),
        }
    )
    return {
        "user_judge": _obj(
            {
                "profile": _text(n),
                "task": _text(n),
                "scores": _obj({item: {"type": "integer", "enum": [-1, 0, 1]} for item in _USER_ITEMS}),
                "suggestions": _obj({item: _text(n) for item in _USER_ITEMS}),
            }
        ),
        "safety_judge": _obj(
            {
                "verdict": {"type": "string", "enum": ["Safe", "Unsafe"]},
                "user_type": {"type": "string", "enum": [u.value for u in tx.UserType]},
                "risk_intent": _text(n),
                "adapted_guideline": _text(n),
                "next_turn": _text(n),
                "suggestion": _text(n),
            }
        ),
        "assess": _obj(
            {
                "category": {"type": "string", "enum": categories},
                "risk_level": {"type": "string", "enum": [r.value for r in tx.RiskLevel]},
                "intent": {"type": "string", "enum": [i.value for i in tx.Intent]},
                "risk_form": {"type": "string", "enum": [f.value for f in tx.RiskForm]},
                "user_type": {"type": "string", "enum": [u.value for u in tx.UserType]},
                "reason": _text(n),
            }
        ),
        "extract_chain": chain,
        "backward": chain,
        # The evaluations' category classification (eval.common): a second- or first-level name, or none.
        "classify": _obj({"category": {"type": "string", "enum": categories[:-1] + ["no risk", "unknown"]}}),
    }


TASKS = tuple(_schemas(_MIN_CHARS))


def _skeleton_chars(schema: dict) -> tuple[int, int]:
    """(characters of the document with every string empty and the longest enum values, free-text fields)."""
    if schema.get("type") == "object":
        chars, strings = 2, 0
        for key, sub in schema["properties"].items():
            c, s = _skeleton_chars(sub)
            chars, strings = chars + len(json.dumps(key, ensure_ascii=False)) + 2 + c, strings + s
        return chars, strings
    if "enum" in schema:
        return max(len(json.dumps(v, ensure_ascii=False)) for v in schema["enum"]), 0
    return 2, 1  # a free-text string: its quotes


def judge_schema(task: str, max_tokens: int) -> dict | None:
    """The schema of `task`'s answer within a budget of `max_tokens`, or None for a task without one."""
    schemas = _schemas(_MIN_CHARS)
    if task not in schemas:
        return None
    fixed, strings = _skeleton_chars(schemas[task])
    per_field = (max_tokens - _TOKENS_PER_CHAR * fixed) // max(1, _TOKENS_PER_CHAR * strings)
    return _schemas(max(_MIN_CHARS, min(_MAX_CHARS, per_field)))[task]


def response_format(task: str, max_tokens: int) -> dict | None:
    """OpenAI's `response_format` asking for `task`'s schema (None when the task has none)."""
    schema = judge_schema(task, max_tokens)
    if schema is None:
        return None
    return {"type": "json_schema", "json_schema": {"name": task, "schema": schema, "strict": True}}
