"""cbn in a scikit-learn pipeline, tuned by a grid search with cross-validation.

    pip install "cbn[sklearn]"
    python examples/sklearn_grid_search.py
"""
import warnings

from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cbn.sklearn import BatchNormMLPClassifier

X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0,
                                                    stratify=y)
pipe = make_pipeline(StandardScaler(),
                     BatchNormMLPClassifier(max_iter=30, batch_size=32, random_state=0))
grid = {
    "batchnormmlpclassifier__hidden_layer_sizes": [(64,), (128, 64)],
    "batchnormmlpclassifier__batchnorm": [True, False],
    "batchnormmlpclassifier__learning_rate": [1e-3, 1e-2],
}
search = GridSearchCV(pipe, grid, cv=3)
with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)  # 30 epochs is a short budget on purpose
    search.fit(X_train, y_train)

for params, score in sorted(zip(search.cv_results_["params"],
                                search.cv_results_["mean_test_score"]), key=lambda p: -p[1]):
    short = {key.split("__")[1]: value for key, value in params.items()}
    print(f"{score:.3f}  {short}")
print(f"best: {search.best_params_}")
print(f"held-out accuracy of the refitted best pipeline: {search.score(X_test, y_test):.3f}")
