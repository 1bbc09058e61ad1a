"""A steady-state training step allocates no arrays (DESIGN.md: work buffers are reused)."""
import tracemalloc

import numpy as np

import cbn


def test_train_step_allocates_no_arrays(dtype, rng):
    # every array of this step is at least 128 * 32 * 4 = 16 KiB; Python's own small objects
    # (views, memoryviews, floats) come to a few KiB
    X = rng.standard_normal((128, 256)).astype(dtype)
    y = rng.integers(0, 32, 128)
    net = cbn.Network([256, 256, 256, 32], dtype=dtype, seed=0)
    for _ in range(2):  # the first step makes the work buffers
        net.train_step(X, y)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        net.train_step(X, y)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak - before < 16 * 1024
