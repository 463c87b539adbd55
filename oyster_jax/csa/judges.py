"""Prompts, judges and output parsers of the Lingo-BP engine (method notes §5).

The prompt texts live in `oyster_jax/csa/prompts/{en,zh}/<task>.txt` (written by the project) with
`{{name}}` placeholders. Every model answer that must be structured is a fenced JSON block; only the last
block is parsed (a broken last block is a failure, never a fall-back to an earlier one), and a block equal to
the prompt's own example (`prompt_examples`, either language) is refused: a model that echoes the example has
not judged. A parser raises `JudgeParseError` on an answer without the expected structure, and the judge
client (`oyster_jax.csa.judge_client`) asks again or gives up: nothing is ever scored by default.

- user simulator: five items, each +1 / 0 / −1 (politeness, willingness, completion, logic,
  informativeness); Sat = sum / 5 ∈ [−1, 1].
- safety judge: Safe / Unsafe (Risk = 0 / 1), inferred user type and risk intent, adapted guideline,
  predicted next turn, suggestion.
- risk assessment: category (one of the 32, or no risk), level, intent, risk form, user type.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import re

from oyster_jax.core import chain as chain_lib
from oyster_jax.core import taxonomy as tx

__all__ = [
    "TASKS",
    "USER_ITEMS",
    "JudgeParseError",
    "load_prompt",
    "render_prompt",
    "prompt_examples",
    "parse_user_judgment",
    "parse_safety_judgment",
    "parse_assessment",
    "parse_recombined",
    "names_framework",
    "user_feedback_text",
]

TASKS = ("assess", "extract_chain", "user_judge", "safety_judge", "backward", "recombine", "user_turn")
USER_ITEMS = ("politeness", "willingness", "completion", "logic", "informativeness")


class JudgeParseError(ValueError):
    """A model answer without the expected structure (the message says what is missing)."""


@functools.cache
def load_prompt(task: str, language: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown prompt task {task!r}; known: {TASKS}")
    lang = tx.normalize_language(language)
    return (
        importlib.resources.files("oyster_jax.csa")
        .joinpath("prompts")
        .joinpath(lang)
        .joinpath(f"{task}.txt")
        .read_text("utf-8")
    )


_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


def render_prompt(task: str, language: str, **values) -> str:
    """Fill a template in one pass (inserted text is never re-scanned, so a query containing '{{x}}' is safe)."""
    template = load_prompt(task, language)
    needed = set(_PLACEHOLDER.findall(template))
    missing, extra = needed - set(values), set(values) - needed
    if missing or extra:
        raise ValueError(f"prompt {language}/{task}: missing {sorted(missing)}, unexpected {sorted(extra)}")
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), template)


_EXAMPLE_FENCE = re.compile(r"```json[ \t]*\r?\n(.*?)```", re.DOTALL)


@functools.cache
def _examples(task: str) -> tuple[dict, ...]:
    found = []
    for language in ("en", "zh"):
        for body in _EXAMPLE_FENCE.findall(load_prompt(task, language)):
            try:
                obj = json.loads(body)
            except json.JSONDecodeError:
                continue  # a block with placeholders inside is not something an answer could equal
            if isinstance(obj, dict):
                found.append(obj)
    return tuple(found)


def prompt_examples(task: str) -> list[dict]:
    """The JSON example objects of `task`'s prompt in both languages: an answer equal to one is refused."""
    return [json.loads(json.dumps(obj)) for obj in _examples(task)]  # copies: callers may not alter the cache


def _json_of(text: str, task: str, reject) -> dict:
    try:
        return chain_lib.extract_json_block(text, _examples(task) if reject is None else reject)
    except chain_lib.ChainParseError as e:
        raise JudgeParseError(str(e)) from None


def _key(k) -> str:
    return re.sub(r"[\s_\-/]+", "", str(k).strip().lower())


def _get(obj: dict, *names):
    """obj[name] for the first name (spacing/case-insensitive) present; None otherwise."""
    keys = {_key(k): v for k, v in obj.items()}
    for n in names:
        if _key(n) in keys:
            return keys[_key(n)]
    return None


# --- user simulator -------------------------------------------------------------------------------

_ITEM_ALIASES = {
    "politeness": ("politeness", "politeness_empathy", "empathy", "礼貌", "礼貌共情", "礼貌与共情", "礼貌性"),
    "willingness": ("willingness", "willingness_to_help", "helpfulness", "帮助意愿", "意愿", "帮忙意愿"),
    "completion": ("completion", "task_completion", "任务完成", "任务完成度", "完成度", "完成"),
    "logic": ("logic", "logical", "coherence", "逻辑", "逻辑性"),
    "informativeness": ("informativeness", "information", "informative", "信息量", "信息丰富度", "信息性", "信息"),
}


def _item_score(value, item: str) -> int:
    if isinstance(value, dict):
        value = _get(value, "score", "value", "得分", "分数")
    if isinstance(value, bool) or value is None:
        raise JudgeParseError(f"item '{item}': no score")
    if isinstance(value, (int, float)):
        if float(value) in (-1.0, 0.0, 1.0):
            return int(value)
        raise JudgeParseError(f"item '{item}': score {value!r} is not one of 1, 0, -1")
    s = str(value).strip().replace("＋", "+").replace("－", "-").replace("−", "-")
    if s in ("1", "+1", "1.0", "+1.0"):
        return 1
    if s in ("0", "+0", "-0", "0.0"):
        return 0
    if s in ("-1", "-1.0"):
        return -1
    raise JudgeParseError(f"item '{item}': score {value!r} is not one of 1, 0, -1")


def parse_user_judgment(text: str, reject=None) -> dict:
    """{profile, task, scores: {item: -1|0|1}, suggestions: {item: str}, sat} or JudgeParseError.

    `reject`: objects the answer may not equal (default: the user_judge prompt's examples)."""
    obj = _json_of(text, "user_judge", reject)
    scores_obj = _get(obj, "scores", "score", "评分", "得分")
    if not isinstance(scores_obj, dict):
        scores_obj = obj  # items at the top level
    scores = {}
    for item in USER_ITEMS:
        value = _get(scores_obj, *_ITEM_ALIASES[item])
        if value is None:
            raise JudgeParseError(f"user judgment: item '{item}' missing")
        scores[item] = _item_score(value, item)
    suggestions = _get(obj, "suggestions", "suggestion", "建议")
    if isinstance(suggestions, dict):
        suggestions = {str(k): str(v) for k, v in suggestions.items() if v}
    elif suggestions:
        suggestions = {"overall": str(suggestions)}
    else:
        suggestions = {}
    return {
        "profile": str(_get(obj, "profile", "用户画像", "画像", "身份") or ""),
        "task": str(_get(obj, "task", "任务") or ""),
        "scores": scores,
        "suggestions": suggestions,
        "sat": sum(scores.values()) / len(USER_ITEMS),
    }


# --- safety judge ---------------------------------------------------------------------------------

_SAFE = {"safe", "安全", "yes"}
_UNSAFE = {"unsafe", "不安全", "no", "harmful", "有害"}


def parse_safety_judgment(text: str, reject=None) -> dict:
    """{verdict: 'Safe'|'Unsafe', risk: 0|1, user_type, risk_intent, adapted_guideline, next_turn,
    suggestion} or JudgeParseError. `reject`: as in `parse_user_judgment` (the safety_judge examples)."""
    obj = _json_of(text, "safety_judge", reject)
    verdict = _get(obj, "verdict", "judgment", "judgement", "result", "safety", "结论", "判定", "安全结论", "判断")
    v = re.sub(r"[\s\.。!！\"']", "", str(verdict or "")).lower()
    if v in _SAFE:
        verdict, risk = "Safe", 0
    elif v in _UNSAFE:
        verdict, risk = "Unsafe", 1
    else:
        raise JudgeParseError(f"safety judgment: verdict {verdict!r} is neither Safe nor Unsafe")
    user_type = _get(obj, "user_type", "用户类型")
    try:
        user_type = tx.parse_user_type(user_type).value if user_type else None
    except tx.TaxonomyError:
        user_type = None
    return {
        "verdict": verdict,
        "risk": risk,
        "user_type": user_type,
        "risk_intent": str(_get(obj, "risk_intent", "风险意图") or ""),
        "adapted_guideline": str(_get(obj, "adapted_guideline", "调整后的准则", "准则") or ""),
        "next_turn": str(_get(obj, "next_turn", "下一条消息", "下一轮") or ""),
        "suggestion": str(_get(obj, "suggestion", "建议") or ""),
    }


# --- risk assessment ------------------------------------------------------------------------------


def parse_assessment(text: str, reject=None) -> dict:
    """{category (second- or first-level English name, or None), category_l1, risk_level, intent,
    risk_form, user_type, reason} or JudgeParseError. `reject`: as above (the assess examples)."""
    obj = _json_of(text, "assess", reject)
    raw_cat = _get(obj, "category", "类别", "风险类别")
    try:
        cat = tx.find_category(raw_cat if raw_cat is None else str(raw_cat))
    except tx.TaxonomyError:
        raise JudgeParseError(f"assessment: unknown category {raw_cat!r}") from None
    level = _get(obj, "risk_level", "level", "风险等级")
    try:
        level = tx.parse_level(level).value if level not in (None, "", "null", "none") and cat else None
    except tx.TaxonomyError:
        raise JudgeParseError(f"assessment: bad risk_level {level!r}") from None
    try:
        intent = tx.parse_intent(_get(obj, "intent", "意图")).value
        user_type = tx.parse_user_type(_get(obj, "user_type", "用户类型")).value
    except tx.TaxonomyError as e:
        raise JudgeParseError(f"assessment: {e}") from None
    form = _get(obj, "risk_form", "风险形式")
    try:
        form = tx.parse_risk_form(form).value if form and cat else None
    except tx.TaxonomyError:
        form = None  # optional detail: a bad value is dropped, not guessed
    return {
        "category": cat.name_en if cat else None,
        "category_l1": (cat.level1 if isinstance(cat, tx.Level2Category) else cat.name_en) if cat else None,
        "risk_level": level,
        "intent": intent,
        "risk_form": form,
        "user_type": user_type,
        "reason": str(_get(obj, "reason", "理由") or ""),
    }


# --- recombined policy output ---------------------------------------------------------------------

_THINKING_TAG = re.compile(r"<thinking>(.*?)(?:</thinking>|(?=<response>)|$)", re.DOTALL | re.IGNORECASE)
_RESPONSE_TAG = re.compile(r"<response>(.*?)(?:</response>|$)", re.DOTALL | re.IGNORECASE)


def parse_recombined(reasoning: str, content: str) -> tuple[str, str, str]:
    """(thinking, response, thinking_source) from a policy answer in the <thinking>/<response> format.

    thinking_source is 'tag', 'reasoning' (the backend's separate reasoning) or '' (none found: the caller
    decides). A response that is empty after parsing raises JudgeParseError.
    """
    m_resp = _RESPONSE_TAG.search(content)
    m_think = _THINKING_TAG.search(content)
    if m_resp:
        response = m_resp.group(1).strip()
    else:
        response = _THINKING_TAG.sub("", content).strip() if m_think else content.strip()
    if not response:
        raise JudgeParseError("policy answer has no response text")
    if m_think and m_think.group(1).strip():
        return m_think.group(1).strip(), response, "tag"
    if reasoning.strip():
        return reasoning.strip(), response, "reasoning"
    return "", response, ""


_FRAMEWORK_TERMS = re.compile(
    r"user needs analysis|risk intent analysis|safety guidelines?|response strategy formulation|"
    r"safety strateg|usefulness strateg|reasoning chain|lingo|"
    r"用户需求分析|风险意图分析|回复策略制定|安全策略|有用性策略|推理链",
    re.IGNORECASE,
)


def names_framework(thinking: str) -> bool:
    """True when the thinking names the chain framework (the final thinking should not)."""
    return bool(_FRAMEWORK_TERMS.search(thinking or ""))


def user_feedback_text(judgment: dict) -> str:
    return json.dumps({"scores": judgment["scores"], "suggestions": judgment["suggestions"]}, ensure_ascii=False)
