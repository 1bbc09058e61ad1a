"""Where the time of one cbn training step goes, part by part.

    python benchmarks/profile_step.py [small|mnist|wide] [float32|float64]

Times each part of ``Network._step`` on the network's own buffers (median of many calls)
and prints it next to the whole step: the matrix products (the BLAS floor), the batch-norm
kernels, the loss, the Adam update and the checks; "other" is the rest (Python glue).
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import CONFIGS, SRC, built_in_place, data, median_time, reps_for  # noqa: E402

if built_in_place():
    sys.path.insert(0, SRC)

import cbn  # noqa: E402
from cbn import _kernels  # noqa: E402


def main():
    config = sys.argv[1] if len(sys.argv) > 1 else "mnist"
    dtype = sys.argv[2] if len(sys.argv) > 2 else "float32"
    sizes, batch = CONFIGS[config]
    X, y = data(sizes, batch, dtype)
    net = cbn.Network(sizes, dtype=dtype, seed=0)
    X, targets = net._check_batch(X, y, min_rows=2)
    ws = net._workspace(batch)
    reps = reps_for(sizes, batch, quick=False)
    code, hidden, out = net._activation_code, net.layers[:-1], net.layers[-1]
    grads = net._grad_views
    L = len(net.layers) - 1

    def matmuls():
        A_prev = X
        for l, layer in enumerate(net.layers):
            np.matmul(A_prev, layer.W.T, out=ws.Z[l])
            A_prev = ws.A[l] if l < L else None
        for l in range(L, -1, -1):
            dZ = ws.dZ_out if l == L else ws.G[l]
            np.matmul(dZ.T, ws.A[l - 1] if l > 0 else X, out=grads[f"{l}.W"])
            if l > 0:
                np.matmul(dZ, net.layers[l].W, out=ws.G[l - 1])

    def bn_forward():
        for l, layer in enumerate(hidden):
            mean, var, rstd = net._bn_cache[l]
            _kernels.batchnorm_activation_forward(
                ws.A[l], mean, var, rstd, ws.Z[l], layer.gamma, layer.beta, net.bn_eps, code, 0.0)

    def bn_backward():
        for l, layer in enumerate(hidden):
            mean, _, rstd = net._bn_cache[l]
            _kernels.batchnorm_activation_backward(
                ws.G[l], grads[f"{l}.gamma"], grads[f"{l}.beta"], ws.G[l], ws.A[l], ws.Z[l],
                layer.gamma, mean, rstd, code, 0.0)

    net._step(X, targets)
    parts = {
        "matrix products (BLAS)": matmuls,
        "batch norm + relu forward": bn_forward,
        "batch norm + relu backward": bn_backward,
        "softmax cross-entropy": lambda: net._loss(ws.dZ_out, ws.Z[-1], out.b, targets),
        "Adam update": lambda: net.optimizer.step(net._params, net._grads),
        "divergence check, running stats": lambda: (_kernels.largest_magnitude(net._grads),
                                                    net._update_running_stats(batch)),
    }
    step = median_time(lambda: net._step(X, targets), *reps)
    times = {name: median_time(fn, *reps) for name, fn in parts.items()}
    times["other (Python glue)"] = max(step - sum(times.values()), 0.0)
    print(f"cbn step, {config}/{dtype}: {step * 1e3:.3f} ms (median), cbn kernels on "
          f"{cbn.get_num_threads()} thread(s)")
    for name, t in times.items():
        print(f"  {name:34s} {t * 1e3:8.3f} ms  {100 * t / step:5.1f} %")


if __name__ == "__main__":
    main()
