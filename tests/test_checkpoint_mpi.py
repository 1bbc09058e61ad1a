"""fit(checkpoint=...) with comm on 2 MPI ranks: kill one rank, resume, compare bit for bit.

One rank is killed at seeded random moments: with SIGKILL (the launcher then ends the
job) or with SIGTERM (every rank stops at the same step, rank 0 writes, all raise
TrainingInterrupted). The job is restarted until it finishes and its result must equal an
uninterrupted 2-rank run exactly, on both ranks. Skips without mpi4py/mpiexec unless
CBN_REQUIRE_MPI=1 (CI), as tests/test_mpi.py does.
"""
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from test_mpi import MPIEXEC, WHY_NOT, needs_mpi

WORKER = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    from mpi4py import MPI
    import cbn

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    path, result, every = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = np.random.default_rng(0)
    X = rng.standard_normal((500, 12))
    y = rng.integers(0, 4, 500)
    shard = slice(0, 300) if rank == 0 else slice(300, 500)   # uneven shards
    net = cbn.Network([12, 32, 16, 4], seed=3, comm=comm)
    original = net._step

    def step(Xb, tb):  # tells the parent that training runs, on which rank, from which step
        if step.first:
            print("resumed-from", net.optimizer.t, rank, os.getpid(), flush=True)
            step.first = False
        return original(Xb, tb)
    step.first = True
    net._step = step
    kwargs = dict(epochs=4, batch_size=32, validation_data=(X[:40], y[:40]),
                  lr_schedule=cbn.InverseTimeDecay(3e-3, 0.5),
                  callbacks=[cbn.EarlyStopping("val_loss", patience=4)])
    if path != "-":
        kwargs.update(checkpoint=path, checkpoint_every=every)
    try:
        net.fit(X[shard], y[shard], **kwargs)
    except cbn.TrainingInterrupted:
        sys.exit(75)
    history = {k: v for k, v in net.history.items() if k != "time"}
    net.gather_optimizer_state()
    np.savez(f"{result}.{rank}.npz", params=net._params, running=net._running,
             t=net.optimizer.t, lr=net.optimizer.lr,
             rng=json.dumps(net._rng.bit_generator.state), history=json.dumps(history),
             **{"opt." + k: v for k, v in net.optimizer.state.items()})
""")


def launch(folder, *args):
    if MPIEXEC is None:
        pytest.fail(f"CBN_REQUIRE_MPI=1 but {WHY_NOT}")
    script = folder / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    return subprocess.Popen(MPIEXEC + ["-n", "2", sys.executable, str(script), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def checkpoint_id(path):
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_ino, info.st_mtime_ns


def wait_for_a_new_checkpoint(path, before, proc, timeout=60.0):
    """Until this run has written a checkpoint of its own (a save replaces the file) or has
    ended: a kill before that would only restart the run from where the last one began."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None and checkpoint_id(path) == before:
        time.sleep(0.001)


def results(prefix):
    loaded = []
    for rank in (0, 1):
        with np.load(f"{prefix}.{rank}.npz") as f:
            loaded.append({k: f[k] for k in f.files})
    return loaded


def assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Both ranks' result without kills, and how long the training took."""
    folder = tmp_path_factory.mktemp("mpi-reference")
    proc = launch(folder, "-", folder / "r", 0)
    proc.stdout.readline()
    start = time.monotonic()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    rank0, rank1 = results(folder / "r")
    assert_same(rank0, rank1)   # the ranks are bit-identical
    return rank0, time.monotonic() - start


@needs_mpi
@pytest.mark.parametrize("sig, seed", [(signal.SIGKILL, 0), (signal.SIGTERM, 1)])
def test_killing_one_rank_resumes_bit_for_bit(tmp_path, uninterrupted, sig, seed):
    reference, duration = uninterrupted
    rand = random.Random(seed)
    kills, starts, codes = 2, [], []
    for attempt in range(kills + 1):
        before = checkpoint_id(tmp_path / "run.ckpt")
        proc = launch(tmp_path, tmp_path / "run.ckpt", tmp_path / "result", 3)
        pids, seen = {}, ""
        while len(pids) < 2:   # both ranks train (the launcher may merge their lines)
            line = proc.stdout.readline().replace("\0", "")
            if not line:
                break
            seen += line
            for t, rank, pid in re.findall(r"resumed-from (\d+) (\d+) (\d+)", line):
                pids[int(rank)] = int(pid)
                starts.append(int(t))
        if attempt < kills and len(pids) == 2:
            # then soon: most of the duration is start-up and exit, not training, and a kill
            # after the last step leaves the next run nothing to resume
            wait_for_a_new_checkpoint(tmp_path / "run.ckpt", before, proc)
            time.sleep(rand.uniform(0.0, 0.05 * duration))
            victim = pids[rand.randrange(2)]
            try:
                os.kill(victim, sig)
            except ProcessLookupError:  # it had finished already
                pass
        out, err = proc.communicate(timeout=60)
        codes.append(proc.returncode)
        if attempt == kills:
            assert proc.returncode == 0, (seen, out, err)
        if proc.returncode == 0:
            break
        if sig == signal.SIGTERM:  # every rank stopped at the same step, the state saved
            assert out.count("TrainingInterrupted") + err.count("Traceback") == 0, err
            assert not (tmp_path / "run.ckpt.partial").exists()
    rank0, rank1 = results(tmp_path / "result")
    assert_same(rank0, reference)
    assert_same(rank1, reference)
    if sig == signal.SIGTERM:
        assert 75 in codes, (starts, codes)   # the ranks stopped together through TrainingInterrupted
    assert any(t > 0 for t in starts[2:]), (starts, codes)   # some run really resumed
    pairs = list(zip(starts[0::2], starts[1::2]))
    assert all(a == b for a, b in pairs), pairs    # both ranks resumed from the same step
