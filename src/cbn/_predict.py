"""Inference through cbn_model.c's fixed-order kernel (cbn._inference): the same bits for a
row whatever batch, chunk position or thread count it comes in, and the same bits as the C
library. The AVX2 + FMA build of the kernel is taken when the CPU has both (CBN_NO_AVX2=1 keeps
the baseline build), and within it the AVX-512 row kernels when the CPU has AVX-512F
(CBN_NO_AVX512=1 keeps them out); all run the same operation sequence per element (explicit
fused multiply-adds, exactly rounded).

Threads: large batches are split by rows between as many threads as cbn's other kernels use
(:func:`cbn.get_num_threads`: the BLAS's count, or :func:`cbn.set_num_threads`).
"""
import os

import numpy as np

from cbn import _distributed, _inference, _inference_avx2, _kernels, _model_file
from cbn import _validation as check

_NO_AVX2, _NO_AVX512 = (os.environ.get(name, "") not in ("", "0")
                        for name in ("CBN_NO_AVX2", "CBN_NO_AVX512"))
_BUILD = (_inference_avx2
          if _inference_avx2.INSTRUCTION_SET == "avx2" and _inference.cpu_has_avx2_fma()
          and not _NO_AVX2 else _inference)
_BUILD.limit_instruction_set(0 if _NO_AVX2 else 1 if _NO_AVX512 else 2)
INSTRUCTION_SET = _BUILD.instruction_set()   # "avx512", "avx2" or "baseline"


def forward(net, X, raw):
    """The network's outputs for X (validated, C-contiguous, net.dtype): what predict_proba
    returns, or with raw=True the output layer's W.a without its bias (for the loss).

    Raises FloatingPointError if a value of the output layer overflowed to inf or NaN."""
    return _checked(*_BUILD.forward(net, X, raw), X)


def _checked(out, overflowed, X):
    if overflowed:
        raise FloatingPointError(
            f"X: the network's outputs overflowed to infinity or NaN; the values of X "
            f"(max |X| = {np.abs(X).max():g}) are too large for "
            f"{X.dtype.name} computation")
    return out


def _predictions(output, outputs):
    """predict's answer from predict_proba's (the linear outputs for output="linear")."""
    if output == "softmax":
        return outputs.argmax(axis=1)
    if output == "sigmoid":
        outputs = (outputs > 0.5).astype(np.intp)
    return outputs[:, 0] if outputs.shape[1] == 1 else outputs


def _loaded_model(data, context):
    """The C library's model loaded from the bytes-like ``data``; a ValueError starts with
    ``context`` (what was being loaded)."""
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(f"data: expected the bytes of a cbn model file (bytes, bytearray or "
                        f"another buffer), got {type(data).__name__}") from None
    if not view.c_contiguous:
        raise TypeError("data: expected a contiguous buffer of bytes, got a non-contiguous "
                        "memoryview")
    try:
        return _BUILD.LoadedModel(view.cast("B") if view.format != "B" or view.ndim != 1
                                  else view)
    except ValueError as exc:
        raise ValueError(f"{context}: {exc}") from None


class FrozenNetwork:
    """An immutable snapshot of a network for inference: :meth:`Network.freeze`, or
    :meth:`load` from a model file.

    It runs on the C library (cbn_model.c) from its own copy of the values, so later changes
    to the network do not reach it, concurrent calls from several threads are safe, and W is
    kept a second time packed for the few-rows kernels (a Network cannot keep such a copy: it
    must see in-place edits of W at the next call), which makes 1-4 rows faster. Its outputs
    are the network's own bits (predict_proba, predict) at the time of freezing.
    """
    __slots__ = ("_model", "_layer_sizes", "_dtype", "_output")

    def __init__(self, data):
        """``data``: the bytes of a model file (format 2) holding a network's parameters and
        running statistics, as :meth:`Network.save` writes it."""
        self._set(_loaded_model(data, "data: not a loadable cbn model file"))

    def _set(self, model):
        self._model = model
        self._layer_sizes = tuple(model.layer_sizes)
        self._dtype = model.dtype
        self._output = {code: name for name, code in _inference.OUTPUTS.items()}[model.output]

    @classmethod
    def _of(cls, model):
        frozen = cls.__new__(cls)
        frozen._set(model)
        return frozen

    @classmethod
    def load(cls, path):
        """A frozen network from a model file written by :meth:`Network.save` (format 2)."""
        path, data = _model_file.read_model_file(path)
        return cls._of(_loaded_model(
            data, f"path: {os.fspath(path)!r} is not a loadable cbn model file"))

    @property
    def layer_sizes(self):
        return self._layer_sizes

    @property
    def dtype(self):
        return self._dtype

    @property
    def output(self):
        return self._output

    def _outputs(self, X):
        X = check.check_features("X", X, self._layer_sizes[0], self._dtype)
        return _checked(*self._model.forward(X), X)

    def predict_proba(self, X):
        """Class probabilities, as :meth:`Network.predict_proba`."""
        if self._output == "linear":
            raise ValueError("predict_proba: a network with output='linear' has no "
                             "probabilities; use predict")
        return self._outputs(X)

    def predict(self, X):
        """Predictions, as :meth:`Network.predict`."""
        return _predictions(self._output, self._outputs(X))

    def __copy__(self):
        return self   # immutable

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self):
        raise TypeError("a FrozenNetwork cannot be pickled; pickle or save the Network and "
                        "freeze it where it is loaded")

    def __repr__(self):
        return (f"FrozenNetwork(layer_sizes={list(self._layer_sizes)}, "
                f"output={self._output!r}, dtype={np.dtype(self._dtype).name})")


class InferenceMixin:
    """``predict``, ``predict_proba``, ``evaluate``; mixed into :class:`cbn.Network`."""

    def _logits(self, X):
        """Inference-mode output-layer W.A (without b); state untouched (see cbn._predict)."""
        return forward(self, X, raw=True)

    def _outputs(self, logits):
        """Apply the output function to logits (in place) and return them."""
        b = self.layers[-1].b
        if self.output == "softmax":
            _kernels.softmax_forward(logits, logits, b)
        else:
            code = _kernels.ACTIVATIONS["sigmoid" if self.output == "sigmoid" else "linear"]
            _kernels.bias_activation_forward(logits, logits, b, code, 0.0)
        return logits

    def predict_proba(self, X):
        """Class probabilities in inference mode (running statistics, left unchanged).

        Returns an ndarray of shape (n_samples, n_out): softmax rows, or per-output
        sigmoid probabilities.
        """
        if self.output == "linear":
            raise ValueError("predict_proba: a network with output='linear' has no "
                             "probabilities; use predict")
        X = check.check_features("X", X, self.layer_sizes[0], self.dtype)
        return forward(self, X, raw=False)

    def predict(self, X):
        """Predictions in inference mode: class indices (softmax), 0/1 labels (sigmoid) or
        values (linear). Single-output sigmoid and linear networks return shape (n_samples,).
        """
        X = check.check_features("X", X, self.layer_sizes[0], self.dtype)
        return _predictions(self.output, forward(self, X, raw=False))

    def freeze(self):
        """An immutable snapshot for inference (:class:`cbn.FrozenNetwork`): the same
        outputs as this network's now, faster for 1-4 rows, safe to share between threads.
        Local: no communication under ``comm``."""
        return FrozenNetwork._of(_loaded_model(_model_file.inference_bytes(self),
                                               "freeze: the network cannot be frozen"))

    def _evaluate(self, X, targets):
        if self._sync is not None:
            return _distributed.evaluate(self._sync, self, X, targets)
        logits = self._logits(X)
        loss = self._loss(np.empty_like(logits), logits, self.layers[-1].b, targets)
        scores = {"loss": loss}
        if self.output != "linear":
            scores["accuracy"] = float(np.mean(self._hits(logits, targets)))
        return scores

    def _hits(self, logits, targets):
        """Which predictions are right: the class (softmax) or each 0.5 threshold (sigmoid)."""
        outputs = self._outputs(logits)
        if self.output == "softmax":
            return outputs.argmax(axis=1) == targets
        return (outputs > 0.5) == (targets > 0.5)

    def evaluate(self, X, y):
        """Loss (and accuracy, for softmax and sigmoid outputs) in inference mode.

        Returns a dict with 'loss' and, except for linear outputs, 'accuracy'. With comm,
        collective: each rank passes its shard (0 rows allowed) and all get the scores
        over all shards.
        """
        if self._sync is None:
            X, targets = self._check_batch(X, y)
        else:
            (X, targets), _ = _distributed.agree(
                self._sync.comm, lambda: self._check_batch(X, y, min_rows=0))
        return self._evaluate(X, targets)
