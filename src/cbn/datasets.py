"""Data sets to try cbn on: ``from cbn.datasets import load_digits_split``.

The demo (``python -m cbn``), the README's examples and the tests train on these.
"""
import numpy as np


def load_digits_split(test_fraction=0.25, seed=0):
    """scikit-learn's bundled 8x8 digits, scaled to [0, 1] and split into train and test.

    Returns (X_train, y_train, X_test, y_test). Needs scikit-learn (``pip install cbn[demo]``).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("the digits data comes with scikit-learn: "
                          "pip install 'cbn[demo]' (or pip install scikit-learn)") from None
    digits = load_digits()
    X = digits.data / 16.0
    y = digits.target
    order = np.random.default_rng(seed).permutation(len(X))
    n_test = int(round(test_fraction * len(X)))
    test, train = order[:n_test], order[n_test:]
    return X[train], y[train], X[test], y[test]
