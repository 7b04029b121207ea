"""The gradient buckets of trainer.trainstep: every parameter in exactly one bucket, in order, sizes balanced."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.mindspore  # trainer.trainstep defines a MindSpore Cell


def test_buckets_cover_every_parameter_once_in_order():
    from trainer.trainstep import bucket_bounds

    sizes = [9408, 64, 64, 36864, 64, 64, 36864, 64, 64, 2359296, 512, 512, 5120, 10]
    for n in (1, 2, 3, 4, 8, 32):
        bounds = bucket_bounds(sizes, n)
        assert bounds[0][0] == 0 and bounds[-1][1] == len(sizes) and len(bounds) <= n
        assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(bounds, bounds[1:]))
    assert bucket_bounds(sizes, 0) == [] and bucket_bounds([], 4) == []
    even = bucket_bounds([10] * 8, 4)
    assert even == [(0, 2), (2, 4), (4, 6), (6, 8)]


@pytest.mark.parametrize("remaining,size,steps", [(6, 4, 3), (195, 100, 65), (7, None, 7), (5, 10, 5), (12, 1, 1),
                                                  (13, 4, 1)])
def test_a_sink_is_the_largest_divisor_of_the_epoch_not_above_sink_size(remaining, size, steps):
    from trainer.train import sink_steps

    assert sink_steps(remaining, size) == steps


def test_sink_callbacks_see_one_step_end_per_sink_and_count_its_steps():
    """What MindSpore's sink mode hands callbacks (cur_step_num +n a sink), built from per-step calls."""
    from trainer.callbacks import SinkCallbacks

    class Args:
        cur_step_num = 0

    class Context:
        def __init__(self):
            self.args = Args()

        def original_args(self):
            return self.args

    class Seen:
        def __init__(self):
            self.ends = []

        def on_train_begin(self, ctx):
            self.ends.append("begin")

        def on_train_step_begin(self, ctx):
            pass

        def on_train_step_end(self, ctx):
            self.ends.append(ctx.original_args().cur_step_num)

        def on_train_end(self, ctx):
            self.ends.append("end")

    seen, ctx = Seen(), Context()
    sink = SinkCallbacks([seen], 3)
    sink.on_train_begin(ctx)
    for step in range(1, 10):
        ctx.args.cur_step_num = step
        sink.on_train_step_begin(ctx)
        sink.on_train_step_end(ctx)
    sink.on_train_end(ctx)
    assert seen.ends == ["begin", 3, 6, 9, "end"]
