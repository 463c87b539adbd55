"""One process of the multi-host test (tests/test_multiprocess.py); not collected by pytest.

    JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=I \
        python tests/multiprocess_worker.py --out OUT.json --workdir W [--virtual_shards 2] -- --config.key=value ...

Runs the real entry point (`oyster_jax.main.main`, the trainer and its Orbax checkpoints) after
`oyster_jax.distributed.initialize()` found the cluster in the environment, and writes to OUT.json what
the test compares: the final loss, this process's local batches (as hashes) and the examples it read.

`--virtual_shards N` (single process only) builds the global batch the way N processes would: from N
data shards whose local batches are stacked in process order, which is exactly the global batch that
`jax.make_array_from_process_local_data` assembles on N processes. The single-process reference thus
trains on the same data as the multi-process run (the data pipeline shuffles and packs per shard, so
a plain 1-process run would see another order).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class Recorder:
    """Records the examples a data stream hands out and the local batches an iterator yields."""

    def __init__(self):
        self.examples: list[list] = []  # [task name, record index in the task's whole split]
        self.batches: list[str] = []  # sha256 of each local batch, in order
        self.tracked: set[int] = set()  # ids of the pipeline iterators that feed training
        self.parts: list[list[str]] = []  # --virtual_shards: digests of each shard's part of a batch

    def watch_streams(self):
        from oyster_jax.data import pipeline

        recorder = self
        advance = pipeline._Stream.advance

        def recording_advance(stream, k):
            iterator = stream._oyster_iterator
            if id(iterator) not in recorder.tracked:  # e.g. a later stage's iterator
                return advance(stream, k)
            task, local_i = stream.peek()
            shard, count = iterator._config["shard_index"], iterator._config["shard_count"]
            # Shard s of c holds records s, s+c, s+2c, ... of each task (pipeline docstring).
            recorder.examples.append([iterator.sources[task].name, shard + local_i * count])
            return advance(stream, k)

        pipeline._Stream.advance = recording_advance
        init = pipeline._BaseIterator.__init__

        def init_and_link(iterator, *args, **kwargs):
            init(iterator, *args, **kwargs)
            iterator._stream._oyster_iterator = iterator

        pipeline._BaseIterator.__init__ = init_and_link


def batch_digest(batch: dict) -> str:
    h = hashlib.sha256()
    for key in sorted(batch):
        h.update(key.encode())
        h.update(batch[key].tobytes())
    return h.hexdigest()


class Stacked:
    """N shard iterators read as one: the local batches concatenated on the leading (row) axis."""

    def __init__(self, iterators, recorder):
        self.iterators, self.recorder = iterators, recorder

    def __iter__(self):
        return self

    def __next__(self):
        import numpy as np

        parts = [next(it) for it in self.iterators]
        if id(self.iterators[0]) in self.recorder.tracked:
            self.recorder.parts.append([batch_digest(p) for p in parts])
        return {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}

    @property
    def layout(self):  # the layout of one shard's part; the trainer scales it to the global batch
        return self.iterators[0].layout

    def get_state(self):
        return {"virtual_shards": [it.get_state() for it in self.iterators]}

    def set_state(self, state):
        for it, s in zip(self.iterators, state["virtual_shards"]):
            it.set_state(s)

    @property
    def num_examples(self):
        return sum(it.num_examples for it in self.iterators)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--virtual_shards", type=int, default=1)
    args, main_args = parser.parse_known_args()
    main_args = [a for a in main_args if a != "--"]

    from oyster_jax import distributed

    distributed.initialize(initialization_timeout=60)  # reads JAX_COORDINATOR_ADDRESS & co.
    import jax

    from oyster_jax import main as main_lib
    from oyster_jax.train import batches as batches_lib

    recorder = Recorder()
    recorder.watch_streams()
    make_iterator = batches_lib.make_train_iterator
    training_iterators = []

    def recording_iterator(spec, *, process_index=0, process_count=1):
        if args.virtual_shards > 1:
            assert process_count == 1, "--virtual_shards emulates several processes from one"
            it = Stacked(
                [
                    make_iterator(spec, process_index=i, process_count=args.virtual_shards)
                    for i in range(args.virtual_shards)
                ],
                recorder,
            )
        else:
            it = make_iterator(spec, process_index=process_index, process_count=process_count)
        if not training_iterators:  # the first one made feeds the first stage
            recorder.tracked.update(id(x) for x in getattr(it, "iterators", [it]))
        training_iterators.append(it)
        return it

    batches_lib.make_train_iterator = recording_iterator

    import oyster_jax.train.trainer as trainer_lib

    original_to_device = trainer_lib._to_device

    def recording_to_device(batch, shardings):
        recorder.batches.append(batch_digest(batch))
        return original_to_device(batch, shardings)

    trainer_lib._to_device = recording_to_device
    import oyster_jax.train as train_pkg

    class Capture:
        results = None

    train = train_pkg.train

    def capturing_train(config, workdir, **kwargs):
        Capture.results = train(config, workdir, **kwargs)
        return Capture.results

    train_pkg.train = capturing_train  # main() imports it from the package when it runs
    rc = main_lib.main(
        ["--config", str(REPO / "configs/experiments/tiny_csa.py"), "--workdir", args.workdir, *main_args]
    )
    sft = Capture.results["sft"] if Capture.results else None
    # Collective: each process's data position, gathered so that one JSON item can hold them all.
    own_state = training_iterators[0].get_state()
    saved = distributed.data_state_for_checkpoint(own_state)
    result = {
        "rc": rc,
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "local_devices": jax.local_device_count(),
        "global_devices": jax.device_count(),
        "is_main_process": distributed.is_main_process(),
        "final_loss": sft.final_metrics.get("loss") if sft else None,
        "final_step": sft.final_step if sft else None,
        "examples": recorder.examples,
        "batches": recorder.batches,
        "batch_parts": recorder.parts,
        "saved_data_state": saved,
        "data_state_roundtrip": distributed.data_state_from_checkpoint(saved) == json.loads(json.dumps(own_state)),
    }
    pathlib.Path(args.out).write_text(json.dumps(result))
    distributed.barrier("worker_done")
    sys.stdout.flush()
    os._exit(0)  # no distributed shutdown handshake: a peer that already exited must not stall this one


if __name__ == "__main__":
    main()
