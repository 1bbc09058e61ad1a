"""Optimizer updates: one pass over a flat parameter buffer, arithmetic in double except Adam.

The formulas are those of the deeplearning.ai lecture, and PyTorch's where they agree:
    SGD:      p -= lr * g
    Momentum: v = beta * v + (1 - beta) * g;  p -= lr * v            (EMA form)
    RMSprop:  s = beta * s + (1 - beta) * g**2;  p -= lr * g / (sqrt(s) + eps)
    Adam:     m = b1 * m + (1 - b1) * g;  v = b2 * v + (1 - b2) * g**2
              p -= lr * (m / bc1) / (sqrt(v / bc2) + eps),  bc1 = 1 - b1**t, bc2 = 1 - b2**t
Step-dependent scalars (bc1, bc2) are computed by the caller, once per step; Adam computes in
the parameters' precision (see adam_update).
Reference: Kingma & Ba (2015), arXiv:1412.6980, Algorithm 1.
"""
from cython cimport floating
from libc.math cimport sqrt


cdef void sgd_update(
    floating* param,            # IN/OUT (n,)
    const floating* grad,       # IN     (n,)
    Py_ssize_t n, double lr,
) noexcept nogil:
    """param -= lr * grad."""
    cdef Py_ssize_t i
    for i in range(n):
        param[i] = <floating>(param[i] - lr * grad[i])


cdef void momentum_update(
    floating* param,            # IN/OUT (n,)
    floating* velocity,         # IN/OUT (n,)
    const floating* grad,       # IN     (n,)
    Py_ssize_t n, double lr, double beta,
) noexcept nogil:
    """velocity = beta * velocity + (1 - beta) * grad; param -= lr * velocity."""
    cdef Py_ssize_t i
    cdef double v
    for i in range(n):
        v = beta * velocity[i] + (1.0 - beta) * grad[i]
        velocity[i] = <floating>v
        param[i] = <floating>(param[i] - lr * v)


cdef void rmsprop_update(
    floating* param,            # IN/OUT (n,)
    floating* sq_avg,           # IN/OUT (n,)
    const floating* grad,       # IN     (n,)
    Py_ssize_t n, double lr, double beta, double eps,
) noexcept nogil:
    """sq_avg = beta * sq_avg + (1 - beta) * grad**2; param -= lr * grad / (sqrt(sq_avg) + eps)."""
    cdef Py_ssize_t i
    cdef double g, s
    for i in range(n):
        g = grad[i]
        s = beta * sq_avg[i] + (1.0 - beta) * g * g
        sq_avg[i] = <floating>s
        param[i] = <floating>(param[i] - lr * g / (sqrt(s) + eps))


cdef void adam_update(
    floating* param,            # IN/OUT (n,)
    floating* m,                # IN/OUT (n,)
    floating* v,                # IN/OUT (n,)
    const floating* grad,       # IN     (n,)
    Py_ssize_t n, double lr, double beta1, double beta2, double eps,
    double bias_correction1, double bias_correction2,
) noexcept nogil:
    """Adam with bias correction; bias_correction1 = 1 - beta1**t, bias_correction2 = 1 - beta2**t.

    Computed in the parameters' precision, as PyTorch does, with the bias corrections folded
    into two per-step scalars (one square root and one division per element): in float32
    the loop runs four lanes wide and keeps up with memory.
    """
    cdef Py_ssize_t i
    cdef floating g, m_i, v_i
    cdef floating b1 = <floating>beta1, b2 = <floating>beta2
    cdef floating c1 = <floating>(1.0 - beta1), c2 = <floating>(1.0 - beta2)
    cdef floating step_size = <floating>(lr / bias_correction1)
    cdef floating inv_root_bc2 = <floating>(1.0 / sqrt(bias_correction2))
    cdef floating eps_ = <floating>eps
    for i in range(n):
        g = grad[i]
        m_i = b1 * m[i] + c1 * g
        v_i = b2 * v[i] + c2 * g * g
        m[i] = m_i
        v[i] = v_i
        # p -= lr * (m / bc1) / (sqrt(v / bc2) + eps)
        param[i] = param[i] - step_size * m_i / (<floating>sqrt(v_i) * inv_root_bc2 + eps_)


cdef enum:
    LANES = 16      # independent running maxima, so the loop below vectorizes


cdef double largest_magnitude(
    const floating* x,          # IN (n,)
    Py_ssize_t n,
) noexcept nogil:
    """max |x| over n elements (0 for n = 0), NaN if any element is NaN: the divergence check.

    One pass; the maximum does not depend on the order of the elements, so any split of
    the buffer among threads gives the same result.
    """
    cdef Py_ssize_t i = 0, b
    cdef floating a
    cdef floating big[LANES]
    cdef floating nan_seen[LANES]   # x - x is 0 for finite x and NaN for inf or NaN
    cdef double largest = 0.0
    cdef bint not_finite = False
    for b in range(LANES):
        big[b] = 0
        nan_seen[b] = 0
    while i + LANES <= n:
        for b in range(LANES):
            a = x[i + b] if x[i + b] >= 0 else -x[i + b]
            big[b] = a if a > big[b] else big[b]
            nan_seen[b] = nan_seen[b] + (x[i + b] - x[i + b])
        i += LANES
    for b in range(n - i):
        a = x[i + b] if x[i + b] >= 0 else -x[i + b]
        big[b] = a if a > big[b] else big[b]
        nan_seen[b] = nan_seen[b] + (x[i + b] - x[i + b])
    for b in range(LANES):
        largest = big[b] if big[b] > largest else largest
        not_finite = not_finite or nan_seen[b] != 0
    if not_finite:  # an inf or a NaN: tell them apart (rare, so a plain loop)
        for i in range(n):
            if x[i] != x[i]:
                return x[i]
    return largest
