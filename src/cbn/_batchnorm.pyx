"""Batch normalization fused with the activation that follows it.

Training forward, per unit j over the N rows of a batch (two-pass statistics in double):

    mean = Z.mean(0);  var = ((Z - mean)**2).mean(0);  rstd = 1 / sqrt(var + eps)
    Zhat = (Z - mean) * rstd;  A = g(gamma * Zhat + beta)

Backward (dZt = dA * g'(Zt); written, not accumulated):

    dbeta = dZt.sum(0);  dgamma = (dZt * Zhat).sum(0)
    dZ = gamma * rstd / N * (N * dZt - dbeta - Zhat * dgamma)

Shapes: N rows, D units; 2-D buffers C-contiguous (N, D). Units are visited in blocks of
BLOCK so each block's columns stay in cache across the passes over it. Kernels trust their
inputs; the Python layer validates. Reference: Ioffe & Szegedy (2015), arXiv:1502.03167.
"""
from cython cimport floating
from libc.math cimport sqrt

from cbn._activations cimport BLOCK, activate, activation_derivative


cdef void batchnorm_activation_forward(
    floating* A,                # OUT (N, D)  g(gamma * Zhat + beta)
    double* mean,               # OUT (D,)    batch mean
    double* var,                # OUT (D,)    biased batch variance
    double* rstd,               # OUT (D,)    1 / sqrt(var + eps)
    const floating* Z,          # IN  (N, D)
    const floating* gamma,      # IN  (D,)
    const floating* beta,       # IN  (D,)
    Py_ssize_t N, Py_ssize_t D, double eps, int activation, double slope,
) noexcept nogil:
    """Training-mode batch norm + activation; caches mean, var and rstd for backward."""
    cdef Py_ssize_t i, j, j0, j1, k, block
    cdef double d
    cdef double scale[BLOCK]
    for block in range((D + BLOCK - 1) // BLOCK):
        j0 = block * BLOCK
        j1 = min(j0 + BLOCK, D)
        # mean = Z.mean(axis=0)
        for j in range(j0, j1):
            mean[j] = 0.0
            var[j] = 0.0
        for i in range(N):
            k = i * D
            for j in range(j0, j1):
                mean[j] += Z[k + j]
        for j in range(j0, j1):
            mean[j] /= N
        # var = ((Z - mean) ** 2).mean(axis=0): the centred second pass cannot go negative
        for i in range(N):
            k = i * D
            for j in range(j0, j1):
                d = Z[k + j] - mean[j]
                var[j] += d * d
        for j in range(j0, j1):
            var[j] /= N
            rstd[j] = 1.0 / sqrt(var[j] + eps)
            scale[j - j0] = gamma[j] * rstd[j]
        # A = g(gamma * (Z - mean) * rstd + beta)
        for i in range(N):
            k = i * D
            for j in range(j0, j1):
                A[k + j] = <floating>activate(
                    (Z[k + j] - mean[j]) * scale[j - j0] + beta[j], activation, slope)


cdef void batchnorm_activation_backward(
    floating* dZ,               # OUT (N, D)
    floating* dgamma,           # OUT (D,)
    floating* dbeta,            # OUT (D,)
    const floating* dA,         # IN  (N, D)
    const floating* A,          # IN  (N, D)  forward output
    const floating* Z,          # IN  (N, D)  forward input
    const floating* gamma,      # IN  (D,)
    const double* mean,         # IN  (D,)    cached by forward
    const double* rstd,         # IN  (D,)    cached by forward
    Py_ssize_t N, Py_ssize_t D, int activation, double slope,
) noexcept nogil:
    """Backward through g and batch norm: dZ, dgamma, dbeta from dA (two passes)."""
    cdef Py_ssize_t i, j, j0, j1, k, block, b
    cdef double dzt, zhat
    cdef double sum_dzt[BLOCK]
    cdef double sum_dzt_zhat[BLOCK]
    for block in range((D + BLOCK - 1) // BLOCK):
        j0 = block * BLOCK
        j1 = min(j0 + BLOCK, D)
        # pass 1, the two reductions: dbeta = dZt.sum(0), dgamma = (dZt * Zhat).sum(0)
        for b in range(j1 - j0):
            sum_dzt[b] = 0.0
            sum_dzt_zhat[b] = 0.0
        for i in range(N):
            k = i * D
            for j in range(j0, j1):
                dzt = dA[k + j] * activation_derivative(A[k + j], activation, slope)
                zhat = (Z[k + j] - mean[j]) * rstd[j]
                sum_dzt[j - j0] += dzt
                sum_dzt_zhat[j - j0] += dzt * zhat
        for j in range(j0, j1):
            dbeta[j] = <floating>sum_dzt[j - j0]
            dgamma[j] = <floating>sum_dzt_zhat[j - j0]
            # from here on the block's buffers hold the per-unit means of the sums
            sum_dzt[j - j0] /= N
            sum_dzt_zhat[j - j0] /= N
        # pass 2, elementwise: dZ = gamma * rstd * (dZt - dbeta/N - Zhat * dgamma/N)
        for i in range(N):
            k = i * D
            for j in range(j0, j1):
                dzt = dA[k + j] * activation_derivative(A[k + j], activation, slope)
                zhat = (Z[k + j] - mean[j]) * rstd[j]
                dZ[k + j] = <floating>(gamma[j] * rstd[j] * (
                    dzt - sum_dzt[j - j0] - zhat * sum_dzt_zhat[j - j0]))


cdef void batchnorm_activation_inference(
    floating* A,                # OUT (N, D)
    const floating* Z,          # IN  (N, D)
    const floating* gamma,      # IN  (D,)
    const floating* beta,       # IN  (D,)
    const floating* running_mean,   # IN (D,)
    const floating* running_var,    # IN (D,)
    Py_ssize_t N, Py_ssize_t D, double eps, int activation, double slope,
) noexcept nogil:
    """Inference-mode batch norm + activation: the running statistics replace the batch's."""
    cdef Py_ssize_t i, j, j0, j1, k, block
    cdef double scale[BLOCK]
    for block in range((D + BLOCK - 1) // BLOCK):
        j0 = block * BLOCK
        j1 = min(j0 + BLOCK, D)
        for j in range(j0, j1):
            scale[j - j0] = gamma[j] / sqrt(<double>running_var[j] + eps)
        # A = g(gamma * (Z - running_mean) / sqrt(running_var + eps) + beta)
        for i in range(N):
            k = i * D
            for j in range(j0, j1):
                A[k + j] = <floating>activate(
                    (Z[k + j] - <double>running_mean[j]) * scale[j - j0] + beta[j],
                    activation, slope)


cdef void batchnorm_update_running(
    floating* running_mean,     # IN/OUT (D,)
    floating* running_var,      # IN/OUT (D,)
    const double* mean,         # IN (D,)  batch mean
    const double* var,          # IN (D,)  biased batch variance
    Py_ssize_t N, Py_ssize_t D, double momentum,
) noexcept nogil:
    """PyTorch's convention: running = (1 - momentum) * running + momentum * batch.

    running_var takes the unbiased batch variance var * N / (N - 1); needs N >= 2.
    """
    cdef Py_ssize_t j
    cdef double unbias = <double>N / (N - 1)
    for j in range(D):
        running_mean[j] = <floating>((1.0 - momentum) * running_mean[j] + momentum * mean[j])
        running_var[j] = <floating>(
            (1.0 - momentum) * running_var[j] + momentum * var[j] * unbias)
