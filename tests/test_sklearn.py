"""The scikit-learn estimators: scikit-learn's own checks, labels, pipelines, pickling."""
import pickle

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from cbn.datasets import load_digits_split  # noqa: E402
from cbn.sklearn import BatchNormMLPClassifier, BatchNormMLPRegressor  # noqa: E402

# max_iter is kept small on purpose here; test_attributes_after_fit checks the warning itself
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

# small, so the whole check suite runs in seconds; every check passes (none is expected to fail)
SMALL = dict(hidden_layer_sizes=(16,), max_iter=30, learning_rate=1e-2)


@parametrize_with_checks([cls(**SMALL, dtype=dtype)
                          for cls in (BatchNormMLPClassifier, BatchNormMLPRegressor)
                          for dtype in ("float32", "float64")])
def test_sklearn_checks(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def digits():
    return load_digits_split()


def test_string_labels_round_trip(digits):
    X_train, y_train, X_test, y_test = digits
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                      "nine"])
    clf = BatchNormMLPClassifier((32,), max_iter=15, batch_size=32, random_state=0)
    clf.fit(X_train, names[y_train])
    assert clf.classes_.tolist() == sorted(names.tolist())
    assert set(clf.predict(X_test)) <= set(names)
    assert clf.score(X_test, names[y_test]) > 0.9
    proba = clf.predict_proba(X_test)
    assert proba.shape == (len(X_test), 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert np.array_equal(clf.classes_[proba.argmax(axis=1)], clf.predict(X_test))


def test_attributes_after_fit(digits):
    X_train, y_train, _, _ = digits
    with pytest.warns(ConvergenceWarning, match="max_iter=3"):
        clf = BatchNormMLPClassifier((16,), max_iter=3, random_state=0).fit(X_train, y_train)
    assert clf.n_iter_ == 3 and len(clf.loss_curve_) == 3
    assert clf.loss_curve_[-1] < clf.loss_curve_[0]
    assert clf.validation_scores_ is None
    assert clf.network_.layer_sizes == (64, 16, 10)


def test_early_stopping_keeps_the_best_validation_epoch(digits):
    X_train, y_train, _, _ = digits
    clf = BatchNormMLPClassifier((32,), max_iter=200, early_stopping=True, n_iter_no_change=3,
                                 learning_rate=0.05, random_state=0).fit(X_train, y_train)
    assert clf.n_iter_ < 200  # stopped by the validation loss, not by max_iter
    assert len(clf.validation_scores_) == clf.n_iter_
    assert 0.8 < max(clf.validation_scores_) <= 1.0


def test_partial_fit_trains_one_epoch_per_call(digits):
    X_train, y_train, X_test, y_test = digits
    clf = BatchNormMLPClassifier((32,), random_state=0)
    with pytest.raises(ValueError, match="not among classes_"):
        clf.partial_fit(X_train[:50], np.where(y_train[:50] == 9, 10, y_train[:50]),
                        classes=np.arange(10))
    clf = BatchNormMLPClassifier((32,), batch_size=32, learning_rate=1e-2, random_state=0)
    for _ in range(5):
        clf.partial_fit(X_train, y_train, classes=np.arange(10))
    assert clf.n_iter_ == 5 and len(clf.loss_curve_) == 5
    assert clf.score(X_test, y_test) > 0.9


def test_warm_start_continues_training(digits):
    X_train, y_train, _, _ = digits
    clf = BatchNormMLPClassifier((16,), max_iter=2, warm_start=True, random_state=0)
    clf.fit(X_train, y_train)
    first = clf.network_
    clf.fit(X_train, y_train)
    assert clf.network_ is first and clf.n_iter_ == 4


def test_multilabel_uses_sigmoid_outputs(rng):
    X = rng.standard_normal((300, 5))
    Y = np.column_stack([X[:, 0] > 0, X[:, 1] + X[:, 2] > 0, X[:, 3] < -0.5]).astype(int)
    clf = BatchNormMLPClassifier((32,), max_iter=60, learning_rate=1e-2, random_state=0)
    clf.fit(X, Y)
    assert clf.network_.output == "sigmoid"
    assert clf.predict(X).shape == Y.shape and clf.predict_proba(X).shape == Y.shape
    assert np.mean(clf.predict(X) == Y) > 0.9


def test_multi_output_regression(rng):
    X = rng.standard_normal((400, 4))
    Y = np.column_stack([X[:, 0] - 2 * X[:, 1], np.sin(X[:, 2]) + X[:, 3]])
    reg = BatchNormMLPRegressor((32,), max_iter=100, learning_rate=1e-2, random_state=0)
    reg.fit(X, Y)
    assert reg.predict(X).shape == (400, 2)
    assert reg.score(X, Y) > 0.9
    assert reg.fit(X, Y[:, 0]).predict(X[:3]).shape == (3,)


def test_pipeline_grid_search_clone_and_pickle(digits):
    X_train, y_train, X_test, y_test = digits
    pipe = make_pipeline(StandardScaler(),
                         BatchNormMLPClassifier(max_iter=8, batch_size=32, random_state=0))
    search = GridSearchCV(pipe, {"batchnormmlpclassifier__hidden_layer_sizes": [(8,), (32,)],
                                 "batchnormmlpclassifier__batchnorm": [True, False]}, cv=2)
    search.fit(X_train, y_train)
    assert len(search.cv_results_["mean_test_score"]) == 4
    assert search.score(X_test, y_test) > 0.85
    best = search.best_estimator_
    copy = pickle.loads(pickle.dumps(best))
    assert np.array_equal(copy.predict_proba(X_test), best.predict_proba(X_test))
    fresh = clone(best[-1])
    assert fresh.get_params() == best[-1].get_params() and not hasattr(fresh, "network_")


def test_bad_hyper_parameters_are_reported_at_fit(digits):
    X_train, y_train, _, _ = digits
    with pytest.raises(ValueError, match="optimizer"):
        BatchNormMLPClassifier(optimizer="lbfgs").fit(X_train, y_train)
    with pytest.raises(ValueError, match="validation_fraction"):
        BatchNormMLPClassifier(early_stopping=True, validation_fraction=1.5).fit(X_train, y_train)
    with pytest.raises(ValueError, match="max_iter"):
        BatchNormMLPClassifier(max_iter=0).fit(X_train, y_train)


def test_import_cbn_does_not_import_optional_packages():
    import subprocess
    import sys
    code = ("import sys, cbn; bad = [m for m in ('sklearn', 'matplotlib', 'tqdm') "
            "if m in sys.modules]; sys.exit(str(bad) if bad else 0)")
    subprocess.run([sys.executable, "-c", code], check=True)


# The default configuration (100 hidden units, 200 epochs) as users get it (issue 12:
# check_methods_subset_invariance failed for BatchNormMLPRegressor() before inference became
# batch-invariant); about 20 s.
@parametrize_with_checks([cls(dtype=dtype)
                          for cls in (BatchNormMLPClassifier, BatchNormMLPRegressor)
                          for dtype in ("float32", "float64")])
def test_sklearn_checks_with_default_parameters(estimator, check):
    check(estimator)
