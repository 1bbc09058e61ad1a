"""Where the time of one cbn training step goes, part by part, measured inside the step.

    python benchmarks/profile_step.py [small|mnist|wide] [float32|float64]

Runs ``Network._step`` many times with a timer around each matrix product, each kernel call
and the optimizer update, and prints the median time of each part per step next to the
median step (timed without the timers); "other" is the rest (Python glue). Parts are timed
where they run, after the step's other parts: a kernel timed alone in a loop finds its data
in cache and the BLAS's threads idle, and looked three times faster than inside the step.
"""
import os
import sys
import time
from collections import defaultdict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import (CONFIGS, SRC, built_in_place, data, kernel_pool, median_time,  # noqa: E402
                   reps_for)

if built_in_place():
    sys.path.insert(0, SRC)

import cbn  # noqa: E402
import cbn.network  # noqa: E402
from cbn import _kernels  # noqa: E402

PARTS = {  # kernel name -> the part it belongs to
    "batchnorm_activation_forward": "batch norm + activation forward",
    "batchnorm_activation_backward": "batch norm + activation backward",
    "bias_activation_forward": "bias + activation forward",
    "bias_activation_backward": "bias + activation backward",
    "softmax_cross_entropy": "loss",
    "sigmoid_binary_cross_entropy": "loss",
    "mean_squared_error": "loss",
    "largest_magnitude": "divergence check",
    "batchnorm_update_running": "running statistics",
}


class Timed:
    """Stands in for a module: the named functions are timed into totals[part]."""

    def __init__(self, module, parts, totals):
        self._module, self._parts, self._totals = module, parts, totals

    def __getattr__(self, name):
        function = getattr(self._module, name)
        part = self._parts.get(name)
        if part is None:
            return function

        def timed(*args, **kwargs):
            start = time.perf_counter()
            result = function(*args, **kwargs)
            self._totals[part] += time.perf_counter() - start
            return result
        return timed


def main():
    config = sys.argv[1] if len(sys.argv) > 1 else "mnist"
    dtype = sys.argv[2] if len(sys.argv) > 2 else "float32"
    sizes, batch = CONFIGS[config]
    X, y = data(sizes, batch, dtype)
    net = cbn.Network(sizes, dtype=dtype, seed=0)
    X, targets = net._check_batch(X, y, min_rows=2)
    min_reps, min_seconds, warmup = reps_for(sizes, batch, quick=False)
    for _ in range(warmup):
        net._step(X, targets)
    step = median_time(lambda: net._step(X, targets), min_reps, min_seconds, 0)

    totals = defaultdict(float)
    per_step = defaultdict(list)
    optimizer_step = net.optimizer.step

    def timed_optimizer(*args):
        start = time.perf_counter()
        optimizer_step(*args)
        totals[f"{type(net.optimizer).__name__} update"] += time.perf_counter() - start

    cbn.network.np = Timed(np, {"matmul": "matrix products (BLAS)", "sum": "bias gradient"},
                           totals)
    cbn.network._kernels = Timed(_kernels, PARTS, totals)
    net.optimizer.step = timed_optimizer
    try:
        start = time.perf_counter()
        reps = 0
        while reps < min_reps or time.perf_counter() - start < min_seconds:
            totals.clear()
            net._step(X, targets)
            for part, seconds in totals.items():
                per_step[part].append(seconds)
            reps += 1
    finally:
        cbn.network.np, cbn.network._kernels = np, _kernels
        del net.optimizer.step
    times = {part: float(np.median(values)) for part, values in per_step.items()}
    times["other (Python glue)"] = max(step - sum(times.values()), 0.0)
    print(f"cbn step, {config}/{dtype}: {step * 1e3:.3f} ms (median), cbn kernels on "
          f"{cbn.get_num_threads()} thread(s) ({kernel_pool()}); parts timed inside the step")
    for name, t in sorted(times.items(), key=lambda item: -item[1]):
        print(f"  {name:34s} {t * 1e3:8.3f} ms  {100 * t / step:5.1f} %")


if __name__ == "__main__":
    main()
