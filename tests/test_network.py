"""The Network: whole-network finite differences, batch-norm semantics, seeding, save/load."""
import numpy as np
import pytest

import cbn

import _reference as ref

ACTIVATIONS = ["relu", "leaky_relu", "tanh", "sigmoid", "linear"]
OUTPUTS = ["softmax", "sigmoid", "linear"]


def targets_for(output, rng, m, k):
    if output == "softmax":
        return rng.integers(0, k, m)
    if output == "sigmoid":
        return rng.integers(0, 2, (m, k)).astype(float)
    return rng.standard_normal((m, k))


def randomize_batchnorm(net, rng):
    for layer in net.layers:
        if layer.batchnorm:
            layer.gamma[...] = rng.uniform(0.5, 2.0, layer.n_out)
            layer.beta[...] = rng.uniform(-1.0, 1.0, layer.n_out)


@pytest.mark.parametrize("batchnorm", [True, False], ids=["bn", "no-bn"])
@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("m", [2, 8])
def test_gradients_match_finite_differences(activation, output, batchnorm, m):
    rng = np.random.default_rng(7)
    # with 2 rows a hidden unit's normalized values are +-sqrt(var / (var + eps)) whatever
    # Z is, so the gradients below it flow only through eps: a large eps keeps them sizable
    bn_eps = 0.5 if m == 2 else 1e-5
    net = cbn.Network([4, 6, 5, 3], activation=activation, output=output, batchnorm=batchnorm,
                      dtype="float64", bn_eps=bn_eps, negative_slope=0.1, seed=3)
    randomize_batchnorm(net, rng)
    X = 2.0 * rng.standard_normal((m, 4)) + 1.5   # non-zero mean
    y = targets_for(output, rng, m, 3)
    loss, grads = net.loss_and_gradients(X, y, input_gradient=True)
    assert set(grads) == set(net.parameters()) | {"X"}

    def f():
        return net.loss_and_gradients(X, y)[0]

    for name, array in list(net.parameters().items()) + [("X", X)]:
        # a larger floor than the kernels': a whole network's loss carries more rounding
        # noise (~1e-9) into the differences of gradients that are exactly zero
        error = ref.relative_error(grads[name], ref.numerical_gradient(f, array), floor=1e-3)
        assert error < 1e-5, f"{name}: relative error {error:.2e}"
    assert net.loss_and_gradients(X, y)[0] == loss  # X and parameters restored exactly


def test_float32_network_agrees_with_float64():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 10)) * 3 + 2
    y = rng.integers(0, 4, 64)
    results = {}
    for dtype in ("float32", "float64"):
        net = cbn.Network([10, 32, 16, 4], dtype=dtype, seed=5)
        results[dtype] = net.loss_and_gradients(X, y)
    loss32, grads32 = results["float32"]
    loss64, grads64 = results["float64"]
    assert loss32 == pytest.approx(loss64, rel=1e-5)
    for name, g64 in grads64.items():
        np.testing.assert_allclose(grads32[name], g64, rtol=1e-3, atol=1e-4 * np.abs(g64).max())


def test_loss_and_gradients_changes_nothing():
    rng = np.random.default_rng(1)
    net = cbn.Network([5, 8, 3], seed=0, dtype="float64")
    X, y = rng.standard_normal((16, 5)), rng.integers(0, 3, 16)
    net.train_step(X, y)
    before = {name: a.copy() for name, a in net._arrays().items()}
    t = net.optimizer.t
    net.loss_and_gradients(X + 1, y)
    assert net.optimizer.t == t
    for name, array in net._arrays().items():
        np.testing.assert_array_equal(array, before[name], err_msg=name)


def test_train_step_updates_running_statistics_pytorch_style():
    rng = np.random.default_rng(2)
    net = cbn.Network([3, 4, 2], seed=0, dtype="float64", bn_momentum=0.25)
    X, y = rng.standard_normal((10, 3)) + 4, rng.integers(0, 2, 10)
    Z = X @ net.layers[0].W.T  # before the step changes W
    net.train_step(X, y)
    layer = net.layers[0]
    np.testing.assert_allclose(layer.running_mean, 0.25 * Z.mean(0), rtol=1e-12)
    np.testing.assert_allclose(layer.running_var, 0.75 + 0.25 * Z.var(0, ddof=1), rtol=1e-12)


def test_inference_is_pure_and_differs_from_training_mode():
    rng = np.random.default_rng(3)
    net = cbn.Network([6, 10, 10, 3], seed=1)
    X, y = rng.standard_normal((40, 6)) + 1, rng.integers(0, 3, 40)
    net.fit(X, y, epochs=2, batch_size=8)
    state = {name: a.copy() for name, a in net._arrays().items()}
    first = net.predict_proba(X)
    scores = net.evaluate(X, y)
    np.testing.assert_array_equal(net.predict_proba(X), first)
    np.testing.assert_array_equal(net.predict(X), first.argmax(axis=1))
    for name, array in net._arrays().items():
        np.testing.assert_array_equal(array, state[name], err_msg=name)
    # training mode normalizes with the batch's statistics, inference with the running ones
    assert net.loss_and_gradients(X, y)[0] != pytest.approx(scores["loss"], rel=1e-3)
    np.testing.assert_allclose(first.sum(axis=1), 1.0, rtol=1e-5)
    assert net.predict_proba(X[:1]).shape == (1, 3)  # one row is fine in inference


def test_batch_of_one_row():
    net = cbn.Network([3, 4, 2], seed=0)
    with pytest.raises(ValueError, match="X: expected at least 2 rows .batch norm"):
        net.train_step(np.ones((1, 3)), [1])
    with pytest.raises(ValueError, match="X: expected at least 2 rows"):
        net.loss_and_gradients(np.ones((1, 3)), [1])
    plain = cbn.Network([3, 4, 2], batchnorm=False, seed=0)
    assert np.isfinite(plain.train_step(np.ones((1, 3)), [1]))


@pytest.mark.parametrize("m, batch_size, sizes", [
    (33, 8, [8, 8, 8, 9]),      # the 1-row remainder joins the batch before it
    (34, 8, [8, 8, 8, 8, 2]),
    (32, 8, [8, 8, 8, 8]),
    (3, 2, [3]),
    (5, 64, [5]),
])
def test_fit_never_trains_on_one_row(m, batch_size, sizes):
    bounds = cbn.Network._batch_bounds(m, batch_size)
    assert [stop - start for start, stop in bounds] == sizes
    assert bounds[0][0] == 0 and bounds[-1][1] == m
    net = cbn.Network([2, 3, 2], seed=0)
    rng = np.random.default_rng(0)
    net.fit(rng.standard_normal((m, 2)), rng.integers(0, 2, m), epochs=2, batch_size=batch_size)
    assert net.optimizer.t == 2 * len(sizes)


def fitted_network(seed, X, y, **kwargs):
    net = cbn.Network([8, 16, 16, 3], seed=seed, **kwargs)
    net.fit(X, y, epochs=3, batch_size=10)
    return net


def test_same_seed_gives_bit_identical_weights(dtype):
    rng = np.random.default_rng(4)
    X, y = rng.standard_normal((55, 8)), rng.integers(0, 3, 55)
    a = fitted_network(11, X, y, dtype=dtype)
    b = fitted_network(11, X, y, dtype=dtype)
    c = fitted_network(12, X, y, dtype=dtype)
    for name, array in a._arrays().items():
        np.testing.assert_array_equal(array, b._arrays()[name], err_msg=name)
    assert not np.array_equal(a._params, c._params)


@pytest.mark.parametrize("output", OUTPUTS)
def test_loss_decreases(output, dtype):
    rng = np.random.default_rng(5)
    X = rng.standard_normal((200, 6))
    logits = X @ rng.standard_normal((6, 3))
    y = {"softmax": logits.argmax(1), "sigmoid": (logits > 0).astype(float), "linear": logits}[output]
    net = cbn.Network([6, 32, 32, 3], output=output, dtype=dtype, seed=0)
    history = net.fit(X, y, epochs=30, batch_size=20)
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    if output != "linear":
        assert history["accuracy"][-1] > 0.9


def test_history_records_every_epoch():
    rng = np.random.default_rng(6)
    X, y = rng.standard_normal((30, 4)), rng.integers(0, 2, 30)
    net = cbn.Network([4, 5, 2], seed=0)
    history = net.fit(X, y, epochs=4, batch_size=8, validation_data=(X[:10], y[:10]))
    assert sorted(history) == ["accuracy", "loss", "time", "val_accuracy", "val_loss"]
    assert history.epochs == 4 and all(len(v) == 4 for v in history.values())
    assert history["val_loss"][-1] == pytest.approx(net.evaluate(X[:10], y[:10])["loss"])
    assert net.history is history


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "rmsprop", "adam"])
def test_save_load_round_trip_and_resume(tmp_path, optimizer):
    rng = np.random.default_rng(8)
    X, y = rng.standard_normal((50, 5)), rng.integers(0, 3, 50)
    net = cbn.Network([5, 12, 7, 3], optimizer=optimizer, seed=2, dtype="float64")
    net.fit(X, y, epochs=2, batch_size=8)
    path = tmp_path / "model.safetensors"
    net.save(path)
    loaded = cbn.Network.load(path)
    assert repr(loaded) == repr(net)
    np.testing.assert_array_equal(loaded.predict_proba(X), net.predict_proba(X))
    # training on from the file matches training on without it, step for step
    h1 = net.fit(X, y, epochs=2, batch_size=8)
    h2 = loaded.fit(X, y, epochs=2, batch_size=8)
    assert h1["loss"] == h2["loss"]
    for name, array in net._arrays().items():
        np.testing.assert_array_equal(array, loaded._arrays()[name], err_msg=name)


def test_save_replaces_existing_file_and_load_refuses_tampering(tmp_path):
    net = cbn.Network([3, 4, 2], seed=0)
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"old")
    net.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # no temporary left
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 1  # the last byte of the last tensor
    (tmp_path / "edited.safetensors").write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="checksum mismatch"):
        cbn.Network.load(tmp_path / "edited.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a model file")
    with pytest.raises(ValueError, match="not a readable cbn model file"):
        cbn.Network.load(tmp_path / "junk.safetensors")


def test_layers_expose_live_views():
    net = cbn.Network([3, 4, 4, 2], batchnorm=True, seed=0)
    hidden, out = net.layers[0], net.layers[-1]
    assert hidden.b is None and hidden.gamma.shape == (4,) and hidden.running_var.shape == (4,)
    assert out.gamma is None and out.running_mean is None and out.b.shape == (2,)
    assert out.W.shape == (2, 4)
    assert list(net.parameters()) == ["0.W", "0.gamma", "0.beta", "1.W", "1.gamma", "1.beta",
                                      "2.W", "2.b"]
    X = np.ones((2, 3))
    before = net.predict_proba(X)
    out.b[...] = [5.0, -5.0]   # written in place, seen by the network
    assert not np.allclose(net.predict_proba(X), before)
    with pytest.raises(AttributeError, match="assign in place"):
        out.W = np.zeros((2, 4))
    plain = cbn.Network([3, 4, 2], batchnorm=False, seed=0)
    assert plain.layers[0].gamma is None and plain.layers[0].b.shape == (4,)
    assert list(plain.parameters()) == ["0.W", "0.b", "1.W", "1.b"]


def test_initialization():
    net = cbn.Network([400, 300, 300, 10], activation="relu", seed=0, dtype="float64")
    assert net.layers[0].W.std() == pytest.approx(np.sqrt(2 / 400), rel=0.02)      # He
    assert net.layers[-1].W.std() == pytest.approx(np.sqrt(2 / 310), rel=0.05)     # Glorot
    tanh = cbn.Network([400, 300, 10], activation="tanh", seed=0)
    assert tanh.layers[0].W.std() == pytest.approx(np.sqrt(2 / 700), rel=0.02)
    assert np.all(net.layers[0].gamma == 1) and np.all(net.layers[0].beta == 0)
    assert np.all(net.layers[0].running_var == 1) and np.all(net.layers[-1].b == 0)
    f32 = cbn.Network([400, 300, 300, 10], seed=0, dtype="float32")
    np.testing.assert_array_equal(f32.layers[0].W, net.layers[0].W.astype(np.float32))


def test_any_layout_and_dtype_of_input_is_accepted():
    rng = np.random.default_rng(9)
    net = cbn.Network([4, 6, 3], dtype="float64", seed=0)
    X = rng.integers(-3, 4, (10, 4))
    y = rng.integers(0, 3, 10)
    expected = net.loss_and_gradients(X.astype(np.float64), y)[0]
    read_only = X.astype(np.float64)
    read_only.flags.writeable = False
    variants = [X, np.asfortranarray(X), np.repeat(X, 2, axis=1)[:, ::2], read_only,
                X.astype(np.float32), X.tolist(), X[::-1][::-1]]
    for variant in variants:
        assert net.loss_and_gradients(variant, y)[0] == expected
    assert net.loss_and_gradients(X, y.astype(float))[0] == expected  # integral float labels


# ---------------------------------------------------------------- state_dict / load_state_dict

def trained(seed=0, dtype="float32"):
    rng = np.random.default_rng(seed)
    X, y = rng.standard_normal((40, 5)), rng.integers(0, 3, 40)
    net = cbn.Network([5, 8, 3], seed=seed, dtype=dtype)
    net.fit(X, y, epochs=2, batch_size=8)
    return net, X, y


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_state_dict_round_trip_restores_weights_bit_for_bit(dtype):
    net, X, y = trained(dtype=dtype)
    state = net.state_dict()
    assert set(state) == {"params", "running"}
    assert state["params"].dtype == np.dtype(dtype) and state["params"].size == net.n_params
    flat = np.concatenate([v.ravel() for v in net.parameters().values()])
    assert np.array_equal(state["params"], flat)
    layer = net.layers[0]
    assert np.array_equal(state["running"], np.concatenate([layer.running_mean, layer.running_var]))
    before, t = net.predict_proba(X), net.optimizer.t
    adam_m = net.optimizer.state["m"].copy()
    net.fit(X, y, epochs=1, batch_size=8)  # moves the weights, not the copy
    assert not np.array_equal(net.predict_proba(X), before)
    assert np.array_equal(state["params"], flat)
    net.load_state_dict(state)
    assert np.array_equal(net.predict_proba(X), before)
    assert net.optimizer.t > t and not np.array_equal(net.optimizer.state["m"], adam_m)


def test_state_dict_copies_into_out_without_allocating():
    net, X, y = trained()
    out = net.state_dict()
    params, running = out["params"], out["running"]
    net.fit(X, y, epochs=1, batch_size=8)
    again = net.state_dict(out=out)
    assert again is out and out["params"] is params and out["running"] is running
    assert np.array_equal(params, net.state_dict()["params"])


@pytest.mark.parametrize("state, error, match", [
    ([1, 2], TypeError, r"state: expected a dict with the keys 'params' and 'running'"),
    ({"params": np.zeros(3)}, TypeError, r"got \['params'\]"),
    ({"params": np.zeros(3), "running": np.zeros(16)}, ValueError,
     r"state\['params'\]: expected shape \(83,\) \(this network's buffer\), got \(3,\)"),
    ({"params": np.full(83, np.nan), "running": np.zeros(16)}, ValueError,
     r"state\['params'\]: expected finite values"),
    ({"params": np.zeros(83), "running": ["a"] * 16}, TypeError, r"state\['running'\]"),
])
def test_load_state_dict_refuses_bad_states_and_changes_nothing(state, error, match):
    net, X, _ = trained()
    assert net.n_params == 83
    before = net.state_dict()
    with pytest.raises(error, match=match):
        net.load_state_dict(state)
    after = net.state_dict()
    assert np.array_equal(after["params"], before["params"])
    assert np.array_equal(after["running"], before["running"])


def test_state_dict_out_must_be_this_networks_writable_arrays():
    net, _, _ = trained()
    other = cbn.Network([5, 8, 3], seed=0, dtype="float64").state_dict()
    with pytest.raises(TypeError, match=r"out\['params'\]: expected a writable float32 array"):
        net.state_dict(out=other)
    small = cbn.Network([5, 4, 3], seed=0).state_dict()
    with pytest.raises(ValueError, match=r"out\['params'\]: expected shape"):
        net.state_dict(out=small)
