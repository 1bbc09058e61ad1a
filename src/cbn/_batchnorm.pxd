# Batch normalization fused with the activation that follows it.
# Shapes: N rows (examples), D units; 2-D buffers are C-contiguous (N, D).
from cython cimport floating


cdef void batchnorm_activation_forward(
    floating* A,                # OUT (N, D)  g(gamma * Zhat + beta)
    double* mean,               # OUT (D,)    batch mean
    double* var,                # OUT (D,)    biased batch variance
    double* rstd,               # OUT (D,)    1 / sqrt(var + eps)
    const floating* Z,          # IN  (N, D)
    const floating* gamma,      # IN  (D,)
    const floating* beta,       # IN  (D,)
    Py_ssize_t N, Py_ssize_t D, double eps, int activation, double slope,
) noexcept nogil

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
) noexcept nogil

cdef void batchnorm_activation_inference(
    floating* A,                # OUT (N, D)
    const floating* Z,          # IN  (N, D)
    const floating* gamma,      # IN  (D,)
    const floating* beta,       # IN  (D,)
    const floating* running_mean,   # IN (D,)
    const floating* running_var,    # IN (D,)
    Py_ssize_t N, Py_ssize_t D, double eps, int activation, double slope,
) noexcept nogil

cdef void batchnorm_update_running(
    floating* running_mean,     # IN/OUT (D,)
    floating* running_var,      # IN/OUT (D,)
    const double* mean,         # IN (D,)  batch mean
    const double* var,          # IN (D,)  biased batch variance
    Py_ssize_t N, Py_ssize_t D, double momentum,
) noexcept nogil

cdef bint compiled_for_avx2() noexcept nogil   # this build of the module uses AVX2

# The same batch norm in phases, for data-parallel training (see _batchnorm.pyx).
cdef void batchnorm_statistics(
    double* mean, double* m2, const floating* Z, Py_ssize_t N, Py_ssize_t D,
) noexcept nogil

cdef void batchnorm_activation_apply(
    floating* A, const floating* Z, const floating* gamma, const floating* beta,
    const double* mean, const double* rstd,
    Py_ssize_t N, Py_ssize_t D, int activation, double slope,
) noexcept nogil

cdef void batchnorm_activation_backward_sums(
    floating* dZt, floating* dgamma, floating* dbeta, double* sum_dzt, double* sum_dzt_zc,
    const floating* dA, const floating* A, const floating* Z, const double* mean,
    const double* rstd, Py_ssize_t N, Py_ssize_t D, int activation, double slope,
) noexcept nogil

cdef void batchnorm_backward_finish(
    floating* dZ, const floating* Z, const floating* gamma, const double* mean,
    const double* rstd, const double* sum_dzt, const double* sum_dzt_zc,
    Py_ssize_t N, Py_ssize_t D, double N_total,
) noexcept nogil

# Each kernel above restricted to the units [j_begin, j_end) (rows still D long): the unit
# ranges of different threads share nothing, so the split cannot change a result.
cdef void batchnorm_activation_forward_units(
    floating* A, double* mean, double* var, double* rstd, const floating* Z,
    const floating* gamma, const floating* beta,
    Py_ssize_t N, Py_ssize_t D, Py_ssize_t j_begin, Py_ssize_t j_end, double eps,
    int activation, double slope,
) noexcept nogil

cdef void batchnorm_activation_backward_units(
    floating* dZ, floating* dgamma, floating* dbeta, const floating* dA, const floating* A,
    const floating* Z, const floating* gamma, const double* mean, const double* rstd,
    Py_ssize_t N, Py_ssize_t D, Py_ssize_t j_begin, Py_ssize_t j_end, int activation,
    double slope,
) noexcept nogil

cdef void batchnorm_statistics_units(
    double* mean, double* m2, const floating* Z,
    Py_ssize_t N, Py_ssize_t D, Py_ssize_t j_begin, Py_ssize_t j_end,
) noexcept nogil

cdef void batchnorm_activation_apply_units(
    floating* A, const floating* Z, const floating* gamma, const floating* beta,
    const double* mean, const double* rstd,
    Py_ssize_t N, Py_ssize_t D, Py_ssize_t j_begin, Py_ssize_t j_end, int activation,
    double slope,
) noexcept nogil

cdef void batchnorm_activation_backward_sums_units(
    floating* dZt, floating* dgamma, floating* dbeta, double* sum_dzt, double* sum_dzt_zc,
    const floating* dA, const floating* A, const floating* Z, const double* mean,
    const double* rstd, Py_ssize_t N, Py_ssize_t D, Py_ssize_t j_begin, Py_ssize_t j_end,
    int activation, double slope,
) noexcept nogil

cdef void batchnorm_backward_finish_units(
    floating* dZ, const floating* Z, const floating* gamma, const double* mean,
    const double* rstd, const double* sum_dzt, const double* sum_dzt_zc,
    Py_ssize_t N, Py_ssize_t D, Py_ssize_t j_begin, Py_ssize_t j_end, double N_total,
) noexcept nogil
