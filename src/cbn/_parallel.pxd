# cbn's kernels in parallel (see _parallel.pyx), on OpenBLAS's workers or a pool of cbn's:
# chunks of [0, n) with bounds on multiples of grain; task(ctx, begin, end, chunk) runs once
# per chunk (chunk < MAX_PARTS, the range may be empty) on some thread. Tasks never call BLAS.
cdef enum:
    MAX_PARTS = 64   # most threads (and chunks) of one call; CBN_MAX_THREADS in the C code

ctypedef void (*task_fn)(void* ctx, Py_ssize_t begin, Py_ssize_t end, int part) noexcept nogil

cdef void parallel_for(task_fn task, void* ctx, Py_ssize_t n, Py_ssize_t grain,
                       Py_ssize_t min_work) noexcept nogil

cdef int num_threads() noexcept nogil   # the count parallel_for uses now
