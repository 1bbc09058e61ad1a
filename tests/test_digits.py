"""Learning on real data: scikit-learn's bundled 8x8 digits (a test extra)."""
import pytest

import cbn
from cbn.datasets import load_digits_split


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_digits_held_out_accuracy_with_batchnorm(dtype):
    X_train, y_train, X_test, y_test = load_digits_split(seed=0)
    net = cbn.Network([64, 128, 64, 10], batchnorm=True, optimizer=cbn.Adam(lr=1e-3),
                      dtype=dtype, seed=0)
    history = net.fit(X_train, y_train, epochs=20, batch_size=32,
                      validation_data=(X_test, y_test))
    accuracy = net.evaluate(X_test, y_test)["accuracy"]
    assert accuracy >= 0.95
    assert history["val_accuracy"][-1] == accuracy
    assert (net.predict(X_test) == y_test).mean() == accuracy


def test_the_old_module_name_still_imports():
    from cbn import _datasets
    import cbn.datasets
    assert _datasets.load_digits_split is cbn.datasets.load_digits_split
