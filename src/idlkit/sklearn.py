"""scikit-learn estimators around :class:`~idlkit.ImplicitModel` (paper 000 §2, §6).

:class:`ImplicitClassifier` and :class:`ImplicitRegressor` follow scikit-learn's estimator
contract (``fit`` / ``partial_fit`` / ``predict`` / ``score``, ``get_params`` / ``set_params``,
``clone``, ``Pipeline``, ``GridSearchCV``): the constructor only stores its arguments, ``fit``
validates the data (:func:`sklearn.utils.validation.validate_data`), builds an
``ImplicitModel(n_features, hidden, n_outputs)`` and trains it by projected gradient
(:class:`~idlkit.train.Trainer`, problem 6.4: the well-posedness condition holds after every
step). The trained model is ``model_``; its certificate ``model_.certificate()``.

scikit-learn (>= 1.6) is optional: ``pip install idlkit[sklearn]``; ``idlkit.ImplicitClassifier``
imports this module on first use.

Training is reproducible: ``random_state`` seeds the initial weights (inside a forked torch
generator, so the global torch state is left as it was) and the batch order.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import Tensor

from ._validation import check_int
from .errors import ConfigurationError, InputError
from .model import ImplicitModel
from .train.losses import cross_entropy, squared_error
from .train.trainer import Trainer

__all__ = ["ImplicitClassifier", "ImplicitRegressor"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class _ImplicitEstimator(BaseEstimator):
    """Shared fit / partial_fit machinery; subclasses say how targets become tensors."""

    _loss = "cross_entropy"

    def __init__(self, hidden: int = 32, *, activation: str = "relu", wellposedness: str = "inf",
                 kappa: float = 0.95, epochs: int = 30, lr: float = 1e-2, batch_size: int = 64,
                 l1: float = 0.0, solver: str = "anderson", tol: float = 1e-4,
                 dtype: str = "float32", random_state: int | np.random.RandomState | None = None) -> None:
        self.hidden = hidden
        self.activation = activation
        self.wellposedness = wellposedness
        self.kappa = kappa
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.l1 = l1
        self.solver = solver
        self.tol = tol
        self.dtype = dtype
        self.random_state = random_state

    # ------------------------------------------------------------------ pieces

    def _torch_dtype(self) -> torch.dtype:
        if self.dtype not in _DTYPES:
            raise ConfigurationError(f"dtype must be one of {list(_DTYPES)}; got {self.dtype!r}")
        return _DTYPES[self.dtype]

    def _seed(self) -> int:
        return int(check_random_state(self.random_state).randint(2**31 - 1))

    def _build(self, n_features: int, n_outputs: int, seed: int) -> ImplicitModel:
        check_int("hidden", self.hidden, 1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = ImplicitModel(n_features, self.hidden, n_outputs, activation=self.activation,
                                  wellposedness=self.wellposedness, kappa=self.kappa, solver=self.solver,
                                  tol=self.tol, per_sample=True)
        return model.to(self._torch_dtype())

    def _inputs(self, X: np.ndarray) -> Tensor:
        return torch.as_tensor(np.ascontiguousarray(X), dtype=self._torch_dtype())

    def _trainer(self, epochs: int, seed: int) -> Trainer:
        pens = [("l1", float(self.l1))] if self.l1 else []
        return Trainer(loss=self._loss, lr=self.lr, epochs=epochs, batch_size=self.batch_size,
                       penalties=pens, seed=seed)

    def _forward(self, X: np.ndarray) -> Tensor:
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        with torch.no_grad():
            return self.model_(self._inputs(X))

    def _fit(self, X: np.ndarray, Y: Tensor, n_outputs: int) -> None:
        seed = self._seed()
        self.model_ = self._build(X.shape[1], n_outputs, seed)
        self.history_ = self._trainer(self.epochs, seed).fit(self.model_, (self._inputs(X), Y))
        self.n_iter_ = self.epochs
        self._step_seed = seed

    def _partial(self, X: np.ndarray, Y: Tensor, n_outputs: int) -> None:
        """One pass of Adam over ``(X, Y)`` continuing the optimizer state of earlier calls."""
        if not hasattr(self, "model_"):
            self._step_seed = self._seed()
            self.model_ = self._build(X.shape[1], n_outputs, self._step_seed)
            self.optimizer_ = torch.optim.Adam(self.model_.parameters(), lr=self.lr)
            self.n_iter_ = 0
        elif not hasattr(self, "optimizer_"):
            self.optimizer_ = torch.optim.Adam(self.model_.parameters(), lr=self.lr)
        loss_fn = cross_entropy if self._loss == "cross_entropy" else squared_error
        trainer = self._trainer(1, self._step_seed)  # its penalties, applied as in fit
        U = self._inputs(X)
        gen = torch.Generator().manual_seed(self._step_seed + self.n_iter_)
        self.model_.train()
        for idx in torch.randperm(U.shape[0], generator=gen).split(self.batch_size):
            self.optimizer_.zero_grad()
            loss = loss_fn(self.model_(U[idx]), Y[idx]) + trainer._penalty(self.model_)
            loss.backward()
            self.optimizer_.step()
            self.model_.project_()
        self.model_.eval()
        self.n_iter_ += 1

    def __sklearn_tags__(self):  # noqa: ANN204 (sklearn's Tags type)
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        return tags


class ImplicitClassifier(ClassifierMixin, _ImplicitEstimator):
    """Implicit-model classifier: ``p(y | u) = softmax(C x + D u + d)``, ``x = phi(A x + B u + b)``.

    Args:
        hidden: the state size ``n``.
        activation: as for :class:`~idlkit.ImplicitModel`.
        wellposedness: as for :class:`~idlkit.ImplicitModel`.
        kappa: as for :class:`~idlkit.ImplicitModel`.
        solver: as for :class:`~idlkit.ImplicitModel`.
        tol: as for :class:`~idlkit.ImplicitModel`.
        epochs: passes of Adam on the mean cross-entropy (eq. 6.2), projected onto the
            well-posedness set after every step.
        lr: Adam's step size.
        batch_size: mini-batch size.
        l1: weight of the l1 penalty on ``A, B, C, D`` (sparsity, paper 000 §5).
        dtype: ``"float32"`` or ``"float64"``.
        random_state: seeds the initial weights and the batch order.

    Attributes:
        classes_: ``(n_classes,)`` the class labels.
        n_features_in_: the number of input features ``p``.
        model_: the trained :class:`~idlkit.ImplicitModel`.
        history_: the :class:`~idlkit.train.TrainResult` of ``fit``.
        n_iter_: epochs run.

    Examples:
        >>> from sklearn.datasets import load_iris
        >>> X, y = load_iris(return_X_y=True)
        >>> clf = ImplicitClassifier(hidden=16, epochs=60, random_state=0).fit(X, y)
        >>> clf.predict_proba(X[:2]).shape, clf.score(X, y) > 0.9
        ((2, 3), True)
    """

    def _targets(self, y: np.ndarray) -> Tensor:
        return torch.as_tensor(self._encoder.transform(y), dtype=torch.long)

    def fit(self, X: np.ndarray, y: np.ndarray) -> ImplicitClassifier:
        """Train on ``X (m, p)``, labels ``y (m,)``; returns ``self``.

        Args:
            X: ``(m, p)`` inputs.
            y: ``(m,)`` class labels.

        Returns:
            ``self``.

        Raises:
            InputError: a non-numeric ``X``, ``X`` and ``y`` of different lengths, or fewer than two
                classes.
        """
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        self._encoder = LabelEncoder().fit(y)
        self.classes_ = self._encoder.classes_
        if len(self.classes_) < 2:
            raise InputError(f"ImplicitClassifier needs samples of at least 2 classes; got 1 class "
                             f"({self.classes_[0]!r}). Fix: pass data with several classes.")
        self._fit(X, self._targets(y), len(self.classes_))
        return self

    def partial_fit(self, X: np.ndarray, y: np.ndarray, classes: np.ndarray | None = None
                    ) -> ImplicitClassifier:
        """One epoch on ``(X, y)``; ``classes`` (every label) is required on the first call.

        Args:
            X: ``(m, p)`` inputs.
            y: ``(m,)`` class labels.
            classes: every label, required on the first call.

        Returns:
            ``self``.

        Raises:
            InputError: no ``classes`` on the first call, or labels not among them.
        """
        first = not hasattr(self, "model_")
        X, y = validate_data(self, X, y, reset=first, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        if first:
            if classes is None:
                raise InputError("the first call of partial_fit needs classes=, every label the data can "
                                 "have (e.g. classes=np.unique(y_all))")
            self._encoder = LabelEncoder().fit(np.asarray(classes))
            self.classes_ = self._encoder.classes_
            if len(self.classes_) < 2:
                raise InputError(f"classes must hold at least 2 labels; got {list(self.classes_)}")
        unknown = np.setdiff1d(y, self.classes_)
        if unknown.size:
            raise InputError(f"labels {unknown[:5].tolist()} are not among classes_ "
                             f"{self.classes_[:10].tolist()}. Fix: pass every label in classes= on the "
                             f"first call")
        self._partial(X, self._targets(y), len(self.classes_))
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """The logits ``(m, n_classes)``; for two classes the margin of class 1, ``(m,)``.

        Args:
            X: ``(m, p)`` inputs.

        Returns:
            ``(m, n_classes)`` logits, or ``(m,)`` for two classes.
        """
        logits = self._forward(X).double().numpy()
        return logits[:, 1] - logits[:, 0] if logits.shape[1] == 2 else logits

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities ``(m, n_classes)``, in the order of ``classes_``.

        Args:
            X: ``(m, p)`` inputs.

        Returns:
            ``(m, n_classes)`` probabilities.
        """
        return torch.softmax(self._forward(X).double(), dim=1).numpy()

    def predict_log_proba(self, X: np.ndarray) -> np.ndarray:
        """Log class probabilities ``(m, n_classes)``, in the order of ``classes_``.

        Args:
            X: ``(m, p)`` inputs.

        Returns:
            ``(m, n_classes)`` float64 log-probabilities.
        """
        return torch.log_softmax(self._forward(X).double(), dim=1).numpy()

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The most probable class of every row of ``X``.

        Args:
            X: ``(m, p)`` inputs.

        Returns:
            ``(m,)`` labels from ``classes_``.
        """
        index = self._forward(X).argmax(1).numpy()
        return self.classes_[index]


class ImplicitRegressor(RegressorMixin, _ImplicitEstimator):
    """Implicit-model regressor: ``y = C x + D u + d``, ``x = phi(A x + B u + b)``, trained on the
    mean squared error; ``y`` is ``(m,)`` or ``(m, q)`` (multi-output). Arguments as for
    :class:`ImplicitClassifier`.

    Args:
        hidden: the state size ``n``.
        activation: as for :class:`~idlkit.ImplicitModel`.
        wellposedness: as for :class:`~idlkit.ImplicitModel`.
        kappa: as for :class:`~idlkit.ImplicitModel`.
        epochs: passes of Adam on the mean squared error, projected after every step.
        lr: Adam's step size.
        batch_size: mini-batch size.
        l1: weight of the l1 penalty on ``A, B, C, D``.
        solver: as for :class:`~idlkit.ImplicitModel`.
        tol: as for :class:`~idlkit.ImplicitModel`.
        dtype: ``"float32"`` or ``"float64"``.
        random_state: seeds the initial weights and the batch order.

    Examples:
        >>> X = np.linspace(-1, 1, 200)[:, None]; y = np.abs(X[:, 0])
        >>> reg = ImplicitRegressor(hidden=16, epochs=200, random_state=0).fit(X, y)
        >>> reg.predict(X[:3]).shape, reg.score(X, y) > 0.9
        ((3,), True)
    """

    _loss = "squared_error"

    def _targets(self, y: np.ndarray) -> Tensor:
        Y = torch.as_tensor(np.asarray(y, dtype=np.float64), dtype=self._torch_dtype())
        return Y[:, None] if Y.dim() == 1 else Y

    def fit(self, X: np.ndarray, y: np.ndarray) -> ImplicitRegressor:
        """Train on ``X (m, p)``, targets ``y (m,)`` or ``(m, q)``; returns ``self``.

        Args:
            X: ``(m, p)`` inputs.
            y: ``(m,)`` or ``(m, q)`` targets.

        Returns:
            ``self``.

        Raises:
            InputError: non-numeric data or ``X`` and ``y`` of different lengths.
        """
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=[np.float64, np.float32])
        self._single = y.ndim == 1
        Y = self._targets(y)
        self._fit(X, Y, Y.shape[1])
        return self

    def partial_fit(self, X: np.ndarray, y: np.ndarray) -> ImplicitRegressor:
        """One epoch on ``(X, y)``, continuing from earlier calls.

        Args:
            X: ``(m, p)`` inputs.
            y: ``(m,)`` or ``(m, q)`` targets.

        Returns:
            ``self``.

        Raises:
            InputError: targets of another width than in earlier calls.
        """
        first = not hasattr(self, "model_")
        X, y = validate_data(self, X, y, reset=first, multi_output=True, y_numeric=True,
                             dtype=[np.float64, np.float32])
        if first:
            self._single = y.ndim == 1
        Y = self._targets(y)
        if not first and Y.shape[1] != self.model_.out_features:
            raise InputError(f"y has {Y.shape[1]} outputs; the model was fitted with "
                             f"{self.model_.out_features}. Fix: pass targets of the first call's width")
        self._partial(X, Y, Y.shape[1])
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predictions ``(m,)`` (or ``(m, q)`` for multi-output targets).

        Args:
            X: ``(m, p)`` inputs.

        Returns:
            ``(m,)`` (or ``(m, q)`` for multi-output targets) predictions.
        """
        out = self._forward(X).double().numpy()
        return out[:, 0] if self._single else out

    def __sklearn_tags__(self):  # noqa: ANN204
        tags = super().__sklearn_tags__()
        tags.target_tags.single_output = True
        tags.target_tags.multi_output = True
        return tags
