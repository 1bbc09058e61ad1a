"""Speed of cbn's own kernels on large arrays: memory bandwidth and 1 -> 2 thread scaling.

    python benchmarks/bench_kernels.py            # full table (about a minute)
    python benchmarks/bench_kernels.py --quick    # smoke check
    python benchmarks/bench_kernels.py --threads 1 2 4

Every array is 64 MiB (twice a 32 MiB last-level cache), so the kernels stream from memory.
For each kernel the table prints its effective bandwidth (the bytes it must read and write
at least, over its median time) for every thread count, the speed-up over one thread and
the effective bandwidth as a share of a plain copy's on as many threads (np.copyto of one
array, 2 x 64 MiB moved, cut into one piece per thread) measured in the same run: the copy
row shows what memory gives one and two cores, the ceiling of a bandwidth-bound kernel.
Thread counts alternate within each repetition (cbn.set_num_threads), so a noisy neighbour
hurts them alike; figures are medians over the repetitions.

A second table times the kernels at the sizes of the mnist-sized step ([784, 512, 256, 10],
256 rows, float32) the way the step meets them: each call right after a matrix product of
the step's first layer, when OpenBLAS's idle workers are still spinning. It compares 1 and
2 threads on OpenBLAS's workers and on cbn's own pool (cbn._parallel), alternating.

It uses the checkout's ``src`` when its kernels are built there
(``python setup.py build_ext --inplace``), the installed cbn otherwise.
"""
import argparse
import os
import statistics
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import SRC, built_in_place, median_time  # noqa: E402

if built_in_place():
    sys.path.insert(0, SRC)

import cbn  # noqa: E402
from cbn import _kernels  # noqa: E402

ARRAY_BYTES = 64 << 20
BN_ROWS = 8192


def copy_on_threads(dst, src, threads):
    """np.copyto of src into dst, in `threads` contiguous pieces copied at once."""
    if threads == 1:
        np.copyto(dst, src)
        return
    bounds = np.linspace(0, src.size, threads + 1).astype(int)
    workers = [threading.Thread(target=np.copyto, args=(dst[a:b], src[a:b]))
               for a, b in zip(bounds[:-1], bounds[1:])]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def kernels(dtype):
    """{name: (function, effective bytes)} on freshly made 64 MiB arrays of dtype."""
    relu = _kernels.ACTIVATIONS["relu"]
    itemsize = np.dtype(dtype).itemsize
    n = ARRAY_BYTES // itemsize
    N, D = BN_ROWS, n // BN_ROWS
    rng = np.random.default_rng(0)
    src, dst = rng.standard_normal(n).astype(dtype), np.empty(n, dtype)
    Z = (3.0 + 2.0 * rng.standard_normal((N, D))).astype(dtype)
    A, dA, dZ = np.empty_like(Z), rng.standard_normal((N, D)).astype(dtype), np.empty_like(Z)
    gamma, beta = np.ones(D, dtype), np.zeros(D, dtype)
    dgamma, dbeta = np.empty(D, dtype), np.empty(D, dtype)
    mean, var, rstd = np.empty(D), np.empty(D), np.empty(D)
    param, grad = src, dA.reshape(-1)
    m, v = np.zeros_like(param), np.zeros_like(param)
    step = [0]

    def forward():
        _kernels.batchnorm_activation_forward(A, mean, var, rstd, Z, gamma, beta, 1e-5, relu)

    def backward():
        _kernels.batchnorm_activation_backward(dZ, dgamma, dbeta, dA, A, Z, gamma, mean, rstd,
                                               relu)

    def adam():
        step[0] += 1
        _kernels.adam_update(param, m, v, grad, 1e-9, 0.9, 0.999, 1e-8, step[0])

    forward()
    array = n * itemsize
    return {  # name: (call, bytes it must move at least)
        "copy": (lambda t: copy_on_threads(dst, src, t), 2 * array),
        "bn+relu forward": (lambda t: forward(), 2 * array),        # Z in, A out
        "bn+relu backward": (lambda t: backward(), 4 * array),      # dA, A, Z in, dZ out
        "bn+relu fwd+bwd": (lambda t: (forward(), backward()), 6 * array),
        "adam (16M params)" if dtype == "float32" else "adam (8M params)":
            (lambda t: adam(), 7 * array),                          # p, m, v, g in; p, m, v out
        "divergence check": (lambda t: _kernels.largest_magnitude(grad), array),
    }


def measure(dtype, thread_counts, repeats, reps):
    """({kernel: {threads: median seconds}}, {kernel: bytes}); thread counts alternate."""
    times, sizes = {}, {}
    for name, (call, size) in kernels(dtype).items():
        sizes[name] = size
        per = {t: [] for t in thread_counts}
        for _ in range(repeats):
            for t in thread_counts:
                cbn.set_num_threads(t)
                per[t].append(median_time(lambda: call(t), *reps))
        times[name] = {t: statistics.median(s) for t, s in per.items()}
    cbn.set_num_threads(0)
    return times, sizes


def print_table(dtype, thread_counts, times, sizes):
    copy = {t: sizes["copy"] / times["copy"][t] / 1e9 for t in thread_counts}
    head = (["kernel"] + [f"GB/s {t} thr" for t in thread_counts]
            + [f"{t} thr / 1" for t in thread_counts[1:]]
            + [f"of copy {t} thr" for t in thread_counts])
    rows = []
    for name, per in times.items():
        gbs = {t: sizes[name] / per[t] / 1e9 for t in thread_counts}
        rows.append([name] + [f"{gbs[t]:.1f}" for t in thread_counts]
                    + [f"{per[1] / per[t]:.2f}" for t in thread_counts[1:]]
                    + [f"{gbs[t] / copy[t]:.2f}" for t in thread_counts])
    print_rows(f"\n{dtype}, arrays of {ARRAY_BYTES >> 20} MiB (batch norm on {BN_ROWS} rows)",
               head, rows)


def print_rows(title, head, rows):
    """A table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    print(title)
    for r in [head, ["-" * w for w in widths]] + rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                        enumerate(zip(r, widths))))


def step_kernels():
    """{name: call} of the mnist step's kernels at its sizes (float32, 256 rows)."""
    relu = _kernels.ACTIVATIONS["relu"]
    rng = np.random.default_rng(1)
    calls = {}
    for D in (512, 256):
        Z = rng.standard_normal((256, D)).astype(np.float32)
        dA = rng.standard_normal((256, D)).astype(np.float32)
        A, dZ = np.empty_like(Z), np.empty_like(Z)
        gamma, beta = np.ones(D, np.float32), np.zeros(D, np.float32)
        dgamma, dbeta = np.empty_like(gamma), np.empty_like(gamma)
        mean, var, rstd = np.empty(D), np.empty(D), np.empty(D)
        calls[f"bn+relu forward 256x{D}"] = (
            lambda A=A, mean=mean, var=var, rstd=rstd, Z=Z, gamma=gamma, beta=beta:
            _kernels.batchnorm_activation_forward(A, mean, var, rstd, Z, gamma, beta, 1e-5,
                                                  relu))
        calls[f"bn+relu forward 256x{D}"]()     # the statistics the backward needs
        calls[f"bn+relu backward 256x{D}"] = (
            lambda dZ=dZ, dgamma=dgamma, dbeta=dbeta, dA=dA, A=A, Z=Z, gamma=gamma, mean=mean,
            rstd=rstd: _kernels.batchnorm_activation_backward(dZ, dgamma, dbeta, dA, A, Z,
                                                              gamma, mean, rstd, relu))
    n = 784 * 512 + 512 * 256 + 256 * 10 + 2 * (512 + 256) + 10
    param, grad = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(
        np.float32)
    m, v, step = np.zeros_like(param), np.zeros_like(param), [0]

    def adam():
        step[0] += 1
        _kernels.adam_update(param, m, v, grad, 1e-9, 0.9, 0.999, 1e-8, step[0])
    calls[f"adam ({n} params)"] = adam
    calls[f"divergence check ({n})"] = lambda: _kernels.largest_magnitude(grad)
    return calls


def measure_in_step(repeats, calls_per_repeat):
    """{kernel: {(pool, threads): median seconds of a call made after a matrix product}}."""
    from cbn import _parallel
    rng = np.random.default_rng(2)
    X = rng.standard_normal((256, 784)).astype(np.float32)
    W = rng.standard_normal((512, 784)).astype(np.float32)
    Z = np.empty((256, 512), np.float32)
    runner = _parallel._blas_runner()
    pools = (("OpenBLAS", runner), ("own", 0)) if runner else (("own", 0),)
    results = {}
    try:
        for name, call in step_kernels().items():
            per = {}
            for _ in range(repeats):
                for pool, address in pools:
                    _parallel._set_blas_runner(address)
                    for t in (1, 2):
                        cbn.set_num_threads(t)
                        times = []
                        for _ in range(calls_per_repeat):
                            np.matmul(X, W.T, out=Z)
                            start = time.perf_counter()
                            call()
                            times.append(time.perf_counter() - start)
                        per.setdefault((pool, t), []).append(statistics.median(times))
            results[name] = {key: statistics.median(v) for key, v in per.items()}
    finally:
        _parallel._set_blas_runner(runner)
        cbn.set_num_threads(0)
    return results, [pool for pool, _ in pools]


def print_in_step(results, pools):
    head = ["kernel (after a matrix product)"]
    for pool in pools:
        head += [f"{pool} 1 thr us", f"{pool} 2 thr us", f"{pool} 2/1"]
    rows = []
    for name, per in results.items():
        row = [name]
        for pool in pools:
            one, two = per[(pool, 1)], per[(pool, 2)]
            row += [f"{one * 1e6:.1f}", f"{two * 1e6:.1f}", f"{one / two:.2f}"]
        rows.append(row)
    print_rows("\nfloat32, the mnist step's sizes, each call after a matrix product "
               "(2/1: speed-up of 2 threads)", head, rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--dtype", nargs="+", default=["float32", "float64"])
    args = p.parse_args(argv)
    thread_counts = sorted(set([1] + args.threads))
    repeats, reps = (1, (3, 0.2, 1)) if args.quick else (5, (5, 0.5, 1))
    print(f"cbn {cbn.__version__} from {os.path.dirname(cbn.__file__)}, "
          f"kernels: {_kernels._instruction_set()}")
    for dtype in args.dtype:
        print_table(dtype, thread_counts, *measure(dtype, thread_counts, repeats, reps))
    print_in_step(*measure_in_step(*((1, 5) if args.quick else (5, 40))))


if __name__ == "__main__":
    main()
