"""The AVX2 build of the batch-norm and optimizer kernels against the baseline build.

cbn._dispatch takes each kernel from _batchnorm_avx2 / _optim_avx2 when the CPU has AVX2
(Linux x86-64 builds) and from the baseline build otherwise; CBN_NO_AVX2=1 forces the
baseline. Both compile the same source without fused multiply-add, so every result must
agree bit for bit. Each build runs in its own interpreter (the choice is made once).
"""
import json
import os
import platform
import subprocess
import sys

import pytest

KERNEL_DIGESTS = r"""
import hashlib, json
import numpy as np
from cbn import _kernels as K

rng = np.random.default_rng(7)
digests = {}

def digest(name, *arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    digests[name] = h.hexdigest()

for dtype in (np.float32, np.float64):
    # vector remainders, several row chunks and groups, two unit blocks (4096 units each)
    for N, D in ((37, 130), (256, 515), (2, 3), (5, 4100)):
        Z = (3 * rng.standard_normal((N, D)) + rng.uniform(-5, 5, D)).astype(dtype)
        dA = rng.standard_normal((N, D)).astype(dtype)
        gamma = rng.uniform(0.5, 2, D).astype(dtype)
        beta = rng.uniform(-1, 1, D).astype(dtype)
        running_var = rng.uniform(0.5, 2, D).astype(dtype)
        for name, code in K.ACTIVATIONS.items():
            A, dZ, Ai = np.empty_like(Z), np.empty_like(Z), np.empty_like(Z)
            mean, var, rstd = np.empty(D), np.empty(D), np.empty(D)
            dgamma, dbeta = np.empty_like(gamma), np.empty_like(gamma)
            K.batchnorm_activation_forward(A, mean, var, rstd, Z, gamma, beta, 1e-5, code, 0.1)
            K.batchnorm_activation_backward(dZ, dgamma, dbeta, dA, A, Z, gamma, mean, rstd,
                                            code, 0.1)
            K.batchnorm_activation_inference(Ai, Z, gamma, beta, beta, running_var, 1e-5,
                                             code, 0.1)
            # the phase kernels of data-parallel training
            m2, A2, dZt = np.empty(D), np.empty_like(Z), np.empty_like(Z)
            s, s_zc = np.empty(D), np.empty(D)
            dgamma2, dbeta2 = np.empty_like(gamma), np.empty_like(gamma)
            K.batchnorm_statistics(mean, m2, Z)
            K.batchnorm_activation_apply(A2, Z, gamma, beta, mean, rstd, code, 0.1)
            K.batchnorm_activation_backward_sums(dZt, dgamma2, dbeta2, s, s_zc, dA, A2, Z, mean,
                                                 rstd, code, 0.1)
            K.batchnorm_backward_finish(dZt, Z, gamma, mean, rstd, s, s_zc, float(N))
            digest(f"batchnorm {dtype.__name__} {N}x{D} {name}", A, mean, var, rstd, dZ,
                   dgamma, dbeta, Ai, m2, A2, dZt, s, s_zc, dgamma2, dbeta2)
    n = 1001
    for opt, state, args in (("sgd_update", 0, (0.1,)), ("momentum_update", 1, (0.1, 0.9)),
                             ("rmsprop_update", 1, (0.01, 0.9, 1e-8)),
                             ("adam_update", 2, (0.01, 0.9, 0.999, 1e-8))):
        param = rng.standard_normal(n).astype(dtype)
        buffers = [np.zeros(n, dtype) for _ in range(state)]
        for t in range(1, 4):
            grad = rng.standard_normal(n).astype(dtype)
            extra = (t,) if opt == "adam_update" else ()
            getattr(K, opt)(param, *buffers, grad, *args, *extra)
        digest(f"{opt} {dtype.__name__}", param, *buffers)
print(json.dumps({"instruction_set": K._instruction_set(), "digests": digests}))
"""


def run_kernels(force_baseline):
    env = {k: v for k, v in os.environ.items() if k != "CBN_NO_AVX2"}
    if force_baseline:
        env["CBN_NO_AVX2"] = "1"
    proc = subprocess.run([sys.executable, "-c", KERNEL_DIGESTS], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def cpu_has_avx2():
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " avx2" in line for line in f)
    except OSError:
        return False


@pytest.fixture(scope="module")
def both_builds():
    return run_kernels(force_baseline=False), run_kernels(force_baseline=True)


def test_the_avx2_build_runs_on_linux_x86_64_cpus_with_avx2(both_builds):
    default, forced = both_builds
    assert forced["instruction_set"] == "baseline"
    linux_x86_64 = sys.platform.startswith("linux") and platform.machine() == "x86_64"
    avx2_expected = linux_x86_64 and cpu_has_avx2() and os.environ.get("CBN_AVX2") != "0"
    assert default["instruction_set"] == ("avx2" if avx2_expected else "baseline")


def test_both_builds_give_identical_results(both_builds):
    default, forced = both_builds
    assert len(default["digests"]) == 2 * 4 * 5 + 2 * 4
    differing = [k for k in default["digests"] if default["digests"][k] != forced["digests"][k]]
    assert not differing
