"""The jitted train step: SFT and preference losses, gradient accumulation, AdamW update.

Batches (numpy on the host, sharded on their leading axis) are laid out by `oyster_jax.data.layouts`:

    SFT           tokens, loss_weights, segment_ids, positions                 [B, T]
    TwoRows       tokens, completion_mask, segment_ids, positions              [P, 2, T]  (pair, chosen|rejected)
    SharedPrompt  one row per pair, prompt | chosen | rejected                 [P, L]     (with branch_ids)
                  ref_logps (precomputed reference, optional)                  [P, 2]

The step takes the stage's hyper-parameters as a `train.stage.Hyper` (`hp.loss_name` picks the loss).

Weights and masks are aligned with `tokens`: weight[t] says whether token t is trained on, so the
target of position t is token t+1 with weight[t+1] (and only inside the same segment).
With LoRA (`cfg.lora`), `state["params"]` holds only the adapters: the step differentiates with respect to them,
the frozen base comes as the third argument (never updated, no optimizer state), and for DPO / IPO the same
base is the reference: the forward pass with the adapters off (one more forward of the base per step, no copy).

The leading axis is split into `microbatches` slices that `lax.scan` runs one after the other; every
normaliser (total loss weight, total chosen tokens) is computed on the whole batch first, so the summed
gradient equals that of the whole batch at once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from oyster_jax import models
from oyster_jax.models import lora as lora_lib
from oyster_jax.train import guard, losses
from oyster_jax.train import stage as stage_lib
from oyster_jax.train.head_logprobs import head_logprobs

PREF_LOSSES = stage_lib.PREF_LOSSES
# Losses whose log-probs are length-normalised (TRL: ORPO, SimPO and IPO average over completion tokens).
_MEAN_LOGPS = ("orpo", "simpo", "ipo")


def shifted_targets(tokens, weights, segment_ids):
    """[..., T] -> (targets, target_weights) [..., T]: position t predicts token t+1 of the same segment."""
    targets = jnp.concatenate([tokens[..., 1:], jnp.zeros_like(tokens[..., :1])], axis=-1)
    same = (segment_ids[..., 1:] == segment_ids[..., :-1]) & (segment_ids[..., 1:] != 0)
    tw = weights[..., 1:].astype(jnp.float32) * same.astype(jnp.float32)
    tw = jnp.concatenate([tw, jnp.zeros_like(tw[..., :1])], axis=-1)
    return targets, tw


def target_logprobs(cfg: models.ModelConfig, params, h: jax.Array, targets: jax.Array, chunk_tokens: int = 0):
    """Final hidden states h [B, T, D], targets [B, T] -> log p(target) float32 [B, T].

    With `chunk_tokens` = C > 0 the [B, T, V] logits are never materialised at once: the sequence is cut
    into T/C slabs of [B, C] positions (every row, so a batch sharded over devices stays sharded), each
    slab's logits are recomputed in the backward pass. This is what 150k-token vocabularies need.
    """
    B, T, D = h.shape
    if not chunk_tokens or chunk_tokens >= T:
        return head_logprobs(cfg, params, h, targets)
    if T % chunk_tokens:  # pad to whole slabs; the padded positions' log-probs are dropped below
        pad = chunk_tokens - T % chunk_tokens
        h = jnp.pad(h, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
        return target_logprobs(cfg, params, h, targets, chunk_tokens)[:, :T]
    n = T // chunk_tokens

    @jax.checkpoint
    def one_slab(args):
        hc, tc = args  # [B, C, D], [B, C]
        return head_logprobs(cfg, params, hc, tc)

    h_slabs = jnp.moveaxis(h.reshape(B, n, chunk_tokens, D), 1, 0)  # [n, B, C, D]
    t_slabs = jnp.moveaxis(targets.reshape(B, n, chunk_tokens), 1, 0)
    out = jax.lax.map(one_slab, (h_slabs, t_slabs))  # [n, B, C]
    return jnp.moveaxis(out, 0, 1).reshape(B, T)


def _forward_logprobs(cfg, params, tokens, weights, segment_ids, positions, chunk_tokens, dropout_rng=None):
    """[R, T] rows -> (log p(target) [R, T], target weights [R, T])."""
    targets, tw = shifted_targets(tokens, weights, segment_ids)
    h = models.hidden_states(cfg, params, tokens, positions, segment_ids, dropout_rng=dropout_rng)
    return target_logprobs(cfg, params, h, targets, chunk_tokens), tw


def sequence_logprobs(cfg, params, tokens, mask, segment_ids, positions, chunk_tokens: int = 0):
    """Rows [R, T] -> (summed completion log-prob [R], completion target count [R])."""
    logp, tw = _forward_logprobs(cfg, params, tokens, mask, segment_ids, positions, chunk_tokens)
    return jnp.sum(logp * tw, axis=-1), jnp.sum(tw, axis=-1)


# ------------------------------------------------------------------------------------------------
# Per-microbatch losses. Each returns (loss, metrics) such that the mean over microbatches is the
# loss of the whole batch.
# ------------------------------------------------------------------------------------------------


def sft_microbatch_loss(cfg, hp: stage_lib.Hyper, params, mb, totals, num_micro, dropout_rng=None):
    logp, tw = _forward_logprobs(
        cfg, params, mb["tokens"], mb["loss_weights"], mb["segment_ids"], mb["positions"], hp.logits_chunk, dropout_rng
    )
    scale = num_micro / totals["weight"]
    loss = -jnp.sum(logp * tw) * scale
    return loss, {"loss": loss, "loss_tokens": jnp.sum(tw) * num_micro}


def _shared_pair_logprobs(cfg, params, rows: dict, chunk_tokens: int, with_prompt: bool, dropout_rng=None):
    """`pair_logprobs` of shared-prompt rows [M, L] (`layouts.SharedPrompt`): one pass per pair."""
    tokens = rows["tokens"]
    targets = jnp.concatenate([tokens[:, 1:], jnp.zeros_like(tokens[:, :1])], axis=-1)
    h = models.hidden_states(
        cfg, params, tokens, rows["positions"], rows["segment_ids"], rows["branch_ids"], dropout_rng=dropout_rng
    )
    logp = target_logprobs(cfg, params, h, targets, chunk_tokens)  # [M, L]
    # The rejected completion's first token, predicted from the prompt's last position.
    h_fork = jnp.take_along_axis(h, rows["fork_index"][:, None, None], axis=1)[:, 0]  # [M, D]
    fork_logp = head_logprobs(cfg, params, h_fork, rows["fork_target"])  # [M]

    def both(chosen_w, rejected_w, fork_w):
        sums = jnp.stack([jnp.sum(logp * chosen_w, -1), jnp.sum(logp * rejected_w, -1) + fork_logp * fork_w], -1)
        counts = jnp.stack([jnp.sum(chosen_w, -1), jnp.sum(rejected_w, -1) + fork_w], -1)
        return sums, counts

    out = both(rows["chosen_weights"], rows["rejected_weights"], rows["fork_weight"])
    if with_prompt:
        out += both(rows["chosen_all_weights"], rows["rejected_all_weights"], rows["fork_all_weight"])
    return out


def pair_logprobs(cfg, params, pairs: dict, chunk_tokens: int = 0, with_prompt: bool = False, dropout_rng=None):
    """Pairs [M, 2, T] -> (summed completion log-prob, completion target count), each [M, (chosen, rejected)].

    Chosen and rejected rows run through one forward pass ([2M, T]). With `with_prompt`, also the sum and
    count over every real target token (prompt + completion) of each row. Shared-prompt rows [M, L] (a batch
    with `branch_ids`, `layouts.SharedPrompt`) give the same values from one row per pair.
    """
    if "branch_ids" in pairs:
        return _shared_pair_logprobs(cfg, params, pairs, chunk_tokens, with_prompt, dropout_rng)
    tokens, mask, seg = (
        pairs[k].reshape((-1,) + pairs[k].shape[2:]) for k in ("tokens", "completion_mask", "segment_ids")
    )
    positions = pairs["positions"].reshape(tokens.shape)
    logp, tw = _forward_logprobs(cfg, params, tokens, mask, seg, positions, chunk_tokens, dropout_rng)
    out = (jnp.sum(logp * tw, axis=-1).reshape(-1, 2), jnp.sum(tw, axis=-1).reshape(-1, 2))
    if with_prompt:
        _, tw_all = shifted_targets(tokens, jnp.ones_like(mask), seg)
        out += (jnp.sum(logp * tw_all, axis=-1).reshape(-1, 2), jnp.sum(tw_all, axis=-1).reshape(-1, 2))
    return out


def pref_microbatch_loss(cfg, hp: stage_lib.Hyper, params, mb, totals, num_micro, ref_params=None, dropout_rng=None):
    """`ref_params` are the reference model's: a frozen copy of the start, or with LoRA the base alone (the
    reference is then the same network with the adapters off, `lora.without_adapters(cfg)`)."""
    loss_name = hp.loss_name
    nll_on_prompt = hp.orpo_nll_on_prompt
    sums, counts, *all_tokens = pair_logprobs(
        cfg, params, mb, hp.logits_chunk, with_prompt=nll_on_prompt, dropout_rng=dropout_rng
    )
    safe_counts = jnp.maximum(counts, 1.0)
    policy = sums / safe_counts if loss_name in _MEAN_LOGPS else sums
    # An empty pair (batch padding) has no completion tokens: it must not enter the means over pairs.
    real = jnp.all(counts > 0, axis=-1).astype(jnp.float32)  # [P]
    if loss_name == "orpo":
        # The NLL is the token-mean over the chosen completions of the whole batch; with `nll_on_prompt`,
        # over chosen prompt + completion tokens, as TRL's ORPOTrainer computes it.
        nll_sums = all_tokens[0] if nll_on_prompt else sums
        chosen_nll = -jnp.sum(nll_sums[:, 0]) * num_micro / totals["chosen_tokens"]
        loss, metrics = losses.orpo_loss(policy[:, 0], policy[:, 1], chosen_nll, lam=hp.orpo_lambda, weights=real)
    elif loss_name == "simpo":
        loss, metrics = losses.simpo_loss(policy[:, 0], policy[:, 1], beta=hp.beta, gamma=hp.simpo_gamma, weights=real)
    else:
        if "ref_logps" in mb:
            ref = mb["ref_logps"]
        else:
            ref_cfg = lora_lib.without_adapters(cfg)
            ref_sums, _ = pair_logprobs(ref_cfg, jax.lax.stop_gradient(ref_params), mb, hp.logits_chunk)
            ref = ref_sums / safe_counts if loss_name in _MEAN_LOGPS else ref_sums
        ref = jax.lax.stop_gradient(ref)
        if loss_name == "dpo":
            loss, metrics = losses.dpo_loss(
                policy[:, 0], policy[:, 1], ref[:, 0], ref[:, 1], beta=hp.beta,
                label_smoothing=hp.label_smoothing, weights=real,
            )  # fmt: skip
        else:
            loss, metrics = losses.ipo_loss(
                policy[:, 0], policy[:, 1], ref[:, 0], ref[:, 1], beta=hp.beta, weights=real
            )
    metrics = dict(metrics, loss_tokens=jnp.sum(counts) * num_micro)
    return loss, metrics


# ------------------------------------------------------------------------------------------------
# The step.
# ------------------------------------------------------------------------------------------------


def _batch_totals(hp: stage_lib.Hyper, batch) -> dict:
    nll_on_prompt = hp.orpo_nll_on_prompt
    if not hp.is_pref:
        _, tw = shifted_targets(batch["tokens"], batch["loss_weights"], batch["segment_ids"])
        return {"weight": jnp.maximum(jnp.sum(tw), 1.0)}
    if "branch_ids" in batch:  # shared-prompt rows: the chosen target weights are given
        return {
            "chosen_tokens": jnp.maximum(
                jnp.sum(batch["chosen_all_weights" if nll_on_prompt else "chosen_weights"]), 1.0
            )
        }
    weights = jnp.ones_like(batch["completion_mask"][:, 0]) if nll_on_prompt else batch["completion_mask"][:, 0]
    _, tw = shifted_targets(batch["tokens"][:, 0], weights, batch["segment_ids"][:, 0])
    return {"chosen_tokens": jnp.maximum(jnp.sum(tw), 1.0)}


def _split_micro(batch, num_micro: int):
    """Leading axis A·M -> [A, M, ...]; microbatch a takes rows a, a+A, a+2A, ... so each device's shard
    of the leading axis stays on that device."""

    def split(x):
        m = x.shape[0] // num_micro
        return jnp.moveaxis(x.reshape((m, num_micro) + x.shape[1:]), 1, 0)

    return jax.tree.map(split, batch)


def make_train_step(cfg: models.ModelConfig, hp: stage_lib.Hyper, optimizer: optax.GradientTransformation):
    """-> step(state, batch, frozen) -> (state, metrics) for the loss `hp.loss_name`.

    `frozen`: None, or the frozen copy of the start parameters (the DPO / IPO reference); with LoRA the base
    parameters, always given (`state["params"]` are the adapters)."""
    num_micro = int(hp.microbatches)
    use_lora = cfg.lora is not None
    use_dropout = use_lora and cfg.lora.dropout > 0

    def microbatch_loss(trainable, mb, totals, frozen, rng):
        params = lora_lib.merge(frozen, trainable) if use_lora else trainable
        if not hp.is_pref:
            return sft_microbatch_loss(cfg, hp, params, mb, totals, num_micro, rng)
        return pref_microbatch_loss(cfg, hp, params, mb, totals, num_micro, frozen, rng)

    grad_fn = jax.value_and_grad(microbatch_loss, has_aux=True)

    def step(state, batch, frozen=None):
        params = state["params"]
        totals = _batch_totals(hp, batch)
        rng = None
        if use_dropout:  # a new dropout mask every step (and microbatch), reproducible on resume
            rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
        if num_micro == 1:
            (_, metrics), grads = grad_fn(params, batch, totals, frozen, rng)
        else:
            micro = _split_micro(batch, num_micro)

            def body(acc, xs):
                mb, i = xs
                mb_rng = None if rng is None else jax.random.fold_in(rng, i)
                (_, m), g = grad_fn(params, mb, totals, frozen, mb_rng)
                return jax.tree.map(jnp.add, acc, (g, m)), None

            zeros_g = jax.tree.map(jnp.zeros_like, params)
            m_shape = jax.eval_shape(lambda: grad_fn(params, jax.tree.map(lambda x: x[0], micro), totals, frozen, rng))
            zeros_m = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), m_shape[0][1])
            steps = jnp.arange(num_micro, dtype=jnp.int32)
            (grads, metrics), _ = jax.lax.scan(body, (zeros_g, zeros_m), (micro, steps))
            grads = jax.tree.map(lambda g: g / num_micro, grads)
            metrics = jax.tree.map(lambda m: m / num_micro, metrics)
        grad_norm = optax.global_norm(grads)
        updates, opt_state = optimizer.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        new_state = {"params": new_params, "opt_state": opt_state, "step": state["step"] + 1, "rng": state["rng"]}
        metrics = dict(metrics, grad_norm=grad_norm, param_norm=optax.global_norm(new_params))
        metrics.update(guard.finite_flags(new_state))  # a non-finite update is never checkpointed
        return new_state, metrics

    return step


def init_state(params, optimizer: optax.GradientTransformation, rng) -> dict:
    return {
        "params": params,
        "opt_state": optimizer.init(params),
        "step": jnp.zeros((), jnp.int32),
        "rng": jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng,
    }
