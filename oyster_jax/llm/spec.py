"""Backend SPEC strings used by the command-line tools.

openai:BASE_URL#MODEL   e.g. openai:http://127.0.0.1:8000/v1#qwen3-14b  (key from $OYSTER_API_KEY / $OPENAI_API_KEY)
local:CKPT_DIR          our own JAX model (LocalJaxBackend over `convert.open_model`: HF dir, Orbax
                        checkpoint or trainer workdir; its tokenizer unless one is given)
"""

from __future__ import annotations

import inspect

from oyster_jax.llm.openai_compat import OpenAICompatibleBackend

__all__ = ["SpecError", "backend_from_spec", "parse_spec"]


class SpecError(ValueError):
    """A SPEC string that cannot be used; the message shows the accepted forms."""


_FORMS = "expected 'openai:BASE_URL#MODEL' or 'local:CKPT_DIR'"


def parse_spec(spec: str) -> tuple[str, dict]:
    """('openai', {base_url, model}) or ('local', {ckpt})."""
    if not isinstance(spec, str) or ":" not in spec:
        raise SpecError(f"bad backend SPEC {spec!r}: {_FORMS}")
    kind, rest = spec.split(":", 1)
    if kind == "openai":
        if "#" not in rest:
            raise SpecError(f"bad backend SPEC {spec!r}: missing '#MODEL'; {_FORMS}")
        base_url, model = rest.rsplit("#", 1)
        if not base_url.startswith(("http://", "https://")) or not model:
            raise SpecError(f"bad backend SPEC {spec!r}: {_FORMS}")
        return "openai", {"base_url": base_url, "model": model}
    if kind == "local":
        if not rest:
            raise SpecError(f"bad backend SPEC {spec!r}: missing CKPT_DIR; {_FORMS}")
        return "local", {"ckpt": rest}
    raise SpecError(f"bad backend SPEC {spec!r}: unknown kind {kind!r}; {_FORMS}")


def backend_from_spec(spec: str, **options):
    """Build a backend. `options` go to the backend constructor (e.g. max_concurrency, timeout, max_retries
    for HTTP; tokenizer, max_batch for local); options the backend does not take are ignored."""

    kind, args = parse_spec(spec)
    if kind == "openai":
        cls = OpenAICompatibleBackend
    else:
        from oyster_jax.llm.local import LocalJaxBackend  # lazy: imports JAX and the model

        cls = LocalJaxBackend
    accepted = inspect.signature(cls).parameters
    return cls(**args, **{k: v for k, v in options.items() if k in accepted})
