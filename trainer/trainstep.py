"""The training step when the gradient exchange is ours: accumulation, an fp16 exchange, buckets.

With ``grad_accumulation: 1``, a float32 exchange and no buckets, the trainer keeps MindSpore's own
``Model(net, loss_fn, optimizer)`` step. Otherwise it runs `AccumulatingStep`: one call of the cell
is one optimizer step over a batch of ``k x batch_size`` images, split in the graph into ``k``
micro-batches whose gradients are summed and divided by ``k`` (the gradient of the mean loss over
the k micro-batches, as one batch of k x B would give, but with the activations of one micro-batch
at a time); then ONE exchange across the ranks and one optimizer update. So everything that counts
steps (the learning-rate schedule, logs, TensorBoard, progress events, checkpoints, resume) counts
optimizer steps, and a checkpoint can only fall on their boundaries.

The exchange: ``DistributedGradReducer`` (mean over the ranks), with the gradients cast to float16
first and back after when ``grad_allreduce_dtype`` is float16 (half the bytes; MindSpore's CPU
collective takes float16, not bfloat16), and with ``grad_buckets`` > 0 the gradients concatenated
into that many flat buffers (one AllReduce each instead of one per parameter, which graph mode on
CPU does not fuse by itself) and split back.

Parameter names are those of MindSpore's own step (no prefix is added), so checkpoints load either way.
"""
from __future__ import annotations

from typing import Sequence

import mindspore as ms
from mindspore import nn, ops


def bucket_bounds(sizes: Sequence[int], buckets: int) -> list[tuple[int, int]]:
    """Split parameters (their element counts, in order) into at most ``buckets`` runs of about equal
    size: the [start, end) index ranges. Pure: the same answer on every rank."""
    if buckets <= 0 or not sizes:
        return []
    total = sum(sizes)
    target = total / min(buckets, len(sizes))
    bounds, start, filled = [], 0, 0
    for index, size in enumerate(sizes):
        filled += size
        if filled >= target * (len(bounds) + 1) and len(bounds) < buckets - 1 and index + 1 < len(sizes):
            bounds.append((start, index + 1))
            start = index + 1
    bounds.append((start, len(sizes)))
    return bounds


class AccumulatingStep(nn.Cell):
    """One optimizer step: ``k`` micro-batches' gradients, averaged, exchanged once, applied once."""

    def __init__(self, network_with_loss: nn.Cell, optimizer: nn.Optimizer, accumulation: int, sens: float,
                 world_size: int, reduce_dtype: str = "float32", buckets: int = 0):
        super().__init__(auto_prefix=False)
        self.network = network_with_loss
        self.network.set_grad()
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)
        self.k = accumulation
        self.sens = float(sens)
        self.hyper_map = ops.HyperMap()
        self.distributed = world_size > 1
        self.half = reduce_dtype == "float16"
        shapes = [tuple(p.shape) for p in self.weights]
        sizes = [max(int(_prod(s)), 1) for s in shapes]
        self.bounds = bucket_bounds(sizes, buckets) if self.distributed else []
        self.shapes = shapes
        self.sizes = sizes
        if self.distributed:
            from mindspore.communication import GlobalComm
            from mindspore.nn.wrap.grad_reducer import DistributedGradReducer

            if self.bounds:  # one AllReduce per flat buffer, the mean taken by hand
                self.allreduce = ops.AllReduce(op=ops.ReduceOp.SUM, group=GlobalComm.WORLD_COMM_GROUP)
                self.degree = float(world_size)
            else:
                self.reducer = DistributedGradReducer(self.weights, mean=True, degree=world_size)

    def _micro(self, data, label, sens):
        loss = self.network(data, label)
        grads = self.grad(self.network, self.weights)(data, label, sens)
        return ops.cast(loss, ms.float32), grads

    def _exchange(self, grads):
        if not self.distributed:
            return grads
        if self.half:
            grads = self.hyper_map(_to_half, grads)
        if self.bounds:
            out = []
            for start, end in self.bounds:
                flat = ops.concat([ops.reshape(grads[i], (-1,)) for i in range(start, end)])
                flat = self.allreduce(flat) / self.degree
                offset = 0
                for i in range(start, end):
                    out.append(ops.reshape(flat[offset:offset + self.sizes[i]], self.shapes[i]))
                    offset += self.sizes[i]
            grads = tuple(out)
        else:
            grads = self.reducer(grads)
        if self.half:
            grads = self.hyper_map(_to_single, grads)
        return grads

    def construct(self, data, label):
        sens = ops.fill(ms.float32, (), self.sens)
        if self.k == 1:
            loss, grads = self._micro(data, label, sens)
        else:
            size = data.shape[0] // self.k
            loss, grads = self._micro(data[0:size], label[0:size], sens)
            for i in range(1, self.k):
                more, extra = self._micro(data[i * size:(i + 1) * size], label[i * size:(i + 1) * size], sens)
                loss = loss + more
                grads = self.hyper_map(ops.add, grads, extra)
            loss = loss / self.k
            grads = self.hyper_map(ops.partial(_scaled, 1.0 / self.k), grads)
        grads = self._exchange(grads)
        return ops.depend(loss, self.optimizer(grads))


_to_half = ops.MultitypeFuncGraph("to_half")
_to_single = ops.MultitypeFuncGraph("to_single")
_scaled = ops.MultitypeFuncGraph("scaled")


@_to_half.register("Tensor")
def _half(grad):
    return ops.cast(grad, ms.float16)


@_to_single.register("Tensor")
def _single(grad):
    return ops.cast(grad, ms.float32)


@_scaled.register("Number", "Tensor")
def _scale(factor, grad):
    return grad * factor


def _prod(shape: Sequence[int]) -> int:
    out = 1
    for n in shape:
        out *= int(n)
    return out
