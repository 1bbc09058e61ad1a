/* cbn_model.h: run a trained cbn network from C (no Python, no BLAS; C99 and libm only).
 *
 * Drop cbn_model.h and cbn_model.c into your program and compile them together:
 *
 *     cc -O2 -std=c99 app.c "$CBN"/cbn_model.c -I"$CBN" -lm
 *
 * where CBN=$(python -c "import cbn; print(cbn.get_include())"). Use -std=c99 (or c11) or
 * -ffp-contract=off, never -ffast-math: every multiply-add of the kernel is an explicit fma()
 * (exactly rounded, the same bits as an FMA instruction), and nothing else may be fused (GCC
 * in its default GNU mode fuses a*b + c where the target has FMA, e.g. aarch64). Then every
 * build (any flags, SSE2, AVX2, AVX-512, NEON) gives the same bits as cbn's
 * Network.predict_proba in Python. No -march flag is needed: on x86-64, GCC and clang also
 * compile the forward pass for AVX2 + FMA and take it at run time where the CPU has both
 * (-DCBN_NO_DISPATCH turns that off); the baseline build calls fma() per product where the
 * target has no FMA instruction (right, but slow: only old x86-64 CPUs run it).
 *
 * The model file is the one Network.save writes (format 2: safetensors with cbn metadata).
 * Every function returns 0 or a negative CBN_ERR_* code; nothing aborts or prints, and the
 * loader checks every length, offset, shape, dtype and the file's SHA-256 checksum before
 * it uses any value, so a damaged or hostile file gives an error code.
 *
 * A loaded model is immutable: any number of threads may call cbn_model_forward_* on one
 * model at the same time. Each forward call computes its rows one after the other on the
 * calling thread; to use several cores, split the rows between threads (a row's outputs
 * do not depend on the other rows of the call, so the result is the same bits).
 */
#ifndef CBN_MODEL_H
#define CBN_MODEL_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    CBN_OK = 0,
    CBN_ERR_IO = -1,         /* the file cannot be opened or read */
    CBN_ERR_NOMEM = -2,      /* out of memory */
    CBN_ERR_FORMAT = -3,     /* not a well-formed cbn model file (header, offsets, shapes) */
    CBN_ERR_VERSION = -4,    /* a cbn file of another format or format version */
    CBN_ERR_CHECKSUM = -5,   /* the file's SHA-256 checksum does not match: damaged or edited */
    CBN_ERR_VALUE = -6,      /* a parameter or running statistic is not finite, or a variance < 0 */
    CBN_ERR_DTYPE = -7,      /* forward_f32 on a float64 model or forward_f64 on a float32 one */
    CBN_ERR_ARGUMENT = -8,   /* a NULL pointer where data is needed, or a size that overflows */
    CBN_ERR_OVERFLOW = -9    /* forward: an output layer value overflowed to inf/NaN (X too
                                large); out is written, but the affected rows are unusable */
};

enum { CBN_FLOAT32 = 32, CBN_FLOAT64 = 64 };

typedef struct cbn_model cbn_model;

/* Load a model file. On success *model holds a new model (free it with cbn_model_free);
   on failure *model is NULL. */
int cbn_model_load(const char *path, cbn_model **model);
/* The same from the file's bytes in memory; the model copies what it needs. */
int cbn_model_load_memory(const void *data, size_t size, cbn_model **model);
void cbn_model_free(cbn_model *model);    /* NULL is allowed */

size_t cbn_model_n_inputs(const cbn_model *model);
size_t cbn_model_n_outputs(const cbn_model *model);
int cbn_model_dtype(const cbn_model *model);   /* CBN_FLOAT32 or CBN_FLOAT64 */

/* out[n_rows][n_outputs] = the network's outputs for X[n_rows][n_inputs] (row-major):
   softmax rows, per-output sigmoid probabilities or linear values, as Python's
   predict_proba (predict for linear outputs). Only the model's own dtype is accepted
   (else CBN_ERR_DTYPE). Allocates one workspace of at most cbn_model_workspace_size(model) bytes
   for the call (freed before returning; CBN_ERR_NOMEM if that fails). */
int cbn_model_forward_f32(const cbn_model *model, const float *X, size_t n_rows, float *out);
int cbn_model_forward_f64(const cbn_model *model, const double *X, size_t n_rows, double *out);

/* The same without allocating: workspace points to cbn_model_workspace_size(model) bytes
   (any alignment) that the call may overwrite; one workspace per concurrent call. */
size_t cbn_model_workspace_size(const cbn_model *model);
int cbn_model_forward_f32_ws(const cbn_model *model, const float *X, size_t n_rows,
                             float *out, void *workspace);
int cbn_model_forward_f64_ws(const cbn_model *model, const double *X, size_t n_rows,
                             double *out, void *workspace);

/* A static English sentence for a status code (never NULL). */
const char *cbn_model_strerror(int status);

/* The instruction set the forward functions' kernels run on this CPU: "avx512", "avx2"
   (AVX2 + FMA) or "baseline". Every one gives the same bits; only the speed differs. */
const char *cbn_model_instruction_set(void);

#ifdef __cplusplus
}
#endif
#endif /* CBN_MODEL_H */
