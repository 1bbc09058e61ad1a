#!/usr/bin/env bash
# A model trained by the command line, run from C: train on a CSV with `cbn train`, compile
# examples/predict_csv.c with cbn's C inference library, predict the CSV, and check that the
# C program's outputs are predict_proba's, bit for bit.
#   pip install cbn && bash examples/c_predict_csv.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
cd "$work"

python - <<'PY'
import csv
import numpy as np
rng = np.random.default_rng(0)
X = rng.standard_normal((300, 4))
label = np.where(X[:, 0] + X[:, 1] > 0.3, "a", np.where(X[:, 2] > 0, "b", "c"))
with open("data.csv", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["x0", "x1", "x2", "x3", "label"])
    writer.writerows([*np.round(x, 4), s] for x, s in zip(X, label))
PY
cbn train data.csv --target label --hidden 32,16 --epochs 10 --out model.safetensors

CBN="$(python -c "import cbn; print(cbn.get_include())")"
cc -O2 -std=c99 "$here/predict_csv.c" "$CBN/cbn_model.c" -I"$CBN" -lm -o predict_csv
./predict_csv model.safetensors data.csv label > c_outputs.csv
head -3 c_outputs.csv

python - <<'PY'
import csv
import numpy as np
import cbn
net = cbn.Network.load("model.safetensors")
with open("data.csv") as f:
    rows = list(csv.reader(f))[1:]
X = np.array([[float(v) for v in r[:-1]] for r in rows], net.dtype)
expected = net.predict_proba(X)
got = np.loadtxt("c_outputs.csv", delimiter=",", ndmin=2).astype(net.dtype)
assert got.shape == expected.shape and np.array_equal(got, expected), "C and Python differ"
print(f"C outputs of {len(X)} rows equal predict_proba bit for bit")
PY
echo "files are in $work"
