"""scikit-learn estimators around :class:`cbn.Network` (``pip install 'cbn[sklearn]'``).

``BatchNormMLPClassifier`` (softmax for one label per sample, sigmoid outputs for multi-label
indicator targets) and ``BatchNormMLPRegressor`` (linear outputs, one or several targets).
Both follow scikit-learn's conventions, so they work in ``Pipeline``, ``GridSearchCV``,
``clone`` and pickle.
"""
import math
import numbers
import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from cbn.callbacks import EarlyStopping
from cbn.network import Network
from cbn.optimizers import OPTIMIZERS

__all__ = ["BatchNormMLPClassifier", "BatchNormMLPRegressor"]


class _BaseBatchNormMLP(BaseEstimator):
    """Shared fitting logic; subclasses say how targets become network outputs."""

    _output = None  # the Network output function, set by subclasses

    def __init__(self, hidden_layer_sizes=(100,), *, activation="relu", batchnorm=True,
                 optimizer="adam", learning_rate=1e-3, batch_size="auto", max_iter=200,
                 weight_decay=0.0, early_stopping=False, validation_fraction=0.1,
                 n_iter_no_change=10, tol=1e-4, random_state=None, verbose=0,
                 warm_start=False, dtype="float32"):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.batchnorm = batchnorm
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.weight_decay = weight_decay
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.random_state = random_state
        self.verbose = verbose
        self.warm_start = warm_start
        self.dtype = dtype

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    # ------------------------------------------------------------------ fitting

    def fit(self, X, y):
        """Train for up to ``max_iter`` epochs; returns self.

        Training stops once the training loss (or, with ``early_stopping``, the validation
        loss) has not improved by ``tol`` for ``n_iter_no_change`` epochs. With
        ``early_stopping`` the weights of the best validation epoch are kept. A
        ``ConvergenceWarning`` says when ``max_iter`` ran out first.
        """
        return self._fit(X, y, incremental=False)

    def _fit(self, X, y, *, incremental, classes=None):
        fresh = not hasattr(self, "network_") or not (incremental or self.warm_start)
        X, y = validate_data(self, X, y, reset=fresh, multi_output=True,
                             dtype=(np.float64, np.float32), y_numeric=self._output == "linear")
        targets = self._encode_targets(y, fresh, classes)
        if X.shape[0] < 2 and self.batchnorm:
            raise ValueError(f"batch norm needs at least 2 samples to train, got "
                             f"n_samples={X.shape[0]}")
        if fresh:
            self.network_ = self._new_network(X.shape[1], self._n_outputs)
            self.loss_curve_, self.n_iter_ = [], 0
            self.validation_scores_ = [] if self.early_stopping and not incremental else None
        epochs = 1 if incremental else _param_int("max_iter", self.max_iter, 1)
        callbacks, validation_data = [], None
        if not incremental:
            patience = _param_int("n_iter_no_change", self.n_iter_no_change, 1)
            if self.early_stopping:
                X, X_val, targets, t_val = self._split_validation(X, targets)
                validation_data = (X_val, t_val)
                if self.validation_scores_ is None:  # warm start after a fit without it
                    self.validation_scores_ = []
                callbacks.append(self._validation_score_recorder(X_val, t_val))
            monitor = "val_loss" if self.early_stopping else "loss"
            stopper = EarlyStopping(monitor, patience=patience, min_delta=self.tol,
                                    restore_best_weights=bool(self.early_stopping))
            callbacks.append(stopper)
        history = self.network_.fit(
            X, targets, epochs=epochs, batch_size=self._batch_size(X.shape[0]),
            validation_data=validation_data, verbose=self.verbose,
            weight_decay=self.weight_decay, callbacks=callbacks)
        self.loss_curve_.extend(history["loss"])
        self.n_iter_ += history.epochs
        if not incremental and stopper.stopped_epoch is None:
            warnings.warn(f"{type(self).__name__}: max_iter={epochs} epochs ran out before the "
                          f"{monitor.replace('_', ' ')} stopped improving", ConvergenceWarning)
        return self

    def _new_network(self, n_features, n_outputs):
        sizes = self.hidden_layer_sizes
        if isinstance(sizes, numbers.Integral):
            sizes = [sizes]
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer: expected one of {', '.join(map(repr, OPTIMIZERS))}, "
                             f"got {self.optimizer!r}")
        seed = self.random_state
        if not (seed is None or isinstance(seed, numbers.Integral)):
            # a RandomState instance: draw a seed from it, as scikit-learn's own models do
            seed = int(check_random_state(seed).randint(np.iinfo(np.int32).max))
        return Network([n_features, *sizes, n_outputs], activation=self.activation,
                       output=self._output, batchnorm=self.batchnorm,
                       optimizer=OPTIMIZERS[self.optimizer](lr=self.learning_rate),
                       dtype=self.dtype, seed=seed)

    def _batch_size(self, n_samples):
        if self.batch_size == "auto":
            return min(200, n_samples)
        return min(_param_int("batch_size", self.batch_size, 2 if self.batchnorm else 1),
                   n_samples)

    def _split_validation(self, X, targets):
        fraction = self.validation_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) \
                or not 0 < fraction < 1:
            raise ValueError(f"validation_fraction: expected a number in (0, 1), got {fraction!r}")
        n_val = math.ceil(fraction * X.shape[0])
        if X.shape[0] - n_val < 2:
            raise ValueError(f"early_stopping: validation_fraction={fraction} of "
                             f"n_samples={X.shape[0]} leaves fewer than 2 samples to train on")
        stratify = targets if self._output == "softmax" and np.bincount(targets).min() > 1 else None
        return train_test_split(X, targets, test_size=n_val, stratify=stratify,
                                random_state=self.network_.seed)

    def _validation_score_recorder(self, X_val, t_val):
        def record(net, epoch, history):
            self.validation_scores_.append(self._score_targets(X_val, t_val))
        return record

    # ------------------------------------------------------------------ prediction

    def _network_outputs(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        return self.network_, X


def _param_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


class BatchNormMLPClassifier(ClassifierMixin, _BaseBatchNormMLP):
    """Multi-layer perceptron classifier with batch normalization, trained by cbn.

    One label per sample (any labels, strings too) trains a softmax output with
    cross-entropy; a multi-label indicator matrix (n_samples, n_labels) of 0/1 trains one
    sigmoid output per label with binary cross-entropy.

    Parameters
    ----------
    hidden_layer_sizes : int or sequence of int, default=(100,)
        Units of each hidden layer.
    activation : {'relu', 'leaky_relu', 'tanh', 'sigmoid', 'linear'}, default='relu'
    batchnorm : bool, default=True
        Batch norm on every hidden layer (see :class:`cbn.Network`).
    optimizer : {'adam', 'sgd', 'momentum', 'rmsprop'}, default='adam'
    learning_rate : float, default=1e-3
    batch_size : int or 'auto', default='auto'
        Rows per step; 'auto' is ``min(200, n_samples)``.
    max_iter : int, default=200
        Most epochs per ``fit``.
    weight_decay : float, default=0.0
        L2 penalty: ``weight_decay * W`` is added to every ``dW`` (see ``Network.fit``).
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the data (stratified), stop when the validation
        loss stops improving and keep the best epoch's weights.
    validation_fraction : float, default=0.1
    n_iter_no_change : int, default=10
        Epochs without an improvement of at least ``tol`` before stopping.
    tol : float, default=1e-4
    random_state : int, RandomState or None, default=None
        Seeds initialization, shuffling and the validation split.
    verbose : int, default=0
        Passed to ``Network.fit``: 1 a progress bar per epoch, 2 a line per epoch.
    warm_start : bool, default=False
        Continue from the fitted network on the next ``fit`` instead of starting anew.
    dtype : {'float32', 'float64'}, default='float32'

    Attributes
    ----------
    classes_ : ndarray
        The class labels (for multi-label targets, the label indices 0..n_labels-1).
    network_ : cbn.Network
    loss_curve_ : list of float
        Training loss per epoch, over all ``fit``/``partial_fit`` calls since the last fresh start.
    validation_scores_ : list of float or None
        Validation accuracy per epoch with ``early_stopping``, else None.
    n_iter_ : int
        Epochs trained.
    n_features_in_ : int
    """

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags

    def partial_fit(self, X, y, classes=None):
        """One epoch over (X, y). The first call needs ``classes`` (all labels that will occur),
        unless y is a multi-label indicator matrix."""
        return self._fit(X, y, incremental=True, classes=classes)

    def _encode_targets(self, y, fresh, classes):
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        kind = type_of_target(y)
        if kind == "multilabel-indicator":
            if fresh:
                self._output, self._n_outputs = "sigmoid", y.shape[1]
                self.classes_ = np.arange(y.shape[1])
            elif self._output != "sigmoid" or y.shape[1] != self._n_outputs:
                raise ValueError(f"y: expected targets like the first fit's, got a "
                                 f"multi-label matrix of shape {y.shape}")
            return y.astype(np.float64)
        if y.ndim != 1:
            raise ValueError(f"y: expected one label per sample or a multi-label indicator "
                             f"matrix, got {kind} targets of shape {y.shape}")
        if fresh:
            labels = np.unique(y) if classes is None else np.unique(np.asarray(classes))
            if labels.size < 2:
                raise ValueError(f"y: a classifier needs at least 2 classes, got "
                                 f"{labels.size} class ({labels.tolist()!r})")
            self._output, self._n_outputs, self.classes_ = "softmax", labels.size, labels
        elif self._output != "softmax":
            raise ValueError("y: expected a multi-label indicator matrix like the first fit's, "
                             f"got targets of shape {y.shape}")
        indices = np.searchsorted(self.classes_, y)
        indices = np.minimum(indices, self.classes_.size - 1)
        unknown = self.classes_[indices] != y
        if unknown.any():
            raise ValueError(f"y: labels {np.unique(y[unknown]).tolist()!r} are not among "
                             f"classes_ {self.classes_.tolist()!r}")
        return indices

    def _score_targets(self, X, targets):
        predicted = self.network_.predict(X)
        if self._output == "sigmoid":
            return float(np.mean(np.all(predicted == targets, axis=1)))
        return float(np.mean(predicted == targets))

    def predict_proba(self, X):
        """Class probabilities, shape (n_samples, n_classes) (or (n_samples, n_labels))."""
        net, X = self._network_outputs(X)
        return net.predict_proba(X).astype(np.float64)

    def predict(self, X):
        """Class labels (a 0/1 indicator matrix for multi-label targets)."""
        net, X = self._network_outputs(X)
        predicted = net.predict(X)
        if self._output == "sigmoid":
            return predicted.reshape(X.shape[0], -1)
        return self.classes_[predicted]


class BatchNormMLPRegressor(RegressorMixin, _BaseBatchNormMLP):
    """Multi-layer perceptron regressor with batch normalization, trained by cbn.

    Linear outputs, mean squared error; y of shape (n_samples,) or (n_samples, n_targets).
    Targets are used as given: scale them (e.g. ``TransformedTargetRegressor`` with a
    ``StandardScaler``) when they are far from unit size.

    Parameters and attributes are those of :class:`BatchNormMLPClassifier` except
    ``classes_``; ``validation_scores_`` holds the validation R².
    """

    _output = "linear"

    def partial_fit(self, X, y):
        """One epoch over (X, y)."""
        return self._fit(X, y, incremental=True)

    def _encode_targets(self, y, fresh, classes):
        if fresh:
            self._n_outputs = 1 if y.ndim == 1 else y.shape[1]
            self._y_ndim = y.ndim
        elif (1 if y.ndim == 1 else y.shape[1]) != self._n_outputs:
            raise ValueError(f"y: expected {self._n_outputs} target column(s) like the first "
                             f"fit's, got shape {y.shape}")
        return y.reshape(y.shape[0], self._n_outputs)

    def _score_targets(self, X, targets):
        from sklearn.metrics import r2_score
        return float(r2_score(targets, self.network_.predict(X).reshape(targets.shape)))

    def predict(self, X):
        """Predicted values, shape (n_samples,) or (n_samples, n_targets) like the fitted y."""
        net, X = self._network_outputs(X)
        predicted = net.predict(X).astype(np.float64)
        if self._y_ndim == 1:
            return predicted.reshape(-1)
        return predicted.reshape(X.shape[0], self._n_outputs)
