#!/usr/bin/env bash
# The command line on a CSV file: write a small data set, train, inspect, evaluate, predict.
#   pip install cbn && bash examples/cli_on_a_csv.sh
set -euo pipefail
work="$(mktemp -d)"
cd "$work"

# 400 rows, three numeric features, a text label made from them
python - <<'PY'
import csv
import numpy as np
rng = np.random.default_rng(0)
X = rng.standard_normal((400, 3))
label = np.where(X[:, 0] + X[:, 1] > 0.3, "setosa", np.where(X[:, 2] > 0, "versicolor", "virginica"))
with open("flowers.csv", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["petal", "sepal", "stem", "species"])
    writer.writerows([*np.round(x, 4), s] for x, s in zip(X, label))
PY

cbn train flowers.csv --target species --hidden 32,16 --epochs 15 --verbose 2 --out flowers.safetensors
cbn info flowers.safetensors
cbn evaluate flowers.safetensors flowers.csv
cbn predict flowers.safetensors flowers.csv --out predictions.csv
head -4 predictions.csv
# a bad file is one line on stderr (shown here on stdout) and exit status 1
cbn predict flowers.safetensors predictions.csv 2>&1 || echo "exit status $?"
echo "files are in $work"
