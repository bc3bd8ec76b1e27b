"""Gradient-boosted trees (LightGBM) as a head on a sample's cluster abundances, kept in a checkpoint without pickle."""

from __future__ import annotations

import logging
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
from torch import nn

from tune_ph.config import TrainConfig
from tune_ph.errors import InputError

log = logging.getLogger(__name__)

# Boosting rounds at most; early stopping on val ends it far sooner (tens to hundreds of rounds here).
MAX_ROUNDS = 3000
EARLY_STOPPING_ROUNDS = 100
# Thousands of cluster features and a few hundred samples: each tree sees half the features and 80 % of the samples,
# which decorrelates the trees (the same reason random forests subsample).
FEATURE_FRACTION = 0.5
BAGGING_FRACTION = 0.8
# A model text larger than this is not a head we wrote (3,000 trees of 63 leaves are about 20 MB).
MAX_MODEL_BYTES = 64 << 20


class TreeHead(nn.Module):
    """LightGBM regression trees on features (N, F) -> one value each (N,).

    Trees are not trained by gradient steps: ``fit`` grows them once on the train samples with early stopping on
    val. The fitted model is kept as LightGBM's own text format in a uint8 buffer, so a checkpoint carries it like
    any weight and loading it parses text; nothing is unpickled.
    """

    name = "trees"
    fields: ClassVar[tuple[str, ...]] = ("tree_leaves", "tree_learning_rate", "tree_min_samples", "seed", "pooling")
    needs_features = "trees read a sample's cluster abundances; use aggregation=clusters or another head"
    trainable_by_gradient = False

    def __init__(
        self,
        n_features: int,
        *,
        pooling: str = "pool",
        leaves: int = 15,
        learning_rate: float = 0.05,
        min_samples: int = 10,
        seed: int = 0,
    ):
        super().__init__()
        self.architecture = "trees"
        self.n_features, self.pooling = n_features, pooling
        self.params: dict[str, Any] = {
            "objective": "regression",
            "learning_rate": learning_rate,
            "num_leaves": leaves,
            "min_data_in_leaf": min_samples,
            "feature_fraction": FEATURE_FRACTION,
            "bagging_fraction": BAGGING_FRACTION,
            "bagging_freq": 1,
            "seed": seed,
            "deterministic": True,
            "force_row_wise": True,
            "verbosity": -1,
        }
        self.register_buffer("model_text", torch.zeros(0, dtype=torch.uint8))
        self._booster: Any = None
        # The booster's trees as arrays for regress_with, read once (None when they cannot be walked)
        self._trees: _Forest | None = None
        self._trees_read = False

    @classmethod
    def from_config(cls, cfg: TrainConfig, width: int) -> TreeHead:
        """The head cfg declares on `width` features."""
        return cls(
            width,
            pooling=cfg.pooling,
            leaves=cfg.tree_leaves,
            learning_rate=cfg.tree_learning_rate,
            min_samples=cfg.tree_min_samples,
            seed=cfg.seed,
        )

    @classmethod
    def numel(cls, cfg: TrainConfig, width: int) -> int:
        """A linear layer's worth: the fitted trees' own size is bounded by MAX_MODEL_BYTES, not the config."""
        return width + 1

    @classmethod
    def sized_state(cls, saved: dict[str, Any], where: str) -> dict[str, torch.Tensor]:
        """The fitted trees' size is the file's (bounded by checked_text)."""
        return {"model_text": cls.checked_text(saved.get("model_text"), where)}

    @property
    def fitted(self) -> bool:
        return self.model_text.numel() > 0

    def fit(self, train: torch.Tensor, target: torch.Tensor, val: torch.Tensor, val_target: torch.Tensor) -> int:
        """Grow the trees on (train, target), stopping when val stops improving; returns the rounds kept."""
        import lightgbm as lgb

        params = {**self.params, "num_threads": max(torch.get_num_threads(), 1)}
        data = lgb.Dataset(_numpy(train), _numpy(target), free_raw_data=True)
        valid = lgb.Dataset(_numpy(val), _numpy(val_target), reference=data)
        booster = lgb.train(
            params,
            data,
            num_boost_round=MAX_ROUNDS,
            valid_sets=[valid],
            callbacks=[lgb.early_stopping(EARLY_STOPPING_ROUNDS, verbose=False)],
        )
        text = booster.model_to_string(num_iteration=booster.best_iteration)
        self.model_text = torch.frombuffer(bytearray(text.encode()), dtype=torch.uint8).clone()
        self._booster, self._trees, self._trees_read = booster, None, False
        return int(booster.best_iteration or booster.current_iteration())

    def regress(self, features: torch.Tensor) -> torch.Tensor:
        """Features (N, F) -> one value each (N,)."""
        if not self.fitted:
            raise RuntimeError("the tree head has not been fitted; TreeHead.fit grows it on the train samples")
        out = self.booster().predict(_numpy(features), num_threads=max(torch.get_num_threads(), 1))
        return torch.from_numpy(np.asarray(out, dtype=np.float32)).to(features.device)

    def used_features(self) -> np.ndarray:
        """The inputs a prediction may depend on: those some tree splits on. Shuffling any other changes nothing,
        so the drivers skip them (most of five cluster fits' 7,000 abundances)."""
        return np.flatnonzero(self.booster().feature_importance(importance_type="split") > 0)

    def regress_with(
        self, features: torch.Tensor, predicted: torch.Tensor, feature: int, values: torch.Tensor
    ) -> torch.Tensor | None:
        """regress(features) with one feature's column replaced by values (N,), from the predictions as they are
        (N,): only the trees that split on that feature are walked again (the drivers shuffle thousands of
        features one by one, and each is in a few trees). None if a tree holds a split the walk does not follow."""
        if not self._trees_read:
            self._trees, self._trees_read = _Forest.of(self.booster().dump_model()), True
        forest = self._trees
        if forest is None:
            return None
        x, new = _numpy(features), _numpy(values)
        shift = np.zeros(len(x))
        for tree in forest.splitting_on.get(feature, ()):
            shift += tree.value[tree.leaves(x, feature, new)] - tree.value[tree.leaves(x)]
        return (predicted.double() + torch.from_numpy(shift).to(predicted.device)).float()

    def booster(self) -> Any:
        """The LightGBM booster the buffer holds (parsed once)."""
        if self._booster is None:
            import lightgbm as lgb

            try:
                self._booster = lgb.Booster(model_str=bytes(self.model_text.cpu().numpy()).decode())
            except (lgb.basic.LightGBMError, UnicodeDecodeError) as err:
                raise InputError(f"the checkpoint's tree head is not a LightGBM model ({err})") from None
            if self._booster.num_feature() != self.n_features:
                raise InputError(
                    f"the checkpoint's tree head reads {self._booster.num_feature()} features, but its config "
                    f"gives the head {self.n_features}; the file is damaged or was edited"
                )
        return self._booster

    @staticmethod
    def checked_text(saved: Any, where: str = "the checkpoint") -> torch.Tensor:
        """A saved model_text buffer, if it can be one: a 1-D uint8 tensor of at most MAX_MODEL_BYTES (its size is
        the fitted model's, so a checkpoint decides it; this bounds it)."""
        if not (isinstance(saved, torch.Tensor) and saved.dtype == torch.uint8 and saved.dim() == 1):
            kind = f"{tuple(saved.shape)} {saved.dtype}" if isinstance(saved, torch.Tensor) else type(saved).__name__
            raise InputError(f"{where}: its tree head is {kind}, not a LightGBM model text (1-D uint8)")
        if saved.numel() > MAX_MODEL_BYTES:
            raise InputError(f"{where}: its tree head is {saved.numel():,} bytes, over {MAX_MODEL_BYTES >> 20} MB")
        return saved

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        # The model text's length is the fitted model's, not known when the head is built: take the saved size.
        if prefix + "model_text" in state_dict:
            self.model_text = torch.zeros_like(self.checked_text(state_dict[prefix + "model_text"]))
            self._booster, self._trees, self._trees_read = None, None, False
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"n_features={self.n_features}, leaves={self.params['num_leaves']}, fitted={self.fitted}"


class _Tree(NamedTuple):
    """One regression tree of LightGBM's model dump as arrays: per split its feature, threshold, children (a child
    >= 0 is a split, ~child a leaf) and where a missing value goes; per leaf its value."""

    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    missing_left: np.ndarray
    value: np.ndarray

    def leaves(self, x: np.ndarray, feature: int = -1, values: np.ndarray | None = None) -> np.ndarray:
        """Each row's leaf (N,), with `feature` read from values instead of x when given. A row goes left where its
        value is <= the threshold, a float32 value compared as float64 as LightGBM does."""
        leaf = np.zeros(len(x), dtype=np.int64)
        if not len(self.feature):
            return leaf  # a tree of one leaf
        node, active = np.zeros(len(x), dtype=np.int64), np.arange(len(x))
        while len(active):
            at = node[active]
            split_feature = self.feature[at]
            read = x[active, split_feature].astype(np.float64)
            if values is not None:
                read = np.where(split_feature == feature, values[active], read)
            read = np.clip(read, -1e300, 1e300)  # LightGBM reads an infinite value as ±1e300
            left = np.where(np.isnan(read), self.missing_left[at], read <= self.threshold[at])
            child = np.where(left, self.left[at], self.right[at])
            done = child < 0
            leaf[active[done]] = ~child[done]
            node[active[~done]] = child[~done]
            active = active[~done]
        return leaf


class _Forest(NamedTuple):
    """A booster's trees as arrays, for each feature the trees that split on it."""

    splitting_on: dict[int, list[_Tree]]

    @classmethod
    def of(cls, dump: dict[str, Any]) -> _Forest | None:
        """The trees of a dump_model(), or None where a prediction is more than the sum of leaf values reached by
        "value <= threshold" splits: another objective (its output transformed), linear trees, categorical splits
        or zero taken as missing. LightGBM's own predict is the only reader of those."""
        if str(dump.get("objective", "")).split(" ")[0] != "regression":
            return None
        splitting_on: dict[int, list[_Tree]] = {}
        for info in dump["tree_info"]:
            splits: dict[int, tuple[int, float, int, int, bool]] = {}
            leaves: dict[int, float] = {}
            if not _flatten(info["tree_structure"], splits, leaves):
                return None
            columns = list(zip(*(splits[i] for i in range(len(splits))))) or [()] * 5
            feature, threshold, left, right, missing_left = (np.array(c) for c in columns)
            value = np.array([leaves[i] for i in range(len(leaves))])
            tree = _Tree(feature.astype(np.int64), threshold.astype(np.float64), left, right, missing_left, value)
            for f in set(feature.tolist()):
                splitting_on.setdefault(f, []).append(tree)
        return cls(splitting_on)


def _flatten(
    node: dict[str, Any], splits: dict[int, tuple[int, float, int, int, bool]], leaves: dict[int, float]
) -> bool:
    """A dump's node and those under it into splits[split_index] and leaves[leaf_index]; False at a split that is
    not a plain threshold."""
    if "leaf_value" in node:
        leaves[node.get("leaf_index", 0)] = node["leaf_value"]
        return "leaf_coeff" not in node  # a linear tree's leaf is a function of the row, not a value
    if node.get("decision_type") != "<=" or node.get("missing_type") == "Zero":
        return False
    children = []
    for child in (node["left_child"], node["right_child"]):
        children.append(child["split_index"] if "split_index" in child else ~child.get("leaf_index", 0))
        if not _flatten(child, splits, leaves):
            return False
    # LightGBM reads a NaN as 0 unless the split learnt where missing values go (missing_type NaN).
    nan_left = node["default_left"] if node.get("missing_type") == "NaN" else 0.0 <= node["threshold"]
    splits[node["split_index"]] = (node["split_feature"], node["threshold"], *children, bool(nan_left))
    return True


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()
