# Activation functions g and the elementwise kernels of layers without batch norm.
# Shapes: N rows (examples), D units; every 2-D buffer is C-contiguous (N, D).
from cython cimport floating
from libc.math cimport exp, tanh

# Activation codes shared by every kernel that applies an activation.
cdef enum:
    ACT_LINEAR = 0
    ACT_RELU = 1
    ACT_LEAKY_RELU = 2
    ACT_TANH = 3
    ACT_SIGMOID = 4

# Reductions over rows visit units in blocks of BLOCK, so the per-unit sums of a block live
# in double on the stack and the block's columns stay in cache between passes. Blocks are
# wide (4-8 KiB of each row): narrow blocks of power-of-two-wide rows map every row's
# piece to the same few cache sets and read memory in short strided runs.
cdef enum:
    BLOCK = 1024


cdef inline void activate_row(floating* a, Py_ssize_t n, int activation, double slope) noexcept nogil:
    """a = g(a) in place over n elements.

    One loop per activation, so the compiler vectorizes each without a per-element switch.
    """
    cdef Py_ssize_t j
    if activation == ACT_RELU:
        for j in range(n):
            a[j] = a[j] if a[j] > 0 else 0
    elif activation == ACT_LEAKY_RELU:
        for j in range(n):
            a[j] = a[j] if a[j] > 0 else <floating>(slope * a[j])
    elif activation == ACT_TANH:
        for j in range(n):
            a[j] = <floating>tanh(a[j])
    elif activation == ACT_SIGMOID:
        for j in range(n):
            a[j] = <floating>stable_sigmoid(a[j])


cdef inline void affine_activate_row(
    floating* a, const floating* z, const double* scale, const double* shift, Py_ssize_t n,
    int activation, double slope,
) noexcept nogil:
    """a = g(z * scale + shift) over n elements; a may be z.

    The affine part is computed in double; relu and leaky_relu are applied in the same
    loop, the other activations by activate_row afterwards.
    """
    cdef Py_ssize_t j
    cdef floating t
    if activation == ACT_RELU:
        for j in range(n):
            t = <floating>(z[j] * scale[j] + shift[j])
            a[j] = t if t > 0 else 0
    elif activation == ACT_LEAKY_RELU:
        for j in range(n):
            t = <floating>(z[j] * scale[j] + shift[j])
            a[j] = t if t > 0 else <floating>(slope * t)
    else:
        for j in range(n):
            a[j] = <floating>(z[j] * scale[j] + shift[j])
        activate_row(a, n, activation, slope)


cdef inline void derivative_row(
    floating* dz, const floating* da, const floating* a, Py_ssize_t n, int activation,
    double slope,
) noexcept nogil:
    """dz = da * g'(z) over n elements, g' written through a = g(z); dz may be da.

    For leaky_relu this needs slope >= 0 (then a > 0 exactly when z > 0).
    """
    cdef Py_ssize_t j
    cdef floating g     # loaded unconditionally, so the selects below compile branch-free
    if activation == ACT_RELU:
        for j in range(n):
            g = da[j]
            dz[j] = g if a[j] > 0 else 0
    elif activation == ACT_LEAKY_RELU:
        for j in range(n):
            g = da[j]
            dz[j] = g if a[j] > 0 else <floating>(slope * g)
    elif activation == ACT_TANH:
        for j in range(n):
            dz[j] = <floating>(da[j] * (1.0 - <double>a[j] * a[j]))
    elif activation == ACT_SIGMOID:
        for j in range(n):
            dz[j] = <floating>(da[j] * (<double>a[j] * (1.0 - a[j])))
    else:
        for j in range(n):
            dz[j] = da[j]


cdef inline double stable_sigmoid(double z) noexcept nogil:
    """1 / (1 + exp(-z)) without overflow for large |z|."""
    cdef double e
    if z >= 0.0:
        return 1.0 / (1.0 + exp(-z))
    e = exp(z)
    return e / (1.0 + e)


cdef void bias_activation_forward(
    floating* A,                # OUT (N, D)
    const floating* Z,          # IN  (N, D)
    const floating* b,          # IN  (D,)
    Py_ssize_t N, Py_ssize_t D, int activation, double slope,
) noexcept nogil

cdef void bias_activation_backward(
    floating* dZ,               # OUT (N, D)
    floating* db,               # OUT (D,)
    const floating* dA,         # IN  (N, D)
    const floating* A,          # IN  (N, D)
    Py_ssize_t N, Py_ssize_t D, int activation, double slope,
) noexcept nogil
