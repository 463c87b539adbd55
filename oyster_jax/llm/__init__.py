"""LLM backends: one protocol, `chat(messages, **sampling) -> (reasoning, content)` (and `achat`).

    from oyster_jax.llm import OpenAICompatibleBackend, backend_from_spec
    policy = backend_from_spec("openai:http://127.0.0.1:8000/v1#tiny")
    reasoning, content = policy.chat([{"role": "user", "content": "hi"}], temperature=0.0)

`LocalJaxBackend` (our own JAX model) is imported lazily so that HTTP-only users do not load JAX.
"""

from oyster_jax.llm.base import Backend, BackendError, BaseBackend, split_think
from oyster_jax.llm.openai_compat import OpenAICompatibleBackend
from oyster_jax.llm.spec import SpecError, backend_from_spec, parse_spec

__all__ = [
    "Backend",
    "BackendError",
    "BaseBackend",
    "split_think",
    "OpenAICompatibleBackend",
    "LocalJaxBackend",
    "SpecError",
    "backend_from_spec",
    "parse_spec",
]


def __getattr__(name):
    if name == "LocalJaxBackend":
        from oyster_jax.llm.local import LocalJaxBackend  # lazy: the local backend pulls in JAX and the model

        return LocalJaxBackend
    raise AttributeError(f"module 'oyster_jax.llm' has no attribute {name!r}")
