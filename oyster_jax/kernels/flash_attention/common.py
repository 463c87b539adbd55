"""What the GPU (Triton) and TPU (Mosaic) kernels share: the static problem description and the
block-range arithmetic that decides which key blocks a query block must visit.

Internally the kernels work in a head-major layout, q [B, N, Tp, H] and k, v [B, K, Sp, H], where Tp and
Sp are T and S padded up to a multiple of every block size in use. Logits are base-2 inside the GPU
kernels (exp2 is the native instruction) and natural-log inside the TPU kernels; the log-sum-exp saved
for the backward pass is always natural-log, [B, N, Tp] float32, +inf for a row that sees no key.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from oyster_jax.kernels import masking


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes (query rows x key rows) for the forward, dq and dk/dv kernels."""

    fwd_q: int
    fwd_k: int
    dq_q: int
    dq_k: int
    dkv_q: int
    dkv_k: int

    @classmethod
    def uniform(cls, block_q: int, block_k: int) -> BlockSizes:
        return cls(block_q, block_k, block_q, block_k, block_q, block_k)

    def max_q(self) -> int:
        return max(self.fwd_q, self.dq_q, self.dkv_q)

    def max_k(self) -> int:
        return max(self.fwd_k, self.dq_k, self.dkv_k)


# Per-backend defaults. GPU: FlashAttention-2-style Triton tiles (wide query tile for the forward and dq,
# wide key tile for dk/dv, whose inner loop walks query tiles). TPU: large tiles keep the MXU busy and
# amortize the per-grid-step overhead; all are multiples of 128 (lane width).
GPU_BLOCKS = BlockSizes(fwd_q=128, fwd_k=64, dq_q=128, dq_k=64, dkv_q=64, dkv_k=128)
TPU_BLOCKS = BlockSizes(fwd_q=512, fwd_k=512, dq_q=512, dq_k=512, dkv_q=512, dkv_k=512)

KERNELS = ("fwd", "dq", "dkv")  # the three kernels of each family, in the order they run


@dataclasses.dataclass(frozen=True)
class KernelTuning:
    """Per-kernel launch overrides for tuning (internal: `flash_attention_with_style(tuning=...)`).

    `blocks` replaces the per-backend default tiles (an explicit block_q/block_k still applies on top),
    and goes through the same `fit_block` clamping. `*_warps` / `*_stages` set Triton's num_warps and
    num_stages of the forward, dq and dk/dv kernels (GPU family only); None keeps the built-in choice.
    Frozen and hashable: it is part of `Problem`, a custom_vjp nondiff argument.
    """

    blocks: BlockSizes | None = None
    fwd_warps: int | None = None
    fwd_stages: int | None = None
    dq_warps: int | None = None
    dq_stages: int | None = None
    dkv_warps: int | None = None
    dkv_stages: int | None = None

    def __post_init__(self):
        for kernel in KERNELS:
            warps, stages = self.launch(kernel)
            # Triton splits a tile across warps in powers of two; a pipeline needs at least one stage.
            if warps is not None and (warps < 1 or warps & (warps - 1)):
                raise ValueError(f"KernelTuning: {kernel}_warps must be a power of two; got {warps}")
            if stages is not None and stages < 1:
                raise ValueError(f"KernelTuning: {kernel}_stages must be >= 1; got {stages}")

    def launch(self, kernel: str) -> tuple[int | None, int | None]:
        """(num_warps, num_stages) requested for `kernel` ("fwd" | "dq" | "dkv"); None = built-in."""
        return getattr(self, f"{kernel}_warps"), getattr(self, f"{kernel}_stages")

    def sets_launch(self) -> bool:
        return any(x is not None for kernel in KERNELS for x in self.launch(kernel))


GPU_MIN_BLOCK = 16  # tl.dot needs every dimension >= 16, and Triton tiles are powers of two
TPU_MIN_BLOCK = 128  # a key tile is the lane dimension of the score tile


@dataclasses.dataclass(frozen=True)
class Problem:
    """Static description of one attention call (hashable: it is a custom_vjp nondiff argument)."""

    batch: int  # B
    q_len: int  # T
    kv_len: int  # S
    q_heads: int  # N
    kv_heads: int  # K
    head_dim: int  # H as given
    padded_head_dim: int  # H the kernel sees (GPU: next power of two)
    dtype: str
    causal: bool
    has_segments: bool
    has_branches: bool  # segment ids carry branch ids in their low BRANCH_BITS bits (see segment_visible)
    sm_scale: float
    blocks: BlockSizes
    q_len_padded: int  # Tp
    kv_len_padded: int  # Sp
    style: str  # "gpu" | "tpu"
    interpret: bool
    # Overrides as requested (`blocks` above is what the kernels use, already fitted); None = built-in.
    tuning: KernelTuning | None = None

    @property
    def group(self) -> int:  # G = N // K
        return self.q_heads // self.kv_heads

    @property
    def causal_offset(self) -> int:
        """Query t sees key s iff s <= t + causal_offset (right-aligned causal mask)."""
        return self.kv_len - self.q_len

    @property
    def mask_padded_keys(self) -> bool:
        """Whether keys >= S must be masked explicitly.

        With segment ids, padded keys carry id 0 and are masked as padding; with a causal mask no real
        query can see past key S - 1. Only non-causal attention without segment ids needs the check.
        """
        return not self.causal and not self.has_segments and self.kv_len_padded != self.kv_len


def round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def next_power_of_2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def fit_block(requested: int, length: int, minimum: int, style: str) -> int:
    """The block actually used: no larger than the (rounded-up) sequence, no smaller than `minimum`."""
    if style == "gpu":
        requested = next_power_of_2(requested)
        return max(minimum, min(requested, next_power_of_2(length)))
    requested = round_up(requested, minimum)
    return max(minimum, min(requested, round_up(length, minimum)))


# Prompt sharing packs `prompt | chosen | rejected` in one row: branch 0 (the prompt) is seen by every
# token of its segment, a token of branch b > 0 sees branch 0 and b only. The kernels get one id array,
# segment * 2**BRANCH_BITS + branch, so branches ride through the same loads, padding and index maps as
# segment ids.
BRANCH_BITS = 3
MAX_BRANCH = 2**BRANCH_BITS - 1


def segment_visible(p: Problem, q_seg, k_seg):
    """bool, broadcast of q_seg and k_seg: may a query with id q_seg see a key with id k_seg?

    The rule is `kernels.masking` (the same non-zero segment; with branches, also a key on the trunk or on
    the query's own branch), applied to the segment and branch parts of the kernels' ids."""
    if not p.has_branches:
        return masking.segment_visible(q_seg, k_seg)
    same_segment = masking.segment_visible(segment_base(p, q_seg), segment_base(p, k_seg))
    return same_segment & masking.branch_visible(_branch(q_seg), _branch(k_seg))


def _branch(seg):
    return jnp.bitwise_and(seg, jnp.int32(MAX_BRANCH))


def segment_base(p: Problem, seg):
    """The segment part of the kernels' ids (0 = padding), without branch bits."""
    return jnp.right_shift(seg, BRANCH_BITS) if p.has_branches else seg


class Segments(NamedTuple):
    """The kernels' segment inputs: ids padded to the kernel lengths (padding = 0) and, for tile skipping,
    each token's segment extent: the first and last index holding its segment (branch bits ignored)."""

    q: jax.Array  # [B, Tp] int32
    k: jax.Array  # [B, Sp] int32
    q_first: jax.Array  # [B, Tp] int32
    q_last: jax.Array  # [B, Tp]
    k_first: jax.Array  # [B, Sp]
    k_last: jax.Array  # [B, Sp]


def segment_extents(seg: jax.Array) -> tuple[jax.Array, jax.Array]:
    """seg int32 [B, L] -> (first, last) [B, L]: the smallest and largest index holding seg[b, t].

    A token can only attend within its segment, so keys before `first` and queries after `last` are
    never visible to it: the kernels skip whole tiles outside those ranges (packed rows of many short
    documents do a fraction of the causal work). Ids need not be contiguous: a stable sort groups each id
    with its indices in order, so a run's ends are its first and last occurrence."""
    B, L = seg.shape
    order = jnp.argsort(seg, axis=1, stable=True)
    ids = jnp.take_along_axis(seg, order, axis=1)
    idx = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
    starts = jnp.concatenate([jnp.ones((B, 1), bool), ids[:, 1:] != ids[:, :-1]], axis=1)
    ends = jnp.concatenate([ids[:, 1:] != ids[:, :-1], jnp.ones((B, 1), bool)], axis=1)
    run_start = jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)
    run_end = jax.lax.cummin(jnp.where(ends, idx, L - 1), axis=1, reverse=True)
    rows = jnp.arange(B)[:, None]
    first = jnp.zeros((B, L), jnp.int32).at[rows, order].set(jnp.take_along_axis(order, run_start, axis=1))
    last = jnp.zeros((B, L), jnp.int32).at[rows, order].set(jnp.take_along_axis(order, run_end, axis=1))
    return first, last


_FAR = 1 << 30  # "no real token here": beyond any tile index times any block size


def segment_tile_range(p: Problem, seg, first, last, block: int, axis=None):
    """[lo, hi) of the tiles (of `block` rows along the other axis) that the tokens of one tile can reach
    through their segments; (far, 0) when the tile holds padding only. seg/first/last: that tile's [rows]
    ids and extents (or [..., rows] for many tiles at once, reduced over `axis`). Integer arithmetic
    rather than selects: the Triton lowering mistypes selects used as loop bounds."""
    real = (segment_base(p, seg) != 0).astype(jnp.int32)
    lo = jnp.min(first + (1 - real) * _FAR, axis=axis)
    hi = jnp.max((last + 1) * real, axis=axis) - 1  # -1 when no token is real
    return idiv(lo, block), idiv(hi + block, block)


# -- Block ranges. All arguments may be traced int32 scalars (program ids, loop counters). -------------
# A query tile i holds rows [i*bq, (i+1)*bq); a key tile j holds keys [j*bk, (j+1)*bk).


def idiv(x, d: int):
    """Integer division of a non-negative int32 (traced) by a static divisor; int32 even under x64."""
    x = jnp.asarray(x, jnp.int32)
    return jax.lax.div(x, jnp.asarray(d, jnp.int32))


def _cdiv_nonneg(x, d: int):
    return idiv(jnp.maximum(x, 0) + (d - 1), d)


def _floordiv_nonneg(x, d: int):
    return idiv(jnp.maximum(x, 0), d)


def kv_blocks_for_q_block(p: Problem, i, bq: int, bk: int):
    """(full_end, end): key tiles [0, full_end) need no position mask, [full_end, end) do; the rest hold
    only keys that no real row of query tile i may see (hidden by the causal mask, or padding)."""
    real_end = -(-p.kv_len // bk)  # tiles past this one hold padding only
    if not p.causal:
        if p.mask_padded_keys:  # tiles from S // bk on hold some padding keys
            return p.kv_len // bk, real_end
        return real_end, real_end
    off = p.causal_offset
    end = jnp.minimum(_cdiv_nonneg(i * bq + bq + off, bk), real_end)
    full_end = jnp.minimum(_floordiv_nonneg(i * bq + off + 1, bk), end)
    return full_end, end


def q_blocks_for_kv_block(p: Problem, j, bq: int, bk: int):
    """(start, full_start, end): query tiles [start, full_start) need the position mask, [full_start, end)
    do not; tiles before `start` cannot see key tile j and tiles from `end` on hold padding rows only
    (whose output gradient is zero, so they contribute nothing)."""
    end = -(-p.q_len // bq)
    if not p.causal:
        if p.mask_padded_keys:
            # Key tiles from S // bk on hold padding keys and need the mask against every query tile.
            # Integer arithmetic rather than a select: the Triton lowering mistypes selects as loop bounds.
            first_padded = p.kv_len // bk
            if first_padded == 0:
                return 0, end, end
            return 0, jnp.minimum(idiv(j, first_padded), 1) * end, end
        return 0, 0, end
    off = p.causal_offset
    start = jnp.minimum(_floordiv_nonneg(j * bk - off, bq), end)
    full_start = jnp.maximum(jnp.minimum(_cdiv_nonneg(j * bk + bk - 1 - off, bq), end), start)
    return start, full_start, end
