"""Data-parallel training step: 1 process x 2 BLAS threads against 2 MPI ranks x 1 thread.

    python benchmarks/bench_mpi.py [--steps 15] [--rounds 2] [--baseline DIR]
    # needs cbn[mpi] and mpiexec; --baseline DIR also times the cbn package in DIR
    (root: export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1)

Per global step (median) on the mnist-sized [784, 512, 256, 10] / 256 and the wide
[784, 2048, 2048, 10] / 1024 configurations, float32: step time, throughput ratio, the time
inside MPI calls and the bytes each rank sends. Then a cost model,

    T(P) = T_compute / P + 2 (P - 1) alpha + 2 (P - 1) / P * n_bytes / B     (gradient)
           + 2 L (log2(P) alpha + P (2 D + 1) 8 / B)                         (batch norm)

with alpha and B measured here (shared memory) to check it against the 2-rank run, then
with alpha = 2 us and B = 10 GB/s to predict 8, 64 and 512 ranks on a cluster network.
The script starts its own processes (python ... --worker), so run it directly.
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time

import numpy as np

CONFIGS = {"mnist": ([784, 512, 256, 10], 256), "wide": ([784, 2048, 2048, 10], 1024)}


class TimedComm:
    """Forwards to an mpi4py communicator, timing its buffer collectives and the bytes sent.

    Point-to-point messages count their bytes at Isend; the time they take is counted by
    :func:`timed_waitall`, which stands in for MPI.Request.Waitall in cbn._distributed.
    """

    def __init__(self, comm, clock):
        self._comm, self.clock = comm, clock

    def __getattr__(self, name):
        attr = getattr(self._comm, name)
        if name not in ("Allgather", "Alltoallv", "Allgatherv", "Bcast", "Isend"):
            return attr
        clock, P = self.clock, self._comm.Get_size()

        def timed(send, *rest, **kw):
            start = time.perf_counter()
            result = attr(send, *rest, **kw)
            clock.seconds += time.perf_counter() - start
            buf = send[0] if isinstance(send, list) else send
            if name == "Alltoallv":
                clock.bytes += buf.nbytes * (P - 1) // P
            elif name == "Allgatherv" and not isinstance(buf, np.ndarray):   # in place
                clock.bytes += rest[0][0].nbytes // P
            elif isinstance(buf, np.ndarray):
                clock.bytes += buf.nbytes
            return result
        return timed


class Clock:
    seconds, bytes = 0.0, 0


def timed_mpi(clock):
    """cbn._distributed's MPI module with Request.Waitall timed on clock."""
    from mpi4py import MPI

    class Request:
        @staticmethod
        def Waitall(requests):
            start = time.perf_counter()
            MPI.Request.Waitall(requests)
            clock.seconds += time.perf_counter() - start

    class Module:
        def __getattr__(self, name):
            return Request if name == "Request" else getattr(MPI, name)
    module = Module()
    return lambda: module


def worker(steps, share):
    """Time train_step per configuration; alone, share > 1 trains on batch / share rows
    (what one of `share` ranks computes, without the communication)."""
    import cbn
    comm = None
    if os.environ.get("OMPI_COMM_WORLD_SIZE") or os.environ.get("PMI_SIZE"):
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
    P = comm.Get_size() if comm else 1
    rank = comm.Get_rank() if comm else 0
    out = {}
    for name, (sizes, batch) in CONFIGS.items():
        rng = np.random.default_rng(0)
        X = rng.normal(size=(batch, sizes[0])).astype(np.float32)
        y = rng.integers(0, sizes[-1], batch)
        a, b = rank * batch // P, (rank + 1) * batch // P
        if comm is None and share > 1:
            a, b = 0, batch // share
        net = cbn.Network(sizes, seed=0, comm=comm)
        timed = None
        if comm is not None:
            from cbn import _distributed
            timed = Clock()
            net._sync.comm = TimedComm(comm, timed)
            if hasattr(net._sync, "_peers"):
                net._sync._peers = TimedComm(net._sync._peers, timed)
            _distributed._mpi = timed_mpi(timed)
        for _ in range(3):
            net.train_step(X[a:b], y[a:b])
        times, comm_times, comm_bytes = [], [], []
        for _ in range(steps):
            if comm is not None:
                comm.Barrier()
                timed.seconds, timed.bytes = 0.0, 0
            start = time.perf_counter()
            net.train_step(X[a:b], y[a:b])
            times.append(time.perf_counter() - start)
            if timed is not None:
                comm_times.append(timed.seconds)
                comm_bytes.append(timed.bytes)
        out[name] = {"step": float(np.median(times)), "n_params": net.n_params,
                     "bn_widths": sizes[1:-1],
                     "comm": float(np.median(comm_times)) if comm_times else 0.0,
                     "bytes": int(np.median(comm_bytes)) if comm_bytes else 0}
    if comm is not None:   # alpha: a tiny Allgather; B: a 64 MB Alltoall + Allgather pair
        small, table = np.zeros(1), np.zeros(P)
        big = np.zeros(16 << 20, np.float32)
        recv = np.zeros_like(big)
        lat = []
        for _ in range(200):
            start = time.perf_counter()
            comm.Allgather(small, table)
            lat.append(time.perf_counter() - start)
        bw = []
        for _ in range(5):
            comm.Barrier()
            start = time.perf_counter()
            comm.Alltoall(big, recv)
            bw.append(time.perf_counter() - start)
        out["alpha"] = float(np.median(lat))
        out["bandwidth"] = big.nbytes * (P - 1) / P / float(np.median(bw))
    if rank == 0:
        print(json.dumps(out))


def predict(compute, n_params, widths, P, alpha, bandwidth):
    grad = 2 * (P - 1) * alpha + 2 * (P - 1) / P * n_params * 4 / bandwidth
    bn = 2 * len(widths) * sum(math.log2(P) * alpha + P * (2 * D + 1) * 8 / bandwidth
                               for D in widths) / len(widths) if P > 1 else 0.0
    return compute / P + grad + bn


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--baseline", metavar="DIR",
                        help="also time 2 ranks on the cbn package in DIR (PYTHONPATH=DIR, "
                             "e.g. a copy of src/ at an older commit), interleaved")
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--share", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.steps, args.share)
    me = [sys.executable, os.path.abspath(__file__), "--worker", "--steps", str(args.steps)]
    try:
        import threadpoolctl
        info = threadpoolctl.threadpool_info()
        print("BLAS:", ", ".join(f"{i['internal_api']} {i.get('version')} "
                                 f"{i.get('architecture')}" for i in info))
    except ImportError:
        print("BLAS: (pip install threadpoolctl to show it)")
    env = dict(os.environ)
    mpiexec = [shutil.which("mpiexec") or "mpiexec", "-n", "2"]

    def measure(command, threads, path=None):
        run_env = dict(env, OPENBLAS_NUM_THREADS=str(threads))
        if path is not None:
            run_env["PYTHONPATH"] = path
        out = subprocess.run(command, env=run_env, check=True, capture_output=True,
                             text=True).stdout
        return json.loads(out.replace("\0", "").strip().splitlines()[-1])

    def best(runs):   # per configuration, the round with the fastest median step
        merged = dict(runs[0])
        for name in CONFIGS:
            merged[name] = min((run[name] for run in runs), key=lambda r: r["step"])
        return merged
    rounds = {"one": [], "one_1t": [], "two": [], "half_1t": []}
    for _ in range(args.rounds):   # interleaved, so a burst of load hits all variants alike
        rounds["one"].append(measure(me, 2))
        rounds["two"].append(measure(mpiexec + me, 1))
        rounds["one_1t"].append(measure(me, 1))
        rounds["half_1t"].append(measure(me + ["--share", "2"], 1))
        if args.baseline:
            rounds.setdefault("base", []).append(measure(mpiexec + me, 1, args.baseline))
    one, one_1t, two = best(rounds["one"]), best(rounds["one_1t"]), best(rounds["two"])
    half_1t = best(rounds["half_1t"])
    print(f"\nper global step, float32, median of {args.steps} steps, best of {args.rounds} "
          f"rounds")
    print(f"{'config':8} {'1p x 2t ms':>11} {'1p x 1t ms':>11} {'2r x 1t ms':>11} "
          f"{'2r/1p x2t':>10} {'in MPI ms':>9} {'MB sent/rank':>13}")
    for name in CONFIGS:
        a, c, b = one[name], one_1t[name], two[name]
        print(f"{name:8} {a['step'] * 1e3:11.2f} {c['step'] * 1e3:11.2f} {b['step'] * 1e3:11.2f} "
              f"{a['step'] / b['step']:9.2f}x {b['comm'] * 1e3:9.2f} {b['bytes'] / 1e6:13.2f}")
    print("(2r/1p x2t: throughput of 2 ranks relative to 1 process with 2 threads; in MPI: "
          "time inside MPI calls, including waiting for the slower rank)")
    if args.baseline:
        base = best(rounds["base"])
        print(f"\nbaseline {args.baseline}, 2 ranks x 1 thread, same rounds:")
        for name in CONFIGS:
            a, b, c = one[name], two[name], base[name]
            print(f"{name:8} {c['step'] * 1e3:11.2f} ms ({a['step'] / c['step']:.2f}x of 1p x 2t;"
                  f" this tree {c['step'] / b['step']:.2f}x faster), in MPI "
                  f"{c['comm'] * 1e3:.2f} ms, {c['bytes'] / 1e6:.2f} MB sent/rank")
    alpha, bandwidth = two["alpha"], two["bandwidth"]
    print(f"\nmeasured here: alpha {alpha * 1e6:.1f} us, bandwidth {bandwidth / 1e9:.2f} GB/s "
          f"(shared memory)")
    print("cost model check at P = 2: compute (1-thread step / 2 vs 2-rank step minus its MPI "
          "time) and communication (model vs time in MPI):")
    for name in CONFIGS:
        b, c = two[name], one_1t[name]
        comm_model = predict(0.0, b["n_params"], b["bn_widths"], 2, alpha, bandwidth)
        computed = b["step"] - b["comm"]
        print(f"  {name:8} compute {c['step'] / 2 * 1e3:8.2f} vs {computed * 1e3:8.2f} ms,"
              f" communication {comm_model * 1e3:6.2f} vs {b['comm'] * 1e3:6.2f} ms, step "
              f"{(c['step'] / 2 + comm_model) * 1e3:8.2f} vs {b['step'] * 1e3:8.2f} ms")
    print("one rank's share alone (1 process x 1 thread on batch / 2 rows, no communication, "
          "but the optimizer update over all parameters, which a rank applies to 1/P of them): "
          "the model's 1-thread step / 2 leaves out what does not shrink with the rows (the "
          "dW products' shorter sums, each call's fixed cost):")
    for name in CONFIGS:
        h, c = half_1t[name], one_1t[name]
        print(f"  {name:8} {h['step'] * 1e3:8.2f} ms ({h['step'] / c['step']:.0%} of the "
              f"full-batch 1-thread step)")
    print("\npredicted on a 10 GB/s network, alpha 2 us (compute per rank = 1-thread step / P):")
    print(f"{'config':8} {'P':>5} {'step ms':>9} {'efficiency':>11}")
    for name in CONFIGS:
        c, b = one_1t[name], two[name]
        for P in (8, 64, 512):
            t = predict(c["step"], b["n_params"], b["bn_widths"], P, 2e-6, 10e9)
            print(f"{name:8} {P:5d} {t * 1e3:9.3f} {c['step'] / P / t:10.0%}")


if __name__ == "__main__":
    main()
