"""Inference speed on the mnist-sized network [784, 512, 256, 10] (relu, batch norm, softmax).

    python benchmarks/bench_inference.py                 # table, float32 and float64
    python benchmarks/bench_inference.py --quick         # smoke check
    python benchmarks/bench_inference.py --baseline DIR  # also cbn from another checkout's src
                                                         # (e.g. the previous release, built
                                                         # with build_ext --inplace)

Columns: cbn's predict_proba; ``net.freeze().predict_proba`` (cbn.FrozenNetwork: the C
library's loaded model, W packed for few rows); the C library (cbn_model.c, compiled here with
``cc -O3 -march=native -ffp-contract=off``, rows split between the threads by pthreads for
large batches); onnxruntime (the graph of ``net.to_onnx``, batch norm folded, all graph
optimizations); PyTorch (eval mode, inference_mode). Same weights, same thread count
(--threads, default 1). Every framework runs in its own process; each figure is the median
of many calls after a warm-up, and the rounds interleave the frameworks.

Benchmark with the machine's own BLAS kernel, e.g.
``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_inference.py``.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

from bench import median_time  # benchmarks/bench.py, beside this file

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")
SIZES = [784, 512, 256, 10]
ROWS = (1, 256, 10000)
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "CBN_NUM_THREADS")

C_BENCH = r"""
#define _POSIX_C_SOURCE 199309L
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "cbn_model.h"
typedef struct { const cbn_model *m; const char *X; char *out; size_t rows; } job;
static void *work(void *a) {
    job *j = a;
    if (cbn_model_dtype(j->m) == CBN_FLOAT32)
        cbn_model_forward_f32(j->m, (const float *)j->X, j->rows, (float *)j->out);
    else
        cbn_model_forward_f64(j->m, (const double *)j->X, j->rows, (double *)j->out);
    return NULL;
}
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
static int cmp(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y); }
int main(int argc, char **argv) {
    cbn_model *m; size_t rows = strtoul(argv[2], 0, 10); int threads = atoi(argv[3]), reps = atoi(argv[4]);
    int i, t, parts;
    if (cbn_model_load(argv[1], &m)) return 1;
    size_t item = cbn_model_dtype(m) == CBN_FLOAT32 ? 4 : 8, in = cbn_model_n_inputs(m) * item, ob = cbn_model_n_outputs(m) * item;
    char *X = calloc(rows, in), *out = malloc(rows * ob);
    for (i = 0; i < (int)(rows * in / item); i++) { if (item == 4) ((float *)X)[i] = (float)((i * 7919 % 1000) / 500.0 - 1); else ((double *)X)[i] = (i * 7919 % 1000) / 500.0 - 1; }
    parts = rows >= 256 && threads > 1 ? threads : 1;
    double *times = malloc(reps * sizeof *times);
    for (i = -3; i < reps; i++) {
        pthread_t th[64]; job jobs[64];
        double t0 = now();
        for (t = 0; t < parts; t++) {
            size_t a = rows * t / parts, b = rows * (t + 1) / parts;
            jobs[t].m = m; jobs[t].X = X + a * in; jobs[t].out = out + a * ob; jobs[t].rows = b - a;
            if (parts == 1) work(&jobs[t]); else pthread_create(&th[t], 0, work, &jobs[t]);
        }
        if (parts > 1) for (t = 0; t < parts; t++) pthread_join(th[t], 0);
        if (i >= 0) times[i] = now() - t0;
    }
    qsort(times, reps, sizeof *times, cmp);
    printf("%.9g\n", times[reps / 2]);
    return 0;
}
"""


def reps_for(rows, quick):
    table = {1: (200, 0.5), 256: (30, 0.5), 10000: (5, 1.0)}
    n, s = table[rows]
    return (max(3, n // 5), s / 5) if quick else (n, s)


def make_network(dtype):
    """The network, with batch-norm statistics and scales off their defaults (any cbn
    version builds the same one, so --baseline compares like with like)."""
    import numpy as np
    import cbn
    net = cbn.Network(SIZES, dtype=dtype, seed=0)
    rng = np.random.default_rng(1)
    for layer in net.layers[:-1]:
        layer.running_mean[...] = 0.1 * rng.standard_normal(layer.n_out)
        layer.running_var[...] = rng.uniform(0.5, 2.0, layer.n_out)
        layer.gamma[...] = rng.uniform(0.5, 1.5, layer.n_out)
    return net


def model(dtype, folder):
    """make_network(dtype) saved once (for the C library and onnxruntime)."""
    path = os.path.join(folder, f"mnist-{dtype}.safetensors")
    if not os.path.exists(path):
        make_network(dtype).save(path)
    return path


def child(framework, dtype, threads, quick, folder):
    import numpy as np
    net = make_network(dtype)
    X_all = np.random.default_rng(0).standard_normal((max(ROWS), SIZES[0])).astype(dtype)
    results = {}
    if framework == "cbn":
        predict = net.predict_proba
    elif framework == "cbn frozen":
        predict = net.freeze().predict_proba
    elif framework == "onnxruntime":
        import onnxruntime as ort
        path = os.path.join(folder, f"mnist-{dtype}.onnx")
        net.to_onnx(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def predict(X):
            return session.run(None, {name: X})[0]
    elif framework == "torch":
        import torch
        torch.set_num_threads(threads)
        tdtype = torch.float32 if dtype == "float32" else torch.float64
        layers = []
        for layer in net.layers[:-1]:
            lin = torch.nn.Linear(layer.n_in, layer.n_out, bias=False, dtype=tdtype)
            bn = torch.nn.BatchNorm1d(layer.n_out, eps=net.bn_eps, dtype=tdtype)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(layer.W))
                bn.weight.copy_(torch.from_numpy(layer.gamma))
                bn.bias.copy_(torch.from_numpy(layer.beta))
                bn.running_mean.copy_(torch.from_numpy(layer.running_mean))
                bn.running_var.copy_(torch.from_numpy(layer.running_var))
            layers += [lin, bn, torch.nn.ReLU()]
        out = net.layers[-1]
        lin = torch.nn.Linear(out.n_in, out.n_out, dtype=tdtype)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(out.W))
            lin.bias.copy_(torch.from_numpy(out.b))
        module = torch.nn.Sequential(*layers, lin).eval()

        def predict(X):
            with torch.inference_mode():
                return torch.softmax(module(torch.from_numpy(X)), dim=1).numpy()
    for rows in ROWS:
        X = np.ascontiguousarray(X_all[:rows])
        results[rows] = median_time(lambda: predict(X), *reps_for(rows, quick), warmup=3)
    return results


def c_library(dtype, threads, quick, folder):
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        return None
    import cbn
    exe = os.path.join(folder, "c_bench")
    if not os.path.exists(exe):
        source = os.path.join(folder, "c_bench.c")
        with open(source, "w") as f:
            f.write(C_BENCH)
        inc = cbn.get_include()
        subprocess.run([cc, "-O3", "-march=native", "-ffp-contract=off", "-std=c99", source,
                        os.path.join(inc, "cbn_model.c"), f"-I{inc}", "-o", exe, "-lm",
                        "-lpthread"], check=True)
    results = {}
    for rows in ROWS:
        reps = reps_for(rows, quick)[0]
        proc = subprocess.run([exe, model(dtype, folder), str(rows), str(threads), str(reps)],
                              capture_output=True, text=True, check=True)
        results[rows] = float(proc.stdout)
    return results


def blas_info():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed"
    import numpy  # noqa: F401  (loads the BLAS)
    return "; ".join(f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')} "
                     f"threads={i.get('num_threads')}" for i in threadpool_info()
                     if i.get("user_api") == "blas")


def spawn(framework, dtype, threads, quick, folder, src):
    env = {**os.environ, **{v: str(threads) for v in THREAD_VARS}}
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, __file__, "--child", framework, "--dtype", dtype,
                           "--threads", str(threads), "--folder", folder]
                          + (["--quick"] if quick else []),
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return None, proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
    return {int(k): v for k, v in json.loads(proc.stdout).items()}, None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--baseline", help="another checkout's src folder (cbn built in place)")
    parser.add_argument("--dtype", choices=("float32", "float64"))
    parser.add_argument("--child")
    parser.add_argument("--folder")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.dtype, args.threads, args.quick, args.folder)))
        return
    here_src = SRC if any(f.startswith("_kernels") and f.endswith((".so", ".pyd"))
                          for f in os.listdir(os.path.join(SRC, "cbn"))) else ""
    rounds = args.rounds or (1 if args.quick else 3)
    columns = ["cbn", "cbn frozen", "C library", "onnxruntime", "torch"] + \
        (["cbn baseline"] if args.baseline else [])
    print(f"BLAS: {blas_info()}")
    print(f"threads: {args.threads}; medians of {rounds} round(s); seconds per call\n")
    with tempfile.TemporaryDirectory() as folder:
        for dtype in ([args.dtype] if args.dtype else ["float32", "float64"]):
            runs = {c: [] for c in columns}
            notes = {}
            for _ in range(rounds):
                for column in columns:
                    if column == "C library":
                        got, why = c_library(dtype, args.threads, args.quick, folder), "no cc"
                    else:
                        framework = "cbn" if column == "cbn baseline" else column
                        src = args.baseline if column == "cbn baseline" else here_src
                        got, why = spawn(framework, dtype, args.threads, args.quick, folder, src)
                    if got is None:
                        notes[column] = why
                    else:
                        runs[column].append(got)
            print(f"{dtype}: " + " | ".join(f"{c}" for c in columns)
                  + "   (onnxruntime / cbn, onnxruntime / cbn frozen)")
            for rows in ROWS:
                cells, figures = [], {}
                for c in columns:
                    if runs[c]:
                        figures[c] = statistics.median(r[rows] for r in runs[c])
                        cells.append(f"{figures[c] * 1e3:10.3f} ms")
                    else:
                        cells.append(f"{'n/a':>13}")
                ratio = " ".join(f"{figures['onnxruntime'] / figures[c]:.2f}x"
                                 for c in ("cbn", "cbn frozen")
                                 if "onnxruntime" in figures and c in figures)
                print(f"  {rows:>6} rows: " + " | ".join(cells) + f"   {ratio}")
            for c, why in notes.items():
                print(f"  {c}: not measured ({why})")
            print()


if __name__ == "__main__":
    main()
