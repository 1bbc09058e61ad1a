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
    batchnorm_activation_forward_units(
        A, mean, var, rstd, Z, gamma, beta, N, D, 0, D, eps, activation, slope)


cdef void batchnorm_activation_forward_units(
    floating* A,                # OUT (N, D)  g(gamma * Zhat + beta)
    double* mean,               # OUT (D,)    batch mean
    double* var,                # OUT (D,)    biased batch variance
    double* rstd,               # OUT (D,)    1 / sqrt(var + eps)
    const floating* Z,          # IN  (N, D)
    const floating* gamma,      # IN  (D,)
    const floating* beta,       # IN  (D,)
    Py_ssize_t N, Py_ssize_t D, Py_ssize_t j_begin, Py_ssize_t j_end, double eps, int activation,
    double slope,
) noexcept nogil:
    """batchnorm_activation_forward on units [j_begin, j_end) only (rows are still D long)."""
    cdef Py_ssize_t i, b, block, j0, width
    cdef double d
    cdef double mu[BLOCK]
    cdef double acc[BLOCK]
    cdef double scale[BLOCK]
    cdef double shift[BLOCK]
    cdef const floating* z
    for block in range((j_end - j_begin + BLOCK - 1) // BLOCK):
        j0 = j_begin + block * BLOCK
        width = min(<Py_ssize_t>BLOCK, j_end - j0)
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
    batchnorm_activation_backward_units(
        dZ, dgamma, dbeta, dA, A, Z, gamma, mean, rstd, N, D, 0, D, activation, slope)


cdef void batchnorm_activation_backward_units(
    floating* dZ,               # OUT (N, D)
    floating* dgamma,           # OUT (D,)
    floating* dbeta,            # OUT (D,)
    const floating* dA,         # IN  (N, D)
    const floating* A,          # IN  (N, D)  forward output
    const floating* Z,          # IN  (N, D)  forward input
    const floating* gamma,      # IN  (D,)
    const double* mean,         # IN  (D,)    cached by forward
    const double* rstd,         # IN  (D,)    cached by forward
    Py_ssize_t N, Py_ssize_t D, Py_ssize_t j_begin, Py_ssize_t j_end, int activation, double slope,
) noexcept nogil:
    """batchnorm_activation_backward on units [j_begin, j_end) only (rows are still D long)."""
    cdef Py_ssize_t i, b, block, j0, width
    cdef double r, k
    cdef double mu[BLOCK]
    cdef double sum_dzt[BLOCK]
    cdef double sum_dzt_zc[BLOCK]   # sum of dZt * (Z - mean) == dgamma / rstd
    cdef double c_dzt[BLOCK]
    cdef const floating* z
    cdef floating* dz
    for block in range((j_end - j_begin + BLOCK - 1) // BLOCK):
        j0 = j_begin + block * BLOCK
        width = min(<Py_ssize_t>BLOCK, j_end - j0)
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


# ---- The same batch norm in phases, for data-parallel training (cbn._distributed) --------
# Between the phases the ranks exchange per-unit numbers (DESIGN.md §8): after
# batchnorm_statistics each rank's (n, mean, M2), merged into the global mean and rstd;
# after batchnorm_activation_backward_sums the two sums, added into global ones. The
# arithmetic is that of the fused kernels above, so one rank reproduces them bit for bit.


cdef void batchnorm_statistics(
    double* mean,               # OUT (D,)    mean of this part's rows
    double* m2,                 # OUT (D,)    sum of (Z - mean)**2 over those rows
    const floating* Z,          # IN  (N, D)
    Py_ssize_t N, Py_ssize_t D,
) noexcept nogil:
    """Local two-pass statistics of a part of the batch; needs N >= 1."""
    batchnorm_statistics_units(mean, m2, Z, N, D, 0, D)


cdef void batchnorm_statistics_units(
    double* mean,               # OUT (D,)    mean of this part's rows
    double* m2,                 # OUT (D,)    sum of (Z - mean)**2 over those rows
    const floating* Z,          # IN  (N, D)
    Py_ssize_t N, Py_ssize_t D, Py_ssize_t j_begin, Py_ssize_t j_end,
) noexcept nogil:
    """batchnorm_statistics on units [j_begin, j_end) only (rows are still D long)."""
    cdef Py_ssize_t i, b, block, j0, width
    cdef double d
    cdef double mu[BLOCK]
    cdef double acc[BLOCK]
    cdef const floating* z
    for block in range((j_end - j_begin + BLOCK - 1) // BLOCK):
        j0 = j_begin + block * BLOCK
        width = min(<Py_ssize_t>BLOCK, j_end - j0)
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
        # m2 = ((Z - mean) ** 2).sum(axis=0)
        for i in range(N):
            z = Z + i * D + j0
            for b in range(width):
                d = z[b] - mu[b]
                acc[b] += d * d
        for b in range(width):
            mean[j0 + b] = mu[b]
            m2[j0 + b] = acc[b]


cdef void batchnorm_activation_apply(
    floating* A,                # OUT (N, D)  g(gamma * (Z - mean) * rstd + beta)
    const floating* Z,          # IN  (N, D)
    const floating* gamma,      # IN  (D,)
    const floating* beta,       # IN  (D,)
    const double* mean,         # IN  (D,)    the (global) batch mean
    const double* rstd,         # IN  (D,)    1 / sqrt(var + eps) of the (global) batch
    Py_ssize_t N, Py_ssize_t D, int activation, double slope,
) noexcept nogil:
    """Training-mode normalization + activation from given batch statistics."""
    batchnorm_activation_apply_units(A, Z, gamma, beta, mean, rstd, N, D, 0, D, activation, slope)


cdef void batchnorm_activation_apply_units(
    floating* A,                # OUT (N, D)  g(gamma * (Z - mean) * rstd + beta)
    const floating* Z,          # IN  (N, D)
    const floating* gamma,      # IN  (D,)
    const floating* beta,       # IN  (D,)
    const double* mean,         # IN  (D,)    the (global) batch mean
    const double* rstd,         # IN  (D,)    1 / sqrt(var + eps) of the (global) batch
    Py_ssize_t N, Py_ssize_t D, Py_ssize_t j_begin, Py_ssize_t j_end, int activation, double slope,
) noexcept nogil:
    """batchnorm_activation_apply on units [j_begin, j_end) only (rows are still D long)."""
    cdef Py_ssize_t i, b, block, j0, width
    cdef double scale[BLOCK]
    cdef double shift[BLOCK]
    for block in range((j_end - j_begin + BLOCK - 1) // BLOCK):
        j0 = j_begin + block * BLOCK
        width = min(<Py_ssize_t>BLOCK, j_end - j0)
        for b in range(width):
            scale[b] = gamma[j0 + b] * rstd[j0 + b]
            shift[b] = beta[j0 + b] - mean[j0 + b] * scale[b]
        for i in range(N):
            affine_activate_row(A + i * D + j0, Z + i * D + j0, scale, shift, width,
                                activation, slope)


cdef void batchnorm_activation_backward_sums(
    floating* dZt,              # OUT (N, D)  dA * g'(Z~); may be dA itself
    floating* dgamma,           # OUT (D,)    this part's share: sum_dzt_zc * rstd
    floating* dbeta,            # OUT (D,)    this part's share: sum_dzt
    double* sum_dzt,            # OUT (D,)    dZt.sum(0)
    double* sum_dzt_zc,         # OUT (D,)    (dZt * (Z - mean)).sum(0)
    const floating* dA,         # IN  (N, D)
    const floating* A,          # IN  (N, D)  forward output
    const floating* Z,          # IN  (N, D)  forward input
    const double* mean,         # IN  (D,)    global batch mean
    const double* rstd,         # IN  (D,)    global rstd
    Py_ssize_t N, Py_ssize_t D, int activation, double slope,
) noexcept nogil:
    """First half of the backward (pass 1 of batchnorm_activation_backward) on a part."""
    batchnorm_activation_backward_sums_units(
        dZt, dgamma, dbeta, sum_dzt, sum_dzt_zc, dA, A, Z, mean, rstd, N, D, 0, D, activation,
        slope)


cdef void batchnorm_activation_backward_sums_units(
    floating* dZt,              # OUT (N, D)  dA * g'(Z~); may be dA itself
    floating* dgamma,           # OUT (D,)    this part's share: sum_dzt_zc * rstd
    floating* dbeta,            # OUT (D,)    this part's share: sum_dzt
    double* sum_dzt,            # OUT (D,)    dZt.sum(0)
    double* sum_dzt_zc,         # OUT (D,)    (dZt * (Z - mean)).sum(0)
    const floating* dA,         # IN  (N, D)
    const floating* A,          # IN  (N, D)  forward output
    const floating* Z,          # IN  (N, D)  forward input
    const double* mean,         # IN  (D,)    global batch mean
    const double* rstd,         # IN  (D,)    global rstd
    Py_ssize_t N, Py_ssize_t D, Py_ssize_t j_begin, Py_ssize_t j_end, int activation, double slope,
) noexcept nogil:
    """batchnorm_activation_backward_sums on units [j_begin, j_end) only (rows are still D long)."""
    cdef Py_ssize_t i, b, block, j0, width
    cdef double mu[BLOCK]
    cdef double s[BLOCK]
    cdef double s_zc[BLOCK]
    cdef const floating* z
    cdef floating* dz
    for block in range((j_end - j_begin + BLOCK - 1) // BLOCK):
        j0 = j_begin + block * BLOCK
        width = min(<Py_ssize_t>BLOCK, j_end - j0)
        for b in range(width):
            mu[b] = mean[j0 + b]
            s[b] = 0.0
            s_zc[b] = 0.0
        for i in range(N):
            z = Z + i * D + j0
            dz = dZt + i * D + j0
            derivative_row(dz, dA + i * D + j0, A + i * D + j0, width, activation, slope)
            for b in range(width):
                s[b] += dz[b]
                s_zc[b] += dz[b] * (z[b] - mu[b])
        for b in range(width):
            sum_dzt[j0 + b] = s[b]
            sum_dzt_zc[j0 + b] = s_zc[b]
            dbeta[j0 + b] = <floating>s[b]
            dgamma[j0 + b] = <floating>(s_zc[b] * rstd[j0 + b])


cdef void batchnorm_backward_finish(
    floating* dZ,               # IN/OUT (N, D)  dZt in, dZ out
    const floating* Z,          # IN  (N, D)  forward input
    const floating* gamma,      # IN  (D,)
    const double* mean,         # IN  (D,)    global batch mean
    const double* rstd,         # IN  (D,)    global rstd
    const double* sum_dzt,      # IN  (D,)    global dbeta
    const double* sum_dzt_zc,   # IN  (D,)    global sum of dZt * (Z - mean)
    Py_ssize_t N, Py_ssize_t D, double N_total,
) noexcept nogil:
    """Second half (pass 2): dZ = gamma*rstd*(dZt - dbeta/N - Zhat*dgamma/N), N global."""
    batchnorm_backward_finish_units(
        dZ, Z, gamma, mean, rstd, sum_dzt, sum_dzt_zc, N, D, 0, D, N_total)


cdef void batchnorm_backward_finish_units(
    floating* dZ,               # IN/OUT (N, D)  dZt in, dZ out
    const floating* Z,          # IN  (N, D)  forward input
    const floating* gamma,      # IN  (D,)
    const double* mean,         # IN  (D,)    global batch mean
    const double* rstd,         # IN  (D,)    global rstd
    const double* sum_dzt,      # IN  (D,)    global dbeta
    const double* sum_dzt_zc,   # IN  (D,)    global sum of dZt * (Z - mean)
    Py_ssize_t N, Py_ssize_t D, Py_ssize_t j_begin, Py_ssize_t j_end, double N_total,
) noexcept nogil:
    """batchnorm_backward_finish on units [j_begin, j_end) only (rows are still D long)."""
    cdef Py_ssize_t i, b, block, j0, width
    cdef double r, k
    cdef double mu[BLOCK]
    cdef double c_dzt[BLOCK]
    cdef double c_z[BLOCK]
    cdef double c_0[BLOCK]
    cdef const floating* z
    cdef floating* dz
    for block in range((j_end - j_begin + BLOCK - 1) // BLOCK):
        j0 = j_begin + block * BLOCK
        width = min(<Py_ssize_t>BLOCK, j_end - j0)
        for b in range(width):
            r = rstd[j0 + b]
            k = gamma[j0 + b] * r
            mu[b] = mean[j0 + b]
            c_dzt[b] = k
            c_z[b] = -k * r * r * sum_dzt_zc[j0 + b] / N_total
            c_0[b] = -k * sum_dzt[j0 + b] / N_total
        for i in range(N):
            z = Z + i * D + j0
            dz = dZ + i * D + j0
            for b in range(width):
                dz[b] = <floating>(c_dzt[b] * dz[b] + c_z[b] * (z[b] - mu[b]) + c_0[b])
