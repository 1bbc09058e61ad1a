"""Where cbn's own kernels (batch norm, optimizer updates, checks) run in parallel.

parallel_for(task, ctx, n, grain, min_work) splits [0, n) into contiguous chunks whose
bounds are multiples of grain, calls task(ctx, begin, end, chunk) once per chunk on the
calling thread or a worker (whichever claims it first) and returns when all are done.
Ranges shorter than 2 * min_work stay on the calling thread (one call, chunk 0). The
kernels split only where the arithmetic of each element (or unit) does not depend on the
split, so results are bit-identical for any thread count.

The workers are the BLAS's own when cbn._threads registers OpenBLAS's gotoblas_pthread
(set_blas_runner): one set of threads for the matrix products and the kernels between
them, with OpenBLAS's wait policy (one region at a time; a kernel called meanwhile from
another thread runs serially on its own thread). Tasks must never call the BLAS: a worker
inside a cbn job cannot serve it. Otherwise (another BLAS, CBN_THREAD_POOL=own, or more
threads set than the BLAS has) a small pool of cbn's own: an idle worker sleeps on a
condition variable (a passive wait), and one parallel region runs at a time: a call made
while the pool is busy (another Python thread training another network) runs serially on
its own thread.

Why not OpenMP: its threads busy-wait between parallel regions by default and then fight
the BLAS's threads for the cores (an earlier attempt lost to that), and the wait policy can
only be set through the environment before the runtime starts.

Thread count: set_num_threads(n) fixes it; 0 (the default) follows the BLAS library's
current thread count, read through the function registered by set_blas_thread_getter
(cbn._threads finds OpenBLAS's openblas_get_num_threads), else 1. Windows builds run
serially (no pthreads).
"""

cdef extern from *:
    """
    #include <stddef.h>
    #include <stdint.h>
    #define CBN_MAX_THREADS 64
    #define CBN_MIN_CHUNK_GRAINS 64
    #define CBN_STACK_BYTES ((size_t)2 << 20)
    typedef void (*cbn_task_fn)(void *ctx, Py_ssize_t begin, Py_ssize_t end, int part);
    typedef int (*cbn_count_fn)(void);

    static int cbn_explicit_threads = 0;        /* 0: follow the BLAS */
    static cbn_count_fn cbn_blas_threads = NULL;
    /* OpenBLAS's gotoblas_pthread(jobs, fn, args, stride): runs fn(args + i * stride) for
       each i < jobs, job 0 on the caller and the rest on OpenBLAS's own worker threads,
       and returns when all are done. NULL: cbn's own pool. */
    typedef int (*cbn_blas_run_fn)(int jobs, void *fn, void *args, int stride);
    static cbn_blas_run_fn cbn_blas_run = NULL;

    static int cbn_threads_wanted(void) {
        int n = cbn_explicit_threads;
        if (n <= 0)
            n = cbn_blas_threads ? cbn_blas_threads() : 1;
        if (n < 1) n = 1;
        if (n > CBN_MAX_THREADS) n = CBN_MAX_THREADS;
        return n;
    }

    /* Bound of part k of parts over n_grains grains of grain elements, clipped to n. */
    static Py_ssize_t cbn_part_bound(Py_ssize_t n, Py_ssize_t grain, int parts, int k) {
        Py_ssize_t n_grains = (n + grain - 1) / grain;
        Py_ssize_t b = (Py_ssize_t)(((long double)n_grains * k) / parts) * grain;
        return b < n ? b : n;
    }

    #if defined(_WIN32)
    static int cbn_parallel_threads_supported(void) { return 0; }
    static int cbn_default_stack_ok(void) { return 0; }
    static int cbn_blas_fork_handlers(void) { return 0; }
    static void cbn_parallel_for(cbn_task_fn fn, void *ctx, Py_ssize_t n, Py_ssize_t grain,
                                 Py_ssize_t min_work) {
        (void)grain; (void)min_work;
        if (n > 0) fn(ctx, 0, n, 0);
    }
    #else
    #include <pthread.h>
    #include <sched.h>

    static struct {
        pthread_mutex_t use;            /* held by the one parallel region running */
        pthread_mutex_t lock;           /* guards everything below */
        pthread_cond_t wake, done;
        int started;                    /* worker threads alive */
        unsigned long generation;       /* bumped for every parallel region */
        cbn_task_fn fn; void *ctx;
        Py_ssize_t n, grain;
        int chunks, next, in_flight;    /* chunks of the region, next to claim, running */
    } cbn_pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER,
                  PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, NULL, NULL,
                  0, 1, 0, 0, 0};

    /* Claim and run chunks of the current region until none is left; called and returns
       with the lock held. */
    static void cbn_run_chunks(void) {
        while (cbn_pool.next < cbn_pool.chunks) {
            int k = cbn_pool.next++;
            cbn_task_fn fn = cbn_pool.fn; void *ctx = cbn_pool.ctx;
            Py_ssize_t begin = cbn_part_bound(cbn_pool.n, cbn_pool.grain, cbn_pool.chunks, k);
            Py_ssize_t end = cbn_part_bound(cbn_pool.n, cbn_pool.grain, cbn_pool.chunks, k + 1);
            cbn_pool.in_flight++;
            pthread_mutex_unlock(&cbn_pool.lock);
            fn(ctx, begin, end, k);
            pthread_mutex_lock(&cbn_pool.lock);
            if (--cbn_pool.in_flight == 0 && cbn_pool.next >= cbn_pool.chunks)
                pthread_cond_signal(&cbn_pool.done);
        }
    }

    static void *cbn_worker(void *arg) {
        unsigned long seen;
        (void)arg;
        pthread_mutex_lock(&cbn_pool.lock);
        /* A worker is created under the lock just before the region it is created for
           bumps the generation: that region is its first. */
        seen = cbn_pool.generation - 1;
        for (;;) {
            while (cbn_pool.generation == seen)
                pthread_cond_wait(&cbn_pool.wake, &cbn_pool.lock);   /* sleeps: no spinning */
            seen = cbn_pool.generation;
            cbn_run_chunks();   /* nothing left if the caller already did it all */
        }
        return NULL;
    }

    /* A forked child has none of the parent's threads: start afresh. */
    static void cbn_pool_after_fork(void) {
        pthread_mutex_init(&cbn_pool.use, NULL);
        pthread_mutex_init(&cbn_pool.lock, NULL);
        pthread_cond_init(&cbn_pool.wake, NULL);
        pthread_cond_init(&cbn_pool.done, NULL);
        cbn_pool.started = 0;
        cbn_pool.chunks = cbn_pool.next = cbn_pool.in_flight = 0;
    }

    static int cbn_parallel_threads_supported(void) { return 1; }

    /* Threads of the process get the default stack size: OpenBLAS's workers are made so.
       The BLAS's threads run the kernels only if that is at least CBN_STACK_BYTES. */
    static int cbn_default_stack_ok(void) {
        pthread_attr_t attr;
        size_t stack = 0;
        if (pthread_attr_init(&attr) != 0) return 0;
        if (pthread_attr_getstacksize(&attr, &stack) != 0) stack = 0;
        pthread_attr_destroy(&attr);
        return stack >= CBN_STACK_BYTES;
    }

    /* One region on the BLAS's threads at a time (1 while one runs): OpenBLAS queues a
       second caller's jobs by spinning until a worker is free, holding the lock every BLAS
       call needs, so a region started meanwhile runs serially instead, as on the own pool.
       Fork waits for the region in flight: OpenBLAS's own fork handler stops its workers
       and would wait forever for one inside a cbn job. */
    static int cbn_blas_busy = 0;

    static void cbn_blas_before_fork(void) {
        while (__atomic_exchange_n(&cbn_blas_busy, 1, __ATOMIC_ACQUIRE)) sched_yield();
    }
    static void cbn_blas_after_fork(void) { __atomic_store_n(&cbn_blas_busy, 0, __ATOMIC_RELEASE); }

    /* Fork handlers run their prepare parts in reverse order of registration: cbn's,
       registered after OpenBLAS's (set up when the library loaded), runs first. */
    static int cbn_blas_fork_handlers(void) {
        static int done = 0;
        if (!done)
            done = pthread_atfork(cbn_blas_before_fork, cbn_blas_after_fork,
                                  cbn_blas_after_fork) == 0;
        return done;
    }

    /* Each job claims chunks until none is left, so a worker that starts late costs only
       its own start (but the caller waits for every job to have run, empty or not). */
    typedef struct {
        cbn_task_fn fn; void *ctx;
        Py_ssize_t n, grain;
        int chunks, next;
    } cbn_blas_region;

    static void cbn_blas_job(void *arg) {
        cbn_blas_region *r = *(cbn_blas_region **)arg;
        int k;
        while ((k = __atomic_fetch_add(&r->next, 1, __ATOMIC_RELAXED)) < r->chunks)
            r->fn(r->ctx, cbn_part_bound(r->n, r->grain, r->chunks, k),
                  cbn_part_bound(r->n, r->grain, r->chunks, k + 1), k);
    }

    /* The range is cut into a few chunks per thread, claimed one at a time by whichever
       thread is free. On the own pool the caller works from the start and waits only for
       chunks a worker has claimed, so a worker the OS has not yet scheduled (a busy
       machine) costs nothing. */
    static void cbn_parallel_for(cbn_task_fn fn, void *ctx, Py_ssize_t n, Py_ssize_t grain,
                                 Py_ssize_t min_work) {
        static int fork_handler = 0;
        int threads = cbn_threads_wanted(), chunks;
        Py_ssize_t n_grains = (n + grain - 1) / grain, wide;
        if (min_work < 1) min_work = 1;
        if (threads > n / min_work) threads = (int)(n / min_work);
        if (threads > n_grains) threads = (int)n_grains;
        if (threads <= 1) {
            if (n > 0) fn(ctx, 0, n, 0);
            return;
        }
        /* a few chunks per thread balance the load, but never chunks of fewer than
           CBN_MIN_CHUNK_GRAINS grains: batch norm's chunks are ranges of units, and each
           row's piece of a narrow range is a short run of memory, which the hardware
           prefetchers follow badly (at two threads, four chunks each ran slower than one) */
        wide = n_grains / CBN_MIN_CHUNK_GRAINS;
        chunks = wide < threads ? threads : wide > 4 * threads ? 4 * threads : (int)wide;
        if (chunks > CBN_MAX_THREADS) chunks = CBN_MAX_THREADS;
        /* on the BLAS's threads when it has as many */
        if (cbn_blas_run && cbn_blas_threads && threads <= cbn_blas_threads()) {
            cbn_blas_region region = {fn, ctx, n, grain, chunks, 0};
            cbn_blas_region *jobs[CBN_MAX_THREADS];
            int i;
            if (__atomic_exchange_n(&cbn_blas_busy, 1, __ATOMIC_ACQUIRE)) {
                fn(ctx, 0, n, 0);       /* another region is running */
                return;
            }
            for (i = 0; i < threads; i++) jobs[i] = &region;
            cbn_blas_run(threads, (void *)cbn_blas_job, jobs, (int)sizeof(jobs[0]));
            __atomic_store_n(&cbn_blas_busy, 0, __ATOMIC_RELEASE);
            return;
        }
        if (pthread_mutex_trylock(&cbn_pool.use) != 0) {
            if (n > 0) fn(ctx, 0, n, 0);
            return;
        }
        pthread_mutex_lock(&cbn_pool.lock);
        if (!fork_handler) {
            fork_handler = 1;
            pthread_atfork(NULL, NULL, cbn_pool_after_fork);
        }
        while (cbn_pool.started < threads - 1) {
            pthread_t thread;
            pthread_attr_t attr;
            size_t stack;
            int failed;
            pthread_attr_init(&attr);
            pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
            /* the batch-norm kernels keep per-unit arrays on the stack (about 256 KiB) */
            if (pthread_attr_getstacksize(&attr, &stack) == 0 && stack < CBN_STACK_BYTES)
                pthread_attr_setstacksize(&attr, CBN_STACK_BYTES);
            failed = pthread_create(&thread, &attr, cbn_worker, NULL);
            pthread_attr_destroy(&attr);
            if (failed) break;
            cbn_pool.started++;
        }
        cbn_pool.fn = fn; cbn_pool.ctx = ctx; cbn_pool.n = n; cbn_pool.grain = grain;
        cbn_pool.chunks = chunks;
        cbn_pool.next = 0;
        cbn_pool.in_flight = 0;
        cbn_pool.generation++;
        if (cbn_pool.started > 0)
            pthread_cond_broadcast(&cbn_pool.wake);
        cbn_run_chunks();
        while (cbn_pool.in_flight > 0)
            pthread_cond_wait(&cbn_pool.done, &cbn_pool.lock);
        cbn_pool.chunks = 0;
        pthread_mutex_unlock(&cbn_pool.lock);
        pthread_mutex_unlock(&cbn_pool.use);
    }
    #endif
    """
    int CBN_MAX_THREADS
    int cbn_explicit_threads
    ctypedef int (*cbn_count_fn)() noexcept nogil
    cbn_count_fn cbn_blas_threads
    ctypedef int (*cbn_blas_run_fn)(int, void*, void*, int) noexcept nogil
    cbn_blas_run_fn cbn_blas_run
    int cbn_threads_wanted() noexcept nogil
    int cbn_parallel_threads_supported() noexcept nogil
    int cbn_default_stack_ok() noexcept nogil
    int cbn_blas_fork_handlers() noexcept nogil
    void cbn_parallel_for(task_fn fn, void* ctx, Py_ssize_t n, Py_ssize_t grain,
                          Py_ssize_t min_work) noexcept nogil


cdef void parallel_for(task_fn task, void* ctx, Py_ssize_t n, Py_ssize_t grain,
                       Py_ssize_t min_work) noexcept nogil:
    cbn_parallel_for(task, ctx, n, grain, min_work)


cdef int num_threads() noexcept nogil:
    return cbn_threads_wanted()


# ---- Python side: used by cbn._threads --------------------------------------------------

if CBN_MAX_THREADS != MAX_PARTS:
    raise ImportError("cbn._parallel: CBN_MAX_THREADS differs from MAX_PARTS")
MAX_THREADS = CBN_MAX_THREADS
THREADS_SUPPORTED = bool(cbn_parallel_threads_supported())


def _set_explicit_threads(int n):
    """Fix the kernels' thread count (0: follow the BLAS)."""
    global cbn_explicit_threads
    cbn_explicit_threads = n


def _explicit_threads():
    return cbn_explicit_threads


def _set_blas_thread_getter(size_t address):
    """Register the address of a C function int(void) returning the BLAS's thread count."""
    global cbn_blas_threads
    cbn_blas_threads = <cbn_count_fn>address


def _set_blas_runner(size_t address):
    """Run parallel regions through OpenBLAS's gotoblas_pthread at this address (0: on
    cbn's own pool). Refused (returns False) where threads get less stack than the
    kernels need, or the build runs serially."""
    global cbn_blas_run
    if address and not (cbn_parallel_threads_supported() and cbn_default_stack_ok()
                        and cbn_blas_fork_handlers()):
        return False
    cbn_blas_run = <cbn_blas_run_fn>address
    return True


def _blas_runner():
    return <size_t>cbn_blas_run


def _threads_in_use():
    """The thread count the kernels would use now."""
    return cbn_threads_wanted()
