"""scikit-learn estimators (idlkit.sklearn): the estimator contract, checked by sklearn itself."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_digits, make_regression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

from idlkit.errors import ConfigurationError, InputError
from idlkit.sklearn import ImplicitClassifier, ImplicitRegressor

# An equilibrium is solved by iterations that stop on a test over the whole batch (the largest
# residual of the batch <= tol), so one sample's prediction depends on its batch companions up to
# the solver's tolerance (||dx||_inf <= tol / (1 - kappa)); sklearn asks for 1e-7 agreement.
# test_subset_difference_within_tolerance bounds the difference instead.
SUBSET = "predictions agree with predictions on subsets up to the solver tolerance, not to 1e-7"


@pytest.mark.parametrize("est", [ImplicitClassifier(hidden=16, epochs=20, random_state=0),
                                 ImplicitRegressor(hidden=16, epochs=20, random_state=0)],
                         ids=["classifier", "regressor"])
def test_check_estimator(est) -> None:
    failed = {"check_methods_subset_invariance": SUBSET}
    results = check_estimator(est, expected_failed_checks=failed, on_fail=None)
    bad = [(r["check_name"], str(r["exception"])[:200]) for r in results
           if r["status"] == "failed" and r["check_name"] not in failed]
    assert not bad, bad
    assert sum(r["status"] == "passed" for r in results) >= 45


def _digits(n: int = 600) -> tuple[np.ndarray, np.ndarray]:
    X, y = load_digits(return_X_y=True)
    return X[:n] / 16.0, y[:n]


def test_subset_difference_within_tolerance() -> None:
    X, y = _digits()
    clf = ImplicitClassifier(hidden=24, epochs=5, random_state=0, dtype="float64").fit(X, y)
    full = clf.decision_function(X[:60])
    parts = np.concatenate([clf.decision_function(X[i:min(i + 7, 60)]) for i in range(0, 60, 7)])
    model = clf.model_
    # |dy| <= ||C||_inf ||dx||_inf, ||dx||_inf <= 2 tol / (1 - kappa) (two solves, each within
    # tol / (1 - kappa) of the exact equilibrium, Banach's bound)
    C = model.C.detach().double().abs().sum(1).max().item()
    bound = C * 2 * clf.tol / (1 - clf.kappa)
    assert np.abs(full - parts).max() <= bound


def test_predict_proba_is_the_softmax_of_the_model() -> None:
    X, y = _digits()
    clf = ImplicitClassifier(hidden=24, epochs=8, random_state=0).fit(X, y)
    P = clf.predict_proba(X[:50])
    with torch.no_grad():
        logits = clf.model_(torch.as_tensor(X[:50], dtype=torch.float32)).double()
    ref = np.exp(logits.numpy() - logits.numpy().max(1, keepdims=True))
    np.testing.assert_allclose(P, ref / ref.sum(1, keepdims=True), atol=1e-6)
    np.testing.assert_array_equal(clf.predict(X[:50]), clf.classes_[P.argmax(1)])
    assert clf.score(X, y) > 0.85
    cert = clf.model_.certificate()
    assert cert.holds["inf"]  # the projection kept ||A||_inf <= kappa through training


def test_string_labels_and_reproducibility() -> None:
    X, y = _digits(300)
    labels = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])[y]
    state = torch.random.get_rng_state()
    a = ImplicitClassifier(hidden=16, epochs=3, random_state=7).fit(X, labels)
    b = ImplicitClassifier(hidden=16, epochs=3, random_state=7).fit(X, labels)
    assert torch.equal(state, torch.random.get_rng_state())  # the global generator is untouched
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    assert set(a.predict(X)) <= set(labels)
    c = pickle.loads(pickle.dumps(a))
    np.testing.assert_array_equal(a.predict_proba(X), c.predict_proba(X))


def test_pipeline_gridsearch_clone() -> None:
    X, y = _digits(400)
    pipe = make_pipeline(StandardScaler(), ImplicitClassifier(epochs=3, random_state=0))
    grid = GridSearchCV(pipe, {"implicitclassifier__hidden": [8, 24]}, cv=2).fit(X, y)
    assert grid.best_params_["implicitclassifier__hidden"] in (8, 24)
    assert grid.score(X, y) > 0.6
    est = ImplicitClassifier(hidden=5, kappa=0.5, l1=1e-4)
    twin = clone(est)
    assert twin.get_params() == est.get_params() and twin is not est
    assert est.set_params(hidden=9).hidden == 9


def test_partial_fit_continues_and_lowers_the_loss() -> None:
    X, y = _digits()
    clf = ImplicitClassifier(hidden=24, random_state=0)
    with pytest.raises(InputError, match="classes="):
        clf.partial_fit(X, y)
    losses = []
    for _ in range(6):
        clf.partial_fit(X, y, classes=np.arange(10))
        P = clf.predict_proba(X)
        losses.append(-np.log(P[np.arange(len(y)), y]).mean())
    assert clf.n_iter_ == 6 and losses[-1] < 0.5 * losses[0]
    with pytest.raises(InputError, match="not among classes_"):
        clf.partial_fit(X[:5], np.full(5, 11))


def test_regressor_multi_output_and_partial_fit() -> None:
    X, Y = make_regression(n_samples=300, n_features=5, n_targets=2, noise=0.1, random_state=0)
    Y = Y / Y.std(0)
    reg = ImplicitRegressor(hidden=16, epochs=60, random_state=0).fit(X, Y)
    assert reg.predict(X).shape == (300, 2) and reg.score(X, Y) > 0.9
    single = ImplicitRegressor(hidden=16, epochs=2, random_state=0).fit(X, Y[:, 0])
    assert single.predict(X).shape == (300,)
    inc = ImplicitRegressor(hidden=16, random_state=0)
    errs = []
    for _ in range(5):
        inc.partial_fit(X, Y[:, 0])
        errs.append(np.mean((inc.predict(X) - Y[:, 0]) ** 2))
    assert errs[-1] < errs[0]


def test_bad_parameters_are_typed_errors() -> None:
    X, y = _digits(100)
    with pytest.raises(ConfigurationError, match="dtype"):
        ImplicitClassifier(dtype="float16").fit(X, y)
    with pytest.raises(InputError, match="at least 2 classes"):
        ImplicitClassifier().fit(X, np.zeros(100, dtype=int))
    with pytest.raises(ValueError):
        ImplicitClassifier(hidden=0).fit(X, y)
    with pytest.raises(ValueError):
        ImplicitRegressor().fit(X, np.full(100, np.nan))
