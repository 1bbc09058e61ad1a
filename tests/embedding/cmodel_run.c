/* Test driver of cbn_model.c (tests/test_cmodel.py compiles it with the documented line).
 *
 *   cmodel_run predict MODEL X.bin N_ROWS OUT.bin   forward N_ROWS rows of raw X into OUT
 *   cmodel_run threads MODEL X.bin N_ROWS           4 threads at once on one model, each
 *                                                  over all rows and over its quarter; the
 *                                                  results must equal a one-thread forward
 *   cmodel_run load FILE...                         print each file's load status (one line
 *                                                  each); loaded models also run 3 rows
 *   cmodel_run sha256 FILE                          print the SHA-256 of FILE (cbn's own)
 *   cmodel_run errors MODEL                         print the status of misuse calls
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cbn_model.h"

void cbn__sha256_digest(const void *data, size_t n, unsigned char digest[32]);

static void *read_all(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    unsigned char *buf = NULL;
    size_t cap = 0;
    *size = 0;
    if (!f) return NULL;
    for (;;) {
        size_t got;
        if (*size == cap) {
            cap = cap ? 2 * cap : 4096;
            buf = realloc(buf, cap);
            if (!buf) exit(3);
        }
        got = fread(buf + *size, 1, cap - *size, f);
        *size += got;
        if (got == 0) break;
    }
    fclose(f);
    return buf;
}

static size_t item_of(const cbn_model *m) { return cbn_model_dtype(m) == CBN_FLOAT32 ? 4 : 8; }

static int forward(const cbn_model *m, const void *X, size_t rows, void *out) {
    if (cbn_model_dtype(m) == CBN_FLOAT32) return cbn_model_forward_f32(m, X, rows, out);
    return cbn_model_forward_f64(m, X, rows, out);
}

typedef struct {
    const cbn_model *m;
    const unsigned char *X;
    size_t rows, start, stop;
    unsigned char *all, *part;
    int status;
} job;

static void *work(void *arg) {
    job *j = arg;
    size_t in = cbn_model_n_inputs(j->m) * item_of(j->m), out = cbn_model_n_outputs(j->m) * item_of(j->m);
    int r;
    for (r = 0; r < 3; r++) {
        j->status |= forward(j->m, j->X, j->rows, j->all);
        j->status |= forward(j->m, j->X + j->start * in, j->stop - j->start, j->part + j->start * out);
    }
    return NULL;
}

int main(int argc, char **argv) {
    cbn_model *m = NULL;
    int status, i;
    if (argc >= 3 && strcmp(argv[1], "load") == 0) {
        for (i = 2; i < argc; i++) {
            status = cbn_model_load(argv[i], &m);
            if (status == CBN_OK) {
                size_t n = cbn_model_n_inputs(m) * 3, k;
                double *X = calloc(n ? n : 1, sizeof(double));
                double *out = calloc(cbn_model_n_outputs(m) * 3 + 1, sizeof(double));
                float *Xf = calloc(n ? n : 1, sizeof(float));
                for (k = 0; k < n; k++) { X[k] = 0.25 * (double)(k % 7); Xf[k] = (float)X[k]; }
                if (cbn_model_dtype(m) == CBN_FLOAT32) cbn_model_forward_f32(m, Xf, 3, (float *)out);
                else cbn_model_forward_f64(m, X, 3, out);
                free(X); free(Xf); free(out);
                cbn_model_free(m);
            }
            printf("%d\n", status);
        }
        return 0;
    }
    if (argc == 2 && strcmp(argv[1], "isa") == 0) {
        printf("%s\n", cbn_model_instruction_set());
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "sha256") == 0) {
        size_t size;
        unsigned char *data = read_all(argv[2], &size), digest[32];
        if (!data && size) return 2;
        cbn__sha256_digest(data, size, digest);
        for (i = 0; i < 32; i++) printf("%02x", digest[i]);
        printf("\n");
        free(data);
        return 0;
    }
    if (argc < 3) return 2;
    status = cbn_model_load(argv[2], &m);
    if (status != CBN_OK) {
        printf("load: %d %s\n", status, cbn_model_strerror(status));
        return 1;
    }
    if (strcmp(argv[1], "errors") == 0) {
        float xf[4096] = {0}, of[4096];
        double xd[4096] = {0}, od[4096];
        int wrong = cbn_model_dtype(m) == CBN_FLOAT32 ? cbn_model_forward_f64(m, xd, 1, od)
                                                      : cbn_model_forward_f32(m, xf, 1, of);
        printf("%d %d %d %d %d\n", wrong, cbn_model_forward_f64(NULL, xd, 1, od),
               cbn_model_dtype(m) == CBN_FLOAT32 ? cbn_model_forward_f32(m, NULL, 1, of)
                                                 : cbn_model_forward_f64(m, NULL, 1, od),
               cbn_model_dtype(m) == CBN_FLOAT32 ? cbn_model_forward_f32(m, NULL, 0, NULL)
                                                 : cbn_model_forward_f64(m, NULL, 0, NULL),
               cbn_model_load("/nonexistent/model", &(cbn_model *){NULL}));
        cbn_model_free(m);
        return 0;
    }
    {
        size_t size, rows = (size_t)strtoull(argv[4], NULL, 10), item = item_of(m);
        size_t out_bytes = rows * cbn_model_n_outputs(m) * item;
        unsigned char *X = read_all(argv[3], &size);
        unsigned char *out = malloc(out_bytes + 1);
        if (size != rows * cbn_model_n_inputs(m) * item) return 2;
        status = forward(m, X, rows, out);
        if (strcmp(argv[1], "predict") == 0) {
            FILE *f = fopen(argv[5], "wb");
            fwrite(out, 1, out_bytes, f);
            fclose(f);
            printf("%d\n", status);
        } else if (strcmp(argv[1], "threads") == 0) {
            pthread_t t[4];
            job jobs[4];
            int bad = 0;
            for (i = 0; i < 4; i++) {
                jobs[i].m = m; jobs[i].X = X; jobs[i].rows = rows;
                jobs[i].start = rows * i / 4; jobs[i].stop = rows * (i + 1) / 4;
                jobs[i].all = malloc(out_bytes + 1); jobs[i].part = calloc(out_bytes + 1, 1);
                jobs[i].status = 0;
                pthread_create(&t[i], NULL, work, &jobs[i]);
            }
            for (i = 0; i < 4; i++) pthread_join(t[i], NULL);
            for (i = 0; i < 4; i++) {
                size_t ob = cbn_model_n_outputs(m) * item;
                bad |= jobs[i].status != 0 || memcmp(jobs[i].all, out, out_bytes) != 0 ||
                       memcmp(jobs[i].part + jobs[i].start * ob, out + jobs[i].start * ob,
                              (jobs[i].stop - jobs[i].start) * ob) != 0;
                free(jobs[i].all); free(jobs[i].part);
            }
            printf("%s\n", bad ? "differ" : "same");
        }
        free(X);
        free(out);
    }
    cbn_model_free(m);
    return 0;
}
