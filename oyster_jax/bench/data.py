"""Input-pipeline throughput on CPU: packed SFT examples/s and tokens/s, preference pairs/s, and the same
task through SeqIO (``task.get_dataset`` + ``SftPackingConverter``, tf.data packing) beside the numpy packer.

    python -m oyster_jax.bench.data                       # seed SFT mixture, B=16, T=512
    python -m oyster_jax.bench.data --batch_size 8 --seq_len 2048 --steps 300
    python -m oyster_jax.bench.data --seqio_steps 0       # skip the SeqIO comparison

Prints the one-time preparation cost (read + validate + render + tokenize, cached per process) and the
steady-state batch rate of ``make_sft_iterator`` / ``make_pref_iterator``. "tokens/s" counts real
(non-padding) tokens, which is what a trainer's tokens/s should be compared with. The SeqIO line packs the
same task definition (same preprocessor, same tokens) with tf.data: its rate includes tokenizing, which the
numpy path does once per process, so the "first pass" numbers of both paths are also printed.
"""

from __future__ import annotations

import time

from tqdm import tqdm

from oyster_jax import cli


def _rate(it, steps: int, desc: str) -> tuple[float, int, int, int]:
    """Seconds for `steps` batches, real tokens, examples (segments) and padded slots seen."""
    next(it)  # first batch outside the clock (permutation setup)
    tokens = examples = slots = 0
    start = time.perf_counter()
    for _ in tqdm(range(steps), desc=desc, leave=False):
        batch = next(it)
        seg = batch["segment_ids"]
        tokens += int((seg > 0).sum())
        examples += int(seg.max(axis=1).sum())
        slots += seg.size
    return time.perf_counter() - start, tokens, examples, slots


def main(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", default="oyster_csa_sft_mix", help="SFT task/mixture name or JSONL path")
    parser.add_argument("--pref_source", default="oyster_csa_seed_pref")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--seq_len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--seqio_task", default="oyster_csa_seed_sft", help="SFT task for the SeqIO comparison")
    parser.add_argument("--seqio_steps", type=int, default=100, help="batches of the SeqIO path (0: skip it)")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    from oyster_jax.data import pipeline  # lazy: TensorFlow/SeqIO start-up is not part of the rate

    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    sft = pipeline.make_sft_iterator(
        args.source, batch_size=args.batch_size, seq_len=args.seq_len, seed=0, shard_index=0, shard_count=1
    )
    t_prep_sft = time.perf_counter() - t0
    t0 = time.perf_counter()
    pref = pipeline.make_pref_iterator(
        args.pref_source, batch_size=args.batch_size, seq_len=args.seq_len, seed=0, shard_index=0, shard_count=1
    )
    t_prep_pref = time.perf_counter() - t0

    secs, tokens, examples, slots = _rate(sft, args.steps, "sft batches")
    psecs, ptokens, _, _ = _rate(pref, args.steps, "pref batches")
    pairs = args.steps * args.batch_size
    print(f"import oyster_jax.data.pipeline (TensorFlow, SeqIO): {t_import:.1f} s")
    print(
        f"prepare (read+validate+render+tokenize, once per process): SFT {sft.num_examples} examples in "
        f"{t_prep_sft:.2f} s; pref {pref.num_examples} pairs in {t_prep_pref:.2f} s"
    )
    print(
        f"packed SFT  B={args.batch_size} T={args.seq_len}: {args.steps / secs:,.0f} batches/s, "
        f"{examples / secs:,.0f} examples/s, {tokens / secs:,.0f} tokens/s "
        f"(fill {tokens / slots:.1%}, {examples / (args.steps * args.batch_size):.2f} examples/row)"
    )
    print(
        f"preference  B={args.batch_size} pairs T={args.seq_len}: {pairs / psecs:,.0f} pairs/s, "
        f"{ptokens / psecs:,.0f} tokens/s"
    )
    if args.seqio_steps > 0:
        _compare_seqio(args)


def _seqio_batches(task: str, batch_size: int, seq_len: int):
    """Packed rows of `task` through SeqIO: get_dataset + SftPackingConverter (tf.data), batched, repeated."""
    from oyster_jax.data import tasks
    from oyster_jax.data.tf_setup import seqio

    lengths = {"inputs": seq_len, "targets": seq_len, "targets_loss_weights": seq_len}
    ds = seqio.get_dataset(
        task, lengths, tasks.SftPackingConverter(), dataset_split="train", shuffle=True, seed=0, num_epochs=None
    )
    return ds.batch(batch_size, drop_remainder=True).prefetch(2).as_numpy_iterator()


def _compare_seqio(args):
    """The numpy packer and the SeqIO path on one task, side by side in this process."""
    from oyster_jax.data import pipeline

    fresh = {"batch_size": args.batch_size, "seq_len": args.seq_len, "seed": 1, "shard_index": 0, "shard_count": 1}
    pipeline._CACHE.clear()  # the numpy path's first pass includes its one-time tokenization, like SeqIO's
    t0 = time.perf_counter()
    numpy_it = pipeline.make_sft_iterator(args.seqio_task, **fresh)
    next(numpy_it)
    numpy_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    seqio_it = _seqio_batches(args.seqio_task, args.batch_size, args.seq_len)
    next(seqio_it)
    seqio_first = time.perf_counter() - t0
    secs, tokens, examples, _ = _rate(numpy_it, args.seqio_steps, "numpy packer")
    ssecs, stokens, sexamples, _ = _rate(seqio_it, args.seqio_steps, "seqio packer")
    print(
        f"{args.seqio_task} B={args.batch_size} T={args.seq_len}, {args.seqio_steps} batches each, first batch "
        f"(setup+tokenize) numpy {numpy_first:.2f} s vs SeqIO {seqio_first:.2f} s"
    )
    print(
        f"  numpy packer (make_sft_iterator):             {examples / secs:,.0f} examples/s, "
        f"{tokens / secs:,.0f} tokens/s"
    )
    print(
        f"  SeqIO (get_dataset + SftPackingConverter):    {sexamples / ssecs:,.0f} examples/s, "
        f"{stokens / ssecs:,.0f} tokens/s"
    )
    print(f"  numpy / SeqIO tokens/s: {(tokens / secs) / max(stokens / ssecs, 1e-9):.1f}x")


if __name__ == "__main__":
    main()
