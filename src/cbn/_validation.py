"""Every check of user input, in one place.

Kernels run without bounds checks and trust their inputs, so each public entry point
validates here first. Every error names the argument, what was expected and what was given.
"""
import math
import numbers
import os
from collections.abc import Sequence

import numpy as np

from cbn import _kernels

ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid", "linear")
OUTPUTS = ("softmax", "sigmoid", "linear")
DTYPES = ("float32", "float64")


def check_choice(name, value, choices):
    """Return value if it is one of the allowed strings."""
    if not isinstance(value, str) or value not in choices:
        expected = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name}: expected one of {expected}, got {value!r}")
    return value


def check_int(name, value, minimum):
    """Return value as an int >= minimum (bool is rejected: True is not a size)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def check_float(name, value, low, high, *, low_open=False, high_open=False):
    """Return value as a finite float in the interval [low, high] (ends open as asked)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {value!r}")
    given = value
    try:
        value = float(value)
    except OverflowError:  # an int beyond float range
        value = math.inf if value > 0 else -math.inf
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if not math.isfinite(value) or too_low or too_high:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name}: expected a finite number in {interval}, got {given!r}")
    return value


def check_bool(name, value):
    """Return value as a bool: True, False or a NumPy bool (a string such as 'no' is truthy)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {value!r}")
    return bool(value)


def check_positive(name, value):
    """Return value as a finite float > 0."""
    return check_float(name, value, 0.0, math.inf, low_open=True, high_open=True)


def check_layer_sizes(layer_sizes):
    """Return the layer sizes as a tuple of ints: (n_x, hidden..., n_out), all >= 1."""
    # a set or dict has a length but no order
    if isinstance(layer_sizes, (str, bytes)) \
            or not isinstance(layer_sizes, (Sequence, np.ndarray)):
        raise TypeError(
            f"layer_sizes: expected a list of integers such as [n_x, 128, n_out], "
            f"got {layer_sizes!r}")
    if len(layer_sizes) < 2:
        raise ValueError(
            f"layer_sizes: expected at least 2 sizes (inputs and outputs), got {list(layer_sizes)!r}")
    sizes = tuple(check_int(f"layer_sizes[{i}]", n, 1) for i, n in enumerate(layer_sizes))
    weights = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    if weights > np.iinfo(np.intp).max // 16:  # NumPy's own error would not name the argument
        raise ValueError(f"layer_sizes: {weights} weights cannot be addressed in memory, "
                         f"got {list(sizes)!r}")
    return sizes


def check_dtype(dtype):
    """Return np.float32 or np.float64 from a name or a NumPy dtype."""
    try:  # np.dtype(None) is float64, so None is refused explicitly
        resolved = None if dtype is None else np.dtype(dtype)
    except Exception:  # TypeError, ValueError, even SyntaxError for strings such as 'f4,,'
        resolved = None
    if resolved is None or resolved.name not in DTYPES:
        raise ValueError(f"dtype: expected 'float32' or 'float64', got {dtype!r}")
    return resolved.type


def check_seed(seed):
    """Return seed if it is None or a non-negative int."""
    if seed is None:
        return None
    return check_int("seed", seed, 0)


def check_path(path, name="path"):
    """Return path as a str or bytes file name (os.fspath); a TypeError names the argument."""
    try:
        return os.fspath(path)
    except TypeError:
        raise TypeError(f"{name}: expected a file name (str or os.PathLike), got {path!r}") from None


def _as_numeric_array(name, value):
    """np.asarray(value), refusing anything that is not real numbers (or bool)."""
    if isinstance(value, np.ma.MaskedArray):  # np.asarray would silently use the masked values
        raise TypeError(f"{name}: expected an array of real numbers, got a masked array; "
                        f"fill or drop the masked entries first")
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as exc:  # ragged nested lists, objects NumPy cannot convert
        raise TypeError(f"{name}: expected an array of real numbers, got {type(value).__name__} "
                        f"that NumPy cannot convert ({exc})") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected an array of real numbers, got dtype {arr.dtype}")
    return arr


def _require_finite(name, arr):
    # C-contiguous float32/float64 (what the kernels take): one pass of the threaded
    # divergence-check kernel, NaN if arr holds a NaN and inf if an inf. Else min and max,
    # NaN or infinite likewise; unlike np.isfinite(arr).all() neither allocates anything the
    # size of arr (train_step stays allocation-free)
    if not arr.size:
        return
    if arr.dtype in _KERNEL_DTYPES and arr.flags.c_contiguous:
        finite = math.isfinite(_kernels.largest_magnitude(arr.reshape(-1)))
    else:
        finite = (math.isfinite(np.minimum.reduce(arr, axis=None))
                  and math.isfinite(np.maximum.reduce(arr, axis=None)))
    if not finite:
        raise ValueError(f"{name}: expected finite values, got NaN or infinity")


_KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _as_contiguous(arr, dtype):
    """arr as a C-contiguous array of dtype; values too large for float32 become inf, which
    _require_finite refuses next. Arrays already in shape pass without a copy."""
    if arr.dtype == dtype and arr.flags.c_contiguous:
        return arr
    with np.errstate(over="ignore"):
        return np.ascontiguousarray(arr, dtype=dtype)


def check_features(name, X, n_features, dtype, min_rows=1):
    """Return X as a C-contiguous (n_samples, n_features) array of dtype, copied only if needed."""
    arr = _as_numeric_array(name, X)
    if arr.ndim != 2:
        raise ValueError(
            f"{name}: expected a 2-D array of shape (n_samples, {n_features}), "
            f"got an array of shape {arr.shape}")
    if arr.shape[1] != n_features:
        raise ValueError(
            f"{name}: expected {n_features} features (columns), got {arr.shape[1]}")
    if arr.shape[0] < min_rows:
        why = " (batch norm needs at least 2 rows to compute batch statistics)" if min_rows == 2 else ""
        raise ValueError(f"{name}: expected at least {min_rows} rows{why}, got {arr.shape[0]}")
    arr = _as_contiguous(arr, dtype)
    _require_finite(name, arr)
    return arr


def check_targets(name, y, output, n_out, n_rows, dtype):
    """Return targets ready for the loss kernel.

    softmax: class indices as an intp array of shape (n_rows,), each in [0, n_out).
    sigmoid: values in [0, 1]; linear: finite values; both as (n_rows, n_out) arrays of dtype.
    """
    arr = _as_numeric_array(name, y)
    if arr.ndim == 2 and arr.shape[1] == 1 and (output == "softmax" or n_out == 1):
        arr = arr[:, 0]
    if output == "softmax":
        if arr.shape != (n_rows,):
            raise ValueError(
                f"{name}: expected class indices of shape ({n_rows},), one per row of X, "
                f"got shape {arr.shape}")
        if arr.dtype.kind == "f":
            _require_finite(name, arr)
            if not np.array_equal(arr, np.round(arr)):
                raise ValueError(f"{name}: expected integer class indices, got non-integer values")
        if arr.size and (np.minimum.reduce(arr) < 0 or np.maximum.reduce(arr) >= n_out):
            raise ValueError(
                f"{name}: expected class indices in [0, {n_out - 1}], "
                f"got values in [{arr.min()}, {arr.max()}]")
        return np.ascontiguousarray(arr, dtype=np.intp)
    expected = (n_rows,) if n_out == 1 else (n_rows, n_out)
    if arr.shape not in {(n_rows, n_out), expected}:
        raise ValueError(f"{name}: expected shape {expected}, one row per row of X, "
                         f"got shape {arr.shape}")
    arr = _as_contiguous(arr.reshape(n_rows, n_out), dtype)
    _require_finite(name, arr)
    if output == "sigmoid" and arr.size and (arr.min() < 0 or arr.max() > 1):
        raise ValueError(
            f"{name}: expected targets in [0, 1] for a sigmoid output, "
            f"got values in [{arr.min()}, {arr.max()}]")
    return arr


def check_validation_data(validation_data):
    """Return (X_val, y_val) from a pair."""
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
        raise TypeError(
            f"validation_data: expected a pair (X_val, y_val), got {type(validation_data).__name__}")
    return validation_data


def check_callbacks(callbacks):
    """Return callbacks as a list of callables."""
    if callable(callbacks) or isinstance(callbacks, (str, bytes)) \
            or not hasattr(callbacks, "__iter__"):
        raise TypeError(f"callbacks: expected a list of callables, got {callbacks!r}")
    try:
        callbacks = list(callbacks)
    except TypeError:  # e.g. a 0-d NumPy array has __iter__ but cannot be iterated
        raise TypeError(f"callbacks: expected a list of callables, got {callbacks!r}") from None
    for i, callback in enumerate(callbacks):
        if not callable(callback):
            raise TypeError(f"callbacks[{i}]: expected a callable callback(net, epoch, history), "
                            f"got {callback!r}")
    return callbacks


def check_state_dict(name, state, params, running, *, out=False):
    """Return state's 'params' and 'running' as arrays shaped like the flat buffers params and
    running (a dict as Network.state_dict returns). With out=True they must be writable arrays
    of the buffers' dtype (they are written into); else any finite real values, cast once."""
    if not isinstance(state, dict) or set(state) != {"params", "running"}:
        got = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise TypeError(f"{name}: expected a dict with the keys 'params' and 'running', as "
                        f"Network.state_dict() returns, got {got}")
    arrays = []
    for key, target in (("params", params), ("running", running)):
        where = f"{name}[{key!r}]"
        value = state[key]
        if out:
            if not (isinstance(value, np.ndarray) and value.dtype == target.dtype
                    and value.flags.writeable):
                raise TypeError(f"{where}: expected a writable {target.dtype} array, got "
                                f"{getattr(value, 'dtype', type(value).__name__)}")
        else:
            value = _as_numeric_array(where, value)
        if value.shape != target.shape:
            raise ValueError(f"{where}: expected shape {target.shape} (this network's "
                             f"buffer), got {value.shape}")
        if not out:
            value = _as_contiguous(value, target.dtype)
            _require_finite(where, value)
        arrays.append(value)
    return arrays
