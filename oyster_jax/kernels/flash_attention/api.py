"""`flash_attention`: argument checks, layout and padding, backend choice, and the custom VJP that runs
the forward kernel and the dq and dk/dv kernels of the chosen backend."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from oyster_jax.kernels.flash_attention import gpu, tpu
from oyster_jax.kernels.flash_attention.common import (
    BRANCH_BITS,
    GPU_BLOCKS,
    GPU_MIN_BLOCK,
    MAX_BRANCH,
    TPU_BLOCKS,
    TPU_MIN_BLOCK,
    BlockSizes,
    KernelTuning,
    Problem,
    Segments,
    fit_block,
    next_power_of_2,
    round_up,
    segment_base,
    segment_extents,
)

_KERNELS = {"gpu": gpu, "tpu": tpu}


def default_style(platform: str | None = None) -> str:
    """Which kernel family runs on `platform` (default: JAX's default backend). CPU interprets the GPU
    family, which the generic Pallas interpreter runs much faster than the TPU simulator."""
    platform = platform or jax.default_backend()
    return "tpu" if platform == "tpu" else "gpu"


def _check(q, k, v, segment_ids, branch_ids=None) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim != 4:
            raise ValueError(f"flash_attention: {name} must be [B, T|S, heads, head_dim]; got shape {x.shape}")
    if k.shape != v.shape:
        raise ValueError(f"flash_attention: k {k.shape} and v {v.shape} must have the same shape")
    (B, T, N, H), (Bk, S, K, Hk) = q.shape, k.shape
    if (B, H) != (Bk, Hk):
        raise ValueError(f"flash_attention: q {q.shape} and k {k.shape} disagree on batch or head_dim")
    if N % K:
        raise ValueError(f"flash_attention: q heads ({N}) must be a multiple of k/v heads ({K})")
    if T == 0 or S == 0:
        raise ValueError(f"flash_attention: empty sequence (q {q.shape}, k {k.shape})")
    if not (q.dtype == k.dtype == v.dtype) or not jnp.issubdtype(q.dtype, jnp.floating):
        raise ValueError(f"flash_attention: q, k, v must share one float dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    for name, ids in (("segment_ids", segment_ids), ("branch_ids", branch_ids)):
        if ids is None:
            continue
        if T != S:
            raise ValueError(f"flash_attention: {name} need T == S; got T={T}, S={S}")
        if ids.shape != (B, T):
            raise ValueError(f"flash_attention: {name} must be [B, T] = {(B, T)}; got {ids.shape}")
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise ValueError(f"flash_attention: {name} must be integer; got {ids.dtype}")
    if branch_ids is not None and not isinstance(branch_ids, jax.core.Tracer):  # values: only outside jit
        values = np.asarray(branch_ids)  # numpy: a jnp reduction here would be traced under an outer jit
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > MAX_BRANCH:
            raise ValueError(f"flash_attention: branch_ids must lie in [0, {MAX_BRANCH}]; got [{low}, {high}]")


def _with_branches(segment_ids, branch_ids, shape):
    """One id array for the kernels: segment * 2**BRANCH_BITS + branch (no segments: one segment, id 1)."""
    seg = jnp.ones(shape, jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
    return seg * (2**BRANCH_BITS) + branch_ids.astype(jnp.int32)


def _problem(
    q,
    k,
    segment_ids,
    *,
    causal,
    sm_scale,
    block_q,
    block_k,
    interpret,
    style,
    tuning: KernelTuning | None = None,
    has_branches: bool = False,
) -> Problem:
    (B, T, N, H), (S, K) = q.shape, k.shape[1:3]
    defaults, minimum = (GPU_BLOCKS, GPU_MIN_BLOCK) if style == "gpu" else (TPU_BLOCKS, TPU_MIN_BLOCK)
    if tuning is not None:
        if style != "gpu" and tuning.sets_launch():
            raise ValueError(f"flash_attention: num_warps/num_stages apply to the GPU family only; got {tuning}")
        if tuning.blocks is not None:
            defaults = tuning.blocks
    requested = defaults
    if block_q is not None or block_k is not None:  # an explicit choice applies to all three kernels
        requested = BlockSizes(
            block_q or defaults.fwd_q,
            block_k or defaults.fwd_k,
            block_q or defaults.dq_q,
            block_k or defaults.dq_k,
            block_q or defaults.dkv_q,
            block_k or defaults.dkv_k,
        )
    fq = lambda b: fit_block(b, T, minimum, style)
    fk = lambda b: fit_block(b, S, minimum, style)
    blocks = BlockSizes(
        fq(requested.fwd_q), fk(requested.fwd_k), fq(requested.dq_q), fk(requested.dq_k),
        fq(requested.dkv_q), fk(requested.dkv_k),
    )  # fmt: skip
    if style == "gpu":  # blocks are powers of two: the largest is a multiple of all
        q_mult, k_mult = blocks.max_q(), blocks.max_k()
        head_dim = max(GPU_MIN_BLOCK, next_power_of_2(H))
    else:
        q_mult = functools.reduce(_lcm, (blocks.fwd_q, blocks.dq_q, blocks.dkv_q))
        k_mult = functools.reduce(_lcm, (blocks.fwd_k, blocks.dq_k, blocks.dkv_k))
        head_dim = H
    return Problem(
        batch=B, q_len=T, kv_len=S, q_heads=N, kv_heads=K, head_dim=H, padded_head_dim=head_dim,
        dtype=jnp.dtype(q.dtype).name, causal=bool(causal), has_segments=segment_ids is not None,
        has_branches=has_branches,
        sm_scale=float(H**-0.5 if sm_scale is None else sm_scale), blocks=blocks,
        q_len_padded=round_up(T, q_mult), kv_len_padded=round_up(S, k_mult), style=style,
        interpret=bool(interpret), tuning=tuning,
    )  # fmt: skip


def _lcm(a: int, b: int) -> int:
    return a * b // math.gcd(a, b)


def _to_kernel_layout(p: Problem, x, length_padded: int):
    """[B, L, heads, H] -> the kernel family's layout, zero-padded to [.., Lp, .., Hp].

    GPU kernels read the sequence-major layout as it is (a row of one head is H contiguous elements,
    which is all a Triton load needs), so nothing is copied unless padding is needed; TPU kernels want
    [B, heads, Lp, Hp], whose last two dims are the (sublane, lane) tile of a block.
    """
    if _KERNELS[p.style].HEAD_MAJOR:
        x = jnp.swapaxes(x, 1, 2)
        pad = ((0, 0), (0, 0), (0, length_padded - x.shape[2]), (0, p.padded_head_dim - x.shape[3]))
    else:
        pad = ((0, 0), (0, length_padded - x.shape[1]), (0, 0), (0, p.padded_head_dim - x.shape[3]))
    return jnp.pad(x, pad) if any(hi for _, hi in pad) else x


def _from_kernel_layout(p: Problem, x, length: int):
    if _KERNELS[p.style].HEAD_MAJOR:
        return jnp.swapaxes(x[:, :, :length, : p.head_dim], 1, 2)
    return x[:, :length, :, : p.head_dim]


def _segments(p: Problem, segment_ids) -> Segments | None:
    if segment_ids is None:
        return None
    seg = segment_ids.astype(jnp.int32)
    q_pad = lambda x: jnp.pad(x, ((0, 0), (0, p.q_len_padded - p.q_len)))  # padded rows and keys get id 0
    k_pad = lambda x: jnp.pad(x, ((0, 0), (0, p.kv_len_padded - p.kv_len)))
    first, last = segment_extents(segment_base(p, seg))  # T == S: one row serves queries and keys
    return Segments(q_pad(seg), k_pad(seg), q_pad(first), q_pad(last), k_pad(first), k_pad(last))


def _forward(p: Problem, q, k, v, segment_ids):
    """-> (o in the kernel layout, lse [B, N, Tp], the kernels' Segments or None)."""
    kernels = _KERNELS[p.style]
    qk = _to_kernel_layout(p, q, p.q_len_padded)
    kk = _to_kernel_layout(p, k, p.kv_len_padded)
    vk = _to_kernel_layout(p, v, p.kv_len_padded)
    segs = _segments(p, segment_ids)
    return *kernels.forward(p, qk, kk, vk, segs), segs


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(p: Problem, q, k, v, segment_ids):
    o, _, _ = _forward(p, q, k, v, segment_ids)
    return _from_kernel_layout(p, o, p.q_len)


def _attention_fwd(p: Problem, q, k, v, segment_ids):
    o, lse, segs = _forward(p, q, k, v, segment_ids)
    # Residuals are O(T): the inputs as given, the padded output, the log-sum-exp and the padded segment
    # ids with their extents (kept, so the backward does not sort them again).
    return _from_kernel_layout(p, o, p.q_len), (q, k, v, segs, o, lse)


def _attention_bwd(p: Problem, residuals, d_out):
    q, k, v, segs, o, lse = residuals
    kernels = _KERNELS[p.style]
    qk = _to_kernel_layout(p, q, p.q_len_padded)
    kk = _to_kernel_layout(p, k, p.kv_len_padded)
    vk = _to_kernel_layout(p, v, p.kv_len_padded)
    do = _to_kernel_layout(p, d_out.astype(q.dtype), p.q_len_padded)
    # delta_t = sum_h dO_th O_th = sum_s P_ts dP_ts: the softmax-gradient correction, one float per row.
    delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1)
    if not kernels.HEAD_MAJOR:
        delta = jnp.swapaxes(delta, 1, 2)  # [B, Tp, N] -> [B, N, Tp]
    dq = kernels.backward_dq(p, qk, kk, vk, do, lse, delta, segs)
    dk, dv = kernels.backward_dkv(p, qk, kk, vk, do, lse, delta, segs)
    d_segments = None if segs is None else np.zeros((p.batch, p.q_len), dtype=jax.dtypes.float0)
    return (
        _from_kernel_layout(p, dq, p.q_len),
        _from_kernel_layout(p, dk, p.kv_len),
        _from_kernel_layout(p, dv, p.kv_len),
        d_segments,
    )


_attention.defvjp(_attention_fwd, _attention_bwd)


def flash_attention_with_style(
    q: jax.Array,  # [B, T, N, H]
    k: jax.Array,  # [B, S, K, H]
    v: jax.Array,  # [B, S, K, H]
    *,
    style: str,
    causal: bool = True,
    segment_ids: jax.Array | None = None,  # [B, T]
    sm_scale: float | None = None,
    block_q: int | None = None,
    block_k: int | None = None,
    interpret: bool = False,
    tuning: KernelTuning | None = None,
    branch_ids: jax.Array | None = None,  # [B, T]
) -> jax.Array:  # [B, T, N, H]
    """`flash_attention` with the kernel family chosen explicitly ("gpu" = Triton, "tpu" = Mosaic).

    Tests use it to run the TPU kernels under Pallas' TPU interpreter on a CPU host, and to lower the
    real (non-interpreted) kernels for a platform this host does not have. `interpret` is taken as is.
    `tuning` overrides tiles and (GPU) warps/stages per kernel, for the benchmark's --tune search;
    None runs the built-in defaults.
    """
    if style not in _KERNELS:
        raise ValueError(f"flash_attention: style must be 'gpu' or 'tpu'; got {style!r}")
    _check(q, k, v, segment_ids, branch_ids)
    if branch_ids is not None:
        segment_ids = _with_branches(segment_ids, branch_ids, q.shape[:2])
    p = _problem(
        q, k, segment_ids, causal=causal, sm_scale=sm_scale, block_q=block_q, block_k=block_k,
        interpret=interpret, style=style, tuning=tuning, has_branches=branch_ids is not None,
    )  # fmt: skip
    return _attention(p, q, k, v, segment_ids)


def flash_attention(
    q: jax.Array,  # [B, T, N, H]
    k: jax.Array,  # [B, S, K, H]
    v: jax.Array,  # [B, S, K, H]
    *,
    causal: bool = True,
    segment_ids: jax.Array | None = None,  # [B, T], T == S; 0 = padding
    sm_scale: float | None = None,
    block_q: int | None = None,
    block_k: int | None = None,
    interpret: bool = False,
    branch_ids: jax.Array | None = None,  # [B, T], T == S; 0 = shared trunk, 1..7 = branches
) -> jax.Array:  # [B, T, N, H] in q.dtype
    """Memory-efficient exact attention with our own Pallas kernels (forward and backward).

    q [B, T, N, H]; k, v [B, S, K, H] with N % K == 0: query head n uses K/V head n // (N // K), and
    K/V are never repeated. Causal masking is right-aligned (query t sees key s iff s <= t + S - T).
    segment_ids int32 [B, T] (needs T == S): a query sees only keys with the same non-zero id; id 0 is
    padding. Queries that see no key return zeros (and zero gradients), never NaN. sm_scale defaults
    to 1/sqrt(H). Softmax statistics and accumulators are float32 whatever the input dtype. T and S
    need not be multiples of the blocks: inputs are padded internally. block_q/block_k override the
    per-backend defaults for all three kernels (forward, dq, dk/dv).

    branch_ids int [B, T] in [0, 7] (prompt sharing, `data.layouts.SharedPrompt`): within a segment a
    token of branch 0 (the shared prompt) is seen by all, a token of branch b > 0 sees branch 0 and branch
    b only, so a rejected completion packed after the chosen one never attends to it. Segment ids must
    then stay below 2**28 (the kernels see segment * 8 + branch).

    The kernel family follows `jax.default_backend()`: Mosaic on TPU, Triton on GPU; on CPU the Triton
    kernels run in Pallas interpret mode (whatever `interpret` says, since nothing else can run there).
    """
    if jax.default_backend() == "cpu":
        interpret = True  # Pallas has no CPU lowering: the kernels can only be interpreted there
    return flash_attention_with_style(
        q, k, v, style=default_style(), causal=causal, segment_ids=segment_ids, sm_scale=sm_scale,
        block_q=block_q, block_k=block_k, interpret=interpret, branch_ids=branch_ids,
    )  # fmt: skip
