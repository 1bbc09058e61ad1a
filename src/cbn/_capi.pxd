# cbn's C-level API: the kernels behind plain C signatures, for C and Cython consumers.
#
# C:      #include "_capi_api.h"  (folder: cbn.get_include()), then call import_cbn___capi()
#         once per shared library (returns -1 with a Python exception set on failure).
# Cython: from cbn._capi cimport cbn_batchnorm_activation_forward_f64, CBN_OK, ...
#
# Conventions (as in the kernels): outputs first, then inputs, then sizes and scalars.
# Buffers are C-contiguous, N rows by D units (K outputs, n parameters). Every function
# returns CBN_OK or a negative CBN_ERR_* code after checking its sizes and scalars (the
# buffers themselves cannot be checked: they must hold the documented number of elements).
# They never touch Python objects, so they may be called without holding the GIL.
# A signature never changes under the same name; CBN_API_VERSION grows when a name is added.

cdef public enum cbn_activation:
    CBN_ACT_LINEAR = 0
    CBN_ACT_RELU = 1
    CBN_ACT_LEAKY_RELU = 2      # g(z) = z if z > 0 else slope * z, slope >= 0
    CBN_ACT_TANH = 3
    CBN_ACT_SIGMOID = 4

cdef public enum cbn_status:
    CBN_OK = 0
    CBN_ERR_SIZE = -1           # a size is negative, or too small for the operation
    CBN_ERR_ACTIVATION = -2     # not a CBN_ACT_* code
    CBN_ERR_SLOPE = -3          # leaky_relu needs slope >= 0
    CBN_ERR_EPS = -4            # eps must be >= 0
    CBN_ERR_MOMENTUM = -5       # momentum must lie in [0, 1]
    CBN_ERR_LABEL = -6          # a class label outside [0, K)
    CBN_ERR_STEP = -7           # Adam counts steps from t = 1

cdef public enum:
    CBN_API_VERSION = 1         # the version of this header; compare with cbn_api_version()

cdef api int cbn_api_version() noexcept nogil
cdef api const char* cbn_version() noexcept nogil   # the package version, e.g. "0.1.0"

# A = g(Z + b)
cdef api int cbn_bias_activation_forward_f32(
    float* A, const float* Z, const float* b,
    Py_ssize_t N, Py_ssize_t D, int activation, double slope) noexcept nogil
cdef api int cbn_bias_activation_forward_f64(
    double* A, const double* Z, const double* b,
    Py_ssize_t N, Py_ssize_t D, int activation, double slope) noexcept nogil

# dZ = dA * g'(Z + b) (through A = g(Z + b)); db = dZ summed over rows
cdef api int cbn_bias_activation_backward_f32(
    float* dZ, float* db, const float* dA, const float* A,
    Py_ssize_t N, Py_ssize_t D, int activation, double slope) noexcept nogil
cdef api int cbn_bias_activation_backward_f64(
    double* dZ, double* db, const double* dA, const double* A,
    Py_ssize_t N, Py_ssize_t D, int activation, double slope) noexcept nogil

# Training mode, N >= 1: A = g(gamma * (Z - mean) * rstd + beta); writes the batch mean,
# the biased variance var and rstd = 1 / sqrt(var + eps) (each D doubles) for backward.
cdef api int cbn_batchnorm_activation_forward_f32(
    float* A, double* mean, double* var, double* rstd,
    const float* Z, const float* gamma, const float* beta,
    Py_ssize_t N, Py_ssize_t D, double eps, int activation, double slope) noexcept nogil
cdef api int cbn_batchnorm_activation_forward_f64(
    double* A, double* mean, double* var, double* rstd,
    const double* Z, const double* gamma, const double* beta,
    Py_ssize_t N, Py_ssize_t D, double eps, int activation, double slope) noexcept nogil

# Gradients of the training-mode forward, from dA and what forward wrote (A, mean, rstd).
cdef api int cbn_batchnorm_activation_backward_f32(
    float* dZ, float* dgamma, float* dbeta,
    const float* dA, const float* A, const float* Z, const float* gamma,
    const double* mean, const double* rstd,
    Py_ssize_t N, Py_ssize_t D, int activation, double slope) noexcept nogil
cdef api int cbn_batchnorm_activation_backward_f64(
    double* dZ, double* dgamma, double* dbeta,
    const double* dA, const double* A, const double* Z, const double* gamma,
    const double* mean, const double* rstd,
    Py_ssize_t N, Py_ssize_t D, int activation, double slope) noexcept nogil

# Inference mode: normalizes with the running statistics.
cdef api int cbn_batchnorm_activation_inference_f32(
    float* A, const float* Z, const float* gamma, const float* beta,
    const float* running_mean, const float* running_var,
    Py_ssize_t N, Py_ssize_t D, double eps, int activation, double slope) noexcept nogil
cdef api int cbn_batchnorm_activation_inference_f64(
    double* A, const double* Z, const double* gamma, const double* beta,
    const double* running_mean, const double* running_var,
    Py_ssize_t N, Py_ssize_t D, double eps, int activation, double slope) noexcept nogil

# running = (1 - momentum) * running + momentum * batch statistic (variance unbiased), N >= 2.
cdef api int cbn_batchnorm_update_running_f32(
    float* running_mean, float* running_var, const double* mean, const double* var,
    Py_ssize_t N, Py_ssize_t D, double momentum) noexcept nogil
cdef api int cbn_batchnorm_update_running_f64(
    double* running_mean, double* running_var, const double* mean, const double* var,
    Py_ssize_t N, Py_ssize_t D, double momentum) noexcept nogil

# Losses of the output layer (logits Z + b, N >= 1, K >= 1): *loss gets the mean loss and
# dZ its gradient with respect to Z.
cdef api int cbn_softmax_cross_entropy_f32(
    double* loss, float* dZ, const float* Z, const float* b, const Py_ssize_t* labels,
    Py_ssize_t N, Py_ssize_t K) noexcept nogil
cdef api int cbn_softmax_cross_entropy_f64(
    double* loss, double* dZ, const double* Z, const double* b, const Py_ssize_t* labels,
    Py_ssize_t N, Py_ssize_t K) noexcept nogil
cdef api int cbn_softmax_forward_f32(
    float* P, const float* Z, const float* b, Py_ssize_t N, Py_ssize_t K) noexcept nogil
cdef api int cbn_softmax_forward_f64(
    double* P, const double* Z, const double* b, Py_ssize_t N, Py_ssize_t K) noexcept nogil
cdef api int cbn_sigmoid_binary_cross_entropy_f32(
    double* loss, float* dZ, const float* Z, const float* b, const float* Y,
    Py_ssize_t N, Py_ssize_t K) noexcept nogil
cdef api int cbn_sigmoid_binary_cross_entropy_f64(
    double* loss, double* dZ, const double* Z, const double* b, const double* Y,
    Py_ssize_t N, Py_ssize_t K) noexcept nogil
cdef api int cbn_mean_squared_error_f32(
    double* loss, float* dZ, const float* Z, const float* b, const float* Y,
    Py_ssize_t N, Py_ssize_t K) noexcept nogil
cdef api int cbn_mean_squared_error_f64(
    double* loss, double* dZ, const double* Z, const double* b, const double* Y,
    Py_ssize_t N, Py_ssize_t K) noexcept nogil

# Optimizer updates of one flat buffer of n parameters (state buffers mirror it).
cdef api int cbn_sgd_update_f32(
    float* param, const float* grad, Py_ssize_t n, double lr) noexcept nogil
cdef api int cbn_sgd_update_f64(
    double* param, const double* grad, Py_ssize_t n, double lr) noexcept nogil
cdef api int cbn_momentum_update_f32(
    float* param, float* velocity, const float* grad,
    Py_ssize_t n, double lr, double beta) noexcept nogil
cdef api int cbn_momentum_update_f64(
    double* param, double* velocity, const double* grad,
    Py_ssize_t n, double lr, double beta) noexcept nogil
cdef api int cbn_rmsprop_update_f32(
    float* param, float* sq_avg, const float* grad,
    Py_ssize_t n, double lr, double beta, double eps) noexcept nogil
cdef api int cbn_rmsprop_update_f64(
    double* param, double* sq_avg, const double* grad,
    Py_ssize_t n, double lr, double beta, double eps) noexcept nogil
# Adam step number t (from 1), bias correction included.
cdef api int cbn_adam_update_f32(
    float* param, float* m, float* v, const float* grad,
    Py_ssize_t n, double lr, double beta1, double beta2, double eps, long long t) noexcept nogil
cdef api int cbn_adam_update_f64(
    double* param, double* m, double* v, const double* grad,
    Py_ssize_t n, double lr, double beta1, double beta2, double eps, long long t) noexcept nogil
