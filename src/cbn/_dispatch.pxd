# The batch-norm and optimizer kernels, each taken from the AVX2 build of its module
# (_batchnorm_avx2, _optim_avx2) when the CPU has AVX2, else from the baseline build.
# Both builds compile the same source without fused multiply-add, so they give the same
# results bit for bit; AVX2 only runs the loops eight float32 (four float64) lanes wide.
# CBN_NO_AVX2=1 in the environment keeps the baseline build (tests compare the two).
# _kernels (Python) and _capi (C) call the kernels through here; signatures as in the .pxd
# files of _batchnorm and _optim.
from cython cimport floating

from cbn cimport _batchnorm, _batchnorm_avx2, _optim, _optim_avx2

cdef extern from *:
    """
    #include <stdlib.h>
    #include <string.h>
    /* 1 if the AVX2 builds are to be used: built with AVX2, the CPU (and OS) has it, and
       CBN_NO_AVX2 is unset, empty or "0". Decided once per process and module. */
    static int cbn_use_avx2(int compiled_for_avx2) {
        static int use = -1;
        if (use < 0) {
            const char *off = getenv("CBN_NO_AVX2");
            int allowed = compiled_for_avx2 && !(off && off[0] && strcmp(off, "0") != 0);
            int cpu = 0;
    #if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
            __builtin_cpu_init();
            cpu = __builtin_cpu_supports("avx2");
    #endif
            use = allowed && cpu;
        }
        return use;
    }
    """
    bint cbn_use_avx2(bint compiled_for_avx2) noexcept nogil


cdef inline bint use_avx2() noexcept nogil:
    return cbn_use_avx2(_batchnorm_avx2.compiled_for_avx2())


cdef inline void batchnorm_activation_forward(
    floating* A, double* mean, double* var, double* rstd, const floating* Z,
    const floating* gamma, const floating* beta,
    Py_ssize_t N, Py_ssize_t D, double eps, int activation, double slope,
) noexcept nogil:
    if use_avx2():
        _batchnorm_avx2.batchnorm_activation_forward(
            A, mean, var, rstd, Z, gamma, beta, N, D, eps, activation, slope)
    else:
        _batchnorm.batchnorm_activation_forward(
            A, mean, var, rstd, Z, gamma, beta, N, D, eps, activation, slope)


cdef inline void batchnorm_activation_backward(
    floating* dZ, floating* dgamma, floating* dbeta, const floating* dA, const floating* A,
    const floating* Z, const floating* gamma, const double* mean, const double* rstd,
    Py_ssize_t N, Py_ssize_t D, int activation, double slope,
) noexcept nogil:
    if use_avx2():
        _batchnorm_avx2.batchnorm_activation_backward(
            dZ, dgamma, dbeta, dA, A, Z, gamma, mean, rstd, N, D, activation, slope)
    else:
        _batchnorm.batchnorm_activation_backward(
            dZ, dgamma, dbeta, dA, A, Z, gamma, mean, rstd, N, D, activation, slope)


cdef inline void batchnorm_activation_inference(
    floating* A, const floating* Z, const floating* gamma, const floating* beta,
    const floating* running_mean, const floating* running_var,
    Py_ssize_t N, Py_ssize_t D, double eps, int activation, double slope,
) noexcept nogil:
    if use_avx2():
        _batchnorm_avx2.batchnorm_activation_inference(
            A, Z, gamma, beta, running_mean, running_var, N, D, eps, activation, slope)
    else:
        _batchnorm.batchnorm_activation_inference(
            A, Z, gamma, beta, running_mean, running_var, N, D, eps, activation, slope)


cdef inline void batchnorm_statistics(
    double* mean, double* m2, const floating* Z, Py_ssize_t N, Py_ssize_t D,
) noexcept nogil:
    if use_avx2():
        _batchnorm_avx2.batchnorm_statistics(mean, m2, Z, N, D)
    else:
        _batchnorm.batchnorm_statistics(mean, m2, Z, N, D)


cdef inline void batchnorm_activation_apply(
    floating* A, const floating* Z, const floating* gamma, const floating* beta,
    const double* mean, const double* rstd,
    Py_ssize_t N, Py_ssize_t D, int activation, double slope,
) noexcept nogil:
    if use_avx2():
        _batchnorm_avx2.batchnorm_activation_apply(
            A, Z, gamma, beta, mean, rstd, N, D, activation, slope)
    else:
        _batchnorm.batchnorm_activation_apply(
            A, Z, gamma, beta, mean, rstd, N, D, activation, slope)


cdef inline void batchnorm_activation_backward_sums(
    floating* dZt, floating* dgamma, floating* dbeta, double* sum_dzt, double* sum_dzt_zc,
    const floating* dA, const floating* A, const floating* Z, const double* mean,
    const double* rstd, Py_ssize_t N, Py_ssize_t D, int activation, double slope,
) noexcept nogil:
    if use_avx2():
        _batchnorm_avx2.batchnorm_activation_backward_sums(
            dZt, dgamma, dbeta, sum_dzt, sum_dzt_zc, dA, A, Z, mean, rstd, N, D,
            activation, slope)
    else:
        _batchnorm.batchnorm_activation_backward_sums(
            dZt, dgamma, dbeta, sum_dzt, sum_dzt_zc, dA, A, Z, mean, rstd, N, D,
            activation, slope)


cdef inline void batchnorm_backward_finish(
    floating* dZ, const floating* Z, const floating* gamma, const double* mean,
    const double* rstd, const double* sum_dzt, const double* sum_dzt_zc,
    Py_ssize_t N, Py_ssize_t D, double N_total,
) noexcept nogil:
    if use_avx2():
        _batchnorm_avx2.batchnorm_backward_finish(
            dZ, Z, gamma, mean, rstd, sum_dzt, sum_dzt_zc, N, D, N_total)
    else:
        _batchnorm.batchnorm_backward_finish(
            dZ, Z, gamma, mean, rstd, sum_dzt, sum_dzt_zc, N, D, N_total)


cdef inline void sgd_update(
    floating* param, const floating* grad, Py_ssize_t n, double lr,
) noexcept nogil:
    if use_avx2():
        _optim_avx2.sgd_update(param, grad, n, lr)
    else:
        _optim.sgd_update(param, grad, n, lr)


cdef inline void momentum_update(
    floating* param, floating* velocity, const floating* grad, Py_ssize_t n, double lr,
    double beta,
) noexcept nogil:
    if use_avx2():
        _optim_avx2.momentum_update(param, velocity, grad, n, lr, beta)
    else:
        _optim.momentum_update(param, velocity, grad, n, lr, beta)


cdef inline void rmsprop_update(
    floating* param, floating* sq_avg, const floating* grad, Py_ssize_t n, double lr,
    double beta, double eps,
) noexcept nogil:
    if use_avx2():
        _optim_avx2.rmsprop_update(param, sq_avg, grad, n, lr, beta, eps)
    else:
        _optim.rmsprop_update(param, sq_avg, grad, n, lr, beta, eps)


cdef inline void adam_update(
    floating* param, floating* m, floating* v, const floating* grad, Py_ssize_t n,
    double lr, double beta1, double beta2, double eps,
    double bias_correction1, double bias_correction2,
) noexcept nogil:
    if use_avx2():
        _optim_avx2.adam_update(param, m, v, grad, n, lr, beta1, beta2, eps,
                                bias_correction1, bias_correction2)
    else:
        _optim.adam_update(param, m, v, grad, n, lr, beta1, beta2, eps,
                           bias_correction1, bias_correction2)
