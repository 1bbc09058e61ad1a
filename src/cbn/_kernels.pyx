"""Python face of the kernels: typed-memoryview wrappers that release the GIL.

Each wrapper checks only that its arrays agree in shape (cheap, O(1)), because the C
kernels run without bounds checks; everything else about user input (dtype, finiteness,
ranges) is validated once in cbn._validation. Arguments Cython cannot convert (a wrong dtype,
layout or type) are refused with an error naming the argument (see the end of this file). Outputs come first, then inputs, then
scalars, as in the C kernels (see the .pxd files for the C-level signatures).
"""
import functools
import inspect
import numbers

import numpy as np

from cython cimport floating

from cbn cimport _activations, _batchnorm, _dispatch, _losses

ACTIVATIONS = {
    "linear": _activations.ACT_LINEAR,
    "relu": _activations.ACT_RELU,
    "leaky_relu": _activations.ACT_LEAKY_RELU,
    "tanh": _activations.ACT_TANH,
    "sigmoid": _activations.ACT_SIGMOID,
}


cdef inline int _require(bint ok, str what) except -1:
    if not ok:
        raise ValueError(f"kernel arguments disagree: {what}")
    return 0


cdef inline int _require_activation(int activation, double slope) except -1:
    if activation < _activations.ACT_LINEAR or activation > _activations.ACT_SIGMOID:
        raise ValueError(f"activation: expected a code in 0..4, got {activation}")
    if activation == _activations.ACT_LEAKY_RELU and not slope >= 0.0:
        raise ValueError(f"slope: expected >= 0 for leaky_relu, got {slope}")
    return 0


def bias_activation_forward(
    floating[:, ::1] A not None,            # OUT (N, D)
    const floating[:, ::1] Z not None,      # IN  (N, D)
    const floating[::1] b not None,         # IN  (D,)
    int activation, double slope=0.0,
):
    """A = g(Z + b)."""
    cdef Py_ssize_t N = Z.shape[0], D = Z.shape[1]
    _require(A.shape[0] == N and A.shape[1] == D, "A must have Z's shape")
    _require(b.shape[0] == D, "b must have Z.shape[1] entries")
    _require_activation(activation, slope)
    if N == 0 or D == 0:
        return
    with nogil:
        _activations.bias_activation_forward(&A[0, 0], &Z[0, 0], &b[0], N, D, activation, slope)


def bias_activation_backward(
    floating[:, ::1] dZ not None,           # OUT (N, D)
    floating[::1] db not None,              # OUT (D,)
    const floating[:, ::1] dA not None,     # IN  (N, D)
    const floating[:, ::1] A not None,      # IN  (N, D)
    int activation, double slope=0.0,
):
    """dZ = dA * g'(Z + b) (through A); db = dZ.sum(axis=0)."""
    cdef Py_ssize_t N = A.shape[0], D = A.shape[1]
    _require(dZ.shape[0] == N and dZ.shape[1] == D, "dZ must have A's shape")
    _require(dA.shape[0] == N and dA.shape[1] == D, "dA must have A's shape")
    _require(db.shape[0] == D, "db must have A.shape[1] entries")
    _require_activation(activation, slope)
    if D == 0:
        return
    if N == 0:
        db[:] = 0
        return
    with nogil:
        _activations.bias_activation_backward(
            &dZ[0, 0], &db[0], &dA[0, 0], &A[0, 0], N, D, activation, slope)


def batchnorm_activation_forward(
    floating[:, ::1] A not None,            # OUT (N, D)
    double[::1] mean not None,              # OUT (D,)
    double[::1] var not None,               # OUT (D,)
    double[::1] rstd not None,              # OUT (D,)
    const floating[:, ::1] Z not None,      # IN  (N, D)
    const floating[::1] gamma not None,     # IN  (D,)
    const floating[::1] beta not None,      # IN  (D,)
    double eps, int activation, double slope=0.0,
):
    """Training-mode A = g(gamma * (Z - mean) / sqrt(var + eps) + beta) with batch statistics."""
    cdef Py_ssize_t N = Z.shape[0], D = Z.shape[1]
    _require(N >= 1, "Z needs at least one row")
    _require(A.shape[0] == N and A.shape[1] == D, "A must have Z's shape")
    _require(mean.shape[0] == D and var.shape[0] == D and rstd.shape[0] == D,
             "mean, var and rstd must have Z.shape[1] entries")
    _require(gamma.shape[0] == D and beta.shape[0] == D,
             "gamma and beta must have Z.shape[1] entries")
    _require(eps >= 0.0, "eps must be >= 0")
    _require_activation(activation, slope)
    if D == 0:
        return
    with nogil:
        _dispatch.batchnorm_activation_forward(
            &A[0, 0], &mean[0], &var[0], &rstd[0], &Z[0, 0], &gamma[0], &beta[0],
            N, D, eps, activation, slope)


def batchnorm_activation_backward(
    floating[:, ::1] dZ not None,           # OUT (N, D)
    floating[::1] dgamma not None,          # OUT (D,)
    floating[::1] dbeta not None,           # OUT (D,)
    const floating[:, ::1] dA not None,     # IN  (N, D)
    const floating[:, ::1] A not None,      # IN  (N, D)
    const floating[:, ::1] Z not None,      # IN  (N, D)
    const floating[::1] gamma not None,     # IN  (D,)
    const double[::1] mean not None,        # IN  (D,)
    const double[::1] rstd not None,        # IN  (D,)
    int activation, double slope=0.0,
):
    """dZ, dgamma, dbeta of training-mode batch norm + activation, from dA."""
    cdef Py_ssize_t N = Z.shape[0], D = Z.shape[1]
    _require(N >= 1, "Z needs at least one row")
    for name, arr in (("dZ", dZ), ("dA", dA), ("A", A)):
        _require(arr.shape[0] == N and arr.shape[1] == D, f"{name} must have Z's shape")
    for name, vec in (("dgamma", dgamma), ("dbeta", dbeta), ("gamma", gamma),
                      ("mean", mean), ("rstd", rstd)):
        _require(vec.shape[0] == D, f"{name} must have Z.shape[1] entries")
    _require_activation(activation, slope)
    if D == 0:
        return
    with nogil:
        _dispatch.batchnorm_activation_backward(
            &dZ[0, 0], &dgamma[0], &dbeta[0], &dA[0, 0], &A[0, 0], &Z[0, 0], &gamma[0],
            &mean[0], &rstd[0], N, D, activation, slope)


def batchnorm_activation_inference(
    floating[:, ::1] A not None,                # OUT (N, D)
    const floating[:, ::1] Z not None,          # IN  (N, D)
    const floating[::1] gamma not None,         # IN  (D,)
    const floating[::1] beta not None,          # IN  (D,)
    const floating[::1] running_mean not None,  # IN  (D,)
    const floating[::1] running_var not None,   # IN  (D,)
    double eps, int activation, double slope=0.0,
):
    """Inference-mode batch norm + activation with the running statistics."""
    cdef Py_ssize_t N = Z.shape[0], D = Z.shape[1]
    _require(A.shape[0] == N and A.shape[1] == D, "A must have Z's shape")
    for name, vec in (("gamma", gamma), ("beta", beta), ("running_mean", running_mean),
                      ("running_var", running_var)):
        _require(vec.shape[0] == D, f"{name} must have Z.shape[1] entries")
    _require(eps >= 0.0, "eps must be >= 0")
    _require_activation(activation, slope)
    if N == 0 or D == 0:
        return
    with nogil:
        _dispatch.batchnorm_activation_inference(
            &A[0, 0], &Z[0, 0], &gamma[0], &beta[0], &running_mean[0], &running_var[0],
            N, D, eps, activation, slope)


def batchnorm_update_running(
    floating[::1] running_mean not None,    # IN/OUT (D,)
    floating[::1] running_var not None,     # IN/OUT (D,)
    const double[::1] mean not None,        # IN (D,)
    const double[::1] var not None,         # IN (D,)
    Py_ssize_t N, double momentum,
):
    """running = (1 - momentum) * running + momentum * batch; the variance unbiased (N/(N-1))."""
    cdef Py_ssize_t D = running_mean.shape[0]
    _require(N >= 2, "the batch statistics need N >= 2 rows")
    for name, vec in (("running_var", running_var), ("mean", mean), ("var", var)):
        _require(vec.shape[0] == D, f"{name} must have running_mean's length")
    _require(0.0 <= momentum <= 1.0, "momentum must be in [0, 1]")
    if D == 0:
        return
    with nogil:
        _batchnorm.batchnorm_update_running(
            &running_mean[0], &running_var[0], &mean[0], &var[0], N, D, momentum)


# ---- batch norm in phases, for data-parallel training (cbn._distributed) ----------------

def batchnorm_statistics(
    double[::1] mean not None,              # OUT (D,)
    double[::1] m2 not None,                # OUT (D,)
    const floating[:, ::1] Z not None,      # IN  (N, D)
):
    """mean = Z.mean(0), m2 = ((Z - mean)**2).sum(0) of this part; zeros for N = 0."""
    cdef Py_ssize_t N = Z.shape[0], D = Z.shape[1]
    _require(mean.shape[0] == D and m2.shape[0] == D, "mean and m2 must have Z.shape[1] entries")
    if D == 0:
        return
    if N == 0:
        mean[:] = 0.0
        m2[:] = 0.0
        return
    with nogil:
        _dispatch.batchnorm_statistics(&mean[0], &m2[0], &Z[0, 0], N, D)


def batchnorm_activation_apply(
    floating[:, ::1] A not None,            # OUT (N, D)
    const floating[:, ::1] Z not None,      # IN  (N, D)
    const floating[::1] gamma not None,     # IN  (D,)
    const floating[::1] beta not None,      # IN  (D,)
    const double[::1] mean not None,        # IN  (D,)
    const double[::1] rstd not None,        # IN  (D,)
    int activation, double slope=0.0,
):
    """Training-mode A = g(gamma * (Z - mean) * rstd + beta) with given batch statistics."""
    cdef Py_ssize_t N = Z.shape[0], D = Z.shape[1]
    _require(A.shape[0] == N and A.shape[1] == D, "A must have Z's shape")
    for name, vec in (("gamma", gamma), ("beta", beta), ("mean", mean), ("rstd", rstd)):
        _require(vec.shape[0] == D, f"{name} must have Z.shape[1] entries")
    _require_activation(activation, slope)
    if N == 0 or D == 0:
        return
    with nogil:
        _dispatch.batchnorm_activation_apply(
            &A[0, 0], &Z[0, 0], &gamma[0], &beta[0], &mean[0], &rstd[0], N, D,
            activation, slope)


def batchnorm_activation_backward_sums(
    floating[:, ::1] dZt not None,          # OUT (N, D)
    floating[::1] dgamma not None,          # OUT (D,)
    floating[::1] dbeta not None,           # OUT (D,)
    double[::1] sum_dzt not None,           # OUT (D,)
    double[::1] sum_dzt_zc not None,        # OUT (D,)
    const floating[:, ::1] dA not None,     # IN  (N, D)
    const floating[:, ::1] A not None,      # IN  (N, D)
    const floating[:, ::1] Z not None,      # IN  (N, D)
    const double[::1] mean not None,        # IN  (D,)
    const double[::1] rstd not None,        # IN  (D,)
    int activation, double slope=0.0,
):
    """dZt = dA * g'; the sums of dZt and dZt * (Z - mean); this part's dgamma and dbeta."""
    cdef Py_ssize_t N = Z.shape[0], D = Z.shape[1]
    for name, arr in (("dZt", dZt), ("dA", dA), ("A", A)):
        _require(arr.shape[0] == N and arr.shape[1] == D, f"{name} must have Z's shape")
    for name, vec in (("dgamma", dgamma), ("dbeta", dbeta), ("sum_dzt", sum_dzt),
                      ("sum_dzt_zc", sum_dzt_zc), ("mean", mean), ("rstd", rstd)):
        _require(vec.shape[0] == D, f"{name} must have Z.shape[1] entries")
    _require_activation(activation, slope)
    if D == 0:
        return
    if N == 0:
        dgamma[:] = 0
        dbeta[:] = 0
        sum_dzt[:] = 0.0
        sum_dzt_zc[:] = 0.0
        return
    with nogil:
        _dispatch.batchnorm_activation_backward_sums(
            &dZt[0, 0], &dgamma[0], &dbeta[0], &sum_dzt[0], &sum_dzt_zc[0], &dA[0, 0],
            &A[0, 0], &Z[0, 0], &mean[0], &rstd[0], N, D, activation, slope)


def batchnorm_backward_finish(
    floating[:, ::1] dZ not None,           # IN/OUT (N, D)  dZt in, dZ out
    const floating[:, ::1] Z not None,      # IN  (N, D)
    const floating[::1] gamma not None,     # IN  (D,)
    const double[::1] mean not None,        # IN  (D,)
    const double[::1] rstd not None,        # IN  (D,)
    const double[::1] sum_dzt not None,     # IN  (D,)  summed over the whole batch
    const double[::1] sum_dzt_zc not None,  # IN  (D,)  summed over the whole batch
    double N_total,
):
    """dZ = gamma * rstd * (dZt - sum_dzt / N - (Z - mean) * rstd**2 * sum_dzt_zc / N)."""
    cdef Py_ssize_t N = Z.shape[0], D = Z.shape[1]
    _require(dZ.shape[0] == N and dZ.shape[1] == D, "dZ must have Z's shape")
    for name, vec in (("gamma", gamma), ("mean", mean), ("rstd", rstd), ("sum_dzt", sum_dzt),
                      ("sum_dzt_zc", sum_dzt_zc)):
        _require(vec.shape[0] == D, f"{name} must have Z.shape[1] entries")
    _require(N_total >= 1.0, "N_total must be >= 1")
    if N == 0 or D == 0:
        return
    with nogil:
        _dispatch.batchnorm_backward_finish(
            &dZ[0, 0], &Z[0, 0], &gamma[0], &mean[0], &rstd[0], &sum_dzt[0], &sum_dzt_zc[0],
            N, D, N_total)


cdef inline int _require_output_shapes(dZ, Z, b, N, K) except -1:
    _require(N >= 1 and K >= 1, "Z needs at least one row and one column")
    _require(dZ.shape[0] == N and dZ.shape[1] == K, "the output must have Z's shape")
    _require(b.shape[0] == K, "b must have Z.shape[1] entries")
    return 0


def softmax_cross_entropy(
    floating[:, ::1] dZ not None,           # OUT (N, K)
    const floating[:, ::1] Z not None,      # IN  (N, K)
    const floating[::1] b not None,         # IN  (K,)
    const Py_ssize_t[::1] labels not None,  # IN  (N,)
):
    """Return the mean cross-entropy of softmax(Z + b) against labels; write its gradient dZ."""
    cdef Py_ssize_t N = Z.shape[0], K = Z.shape[1], i
    cdef double loss
    _require_output_shapes(dZ, Z, b, N, K)
    _require(labels.shape[0] == N, "labels must have one entry per row of Z")
    for i in range(N):
        _require(0 <= labels[i] < K, "labels must lie in [0, Z.shape[1])")
    with nogil:
        loss = _losses.softmax_cross_entropy(&dZ[0, 0], &Z[0, 0], &b[0], &labels[0], N, K)
    return loss


def softmax_forward(
    floating[:, ::1] P not None,            # OUT (N, K)
    const floating[:, ::1] Z not None,      # IN  (N, K)
    const floating[::1] b not None,         # IN  (K,)
):
    """P = softmax(Z + b) row by row."""
    cdef Py_ssize_t N = Z.shape[0], K = Z.shape[1]
    _require_output_shapes(P, Z, b, N, K)
    with nogil:
        _losses.softmax_forward(&P[0, 0], &Z[0, 0], &b[0], N, K)


def sigmoid_binary_cross_entropy(
    floating[:, ::1] dZ not None,           # OUT (N, K)
    const floating[:, ::1] Z not None,      # IN  (N, K)
    const floating[::1] b not None,         # IN  (K,)
    const floating[:, ::1] Y not None,      # IN  (N, K)
):
    """Return the mean binary cross-entropy of sigmoid(Z + b) against Y; write dZ."""
    cdef Py_ssize_t N = Z.shape[0], K = Z.shape[1]
    cdef double loss
    _require_output_shapes(dZ, Z, b, N, K)
    _require(Y.shape[0] == N and Y.shape[1] == K, "Y must have Z's shape")
    with nogil:
        loss = _losses.sigmoid_binary_cross_entropy(&dZ[0, 0], &Z[0, 0], &b[0], &Y[0, 0], N, K)
    return loss


def mean_squared_error(
    floating[:, ::1] dZ not None,           # OUT (N, K)
    const floating[:, ::1] Z not None,      # IN  (N, K)
    const floating[::1] b not None,         # IN  (K,)
    const floating[:, ::1] Y not None,      # IN  (N, K)
):
    """Return the mean squared error of Z + b against Y; write dZ."""
    cdef Py_ssize_t N = Z.shape[0], K = Z.shape[1]
    cdef double loss
    _require_output_shapes(dZ, Z, b, N, K)
    _require(Y.shape[0] == N and Y.shape[1] == K, "Y must have Z's shape")
    with nogil:
        loss = _losses.mean_squared_error(&dZ[0, 0], &Z[0, 0], &b[0], &Y[0, 0], N, K)
    return loss


def sgd_update(
    floating[::1] param not None,           # IN/OUT (n,)
    const floating[::1] grad not None,      # IN     (n,)
    double lr,
):
    """param -= lr * grad."""
    cdef Py_ssize_t n = param.shape[0]
    _require(grad.shape[0] == n, "grad must have param's length")
    if n == 0:
        return
    with nogil:
        _dispatch.sgd_update(&param[0], &grad[0], n, lr)


def momentum_update(
    floating[::1] param not None,           # IN/OUT (n,)
    floating[::1] velocity not None,        # IN/OUT (n,)
    const floating[::1] grad not None,      # IN     (n,)
    double lr, double beta,
):
    """velocity = beta * velocity + (1 - beta) * grad; param -= lr * velocity."""
    cdef Py_ssize_t n = param.shape[0]
    _require(grad.shape[0] == n and velocity.shape[0] == n,
             "grad and velocity must have param's length")
    if n == 0:
        return
    with nogil:
        _dispatch.momentum_update(&param[0], &velocity[0], &grad[0], n, lr, beta)


def rmsprop_update(
    floating[::1] param not None,           # IN/OUT (n,)
    floating[::1] sq_avg not None,          # IN/OUT (n,)
    const floating[::1] grad not None,      # IN     (n,)
    double lr, double beta, double eps,
):
    """sq_avg = beta * sq_avg + (1 - beta) * grad**2; param -= lr * grad / (sqrt(sq_avg) + eps)."""
    cdef Py_ssize_t n = param.shape[0]
    _require(grad.shape[0] == n and sq_avg.shape[0] == n,
             "grad and sq_avg must have param's length")
    if n == 0:
        return
    with nogil:
        _dispatch.rmsprop_update(&param[0], &sq_avg[0], &grad[0], n, lr, beta, eps)


def adam_update(
    floating[::1] param not None,           # IN/OUT (n,)
    floating[::1] m not None,               # IN/OUT (n,)
    floating[::1] v not None,               # IN/OUT (n,)
    const floating[::1] grad not None,      # IN     (n,)
    double lr, double beta1, double beta2, double eps, long long t,
):
    """Adam step number t (from 1) with bias correction."""
    cdef Py_ssize_t n = param.shape[0]
    _require(grad.shape[0] == n and m.shape[0] == n and v.shape[0] == n,
             "grad, m and v must have param's length")
    _require(t >= 1, "t counts steps from 1")
    # once per step, not per element
    cdef double bias_correction1 = 1.0 - beta1 ** t
    cdef double bias_correction2 = 1.0 - beta2 ** t
    if n == 0:
        return
    with nogil:
        _dispatch.adam_update(&param[0], &m[0], &v[0], &grad[0], n, lr, beta1, beta2, eps,
                              bias_correction1, bias_correction2)


def largest_magnitude(const floating[::1] x not None):
    """max |x| over all elements (0.0 if empty), NaN if x holds a NaN: the divergence check."""
    cdef Py_ssize_t n = x.shape[0]
    cdef double largest
    if n == 0:
        return 0.0
    with nogil:
        largest = _dispatch.largest_magnitude(&x[0], n)
    return largest


def _instruction_set():
    """Which build of the batch-norm and optimizer kernels runs: "avx2" or "baseline"."""
    return "avx2" if _dispatch.use_avx2() else "baseline"


# ---- errors that name the argument ---------------------------------------------------------
# Cython converts arguments before a wrapper's body runs, and its refusals ("Buffer dtype
# mismatch", "No matching signature found", OverflowError, BufferError) do not say which
# argument is wrong. On such a refusal the call is re-examined against this table to name it.
# Each array argument: name, ndim, dtype ("f": the call's float32/float64, "d": float64,
# "i": intp) and "w" if the kernel writes it. Other arguments are scalars.
_ARRAY_ARGUMENTS = {
    "bias_activation_forward": "A:2fw Z:2f b:1f",
    "bias_activation_backward": "dZ:2fw db:1fw dA:2f A:2f",
    "batchnorm_activation_forward": "A:2fw mean:1dw var:1dw rstd:1dw Z:2f gamma:1f beta:1f",
    "batchnorm_activation_backward":
        "dZ:2fw dgamma:1fw dbeta:1fw dA:2f A:2f Z:2f gamma:1f mean:1d rstd:1d",
    "batchnorm_activation_inference":
        "A:2fw Z:2f gamma:1f beta:1f running_mean:1f running_var:1f",
    "batchnorm_update_running": "running_mean:1fw running_var:1fw mean:1d var:1d",
    "batchnorm_statistics": "mean:1dw m2:1dw Z:2f",
    "batchnorm_activation_apply": "A:2fw Z:2f gamma:1f beta:1f mean:1d rstd:1d",
    "batchnorm_activation_backward_sums": "dZt:2fw dgamma:1fw dbeta:1fw sum_dzt:1dw "
                                          "sum_dzt_zc:1dw dA:2f A:2f Z:2f mean:1d rstd:1d",
    "batchnorm_backward_finish": "dZ:2fw Z:2f gamma:1f mean:1d rstd:1d sum_dzt:1d sum_dzt_zc:1d",
    "softmax_cross_entropy": "dZ:2fw Z:2f b:1f labels:1i",
    "softmax_forward": "P:2fw Z:2f b:1f",
    "sigmoid_binary_cross_entropy": "dZ:2fw Z:2f b:1f Y:2f",
    "mean_squared_error": "dZ:2fw Z:2f b:1f Y:2f",
    "sgd_update": "param:1fw grad:1f",
    "momentum_update": "param:1fw velocity:1fw grad:1f",
    "rmsprop_update": "param:1fw sq_avg:1fw grad:1f",
    "adam_update": "param:1fw m:1fw v:1fw grad:1f",
    "largest_magnitude": "x:1f",
}
# integer scalars and the C type that holds them; every other scalar is a C double
_INT_RANGES = {"activation": (-2**31, 2**31 - 1), "N": (-2**63, 2**63 - 1),
               "t": (-2**63, 2**63 - 1)}


def _misfit(arrays, bound):
    """(error type, message) naming the first argument that cannot be converted, or None."""
    specs = [(name, int(code[0]), code[1], code.endswith("w"))
             for name, code in (item.split(":") for item in arrays.split())]
    floats = [bound[name].dtype for name, _, kind, _ in specs
              if kind == "f" and isinstance(bound[name], np.ndarray)
              and bound[name].dtype in (np.float32, np.float64)]
    allowed = {"f": floats[:1] or [np.dtype(np.float32), np.dtype(np.float64)],
               "d": [np.dtype(np.float64)], "i": [np.dtype(np.intp)]}
    for name, ndim, kind, written in specs:
        value = bound[name]
        expected = " or ".join(dtype.name for dtype in allowed[kind])
        if not isinstance(value, np.ndarray):
            kind_of = type(value).__name__ if value is None or type(value).__module__ == "builtins" \
                else f"{type(value).__module__}.{type(value).__name__}"
            return TypeError, f"{name}: expected a NumPy array of {expected}, got {kind_of}"
        if value.dtype not in allowed[kind]:
            return TypeError, f"{name}: expected an array of {expected}, got dtype {value.dtype}"
        if value.ndim != ndim:
            return ValueError, f"{name}: expected a {ndim}-D array, got {value.ndim}-D"
        if not value.flags.c_contiguous:
            return ValueError, f"{name}: expected a C-contiguous array (np.ascontiguousarray)"
        if written and not value.flags.writeable:
            return ValueError, f"{name}: expected a writable array (the kernel writes it), got a read-only one"
    array_names = {spec[0] for spec in specs}
    for name, value in bound.items():
        if name in array_names:
            continue
        if name in _INT_RANGES:
            low, high = _INT_RANGES[name]
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                return TypeError, f"{name}: expected an integer, got {value!r}"
            if not low <= value <= high:
                return ValueError, f"{name}: expected an integer in [{low}, {high}], got {value!r}"
        elif isinstance(value, bool) or not isinstance(value, numbers.Real):
            return TypeError, f"{name}: expected a real number, got {value!r}"
        else:
            try:
                float(value)
            except OverflowError:
                return ValueError, f"{name}: expected a number that fits a C double, got {value!r}"
    return None


def _naming_errors(kernel, arrays):
    """Wrap kernel so that a refused conversion raises an error naming the argument."""
    signature = inspect.signature(kernel)

    @functools.wraps(kernel)
    def call(*args, **kwargs):
        try:
            return kernel(*args, **kwargs)
        except (TypeError, ValueError, BufferError, OverflowError) as exc:
            if isinstance(exc, ValueError) and str(exc).startswith(
                    ("kernel arguments", "activation:", "slope:")):
                raise  # the wrapper's own checks already say what is wrong
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError as binding:
                raise TypeError(f"{kernel.__name__}: {binding}") from None
            bound.apply_defaults()
            found = _misfit(arrays, bound.arguments)
            if found is None:
                raise TypeError(f"{kernel.__name__}: {exc}") from exc
            raise found[0](found[1]) from None
    return call


for _name, _arrays in _ARRAY_ARGUMENTS.items():
    globals()[_name] = _naming_errors(globals()[_name], _arrays)
