"""cbn's C-level API (declared, with its conventions, in _capi.pxd).

Each entry point checks its sizes and scalars, returns a CBN_ERR_* code if one is wrong,
and otherwise calls the kernel of the same name. The float and double entry points share
one fused helper, so each check is written once. Cython generates _capi.h (the enums)
and _capi_api.h (the function table and import_cbn___capi()) next to this file.
"""
from cython cimport floating

from cbn cimport _activations, _batchnorm, _dispatch, _losses
from cbn._version import __version__

# The header's activation codes are the kernels' codes; fail the import if they drift apart.
if (CBN_ACT_LINEAR, CBN_ACT_RELU, CBN_ACT_LEAKY_RELU, CBN_ACT_TANH, CBN_ACT_SIGMOID) != (
        _activations.ACT_LINEAR, _activations.ACT_RELU, _activations.ACT_LEAKY_RELU,
        _activations.ACT_TANH, _activations.ACT_SIGMOID):
    raise ImportError("cbn._capi: the CBN_ACT_* codes differ from the kernels' ACT_* codes")

# Kept alive by the module, so cbn_version() can hand out a pointer into it.
cdef bytes _version_bytes = __version__.encode("ascii")
cdef const char* _version = _version_bytes


cdef api int cbn_api_version() noexcept nogil:
    return CBN_API_VERSION


cdef api const char* cbn_version() noexcept nogil:
    return _version


cdef inline int _check_activation(int activation, double slope) noexcept nogil:
    if activation < CBN_ACT_LINEAR or activation > CBN_ACT_SIGMOID:
        return CBN_ERR_ACTIVATION
    if activation == CBN_ACT_LEAKY_RELU and not slope >= 0.0:
        return CBN_ERR_SLOPE
    return CBN_OK


cdef inline int _check_layer(Py_ssize_t N, Py_ssize_t min_N, Py_ssize_t D, double eps,
                             int activation, double slope) noexcept nogil:
    """Sizes, eps and activation of a layer kernel (pass eps = 0 where there is none)."""
    if N < min_N or D < 0:
        return CBN_ERR_SIZE
    if not eps >= 0.0:
        return CBN_ERR_EPS
    return _check_activation(activation, slope)


# ---- fused helpers: checks, then the kernel (empty batches or layers are a no-op) ----

cdef inline int _bias_activation_forward(
        floating* A, const floating* Z, const floating* b,
        Py_ssize_t N, Py_ssize_t D, int activation, double slope) noexcept nogil:
    cdef int status = _check_layer(N, 0, D, 0.0, activation, slope)
    if status == CBN_OK and N > 0 and D > 0:
        _activations.bias_activation_forward(A, Z, b, N, D, activation, slope)
    return status


cdef inline int _bias_activation_backward(
        floating* dZ, floating* db, const floating* dA, const floating* A,
        Py_ssize_t N, Py_ssize_t D, int activation, double slope) noexcept nogil:
    cdef int status = _check_layer(N, 0, D, 0.0, activation, slope)
    cdef Py_ssize_t j
    if status != CBN_OK or D == 0:
        return status
    if N == 0:
        for j in range(D):
            db[j] = 0
        return status
    _activations.bias_activation_backward(dZ, db, dA, A, N, D, activation, slope)
    return status


cdef inline int _batchnorm_activation_forward(
        floating* A, double* mean, double* var, double* rstd,
        const floating* Z, const floating* gamma, const floating* beta,
        Py_ssize_t N, Py_ssize_t D, double eps, int activation, double slope) noexcept nogil:
    cdef int status = _check_layer(N, 1, D, eps, activation, slope)
    if status == CBN_OK and D > 0:
        _dispatch.batchnorm_activation_forward(
            A, mean, var, rstd, Z, gamma, beta, N, D, eps, activation, slope)
    return status


cdef inline int _batchnorm_activation_backward(
        floating* dZ, floating* dgamma, floating* dbeta,
        const floating* dA, const floating* A, const floating* Z, const floating* gamma,
        const double* mean, const double* rstd,
        Py_ssize_t N, Py_ssize_t D, int activation, double slope) noexcept nogil:
    cdef int status = _check_layer(N, 1, D, 0.0, activation, slope)
    if status == CBN_OK and D > 0:
        _dispatch.batchnorm_activation_backward(
            dZ, dgamma, dbeta, dA, A, Z, gamma, mean, rstd, N, D, activation, slope)
    return status


cdef inline int _batchnorm_activation_inference(
        floating* A, const floating* Z, const floating* gamma, const floating* beta,
        const floating* running_mean, const floating* running_var,
        Py_ssize_t N, Py_ssize_t D, double eps, int activation, double slope) noexcept nogil:
    cdef int status = _check_layer(N, 0, D, eps, activation, slope)
    if status == CBN_OK and N > 0 and D > 0:
        _dispatch.batchnorm_activation_inference(
            A, Z, gamma, beta, running_mean, running_var, N, D, eps, activation, slope)
    return status


cdef inline int _batchnorm_update_running(
        floating* running_mean, floating* running_var, const double* mean, const double* var,
        Py_ssize_t N, Py_ssize_t D, double momentum) noexcept nogil:
    if N < 2 or D < 0:
        return CBN_ERR_SIZE
    if not 0.0 <= momentum <= 1.0:
        return CBN_ERR_MOMENTUM
    if D > 0:
        _batchnorm.batchnorm_update_running(running_mean, running_var, mean, var, N, D, momentum)
    return CBN_OK


cdef inline int _softmax_cross_entropy(
        double* loss, floating* dZ, const floating* Z, const floating* b,
        const Py_ssize_t* labels, Py_ssize_t N, Py_ssize_t K) noexcept nogil:
    cdef Py_ssize_t i
    if N < 1 or K < 1:
        return CBN_ERR_SIZE
    for i in range(N):
        if labels[i] < 0 or labels[i] >= K:
            return CBN_ERR_LABEL
    loss[0] = _losses.softmax_cross_entropy(dZ, Z, b, labels, N, K)
    return CBN_OK


cdef inline int _softmax_forward(
        floating* P, const floating* Z, const floating* b,
        Py_ssize_t N, Py_ssize_t K) noexcept nogil:
    if N < 1 or K < 1:
        return CBN_ERR_SIZE
    _losses.softmax_forward(P, Z, b, N, K)
    return CBN_OK


cdef inline int _sigmoid_binary_cross_entropy(
        double* loss, floating* dZ, const floating* Z, const floating* b, const floating* Y,
        Py_ssize_t N, Py_ssize_t K) noexcept nogil:
    if N < 1 or K < 1:
        return CBN_ERR_SIZE
    loss[0] = _losses.sigmoid_binary_cross_entropy(dZ, Z, b, Y, N, K)
    return CBN_OK


cdef inline int _mean_squared_error(
        double* loss, floating* dZ, const floating* Z, const floating* b, const floating* Y,
        Py_ssize_t N, Py_ssize_t K) noexcept nogil:
    if N < 1 or K < 1:
        return CBN_ERR_SIZE
    loss[0] = _losses.mean_squared_error(dZ, Z, b, Y, N, K)
    return CBN_OK


cdef inline int _sgd_update(
        floating* param, const floating* grad, Py_ssize_t n, double lr) noexcept nogil:
    if n < 0:
        return CBN_ERR_SIZE
    if n > 0:
        _dispatch.sgd_update(param, grad, n, lr)
    return CBN_OK


cdef inline int _momentum_update(
        floating* param, floating* velocity, const floating* grad,
        Py_ssize_t n, double lr, double beta) noexcept nogil:
    if n < 0:
        return CBN_ERR_SIZE
    if n > 0:
        _dispatch.momentum_update(param, velocity, grad, n, lr, beta)
    return CBN_OK


cdef inline int _rmsprop_update(
        floating* param, floating* sq_avg, const floating* grad,
        Py_ssize_t n, double lr, double beta, double eps) noexcept nogil:
    if n < 0:
        return CBN_ERR_SIZE
    if n > 0:
        _dispatch.rmsprop_update(param, sq_avg, grad, n, lr, beta, eps)
    return CBN_OK


cdef inline int _adam_update(
        floating* param, floating* m, floating* v, const floating* grad,
        Py_ssize_t n, double lr, double beta1, double beta2, double eps,
        long long t) noexcept nogil:
    if n < 0:
        return CBN_ERR_SIZE
    if t < 1:
        return CBN_ERR_STEP
    if n > 0:
        # the same bias corrections as cbn._kernels.adam_update, once per step
        _dispatch.adam_update(param, m, v, grad, n, lr, beta1, beta2, eps,
                              1.0 - beta1 ** t, 1.0 - beta2 ** t)
    return CBN_OK


# ---- the entry points: one float and one double instance of each helper ----

cdef api int cbn_bias_activation_forward_f32(
        float* A, const float* Z, const float* b,
        Py_ssize_t N, Py_ssize_t D, int activation, double slope) noexcept nogil:
    return _bias_activation_forward(A, Z, b, N, D, activation, slope)

cdef api int cbn_bias_activation_forward_f64(
        double* A, const double* Z, const double* b,
        Py_ssize_t N, Py_ssize_t D, int activation, double slope) noexcept nogil:
    return _bias_activation_forward(A, Z, b, N, D, activation, slope)


cdef api int cbn_bias_activation_backward_f32(
        float* dZ, float* db, const float* dA, const float* A,
        Py_ssize_t N, Py_ssize_t D, int activation, double slope) noexcept nogil:
    return _bias_activation_backward(dZ, db, dA, A, N, D, activation, slope)

cdef api int cbn_bias_activation_backward_f64(
        double* dZ, double* db, const double* dA, const double* A,
        Py_ssize_t N, Py_ssize_t D, int activation, double slope) noexcept nogil:
    return _bias_activation_backward(dZ, db, dA, A, N, D, activation, slope)


cdef api int cbn_batchnorm_activation_forward_f32(
        float* A, double* mean, double* var, double* rstd,
        const float* Z, const float* gamma, const float* beta,
        Py_ssize_t N, Py_ssize_t D, double eps, int activation, double slope) noexcept nogil:
    return _batchnorm_activation_forward(
        A, mean, var, rstd, Z, gamma, beta, N, D, eps, activation, slope)

cdef api int cbn_batchnorm_activation_forward_f64(
        double* A, double* mean, double* var, double* rstd,
        const double* Z, const double* gamma, const double* beta,
        Py_ssize_t N, Py_ssize_t D, double eps, int activation, double slope) noexcept nogil:
    return _batchnorm_activation_forward(
        A, mean, var, rstd, Z, gamma, beta, N, D, eps, activation, slope)


cdef api int cbn_batchnorm_activation_backward_f32(
        float* dZ, float* dgamma, float* dbeta,
        const float* dA, const float* A, const float* Z, const float* gamma,
        const double* mean, const double* rstd,
        Py_ssize_t N, Py_ssize_t D, int activation, double slope) noexcept nogil:
    return _batchnorm_activation_backward(
        dZ, dgamma, dbeta, dA, A, Z, gamma, mean, rstd, N, D, activation, slope)

cdef api int cbn_batchnorm_activation_backward_f64(
        double* dZ, double* dgamma, double* dbeta,
        const double* dA, const double* A, const double* Z, const double* gamma,
        const double* mean, const double* rstd,
        Py_ssize_t N, Py_ssize_t D, int activation, double slope) noexcept nogil:
    return _batchnorm_activation_backward(
        dZ, dgamma, dbeta, dA, A, Z, gamma, mean, rstd, N, D, activation, slope)


cdef api int cbn_batchnorm_activation_inference_f32(
        float* A, const float* Z, const float* gamma, const float* beta,
        const float* running_mean, const float* running_var,
        Py_ssize_t N, Py_ssize_t D, double eps, int activation, double slope) noexcept nogil:
    return _batchnorm_activation_inference(
        A, Z, gamma, beta, running_mean, running_var, N, D, eps, activation, slope)

cdef api int cbn_batchnorm_activation_inference_f64(
        double* A, const double* Z, const double* gamma, const double* beta,
        const double* running_mean, const double* running_var,
        Py_ssize_t N, Py_ssize_t D, double eps, int activation, double slope) noexcept nogil:
    return _batchnorm_activation_inference(
        A, Z, gamma, beta, running_mean, running_var, N, D, eps, activation, slope)


cdef api int cbn_batchnorm_update_running_f32(
        float* running_mean, float* running_var, const double* mean, const double* var,
        Py_ssize_t N, Py_ssize_t D, double momentum) noexcept nogil:
    return _batchnorm_update_running(running_mean, running_var, mean, var, N, D, momentum)

cdef api int cbn_batchnorm_update_running_f64(
        double* running_mean, double* running_var, const double* mean, const double* var,
        Py_ssize_t N, Py_ssize_t D, double momentum) noexcept nogil:
    return _batchnorm_update_running(running_mean, running_var, mean, var, N, D, momentum)


cdef api int cbn_softmax_cross_entropy_f32(
        double* loss, float* dZ, const float* Z, const float* b, const Py_ssize_t* labels,
        Py_ssize_t N, Py_ssize_t K) noexcept nogil:
    return _softmax_cross_entropy(loss, dZ, Z, b, labels, N, K)

cdef api int cbn_softmax_cross_entropy_f64(
        double* loss, double* dZ, const double* Z, const double* b, const Py_ssize_t* labels,
        Py_ssize_t N, Py_ssize_t K) noexcept nogil:
    return _softmax_cross_entropy(loss, dZ, Z, b, labels, N, K)


cdef api int cbn_softmax_forward_f32(
        float* P, const float* Z, const float* b, Py_ssize_t N, Py_ssize_t K) noexcept nogil:
    return _softmax_forward(P, Z, b, N, K)

cdef api int cbn_softmax_forward_f64(
        double* P, const double* Z, const double* b, Py_ssize_t N, Py_ssize_t K) noexcept nogil:
    return _softmax_forward(P, Z, b, N, K)


cdef api int cbn_sigmoid_binary_cross_entropy_f32(
        double* loss, float* dZ, const float* Z, const float* b, const float* Y,
        Py_ssize_t N, Py_ssize_t K) noexcept nogil:
    return _sigmoid_binary_cross_entropy(loss, dZ, Z, b, Y, N, K)

cdef api int cbn_sigmoid_binary_cross_entropy_f64(
        double* loss, double* dZ, const double* Z, const double* b, const double* Y,
        Py_ssize_t N, Py_ssize_t K) noexcept nogil:
    return _sigmoid_binary_cross_entropy(loss, dZ, Z, b, Y, N, K)


cdef api int cbn_mean_squared_error_f32(
        double* loss, float* dZ, const float* Z, const float* b, const float* Y,
        Py_ssize_t N, Py_ssize_t K) noexcept nogil:
    return _mean_squared_error(loss, dZ, Z, b, Y, N, K)

cdef api int cbn_mean_squared_error_f64(
        double* loss, double* dZ, const double* Z, const double* b, const double* Y,
        Py_ssize_t N, Py_ssize_t K) noexcept nogil:
    return _mean_squared_error(loss, dZ, Z, b, Y, N, K)


cdef api int cbn_sgd_update_f32(
        float* param, const float* grad, Py_ssize_t n, double lr) noexcept nogil:
    return _sgd_update(param, grad, n, lr)

cdef api int cbn_sgd_update_f64(
        double* param, const double* grad, Py_ssize_t n, double lr) noexcept nogil:
    return _sgd_update(param, grad, n, lr)


cdef api int cbn_momentum_update_f32(
        float* param, float* velocity, const float* grad,
        Py_ssize_t n, double lr, double beta) noexcept nogil:
    return _momentum_update(param, velocity, grad, n, lr, beta)

cdef api int cbn_momentum_update_f64(
        double* param, double* velocity, const double* grad,
        Py_ssize_t n, double lr, double beta) noexcept nogil:
    return _momentum_update(param, velocity, grad, n, lr, beta)


cdef api int cbn_rmsprop_update_f32(
        float* param, float* sq_avg, const float* grad,
        Py_ssize_t n, double lr, double beta, double eps) noexcept nogil:
    return _rmsprop_update(param, sq_avg, grad, n, lr, beta, eps)

cdef api int cbn_rmsprop_update_f64(
        double* param, double* sq_avg, const double* grad,
        Py_ssize_t n, double lr, double beta, double eps) noexcept nogil:
    return _rmsprop_update(param, sq_avg, grad, n, lr, beta, eps)


cdef api int cbn_adam_update_f32(
        float* param, float* m, float* v, const float* grad,
        Py_ssize_t n, double lr, double beta1, double beta2, double eps,
        long long t) noexcept nogil:
    return _adam_update(param, m, v, grad, n, lr, beta1, beta2, eps, t)

cdef api int cbn_adam_update_f64(
        double* param, double* m, double* v, const double* grad,
        Py_ssize_t n, double lr, double beta1, double beta2, double eps,
        long long t) noexcept nogil:
    return _adam_update(param, m, v, grad, n, lr, beta1, beta2, eps, t)
