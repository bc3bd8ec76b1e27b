"""The baselines' models, each a registered class (MODELS): HistGradientBoosting and standardised Ridge
(scikit-learn), fitted on train only.

A model is a class with its name, its settings (part of every cache key) and ``fit(x_train, y_train, x_val,
y_val) -> (fitted, params)``, where ``fitted.predict(x)`` predicts and ``params`` are what its metrics record of the
fit; registering it (``@MODELS.register``) makes it a member of every feature family (``kmer6-<name>``,
``otu5-<name>``) and a choice of ``--models``.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np
from scipy import sparse
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.feature_selection import SelectKBest, f_regression
from sklearn.linear_model import Ridge, RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from tune_ph.baseline.choices import MODELS as NAMES
from tune_ph.registry import Registry

log = logging.getLogger(__name__)


SEED = 0
# Ridge is fitted on standardised features, so one grid suits every k (raw frequencies shrink as 4^-k).
RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-1, 5, 13))
# scikit-learn's defaults (100 rounds, learning rate 0.1), with early stopping pinned off and a fixed seed.
HGB_PARAMS: dict[str, Any] = {"max_iter": 100, "learning_rate": 0.1, "early_stopping": False, "random_state": SEED}
# HGB's cost grows with the features: on more than this many (8-mers: 65,536), the ones most correlated with pH
# on train are kept (an F-test), so k=8 costs what k=6 does (realistic16s: test R² 0.57; keeping 2,048, 0.55).
HGB_MAX_FEATURES = 4096


def _dense(x: Any) -> np.ndarray:
    return x.toarray() if sparse.issparse(x) else np.asarray(x)


def _hgb(n_features: int):
    model = HistGradientBoostingRegressor(**HGB_PARAMS)
    if n_features <= HGB_MAX_FEATURES:
        return make_pipeline(FunctionTransformer(_dense, accept_sparse=True), model)
    select = SelectKBest(f_regression, k=HGB_MAX_FEATURES)  # accepts sparse rows; densified after selection
    return make_pipeline(select, FunctionTransformer(_dense, accept_sparse=True), model)


def _ridge(alpha: float):
    # Scaling without centring keeps sparse rows sparse; Ridge's intercept centres them implicitly, so this is
    # the same model as on fully standardised features.
    return make_pipeline(StandardScaler(with_mean=False), Ridge(alpha=alpha))


MODELS: Registry[Any] = Registry(NAMES)


@MODELS.register
class Hgb:
    """HistGradientBoostingRegressor with fixed settings (HGB_PARAMS)."""

    name: ClassVar[str] = "hgb"

    @staticmethod
    def settings() -> dict[str, Any]:
        return {**HGB_PARAMS, "max_features": HGB_MAX_FEATURES}

    @staticmethod
    def fit(x_train: Any, y_train: np.ndarray, x_val: Any, y_val: np.ndarray) -> tuple[Any, dict[str, Any]]:
        """HistGradientBoostingRegressor with fixed settings, fitted on train only.

        No early stopping: it would carve its own validation set out of the small train split (or need the val split,
        which then could not report an honest score). The val split is only scored.
        """
        model = _hgb(x_train.shape[1]).fit(x_train, y_train)
        params = {"hgb_max_iter": HGB_PARAMS["max_iter"], "hgb_learning_rate": HGB_PARAMS["learning_rate"]}
        if x_train.shape[1] > HGB_MAX_FEATURES:
            params["hgb_features_kept"] = HGB_MAX_FEATURES
        return model, params


@MODELS.register
class RidgeOnVal:
    """Standardised Ridge, its alpha chosen on val among RIDGE_ALPHAS."""

    name: ClassVar[str] = "ridge"

    @staticmethod
    def settings() -> dict[str, Any]:
        return {"alphas": list(RIDGE_ALPHAS)}

    @staticmethod
    def fit(x_train: Any, y_train: np.ndarray, x_val: Any, y_val: np.ndarray) -> tuple[Any, dict[str, Any]]:
        """Standardised Ridge; alpha is the one of RIDGE_ALPHAS with the lowest val MSE, the model fitted on train.

        So val metrics of Ridge are slightly optimistic (val chose alpha); test is untouched. Without a val split
        (val_fraction 0), RidgeCV picks alpha by leave-one-out on train instead.
        """
        if len(y_val) == 0:
            model = make_pipeline(StandardScaler(with_mean=False), RidgeCV(alphas=RIDGE_ALPHAS)).fit(x_train, y_train)
            alpha = float(model[-1].alpha_)
            return model, {"ridge_alpha": alpha, "ridge_alpha_chosen_by": "RidgeCV leave-one-out on train"}
        # Scale once; each alpha then costs one solve (dual form when features outnumber samples).
        scaler = StandardScaler(with_mean=False).fit(x_train)
        xt, xv = scaler.transform(x_train), scaler.transform(x_val)
        val_mse = [float(np.mean((Ridge(alpha=a).fit(xt, y_train).predict(xv) - y_val) ** 2)) for a in RIDGE_ALPHAS]
        alpha = RIDGE_ALPHAS[int(np.argmin(val_mse))]
        if alpha in (RIDGE_ALPHAS[0], RIDGE_ALPHAS[-1]):
            log.warning(
                "ridge: the best alpha %.3g is at the edge of the grid %.3g..%.3g",
                alpha,
                RIDGE_ALPHAS[0],
                RIDGE_ALPHAS[-1],
            )
        model = _ridge(alpha).fit(x_train, y_train)
        return model, {"ridge_alpha": alpha, "ridge_alpha_chosen_by": "val MSE"}
