"""cbn's own kernels on several threads (cbn._parallel): bit-identical to one thread.

Batch norm splits the units among threads, the optimizers and the divergence check split
the flat buffer; each unit (element) keeps the serial arithmetic, so the bytes must not
depend on the thread count. Sizes are large enough for the pool to split them into three
parts (at least 32768 elements per part).
"""
import ctypes
import hashlib
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import cbn
from cbn import _kernels as K
from cbn import _parallel


def kernel_digests():
    """sha256 of every training kernel's outputs on large inputs, per kernel."""
    rng = np.random.default_rng(3)
    digests = {}

    def digest(name, *arrays):
        h = hashlib.sha256()
        for a in arrays:
            h.update(np.ascontiguousarray(a).tobytes())
        digests[name] = h.hexdigest()

    for dtype in (np.float32, np.float64):
        N, D = 300, 1111   # 9 parts of >= 110 units possible; a remainder block
        Z = (3 * rng.standard_normal((N, D)) + rng.uniform(-5, 5, D)).astype(dtype)
        dA = rng.standard_normal((N, D)).astype(dtype)
        gamma = rng.uniform(0.5, 2, D).astype(dtype)
        beta = rng.uniform(-1, 1, D).astype(dtype)
        for act, code in K.ACTIVATIONS.items():
            A, dZ = np.empty_like(Z), np.empty_like(Z)
            mean, var, rstd = np.empty(D), np.empty(D), np.empty(D)
            dgamma, dbeta = np.empty_like(gamma), np.empty_like(gamma)
            K.batchnorm_activation_forward(A, mean, var, rstd, Z, gamma, beta, 1e-5, code, 0.1)
            K.batchnorm_activation_backward(dZ, dgamma, dbeta, dA, A, Z, gamma, mean, rstd,
                                            code, 0.1)
            # the phase kernels of data-parallel training
            m2, A2, dZt = np.empty(D), np.empty_like(Z), np.empty_like(Z)
            s, s_zc = np.empty(D), np.empty(D)
            dgamma2, dbeta2 = np.empty_like(gamma), np.empty_like(gamma)
            K.batchnorm_statistics(mean, m2, Z)
            K.batchnorm_activation_apply(A2, Z, gamma, beta, mean, rstd, code, 0.1)
            K.batchnorm_activation_backward_sums(dZt, dgamma2, dbeta2, s, s_zc, dA, A2, Z,
                                                 mean, rstd, code, 0.1)
            K.batchnorm_backward_finish(dZt, Z, gamma, mean, rstd, s, s_zc, float(N))
            digest(f"batchnorm {dtype.__name__} {act}", A, mean, var, rstd, dZ, dgamma, dbeta,
                   m2, A2, dZt, s, s_zc, dgamma2, dbeta2)
        n = 200_003
        for opt, state, args in (("sgd_update", 0, (0.1,)), ("momentum_update", 1, (0.1, 0.9)),
                                 ("rmsprop_update", 1, (0.01, 0.9, 1e-8)),
                                 ("adam_update", 2, (0.01, 0.9, 0.999, 1e-8))):
            param = rng.standard_normal(n).astype(dtype)
            buffers = [np.zeros(n, dtype) for _ in range(state)]
            for t in range(1, 4):
                grad = rng.standard_normal(n).astype(dtype)
                extra = (t,) if opt == "adam_update" else ()
                getattr(K, opt)(param, *buffers, grad, *args, *extra)
            digest(f"{opt} {dtype.__name__}", param, *buffers)
    return digests


@pytest.fixture
def threads():
    """Set the kernels' thread count for one test; restore "follow the BLAS" after."""
    yield cbn.set_num_threads
    cbn.set_num_threads(None)


@pytest.mark.skipif(not _parallel.THREADS_SUPPORTED, reason="this build runs kernels serially")
def test_kernels_give_the_same_bytes_on_1_2_and_3_threads(threads):
    results = {}
    for n in (1, 2, 3):
        threads(n)
        assert cbn.get_num_threads() == n
        results[n] = kernel_digests()
    assert len(results[1]) == 2 * 5 + 2 * 4
    for n in (2, 3):
        assert [k for k in results[1] if results[1][k] != results[n][k]] == []


@pytest.mark.parametrize("n", [0, 1, 255, 256, 70_001, 300_000])
def test_largest_magnitude_on_any_thread_count(threads, dtype, rng, n):
    x = rng.standard_normal(n).astype(dtype) * 3
    expected = float(np.max(np.abs(x))) if n else 0.0
    for count in (1, 3):
        threads(count)
        assert K.largest_magnitude(x) == expected
        if n >= 2:
            y = x.copy()
            y[n // 2] = np.inf
            assert K.largest_magnitude(y) == np.inf
            y[n - 1] = np.nan
            assert np.isnan(K.largest_magnitude(y))
            y[n // 2] = -7e30 if dtype == np.float32 else -7e300
            assert np.isnan(K.largest_magnitude(y))
            y[n - 1] = 0
            assert K.largest_magnitude(y) == abs(y[n // 2])


def test_training_is_bit_identical_on_1_and_3_threads(threads, dtype, rng):
    X = rng.standard_normal((256, 300)).astype(dtype)
    y = rng.integers(0, 10, 256)
    finals = []
    for count in (1, 3):
        threads(count)
        net = cbn.Network([300, 512, 384, 10], dtype=dtype, seed=4)
        losses = [net.train_step(X, y) for _ in range(3)]
        finals.append((losses, net._params.tobytes(), net._running.tobytes(),
                       net.optimizer.state["m"].tobytes(), net.optimizer.state["v"].tobytes()))
    assert finals[0] == finals[1]


def test_two_python_threads_sharing_the_pool_get_serial_results(threads, rng):
    """Two threads training at once (their kernels' regions and matrix products interleave
    on OpenBLAS's workers, or one runs serially while the other holds cbn's own pool): the
    results of training one after the other."""
    X = rng.standard_normal((256, 300)).astype(np.float32)
    y = rng.integers(0, 10, 256)

    def train(out, index):
        net = cbn.Network([300, 512, 384, 10], seed=index)
        for _ in range(5):
            net.train_step(X, y)
        out[index] = net._params.tobytes()

    threads(1)
    serial = {}
    for index in range(2):
        train(serial, index)
    threads(2)
    parallel = {}
    workers = [threading.Thread(target=train, args=(parallel, i)) for i in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert parallel == serial


def test_set_num_threads_refuses_bad_counts():
    with pytest.raises(TypeError, match="^n: expected an integer"):
        cbn.set_num_threads(1.5)
    with pytest.raises(ValueError, match="^n: expected an integer from 0 to 64"):
        cbn.set_num_threads(65)
    with pytest.raises(ValueError, match="^n: expected an integer >= 0"):
        cbn.set_num_threads(-1)


def count_in_child(env):
    proc = subprocess.run([sys.executable, "-c", "import cbn; print(cbn.get_num_threads())"],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout)


@pytest.mark.skipif(not _parallel.THREADS_SUPPORTED, reason="this build runs kernels serially")
def test_thread_count_follows_the_blas_or_CBN_NUM_THREADS():
    env = {k: "" for k in ("CBN_NUM_THREADS", "OMP_NUM_THREADS")}
    assert count_in_child({**env, "OPENBLAS_NUM_THREADS": "1"}) == 1
    if (os.cpu_count() or 1) >= 2:  # OpenBLAS caps its count at the cores
        assert count_in_child({**env, "OPENBLAS_NUM_THREADS": "2"}) == 2
    assert count_in_child({**env, "OPENBLAS_NUM_THREADS": "1", "CBN_NUM_THREADS": "3"}) == 3


def test_a_forked_child_starts_its_own_pool(threads, rng):
    if not hasattr(os, "fork"):
        pytest.skip("needs os.fork")
    threads(2)
    x = rng.standard_normal(300_000).astype(np.float32)
    expected = K.largest_magnitude(x)      # starts the parent's pool
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: the parent's pool threads do not exist here
        os.close(read)
        os.write(write, json.dumps(K.largest_magnitude(x)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        got = json.loads(f.read())
    os.waitpid(pid, 0)
    assert got == expected


# ---- where the parallel regions run: OpenBLAS's threads or cbn's own pool ---------------

def usable_cores():
    """The cores this process may run on (OpenBLAS caps its thread count at them)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# the routing tests need Linux's /proc and a parent that runs its kernels on OpenBLAS's
# workers (NumPy's OpenBLAS on pthreads, a default stack of at least 2 MiB)
needs_blas_route = pytest.mark.skipif(
    not _parallel.THREADS_SUPPORTED or not os.path.isdir("/proc/self/task")
    or usable_cores() < 2 or not _parallel._blas_runner(),
    reason="needs Linux, 2 cores and NumPy's OpenBLAS on pthreads")

# In a fresh process: does a kernel on 2 threads start a thread of its own once OpenBLAS's
# workers exist? Prints the pool's name and the number of threads it started.
COUNT_THREADS = """
import os, numpy as np, cbn, cbn._threads
from cbn import _kernels
cbn.set_num_threads(2)
np.ones((512, 512)) @ np.ones((512, 512))     # OpenBLAS's workers exist from here on
before = len(os.listdir("/proc/self/task"))
_kernels.largest_magnitude(np.ones(300_000, np.float32))
print(cbn._threads.thread_pool(), len(os.listdir("/proc/self/task")) - before)
"""


def in_child(code, env=None, stack_bytes=None):
    def limit_stack():
        import resource
        resource.setrlimit(resource.RLIMIT_STACK,
                           (stack_bytes, resource.getrlimit(resource.RLIMIT_STACK)[1]))
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        env={**os.environ, "CBN_THREAD_POOL": "", "OPENBLAS_NUM_THREADS": "2", **(env or {})},
        preexec_fn=limit_stack if stack_bytes else None)
    return proc.returncode, proc.stdout.split(), proc.stderr


@needs_blas_route
def test_kernels_run_on_openblas_threads_unless_CBN_THREAD_POOL_is_own():
    code, out, err = in_child(COUNT_THREADS)
    assert (code, out) == (0, ["blas", "0"]), err    # no thread of cbn's own
    code, out, err = in_child(COUNT_THREADS, {"CBN_THREAD_POOL": "own"})
    assert (code, out) == (0, ["own", "1"]), err     # cbn's pool starts its worker


def test_CBN_THREAD_POOL_refuses_other_values():
    code, _, err = in_child("import cbn", {"CBN_THREAD_POOL": "mine"})
    assert code != 0 and "CBN_THREAD_POOL: expected 'blas' or 'own', got 'mine'" in err


@needs_blas_route
def test_threads_with_less_stack_than_the_kernels_need_keep_cbns_own_pool():
    # a 1 MiB default thread stack (ulimit -s 1024): the kernels' frames take about
    # 300 KiB and OpenBLAS's workers get only the default, so they are not used
    code, out, err = in_child(COUNT_THREADS, stack_bytes=1 << 20)
    assert (code, out) == (0, ["own", "1"]), err


@needs_blas_route
def test_both_pools_give_the_bytes_of_one_thread(threads):
    _, getter = cbn._threads._find_openblas()
    if ctypes.CFUNCTYPE(ctypes.c_int)(getter)() < 2:
        pytest.skip("NumPy's BLAS runs on one thread here")   # 2 threads would not use it
    runner = _parallel._blas_runner()
    try:
        threads(1)
        serial = kernel_digests()
        threads(2)
        assert cbn._threads.thread_pool() == "blas"
        on_blas_threads = kernel_digests()
        _parallel._set_blas_runner(0)
        on_own_pool = kernel_digests()
    finally:
        _parallel._set_blas_runner(runner)
    assert on_blas_threads == serial
    assert on_own_pool == serial
