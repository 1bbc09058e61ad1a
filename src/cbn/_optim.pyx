"""Optimizer updates: one pass over a flat parameter buffer, arithmetic in double except Adam.

The formulas are those of the deeplearning.ai lecture, and PyTorch's where they agree:
    SGD:      p -= lr * g
    Momentum: v = beta * v + (1 - beta) * g;  p -= lr * v            (EMA form)
    RMSprop:  s = beta * s + (1 - beta) * g**2;  p -= lr * g / (sqrt(s) + eps)
    Adam:     m = b1 * m + (1 - b1) * g;  v = b2 * v + (1 - b2) * g**2
              p -= lr * (m / bc1) / (sqrt(v / bc2) + eps),  bc1 = 1 - b1**t, bc2 = 1 - b2**t
Step-dependent scalars (bc1, bc2) are computed by the caller, once per step; Adam computes in
the parameters' precision (see adam_update).
largest_magnitude is the step's divergence check over the flat gradient buffer.
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


cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    /* |x| of an IEEE float, as its bits with the sign cleared, orders like an integer:
       finite values below inf below every NaN. So the integer maximum of those bits is
       max |x|, or a NaN if x holds one: an integer reduction, which compilers vectorize
       (a floating-point maximum they do not, without fast-math) and which is exact. */
    static double cbn_largest_magnitude_f(const float *x, Py_ssize_t n) {
        int32_t largest = 0, bits;
        float result;
        Py_ssize_t i;
        for (i = 0; i < n; i++) {
            memcpy(&bits, x + i, sizeof bits);
            bits &= 0x7fffffff;
            largest = bits > largest ? bits : largest;
        }
        memcpy(&result, &largest, sizeof result);
        return result;
    }
    static double cbn_largest_magnitude_d(const double *x, Py_ssize_t n) {
        int64_t largest = 0, bits;
        double result;
        Py_ssize_t i;
        for (i = 0; i < n; i++) {
            memcpy(&bits, x + i, sizeof bits);
            bits &= INT64_C(0x7fffffffffffffff);
            largest = bits > largest ? bits : largest;
        }
        memcpy(&result, &largest, sizeof result);
        return result;
    }
    """
    double cbn_largest_magnitude_f(const float* x, Py_ssize_t n) noexcept nogil
    double cbn_largest_magnitude_d(const double* x, Py_ssize_t n) noexcept nogil


cdef double largest_magnitude(
    const floating* x,          # IN (n,)
    Py_ssize_t n,
) noexcept nogil:
    """max |x| over n elements (0 for n = 0), NaN if any element is NaN: the divergence check.

    One pass; the maximum does not depend on the order of the elements, so any split of
    the buffer among threads gives the same result.
    """
    if floating is float:
        return cbn_largest_magnitude_f(x, n)
    else:
        return cbn_largest_magnitude_d(x, n)
