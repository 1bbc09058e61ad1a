/* Predict a CSV file with a model trained by `cbn train`, without Python:
 *
 *     CBN=$(python -c "import cbn; print(cbn.get_include())")
 *     cc -O2 -std=c99 examples/predict_csv.c "$CBN"/cbn_model.c -I"$CBN" -lm -o predict_csv
 *     ./predict_csv model.safetensors data.csv [TARGET_COLUMN] > outputs.csv
 *
 * data.csv: a header row, then numeric columns in the order the model was trained on (a
 * column named TARGET_COLUMN is skipped). Output: one row per input row, the outputs of
 * the network (class probabilities for a classifier, values for a regressor), printed with
 * enough digits to read back the exact float32/float64 values.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cbn_model.h"

#define MAX_LINE 65536

static int fail(const char *what) {
    fprintf(stderr, "predict_csv: %s\n", what);
    return 1;
}

int main(int argc, char **argv) {
    cbn_model *model;
    char line[MAX_LINE];
    FILE *f;
    int status, skip = -1, column, dtype;
    size_t n_in, n_out, j, row = 0;
    double *x, *y;
    float *xf, *yf;
    if (argc < 3 || argc > 4) return fail("usage: predict_csv MODEL DATA.csv [TARGET_COLUMN]");
    status = cbn_model_load(argv[1], &model);
    if (status != CBN_OK) {
        fprintf(stderr, "predict_csv: %s: %s\n", argv[1], cbn_model_strerror(status));
        return 1;
    }
    n_in = cbn_model_n_inputs(model);
    n_out = cbn_model_n_outputs(model);
    dtype = cbn_model_dtype(model);
    f = fopen(argv[2], "r");
    if (!f || !fgets(line, sizeof line, f)) return fail("cannot read the CSV header");
    if (argc == 4) {   /* find the target column in the header */
        char *name = strtok(line, ",\r\n");
        for (column = 0; name; column++, name = strtok(NULL, ",\r\n"))
            if (strcmp(name, argv[3]) == 0) skip = column;
        if (skip < 0) return fail("the target column is not in the header");
    }
    x = malloc(n_in * sizeof *x);
    y = malloc(n_out * sizeof *y);
    xf = malloc(n_in * sizeof *xf);
    yf = malloc(n_out * sizeof *yf);
    if (!x || !y || !xf || !yf) return fail("out of memory");
    while (fgets(line, sizeof line, f)) {
        char *field = line, *end;
        row++;
        for (column = 0, j = 0; *field && *field != '\n' && *field != '\r'; column++) {
            double v = strtod(field, &end);
            if (column != skip) {
                if (end == field || j == n_in) {
                    fprintf(stderr, "predict_csv: row %lu: expected %lu numbers\n",
                            (unsigned long)row, (unsigned long)n_in);
                    return 1;
                }
                x[j++] = v;
            }
            field = strchr(field, ',');
            if (!field) break;
            field++;
        }
        if (j != n_in) return fail("a row has too few numeric columns");
        if (dtype == CBN_FLOAT32) {   /* the model's own precision */
            for (j = 0; j < n_in; j++) xf[j] = (float)x[j];
            status = cbn_model_forward_f32(model, xf, 1, yf);
            for (j = 0; j < n_out; j++) y[j] = yf[j];
        } else {
            status = cbn_model_forward_f64(model, x, 1, y);
        }
        if (status != CBN_OK) return fail(cbn_model_strerror(status));
        for (j = 0; j < n_out; j++)
            printf(j + 1 < n_out ? "%.17g," : "%.17g\n", y[j]);
    }
    fclose(f);
    free(x); free(y); free(xf); free(yf);
    cbn_model_free(model);
    return 0;
}
