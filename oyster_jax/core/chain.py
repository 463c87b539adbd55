"""The structured safety-reasoning chain (method notes §4) and the trust-region merge (§6 step 4).

A chain has four nodes: User Needs Analysis; Risk Intent Analysis; Safety Guidelines; Response Strategy
Formulation with two short lists, Safety Strategies and Usefulness Strategies. When the risk intent or the
guideline is empty the chain collapses to the needs plus one merged strategy list (no-risk collapse).

The JSON chain is the data engine's working form. Parsing reads only the last fenced ```json block (or
the last balanced {...} object when there is no fence): a broken last block is a failure, never a
fallback to an earlier one. Within that block it is tolerant: English or Chinese keys, snake_case or spaced
keys, flat or nested strategy fields, lists or ';'/'；'-separated strings, trailing commas and smart
quotes. What it refuses (ChainParseError): no JSON object at all, a last block that stays invalid after
repair or is cut off, a block equal to the prompt's example, or a chain with neither user needs nor any
strategy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re

__all__ = [
    "SafetyChain",
    "ChainParseError",
    "parse_chain",
    "chain_from_dict",
    "extract_json_block",
    "split_strategies",
    "render_json",
    "render_prose",
    "render_tagged",
    "simhash",
    "simhash_similarity",
    "trust_region_merge",
    "match_paraphrases",
    "strategy_similarity",
    "PARAPHRASE_THRESHOLD",
    "merge_chain_strategies",
    "KEYS",
]


class ChainParseError(ValueError):
    """The text holds no usable chain; the message says why."""


# Canonical keys per language (used when rendering).
KEYS = {
    "en": {
        "needs": "User Needs Analysis",
        "risk": "Risk Intent Analysis",
        "guidelines": "Safety Guidelines",
        "strategy": "Response Strategy Formulation",
        "safety": "Safety Strategies",
        "usefulness": "Usefulness Strategies",
    },
    "zh": {
        "needs": "用户需求分析",
        "risk": "风险意图分析",
        "guidelines": "安全准则",
        "strategy": "回复策略制定",
        "safety": "安全策略",
        "usefulness": "有用性策略",
    },
}

# Accepted spellings (after _key_norm) for each node.
_ALIASES = {
    "needs": {
        "user needs analysis",
        "user needs",
        "needs analysis",
        "needs",
        "user need analysis",
        "用户需求分析",
        "用户需求",
        "需求分析",
    },
    "risk": {
        "risk intent analysis",
        "risk intent",
        "risk analysis",
        "intent analysis",
        "风险意图分析",
        "风险意图",
        "风险分析",
    },
    "guidelines": {
        "safety guidelines",
        "safety guideline",
        "guidelines",
        "guideline",
        "安全准则",
        "安全准则响应",  # the key of the official Chinese chain-extraction output
        "安全规范",
        "安全指南",
        "准则",
    },
    "strategy": {
        "response strategy formulation",
        "response strategy",
        "response strategies",
        "strategy formulation",
        "strategies",
        "回复策略制定",
        "回复策略",
        "回应策略",
        "应对策略",
        "策略制定",
    },
    "safety": {"safety strategies", "safety strategy", "安全策略", "安全性策略"},
    "usefulness": {
        "usefulness strategies",
        "usefulness strategy",
        "helpfulness strategies",
        "helpfulness strategy",
        "有用性策略",
        "有用策略",
        "帮助性策略",
        "实用性策略",
    },
}


def _key_norm(key: str) -> str:
    key = re.sub(r"^\s*(\d+|[一二三四五六七八九十]+)\s*[.、:：)]\s*", "", str(key))  # "1. User Needs"
    return re.sub(r"[\s_\-]+", " ", key.strip().lower())


_KEY_TO_NODE = {alias: node for node, aliases in _ALIASES.items() for alias in aliases}


@dataclasses.dataclass
class SafetyChain:
    user_needs: str = ""
    risk_intent: str = ""
    safety_guidelines: str = ""
    safety_strategies: list[str] = dataclasses.field(default_factory=list)
    usefulness_strategies: list[str] = dataclasses.field(default_factory=list)

    @property
    def has_risk(self) -> bool:
        """False triggers the no-risk collapse: risk intent or guideline empty."""
        return bool(self.risk_intent.strip()) and bool(self.safety_guidelines.strip())

    @property
    def strategies(self) -> list[str]:
        """All strategies, safety first, without duplicates (the merged list of a collapsed chain)."""
        return _dedup(self.safety_strategies + self.usefulness_strategies)

    def collapsed(self) -> SafetyChain:
        """The no-risk form: needs plus one merged strategy list (kept in usefulness_strategies)."""
        if self.has_risk:
            return dataclasses.replace(
                self,
                safety_strategies=list(self.safety_strategies),
                usefulness_strategies=list(self.usefulness_strategies),
            )
        return SafetyChain(user_needs=self.user_needs, usefulness_strategies=self.strategies)

    def to_dict(self, language: str = "en") -> dict:
        """Canonical JSON form with the keys of `language` ('en' or 'zh'); collapsed when there is no risk."""
        k = KEYS["zh" if language in ("zh", "cn") else "en"]
        if not self.has_risk:
            return {k["needs"]: self.user_needs, k["strategy"]: "; ".join(self.strategies)}
        return {
            k["needs"]: self.user_needs,
            k["risk"]: self.risk_intent,
            k["guidelines"]: self.safety_guidelines,
            k["strategy"]: {
                k["safety"]: "; ".join(self.safety_strategies),
                k["usefulness"]: "; ".join(self.usefulness_strategies),
            },
        }


def _dedup(items: list[str]) -> list[str]:
    seen, out = set(), []
    for item in items:
        key = _item_norm(item)
        if key and key not in seen:
            seen.add(key)
            out.append(item.strip())
    return out


_EMPTY_WORDS = {"none", "null", "n/a", "na", "-", "nothing", "无", "空", "没有"}


def split_strategies(value) -> list[str]:
    """A strategy list from a JSON list or a string separated by ';', '；' or new lines."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        items = []
        for v in value:
            items.extend(split_strategies(v))
        return items
    if isinstance(value, dict):  # {"1": "...", "2": "..."}
        return split_strategies(list(value.values()))
    parts = re.split(r"[;；\n]+", str(value))
    items = []
    for part in parts:
        part = re.sub(r"^\s*(?:[-*•]|\d+[.)、]|[（(]\d+[)）])\s*", "", part).strip()
        if part and part.strip(" .。").lower() not in _EMPTY_WORDS:
            items.append(part)
    return _dedup(items)


# --------------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------------

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_-]*)[ \t]*\r?\n(.*?)```", re.DOTALL)


def _balanced_objects(text: str) -> tuple[list[str], bool]:
    """Top-level {...} spans, aware of JSON strings (so braces inside strings do not count), and whether an
    object is still open at the end of the text (a reply cut off mid-object)."""
    spans, depth, start, in_str, escape = [], 0, None, False, False
    for i, ch in enumerate(text):
        if in_str:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_str = False
            continue
        if ch == '"' and depth > 0:
            in_str = True
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                spans.append(text[start : i + 1])
    return spans, depth > 0


def _repair_json(text: str) -> str:
    text = text.strip().lstrip("\ufeff")
    text = text.replace("\u201c", '"').replace("\u201d", '"')  # smart double quotes used as delimiters
    text = re.sub(r",\s*([}\]])", r"\1", text)  # trailing commas
    return text


def _loads_tolerant(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    repaired = _repair_json(text)
    try:
        return json.loads(repaired)
    except json.JSONDecodeError:
        pass
    # Unescaped raw newlines inside strings are a common model slip.
    try:
        return json.loads(repaired, strict=False)
    except json.JSONDecodeError as e:
        raise ChainParseError(f"invalid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None


def extract_json_block(text: str, reject=()):
    """The last JSON object in `text`: the last fenced block, or the last balanced {...} when there is no
    fence. Only the last one counts: when it is broken (or cut off) the text is a parse failure, never an
    earlier block, which may be a draft or an echo of the prompt's own example. An object equal to one in
    `reject` (the prompt's examples) is refused too. Raises ChainParseError."""
    if not isinstance(text, str) or not text.strip():
        raise ChainParseError("empty text: no JSON block")
    fences = [body for lang, body in _FENCE.findall(text) if lang.lower() in ("", "json", "json5", "jsonc")]
    if fences:
        where, candidate = "the last fenced block", fences[-1]
    else:
        spans, unclosed = _balanced_objects(text)
        if unclosed:
            raise ChainParseError("the last JSON object is not closed (the reply was cut off or is malformed)")
        if not spans:
            raise ChainParseError("no JSON object found in the text")
        where, candidate = "the last JSON object", spans[-1]
    try:
        obj = _loads_tolerant(candidate)
    except ChainParseError as e:
        raise ChainParseError(f"{where} is not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ChainParseError(f"{where} is not a JSON object")
    if any(obj == example for example in reject):
        raise ChainParseError(f"{where} repeats the prompt's example instead of answering")
    return obj


def _as_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return "; ".join(_as_text(v) for v in value if _as_text(v))
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_as_text(v)}" for k, v in value.items() if _as_text(v))
    s = str(value).strip()
    return "" if s.strip(" .。").lower() in _EMPTY_WORDS else s


def chain_from_dict(obj: dict) -> SafetyChain:
    """Build a chain from a parsed JSON object with English or Chinese keys (the object may also wrap the
    chain under one extra key, e.g. {"chain": {...}})."""
    if not isinstance(obj, dict):
        raise ChainParseError(f"expected a JSON object, got {type(obj).__name__}")
    nodes: dict[str, object] = {}
    for key, value in obj.items():
        node = _KEY_TO_NODE.get(_key_norm(key))
        if node is not None and node not in nodes:
            nodes[node] = value
    if not nodes:
        inner = [v for v in obj.values() if isinstance(v, dict)]
        if len(inner) == 1:
            return chain_from_dict(inner[0])
        raise ChainParseError(f"no chain keys found (keys: {', '.join(map(str, obj)) or 'none'})")
    safety, usefulness = nodes.get("safety"), nodes.get("usefulness")
    strategy = nodes.get("strategy")
    merged: list[str] = []
    if isinstance(strategy, dict):
        for key, value in strategy.items():
            node = _KEY_TO_NODE.get(_key_norm(key))
            if node == "safety" and safety is None:
                safety = value
            elif node == "usefulness" and usefulness is None:
                usefulness = value
            elif node is None:
                merged.extend(split_strategies(value))
    elif strategy is not None:
        merged = split_strategies(strategy)
    chain = SafetyChain(
        user_needs=_as_text(nodes.get("needs")),
        risk_intent=_as_text(nodes.get("risk")),
        safety_guidelines=_as_text(nodes.get("guidelines")),
        safety_strategies=split_strategies(safety),
        usefulness_strategies=_dedup(split_strategies(usefulness) + merged),
    )
    if not chain.user_needs and not chain.strategies:
        raise ChainParseError("chain has neither 'User Needs Analysis' nor any response strategy")
    if not chain.strategies:
        raise ChainParseError("chain has no response strategy ('Response Strategy Formulation' missing or empty)")
    return chain


def parse_chain(text: str, reject=()) -> SafetyChain:
    """Parse the last JSON chain in a model's output (see module docstring for what is tolerated);
    `reject`: the prompt's example objects, which an answer may not repeat."""
    return chain_from_dict(extract_json_block(text, reject))


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


def render_json(chain: SafetyChain, language: str = "en") -> str:
    """A fenced JSON block (the form prompts show and models answer in)."""
    return "```json\n" + json.dumps(chain.to_dict(language), ensure_ascii=False, indent=2) + "\n```"


def _join(items: list[str], language: str) -> str:
    if language == "zh":
        return "；".join(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _sentence(text: str, language: str) -> str:
    text = text.strip()
    if not text:
        return ""
    end = "。" if language == "zh" else "."
    return text if text[-1] in ".!?。！？" else text + end


_PROSE = {
    "en": {
        "user_needs": "What the user needs: {}",
        "risk_intent": "The concern here: {}",
        "safety_guidelines": "What I must keep to: {}",
        "safety_strategies": "To keep it safe I will {}",
        "usefulness_strategies": "To really help I will {}",
        "strategies": "So I will {}",
    },
    "zh": {
        "user_needs": "用户真正需要的是：{}",
        "risk_intent": "需要注意的风险：{}",
        "safety_guidelines": "我需要遵守的原则：{}",
        "safety_strategies": "为了安全，我会{}",
        "usefulness_strategies": "为了真正帮到用户，我会{}",
        "strategies": "所以我会{}",
    },
}


def render_prose(chain: SafetyChain, language: str = "en") -> str:
    """Natural-prose thinking shaped by the chain; it never names the framework or its nodes."""
    lang = "zh" if language in ("zh", "cn") else "en"
    phrase = _PROSE[lang]

    def say(node: str, text: str) -> str:
        return _sentence(phrase[node].format(text), lang)

    out = []
    if chain.user_needs:
        out.append(say("user_needs", chain.user_needs))
    if chain.has_risk:
        out.append(say("risk_intent", chain.risk_intent))
        out.append(say("safety_guidelines", chain.safety_guidelines))
        if chain.safety_strategies:
            out.append(say("safety_strategies", _join(chain.safety_strategies, lang)))
        if chain.usefulness_strategies:
            out.append(say("usefulness_strategies", _join(chain.usefulness_strategies, lang)))
    elif chain.strategies:
        out.append(say("strategies", _join(chain.strategies, lang)))
    return "\n".join(out)


_TAGS = ("user_needs", "risk_intent", "safety_guidelines", "safety_strategies", "usefulness_strategies")


def render_tagged(chain: SafetyChain) -> str:
    """Tagged nodes, e.g. <user_needs>…</user_needs>; a collapsed chain has needs and <strategies>."""
    if not chain.has_risk:
        return f"<user_needs>{chain.user_needs}</user_needs>\n<strategies>{'; '.join(chain.strategies)}</strategies>"
    values = (
        chain.user_needs,
        chain.risk_intent,
        chain.safety_guidelines,
        "; ".join(chain.safety_strategies),
        "; ".join(chain.usefulness_strategies),
    )
    return "\n".join(f"<{tag}>{value}</{tag}>" for tag, value in zip(_TAGS, values))


# --------------------------------------------------------------------------------------------------
# Trust-region merge
# --------------------------------------------------------------------------------------------------


def _item_norm(item: str) -> str:
    """Identity of a strategy item: case, whitespace and end punctuation do not make a new item."""
    s = re.sub(r"\s+", " ", str(item).strip().lower())
    return s.strip(" .;；。,，!！")


def _features(text: str) -> dict[str, int]:
    """Word tokens plus character 3-grams (the latter make it work for Chinese, which has no spaces)."""
    s = _item_norm(text)
    feats: dict[str, int] = {}
    for w in re.findall(r"\w+", s):
        feats["w:" + w] = feats.get("w:" + w, 0) + 1
    compact = re.sub(r"\s+", "", s)
    for i in range(max(len(compact) - 2, 0) or (1 if compact else 0)):
        g = "c:" + compact[i : i + 3]
        feats[g] = feats.get(g, 0) + 1
    return feats


def simhash(text: str, bits: int = 64) -> int:
    """Charikar SimHash over word and character-3-gram features, stable across processes (blake2b)."""
    acc = [0] * bits
    for feat, weight in _features(text).items():
        h = int.from_bytes(hashlib.blake2b(feat.encode("utf-8"), digest_size=bits // 8).digest(), "big")
        for b in range(bits):
            acc[b] += weight if (h >> b) & 1 else -weight
    return sum(1 << b for b in range(bits) if acc[b] > 0)


def simhash_similarity(a: str, b: str, bits: int = 64) -> float:
    """1 − hamming(simhash(a), simhash(b)) / bits, in [0, 1]."""
    return 1.0 - bin(simhash(a, bits) ^ simhash(b, bits)).count("1") / bits


# Function words that say nothing about which strategy an item is (English; Chinese is compared by
# characters and character pairs, where function characters weigh little next to the content ones).
_STOPWORDS = frozenset(
    "a an the to of for in on at by with about and or but if then than that this these those it its is are "
    "be been being as from into their them they you your user users any all some more most very".split()
)
_HAN_CHAR = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
PARAPHRASE_THRESHOLD = 0.5


def _stem(word: str) -> str:
    """Crude plural/tense folding so 'dangers' ~ 'danger', 'dosages' ~ 'dosage'; enough for item matching."""
    for suffix in ("ies", "s", "ing", "ed"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[: -len(suffix)] + ("y" if suffix == "ies" else "")
    return word


def _strategy_features(text: str) -> set[str]:
    """Content words (stemmed, function words dropped) plus Han characters and Han character pairs."""
    s = _item_norm(text)
    feats = {"w:" + _stem(w) for w in re.findall(r"[^\W\d_]+", s) if not _HAN_CHAR.match(w[0]) and w not in _STOPWORDS}
    for run in re.findall(r"[\u3400-\u4dbf\u4e00-\u9fff]+", s):
        feats.update("h:" + ch for ch in run)
        feats.update("h:" + run[i : i + 2] for i in range(len(run) - 1))
    feats.update("d:" + n for n in re.findall(r"\d+", s))
    return feats


def strategy_similarity(a: str, b: str) -> float:
    """Dice overlap of the items' content features, in [0, 1]: 1 for the same item up to case, plurals and
    function words; around 0.5-0.9 for a light rewording; 0 for items that share no content word."""
    fa, fb = _strategy_features(a), _strategy_features(b)
    if not fa or not fb:
        return float(_item_norm(a) == _item_norm(b))
    return 2.0 * len(fa & fb) / (len(fa) + len(fb))


def match_paraphrases(
    old: list[str], new: list[str], *, similarity=strategy_similarity, threshold: float = PARAPHRASE_THRESHOLD
):
    """One-to-one pairs (old index, new index) of items that say the same thing: greedily by descending
    similarity, each pair more than `threshold` similar (ties go to the earlier items). With the default
    measure and 0.5, two items must share more than half of their content ("explain the law" and "explain
    the risks" share exactly half: two strategies, not one)."""
    scored = sorted(
        ((similarity(o, n), i, j) for i, o in enumerate(old) for j, n in enumerate(new)),
        key=lambda t: (-t[0], t[1], t[2]),
    )
    used_old, used_new, pairs = set(), set(), []
    for score, i, j in scored:
        if score <= threshold:
            break
        if i not in used_old and j not in used_new:
            used_old.add(i)
            used_new.add(j)
            pairs.append((i, j))
    return sorted(pairs)


def trust_region_merge(
    old: list[str],
    new: list[str],
    *,
    max_changes: int = 2,
    similarity=strategy_similarity,
    threshold: float = PARAPHRASE_THRESHOLD,
):
    """Limit how far one optimization round moves a strategy list (method notes §6 step 4).

    Items are matched by similarity (`match_paraphrases`), never by exact string: a paraphrase of an old
    item is the same item. Changes = old items with no paraphrase in `new` (removed) + new items with no
    paraphrase in `old` (added). Within `max_changes` the new list is taken as written. Beyond it the step is
    cut back to one addition: the old list stays, every item in its old wording (so nothing the new list
    paraphrases is lost, and nothing is dropped by a step too large to trust), plus the single most novel
    added item (lowest mean similarity to the old items). An empty old list has nothing to protect: the new
    list is taken whole.

    Returns (merged list, info dict with 'accepted', 'changes', 'paraphrased' (old items the new list
    rewords), 'added').
    """
    old, new = _dedup(old), _dedup(new)
    if not old:
        return list(new), {"accepted": True, "changes": len(new), "paraphrased": [], "added": None}
    pairs = match_paraphrases(old, new, similarity=similarity, threshold=threshold)
    matched_new = {j for _, j in pairs}
    paraphrased = [old[i] for i, _ in pairs]
    fresh = [x for j, x in enumerate(new) if j not in matched_new]
    changes = (len(old) - len(pairs)) + len(fresh)
    info = {"accepted": changes <= max_changes, "changes": changes, "paraphrased": paraphrased, "added": None}
    if info["accepted"]:
        return list(new), info
    if fresh:
        scores = [sum(similarity(f, o) for o in old) / len(old) for f in fresh]
        info["added"] = fresh[min(range(len(fresh)), key=lambda k: scores[k])]  # first minimum on ties
    return list(old) + ([info["added"]] if info["added"] is not None else []), info


def merge_chain_strategies(
    old: SafetyChain,
    new: SafetyChain,
    *,
    max_changes: int = 2,
    similarity=strategy_similarity,
    threshold: float = PARAPHRASE_THRESHOLD,
):
    """Apply the trust region to both strategy lists; the text nodes come from `new`.

    When either chain has no risk (collapsed), the merged single list is compared instead and the result
    is collapsed only if `new` is. Returns (chain, info).
    """
    opts = {"max_changes": max_changes, "similarity": similarity, "threshold": threshold}
    if old.has_risk and new.has_risk:
        safety, info_s = trust_region_merge(old.safety_strategies, new.safety_strategies, **opts)
        useful, info_u = trust_region_merge(old.usefulness_strategies, new.usefulness_strategies, **opts)
        merged = dataclasses.replace(new, safety_strategies=safety, usefulness_strategies=useful)
        return merged, {"safety": info_s, "usefulness": info_u}
    merged_list, info = trust_region_merge(old.strategies, new.strategies, **opts)
    if new.has_risk:
        # Old chain was collapsed: an item of the merged list is a safety strategy when it paraphrases one
        # of the new chain's safety strategies.
        as_safety = {
            i
            for i, _ in match_paraphrases(
                merged_list, new.safety_strategies, similarity=similarity, threshold=threshold
            )
        }
        safety = [x for i, x in enumerate(merged_list) if i in as_safety]
        useful = [x for i, x in enumerate(merged_list) if i not in as_safety]
        return dataclasses.replace(new, safety_strategies=safety, usefulness_strategies=useful), {"merged": info}
    return SafetyChain(user_needs=new.user_needs, usefulness_strategies=merged_list), {"merged": info}
