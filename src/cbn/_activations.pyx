"""Layers without batch norm: A = g(Z + b) and its backward.

Shapes: N rows (examples), D units; 2-D buffers are C-contiguous (N, D). Kernels trust
their inputs (the Python layer validates) and write their outputs, never accumulate.
"""
from cython cimport floating

cdef void bias_activation_forward(
    floating* A,                # OUT (N, D)
    const floating* Z,          # IN  (N, D)
    const floating* b,          # IN  (D,)
    Py_ssize_t N, Py_ssize_t D, int activation, double slope,
) noexcept nogil:
    """A = g(Z + b); A may be Z itself."""
    cdef Py_ssize_t i, j
    cdef const floating* z_row
    cdef floating* a_row
    for i in range(N):
        z_row = Z + i * D
        a_row = A + i * D
        for j in range(D):
            a_row[j] = z_row[j] + b[j]
        activate_row(a_row, D, activation, slope)


cdef void bias_activation_backward(
    floating* dZ,               # OUT (N, D)
    floating* db,               # OUT (D,)
    const floating* dA,         # IN  (N, D)
    const floating* A,          # IN  (N, D)
    Py_ssize_t N, Py_ssize_t D, int activation, double slope,
) noexcept nogil:
    """dZ = dA * g'(Z + b) (through A); db = dZ.sum(axis=0), summed in double; dZ may be dA."""
    cdef Py_ssize_t i, b, j0, block, width, k
    cdef double db_sum[BLOCK]
    for block in range((D + BLOCK - 1) // BLOCK):
        j0 = block * BLOCK
        width = min(<Py_ssize_t>BLOCK, D - j0)
        for b in range(width):
            db_sum[b] = 0.0
        for i in range(N):
            k = i * D + j0
            derivative_row(dZ + k, dA + k, A + k, width, activation, slope)
            for b in range(width):
                db_sum[b] += dZ[k + b]
        for b in range(width):
            db[j0 + b] = <floating>db_sum[b]
