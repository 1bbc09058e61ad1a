"""cbn.FrozenNetwork: an immutable inference snapshot run by the C library's loader and kernels.

Its outputs are the network's own bits at the time of freezing (1-4 rows go through W packed
at load, more through the row kernels), later changes to the network do not reach it, and bad
input or files give the errors Network gives.
"""
import copy
import pickle
import threading

import numpy as np
import pytest

import cbn

COMBOS = [(a, o, bn) for a in ("relu", "leaky_relu", "tanh", "sigmoid", "linear")
          for o in ("softmax", "sigmoid", "linear") for bn in (True, False)]
# few rows (1-4) and the row kernels; 91 units cover 4 packed panels side by side, a single
# panel and the units past the last panel (cbn_model.c), in both dtypes
SIZES = (1, 2, 3, 4, 5, 16, 17, 300)


def network(dtype, activation="relu", output="softmax", batchnorm=True, sizes=(43, 91, 13, 4)):
    net = cbn.Network(list(sizes), activation=activation, output=output, batchnorm=batchnorm,
                      dtype=dtype, seed=11)
    rng = np.random.default_rng(12)
    for layer in net.layers[:-1]:
        if layer.batchnorm:
            layer.running_mean[...] = rng.standard_normal(layer.n_out)
            layer.running_var[...] = rng.uniform(0.3, 3.0, layer.n_out)
    return net


def outputs(model, X):
    return model.predict(X) if model.output == "linear" else model.predict_proba(X)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation,output,batchnorm", COMBOS)
def test_frozen_outputs_are_the_networks_bits(dtype, activation, output, batchnorm):
    net = network(dtype, activation, output, batchnorm)
    frozen = net.freeze()
    X = (2 * np.random.default_rng(13).standard_normal((300, 43))).astype(dtype)
    for n in SIZES:
        start = 300 - n if n % 2 else 0
        got, expected = outputs(frozen, X[start:start + n]), outputs(net, X[start:start + n])
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert got.tobytes() == expected.tobytes(), n
    assert np.array_equal(frozen.predict(X), net.predict(X))
    assert frozen.layer_sizes == (43, 91, 13, 4)
    assert frozen.output == output and frozen.dtype == dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_frozen_outputs_on_the_mnist_sized_network(dtype):
    net = network(dtype, sizes=(784, 512, 256, 10))
    frozen = net.freeze()
    X = np.random.default_rng(14).standard_normal((70, 784)).astype(dtype)
    for n in (1, 2, 3, 4, 5, 70):
        assert frozen.predict_proba(X[:n]).tobytes() == net.predict_proba(X[:n]).tobytes(), n


def test_a_frozen_network_does_not_see_later_changes():
    net = network(np.float32)
    X = np.random.default_rng(15).standard_normal((4, 43)).astype(np.float32)
    frozen = net.freeze()
    before = net.predict_proba(X)
    net.layers[0].W[...] *= -1.0                     # in place: the network sees it
    net.layers[0].running_mean[...] += 1.0
    net.train_step(np.random.default_rng(16).standard_normal((32, 43)), np.arange(32) % 4)
    assert not np.array_equal(net.predict_proba(X), before)
    assert np.array_equal(frozen.predict_proba(X), before)
    assert np.array_equal(net.freeze().predict_proba(X), net.predict_proba(X))


def test_load_reads_a_saved_model(tmp_path):
    net = network(np.float64, "tanh", "sigmoid", True)
    net.fit(np.random.default_rng(17).standard_normal((64, 43)),
            (np.random.default_rng(18).random((64, 4)) > 0.5).astype(float), epochs=1,
            batch_size=16, verbose=0)
    path = tmp_path / "model.safetensors"
    net.save(path)
    frozen = cbn.FrozenNetwork.load(path)
    X = np.random.default_rng(19).standard_normal((9, 43))
    assert np.array_equal(frozen.predict_proba(X), net.predict_proba(X))
    assert np.array_equal(frozen.predict(X), net.predict(X))
    assert "FrozenNetwork(layer_sizes=[43, 91, 13, 4], output='sigmoid', dtype=float64)" \
        == repr(frozen)


def test_bad_files_and_bad_data_are_refused(tmp_path):
    net = network(np.float32)
    path = tmp_path / "model.safetensors"
    net.save(path)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x10                                  # a tensor byte: the checksum fails
    (tmp_path / "damaged.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged.safetensors.*checksum"):
        cbn.FrozenNetwork.load(tmp_path / "damaged.safetensors")
    (tmp_path / "short").write_bytes(b"\x01\x02")
    with pytest.raises(ValueError, match="short' is not a loadable cbn model file: "):
        cbn.FrozenNetwork.load(tmp_path / "short")
    with pytest.raises(ValueError, match="not a readable"):
        cbn.FrozenNetwork.load(tmp_path)              # a folder
    with pytest.raises(FileNotFoundError):
        cbn.FrozenNetwork.load(tmp_path / "missing")
    with pytest.raises(TypeError, match="path"):
        cbn.FrozenNetwork.load(3.5)
    with pytest.raises(TypeError, match="data: expected the bytes"):
        cbn.FrozenNetwork("model.safetensors")
    with pytest.raises(ValueError, match="data: not a loadable"):
        cbn.FrozenNetwork(b"")
    good = path.read_bytes()
    frozen = cbn.FrozenNetwork(np.frombuffer(good, np.uint8))     # any buffer of the bytes
    assert frozen.layer_sizes == net.freeze().layer_sizes
    with pytest.raises(ValueError, match="data: not a loadable"):  # doubles: read as bytes
        cbn.FrozenNetwork(memoryview(np.zeros(4)))
    with pytest.raises(TypeError, match="non-contiguous"):
        cbn.FrozenNetwork(memoryview(good)[::2])
    net.layers[1].W[0, 0] = np.nan
    with pytest.raises(ValueError, match="freeze: the network cannot be frozen.*finite"):
        net.freeze()


def test_a_frozen_network_cannot_be_changed():
    frozen = network(np.float64).freeze()
    for name, value in (("dtype", np.float32), ("layer_sizes", (2, 91, 13, 4)),
                        ("output", "linear"), ("anything", 1)):
        with pytest.raises(AttributeError):
            setattr(frozen, name, value)
    assert copy.copy(frozen) is frozen and copy.deepcopy(frozen) is frozen
    # what the kernel trusts is checked again below the Python layer
    with pytest.raises(ValueError, match="C-contiguous float64 array of shape"):
        frozen._model.forward(np.zeros((3, 43), np.float32))
    with pytest.raises(ValueError, match="C-contiguous float64 array of shape"):
        frozen._model.forward(np.zeros((3, 44)))
    with pytest.raises(ValueError, match="C-contiguous float64 array of shape"):
        frozen._model.forward(np.zeros((43, 3)).T)


def test_bad_input_is_refused_like_the_networks():
    frozen = network(np.float32).freeze()
    X = np.zeros((3, 43), np.float32)
    with pytest.raises(ValueError, match="expected 43 features"):
        frozen.predict_proba(np.zeros((3, 42)))
    with pytest.raises(ValueError, match="2-D"):
        frozen.predict(np.zeros(43))
    X[1, 7] = np.nan
    with pytest.raises(ValueError, match="finite"):
        frozen.predict_proba(X)
    X[1, 7] = np.inf
    with pytest.raises(ValueError, match="finite"):
        frozen.predict(X)
    with pytest.raises(TypeError, match="real numbers"):
        frozen.predict([["a"] * 43])
    with pytest.raises(FloatingPointError, match="overflowed"):
        network(np.float32, "linear", "softmax", False).freeze().predict_proba(
            np.full((2, 43), 3e38, np.float32))
    linear = network(np.float64, output="linear").freeze()
    with pytest.raises(ValueError, match="no probabilities"):
        linear.predict_proba(np.zeros((1, 43)))
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(frozen)


def test_four_threads_share_one_frozen_network():
    net = network(np.float32, sizes=(64, 96, 10))
    frozen = net.freeze()
    rng = np.random.default_rng(20)
    batches = [rng.standard_normal((n, 64)).astype(np.float32) for n in (1, 3, 200, 2)]
    expected = [net.predict_proba(X) for X in batches]
    failures = []

    def work(i):
        for _ in range(200):
            if not np.array_equal(frozen.predict_proba(batches[i]), expected[i]):
                failures.append(i)
                return

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
