"""Flash-attention kernels (interpret mode on CPU) against the pure-JAX reference: values and dq/dk/dv.

Both kernel families run here: the Triton family under the generic Pallas interpreter and the Mosaic
family under Pallas' TPU interpreter (which simulates VMEM, DMAs and the sequential grid). A third group
lowers the real, non-interpreted kernels for CUDA and TPU, so that a kernel the Triton or Mosaic lowering
rejects fails here rather than on the first accelerator run.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from oyster_jax.kernels import flash_attention
from oyster_jax.kernels.flash_attention import (
    BlockSizes,
    KernelTuning,
    api,
    attention_reference,
    flash_attention_with_style,
    gpu,
)
from tests.tolerances import KERNEL_BF16, KERNEL_F32


@dataclasses.dataclass(frozen=True)
class Case:
    T: int
    H: int  # head dim
    N: int  # query heads
    K: int  # kv heads
    causal: bool
    # None | "packed" (three segments + padding in one row) | "branched" (prompt | chosen | rejected pairs)
    # | "documents" (many short documents + padding: most tiles are skipped)
    segments: str | None = None
    S: int | None = None  # key length when it differs from T
    dtype: str = "float32"
    B: int = 1
    block_q: int | None = None
    block_k: int | None = None

    def __str__(self):
        parts = [f"T{self.T}", f"S{self.S}" if self.S else "", f"H{self.H}", f"N{self.N}K{self.K}"]
        parts += ["causal" if self.causal else "full", self.segments or "", self.dtype]
        parts += [f"b{self.block_q}x{self.block_k}" if self.block_q else ""]
        return "-".join(p for p in parts if p)


def segment_ids(case: Case) -> np.ndarray | None:
    """[B, T]: row 0 has three segments then padding; with B > 1 row 1 is one segment with padding
    in the middle and at the end (a query whose whole segment is padding must give zeros)."""
    if case.segments is None:
        return None
    T = case.T
    if case.segments == "documents":
        return np.stack([documents_row(T, shift=r) for r in range(case.B)])
    a, b, pad = max(1, T // 3), max(1, T // 4), max(1, T // 8)
    row0 = np.array([1] * a + [2] * b + [7] * (T - a - b - pad) + [0] * pad, np.int32)[:T]
    rows = [row0]
    for r in range(1, case.B):
        row = np.full(T, 3 + r, np.int32)
        row[T // 2 : T // 2 + max(1, T // 10)] = 0
        row[-1] = 0
        rows.append(row)
    return np.stack(rows)


DOCUMENT_LENGTHS = [37, 5, 60, 12, 90, 3, 41, 70, 22, 50]


def documents_row(T: int, shift: int = 0, scale: int = 1) -> np.ndarray:
    """[T]: documents of DOCUMENT_LENGTHS * scale tokens (rotated by `shift`), ids 1, 2, ..., until about
    7/8 of the row, then padding."""
    lengths = [n * scale for n in np.roll(DOCUMENT_LENGTHS, shift)]
    row, doc = [], 1
    while len(row) + lengths[(doc - 1) % len(lengths)] <= T * 7 // 8:
        row += [doc] * lengths[(doc - 1) % len(lengths)]
        doc += 1
    return np.array(row + [0] * (T - len(row)), np.int32)


def branch_ids(case: Case) -> np.ndarray | None:
    """[B, T] for "branched" cases: each segment of `segment_ids(case)` is split into a shared prompt
    (branch 0), a chosen (1) and a rejected (2) completion, as `data.layouts.SharedPrompt` lays out
    pairs; one padding token carries stray branch bits, which must not make it visible."""
    if case.segments != "branched":
        return None
    seg = segment_ids(case)
    out = np.zeros_like(seg)
    for b in range(seg.shape[0]):
        for s_id in np.unique(seg[b][seg[b] != 0]):
            idx = np.flatnonzero(seg[b] == s_id)
            third = max(1, len(idx) // 3)
            out[b, idx[third : 2 * third]] = 1
            out[b, idx[2 * third :]] = 2
        pads = np.flatnonzero(seg[b] == 0)
        if len(pads):
            out[b, pads[0]] = 2
    return out


def inputs(case: Case):
    S = case.S or case.T
    dtype = jnp.dtype(case.dtype)
    kq, kk, kv, kd = jax.random.split(jax.random.PRNGKey(case.T * 131 + case.N * 7 + case.H), 4)
    q = jax.random.normal(kq, (case.B, case.T, case.N, case.H), jnp.float32).astype(dtype)
    k = jax.random.normal(kk, (case.B, S, case.K, case.H), jnp.float32).astype(dtype)
    v = jax.random.normal(kv, (case.B, S, case.K, case.H), jnp.float32).astype(dtype)
    d_out = jax.random.normal(kd, (case.B, case.T, case.N, case.H), jnp.float32).astype(dtype)
    return q, k, v, d_out


def check_against_reference(case: Case, style: str, tuning: KernelTuning | None = None):
    q, k, v, d_out = inputs(case)
    seg = segment_ids(case)
    seg = None if seg is None else jnp.asarray(seg)
    branches = branch_ids(case)
    branches = None if branches is None else jnp.asarray(branches)

    def kernel(q, k, v):
        return flash_attention_with_style(
            q, k, v, style=style, causal=case.causal, segment_ids=seg, branch_ids=branches,
            block_q=case.block_q, block_k=case.block_k, interpret=True, tuning=tuning,
        )  # fmt: skip

    def reference(q, k, v):
        return attention_reference(q, k, v, causal=case.causal, segment_ids=seg, branch_ids=branches)

    @jax.jit
    def values_and_grads(q, k, v, d_out):
        out, vjp = jax.vjp(kernel, q, k, v)
        # The reference sees the same (for bf16: already rounded) inputs, upcast: the exact answer.
        up = [x.astype(jnp.float32) for x in (q, k, v, d_out)]
        ref_out, ref_vjp = jax.vjp(reference, *up[:3])
        return (out, *vjp(d_out)), (ref_out, *ref_vjp(up[3]))

    got, want = values_and_grads(q, k, v, d_out)
    tol = KERNEL_F32 if case.dtype == "float32" else KERNEL_BF16
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        assert g.dtype == q.dtype, (name, g.dtype)
        assert g.shape == w.shape, (name, g.shape, w.shape)
        g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
        assert np.all(np.isfinite(g)), f"{name}: non-finite values"
        # |kernel - reference| <= tol + tol * |reference| elementwise (numpy's allclose with atol = rtol =
        # tol): a bf16 result cannot be closer to the exact one than its own rounding, 2^-9 relative.
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol, err_msg=f"{case} [{style}] {name}")
    if seg is not None:  # padding queries: exact zeros, and no gradient reaches them
        pad = np.asarray(seg) == 0
        assert np.all(np.asarray(got[0], np.float32)[pad] == 0.0)
        assert np.all(np.asarray(got[1], np.float32)[pad] == 0.0)


GPU_CASES = [
    Case(T=1, H=64, N=1, K=1, causal=True),
    Case(T=7, H=64, N=5, K=1, causal=True),  # odd T, GQA ratio 5
    Case(T=7, H=128, N=2, K=2, causal=False, segments="packed", B=2),
    Case(T=128, H=128, N=4, K=4, causal=False),
    Case(T=128, H=64, N=8, K=2, causal=True, segments="packed", dtype="bfloat16"),
    Case(T=200, H=64, N=4, K=2, causal=True, segments="packed", B=2),
    Case(T=200, H=128, N=2, K=1, causal=False),  # padded key tile without segment ids
    Case(T=200, H=64, N=10, K=2, causal=False, segments="packed"),  # GQA ratio 5, non-causal, packed
    Case(T=513, H=64, N=2, K=1, causal=True, segments="packed", block_q=64, block_k=64),
    Case(T=513, H=128, N=1, K=1, causal=True, dtype="bfloat16"),
    Case(T=200, H=64, N=4, K=4, causal=True, block_q=32, block_k=16),  # many tiles, mixed diagonal
    Case(T=7, S=200, H=64, N=2, K=1, causal=True),  # decoding-like: right-aligned causal mask
    Case(T=200, S=7, H=64, N=2, K=2, causal=True),  # T > S: the first rows see no key at all
    Case(T=7, S=130, H=128, N=4, K=1, causal=False, dtype="bfloat16"),
    Case(T=200, H=64, N=4, K=2, causal=True, segments="branched", B=2, block_q=32, block_k=32),
    Case(T=130, H=128, N=5, K=1, causal=True, segments="branched", dtype="bfloat16"),
    Case(T=77, H=64, N=2, K=2, causal=False, segments="branched"),
    Case(T=300, H=64, N=4, K=2, causal=True, segments="documents", B=2, block_q=32, block_k=32),
]

TPU_CASES = [
    Case(T=7, H=64, N=5, K=1, causal=True),
    Case(T=200, H=64, N=4, K=2, causal=True, segments="packed", B=2),
    Case(T=200, H=128, N=2, K=1, causal=False),
    Case(T=300, H=64, N=2, K=1, causal=True, block_q=128, block_k=128),  # several tiles, skipped tiles
    Case(T=7, S=200, H=64, N=2, K=2, causal=True, dtype="bfloat16"),
    Case(T=200, S=7, H=64, N=2, K=1, causal=True),
    Case(T=300, H=64, N=4, K=2, causal=True, segments="branched", B=2),
    Case(T=1100, H=64, N=2, K=1, causal=True, segments="documents", B=2, block_q=128, block_k=128),
]


@pytest.mark.parametrize("case", GPU_CASES, ids=str)
def test_triton_kernels_match_reference(case):
    check_against_reference(case, "gpu")


@pytest.mark.parametrize("min_programs, split", [(1, 1), (8, 2)])
def test_triton_dkv_head_split(monkeypatch, min_programs, split):
    """dk/dv with the G query heads of a group in one program (split 1) or shared by two programs whose
    float32 partials are summed (the small cases above use split G)."""
    case = Case(T=200, H=64, N=8, K=2, causal=True, segments="packed")  # G = 4; 2 key tiles x 2 heads
    monkeypatch.setattr(gpu, "MIN_DKV_PROGRAMS", min_programs)
    q, k, _, _ = inputs(case)
    p = api._problem(
        q, k, segment_ids(case), causal=True, sm_scale=None, block_q=None, block_k=None, interpret=True, style="gpu"
    )
    assert gpu.dkv_head_split(p, p.kv_len_padded // p.blocks.dkv_k) == split
    check_against_reference(case, "gpu")


@pytest.mark.parametrize("case", TPU_CASES, ids=str)
def test_mosaic_kernels_match_reference(case):
    check_against_reference(case, "tpu")


def test_public_entry_point_on_cpu_interprets_and_defaults_scale():
    case = Case(T=9, H=64, N=2, K=1, causal=True)
    q, k, v, _ = inputs(case)
    out = flash_attention(q, k, v)  # interpret is forced on CPU, sm_scale = 1/sqrt(64)
    want = attention_reference(q, k, v, sm_scale=0.125)
    assert np.max(np.abs(np.asarray(out - want))) <= KERNEL_F32
    other = flash_attention(q, k, v, sm_scale=0.3, causal=False)
    want = attention_reference(q, k, v, sm_scale=0.3, causal=False)
    assert np.max(np.abs(np.asarray(other - want))) <= KERNEL_F32


def test_reference_matches_hand_computed_softmax():
    """The reference itself, against numpy on a 3-token example with two segments and padding."""
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 4, 1, 2)).astype(np.float32) for _ in range(3))
    seg = np.array([[1, 1, 2, 0]], np.int32)
    out = np.asarray(attention_reference(q, k, v, causal=True, segment_ids=seg, sm_scale=0.5))
    visible = {0: [0], 1: [0, 1], 2: [2], 3: []}
    for t, keys in visible.items():
        if not keys:
            np.testing.assert_array_equal(out[0, t, 0], 0.0)
            continue
        logits = np.array([q[0, t, 0] @ k[0, s, 0] * 0.5 for s in keys])
        w = np.exp(logits - logits.max())
        w /= w.sum()
        np.testing.assert_allclose(out[0, t, 0], w @ v[0, keys, 0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(q=(1, 8, 3, 64), k=(1, 8, 2, 64)), "multiple of k/v heads"),
        (dict(q=(1, 8, 2, 64), k=(1, 8, 2, 32)), "head_dim"),
        (dict(q=(1, 8, 2, 64), k=(1, 9, 2, 64), seg=(1, 8)), "T == S"),
        (dict(q=(1, 8, 2, 64), k=(1, 8, 2, 64), seg=(2, 8)), "segment_ids must be"),
        (dict(q=(8, 2, 64), k=(1, 8, 2, 64)), "q must be"),
    ],
)
def test_bad_input_names_the_tensor(bad, message):
    q = jnp.zeros(bad["q"])
    k = jnp.zeros(bad["k"])
    seg = jnp.ones(bad["seg"], jnp.int32) if "seg" in bad else None
    with pytest.raises(ValueError, match=message):
        flash_attention(q, k, k, segment_ids=seg)


@pytest.mark.parametrize("style, platform", [("gpu", "cuda"), ("tpu", "tpu")])
@pytest.mark.parametrize(
    "causal, with_segments, with_branches", [(True, True, False), (False, False, False), (True, True, True)]
)
def test_real_kernels_lower_for_accelerators(style, platform, causal, with_segments, with_branches):
    """Lower forward + backward of the non-interpreted kernels (Triton IR / Mosaic MLIR) on this host."""
    T, N, K, H = 1100, 8, 2, 128  # padded head-major length 1152: not a power of two

    def loss(q, k, v, seg):
        out = flash_attention_with_style(
            q, k, v, style=style, causal=causal, segment_ids=seg if with_segments else None,
            branch_ids=seg % 3 if with_branches else None,
        )  # fmt: skip
        return jnp.sum(out.astype(jnp.float32))

    bf16 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.bfloat16)
    exported = export.export(
        jax.jit(jax.grad(loss, argnums=(0, 1, 2))),
        platforms=[platform],
        disabled_checks=[export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")],
    )(bf16(2, T, N, H), bf16(2, T, K, H), bf16(2, T, K, H), jax.ShapeDtypeStruct((2, T), jnp.int32))
    text = exported.mlir_module()
    for kernel in ("oyster_flash_fwd", "oyster_flash_dq", "oyster_flash_dkv"):
        assert kernel in text, f"{kernel} missing from the {platform} lowering"


# -- The tuning hook (internal: the benchmark's --tune) ------------------------------------------------


def _gpu_problem(T: int, H: int, tuning: KernelTuning | None, *, interpret: bool = False, style: str = "gpu"):
    q = jax.ShapeDtypeStruct((1, T, 4, H), jnp.bfloat16)
    k = jax.ShapeDtypeStruct((1, T, 2, H), jnp.bfloat16)
    return api._problem(
        q, k, None, causal=True, sm_scale=None, block_q=None, block_k=None, interpret=interpret, style=style,
        tuning=tuning,
    )  # fmt: skip


def _launch(p) -> dict:
    params = {kernel: gpu._compiler_params(p, kernel) for kernel in ("fwd", "dq", "dkv")}
    return {kernel: (c.num_warps, c.num_stages) for kernel, c in params.items()}


def test_tuning_overrides_compiler_params_and_blocks():
    default = _gpu_problem(1024, 128, None)
    assert _launch(default) == {"fwd": (8, 3), "dq": (8, 2), "dkv": (8, 2)}  # the built-in choice, H > 64
    tuning = KernelTuning(
        blocks=BlockSizes(fwd_q=100, fwd_k=64, dq_q=64, dq_k=4096, dkv_q=32, dkv_k=128),
        fwd_warps=4, fwd_stages=4, dkv_stages=3,
    )  # fmt: skip
    p = _gpu_problem(1024, 128, tuning)
    hash(p)  # a custom_vjp nondiff argument must stay hashable
    assert p != default and p.tuning == tuning
    # None entries keep the built-in choice; the rest override it per kernel.
    assert _launch(p) == {"fwd": (4, 4), "dq": (8, 2), "dkv": (8, 3)}
    # Tiles go through fit_block as before: 100 -> next power of two, 4096 -> the (padded) sequence.
    assert p.blocks == BlockSizes(fwd_q=128, fwd_k=64, dq_q=64, dq_k=1024, dkv_q=32, dkv_k=128)
    assert gpu._compiler_params(_gpu_problem(1024, 128, tuning, interpret=True), "fwd") is None
    # An explicit block_q / block_k still applies to all three kernels, on top of the tuned tiles.
    q, k = jax.ShapeDtypeStruct((1, 1024, 4, 128), jnp.bfloat16), jax.ShapeDtypeStruct((1, 1024, 2, 128), jnp.bfloat16)
    both = api._problem(
        q, k, None, causal=True, sm_scale=None, block_q=32, block_k=None, interpret=False, style="gpu", tuning=tuning
    )
    assert both.blocks == BlockSizes(fwd_q=32, fwd_k=64, dq_q=32, dq_k=1024, dkv_q=32, dkv_k=128)


def test_tuning_rejects_launch_settings_it_cannot_apply():
    with pytest.raises(ValueError, match="power of two"):
        KernelTuning(dq_warps=3)
    with pytest.raises(ValueError, match=">= 1"):
        KernelTuning(fwd_stages=0)
    with pytest.raises(ValueError, match="GPU family only"):
        _gpu_problem(1024, 128, KernelTuning(fwd_warps=4), style="tpu")
    tpu = _gpu_problem(1024, 128, KernelTuning(blocks=BlockSizes.uniform(256, 1024)), style="tpu")
    assert tpu.blocks == BlockSizes.uniform(256, 1024)


def test_tuning_reaches_the_triton_lowering():
    """The non-interpreted lowering carries the tuned num_warps / num_stages and grid of each kernel."""
    tuning = KernelTuning(
        blocks=BlockSizes(fwd_q=64, fwd_k=64, dq_q=32, dq_k=64, dkv_q=64, dkv_k=32),
        fwd_warps=4, fwd_stages=5, dq_warps=2, dkv_stages=4,
    )  # fmt: skip
    T, N, K, H = 256, 8, 2, 128

    def loss(q, k, v):
        return jnp.sum(flash_attention_with_style(q, k, v, style="gpu", tuning=tuning).astype(jnp.float32))

    bf16 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.bfloat16)
    exported = export.export(
        jax.jit(jax.grad(loss, argnums=(0, 1, 2))),
        platforms=["cuda"],
        disabled_checks=[export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")],
    )(bf16(1, T, N, H), bf16(1, T, K, H), bf16(1, T, K, H))
    text = re.sub(r'ir = "(\\.|[^"\\])*"', "ir = ...", exported.mlir_module())  # drop the serialized kernels
    found = {
        name: (int(grid_x), int(warps), int(stages))
        for grid_x, name, stages, warps in re.findall(
            r'grid_x = (\d+) : i32.*?name = "(oyster_flash_\w+)", num_stages = (\d+) : i32, num_warps = (\d+) : i32',
            text,
        )
    }
    # grid_x: query tiles (forward, dq) or key tiles (dk/dv) of T = 256.
    assert found == {
        "oyster_flash_fwd": (T // 64, 4, 5),
        "oyster_flash_dq": (T // 32, 2, 2),
        "oyster_flash_dkv": (T // 32, 8, 4),
    }, found


def test_tuned_blocks_match_reference():
    """Different tiles per kernel (so the padded length is set by the largest) and launch settings, which
    the interpreter ignores: values and gradients still match the reference."""
    tuning = KernelTuning(
        blocks=BlockSizes(fwd_q=32, fwd_k=16, dq_q=16, dq_k=64, dkv_q=64, dkv_k=32), fwd_warps=4, dkv_stages=3
    )
    check_against_reference(Case(T=200, H=64, N=4, K=2, causal=True, segments="packed"), "gpu", tuning)


@pytest.mark.parametrize(
    "branches, message",
    [
        (np.ones((1, 7), np.int32), r"branch_ids must be \[B, T\]"),
        (np.full((1, 8), 8, np.int32), r"branch_ids must lie in \[0, 7\]; got \[8, 8\]"),
        (np.full((1, 8), -1, np.int32), r"must lie in \[0, 7\]"),
        (np.zeros((1, 8), np.float32), "branch_ids must be integer"),
    ],
)
def test_bad_branch_ids_are_named(branches, message):
    q = jnp.zeros((1, 8, 2, 64))
    with pytest.raises(ValueError, match=message):
        flash_attention(q, q, q, branch_ids=jnp.asarray(branches))


# -- Tile skipping by segment (GPU family) --------------------------------------------------------------


def test_segment_extents_are_first_and_last_occurrence():
    from oyster_jax.kernels.flash_attention.common import segment_extents

    rng = np.random.default_rng(0)
    seg = rng.integers(0, 4, (3, 41)).astype(np.int32)  # ids repeat after other ids and padding
    seg[2] = 5  # one segment only
    first, last = (np.asarray(x) for x in segment_extents(jnp.asarray(seg)))
    for b in range(3):
        for t in range(41):
            where = np.flatnonzero(seg[b] == seg[b, t])
            assert (first[b, t], last[b, t]) == (where[0], where[-1]), (b, t)


def _visited_and_needed(seg: np.ndarray, causal: bool, bq: int, bk: int, branches=None, style: str = "gpu"):
    """(forward/dq tile pairs the kernels visit, tile pairs holding at least one visible (query, key) pair,
    dk/dv tile pairs visited) for one row of segment ids, from the range functions the kernels call."""
    from oyster_jax.kernels.flash_attention import tpu
    from oyster_jax.kernels.masking import attention_mask

    T = seg.shape[0]
    x = jax.ShapeDtypeStruct((1, T, 1, 64), jnp.float32)
    seg_ids = jnp.asarray(seg[None])
    if branches is not None:
        seg_ids = api._with_branches(seg_ids, jnp.asarray(branches[None]), (1, T))
    p = api._problem(
        x, x, seg_ids, causal=causal, sm_scale=None, block_q=bq, block_k=bk, interpret=True, style=style,
        has_branches=branches is not None,
    )  # fmt: skip
    segs = api._segments(p, seg_ids)
    nq, nk = p.q_len_padded // bq, p.kv_len_padded // bk
    if style == "gpu":
        rows = lambda a, i, n: np.asarray(a[0, i * n : (i + 1) * n])
        key_range = lambda i: gpu.key_tiles(
            p, i, bq, bk, rows(segs.q, i, bq), rows(segs.q_first, i, bq), rows(segs.q_last, i, bq)
        )
        query_range = lambda j: gpu.query_tiles(
            p, j, bq, bk, rows(segs.k, j, bk), rows(segs.k_first, j, bk), rows(segs.k_last, j, bk)
        )
    else:
        q_bounds = [np.asarray(a) for a in tpu._tile_bounds(p, segs, 1, p.q_len_padded, bq, bk, "q")]
        k_bounds = [np.asarray(a) for a in tpu._tile_bounds(p, segs, 1, p.kv_len_padded, bk, bq, "k")]
        key_range = lambda i: tpu._key_range(p, 0, i, bq, bk, nq, *q_bounds)
        query_range = lambda j: tpu._query_range(p, 0, j, bq, bk, nk, *k_bounds)
    fwd, dkv = set(), set()
    for i in range(nq):
        start, _, end = key_range(i)
        fwd |= {(i, j) for j in range(int(start), int(end))}
    for j in range(nk):
        start, _, end = query_range(j)
        dkv |= {(i, j) for i in range(int(start), int(end))}
    branch_ids = None if branches is None else jnp.asarray(branches[None])
    mask = np.asarray(attention_mask(T, T, causal=causal, segment_ids=jnp.asarray(seg[None]), branch_ids=branch_ids)[0])
    needed = {(t // bq, s // bk) for t, s in zip(*np.nonzero(mask))}
    return fwd, needed, dkv


@pytest.mark.parametrize("style, bq, bk, scale", [("gpu", 32, 16, 1), ("tpu", 128, 256, 8)])
@pytest.mark.parametrize("causal", [True, False])
def test_kernels_visit_exactly_the_tiles_with_visible_pairs(style, bq, bk, scale, causal):
    # A packed row of documents of different lengths, then padding: with contiguous segments the segment
    # extents leave exactly the tiles that hold a visible pair (the backward's too).
    seg = documents_row(470 * scale, scale=scale)
    fwd, needed, dkv = _visited_and_needed(seg, causal, bq=bq, bk=bk, style=style)
    assert fwd == needed and dkv == needed
    one_document, _, _ = _visited_and_needed(np.ones_like(seg), causal, bq=bq, bk=bk, style=style)
    print(f"[{style}] {seg.max()} documents + padding, T={len(seg)}, tiles {bq}x{bk}, causal={causal}: {len(fwd)}")
    print(f"  tile pairs visited, against {len(one_document)} for one document of the same length")
    assert len(fwd) < len(one_document) / 2


@pytest.mark.parametrize("style, bq, bk", [("gpu", 16, 32), ("tpu", 128, 128)])
def test_tile_ranges_cover_every_visible_pair_for_any_ids(style, bq, bk):
    """Non-contiguous ids (a segment resumed after padding or another id) and shared-prompt branches: the
    ranges may be loose, never short."""
    rng = np.random.default_rng(1)
    for trial in range(20):
        T = 150 if style == "gpu" else 600
        seg = np.repeat(rng.integers(0, 4, T // 10), 10).astype(np.int32)  # runs of 10, ids resumed later
        branches = rng.integers(0, 3, T).astype(np.int32) if trial % 2 else None
        fwd, needed, dkv = _visited_and_needed(seg, bool(trial % 3), bq, bk, branches=branches, style=style)
        assert needed <= fwd and needed <= dkv, trial
