"""Batch normalization fused with the activation that follows it.

Training forward, per unit j over the N rows of a batch (two-pass statistics):

    mean = Z.mean(0);  var = ((Z - mean)**2).mean(0);  rstd = 1 / sqrt(var + eps)
    Zhat = (Z - mean) * rstd;  A = g(gamma * Zhat + beta)

Backward (dZt = dA * g'(Zt); written, not accumulated):

    dbeta = dZt.sum(0);  dgamma = (dZt * Zhat).sum(0)
    dZ = gamma * rstd / N * (N * dZt - dbeta - Zhat * dgamma)

Shapes: N rows, D units; 2-D buffers C-contiguous (N, D). Units are visited in blocks (of
UNITS in training, BLOCK in inference); every unit's arithmetic is the same whatever block
or thread it falls in. Kernels
trust their inputs; the Python layer validates. Reference: Ioffe & Szegedy (2015),
arXiv:1502.03167.

Precision (DESIGN.md §2): the elementwise arithmetic runs in the network's precision, sums
in double. In float32 that means:
- deviations from the mean are taken as (z - hi) - lo, with the double mean split into two
  floats hi + lo, so they are exact to float32 precision even where mean >> std;
- sums are float32 over four rows, added pairwise, then accumulated in double: a partial
  sum of positive terms is off by at most 2 ulp, so mean and var stay within 1e-6 (relative)
  of the float64 two-pass values;
- the statistics read Z from memory once: rows go in chunks of CHUNK, each read twice while
  in cache (its mean, then the centred sums around it, the "corrected two-pass" algorithm)
  and merged into the running mean and sum of squares with Chan's formula (DESIGN.md §8);
- the backward's final combination c_dzt * dZt + c_z * (Z - mean) + c_0, whose terms cancel
  (almost exactly at N = 2), is computed in double.
"""
from cython cimport floating
from libc.math cimport sqrt

from cbn._activations cimport (ACT_LEAKY_RELU, ACT_RELU, BLOCK, activate_row,
                               affine_activate_row, derivative_row)

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


cdef enum:
    # The training kernels visit units in blocks of up to UNITS, so layers of up to 4096
    # units are read in whole rows: memory read in order, which the hardware prefetchers
    # follow (pieces of rows a page apart, in narrower blocks, run at two thirds the speed
    # once the arrays leave the cache). The per-unit arrays on the stack take 32 KiB each.
    UNITS = 4096
    # rows the statistics read twice while in cache: 256 KiB of float32 rows of 4096 units
    CHUNK = 16


# ---- Inner loops over one block of units (shared by the fused and the phase kernels) -----
# Each takes its arrays from the block's first unit on (Z + j0, mean + j0, ...) and visits
# `width` <= UNITS units of every row. Per-unit constants live in stack arrays, which cannot
# alias the outputs, so the loops over a block's units vectorize.


cdef inline void split_mean(floating* hi, floating* lo, const double* mean,
                            Py_ssize_t width) noexcept nogil:
    """hi + lo == mean to twice the floating precision; (z - hi) - lo is then z - mean."""
    cdef Py_ssize_t b
    for b in range(width):
        hi[b] = <floating>mean[b]
        lo[b] = <floating>(mean[b] - hi[b])


cdef inline void block_statistics(
    double* mean,               # OUT (width,)  mean over the N rows
    double* m2,                 # OUT (width,)  sum of (Z - mean)**2 over the N rows
    const floating* Z,          # IN  (N, D)    from the block's first unit
    Py_ssize_t N, Py_ssize_t D, Py_ssize_t width,
) noexcept nogil:
    """Two-pass statistics, one pass over memory: chunks of rows merged with Chan's formula."""
    cdef Py_ssize_t chunk, i0, i, g, b, rows, groups
    cdef double c_mean, c_m2, delta, n_seen, n_new
    cdef floating d0, d1, d2, d3
    cdef double s1[UNITS]
    cdef double s2[UNITS]
    cdef floating hi[UNITS]
    cdef floating lo[UNITS]
    cdef const floating* z
    for chunk in range((N + CHUNK - 1) // CHUNK):
        i0 = chunk * CHUNK
        rows = min(<Py_ssize_t>CHUNK, N - i0)
        groups = rows // 4
        # pass 1 over the chunk: its mean
        for b in range(width):
            s1[b] = 0.0
        for g in range(groups):
            z = Z + (i0 + 4 * g) * D
            for b in range(width):
                s1[b] += (z[b] + z[D + b]) + (z[2 * D + b] + z[3 * D + b])
        for i in range(4 * groups, rows):
            z = Z + (i0 + i) * D
            for b in range(width):
                s1[b] += z[b]
        for b in range(width):
            c_mean = s1[b] / rows
            hi[b] = <floating>c_mean
            lo[b] = <floating>(c_mean - hi[b])
            s1[b] = 0.0
            s2[b] = 0.0
        # pass 2: sums of the deviations d from it and of their squares
        for g in range(groups):
            z = Z + (i0 + 4 * g) * D
            for b in range(width):
                d0 = (z[b] - hi[b]) - lo[b]
                d1 = (z[D + b] - hi[b]) - lo[b]
                d2 = (z[2 * D + b] - hi[b]) - lo[b]
                d3 = (z[3 * D + b] - hi[b]) - lo[b]
                s1[b] += (d0 + d1) + (d2 + d3)
                s2[b] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
        for i in range(4 * groups, rows):
            z = Z + (i0 + i) * D
            for b in range(width):
                d0 = (z[b] - hi[b]) - lo[b]
                s1[b] += d0
                s2[b] += d0 * d0
        # the chunk's mean and m2 (sum d**2 - (sum d)**2 / rows: the correction for the
        # rounding of its mean), merged into those of the rows before it
        n_seen = i0
        n_new = i0 + rows
        for b in range(width):
            c_mean = (<double>hi[b] + lo[b]) + s1[b] / rows
            c_m2 = s2[b] - s1[b] * s1[b] / rows
            c_m2 = c_m2 if c_m2 > 0.0 else 0.0
            if i0 == 0:
                mean[b] = c_mean
                m2[b] = c_m2
            else:
                delta = c_mean - mean[b]
                mean[b] = mean[b] + delta * (rows / n_new)
                m2[b] = m2[b] + c_m2 + delta * delta * (n_seen * rows / n_new)


cdef inline void normalize_activate_rows(
    floating* A,                # OUT (N, D)  from the block's first unit
    const floating* Z,          # IN  (N, D)  from the block's first unit
    const floating* hi,         # IN  (width,)  mean == hi + lo
    const floating* lo,
    const floating* scale,      # IN  (width,)  gamma * rstd
    const floating* shift,      # IN  (width,)  beta
    Py_ssize_t N, Py_ssize_t D, Py_ssize_t width, int activation, double slope,
) noexcept nogil:
    """A = g(((Z - hi) - lo) * scale + shift), row by row (one switch per row)."""
    cdef Py_ssize_t i, b
    cdef floating t
    cdef floating* a
    cdef const floating* z
    for i in range(N):
        a = A + i * D
        z = Z + i * D
        if activation == ACT_RELU:
            for b in range(width):
                t = ((z[b] - hi[b]) - lo[b]) * scale[b] + shift[b]
                a[b] = t if t > 0 else 0
        elif activation == ACT_LEAKY_RELU:
            for b in range(width):
                t = ((z[b] - hi[b]) - lo[b]) * scale[b] + shift[b]
                a[b] = t if t > 0 else <floating>(slope * t)
        else:
            for b in range(width):
                a[b] = ((z[b] - hi[b]) - lo[b]) * scale[b] + shift[b]
            activate_row(a, width, activation, slope)


cdef inline void block_backward_sums(
    double* sum_dzt,            # OUT (width,)  dZt.sum(0)
    double* sum_dzt_zc,         # OUT (width,)  (dZt * (Z - mean)).sum(0)
    floating* dZt,              # OUT (N, D)    dA * g'(Z~); may be dA itself
    const floating* dA,         # IN  (N, D)    these four from the block's first unit
    const floating* A,          # IN  (N, D)
    const floating* Z,          # IN  (N, D)
    const double* mean,         # IN  (width,)
    Py_ssize_t N, Py_ssize_t D, Py_ssize_t width, int activation, double slope,
) noexcept nogil:
    """Pass 1 of the backward: dZt, written four rows at a time, and its two sums."""
    cdef Py_ssize_t i, g, b, r, groups = N // 4
    cdef floating d0, d1, d2, d3
    cdef double s[UNITS]
    cdef double s_zc[UNITS]
    cdef floating hi[UNITS]
    cdef floating lo[UNITS]
    cdef const floating* z
    cdef const floating* dz
    split_mean(hi, lo, mean, width)
    for b in range(width):
        s[b] = 0.0
        s_zc[b] = 0.0
    for g in range(groups):
        i = 4 * g
        for r in range(4):
            derivative_row(dZt + (i + r) * D, dA + (i + r) * D, A + (i + r) * D, width,
                           activation, slope)
        z = Z + i * D
        dz = dZt + i * D
        for b in range(width):
            d0 = (z[b] - hi[b]) - lo[b]
            d1 = (z[D + b] - hi[b]) - lo[b]
            d2 = (z[2 * D + b] - hi[b]) - lo[b]
            d3 = (z[3 * D + b] - hi[b]) - lo[b]
            s[b] += (dz[b] + dz[D + b]) + (dz[2 * D + b] + dz[3 * D + b])
            s_zc[b] += (dz[b] * d0 + dz[D + b] * d1) + (dz[2 * D + b] * d2 + dz[3 * D + b] * d3)
    for i in range(4 * groups, N):
        derivative_row(dZt + i * D, dA + i * D, A + i * D, width, activation, slope)
        z = Z + i * D
        dz = dZt + i * D
        for b in range(width):
            d0 = (z[b] - hi[b]) - lo[b]
            s[b] += dz[b]
            s_zc[b] += dz[b] * d0
    for b in range(width):
        sum_dzt[b] = s[b]
        sum_dzt_zc[b] = s_zc[b]


cdef inline void block_backward_finish(
    floating* dZ,               # IN/OUT (N, D)  dZt in, dZ out; from the block's first unit
    const floating* Z,          # IN  (N, D)     from the block's first unit
    const floating* gamma,      # IN  (width,)   these five from the block's first unit
    const double* mean,
    const double* rstd,
    const double* sum_dzt,      # IN  (width,)   of the whole batch
    const double* sum_dzt_zc,
    Py_ssize_t N, Py_ssize_t D, Py_ssize_t width, double N_total,
) noexcept nogil:
    """Pass 2: dZ = gamma*rstd*(dZt - dbeta/N - Zhat*dgamma/N), in double (it cancels)."""
    cdef Py_ssize_t i, b
    cdef double r, k
    cdef double mu[UNITS]
    cdef double c_dzt[UNITS]
    cdef double c_z[UNITS]
    cdef double c_0[UNITS]
    cdef const floating* z
    cdef floating* dz
    # dZ = c_dzt * dZt + c_z * (Z - mean) + c_0
    for b in range(width):
        r = rstd[b]
        k = gamma[b] * r
        mu[b] = mean[b]
        c_dzt[b] = k
        c_z[b] = -k * r * r * sum_dzt_zc[b] / N_total
        c_0[b] = -k * sum_dzt[b] / N_total
    for i in range(N):
        z = Z + i * D
        dz = dZ + i * D
        for b in range(width):
            dz[b] = <floating>(c_dzt[b] * dz[b] + c_z[b] * (z[b] - mu[b]) + c_0[b])


# ---- The fused training kernels ---------------------------------------------------------


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
    cdef Py_ssize_t b, block, j0, width
    cdef floating hi[UNITS]
    cdef floating lo[UNITS]
    cdef floating scale[UNITS]
    cdef floating shift[UNITS]
    for block in range((j_end - j_begin + UNITS - 1) // UNITS):
        j0 = j_begin + block * UNITS
        width = min(<Py_ssize_t>UNITS, j_end - j0)
        block_statistics(mean + j0, var + j0, Z + j0, N, D, width)
        for b in range(width):
            var[j0 + b] = var[j0 + b] / N
            rstd[j0 + b] = 1.0 / sqrt(var[j0 + b] + eps)
            scale[b] = <floating>(gamma[j0 + b] * rstd[j0 + b])
            shift[b] = beta[j0 + b]
        split_mean(hi, lo, mean + j0, width)
        normalize_activate_rows(A + j0, Z + j0, hi, lo, scale, shift, N, D, width,
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
    cdef Py_ssize_t b, block, j0, width
    cdef double sum_dzt[UNITS]
    cdef double sum_dzt_zc[UNITS]   # sum of dZt * (Z - mean) == dgamma / rstd
    for block in range((j_end - j_begin + UNITS - 1) // UNITS):
        j0 = j_begin + block * UNITS
        width = min(<Py_ssize_t>UNITS, j_end - j0)
        block_backward_sums(sum_dzt, sum_dzt_zc, dZ + j0, dA + j0, A + j0, Z + j0, mean + j0,
                            N, D, width, activation, slope)
        for b in range(width):
            dbeta[j0 + b] = <floating>sum_dzt[b]
            dgamma[j0 + b] = <floating>(sum_dzt_zc[b] * rstd[j0 + b])
        block_backward_finish(dZ + j0, Z + j0, gamma + j0, mean + j0, rstd + j0, sum_dzt,
                              sum_dzt_zc, N, D, width, <double>N)


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
# after batchnorm_activation_backward_sums the two sums, added into global ones. The phases
# run the fused kernels' inner loops, so one rank reproduces those bit for bit.


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
    cdef Py_ssize_t block, j0
    for block in range((j_end - j_begin + UNITS - 1) // UNITS):
        j0 = j_begin + block * UNITS
        block_statistics(mean + j0, m2 + j0, Z + j0, N, D, min(<Py_ssize_t>UNITS, j_end - j0))


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
    cdef Py_ssize_t b, block, j0, width
    cdef floating hi[UNITS]
    cdef floating lo[UNITS]
    cdef floating scale[UNITS]
    cdef floating shift[UNITS]
    for block in range((j_end - j_begin + UNITS - 1) // UNITS):
        j0 = j_begin + block * UNITS
        width = min(<Py_ssize_t>UNITS, j_end - j0)
        for b in range(width):
            scale[b] = <floating>(gamma[j0 + b] * rstd[j0 + b])
            shift[b] = beta[j0 + b]
        split_mean(hi, lo, mean + j0, width)
        normalize_activate_rows(A + j0, Z + j0, hi, lo, scale, shift, N, D, width,
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
    cdef Py_ssize_t b, block, j0, width
    for block in range((j_end - j_begin + UNITS - 1) // UNITS):
        j0 = j_begin + block * UNITS
        width = min(<Py_ssize_t>UNITS, j_end - j0)
        block_backward_sums(sum_dzt + j0, sum_dzt_zc + j0, dZt + j0, dA + j0, A + j0, Z + j0,
                            mean + j0, N, D, width, activation, slope)
        for b in range(width):
            dbeta[j0 + b] = <floating>sum_dzt[j0 + b]
            dgamma[j0 + b] = <floating>(sum_dzt_zc[j0 + b] * rstd[j0 + b])


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
    cdef Py_ssize_t block, j0
    for block in range((j_end - j_begin + UNITS - 1) // UNITS):
        j0 = j_begin + block * UNITS
        block_backward_finish(dZ + j0, Z + j0, gamma + j0, mean + j0, rstd + j0, sum_dzt + j0,
                              sum_dzt_zc + j0, N, D, min(<Py_ssize_t>UNITS, j_end - j0),
                              N_total)
