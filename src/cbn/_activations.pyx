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
    """A = g(Z + b)."""
    cdef Py_ssize_t i, j
    cdef const floating* z_row
    cdef floating* a_row
    for i in range(N):
        z_row = Z + i * D
        a_row = A + i * D
        for j in range(D):
            a_row[j] = <floating>activate(z_row[j] + b[j], activation, slope)


cdef void bias_activation_backward(
    floating* dZ,               # OUT (N, D)
    floating* db,               # OUT (D,)
    const floating* dA,         # IN  (N, D)
    const floating* A,          # IN  (N, D)
    Py_ssize_t N, Py_ssize_t D, int activation, double slope,
) noexcept nogil:
    """dZ = dA * g'(Z + b) (through A); db = dZ.sum(axis=0), summed in double."""
    cdef Py_ssize_t i, j, j0, j1, k, block
    cdef double dz
    cdef double db_sum[BLOCK]
    for block in range((D + BLOCK - 1) // BLOCK):
        j0 = block * BLOCK
        j1 = min(j0 + BLOCK, D)
        for j in range(j1 - j0):
            db_sum[j] = 0.0
        for i in range(N):
            k = i * D
            for j in range(j0, j1):
                dz = dA[k + j] * activation_derivative(A[k + j], activation, slope)
                dZ[k + j] = <floating>dz
                db_sum[j - j0] += dz
        for j in range(j0, j1):
            db[j] = <floating>db_sum[j - j0]
