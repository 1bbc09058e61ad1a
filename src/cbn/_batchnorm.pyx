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

from cbn._activations cimport BLOCK, affine_activate_row, derivative_row

cdef extern from *:
    """
    #ifdef __AVX2__
    #define CBN_COMPILED_FOR_AVX2 1
    #else
    #define CBN_COMPILED_FOR_AVX2 0
    #endif
    """
    const bint CBN_COMPILED_FOR_AVX2


cdef bint compiled_for_avx2() noexcept nogil:
    """True in the AVX2 build of this module (_batchnorm_avx2, and _optim_avx2 with it)."""
    return CBN_COMPILED_FOR_AVX2

# Speed: the activation is applied row by row within a block by affine_activate_row and
# derivative_row, whose loops vectorize (the switch on the activation runs once per row,
# not per element). Per-unit constants of a block live in stack arrays, which cannot
# alias the outputs, so the inner loops over a block's units vectorize as well.


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
    cdef Py_ssize_t i, b, block, j0, width
    cdef double d
    cdef double mu[BLOCK]
    cdef double acc[BLOCK]
    cdef double scale[BLOCK]
    cdef double shift[BLOCK]
    cdef const floating* z
    for block in range((D + BLOCK - 1) // BLOCK):
        j0 = block * BLOCK
        width = min(<Py_ssize_t>BLOCK, D - j0)
        # mean = Z.mean(axis=0)
        for b in range(width):
            acc[b] = 0.0
        for i in range(N):
            z = Z + i * D + j0
            for b in range(width):
                acc[b] += z[b]
        for b in range(width):
            mu[b] = acc[b] / N
            acc[b] = 0.0
        # var = ((Z - mean) ** 2).mean(axis=0): the centred second pass cannot go negative
        for i in range(N):
            z = Z + i * D + j0
            for b in range(width):
                d = z[b] - mu[b]
                acc[b] += d * d
        for b in range(width):
            mean[j0 + b] = mu[b]
            var[j0 + b] = acc[b] / N
            rstd[j0 + b] = 1.0 / sqrt(var[j0 + b] + eps)
            # gamma * (z - mean) * rstd + beta == z * scale + shift
            scale[b] = gamma[j0 + b] * rstd[j0 + b]
            shift[b] = beta[j0 + b] - mu[b] * scale[b]
        # A = g(Z * scale + shift)
        for i in range(N):
            affine_activate_row(A + i * D + j0, Z + i * D + j0, scale, shift, width,
                                activation, slope)


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
    """Backward through g and batch norm: dZ, dgamma, dbeta from dA.

    dZ may be dA itself: dZt = dA * g'(Z~) is written into dZ first, then rescaled in place.
    """
    cdef Py_ssize_t i, b, block, j0, width
    cdef double r, k
    cdef double mu[BLOCK]
    cdef double sum_dzt[BLOCK]
    cdef double sum_dzt_zc[BLOCK]   # sum of dZt * (Z - mean) == dgamma / rstd
    cdef double c_dzt[BLOCK]
    cdef const floating* z
    cdef floating* dz
    for block in range((D + BLOCK - 1) // BLOCK):
        j0 = block * BLOCK
        width = min(<Py_ssize_t>BLOCK, D - j0)
        for b in range(width):
            mu[b] = mean[j0 + b]
            sum_dzt[b] = 0.0
            sum_dzt_zc[b] = 0.0
        # pass 1: dZt into dZ, and the two reductions dbeta = dZt.sum(0),
        # dgamma = (dZt * Zhat).sum(0)
        for i in range(N):
            z = Z + i * D + j0
            dz = dZ + i * D + j0
            derivative_row(dz, dA + i * D + j0, A + i * D + j0, width, activation, slope)
            for b in range(width):
                sum_dzt[b] += dz[b]
                sum_dzt_zc[b] += dz[b] * (z[b] - mu[b])
        # pass 2: dZ = gamma * rstd * (dZt - dbeta/N - Zhat * dgamma/N), with
        # Zhat = (Z - mean) * rstd, written as dZ = c_dzt * dZt + c_z * (Z - mean) + c_0;
        # c_z and c_0 replace the sums in their arrays (less stack)
        for b in range(width):
            r = rstd[j0 + b]
            dbeta[j0 + b] = <floating>sum_dzt[b]
            dgamma[j0 + b] = <floating>(sum_dzt_zc[b] * r)
            k = gamma[j0 + b] * r
            c_dzt[b] = k
            sum_dzt_zc[b] = -k * r * r * sum_dzt_zc[b] / N    # c_z
            sum_dzt[b] = -k * sum_dzt[b] / N                  # c_0
        for i in range(N):
            z = Z + i * D + j0
            dz = dZ + i * D + j0
            for b in range(width):
                dz[b] = <floating>(c_dzt[b] * dz[b] + sum_dzt_zc[b] * (z[b] - mu[b]) + sum_dzt[b])


cdef void batchnorm_activation_inference(
    floating* A,                # OUT (N, D)
    const floating* Z,          # IN  (N, D)
    const floating* gamma,      # IN  (D,)
    const floating* beta,       # IN  (D,)
    const floating* running_mean,   # IN (D,)
    const floating* running_var,    # IN (D,)
    Py_ssize_t N, Py_ssize_t D, double eps, int activation, double slope,
) noexcept nogil:
    """Inference-mode batch norm + activation: the running statistics replace the batch's.

    A may be Z itself.
    """
    cdef Py_ssize_t i, b, block, j0, width
    cdef double scale[BLOCK]
    cdef double shift[BLOCK]
    for block in range((D + BLOCK - 1) // BLOCK):
        j0 = block * BLOCK
        width = min(<Py_ssize_t>BLOCK, D - j0)
        # gamma * (Z - running_mean) / sqrt(running_var + eps) + beta == Z * scale + shift
        for b in range(width):
            scale[b] = gamma[j0 + b] / sqrt(<double>running_var[j0 + b] + eps)
            shift[b] = beta[j0 + b] - running_mean[j0 + b] * scale[b]
        for i in range(N):
            affine_activate_row(A + i * D + j0, Z + i * D + j0, scale, shift, width,
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
