"""Bad input: every public entry raises ValueError/TypeError naming the argument."""
import numpy as np
import pytest

import cbn


@pytest.fixture
def net():
    return cbn.Network([4, 5, 3], seed=0)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((6, 4)), rng.integers(0, 3, 6)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"layer_sizes": [4]}, ValueError, "layer_sizes: expected at least 2 sizes"),
    ({"layer_sizes": [4, 0, 3]}, ValueError, r"layer_sizes\[1\]: expected an integer >= 1, got 0"),
    ({"layer_sizes": [4, -2, 3]}, ValueError, r"layer_sizes\[1\]"),
    ({"layer_sizes": [4, 2.5, 3]}, TypeError, r"layer_sizes\[1\]: expected an integer"),
    ({"layer_sizes": "4,3"}, TypeError, "layer_sizes: expected a list"),
    ({"layer_sizes": [4, 1], "output": "softmax"}, ValueError, "at least 2 classes"),
    ({"activation": "relu6"}, ValueError, "activation: expected one of 'relu', .*got 'relu6'"),
    ({"output": "softplus"}, ValueError, "output: expected one of"),
    ({"optimizer": "adagrad"}, ValueError, "optimizer: expected one of 'sgd'"),
    ({"optimizer": 3}, ValueError, "optimizer: expected"),
    ({"dtype": "float16"}, ValueError, "dtype: expected 'float32' or 'float64', got 'float16'"),
    ({"dtype": "int"}, ValueError, "dtype: expected"),
    ({"bn_momentum": 1.5}, ValueError, r"bn_momentum: expected a finite number in \[0, 1\], got 1.5"),
    ({"bn_momentum": -0.1}, ValueError, "bn_momentum"),
    ({"bn_momentum": float("nan")}, ValueError, "bn_momentum"),
    ({"bn_eps": 0}, ValueError, "bn_eps: expected"),
    ({"negative_slope": -0.5}, ValueError, "negative_slope: expected"),
    ({"seed": -1}, ValueError, "seed: expected an integer >= 0"),
    ({"seed": "abc"}, TypeError, "seed: expected an integer"),
    ({"batchnorm": "yes"}, TypeError, "batchnorm: expected True or False"),
])
def test_constructor_errors(kwargs, error, message):
    kwargs = {"layer_sizes": [4, 5, 3], **kwargs}
    with pytest.raises(error, match=message):
        cbn.Network(kwargs.pop("layer_sizes"), **kwargs)


@pytest.mark.parametrize("method", ["train_step", "loss_and_gradients", "evaluate", "fit"])
@pytest.mark.parametrize("X, error, message", [
    (np.ones(4), ValueError, r"X: expected a 2-D array of shape \(n_samples, 4\), got an array of shape \(4,\)"),
    (np.ones((6, 3)), ValueError, "X: expected 4 features .columns., got 3"),
    (np.full((6, 4), np.nan), ValueError, "X: expected finite values, got NaN or infinity"),
    (np.full((6, 4), np.inf), ValueError, "X: expected finite values"),
    (np.full((6, 4), 1e300), ValueError, "X: expected finite values"),  # inf once in float32
    (np.ones((6, 4), complex), TypeError, "X: expected an array of real numbers, got dtype complex128"),
    (np.array([["a"] * 4] * 6), TypeError, "X: expected an array of real numbers, got dtype <U1"),
    (np.empty((6, 4), object), TypeError, "X: expected an array of real numbers, got dtype object"),
    ([[1, 2], [3]], TypeError, "X: expected an array of real numbers"),
    (np.ones((0, 4)), ValueError, "X: expected at least"),
])
def test_bad_X(net, method, X, error, message):
    y = np.zeros(6, int)
    with pytest.raises(error, match=message):
        getattr(net, method)(X, y)


@pytest.mark.parametrize("y, message", [
    (np.array([0, 1, 2, 3, 0, 1]), r"y: expected class indices in \[0, 2\], got values in \[0, 3\]"),
    (np.array([0, 1, -1, 0, 0, 1]), r"y: expected class indices in \[0, 2\]"),
    (np.array([0, 1.5, 2, 0, 0, 1]), "y: expected integer class indices"),
    (np.array([0, 1, 2]), r"y: expected class indices of shape \(6,\), one per row of X, got shape \(3,\)"),
    (np.zeros((6, 3)), r"y: expected class indices of shape \(6,\)"),
    (np.array([0, np.nan, 2, 0, 0, 1]), "y: expected finite values"),
])
def test_bad_softmax_labels(net, data, y, message):
    X, _ = data
    for method in (net.train_step, net.loss_and_gradients, net.evaluate, net.fit):
        with pytest.raises(ValueError, match=message):
            method(X, y)


def test_bad_sigmoid_and_linear_targets(data):
    X, _ = data
    sig = cbn.Network([4, 5, 2], output="sigmoid", seed=0)
    with pytest.raises(ValueError, match=r"y: expected targets in \[0, 1\] for a sigmoid output"):
        sig.train_step(X, np.full((6, 2), 2.0))
    with pytest.raises(ValueError, match=r"y: expected shape \(6, 2\)"):
        sig.train_step(X, np.zeros((6, 3)))
    lin = cbn.Network([4, 5, 1], output="linear", seed=0)
    with pytest.raises(ValueError, match="y: expected finite values"):
        lin.train_step(X, np.full(6, np.inf))
    with pytest.raises(TypeError, match="y: expected an array of real numbers"):
        lin.train_step(X, ["a"] * 6)
    assert np.isfinite(lin.train_step(X, np.arange(6)))           # (n,) accepted for 1 output
    assert np.isfinite(lin.train_step(X, np.arange(6)[:, None]))  # and (n, 1)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"epochs": 0}, ValueError, "epochs: expected an integer >= 1, got 0"),
    ({"epochs": 2.0}, TypeError, "epochs: expected an integer"),
    ({"batch_size": 1}, ValueError, "batch_size: expected an integer >= 2, got 1"),
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"verbose": -1}, ValueError, "verbose"),
    ({"validation_data": np.ones((2, 4))}, TypeError, r"validation_data: expected a pair \(X_val, y_val\)"),
    ({"validation_data": (np.ones((2, 3)), [0, 1])}, ValueError, r"validation_data\[0\]: expected 4 features"),
    ({"validation_data": (np.ones((2, 4)), [0, 9])}, ValueError, r"validation_data\[1\]: expected class indices in"),
])
def test_bad_fit_arguments(net, data, kwargs, error, message):
    X, y = data
    with pytest.raises(error, match=message):
        net.fit(X, y, **kwargs)
    assert net.optimizer.t == 0  # validated before any step


def test_predict_errors(net):
    with pytest.raises(ValueError, match="X: expected 4 features"):
        net.predict(np.ones((2, 5)))
    with pytest.raises(ValueError, match="X: expected finite values"):
        net.predict_proba(np.full((2, 4), np.nan))
    with pytest.raises(ValueError, match="predict_proba: a network with output='linear'"):
        cbn.Network([4, 2], output="linear").predict_proba(np.ones((2, 4)))


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        cbn.Network.load(tmp_path / "missing.safetensors")
    np.savez(tmp_path / "other.npz", weights=np.ones(3))
    with pytest.raises(ValueError, match="no cbn configuration"):
        cbn.Network.load(tmp_path / "other.npz")


def test_batches_already_in_shape_are_not_copied_and_others_are_converted():
    """The per-batch checks pass a C-ordered array of the network's dtype through as is
    (no copy per training step); anything else becomes one, refused if it overflows."""
    from cbn import _validation as check
    X = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    assert check.check_features("X", X, 3, np.float32) is X
    for other in (np.asfortranarray(X), X.astype(np.float64), X[:, ::-1].copy()[:, ::-1]):
        converted = check.check_features("X", other, 3, np.float32)
        assert converted.flags.c_contiguous and converted.dtype == np.float32
        np.testing.assert_array_equal(converted, other)
    with pytest.raises(ValueError, match="^X: expected finite values"):
        check.check_features("X", np.full((2, 3), 1e300), 3, np.float32)
    Y = np.random.default_rng(1).random((5, 2)).astype(np.float32)
    assert np.shares_memory(check.check_targets("y", Y, "sigmoid", 2, 5, np.float32), Y)
    assert not np.shares_memory(check.check_targets("y", Y.astype(np.float64), "sigmoid", 2, 5,
                                                    np.float32), Y)
    with pytest.raises(ValueError, match="^y: expected finite values"):
        check.check_targets("y", np.full((5, 2), 1e300), "linear", 2, 5, np.float32)
