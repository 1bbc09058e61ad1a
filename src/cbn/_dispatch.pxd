# The batch-norm and optimizer kernels, each taken from the AVX2 build of its module
# (_batchnorm_avx2, _optim_avx2) when the CPU has AVX2, else from the baseline build.
# Both builds compile the same source without fused multiply-add, so they give the same
# results bit for bit; AVX2 only runs the loops eight float32 (four float64) lanes wide.
# CBN_NO_AVX2=1 in the environment keeps the baseline build (tests compare the two).
# _kernels (Python) and _capi (C) call the kernels through here; signatures as in the .pxd
# files of _batchnorm and _optim.
#
# Threads (cbn._parallel): the training kernels of batch norm split the units among the
# pool's threads, the optimizer updates and the divergence check split the flat buffer.
# Every unit (element) is computed by one thread with the arithmetic of the serial kernel,
# so results are bit-identical for any thread count. Small layers and buffers stay on the
# calling thread (waking a thread costs more than it saves there).
from cython cimport floating

from cbn cimport _batchnorm, _batchnorm_avx2, _optim, _optim_avx2, _parallel

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



cdef enum:
    UNIT_GRAIN = 16             # part bounds on 16 units: a 64-byte line of float32 outputs
    ELEMENT_GRAIN = 256         # part bounds on 256 elements of a flat buffer
    MIN_PART_ELEMENTS = 32768   # fewer elements per thread than this: not worth a wake-up


cdef inline Py_ssize_t _min_units(Py_ssize_t N) noexcept nogil:
    """Units per part, so each part has at least MIN_PART_ELEMENTS elements of N rows."""
    return (MIN_PART_ELEMENTS + N - 1) // N if N > 0 else 1


# ---- batch norm: one argument block and one task for all training kernels ---------------

cdef enum:
    BN_FORWARD, BN_BACKWARD, BN_STATISTICS, BN_APPLY, BN_BACKWARD_SUMS, BN_BACKWARD_FINISH

ctypedef struct BatchNormArgs:
    int op
    bint f64                    # the floating arrays are double (else float)
    void* out                   # A, dZ or dZt (N, D)
    void* dgamma
    void* dbeta
    double* mean                # OUT of forward/statistics, IN elsewhere
    double* var                 # var, or m2 of statistics
    double* rstd
    double* sum_dzt
    double* sum_dzt_zc
    const void* Z
    const void* dA
    const void* A
    const void* gamma
    const void* beta
    Py_ssize_t N, D
    double eps, slope, N_total
    int activation


cdef inline void _batchnorm_units(BatchNormArgs* a, floating* out, floating* dgamma,
                                  floating* dbeta, const floating* Z, const floating* dA,
                                  const floating* A, const floating* gamma,
                                  const floating* beta, Py_ssize_t j0, Py_ssize_t j1) noexcept nogil:
    cdef bint avx2 = use_avx2()
    if a.op == BN_FORWARD:
        if avx2:
            _batchnorm_avx2.batchnorm_activation_forward_units(
                out, a.mean, a.var, a.rstd, Z, gamma, beta, a.N, a.D, j0, j1, a.eps,
                a.activation, a.slope)
        else:
            _batchnorm.batchnorm_activation_forward_units(
                out, a.mean, a.var, a.rstd, Z, gamma, beta, a.N, a.D, j0, j1, a.eps,
                a.activation, a.slope)
    elif a.op == BN_BACKWARD:
        if avx2:
            _batchnorm_avx2.batchnorm_activation_backward_units(
                out, dgamma, dbeta, dA, A, Z, gamma, a.mean, a.rstd, a.N, a.D, j0, j1,
                a.activation, a.slope)
        else:
            _batchnorm.batchnorm_activation_backward_units(
                out, dgamma, dbeta, dA, A, Z, gamma, a.mean, a.rstd, a.N, a.D, j0, j1,
                a.activation, a.slope)
    elif a.op == BN_STATISTICS:
        if avx2:
            _batchnorm_avx2.batchnorm_statistics_units(a.mean, a.var, Z, a.N, a.D, j0, j1)
        else:
            _batchnorm.batchnorm_statistics_units(a.mean, a.var, Z, a.N, a.D, j0, j1)
    elif a.op == BN_APPLY:
        if avx2:
            _batchnorm_avx2.batchnorm_activation_apply_units(
                out, Z, gamma, beta, a.mean, a.rstd, a.N, a.D, j0, j1, a.activation, a.slope)
        else:
            _batchnorm.batchnorm_activation_apply_units(
                out, Z, gamma, beta, a.mean, a.rstd, a.N, a.D, j0, j1, a.activation, a.slope)
    elif a.op == BN_BACKWARD_SUMS:
        if avx2:
            _batchnorm_avx2.batchnorm_activation_backward_sums_units(
                out, dgamma, dbeta, a.sum_dzt, a.sum_dzt_zc, dA, A, Z, a.mean, a.rstd, a.N,
                a.D, j0, j1, a.activation, a.slope)
        else:
            _batchnorm.batchnorm_activation_backward_sums_units(
                out, dgamma, dbeta, a.sum_dzt, a.sum_dzt_zc, dA, A, Z, a.mean, a.rstd, a.N,
                a.D, j0, j1, a.activation, a.slope)
    elif a.op == BN_BACKWARD_FINISH:
        if avx2:
            _batchnorm_avx2.batchnorm_backward_finish_units(
                out, Z, gamma, a.mean, a.rstd, a.sum_dzt, a.sum_dzt_zc, a.N, a.D, j0, j1,
                a.N_total)
        else:
            _batchnorm.batchnorm_backward_finish_units(
                out, Z, gamma, a.mean, a.rstd, a.sum_dzt, a.sum_dzt_zc, a.N, a.D, j0, j1,
                a.N_total)


cdef inline void _batchnorm_task(void* ctx, Py_ssize_t j0, Py_ssize_t j1, int part) noexcept nogil:
    cdef BatchNormArgs* a = <BatchNormArgs*>ctx
    if j1 <= j0:
        return
    if a.f64:
        _batchnorm_units(a, <double*>a.out, <double*>a.dgamma, <double*>a.dbeta,
                         <const double*>a.Z, <const double*>a.dA, <const double*>a.A,
                         <const double*>a.gamma, <const double*>a.beta, j0, j1)
    else:
        _batchnorm_units(a, <float*>a.out, <float*>a.dgamma, <float*>a.dbeta,
                         <const float*>a.Z, <const float*>a.dA, <const float*>a.A,
                         <const float*>a.gamma, <const float*>a.beta, j0, j1)


cdef inline void _batchnorm_run(BatchNormArgs* a) noexcept nogil:
    _parallel.parallel_for(_batchnorm_task, a, a.D, UNIT_GRAIN, _min_units(a.N))


cdef inline void batchnorm_activation_forward(
    floating* A, double* mean, double* var, double* rstd, const floating* Z,
    const floating* gamma, const floating* beta,
    Py_ssize_t N, Py_ssize_t D, double eps, int activation, double slope,
) noexcept nogil:
    cdef BatchNormArgs a
    a.op = BN_FORWARD; a.f64 = sizeof(floating) == sizeof(double)
    a.out = A; a.mean = mean; a.var = var; a.rstd = rstd; a.Z = Z; a.gamma = gamma
    a.beta = beta; a.N = N; a.D = D; a.eps = eps; a.activation = activation; a.slope = slope
    _batchnorm_run(&a)


cdef inline void batchnorm_activation_backward(
    floating* dZ, floating* dgamma, floating* dbeta, const floating* dA, const floating* A,
    const floating* Z, const floating* gamma, const double* mean, const double* rstd,
    Py_ssize_t N, Py_ssize_t D, int activation, double slope,
) noexcept nogil:
    cdef BatchNormArgs a
    a.op = BN_BACKWARD; a.f64 = sizeof(floating) == sizeof(double)
    a.out = dZ; a.dgamma = dgamma; a.dbeta = dbeta; a.dA = dA; a.A = A; a.Z = Z
    a.gamma = gamma; a.mean = <double*>mean; a.rstd = <double*>rstd; a.N = N; a.D = D
    a.activation = activation; a.slope = slope
    _batchnorm_run(&a)


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
    cdef BatchNormArgs a
    a.op = BN_STATISTICS; a.f64 = sizeof(floating) == sizeof(double)
    a.mean = mean; a.var = m2; a.Z = Z; a.N = N; a.D = D
    _batchnorm_run(&a)


cdef inline void batchnorm_activation_apply(
    floating* A, const floating* Z, const floating* gamma, const floating* beta,
    const double* mean, const double* rstd,
    Py_ssize_t N, Py_ssize_t D, int activation, double slope,
) noexcept nogil:
    cdef BatchNormArgs a
    a.op = BN_APPLY; a.f64 = sizeof(floating) == sizeof(double)
    a.out = A; a.Z = Z; a.gamma = gamma; a.beta = beta; a.mean = <double*>mean
    a.rstd = <double*>rstd; a.N = N; a.D = D; a.activation = activation; a.slope = slope
    _batchnorm_run(&a)


cdef inline void batchnorm_activation_backward_sums(
    floating* dZt, floating* dgamma, floating* dbeta, double* sum_dzt, double* sum_dzt_zc,
    const floating* dA, const floating* A, const floating* Z, const double* mean,
    const double* rstd, Py_ssize_t N, Py_ssize_t D, int activation, double slope,
) noexcept nogil:
    cdef BatchNormArgs a
    a.op = BN_BACKWARD_SUMS; a.f64 = sizeof(floating) == sizeof(double)
    a.out = dZt; a.dgamma = dgamma; a.dbeta = dbeta; a.sum_dzt = sum_dzt
    a.sum_dzt_zc = sum_dzt_zc; a.dA = dA; a.A = A; a.Z = Z; a.mean = <double*>mean
    a.rstd = <double*>rstd; a.N = N; a.D = D; a.activation = activation; a.slope = slope
    _batchnorm_run(&a)


cdef inline void batchnorm_backward_finish(
    floating* dZ, const floating* Z, const floating* gamma, const double* mean,
    const double* rstd, const double* sum_dzt, const double* sum_dzt_zc,
    Py_ssize_t N, Py_ssize_t D, double N_total,
) noexcept nogil:
    cdef BatchNormArgs a
    a.op = BN_BACKWARD_FINISH; a.f64 = sizeof(floating) == sizeof(double)
    a.out = dZ; a.Z = Z; a.gamma = gamma; a.mean = <double*>mean; a.rstd = <double*>rstd
    a.sum_dzt = <double*>sum_dzt; a.sum_dzt_zc = <double*>sum_dzt_zc; a.N = N; a.D = D
    a.N_total = N_total
    _batchnorm_run(&a)


# ---- optimizers and the divergence check: parts of the flat buffer ---------------------
# Each part runs the serial kernel on its slice of every buffer.

cdef enum:
    OPT_SGD, OPT_MOMENTUM, OPT_RMSPROP, OPT_ADAM, OPT_LARGEST

ctypedef struct FlatArgs:
    int op
    bint f64
    void* param
    void* state1                # velocity, sq_avg or m
    void* state2                # v
    const void* grad
    double lr, beta1, beta2, eps, bias_correction1, bias_correction2
    double largest[_parallel.MAX_PARTS]     # per part, OPT_LARGEST


cdef inline void _flat_part(FlatArgs* a, floating* param, floating* s1, floating* s2,
                            const floating* g, Py_ssize_t n, int part) noexcept nogil:
    cdef bint avx2 = use_avx2()
    if a.op == OPT_SGD:
        if avx2:
            _optim_avx2.sgd_update(param, g, n, a.lr)
        else:
            _optim.sgd_update(param, g, n, a.lr)
    elif a.op == OPT_MOMENTUM:
        if avx2:
            _optim_avx2.momentum_update(param, s1, g, n, a.lr, a.beta1)
        else:
            _optim.momentum_update(param, s1, g, n, a.lr, a.beta1)
    elif a.op == OPT_RMSPROP:
        if avx2:
            _optim_avx2.rmsprop_update(param, s1, g, n, a.lr, a.beta1, a.eps)
        else:
            _optim.rmsprop_update(param, s1, g, n, a.lr, a.beta1, a.eps)
    elif a.op == OPT_ADAM:
        if avx2:
            _optim_avx2.adam_update(param, s1, s2, g, n, a.lr, a.beta1, a.beta2, a.eps,
                                    a.bias_correction1, a.bias_correction2)
        else:
            _optim.adam_update(param, s1, s2, g, n, a.lr, a.beta1, a.beta2, a.eps,
                               a.bias_correction1, a.bias_correction2)
    elif a.op == OPT_LARGEST:
        if avx2:
            a.largest[part] = _optim_avx2.largest_magnitude(g, n)
        else:
            a.largest[part] = _optim.largest_magnitude(g, n)


cdef inline void _flat_task(void* ctx, Py_ssize_t i0, Py_ssize_t i1, int part) noexcept nogil:
    cdef FlatArgs* a = <FlatArgs*>ctx
    if i1 <= i0:
        return
    if a.f64:
        _flat_part(a, <double*>a.param + i0 if a.param else NULL,
                   <double*>a.state1 + i0 if a.state1 else NULL,
                   <double*>a.state2 + i0 if a.state2 else NULL,
                   <const double*>a.grad + i0, i1 - i0, part)
    else:
        _flat_part(a, <float*>a.param + i0 if a.param else NULL,
                   <float*>a.state1 + i0 if a.state1 else NULL,
                   <float*>a.state2 + i0 if a.state2 else NULL,
                   <const float*>a.grad + i0, i1 - i0, part)


cdef inline void _flat_run(FlatArgs* a, int op, bint f64, void* param, void* state1,
                           void* state2, const void* grad, Py_ssize_t n) noexcept nogil:
    a.op = op; a.f64 = f64; a.param = param; a.state1 = state1; a.state2 = state2
    a.grad = grad
    _parallel.parallel_for(_flat_task, a, n, ELEMENT_GRAIN, MIN_PART_ELEMENTS)


cdef inline void sgd_update(
    floating* param, const floating* grad, Py_ssize_t n, double lr,
) noexcept nogil:
    cdef FlatArgs a
    a.lr = lr
    _flat_run(&a, OPT_SGD, sizeof(floating) == sizeof(double), param, NULL, NULL, grad, n)


cdef inline void momentum_update(
    floating* param, floating* velocity, const floating* grad, Py_ssize_t n, double lr,
    double beta,
) noexcept nogil:
    cdef FlatArgs a
    a.lr = lr; a.beta1 = beta
    _flat_run(&a, OPT_MOMENTUM, sizeof(floating) == sizeof(double), param, velocity, NULL, grad, n)


cdef inline void rmsprop_update(
    floating* param, floating* sq_avg, const floating* grad, Py_ssize_t n, double lr,
    double beta, double eps,
) noexcept nogil:
    cdef FlatArgs a
    a.lr = lr; a.beta1 = beta; a.eps = eps
    _flat_run(&a, OPT_RMSPROP, sizeof(floating) == sizeof(double), param, sq_avg, NULL, grad, n)


cdef inline void adam_update(
    floating* param, floating* m, floating* v, const floating* grad, Py_ssize_t n,
    double lr, double beta1, double beta2, double eps,
    double bias_correction1, double bias_correction2,
) noexcept nogil:
    cdef FlatArgs a
    a.lr = lr; a.beta1 = beta1; a.beta2 = beta2; a.eps = eps
    a.bias_correction1 = bias_correction1; a.bias_correction2 = bias_correction2
    _flat_run(&a, OPT_ADAM, sizeof(floating) == sizeof(double), param, m, v, grad, n)


cdef inline double largest_magnitude(const floating* x, Py_ssize_t n) noexcept nogil:
    """max |x| (NaN if x holds a NaN), each thread over its part, then the parts' maximum."""
    cdef FlatArgs a
    cdef int k
    cdef double largest = 0.0
    for k in range(_parallel.MAX_PARTS):
        a.largest[k] = 0.0
    _flat_run(&a, OPT_LARGEST, sizeof(floating) == sizeof(double), NULL, NULL, NULL, x, n)
    for k in range(_parallel.MAX_PARTS):
        if a.largest[k] != a.largest[k]:
            return a.largest[k]
        largest = a.largest[k] if a.largest[k] > largest else largest
    return largest
