"""A row's predictions are the same bits whatever batch it is in.

Batch sizes straddle every vector width, row group and row block of the kernel
(cbn_model.c: 1-4 rows through the few-rows kernel, units 8/16 at a time; else groups of
8/16 rows, blocks of 32/64 rows, units 6 at a time) and the old 4096-row chunk; rows sit at different positions; one and two threads; both builds
(baseline and AVX2) give the same bits.
"""
import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest

import cbn
from cbn import _predict

SIZES = sorted({1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 47, 48, 49, 63, 64, 65, 95, 96,
                97, 127, 128, 129, 255, 256, 257, 1023, 1024, 1025, 4095, 4096, 4097})
COMBOS = [(a, o, bn) for a in ("relu", "leaky_relu", "tanh", "sigmoid", "linear")
          for o in ("softmax", "sigmoid", "linear") for bn in (True, False)]


def network(dtype, activation, output, batchnorm, sizes=(19, 29, 13, 4)):
    net = cbn.Network(list(sizes), activation=activation, output=output, batchnorm=batchnorm,
                      dtype=dtype, seed=5)
    rng = np.random.default_rng(6)
    for layer in net.layers[:-1]:
        if layer.batchnorm:
            layer.running_mean[...] = rng.standard_normal(layer.n_out)
            layer.running_var[...] = rng.uniform(0.3, 3.0, layer.n_out)
            layer.gamma[...] = rng.uniform(0.5, 2.0, layer.n_out)
    return net


@pytest.fixture
def kernel_threads():
    """cbn.set_num_threads, put back to following the BLAS afterwards."""
    yield cbn.set_num_threads
    cbn.set_num_threads(None)


def outputs(net, X):
    return net.predict(X) if net.output == "linear" else net.predict_proba(X)


@pytest.mark.parametrize("threads", ["1", "2"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation,output,batchnorm", COMBOS)
def test_rows_do_not_depend_on_their_batch(kernel_threads, threads, dtype, activation, output,
                                           batchnorm):
    kernel_threads(int(threads))
    net = network(dtype, activation, output, batchnorm)
    rng = np.random.default_rng(7)
    X = (2 * rng.standard_normal((4200, 19))).astype(dtype)
    full = outputs(net, X)
    for size in SIZES:
        start = int(rng.integers(0, X.shape[0] - size + 1))
        assert np.array_equal(outputs(net, X[start:start + size]), full[start:start + size]), size
    for i in (0, 1, 7, 8, 15, 16, 63, 64, 4095, 4096, 4097, 4199):   # alone
        assert np.array_equal(outputs(net, X[i:i + 1]), full[i:i + 1]), i
    subset = rng.permutation(X.shape[0])[:777]                       # any subset, any order
    assert np.array_equal(outputs(net, X[subset]), full[subset])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mnist_sized_rows_do_not_depend_on_batch_or_threads(kernel_threads, dtype):
    net = network(dtype, "relu", "softmax", True, sizes=(784, 512, 256, 10))
    X = np.random.default_rng(8).standard_normal((4200, 784)).astype(dtype)
    kernel_threads(2)
    full = net.predict_proba(X)
    kernel_threads(1)
    assert np.array_equal(net.predict_proba(X), full)
    for size in (1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 255, 256, 257):
        for start in (0, 4090 - size // 2):
            assert np.array_equal(net.predict_proba(X[start:start + size]),
                                  full[start:start + size]), (size, start)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_in_place_edits_of_the_parameters_are_seen(dtype):
    # inference caches the arrays' addresses per network; values are read at every call
    net = network(dtype, "relu", "softmax", True)
    X = np.random.default_rng(9).standard_normal((5, 19)).astype(dtype)
    before = {n: outputs(net, X[:n]) for n in (1, 5)}
    net.layers[0].W[...] *= 1.5
    net.layers[0].running_var[...] *= 2.0
    net.layers[0].gamma[...] += 0.25
    net.layers[-1].b[...] -= 0.5
    fresh = network(dtype, "relu", "softmax", True)
    for name in ("W", "b", "gamma", "beta", "running_mean", "running_var"):
        for mine, theirs in zip(fresh.layers, net.layers):
            if getattr(mine, name) is not None:
                getattr(mine, name)[...] = getattr(theirs, name)
    for n in (1, 5):
        after = outputs(net, X[:n])
        assert not np.array_equal(after, before[n])
        assert np.array_equal(after, outputs(fresh, X[:n]))


def test_evaluate_and_predict_agree_with_predict_proba(rng):
    net = network(np.float64, "tanh", "softmax", True)
    X = rng.standard_normal((300, 19))
    y = rng.integers(0, 4, 300)
    proba = net.predict_proba(X)
    assert np.array_equal(net.predict(X), proba.argmax(axis=1))
    assert net.evaluate(X, y)["accuracy"] == np.mean(proba.argmax(axis=1) == y)


def test_overflow_is_still_an_error():
    net = network(np.float32, "linear", "softmax", False)
    with pytest.raises(FloatingPointError, match="overflowed"):
        net.predict_proba(np.full((3, 19), 3e38, np.float32))


DIGESTS = r"""
import hashlib, json
import numpy as np
import cbn
from cbn import _predict
digests = {}
for dtype in (np.float32, np.float64):
    for act in ("relu", "leaky_relu", "tanh", "sigmoid", "linear"):
        for out in ("softmax", "sigmoid", "linear"):
            for bn in (True, False):
                net = cbn.Network([37, 45, 29, 5], activation=act, output=out, batchnorm=bn,
                                  dtype=dtype, seed=1)
                X = np.random.default_rng(2).standard_normal((203, 37)).astype(dtype)
                f = net.predict if out == "linear" else net.predict_proba
                y = f(X)
                for a, b in [(0, 1), (1, 3), (3, 6), (6, 10), (10, 15), (200, 203)]:
                    # 1-4 rows take the few-rows kernel: the same bits in this build too
                    assert np.array_equal(f(X[a:b]), y[a:b]), (dtype, act, out, bn, a, b)
                digests[f"{dtype.__name__} {act} {out} {bn}"] = hashlib.sha256(y.tobytes()).hexdigest()
                # a 4096-row block, then a last block of 3 rows (the few-rows kernel)
                X2 = np.random.default_rng(3).standard_normal((4099, 37)).astype(dtype)
                y2 = f(X2)
                assert np.array_equal(f(X2[-3:]), y2[-3:])
                digests[f"{dtype.__name__} {act} {out} {bn} 4099"] = hashlib.sha256(y2.tobytes()).hexdigest()
print(json.dumps({"instruction_set": _predict.INSTRUCTION_SET, "digests": digests}))
"""


def run_digests(off=None):
    """The digests in a process with the build `off` names turned off (CBN_NO_AVX2/512)."""
    env = {k: v for k, v in os.environ.items() if k not in ("CBN_NO_AVX2", "CBN_NO_AVX512")}
    if off:
        env[off] = "1"
    proc = subprocess.run([sys.executable, "-c", DIGESTS], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


def test_every_inference_build_gives_identical_bits():
    default, no_avx512, baseline = (run_digests(), run_digests("CBN_NO_AVX512"),
                                    run_digests("CBN_NO_AVX2"))
    assert baseline["instruction_set"] == "baseline"
    assert default["instruction_set"] == _predict.INSTRUCTION_SET
    assert no_avx512["instruction_set"] in ("avx2", "baseline")
    flags = cpu_flags()   # which builds this machine really ran (Linux x86-64 builds)
    if sys.platform.startswith("linux") and platform.machine() == "x86_64" and \
            os.environ.get("CBN_AVX2") != "0":
        if {"avx2", "fma"} <= flags:
            assert no_avx512["instruction_set"] == "avx2"
        if {"avx2", "fma", "avx512f"} <= flags:
            assert default["instruction_set"] == "avx512"
    assert len(default["digests"]) == 120
    assert default["digests"] == no_avx512["digests"] == baseline["digests"]
