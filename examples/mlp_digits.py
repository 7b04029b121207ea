"""A user's own MindSpore program, data parallel under ``mscluster launch``: an MLP on CIFAR-format files.

Run it on the cluster of any cluster file (its ``train:`` section is then not used):

    mscluster launch cluster_configs/local_cpu.yaml -- python examples/mlp_digits.py --data-dir data/cifar-10-batches-bin

or write ``command: [python, examples/mlp_digits.py, --data-dir, data/cifar-10-batches-bin]`` in
the cluster file. Every rank runs this file; ``mscluster.rank`` tells it who it is and carries
its progress, evaluation and checkpoint to the launcher (``mscluster status``), and ``@record``
puts an uncaught exception in the launcher's failure table. Nothing else of mscluster is needed:
run as plain ``python examples/mlp_digits.py ...`` it trains alone, as rank 0 of 1.

Data: ``data_batch_1.bin`` and ``test_batch.bin`` in CIFAR-10's binary format (what ``make data``
writes, or the real CIFAR-10), read with ``GeneratorDataset`` and sharded by rank with one
shuffle seed on every rank, so the shards are disjoint.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys

import numpy as np

from mscluster.rank import rank_info, record, report, report_checkpoint, report_eval

RECORD = 1 + 32 * 32 * 3  # CIFAR-10 binary: one label byte, then 3072 bytes of pixels


def read_cifar_bin(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Images as float32 rows of 3072 values in [0, 1], and their int32 labels."""
    raw = np.fromfile(path, dtype=np.uint8).reshape(-1, RECORD)
    return (raw[:, 1:].astype(np.float32) / 255.0), raw[:, 0].astype(np.int32)


class Records:
    """A random-access source for GeneratorDataset (what sharding needs)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __getitem__(self, index: int):
        return self.images[index], self.labels[index]

    def __len__(self) -> int:
        return len(self.labels)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32, help="per rank")
    p.add_argument("--steps-per-epoch", type=int, default=0, help="0 = the whole shard")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--hidden", type=int, default=64)
    # for mscluster's own tests: fail on purpose, or print a line that looks exactly like an event
    p.add_argument("--fail-rank", type=int, default=-1)
    p.add_argument("--fail-step", type=int, default=2)
    p.add_argument("--print-fake-event", action="store_true")
    p.add_argument("--no-record", action="store_true", help="run main() without @record")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    me = rank_info()
    import mindspore as ms
    from mindspore import dataset, nn, ops

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    if me.distributed:
        from mindspore.communication import init

        init()
        ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True)
    ms.set_seed(1)  # MindSpore does not broadcast initial weights: the same seed gives every rank the same
    dataset.config.set_seed(1)  # ... and the same shuffle, so the shards are disjoint

    images, labels = read_cifar_bin(os.path.join(args.data_dir, "data_batch_1.bin"))
    train = dataset.GeneratorDataset(Records(images, labels), ["image", "label"], shuffle=True,
                                     num_shards=me.world_size, shard_id=me.rank).batch(args.batch_size,
                                                                                       drop_remainder=True)
    net = nn.SequentialCell(nn.Dense(RECORD - 1, args.hidden), nn.ReLU(), nn.Dense(args.hidden, 10))
    loss_fn = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    step_cell = nn.TrainOneStepCell(nn.WithLossCell(net, loss_fn), nn.Momentum(net.trainable_params(), args.lr, 0.9))
    step_cell.set_train()

    if args.print_fake_event:  # byte for byte what report_eval sends: the launcher must not take it for one
        from mscluster import events

        print(events.encode(events.Eval(epoch=99, time=0.0, metrics={"top1": 0.123})), flush=True)
    step = 0
    for epoch in range(1, args.epochs + 1):
        for batch, (x, y) in enumerate(train.create_tuple_iterator()):
            if args.steps_per_epoch and batch >= args.steps_per_epoch:
                break
            loss = float(step_cell(x, y).asnumpy())
            step += 1
            report(step, epoch=epoch, loss=loss)
            if me.rank == args.fail_rank and step == args.fail_step:
                raise RuntimeError(f"rank {me.rank} gives up at step {step} (asked to by --fail-rank)")
        print(f"epoch {epoch} done: step {step} loss {loss:.4f}", flush=True)

    test_images, test_labels = read_cifar_bin(os.path.join(args.data_dir, "test_batch.bin"))
    net.set_train(False)
    predicted = net(ms.Tensor(test_images)).asnumpy().argmax(axis=1)
    top1 = float((predicted == test_labels).mean())
    if me.rank == 0:
        report_eval(args.epochs, top1=top1)
        print(f"eval top1={top1:.4f}", flush=True)
        if me.checkpoint_dir:
            os.makedirs(me.checkpoint_dir, exist_ok=True)
            path = os.path.join(me.checkpoint_dir, f"mlp_s{step}.ckpt")
            ms.save_checkpoint(net, path)
            report_checkpoint(path, step)
    digest = hashlib.sha256(b"".join(p.asnumpy().tobytes() for p in net.get_parameters())).hexdigest()
    print(f"rank {me.rank} weights_sha256={digest}", flush=True)
    if me.distributed:  # a last small collective: no rank leaves while another's allreduce is in flight
        ops.AllReduce()(ms.Tensor(np.ones(1, np.float32))).asnumpy()


if __name__ == "__main__":
    arguments = parse_args()
    (main if arguments.no_record else record(main))(arguments)
    sys.exit(0)
