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
