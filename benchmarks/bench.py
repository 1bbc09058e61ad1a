"""Speed of one training step: cbn against PyTorch eager, a jax.jit step and plain NumPy.

    python benchmarks/bench.py            # full tables (a few minutes)
    python benchmarks/bench.py --quick    # smoke check (well under a minute)
    python benchmarks/bench.py --json     # the same figures as JSON

A training step is forward + backward + Adam update of a network with batch norm on every
hidden layer (relu) and a softmax/cross-entropy output. Every framework runs in its own
process with the same thread count, after a warm-up; each figure is the median of many
steps, and the full run repeats every measurement in several rounds (taking the median of
the rounds), interleaving the frameworks so that a noisy neighbour hurts them alike. The
header names the BLAS library, its version and the kernel it runs (threadpoolctl, from
``pip install "cbn[bench]"``); PyTorch and jax columns appear when they are installed.
The scaling table times cbn's step against batch size and against width next to its floor.

The BLAS floor is the time of the step's matrix products alone (forward W·A, backward dW
and dA, with preallocated outputs): no framework can train faster than its BLAS.
The kernel table reports achieved memory bandwidth of cbn's fused batch-norm + relu
forward + backward and of its Adam update on arrays larger than the last-level cache,
next to the copy bandwidth of the same machine measured in the same run.

It uses the checkout's ``src`` when its kernels are built there
(``python setup.py build_ext --inplace``), the installed cbn otherwise.
"""
import argparse
import importlib.machinery
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")

CONFIGS = {  # name: (layer sizes, batch size)
    "small": ([64, 128, 128, 10], 64),
    "mnist": ([784, 512, 256, 10], 256),
    "wide": ([784, 2048, 2048, 10], 1024),
}
DTYPES = ("float32", "float64")
FRAMEWORKS = ("cbn", "torch", "jax", "numpy", "blas")
PEERS = ("torch", "jax")  # the frameworks cbn is compared with ("best peer")
# Scaling: the mnist-sized network against batch size, and [784, w, w, 10] against width w
SCALING_BATCHES = (64, 128, 256, 512, 1024)
SCALING_WIDTHS = (128, 256, 512, 1024, 2048)
SCALING_WIDTH_BATCH = 256
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def built_in_place():
    """True if the checkout's src/cbn holds compiled kernels (build_ext --inplace)."""
    return any(os.path.exists(os.path.join(SRC, "cbn", "_kernels" + suffix))
               for suffix in importlib.machinery.EXTENSION_SUFFIXES)


# ---------------------------------------------------------------------- timing helpers

def median_time(fn, min_reps, min_seconds, warmup):
    """Median seconds of fn() over at least min_reps calls and min_seconds, after warm-up."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 20 * min_reps:
            break
    return statistics.median(times)


def data(sizes, batch, dtype, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((batch, sizes[0])).astype(dtype)
    y = rng.integers(0, sizes[-1], batch)
    return X, y


# ---------------------------------------------------------------------- one step per framework

def cbn_step(sizes, batch, dtype):
    import cbn
    X, y = data(sizes, batch, dtype)
    net = cbn.Network(sizes, dtype=dtype, seed=0, optimizer=cbn.Adam(lr=1e-4))
    return lambda: net.train_step(X, y)


def torch_step(sizes, batch, dtype):
    import torch
    X, y = data(sizes, batch, dtype)
    X, y = torch.from_numpy(X), torch.from_numpy(y)
    layers = []
    for n_in, n_out in zip(sizes[:-2], sizes[1:-1]):
        layers += [torch.nn.Linear(n_in, n_out, bias=False), torch.nn.BatchNorm1d(n_out),
                   torch.nn.ReLU()]
    layers.append(torch.nn.Linear(sizes[-2], sizes[-1]))
    model = torch.nn.Sequential(*layers).to(getattr(torch, dtype))
    # PyTorch's fastest CPU Adam: one fused kernel over all parameters
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(X), y)
        loss.backward()
        opt.step()
        return loss.item()
    return step


def jax_step(sizes, batch, dtype):
    """The same network as one jax.jit-compiled step: forward, grad, Adam."""
    import jax
    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    X, y = data(sizes, batch, dtype)
    rng = np.random.default_rng(0)
    params = []
    for n_in, n_out in zip(sizes[:-2], sizes[1:-1]):
        params.append({"W": (rng.standard_normal((n_out, n_in)) * np.sqrt(2 / n_in)).astype(dtype),
                       "gamma": np.ones(n_out, dtype), "beta": np.zeros(n_out, dtype)})
    params.append({"W": (rng.standard_normal((sizes[-1], sizes[-2])) / np.sqrt(sizes[-2])).astype(dtype),
                   "b": np.zeros(sizes[-1], dtype)})
    params = jax.tree_util.tree_map(jnp.asarray, params)
    lr, b1, b2, eps = 1e-4, 0.9, 0.999, 1e-8

    def loss_fn(params, X, y):
        A = X
        for layer in params[:-1]:
            Z = A @ layer["W"].T
            mean = Z.mean(axis=0)
            var = ((Z - mean) ** 2).mean(axis=0)
            A = jax.nn.relu(layer["gamma"] * (Z - mean) * jax.lax.rsqrt(var + 1e-5) + layer["beta"])
        logits = A @ params[-1]["W"].T + params[-1]["b"]
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1).mean()

    @jax.jit
    def step(params, m, v, t, X, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, X, y)
        t = t + 1
        m = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, m, grads)
        v = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, v, grads)
        c1, c2 = 1 - b1 ** t, 1 - b2 ** t
        params = jax.tree_util.tree_map(
            lambda p, m, v: p - lr * (m / c1) / (jnp.sqrt(v / c2) + eps), params, m, v)
        return params, m, v, t, loss

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    state = [params, zeros, zeros, jnp.asarray(0, dtype), jnp.asarray(X), jnp.asarray(y)]

    def run():
        params, m, v, t, loss = step(*state)
        state[:4] = params, m, v, t
        return loss.block_until_ready()
    return run


class NumpyNet:
    """The same network in plain NumPy: Linear -> BatchNorm -> ReLU, softmax output, Adam."""

    def __init__(self, sizes, dtype, eps=1e-5, lr=1e-4, betas=(0.9, 0.999), adam_eps=1e-8):
        import numpy as np
        rng = np.random.default_rng(0)
        self.np, self.eps, self.lr, self.betas, self.adam_eps = np, eps, lr, betas, adam_eps
        self.params = []
        for n_in, n_out in zip(sizes[:-2], sizes[1:-1]):
            self.params += [(rng.standard_normal((n_out, n_in)) * np.sqrt(2 / n_in)).astype(dtype),
                            np.ones(n_out, dtype), np.zeros(n_out, dtype)]
        self.params += [(rng.standard_normal((sizes[-1], sizes[-2])) * np.sqrt(1 / sizes[-2])).astype(dtype),
                        np.zeros(sizes[-1], dtype)]
        self.m = [np.zeros_like(p) for p in self.params]
        self.v = [np.zeros_like(p) for p in self.params]
        self.t = 0

    def step(self, X, y):
        np = self.np
        n_hidden = (len(self.params) - 2) // 3
        A, caches = X, []
        for l in range(n_hidden):
            W, gamma, beta = self.params[3 * l:3 * l + 3]
            Z = A @ W.T
            mean = Z.mean(axis=0)
            var = Z.var(axis=0)
            rstd = 1.0 / np.sqrt(var + self.eps)
            Zhat = (Z - mean) * rstd
            Ab = gamma * Zhat + beta
            A_out = np.maximum(Ab, 0)
            caches.append((A, Zhat, rstd, Ab))
            A = A_out
        W, b = self.params[-2:]
        logits = A @ W.T + b
        logits -= logits.max(axis=1, keepdims=True)
        P = np.exp(logits)
        P /= P.sum(axis=1, keepdims=True)
        N = X.shape[0]
        loss = -np.log(P[np.arange(N), y]).mean()
        dZ = P
        dZ[np.arange(N), y] -= 1
        dZ /= N
        grads = [None] * len(self.params)
        grads[-2], grads[-1] = dZ.T @ A, dZ.sum(axis=0)
        dA = dZ @ W
        for l in range(n_hidden - 1, -1, -1):
            W, gamma, _ = self.params[3 * l:3 * l + 3]
            A_prev, Zhat, rstd, Ab = caches[l]
            dAb = dA * (Ab > 0)
            dbeta = dAb.sum(axis=0)
            dgamma = (dAb * Zhat).sum(axis=0)
            dZ = gamma * rstd / N * (N * dAb - dbeta - Zhat * dgamma)
            grads[3 * l:3 * l + 3] = [dZ.T @ A_prev, dgamma, dbeta]
            if l > 0:
                dA = dZ @ W
        self.t += 1
        b1, b2 = self.betas
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            p -= self.lr * (m / (1 - b1 ** self.t)) / (np.sqrt(v / (1 - b2 ** self.t)) + self.adam_eps)
        return loss


def numpy_step(sizes, batch, dtype):
    X, y = data(sizes, batch, dtype)
    net = NumpyNet(sizes, dtype)
    return lambda: net.step(X, y)


def blas_step(sizes, batch, dtype):
    """The step's matrix products alone, into preallocated outputs: the floor."""
    import numpy as np
    X, _ = data(sizes, batch, dtype)
    rng = np.random.default_rng(1)
    Ws = [rng.standard_normal((n_out, n_in)).astype(dtype) for n_in, n_out in zip(sizes[:-1], sizes[1:])]
    As = [X] + [np.empty((batch, n), dtype) for n in sizes[1:]]
    dZs = [rng.standard_normal((batch, n)).astype(dtype) for n in sizes[1:]]
    dWs = [np.empty_like(W) for W in Ws]
    dAs = [np.empty_like(A) for A in As[:-1]]

    def step():
        for l, W in enumerate(Ws):
            np.matmul(As[l], W.T, out=As[l + 1])
        for l in range(len(Ws) - 1, -1, -1):
            np.matmul(dZs[l].T, As[l], out=dWs[l])
            if l > 0:
                np.matmul(dZs[l], Ws[l], out=dAs[l])
    return step


STEPS = {"cbn": cbn_step, "torch": torch_step, "jax": jax_step, "numpy": numpy_step,
         "blas": blas_step}


def reps_for(sizes, batch, quick):
    """(min_reps, min_seconds, warmup) scaled to the step's work."""
    flops = 6 * batch * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    if flops > 1e10:  # about a second a step on two busy cores
        return (2, 0.0, 1) if quick else (5, 0.0, 1)
    if quick:
        return (20, 0.2, 5)
    return (50, 1.0, 10)


def run_steps(framework, cases, quick, threads):
    if framework == "torch":
        import torch
        torch.set_num_threads(threads)
        torch.set_num_interop_threads(threads)
    results = {}
    for case in cases:
        sizes, batch, dtype = case_shape(case)
        step = STEPS[framework](sizes, batch, dtype)
        results[case] = median_time(step, *reps_for(sizes, batch, quick))
    return results


def case_shape(case):
    """(layer sizes, batch, dtype) of "config/dtype" or "784-512-256-10x256/float32"."""
    name, dtype = case.split("/")
    if name in CONFIGS:
        return (*CONFIGS[name], dtype)
    sizes, batch = name.split("x")
    return [int(n) for n in sizes.split("-")], int(batch), dtype


def scaling_cases(quick):
    """The scaling table's cases: by batch (mnist-sized) and by width, float32."""
    mnist = "-".join(map(str, CONFIGS["mnist"][0]))
    batches = SCALING_BATCHES[:2] if quick else SCALING_BATCHES
    widths = SCALING_WIDTHS[:2] if quick else SCALING_WIDTHS
    return ([f"{mnist}x{b}/float32" for b in batches]
            + [f"784-{w}-{w}-10x{SCALING_WIDTH_BATCH}/float32" for w in widths])


# ---------------------------------------------------------------------- kernels and inference

def run_kernels(quick, threads):
    """GB/s of copy, fused BN+relu forward+backward and Adam on arrays beyond the LLC."""
    import numpy as np
    from cbn import _kernels
    relu = _kernels.ACTIVATIONS["relu"]
    reps = (5, 0.3, 1) if quick else (15, 1.5, 2)
    out = {}
    for dtype in DTYPES:
        itemsize = np.dtype(dtype).itemsize
        # 64 MiB per array: twice a 32 MiB last-level cache
        N, D = 8192, (64 << 20) // (8192 * itemsize)
        n = N * D
        rng = np.random.default_rng(0)
        src = rng.standard_normal(n).astype(dtype)
        dst = np.empty_like(src)
        copy = median_time(lambda: np.copyto(dst, src), *reps)
        out[f"copy/{dtype}"] = 2 * n * itemsize / copy / 1e9

        Z = src.reshape(N, D)
        A, dA, dZ = np.empty_like(Z), rng.standard_normal((N, D)).astype(dtype), np.empty_like(Z)
        gamma, beta = np.ones(D, dtype), np.zeros(D, dtype)
        dgamma, dbeta = np.empty(D, dtype), np.empty(D, dtype)
        mean, var, rstd = np.empty(D), np.empty(D), np.empty(D)

        def bn():
            _kernels.batchnorm_activation_forward(A, mean, var, rstd, Z, gamma, beta, 1e-5, relu, 0.0)
            _kernels.batchnorm_activation_backward(dZ, dgamma, dbeta, dA, A, Z, gamma, mean, rstd, relu, 0.0)
        # forward reads Z, writes A; backward reads dA, A, Z, writes dZ
        out[f"bn_relu_fwd_bwd/{dtype}"] = 6 * n * itemsize / median_time(bn, *reps) / 1e9

        param, grad = src, dA.reshape(-1)
        m, v = np.zeros_like(param), np.zeros_like(param)
        t = [0]

        def adam():
            t[0] += 1
            _kernels.adam_update(param, m, v, grad, 1e-9, 0.9, 0.999, 1e-8, t[0])
        # reads param, m, v, grad; writes param, m, v
        out[f"adam/{dtype}"] = 7 * n * itemsize / median_time(adam, *reps) / 1e9
    return out


INFERENCE_ROWS = (256, 10000)


def run_inference(framework, quick, threads):
    """predict_proba of the mnist-sized network (float32) on a batch and on a large set."""
    import numpy as np
    sizes, batch = CONFIGS["mnist"]
    reps = {256: (20, 0.2, 5), 10000: (5, 0.3, 2)} if quick else {256: (50, 1.0, 10), 10000: (15, 1.5, 3)}
    if framework == "cbn":
        import cbn
        net = cbn.Network(sizes, seed=0)
        X, y = data(sizes, batch, "float32")
        net.train_step(X, y)  # moves the running statistics off their defaults
        predict = net.predict_proba
    else:
        import torch
        torch.set_num_threads(threads)
        layers = []
        for n_in, n_out in zip(sizes[:-2], sizes[1:-1]):
            layers += [torch.nn.Linear(n_in, n_out, bias=False), torch.nn.BatchNorm1d(n_out),
                       torch.nn.ReLU()]
        layers.append(torch.nn.Linear(sizes[-2], sizes[-1]))
        model = torch.nn.Sequential(*layers)
        X, _ = data(sizes, batch, "float32")
        model(torch.from_numpy(X))  # moves the running statistics off their defaults
        model.eval()

        def predict(X):
            with torch.inference_mode():
                return torch.softmax(model(torch.from_numpy(X)), dim=1).numpy()
    results = {}
    for rows in INFERENCE_ROWS:
        X, _ = data(sizes, rows, "float32", seed=1)
        results[f"mnist/float32/{rows}"] = median_time(lambda: predict(X), *reps[rows])
    return results


def kernel_pool():
    """Where cbn's kernels run their threads: "OpenBLAS's workers" or "cbn's own pool"."""
    import cbn._threads
    pool = getattr(cbn._threads, "thread_pool", lambda: "own")()   # an older cbn: its own
    return "OpenBLAS's workers" if pool == "blas" else "cbn's own pool"


def run_blas_info(quick, threads):
    """The BLAS NumPy uses: library, version, kernel (threadpoolctl), thread count."""
    import numpy as np
    import cbn
    info = {"numpy": np.__version__, "cbn_threads": cbn.get_num_threads(),
            "cbn_pool": kernel_pool()}
    try:
        import threadpoolctl
    except ImportError:
        info["note"] = "threadpoolctl is not installed (pip install \"cbn[bench]\"): BLAS unknown"
        return info
    blas = [i for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas"]
    if blas:
        b = blas[0]
        info.update(library=b.get("internal_api"), version=b.get("version"),
                    kernel=b.get("architecture"), blas_threads=b.get("num_threads"),
                    threading=b.get("threading_layer"))
    return info


# ---------------------------------------------------------------------- driver

def worker(args):
    if args.framework == "jax" and hasattr(os, "sched_setaffinity"):
        # XLA sizes some pools by the cores it may use: give it as many as the thread count
        cores = sorted(os.sched_getaffinity(0))
        if args.threads < len(cores):
            os.sched_setaffinity(0, cores[:args.threads])
    if args.kind == "blas":
        result = run_blas_info(args.quick, args.threads)
    elif args.kind == "steps":
        result = run_steps(args.framework, args.cases, args.quick, args.threads)
    elif args.kind == "kernels":
        result = run_kernels(args.quick, args.threads)
    else:
        result = run_inference(args.framework, args.quick, args.threads)
    print(json.dumps(result))


def spawn(kind, framework, cases, quick, threads):
    """Run one worker in a fresh process with the thread count fixed; None if it failed."""
    env = dict(os.environ)
    env.update({var: str(threads) for var in THREAD_VARS})
    env["CBN_NUM_THREADS"] = str(threads)
    if framework == "jax":  # XLA's CPU thread pool: as many threads as the others
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen="
                            + ("true" if threads > 1 else "false")
                            + f" intra_op_parallelism_threads={threads}").strip()
        env["JAX_PLATFORMS"] = "cpu"
    if built_in_place():
        env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--framework", framework,
           "--threads", str(threads), *(["--quick"] if quick else []), "--cases", *cases]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"note: {kind}/{framework} failed:\n{proc.stderr.strip()[-2000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def have(module):
    import importlib.util
    return importlib.util.find_spec(module) is not None


def median_of_rounds(rounds):
    """{key: median over the rounds that produced it}."""
    keys = {k for r in rounds if r for k in r}
    return {k: statistics.median(r[k] for r in rounds if r and k in r) for k in sorted(keys)}


def collect(quick, threads, rounds):
    configs = ["small", "mnist"] if quick else list(CONFIGS)
    dtypes = ["float32"] if quick else list(DTYPES)
    cases = [f"{c}/{d}" for c in configs for d in dtypes]
    scaling = scaling_cases(quick)
    frameworks = [f for f in FRAMEWORKS if f not in PEERS or have(f)]
    notes = [f"{f} is not installed: its columns are skipped" for f in PEERS
             if f not in frameworks]
    raw = {f: [] for f in frameworks}
    raw_inference = {f: [] for f in ("cbn", "torch") if f in frameworks}
    raw_kernels = []
    for _ in range(rounds):
        for f in frameworks:
            raw[f].append(spawn("steps", f, cases + (scaling if f in ("cbn", "blas") else []),
                                quick, threads))
        for f in raw_inference:
            raw_inference[f].append(spawn("inference", f, [], quick, threads))
        raw_kernels.append(spawn("kernels", "cbn", [], quick, threads))
    steps = {f: median_of_rounds(r) for f, r in raw.items()}
    return {
        "threads": threads, "rounds": rounds, "quick": quick, "notes": notes,
        "cpu": cpu_name(), "blas": spawn("blas", "cbn", [], quick, threads) or {},
        "steps": steps,
        "inference": {f: median_of_rounds(r) for f, r in raw_inference.items()},
        "kernels": median_of_rounds(raw_kernels),
        "cases": cases, "scaling": scaling,
    }


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def fmt_time(seconds):
    return f"{seconds * 1e3:.3f}" if seconds < 0.01 else f"{seconds * 1e3:.1f}"


def print_tables(res):
    steps = res["steps"]
    peers = [f for f in PEERS if f in steps]
    blas = res.get("blas", {})
    print(f"cbn benchmark: {res['cpu']}, {res['threads']} threads, median of "
          f"{res['rounds']} round(s){' (quick)' if res['quick'] else ''}")
    if "library" in blas:
        print(f"BLAS: {blas['library']} {blas['version']}, kernel {blas['kernel']}, "
              f"{blas['blas_threads']} threads ({blas['threading']}); NumPy {blas['numpy']}; "
              f"cbn kernels on {blas['cbn_threads']} threads ({blas['cbn_pool']}); "
              f"OPENBLAS_CORETYPE="
              f"{os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
    elif blas:
        print(f"BLAS: {blas.get('note')}; NumPy {blas.get('numpy')}")
    for note in res["notes"]:
        print("note:", note)
    print()
    head = ["config/dtype", "cbn ms"] + [f"{f} ms" for f in peers] + ["numpy ms", "BLAS ms"]
    head += [f"{f}/cbn" for f in peers] + ["numpy/cbn"]
    head += (["best peer/cbn"] if peers else []) + ["cbn/BLAS"] + [f"{f}/BLAS" for f in peers]
    rows = []
    for case in res["cases"]:
        t = {f: steps[f].get(case) for f in steps}
        if t.get("cbn") is None or t.get("blas") is None or t.get("numpy") is None:
            continue
        have_peers = [f for f in peers if t.get(f) is not None]
        row = [case, fmt_time(t["cbn"])] + [fmt_time(t[f]) if t.get(f) else "-" for f in peers]
        row += [fmt_time(t["numpy"]), fmt_time(t["blas"])]
        row += [f"{t[f] / t['cbn']:.2f}x" if t.get(f) else "-" for f in peers]
        row += [f"{t['numpy'] / t['cbn']:.2f}x"]
        if peers:
            row += [f"{min(t[f] for f in have_peers) / t['cbn']:.2f}x" if have_peers else "-"]
        row += [f"{t['cbn'] / t['blas']:.2f}"]
        row += [f"{t[f] / t['blas']:.2f}" if t.get(f) else "-" for f in peers]
        rows.append(row)
    print_table("Training step (forward + backward + Adam), median ms per step", head, rows)
    print("x/cbn > 1: cbn is faster.  x/BLAS: step time as a multiple of its matrix products alone.")

    rows = []
    for case in res.get("scaling", []):
        c, b = steps.get("cbn", {}).get(case), steps.get("blas", {}).get(case)
        if c is None or b is None:
            continue
        sizes, batch, _ = case_shape(case)
        flops = 6 * batch * sum(x * y for x, y in zip(sizes[:-1], sizes[1:]))
        rows.append([str(sizes), str(batch), fmt_time(c), fmt_time(b), f"{c / b:.2f}",
                     f"{flops / c / 1e9:.1f}", f"{flops / b / 1e9:.1f}"])
    if rows:
        print()
        print_table("Scaling (float32): cbn's step against batch size and width, next to its floor",
                    ["layer sizes", "batch", "cbn ms", "BLAS ms", "cbn/BLAS", "cbn GFLOP/s",
                     "BLAS GFLOP/s"], rows)

    inf = res["inference"]
    if inf.get("cbn"):
        head = ["network", "cbn ms"] + (["torch ms", "torch/cbn"] if inf.get("torch") else [])
        rows = []
        for n in INFERENCE_ROWS:
            key = f"mnist/float32/{n}"
            c = inf["cbn"][key]
            row = [f"mnist/float32, {n} rows", fmt_time(c)]
            if inf.get("torch"):
                row += [fmt_time(inf["torch"][key]), f"{inf['torch'][key] / c:.2f}x"]
            rows.append(row)
        print()
        print_table("Inference: predict_proba vs torch under inference_mode, median ms per call", head, rows)

    k = res["kernels"]
    if k:
        print()
        rows = []
        for dtype in DTYPES:
            copy = k[f"copy/{dtype}"]
            for name, label in (("bn_relu_fwd_bwd", "batch norm + relu fwd+bwd"), ("adam", "Adam update")):
                gbs = k[f"{name}/{dtype}"]
                rows.append([f"{label} ({dtype})", f"{gbs:.1f}", f"{copy:.1f}", f"{gbs / copy:.2f}"])
        print_table(f"Kernels on 64 MiB arrays (beyond the last-level cache), "
                    f"{res['threads']} threads",
                    ["kernel", "GB/s", "copy GB/s", "of copy"], rows)


def print_table(title, head, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    print(title)
    print("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths))))
    for row in rows:
        print("  ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(row, widths))))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke check: float32, small and mnist, one round")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="threads for every framework (default: all cores)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3, quick 1)")
    parser.add_argument("--worker", choices=("steps", "kernels", "inference", "blas"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--framework", help=argparse.SUPPRESS)
    parser.add_argument("--cases", nargs="*", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.kind = args.worker
        return worker(args)
    rounds = args.rounds or (1 if args.quick else 3)
    res = collect(args.quick, args.threads, rounds)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print_tables(res)


if __name__ == "__main__":
    main()
