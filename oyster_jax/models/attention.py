"""Attention: the pure-XLA path and the dispatch over `attention_impl` ("auto" | "xla" | "pallas" | "cudnn").

`auto` picks the Pallas flash kernel on GPU and TPU and XLA on CPU, and falls back to XLA with a one-line
warning if the kernel cannot be used there: when it cannot be imported, or when a small forward + backward of
it does not compile on this chip for the model's dtype and head size (probed once per combination).
A forced backend that cannot run raises `AttentionBackendError`.
"""

from __future__ import annotations

import functools
import logging
import math

import jax
import jax.numpy as jnp

log = logging.getLogger(__name__)

_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


class AttentionBackendError(RuntimeError):
    """A forced attention backend cannot run on this platform."""


def attention_mask(
    segment_ids_q: jax.Array | None,  # [B, T]
    segment_ids_k: jax.Array | None,  # [B, S]
    T: int,
    S: int,
    causal: bool,
    branch_ids: jax.Array | None = None,  # [B, T], T == S
) -> jax.Array | None:
    """Boolean [B|1, T, S] mask: causal by index, same non-zero segment id (0 = padding).

    `branch_ids` (prompt sharing, `train/batches.share_prompts`): 0 marks a shared trunk that every token of
    the segment may see; tokens of branch b > 0 see the trunk and branch b only, so a rejected completion
    packed after its chosen one never attends to it."""
    mask = None
    if causal:
        # Right-aligned so that decoding (T < S) lets the last query see every key.
        mask = (jnp.arange(T)[:, None] + (S - T)) >= jnp.arange(S)[None, :]
        mask = mask[None]
    if segment_ids_q is not None:
        seg = (segment_ids_q[:, :, None] == segment_ids_k[:, None, :]) & (segment_ids_q[:, :, None] != 0)
        mask = seg if mask is None else mask & seg
    if branch_ids is not None:
        same = (branch_ids[:, None, :] == 0) | (branch_ids[:, :, None] == branch_ids[:, None, :])
        mask = same if mask is None else mask & same
    return mask


def xla_attention(
    q: jax.Array,  # [B, T, N, H]
    k: jax.Array,  # [B, S, K, H]
    v: jax.Array,  # [B, S, K, H]
    *,
    causal: bool = True,
    segment_ids: jax.Array | None = None,  # [B, T], T == S
    sm_scale: float | None = None,
    branch_ids: jax.Array | None = None,  # [B, T]: see attention_mask
) -> jax.Array:  # [B, T, N, H]
    """Reference attention that materializes the [T, S] scores; grouped heads share K/V without copies."""
    B, T, N, H = q.shape
    S, K = k.shape[1], k.shape[2]
    G = N // K
    sm_scale = H**-0.5 if sm_scale is None else sm_scale
    qg = q.reshape(B, T, K, G, H)
    scores = jnp.einsum("BTKGH,BSKH->BKGTS", qg, k, preferred_element_type=jnp.float32) * sm_scale
    mask = attention_mask(segment_ids, segment_ids, T, S, causal, branch_ids)
    if mask is not None:
        scores = jnp.where(mask[:, None, None], scores, _MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1)
    if mask is not None:  # a fully masked row (padding) gives zeros, not a uniform average
        probs = jnp.where(mask[:, None, None].any(-1, keepdims=True), probs, 0.0)
    out = jnp.einsum("BKGTS,BSKH->BTKGH", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return out.reshape(B, T, N, H).astype(q.dtype)


@functools.cache
def _warn_once(message: str) -> None:
    log.warning(message)


def resolve_impl(impl: str, platform: str | None = None) -> str:
    """The backend `impl` will actually use on `platform` (default: JAX's default backend)."""
    platform = platform or jax.default_backend()
    if impl == "auto":
        if platform in ("gpu", "cuda", "rocm", "tpu"):
            try:
                from oyster_jax.kernels import flash_attention  # noqa: F401
            except ImportError as e:  # pragma: no cover - depends on the installation
                _warn_once(f"attention_impl=auto: Pallas kernel unavailable ({e}); falling back to xla")
                return "xla"
            return "pallas"
        return "xla"
    if impl == "cudnn" and platform not in ("gpu", "cuda"):
        raise AttentionBackendError(f"attention_impl='cudnn' needs an NVIDIA GPU; this platform is {platform!r}")
    if impl not in ("xla", "pallas", "cudnn"):
        raise AttentionBackendError(f"unknown attention_impl={impl!r}")
    return impl


def _compile_probe(dtype, head_dim: int) -> None:
    """Lower and compile a small causal forward + backward of the flash kernel on this platform."""
    from oyster_jax.kernels import flash_attention

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
    from jax.sharding import PartitionSpec as P

    batch_axes = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names and mesh.shape[a] > 1)
    if batch_axes and q.shape[0] % math.prod(mesh.shape[a] for a in batch_axes):
        batch_axes = ()
    tensor = "tensor" if "tensor" in mesh.axis_names and mesh.shape["tensor"] > 1 else None
    if tensor and (q.shape[2] % mesh.shape[tensor] or k.shape[2] % mesh.shape[tensor]):
        tensor = None
    b = batch_axes or None
    return P(b, None, tensor, None), P(b, None)


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
    from oyster_jax.kernels import flash_attention

    interpret = jax.default_backend() == "cpu"  # CPU has no Pallas lowering: run the kernel interpreted
    return flash_attention(
        q, k, v, causal=causal, segment_ids=segment_ids, sm_scale=sm_scale, interpret=interpret, branch_ids=branch_ids
    )


@_on_mesh
def _cudnn(q, k, v, *, segment_ids, branch_ids, causal, sm_scale):
    # Padding tokens (segment 0) must not match each other: give each a distinct negative id (it then sees
    # only itself) and zero those rows afterwards. Branches can only be said with an explicit [T, S] mask.
    mask = None
    if segment_ids is not None:
        pad_ids = -1 - jnp.arange(segment_ids.shape[1], dtype=segment_ids.dtype)[None]
        seg = jnp.where(segment_ids == 0, pad_ids, segment_ids)
        mask = seg[:, None, :, None] == seg[:, None, None, :]  # [B, 1, T, S]
    if branch_ids is not None:
        seen = (branch_ids[:, None, None, :] == 0) | (branch_ids[:, None, :, None] == branch_ids[:, None, None, :])
        mask = seen if mask is None else mask & seen
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=sm_scale, is_causal=causal, implementation="cudnn")
    if segment_ids is not None:
        out = jnp.where((segment_ids != 0)[:, :, None, None], out, 0).astype(out.dtype)
    return out


def attention(
    q: jax.Array,  # [B, T, N, H]
    k: jax.Array,  # [B, S, K, H]
    v: jax.Array,  # [B, S, K, H]
    *,
    impl: str = "auto",
    causal: bool = True,
    segment_ids: jax.Array | None = None,  # [B, T]
    sm_scale: float | None = None,
    branch_ids: jax.Array | None = None,  # [B, T]: shared-prompt branches, see attention_mask
) -> jax.Array:  # [B, T, N, H]
    backend = resolve_impl(impl)
    if impl == "auto" and backend == "pallas":
        problem = _pallas_problem(jax.default_backend(), jnp.dtype(q.dtype).name, q.shape[-1])
        if problem:
            _warn_once(
                f"attention_impl=auto: the Pallas kernel does not compile here for {jnp.dtype(q.dtype).name}, "
                f"head_dim {q.shape[-1]} ({problem}); falling back to xla"
            )
            backend = "xla"
    if backend == "xla":
        # Same math as xla_attention (the reference), with a hand-written backward laid out for XLA:CPU.
        from oyster_jax.models.attention_fused import fused_attention

        return fused_attention(
            q, k, v, causal=causal, segment_ids=segment_ids, sm_scale=sm_scale, branch_ids=branch_ids
        )
    kernel = _pallas if backend == "pallas" else _cudnn
    return kernel(q, k, v, segment_ids=segment_ids, branch_ids=branch_ids, causal=causal, sm_scale=sm_scale)
