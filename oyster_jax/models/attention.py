"""Attention: the plain XLA path and the dispatch over `attention_impl`.

    "xla"        materialised scores, plain einsums and autodiff (`xla_attention`, any backend)
    "cpu_fused"  the same math with a hand-written backward laid out for XLA:CPU (`kernels.fused_attention`)
    "pallas"     our flash kernels (`kernels.flash_attention`; interpreted on CPU)
    "cudnn"      `jax.nn.dot_product_attention(implementation="cudnn")`, NVIDIA GPUs only
    "auto"       "pallas" on GPU and TPU, "cpu_fused" on CPU (`models.backend.is_cpu`)

On GPU and TPU `auto` falls back to "xla" with a one-line warning when a small forward + backward of the
flash kernel does not compile on this chip for the model's dtype and head size (probed once per
combination). A forced backend that cannot run raises `AttentionBackendError`. Every path takes its mask
from `kernels.masking`.
"""

from __future__ import annotations

import functools
import logging
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from oyster_jax.kernels.flash_attention import flash_attention
from oyster_jax.kernels.fused_attention import fused_attention
from oyster_jax.kernels.masking import attention_mask, masked_softmax
from oyster_jax.models import backend

log = logging.getLogger(__name__)

_ACCELERATORS = ("gpu", "cuda", "rocm", "tpu")


class AttentionBackendError(RuntimeError):
    """A forced attention backend cannot run on this platform."""


def xla_attention(
    q: jax.Array,  # [B, T, N, H]
    k: jax.Array,  # [B, S, K, H]
    v: jax.Array,  # [B, S, K, H]
    *,
    causal: bool = True,
    segment_ids: jax.Array | None = None,  # [B, T], T == S
    sm_scale: float | None = None,
    branch_ids: jax.Array | None = None,  # [B, T]: shared-prompt branches (kernels.masking)
) -> jax.Array:  # [B, T, N, H]
    """Plain attention that materializes the [T, S] scores; grouped heads share K/V without copies."""
    B, T, N, H = q.shape
    S, K = k.shape[1], k.shape[2]
    G = N // K
    sm_scale = H**-0.5 if sm_scale is None else sm_scale
    qg = q.reshape(B, T, K, G, H)
    scores = jnp.einsum("BTKGH,BSKH->BKGTS", qg, k, preferred_element_type=jnp.float32) * sm_scale
    mask = attention_mask(T, S, causal=causal, segment_ids=segment_ids, branch_ids=branch_ids)
    probs = masked_softmax(scores, None if mask is None else mask[:, None, None])  # padding rows -> 0
    out = jnp.einsum("BKGTS,BSKH->BTKGH", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return out.reshape(B, T, N, H).astype(q.dtype)


@functools.cache
def _warn_once(message: str) -> None:
    log.warning(message)


def resolve_impl(impl: str, platform: str | None = None) -> str:
    """The backend `impl` will actually use on `platform` (default: JAX's default backend)."""
    platform = platform or jax.default_backend()
    if impl not in ATTENTION_IMPLS:
        raise AttentionBackendError(f"unknown attention_impl={impl!r}; expected one of {ATTENTION_IMPLS}")
    if impl == "auto":
        if backend.is_cpu(platform):
            return "cpu_fused"
        return "pallas" if platform in _ACCELERATORS else "xla"
    if impl == "cudnn" and platform not in ("gpu", "cuda"):
        raise AttentionBackendError(f"attention_impl='cudnn' needs an NVIDIA GPU; this platform is {platform!r}")
    return impl


def _compile_probe(dtype, head_dim: int) -> None:
    """Lower and compile a small causal forward + backward of the flash kernel on this platform."""
    x = jax.ShapeDtypeStruct((1, 256, 2, head_dim), dtype)
    kv = jax.ShapeDtypeStruct((1, 256, 1, head_dim), dtype)

    def loss(q, k, v):
        return jnp.sum(flash_attention(q, k, v, causal=True).astype(jnp.float32))

    jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(x, kv, kv).compile()


@functools.cache
def _pallas_problem(platform: str, dtype_name: str, head_dim: int) -> str | None:
    """None when the kernel compiles here for (dtype, head_dim); else the first line of the error."""
    try:
        _compile_probe(jnp.dtype(dtype_name), head_dim)
    except Exception as e:  # noqa: BLE001 - any failure to compile means: do not pick this kernel
        return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    return None


def _kernel_specs(mesh, q, k):
    """PartitionSpecs that split a kernel call over the mesh: batch over data x fsdp, heads over tensor
    (when they divide), sequence and head_dim whole."""
    batch_axes = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names and mesh.shape[a] > 1)
    if batch_axes and q.shape[0] % math.prod(mesh.shape[a] for a in batch_axes):
        batch_axes = ()
    tensor = "tensor" if "tensor" in mesh.axis_names and mesh.shape["tensor"] > 1 else None
    if tensor and (q.shape[2] % mesh.shape[tensor] or k.shape[2] % mesh.shape[tensor]):
        tensor = None
    b = batch_axes or None
    return PartitionSpec(b, None, tensor, None), PartitionSpec(b, None)


def _on_mesh(kernel):
    """Pallas and cuDNN calls are opaque to XLA's partitioner: under a mesh, run them per shard."""

    @functools.wraps(kernel)
    def call(q, k, v, *, segment_ids=None, branch_ids=None, **kwargs):
        mesh = jax.sharding.get_abstract_mesh()
        if mesh.empty or mesh.size == 1:
            return kernel(q, k, v, segment_ids=segment_ids, branch_ids=branch_ids, **kwargs)
        qkv_spec, row_spec = _kernel_specs(mesh, q, k)
        rows = {name: x for name, x in (("segment_ids", segment_ids), ("branch_ids", branch_ids)) if x is not None}
        absent = {name: None for name in ("segment_ids", "branch_ids") if name not in rows}

        def per_shard(q, k, v, *row_arrays):
            return kernel(q, k, v, **dict(zip(rows, row_arrays)), **absent, **kwargs)

        in_specs = (qkv_spec,) * 3 + (row_spec,) * len(rows)
        return jax.shard_map(per_shard, in_specs=in_specs, out_specs=qkv_spec, check_vma=False)(q, k, v, *rows.values())

    return call


@_on_mesh
def _pallas(q, k, v, *, segment_ids, branch_ids, causal, sm_scale):
    interpret = jax.default_backend() == "cpu"  # CPU has no Pallas lowering: run the kernel interpreted
    return flash_attention(
        q, k, v, causal=causal, segment_ids=segment_ids, sm_scale=sm_scale, interpret=interpret, branch_ids=branch_ids
    )


@_on_mesh
def _cudnn(q, k, v, *, segment_ids, branch_ids, causal, sm_scale):
    # cuDNN takes causality as a flag and the rest as an explicit [B, 1, T, S] mask. A padding query (segment
    # 0) sees no key, which cuDNN cannot say: it sees itself instead, and its rows are zeroed afterwards.
    T = q.shape[1]
    mask = attention_mask(T, T, causal=False, segment_ids=segment_ids, branch_ids=branch_ids)
    if segment_ids is not None:
        mask = mask | ((segment_ids == 0)[:, :, None] & jnp.eye(T, dtype=bool)[None])
    mask = None if mask is None else mask[:, None]
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=sm_scale, is_causal=causal, implementation="cudnn")
    if segment_ids is not None:
        out = jnp.where((segment_ids != 0)[:, :, None, None], out, 0).astype(out.dtype)
    return out


_BACKENDS = {"xla": xla_attention, "cpu_fused": fused_attention, "pallas": _pallas, "cudnn": _cudnn}
ATTENTION_IMPLS = ("auto", *_BACKENDS)  # the values of ModelConfig.attention_impl


def attention(
    q: jax.Array,  # [B, T, N, H]
    k: jax.Array,  # [B, S, K, H]
    v: jax.Array,  # [B, S, K, H]
    *,
    impl: str = "auto",
    causal: bool = True,
    segment_ids: jax.Array | None = None,  # [B, T]
    sm_scale: float | None = None,
    branch_ids: jax.Array | None = None,  # [B, T]: shared-prompt branches (kernels.masking)
) -> jax.Array:  # [B, T, N, H]
    chosen = resolve_impl(impl)
    if impl == "auto" and chosen == "pallas":
        problem = _pallas_problem(jax.default_backend(), jnp.dtype(q.dtype).name, q.shape[-1])
        if problem:
            _warn_once(
                f"attention_impl=auto: the Pallas kernel does not compile here for {jnp.dtype(q.dtype).name}, "
                f"head_dim {q.shape[-1]} ({problem}); falling back to xla"
            )
            chosen = "xla"
    return _BACKENDS[chosen](q, k, v, causal=causal, segment_ids=segment_ids, sm_scale=sm_scale, branch_ids=branch_ids)
