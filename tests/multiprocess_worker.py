"""One process of the multi-host test (tests/test_multiprocess.py); not collected by pytest.

    python tests/multiprocess_worker.py --out OUT.json [--coordinator_address HOST:PORT --num_processes N
                                         --process_id I]

Runs a few sharded SFT steps of the tiny model on an 8-device mesh made of every process's devices and
writes {losses, ids_read, process_index, ...} to OUT.json. The examples are synthetic and numbered: a
process reads only the examples of its data shard (`distributed.data_shard`), so the test can check
that the shards are disjoint and together are exactly what a single process reads.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

NUM_EXAMPLES = 64
SEQ_LEN = 32
GLOBAL_BATCH = 8


def synthetic_example(i: int, vocab: int):
    """Example i: deterministic tokens; loss on the second half (like an assistant reply)."""
    import numpy as np

    rng = np.random.default_rng(1000 + i)
    tokens = rng.integers(1, vocab, size=SEQ_LEN, dtype=np.int32)
    weights = np.zeros(SEQ_LEN, np.float32)
    weights[SEQ_LEN // 2 :] = 1.0
    return tokens, weights


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--coordinator_address")
    parser.add_argument("--num_processes", type=int)
    parser.add_argument("--process_id", type=int)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    import jax

    from oyster_jax import distributed

    spec = distributed.initialize(
        args.coordinator_address, args.num_processes, args.process_id, initialization_timeout=60
    )
    import jax.numpy as jnp
    import numpy as np
    import optax

    from oyster_jax import models, sharding

    cfg = models.model_config_from_file(REPO / "configs" / "models" / "tiny.py")
    mesh = sharding.make_mesh({"data": 2, "fsdp": -1})  # batch over data x fsdp, params FSDP over fsdp
    rules = "fsdp_tp"
    p_shard = sharding.param_shardings(cfg, mesh, rules)
    with sharding.use_rules(mesh, rules):
        params = jax.jit(lambda k: models.init_params(cfg, k), out_shardings=p_shard)(jax.random.key(0))
    optimizer = optax.adamw(1e-3)
    opt_state = jax.jit(optimizer.init)(params)

    def loss_fn(params, tokens, weights):
        logits = models.forward(cfg, params, tokens)  # [B, T, V]
        logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
        picked = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
        w = weights[:, 1:]
        return -jnp.sum(picked * w) / jnp.sum(w)

    @jax.jit
    def train_step(params, opt_state, tokens, weights):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens, weights)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    shard_index, shard_count = distributed.data_shard(mesh)
    local_batch = distributed.local_batch_size(GLOBAL_BATCH, mesh)
    my_ids = list(range(NUM_EXAMPLES))[shard_index::shard_count]
    ids_read, losses = [], []
    with sharding.use_rules(mesh, rules):
        for step in range(args.steps):
            ids = my_ids[step * local_batch : (step + 1) * local_batch]
            rows = [synthetic_example(i, cfg.vocab_size) for i in ids]
            batch = distributed.global_batch(
                {"tokens": np.stack([r[0] for r in rows]), "weights": np.stack([r[1] for r in rows])}, mesh
            )
            params, opt_state, loss = train_step(params, opt_state, batch["tokens"], batch["weights"])
            ids_read += ids
            losses.append(float(loss))
    distributed.barrier("worker_done")
    result = {
        "kind": spec.kind,
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "local_devices": jax.local_device_count(),
        "global_devices": jax.device_count(),
        "shard": [shard_index, shard_count],
        "ids_read": ids_read,
        "losses": losses,
        "is_main_process": distributed.is_main_process(),
    }
    pathlib.Path(args.out).write_text(json.dumps(result))
    print(json.dumps(result), flush=True)
    os._exit(0)  # skip the distributed shutdown handshake: the test already has what it needs


if __name__ == "__main__":
    main()
