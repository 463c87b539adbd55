"""Chat formats: Qwen3-style ChatML and DeepSeek-R1-Distill, with a thinking block, plus the safety chain.

Pure Python (no TensorFlow), so generation, serving and the CSA engine can import it cheaply.

Messages are dicts ``{"role": "system"|"user"|"assistant", "content": str}``; an assistant message may
also carry ``"thinking": str`` (its reasoning). ``thinking`` absent/None renders no think block;
``thinking == ""`` renders an empty one (what Qwen3 writes when thinking is switched off).

ChatML (``fmt="chatml"``, Qwen3)::

    <|im_start|>system\\n{content}<|im_end|>\\n
    <|im_start|>user\\n{content}<|im_end|>\\n
    <|im_start|>assistant\\n<think>\\n{thinking}\\n</think>\\n\\n{content}<|im_end|>\\n

DeepSeek-R1-Distill (``fmt="deepseek_r1"``)::

    <｜begin▁of▁sentence｜>{system}<｜User｜>{content}<｜Assistant｜><think>\\n{thinking}\\n</think>\\n\\n{content}<｜end▁of▁sentence｜>

API (all functions take ``fmt``; default ``"chatml"``):

- ``render(messages) -> str`` and ``parse(text) -> messages``: ``parse(render(m)) == m`` for valid m.
- ``render_segments(messages) -> [(text, trainable)]``: the same text cut where the loss mask changes;
  ``trainable`` is True for assistant turns (think block, answer and the end-of-turn token), False for
  everything else. The data pipeline turns this into ``loss_weights``.
- ``render_generation_prompt(messages) -> str``: the conversation followed by the opening of an
  assistant turn (``<|im_start|>assistant\\n``; DeepSeek: ``<｜Assistant｜><think>\\n``, as its template does).
- ``render_completion(thinking, content) -> str``: one assistant turn's body after the generation prompt
  (what a preference pair's chosen/rejected completion is); ``render_generation_prompt(m) +
  render_completion(t, c)`` equals ``render(m + [assistant(t, c)])`` up to the trailing separator.
- ``split_thinking(generated) -> (thinking, content)``: splits generated assistant text (with or without
  the opening ``<think>``, with or without the end-of-turn token; an unfinished think block gives
  content ``""``).
- ``stop_strings(fmt)``: strings that end an assistant turn.

Safety chain (the structured reasoning of the CSA method, docs/csa_method.md §4): the CSA engine's
``oyster_jax.core.chain.SafetyChain``, or a dict in its JSON form or in this snake_case form::

    {"user_needs": str, "risk_intent": str, "safety_guidelines": str,
     "safety_strategies": [str, ...], "usefulness_strategies": [str, ...]}

An empty ``risk_intent`` or ``safety_guidelines`` means "no risk": the chain collapses to the needs and
one merged strategy list. ``render_chain(chain, style, language)`` writes it into the thinking (the
config choice "how the chain appears"):

- ``style="prose"``: compact natural sentences that do not name the framework (the default);
- ``style="tagged"``: one ``<node>value</node>`` line per node (``core.chain.render_tagged``), parsed back
  by ``parse_chain``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from oyster_jax.core import chain as chain_lib

__all__ = [
    "FORMATS",
    "CHAIN_STYLES",
    "ChatFormat",
    "ChatFormatError",
    "get_format",
    "render",
    "render_segments",
    "parse",
    "render_generation_prompt",
    "render_completion",
    "split_thinking",
    "stop_strings",
    "render_chain",
    "parse_chain",
    "validate_chain",
    "normalize_chain",
    "CHAIN_KEYS",
]

ROLES = ("system", "user", "assistant")
CHAIN_STYLES = ("prose", "tagged")
CHAIN_KEYS = ("user_needs", "risk_intent", "safety_guidelines", "safety_strategies", "usefulness_strategies")

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


class ChatFormatError(ValueError):
    """A message list, chat text or chain that cannot be rendered or parsed (the message says where)."""


@dataclasses.dataclass(frozen=True)
class ChatFormat:
    """Markers of one chat format. ``special_tokens`` must be single tokens of a matching tokenizer."""

    name: str
    bos: str  # written once at the very start
    system_open: str
    system_close: str
    user_open: str
    user_close: str
    assistant_open: str  # also the generation prompt (plus ``generation_suffix``)
    assistant_close: str  # end-of-turn token, trained with the assistant turn
    turn_separator: str  # written after every turn's close, never trained
    generation_suffix: str  # appended to the generation prompt after ``assistant_open``
    special_tokens: tuple[str, ...]


CHATML = ChatFormat(
    name="chatml",
    bos="",
    system_open="<|im_start|>system\n",
    system_close="<|im_end|>",
    user_open="<|im_start|>user\n",
    user_close="<|im_end|>",
    assistant_open="<|im_start|>assistant\n",
    assistant_close="<|im_end|>",
    turn_separator="\n",
    generation_suffix="",
    special_tokens=("<|im_start|>", "<|im_end|>", THINK_OPEN, THINK_CLOSE),
)

DEEPSEEK_R1 = ChatFormat(
    name="deepseek_r1",
    bos="<｜begin▁of▁sentence｜>",
    system_open="",
    system_close="",
    user_open="<｜User｜>",
    user_close="",
    assistant_open="<｜Assistant｜>",
    assistant_close="<｜end▁of▁sentence｜>",
    turn_separator="",
    generation_suffix=THINK_OPEN + "\n",
    special_tokens=(
        "<｜begin▁of▁sentence｜>",
        "<｜end▁of▁sentence｜>",
        "<｜User｜>",
        "<｜Assistant｜>",
        THINK_OPEN,
        THINK_CLOSE,
    ),
)

FORMATS = {"chatml": CHATML, "deepseek_r1": DEEPSEEK_R1}


def get_format(fmt: str | ChatFormat) -> ChatFormat:
    if isinstance(fmt, ChatFormat):
        return fmt
    try:
        return FORMATS[fmt]
    except KeyError:
        raise ChatFormatError(f"unknown chat format {fmt!r}: expected one of {sorted(FORMATS)}") from None


# ------------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------------


def _check_text(text, where: str, f: ChatFormat) -> str:
    if not isinstance(text, str):
        raise ChatFormatError(f"{where}: expected a string, got {type(text).__name__}")
    for marker in f.special_tokens:
        if marker in text:
            raise ChatFormatError(f"{where}: contains the reserved marker {marker!r} of format {f.name!r}")
    return text


def _think_block(thinking: str) -> str:
    return f"{THINK_OPEN}\n{thinking}\n{THINK_CLOSE}\n\n"


def render_completion(thinking: str | None, content: str, fmt: str | ChatFormat = "chatml") -> str:
    """The assistant turn body that follows ``render_generation_prompt``: think block, answer, end-of-turn.

    For DeepSeek the generation prompt already holds ``<think>\\n``, so the completion starts after it.
    """
    f = get_format(fmt)
    _check_text(content, "content", f)
    if thinking is not None:
        _check_text(thinking, "thinking", f)
    body = ("" if thinking is None else _think_block(thinking)) + content + f.assistant_close
    if f.generation_suffix:
        if not body.startswith(f.generation_suffix):
            raise ChatFormatError(f"format {f.name!r} needs a think block in every completion (thinking=None)")
        body = body[len(f.generation_suffix) :]
    return body


def render_segments(messages: Sequence[dict], fmt: str | ChatFormat = "chatml") -> list[tuple[str, bool]]:
    """The rendered conversation as ``[(text, trainable)]``; joined, it is ``render(messages)``.

    Trainable pieces are the assistant turns (think block + answer + end-of-turn marker); the assistant
    opening marker, user/system turns and separators are not.
    """
    f = get_format(fmt)
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise ChatFormatError("messages: expected a non-empty list of {role, content} dicts")
    segments: list[tuple[str, bool]] = []

    def add(text: str, trainable: bool):
        if not text:
            return
        if segments and segments[-1][1] == trainable:
            segments[-1] = (segments[-1][0] + text, trainable)
        else:
            segments.append((text, trainable))

    add(f.bos, False)
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ChatFormatError(f"messages[{i}]: expected a dict, got {type(m).__name__}")
        role = m.get("role")
        if role not in ROLES:
            raise ChatFormatError(f"messages[{i}].role: expected one of {ROLES}, got {role!r}")
        content = _check_text(m.get("content"), f"messages[{i}].content", f)
        thinking = m.get("thinking")
        if thinking is not None and role != "assistant":
            raise ChatFormatError(f"messages[{i}].thinking: only assistant messages carry thinking")
        if role == "system":
            if f.name == "deepseek_r1" and i != 0:
                raise ChatFormatError(f"messages[{i}].role: format 'deepseek_r1' allows a system turn only first")
            add(f.system_open + content + f.system_close + f.turn_separator, False)
        elif role == "user":
            add(f.user_open + content + f.user_close + f.turn_separator, False)
        else:
            if thinking is not None:
                _check_text(thinking, f"messages[{i}].thinking", f)
            add(f.assistant_open, False)
            add(("" if thinking is None else _think_block(thinking)) + content + f.assistant_close, True)
            add(f.turn_separator, False)
    return segments


def render(messages: Sequence[dict], fmt: str | ChatFormat = "chatml") -> str:
    """The whole conversation as one string (see the module docstring for the layout)."""
    return "".join(text for text, _ in render_segments(messages, fmt))


def render_generation_prompt(messages: Sequence[dict], fmt: str | ChatFormat = "chatml") -> str:
    """``render(messages)`` followed by the opening of an assistant turn, ready for generation."""
    f = get_format(fmt)
    if messages and messages[-1].get("role") == "assistant":
        raise ChatFormatError("messages[-1].role: a generation prompt must not end with an assistant turn")
    return render(messages, f) + f.assistant_open + f.generation_suffix


def stop_strings(fmt: str | ChatFormat = "chatml") -> tuple[str, ...]:
    """Strings that end a generated assistant turn."""
    f = get_format(fmt)
    return (f.assistant_close, "<|endoftext|>") if f.name == "chatml" else (f.assistant_close,)


# ------------------------------------------------------------------------------------------------
# Parsing
# ------------------------------------------------------------------------------------------------


def _split_assistant_body(body: str) -> dict:
    if body.startswith(THINK_OPEN + "\n"):
        end = body.find("\n" + THINK_CLOSE + "\n\n")
        if end < 0:
            raise ChatFormatError("assistant turn: '<think>' block is not closed by '\\n</think>\\n\\n'")
        thinking = body[len(THINK_OPEN) + 1 : end]
        content = body[end + len(THINK_CLOSE) + 3 :]
        return {"role": "assistant", "content": content, "thinking": thinking}
    return {"role": "assistant", "content": body}


def parse(text: str, fmt: str | ChatFormat = "chatml") -> list[dict]:
    """Inverse of ``render``: the message list (assistant messages get ``thinking`` when they had a block)."""
    f = get_format(fmt)
    if not isinstance(text, str):
        raise ChatFormatError(f"parse: expected a string, got {type(text).__name__}")
    if f.name == "chatml":
        return _parse_chatml(text, f)
    return _parse_deepseek(text, f)


def _parse_chatml(text: str, f: ChatFormat) -> list[dict]:
    messages = []
    pos = 0
    open_re = re.compile(r"<\|im_start\|>(system|user|assistant)\n")
    while pos < len(text):
        m = open_re.match(text, pos)
        if not m:
            raise ChatFormatError(
                f"chatml: expected '<|im_start|>role\\n' at character {pos}: {text[pos : pos + 40]!r}"
            )
        role = m.group(1)
        end = text.find(f.assistant_close, m.end())
        if end < 0:
            raise ChatFormatError(f"chatml: turn starting at character {pos} is not closed by '<|im_end|>'")
        body = text[m.end() : end]
        messages.append(_split_assistant_body(body) if role == "assistant" else {"role": role, "content": body})
        pos = end + len(f.assistant_close)
        if text.startswith(f.turn_separator, pos):
            pos += len(f.turn_separator)
    if not messages:
        raise ChatFormatError("chatml: no turns found")
    return messages


def _parse_deepseek(text: str, f: ChatFormat) -> list[dict]:
    if not text.startswith(f.bos):
        raise ChatFormatError(f"deepseek_r1: text must start with {f.bos!r}")
    rest = text[len(f.bos) :]
    pattern = re.compile("(" + re.escape(f.user_open) + "|" + re.escape(f.assistant_open) + ")")
    pieces = pattern.split(rest)
    messages: list[dict] = []
    if pieces[0]:
        messages.append({"role": "system", "content": pieces[0]})
    for marker, body in zip(pieces[1::2], pieces[2::2]):
        if marker == f.user_open:
            messages.append({"role": "user", "content": body})
        else:
            if not body.endswith(f.assistant_close):
                raise ChatFormatError("deepseek_r1: assistant turn not closed by '<｜end▁of▁sentence｜>'")
            messages.append(_split_assistant_body(body[: -len(f.assistant_close)]))
    if not messages:
        raise ChatFormatError("deepseek_r1: no turns found")
    return messages


def split_thinking(generated: str, fmt: str | ChatFormat = "chatml") -> tuple[str, str]:
    """Split a generated assistant turn into ``(thinking, content)``, both stripped of whitespace.

    Accepts text with or without the opening ``<think>`` (DeepSeek's prompt already holds it) and with or
    without a trailing end-of-turn marker. Text with no ``</think>`` but an opening ``<think>`` is an
    unfinished thought: ``(thinking, "")``. Text with neither is all content: ``("", text)``.
    """
    text = generated
    for stop in stop_strings(fmt):
        cut = text.find(stop)
        if cut >= 0:
            text = text[:cut]
    close = text.find(THINK_CLOSE)
    if close >= 0:
        thinking = text[:close]
        opened = thinking.find(THINK_OPEN)
        if opened >= 0:
            thinking = thinking[opened + len(THINK_OPEN) :]
        return thinking.strip(), text[close + len(THINK_CLOSE) :].strip()
    opened = text.find(THINK_OPEN)
    if opened >= 0:
        return text[opened + len(THINK_OPEN) :].strip(), ""
    return "", text.strip()


# ------------------------------------------------------------------------------------------------
# Safety chain
# ------------------------------------------------------------------------------------------------


def normalize_chain(chain) -> dict:
    """A chain in canonical snake_case dict form (keys ``CHAIN_KEYS``).

    Accepts this dict form, the CSA engine's JSON form (``SafetyChain.to_dict``: "User Needs Analysis",
    ... or the Chinese keys), or a ``oyster_jax.core.chain.SafetyChain``; parsing is delegated to
    ``oyster_jax.core.chain.chain_from_dict`` so the whole project reads chains one way.
    """

    if isinstance(chain, chain_lib.SafetyChain):
        parsed = chain
    elif isinstance(chain, dict):
        try:
            parsed = chain_lib.chain_from_dict(chain)
        except chain_lib.ChainParseError as e:
            raise ChatFormatError(f"chain: {e}") from None
    else:
        raise ChatFormatError(f"chain: expected an object, got {type(chain).__name__}")
    out = dataclasses.asdict(parsed)
    for key in ("user_needs", "risk_intent", "safety_guidelines"):
        if not isinstance(out[key], str):
            raise ChatFormatError(f"chain.{key}: expected a string, got {type(out[key]).__name__}")
    return out


def validate_chain(chain) -> dict:
    """Check a chain (any form ``normalize_chain`` accepts); returns the normalized dict."""
    return normalize_chain(chain)


def _no_risk(chain: dict) -> bool:
    return not chain["risk_intent"].strip() or not chain["safety_guidelines"].strip()


def _is_zh(language: str) -> bool:
    return language.lower() in ("zh", "cn", "zh-cn", "chinese")


def _join_en(items: Sequence[str]) -> str:
    items = [s.strip().rstrip(".") for s in items if s.strip()]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _sentence(text: str) -> str:
    text = text.strip()
    if not text or text[-1] in ".!?。！？":
        return text
    return text + ("。" if re.search(r"[\u4e00-\u9fff]", text) else ".")


def render_chain(chain, style: str = "prose", language: str = "en") -> str:
    """The chain as thinking text.

    ``style="prose"``: compact natural sentences (needs, risk, guideline, "So I will ...", "I will also
    ..."), no node names. ``style="tagged"``: ``oyster_jax.core.chain.render_tagged`` (one
    ``<node>value</node>`` line per node; a no-risk chain has ``<user_needs>`` and ``<strategies>``).
    """
    c = normalize_chain(chain)
    if style == "tagged":
        return chain_lib.render_tagged(chain_lib.SafetyChain(**c))
    if style != "prose":
        raise ChatFormatError(f"chain style {style!r}: expected one of {CHAIN_STYLES}")
    safety = [s.strip() for s in c["safety_strategies"] if s.strip()]
    useful = [s.strip() for s in c["usefulness_strategies"] if s.strip()]
    zh = _is_zh(language)
    parts = [_sentence(c["user_needs"])] if c["user_needs"].strip() else []
    if _no_risk(c):
        merged = safety + useful
        if merged:
            parts.append(("所以我会" + "，".join(merged) + "。") if zh else f"So I will {_join_en(merged)}.")
    else:
        parts.append(_sentence(c["risk_intent"]))
        parts.append(_sentence(c["safety_guidelines"]))
        if safety:
            parts.append(("所以我会" + "，".join(safety) + "。") if zh else f"So I will {_join_en(safety)}.")
        if useful:
            parts.append(("同时我会" + "，".join(useful) + "。") if zh else f"I will also {_join_en(useful)}.")
    return ("" if zh else " ").join(parts)


_TAG_LINE = re.compile(r"^<(\w+)>(.*)</\1>$")


def parse_chain(thinking: str) -> dict:
    """Inverse of ``render_chain(chain, "tagged")`` (normalized dict). Prose is lossy and not parsed."""
    nodes = {}
    for lineno, line in enumerate(thinking.strip().split("\n"), 1):
        m = _TAG_LINE.match(line.strip())
        if not m or m.group(1) not in (*CHAIN_KEYS, "strategies"):
            raise ChatFormatError(f"tagged chain line {lineno}: expected '<node>value</node>', got {line[:40]!r}")
        nodes[m.group(1)] = m.group(2)
    if "strategies" in nodes:  # no-risk collapse: one merged list
        nodes["usefulness_strategies"] = nodes.pop("strategies")
    return normalize_chain(nodes)
