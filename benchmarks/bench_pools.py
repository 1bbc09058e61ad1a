"""The training step with cbn's kernels on OpenBLAS's worker threads or on cbn's own pool.

    python benchmarks/bench_pools.py [--rounds 7] [small mnist wide]

A/B of one switch inside one process: each round times the step's matrix products alone
(the floor, as in bench.py), then the step with the kernels' parallel regions on cbn's own
thread pool, then on OpenBLAS's workers (cbn._parallel's runner, what cbn does by default
where NumPy's BLAS is OpenBLAS on pthreads). Rounds alternate, so a noisy neighbour hurts
both alike; the table gives the medians over the rounds (float32, the BLAS's thread count).
"""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import CONFIGS, SRC, blas_step, built_in_place, data, median_time, reps_for  # noqa: E402

if built_in_place():
    sys.path.insert(0, SRC)

import cbn  # noqa: E402
from cbn import _parallel  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", help=f"of {', '.join(CONFIGS)} (default: all)")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        parser.error(f"configs: expected some of {', '.join(CONFIGS)}, got {unknown}")
    runner = _parallel._blas_runner()
    if not runner:
        sys.exit("cbn does not run its kernels on OpenBLAS's threads here (another BLAS, an "
                 "OpenMP build, CBN_THREAD_POOL=own or a small default stack): nothing to "
                 "compare")
    print(f"cbn kernels on {cbn.get_num_threads()} threads; float32; medians of "
          f"{args.rounds} alternating rounds")
    print(f"{'config':8} {'BLAS ms':>9} {'own pool ms':>12} {'OpenBLAS ms':>12} "
          f"{'own/BLAS':>9} {'OpenBLAS/BLAS':>14} {'own/OpenBLAS':>13}")
    try:
        for name in args.configs or list(CONFIGS):
            sizes, batch = CONFIGS[name]
            reps = reps_for(sizes, batch, quick=False)
            floor = blas_step(sizes, batch, "float32")
            X, y = data(sizes, batch, "float32")
            net = cbn.Network(sizes, dtype="float32", seed=0)
            X, targets = net._check_batch(X, y, min_rows=2)

            def step():
                net._step(X, targets)
            rounds = []
            for _ in range(args.rounds):
                blas = median_time(floor, *reps)
                _parallel._set_blas_runner(0)
                own = median_time(step, *reps)
                _parallel._set_blas_runner(runner)
                openblas = median_time(step, *reps)
                rounds.append((blas, own, openblas))
            blas, own, openblas = (statistics.median(r[i] for r in rounds) for i in range(3))
            ratio = statistics.median(r[1] / r[2] for r in rounds)
            print(f"{name:8} {blas * 1e3:9.3f} {own * 1e3:12.3f} {openblas * 1e3:12.3f} "
                  f"{own / blas:9.2f} {openblas / blas:14.2f} {ratio:12.2f}x")
    finally:
        _parallel._set_blas_runner(runner)
    print("own/OpenBLAS > 1: the step is faster on OpenBLAS's workers (median of the rounds' "
          "ratios)")


if __name__ == "__main__":
    main()
