"""What checkpoints cost: one write, fit's step with and without a checkpoint, and (under
mpiexec) the one-integer SIGTERM agreement each step adds.

    python benchmarks/bench_checkpoint.py                      # one process
    OPENBLAS_NUM_THREADS=1 mpiexec -n 2 python benchmarks/bench_checkpoint.py   # 2 ranks

On the mnist-sized configuration [784, 512, 256, 10], float32, Adam, batch 256. Medians of
rounds taken side by side (interleaved), so a loaded machine slows every column alike.
Uses the installed cbn.
"""
import os
import statistics
import tempfile
import time

import numpy as np

import cbn
from cbn import _checkpoint

SIZES, BATCH, ROWS, ROUNDS = [784, 512, 256, 10], 256, 256 * 8, 5


def main():
    comm = None
    if "OMPI_COMM_WORLD_SIZE" in os.environ or "PMI_SIZE" in os.environ:
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
    rank = 0 if comm is None else comm.Get_rank()
    ranks = 1 if comm is None else comm.Get_size()
    rng = np.random.default_rng(0)
    rows = ROWS // ranks
    X = rng.standard_normal((rows, SIZES[0])).astype(np.float32)
    y = rng.integers(0, SIZES[-1], rows)
    folder = tempfile.mkdtemp() if rank == 0 else None
    folder = folder if comm is None else comm.bcast(folder, root=0)
    steps = ROWS // BATCH
    kwargs = dict(epochs=1, batch_size=BATCH)
    columns = {"fit, no checkpoint": [], "fit, checkpoint at the epoch's end": [],
               "fit, checkpoint every step": []}
    agreement = []
    for r in range(ROUNDS):
        for name, extra in zip(columns, ({}, {"checkpoint": "c"}, {"checkpoint": "c",
                                                                     "checkpoint_every": 1})):
            net = cbn.Network(SIZES, seed=0, comm=comm)
            if "checkpoint" in extra:
                extra = dict(extra, checkpoint=os.path.join(folder, f"{r}-{len(extra)}.ckpt"))
            start = time.perf_counter()
            net.fit(X, y, **kwargs, **extra)
            columns[name].append((time.perf_counter() - start) / steps)
        if comm is not None:  # the per-step cost of the SIGTERM agreement alone
            comm.Barrier()
            start = time.perf_counter()
            for _ in range(1000):
                net._sync.sum_int(False)
            agreement.append((time.perf_counter() - start) / 1000)
    write = []
    net = cbn.Network(SIZES, seed=0)
    run = _checkpoint.Run(net, os.path.join(folder, "w.ckpt"), None,
                          {"fit": {"steps_per_epoch": 1}}, net.history or {}, [], None, None)
    if rank == 0:
        for _ in range(ROUNDS):
            start = time.perf_counter()
            run._save(_checkpoint.Position(1))
            write.append(time.perf_counter() - start)
    digest = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        _checkpoint.fingerprint(X, y)
        digest.append(time.perf_counter() - start)
    if rank == 0:
        size = os.path.getsize(os.path.join(folder, "w.ckpt"))
        print(f"{SIZES} float32 Adam, batch {BATCH}, {ranks} process(es); medians of "
              f"{ROUNDS} rounds (provisional on a shared machine)")
        base = statistics.median(columns["fit, no checkpoint"])
        for name, times in columns.items():
            t = statistics.median(times)
            print(f"  {name:<46} {t * 1e3:8.2f} ms/step  x{t / base:5.2f}")
        print(f"  {'one checkpoint write (' + format(size / 1e6, '.1f') + ' MB, fsync)':<46} "
              f"{statistics.median(write) * 1e3:8.2f} ms")
        print(f"  {'SHA-256 of the data (once per fit call, ' + format(X.nbytes / 1e6, '.1f') + ' MB)':<46} "
              f"{statistics.median(digest) * 1e3:8.2f} ms")
        if agreement:
            a = statistics.median(agreement)
            print(f"  {'SIGTERM agreement (1-int allreduce)':<46} {a * 1e6:8.1f} us/step "
                  f"({a / base * 100:.2f}% of a step)")


if __name__ == "__main__":
    main()
