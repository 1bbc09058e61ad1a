"""Long runs keep memory flat; kernels release the GIL; threads give the results of a
sequential run (several networks trained at once, one network predicting from 4 threads)."""
import os
import sys
import threading
import time

import numpy as np
import pytest

import cbn
from cbn import _kernels

STEPS = 20_000


def resident_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads /proc (Linux)")
def test_20000_steps_and_predictions_keep_memory_flat():
    rng = np.random.default_rng(0)
    net = cbn.Network([16, 32, 32, 4], seed=0)
    X = rng.standard_normal((64, 16)).astype(np.float32)
    y = rng.integers(0, 4, 64)
    batches = [(X[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    warm_up = 1_000

    def train(steps):
        for i in range(steps):
            net.train_step(*batches[i % 4])

    def predict(calls):
        for i in range(calls):
            (net.predict_proba if i % 2 else net.predict)(batches[i % 4][0])

    train(warm_up)
    predict(warm_up)
    start = resident_bytes()
    train(STEPS)
    after_training = resident_bytes()
    predict(STEPS)
    end = resident_bytes()
    assert net.optimizer.t == warm_up + STEPS
    growth_mb = [(after_training - start) / 2**20, (end - after_training) / 2**20]
    print(f"resident memory growth: training {growth_mb[0]:.2f} MB, prediction "
          f"{growth_mb[1]:.2f} MB over {STEPS} calls each")
    assert max(growth_mb) < 2.0, growth_mb


# ----------------------------------------------------------------------------- threads

def big_kernel_calls():
    """One call per kernel module, each long enough (tens of ms) to be seen from Python."""
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((1500, 1000))
    b = np.zeros(1000)
    A = np.empty_like(Z)
    stats = [np.empty(1000) for _ in range(3)]
    labels = rng.integers(0, 1000, 1500)
    p, g = rng.standard_normal(1_500_000), rng.standard_normal(1_500_000)
    m, v = np.zeros_like(p), np.zeros_like(p)
    return {
        "activations": lambda: _kernels.bias_activation_forward(
            A, Z, b, _kernels.ACTIVATIONS["tanh"]),
        "batchnorm": lambda: _kernels.batchnorm_activation_forward(
            A, *stats, Z, b + 1, b, 1e-5, _kernels.ACTIVATIONS["sigmoid"]),
        "losses": lambda: _kernels.softmax_cross_entropy(A, Z, b, labels),
        "optimizers": lambda: _kernels.adam_update(p, m, v, g, 1e-3, 0.9, 0.999, 1e-8, 1),
    }


@pytest.mark.parametrize("module", ["activations", "batchnorm", "losses", "optimizers"])
def test_kernels_release_the_gil(module):
    """With a 10 s switch interval a thread that keeps the GIL keeps it until it finishes;
    the main thread still gets to run while a worker calls the kernel over and over only
    if the kernel lets go of the GIL."""
    kernel = big_kernel_calls()[module]
    done = threading.Event()

    def worker():
        deadline = time.perf_counter() + 0.6
        while time.perf_counter() < deadline:
            kernel()
        done.set()

    previous = sys.getswitchinterval()
    sys.setswitchinterval(10.0)
    try:
        thread = threading.Thread(target=worker)
        thread.start()
        ran_meanwhile = 0
        while not done.is_set():
            time.sleep(0.005)  # gives the GIL away; needs it back to count
            ran_meanwhile += not done.is_set()
        thread.join()
    finally:
        sys.setswitchinterval(previous)
    assert ran_meanwhile >= 5


def training_runs():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((200, 10))
    specs = [dict(optimizer="adam", seed=0), dict(optimizer="momentum", seed=1, dtype="float64"),
             dict(optimizer="rmsprop", seed=2, activation="tanh"),
             dict(optimizer="sgd", seed=3, batchnorm=False)]
    return [(cbn.Network([10, 32, 16, 3], **spec), X, rng.integers(0, 3, 200)) for spec in specs]


def test_networks_trained_in_parallel_threads_equal_sequential_training():
    sequential = training_runs()
    for net, X, y in sequential:
        net.fit(X, y, epochs=3, batch_size=16, validation_data=(X, y))
    parallel = training_runs()
    threads = [threading.Thread(target=net.fit, args=(X, y),
                                kwargs=dict(epochs=3, batch_size=16, validation_data=(X, y)))
               for net, X, y in parallel]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for (a, _, _), (b, _, _) in zip(sequential, parallel):
        np.testing.assert_array_equal(a._params, b._params)
        np.testing.assert_array_equal(a._running, b._running)
        assert a.history["val_loss"] == b.history["val_loss"]


def test_concurrent_predict_on_one_network_agrees_with_single_threaded():
    rng = np.random.default_rng(2)
    net = cbn.Network([10, 32, 32, 5], seed=0)
    net.fit(rng.standard_normal((256, 10)), rng.integers(0, 5, 256), epochs=2)
    inputs = [rng.standard_normal((n, 10)) for n in (1, 7, 100, 4100)]  # 4100: two chunks
    expected = [(net.predict(X), net.predict_proba(X), net.evaluate(X, np.zeros(len(X), int)))
                for X in inputs]
    failures = []

    def worker(k):
        for i in range(12):
            j = (i + k) % len(inputs)
            X = inputs[j]
            got = (net.predict(X), net.predict_proba(X), net.evaluate(X, np.zeros(len(X), int)))
            if not (np.array_equal(got[0], expected[j][0])
                    and np.array_equal(got[1], expected[j][1]) and got[2] == expected[j][2]):
                failures.append((k, i))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
