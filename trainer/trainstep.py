"""The training step when the gradient exchange is ours: accumulation, an fp16 exchange, buckets.

With ``grad_accumulation: 1``, a float32 exchange and no buckets, the trainer keeps MindSpore's own
``Model(net, loss_fn, optimizer)`` step. With k = 1 and an exchange of ours it runs `ExchangeStep`,
one graph per step. With k > 1, `AccumulatingModel`: one optimizer step over a batch of
``k x batch_size`` images is ``k`` calls of one graph (`_Accumulate`: a micro-batch's gradients
added into buffers) and one of another (`_Apply`: the buffers divided by k, exchanged ONCE across
the ranks, the optimizer's update, the buffers zeroed). That is the gradient of the mean loss over
the k micro-batches, as one batch of k x B would give, with the activations of one micro-batch at a
time. (Unrolling the k micro-batches into one graph was measured 35% slower per image here: ResNet-50
at 32x32, k=2 of 32, 45.6 img/s against 73.0 for the two graphs and 69.3 for k=1 of 32.) Everything
that counts steps (the learning-rate schedule, logs, TensorBoard, progress events, checkpoints,
resume) counts optimizer steps, and a checkpoint can only fall on their boundaries.

The exchange: ``DistributedGradReducer`` (mean over the ranks), with the gradients cast to float16
first and back after when ``grad_allreduce_dtype`` is float16 (half the bytes; MindSpore's CPU
collective takes float16, not bfloat16), and with ``grad_buckets`` > 0 the gradients concatenated
into that many flat buffers (one AllReduce each instead of one per parameter, which graph mode on
CPU does not fuse by itself) and split back.

With ``grad_exchange: shared_memory`` (the cpu default where a host runs several ranks) the
exchange leaves the graph: the last micro-batch's graph returns the summed gradients, the ranks of
a host average them through shared memory (`trainer.hostexchange`: ~0.03 s a ResNet-50 step here
against ~0.3 s for MindSpore's CPU AllReduce), across hosts one AllReduce per chunk, and the
update's graph takes the mean as a mutable tuple (compiled once).

Parameter names are those of MindSpore's own step (no prefix is added), so checkpoints load either way.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Optional, Sequence

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


class ExchangeStep(nn.Cell):
    """One step of one batch with the exchange of ours (float16, buckets); `_Apply` reuses its exchange."""

    def __init__(self, network_with_loss: nn.Cell, optimizer: nn.Optimizer, sens: float, world_size: int,
                 reduce_dtype: str = "float32", buckets: int = 0):
        super().__init__(auto_prefix=False)
        self.network = network_with_loss
        self.network.set_grad()
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)
        self.sens = float(sens)
        self.hyper_map = ops.HyperMap()
        self.distributed = world_size > 1
        self.half = reduce_dtype == "float16"
        shapes = [tuple(p.shape) for p in self.weights]
        sizes = [max(math.prod(s), 1) for s in shapes]
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
        loss, grads = self._micro(data, label, ops.fill(ms.float32, (), self.sens))
        grads = self._exchange(grads)
        return ops.depend(loss, self.optimizer(grads))


def uniform_hosts(info) -> bool:
    """Whether every host runs ``info.local_size`` ranks, numbered host by host (asked of every rank)."""
    from trainer.collectives import all_gather_counts

    sizes, locals_ = all_gather_counts(info, info.local_size), all_gather_counts(info, info.local_rank)
    size = sizes[0]
    return all(s == size for s in sizes) and all(local == r % size for r, local in enumerate(locals_))


def open_host_mean(info, total: int, required: bool, environ=None, half: bool = False):
    """This rank's `HostMean` over ``total`` gradient elements; None where the hosts differ in ranks and
    shared memory was not ``required`` (then the collective it is).

    Raises:
        ConfigError: ``required`` and the hosts run different numbers of ranks.
    """
    import os

    from trainer.errors import ConfigError
    from trainer.hostexchange import HostLayout, HostLink, HostMean, exchange_key, socket_name

    layout = HostLayout(info.rank, info.local_rank, info.local_size, info.world_size)
    across: Optional[Callable] = None
    if info.world_size > info.local_size:
        if not uniform_hosts(info):
            if required:
                raise ConfigError("grad_exchange: shared_memory needs the same number of ranks on every host; "
                                  "use auto or collective")
            return None
        from mindspore.communication import create_group

        group = f"mscluster_local{info.local_rank}"  # the ranks of this local index, one per host
        create_group(group, layout.peers_of_index())
        sum_across = ops.AllReduce(op=ops.ReduceOp.SUM, group=group)
        if half:  # grad_allreduce_dtype float16: the hosts exchange half precision
            across = lambda chunk: sum_across(ms.Tensor(chunk.astype("float16"))).asnumpy().astype("float32")  # noqa: E731
        else:
            across = lambda chunk: sum_across(ms.Tensor(chunk)).asnumpy()  # noqa: E731

    env = os.environ if environ is None else environ
    link = HostLink(socket_name(exchange_key(env), layout), info.local_rank, info.local_size,
                    (info.local_size + 1) * total * 4)
    return HostMean(link, total, across)


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


class _Accumulate(nn.Cell):
    """One micro-batch (`ExchangeStep`'s loss and gradients): its gradients added into ``accum``; returns its loss."""

    def __init__(self, step: ExchangeStep, accum):
        super().__init__(auto_prefix=False)
        self.step, self.accum = step, accum
        self.hyper_map = ops.HyperMap()

    def construct(self, data, label):
        loss, grads = self.step._micro(data, label, ops.fill(ms.float32, (), self.step.sens))
        return ops.depend(loss, self.hyper_map(ops.assign_add, self.accum, grads))


class _Apply(nn.Cell):
    """The end of an optimizer step: the mean of the buffers, one exchange, the update, buffers zeroed."""

    def __init__(self, exchange: ExchangeStep, accum, k: int):
        super().__init__(auto_prefix=False)
        self.exchange, self.accum, self.k = exchange, accum, k
        self.hyper_map = ops.HyperMap()

    def construct(self):
        grads = self.hyper_map(ops.partial(_scaled, 1.0 / self.k), self.accum)
        done = self.exchange.optimizer(self.exchange._exchange(grads))
        cleared = self.hyper_map(_clear, self.accum)
        return ops.depend(done, cleared)


class _Saved(nn.Cell):
    """What a checkpoint holds: the network's and the optimizer's parameters (the buffers are zero between steps)."""

    def __init__(self, network_with_loss: nn.Cell, optimizer: nn.Optimizer):
        super().__init__(auto_prefix=False)
        self.network, self.optimizer = network_with_loss, optimizer


class _Args:
    net_outputs = None
    cur_step_num = 0
    exchange_s: Optional[float] = None  # the last step's seconds in the host exchange (None: in the graph)


class _RunContext:
    """What the trainer's callbacks read of MindSpore's RunContext: ``original_args().net_outputs``."""

    def __init__(self) -> None:
        self.args = _Args()

    def original_args(self) -> _Args:
        return self.args


class _Gradients(nn.Cell):
    """The last (or only) micro-batch of a step whose exchange is on the host: its loss and the summed gradients."""

    def __init__(self, step: ExchangeStep, accum=None):
        super().__init__(auto_prefix=False)
        self.step, self.accum = step, accum
        self.hyper_map = ops.HyperMap()

    def construct(self, data, label):
        loss, grads = self.step._micro(data, label, ops.fill(ms.float32, (), self.step.sens))
        if self.accum is not None:
            grads = self.hyper_map(ops.add, self.accum, grads)
        return loss, grads


class _ApplyGiven(nn.Cell):
    """The update with gradients averaged on the host (a mutable tuple: one graph for every step); buffers zeroed."""

    def __init__(self, optimizer: nn.Optimizer, accum=None):
        super().__init__(auto_prefix=False)
        self.optimizer, self.accum = optimizer, accum
        self.hyper_map = ops.HyperMap()

    def construct(self, grads):
        done = self.optimizer(grads)
        if self.accum is not None:
            done = ops.depend(done, self.hyper_map(_clear, self.accum))
        return done


class AccumulatingModel:
    """``Model``'s part the trainer uses (``train``, ``train_network``) for a step of our own.

    ``k`` micro-batches a step; ``host`` (a `trainer.hostexchange.HostMean`) moves the exchange out
    of the graph: the step's gradients go to the host's shared memory, their mean comes back as
    the input of the update's graph."""

    def __init__(self, network_with_loss: nn.Cell, optimizer: nn.Optimizer, accumulation: int, sens: float,
                 world_size: int, reduce_dtype: str = "float32", buckets: int = 0, host=None):
        import numpy as np

        self.k, self.world_size, self.host = accumulation, world_size, host
        self.exchange_s: Optional[float] = None  # the last step's seconds in the host exchange, waiting included
        accum = None
        if accumulation > 1:
            accum = ms.ParameterTuple([ms.Parameter(ms.Tensor(np.zeros(p.shape, np.float32)),
                                                    name=f"accum.{p.name}", requires_grad=False)
                                       for p in optimizer.parameters])
        exchange = ExchangeStep(network_with_loss, optimizer, sens, 1 if host else world_size, reduce_dtype,
                                buckets)
        self.shapes = exchange.shapes
        self.accumulate = _Accumulate(exchange, accum) if accum is not None else None
        if host is None:
            self.apply = _Apply(exchange, accum, accumulation)
        else:
            self.last = _Gradients(exchange, accum)
            self.apply = _ApplyGiven(optimizer, accum)
            self.last.set_train()
        self.train_network = _Saved(network_with_loss, optimizer)
        for cell in (self.accumulate, self.apply, self.train_network):
            if cell is not None:
                cell.set_train()

    def step(self, data, label):
        """One optimizer step over ``k`` micro-batches of ``data``; the mean of their losses."""
        size = data.shape[0] // self.k
        if self.host is None:
            losses = [self.accumulate(data[i * size:(i + 1) * size], label[i * size:(i + 1) * size])
                      for i in range(self.k)]
            self.apply()
        else:
            losses = [self.accumulate(data[i * size:(i + 1) * size], label[i * size:(i + 1) * size])
                      for i in range(self.k - 1)]
            loss, grads = self.last(data[(self.k - 1) * size:], label[(self.k - 1) * size:])
            losses.append(loss)
            arrays = [g.asnumpy() for g in grads]
            # the exchange's own time, the wait for the slowest rank included: the straggler scores
            # (launcher.stragglers) take this rank's time outside it
            began = time.perf_counter()
            flat = self.host.mean(arrays, 1.0 / (self.k * self.world_size))
            self.exchange_s = time.perf_counter() - began
            given, offset = [], 0
            for shape in self.shapes:
                n = math.prod(shape)
                given.append(ms.Tensor(flat[offset:offset + n].reshape(shape)))
                offset += n
            self.apply(ms.mutable(tuple(given)))
        return sum(float(loss.asnumpy()) for loss in losses) / self.k

    def train(self, epoch: int, dataset, callbacks=(), dataset_sink_mode: bool = False, initial_epoch: int = 0) -> None:
        """One epoch of ``dataset`` (the trainer calls it once per epoch), the callbacks' step hooks around each step."""
        context = _RunContext()
        for cb in callbacks:
            cb.on_train_begin(context)
        for data, label in dataset.create_tuple_iterator(num_epochs=1):
            for cb in callbacks:
                cb.on_train_step_begin(context)
            context.args.net_outputs = ms.Tensor(self.step(data, label), ms.float32)
            context.args.exchange_s = self.exchange_s
            context.args.cur_step_num += 1
            for cb in callbacks:
                cb.on_train_step_end(context)


_clear = ops.MultitypeFuncGraph("clear")


@_clear.register("Tensor")
def _zero(buffer):
    return ops.assign(buffer, ops.zeros_like(buffer))

