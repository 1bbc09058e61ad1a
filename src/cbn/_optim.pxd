# Optimizer updates over one flat, C-contiguous parameter buffer of n elements.
# Gradient buffers and optimizer state mirror the parameter buffer element for element.
from cython cimport floating


cdef void sgd_update(
    floating* param,            # IN/OUT (n,)
    const floating* grad,       # IN     (n,)
    Py_ssize_t n, double lr,
) noexcept nogil

cdef void momentum_update(
    floating* param,            # IN/OUT (n,)
    floating* velocity,         # IN/OUT (n,)
    const floating* grad,       # IN     (n,)
    Py_ssize_t n, double lr, double beta,
) noexcept nogil

cdef void rmsprop_update(
    floating* param,            # IN/OUT (n,)
    floating* sq_avg,           # IN/OUT (n,)
    const floating* grad,       # IN     (n,)
    Py_ssize_t n, double lr, double beta, double eps,
) noexcept nogil

cdef void adam_update(
    floating* param,            # IN/OUT (n,)
    floating* m,                # IN/OUT (n,)
    floating* v,                # IN/OUT (n,)
    const floating* grad,       # IN     (n,)
    Py_ssize_t n, double lr, double beta1, double beta2, double eps,
    double bias_correction1, double bias_correction2,
) noexcept nogil

cdef double largest_magnitude(
    const floating* x,          # IN (n,)
    Py_ssize_t n,
) noexcept nogil
