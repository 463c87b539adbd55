"""kernels/masking.py, the one mask every attention uses, against masks written out by hand."""

import jax
import jax.numpy as jnp
import numpy as np

from oyster_jax.kernels import masking


def test_causal_segments_and_branches_by_hand():
    # One row of 6: a prompt (segment 1, branch 0) of 2, chosen (branch 1) of 2, rejected (branch 2) of 1, padding.
    seg = jnp.array([[1, 1, 1, 1, 1, 0]])
    br = jnp.array([[0, 0, 1, 1, 2, 0]])
    want = np.array(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [1, 1, 0, 0, 1, 0],  # the rejected token sees the prompt and itself, not the chosen completion
            [0, 0, 0, 0, 0, 0],  # padding sees nothing
        ],
        bool,
    )
    got = masking.attention_mask(6, 6, causal=True, segment_ids=seg, branch_ids=br)
    np.testing.assert_array_equal(np.asarray(got[0]), want)
    # Non-causal, two documents: block diagonal.
    two = masking.attention_mask(4, 4, causal=False, segment_ids=jnp.array([[1, 1, 2, 2]]))
    np.testing.assert_array_equal(np.asarray(two[0]), np.kron(np.eye(2), np.ones((2, 2))).astype(bool))
    assert masking.attention_mask(3, 3, causal=False) is None


def test_causal_is_right_aligned_for_fewer_queries_than_keys():
    got = masking.attention_mask(2, 4, causal=True)[0]
    np.testing.assert_array_equal(np.asarray(got), np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool))


def test_cache_window():
    # Query at slot 4, row keys from slot 2 (left padding before): slots 2, 3, 4.
    got = masking.cache_visible(4, jnp.arange(6), 2)
    np.testing.assert_array_equal(np.asarray(got), np.array([0, 0, 1, 1, 1, 0], bool))


def test_masked_softmax_zero_weights_and_empty_rows():
    scores = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = jnp.array([[True, False, True], [False, False, False]])
    p = masking.masked_softmax(scores, mask)
    e = np.exp([1.0 - 3.0, 3.0 - 3.0])
    np.testing.assert_allclose(np.asarray(p[0]), [e[0] / e.sum(), 0.0, e[1] / e.sum()], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(p[1]), [0.0, 0.0, 0.0])  # no visible key: zeros, not NaN
    g = jax.grad(lambda s: jnp.sum(masking.masked_softmax(s, mask) * jnp.arange(3.0)))(scores)
    assert np.all(np.isfinite(np.asarray(g)))
    np.testing.assert_array_equal(np.asarray(g)[1], [0.0, 0.0, 0.0])
    assert float(g[0, 1]) == 0.0
    assert masking.MASK_VALUE == float("-inf")
