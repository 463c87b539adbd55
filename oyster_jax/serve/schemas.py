"""Request bodies of the OpenAI API that this server answers, as pydantic models (strict: no coercion).

Fields follow the OpenAI reference for `/v1/chat/completions` and `/v1/completions`; a field that is not
declared here is refused with a 400 naming it (`extra="forbid"`), so nothing a client asks for is silently
ignored. `top_k` is an extension (vLLM has it too). `user`, `metadata`, `store` and `service_tier` are
accepted and change nothing.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["ChatCompletionRequest", "ChatMessage", "CompletionRequest", "ResponseFormat", "StreamOptions"]

MAX_STOP = 4


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None  # kept for schema compatibility; the chat template has no place for it
    reasoning_content: str | None = None  # an assistant turn's thinking (DeepSeek / vLLM convention)

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(_Strict):
    include_usage: bool = False


class JsonSchemaFormat(_Strict):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


def _stop_list(value):
    if value is None:
        return ()
    stops = (value,) if isinstance(value, str) else tuple(value)
    if len(stops) > MAX_STOP or not all(stops):
        raise ValueError(f"stop must be a non-empty string or a list of up to {MAX_STOP} non-empty strings")
    return stops


class _Sampling(_Strict):
    model: str | None = None
    n: int = Field(1, ge=1, le=64)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value):
        _stop_list(value)
        return value

    @field_validator("logit_bias")
    @classmethod
    def _check_bias(cls, value):
        if value is None:
            return value
        if len(value) > 300:
            raise ValueError("logit_bias takes at most 300 entries")
        for key, bias in value.items():
            if not key.isdigit():
                raise ValueError(f"logit_bias keys are token ids, got {key!r}")
            if not -100 <= bias <= 100:
                raise ValueError(f"logit_bias values must be in [-100, 100], got {bias}")
        return value

    def stops(self) -> tuple[str, ...]:
        return _stop_list(self.stop)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for completions
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)
