"""A fitted HistGradientBoostingRegressor compiled to NumPy arrays: the same predictions, no scikit-learn.

:class:`CompiledTrees` holds what prediction needs of a fitted
:class:`~sklearn.ensemble.HistGradientBoostingRegressor` with an identity
link (squared error, quantile loss): its baseline and the nodes of its trees,
concatenated. A row goes left at a split where ``x <= threshold`` and, where
``x`` is NaN, to the side the tree learned for missing values, as scikit-learn's
``_predictor.pyx`` does; the leaf values are added to the baseline tree by
tree, in scikit-learn's order, so the predictions are the same to the bit.
Rows descend all trees of one depth together, one level a step.

Only :func:`compile_hgb`, which training calls, imports scikit-learn.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import numpy as np
import numpy.typing as npt

__all__ = ["NODE_ARRAYS", "CompiledTrees", "compile_hgb"]

FloatArray = npt.NDArray[np.float64]

#: The per-node arrays of :class:`CompiledTrees` and their dtypes, as :meth:`CompiledTrees.arrays` gives them.
NODE_ARRAYS: Final[Mapping[str, np.dtype[Any]]] = {
    "value": np.dtype(np.float64),
    "feature": np.dtype(np.int32),
    "threshold": np.dtype(np.float64),
    "missing_left": np.dtype(np.bool_),
    "left": np.dtype(np.int32),
    "right": np.dtype(np.int32),
    "is_leaf": np.dtype(np.bool_),
}
#: Rows routed at once: the working arrays (rows × trees) then stay in the CPU's cache.
BLOCK_ROWS: Final = 256


class CompiledTrees:
    """The trees of a fitted gradient-boosting regressor as flat node arrays, predicting without scikit-learn.

    ``baseline``: the starting raw prediction; ``roots``: the index of each
    tree's first node, in boosting order; per node (all trees concatenated):
    ``value`` (leaf value), ``feature`` (column of ``X`` split on),
    ``threshold`` (``x <= threshold`` goes left), ``missing_left`` (where NaN
    goes), ``left`` / ``right`` (children's indices, each greater than the
    node's own; -1 at a leaf) and ``is_leaf``. ``n_features``: the columns of
    ``X``. Raises :class:`ValueError` if the arrays do not describe such trees.
    """

    def __init__(
        self,
        *,
        baseline: float,
        roots: npt.ArrayLike,
        n_features: int,
        value: npt.ArrayLike,
        feature: npt.ArrayLike,
        threshold: npt.ArrayLike,
        missing_left: npt.ArrayLike,
        left: npt.ArrayLike,
        right: npt.ArrayLike,
        is_leaf: npt.ArrayLike,
    ) -> None:
        nodes = {"value": value, "feature": feature, "threshold": threshold, "missing_left": missing_left}
        nodes |= {"left": left, "right": right, "is_leaf": is_leaf}
        self.baseline = float(baseline)
        self.n_features = int(n_features)
        self._nodes = {name: np.asarray(nodes[name], dtype=dtype) for name, dtype in NODE_ARRAYS.items()}
        self._roots = np.asarray(roots, dtype=np.int32)
        self._check()
        n = len(self._nodes["value"])
        own = np.arange(n)
        leaf = self._nodes["is_leaf"]
        # A leaf leads to itself: every row can take the same number of steps, whatever its tree's depth.
        self._children = np.empty(2 * n, dtype=np.intp)
        self._children[0::2] = np.where(leaf, own, self._nodes["left"])
        self._children[1::2] = np.where(leaf, own, self._nodes["right"])
        self._feature = self._nodes["feature"].astype(np.intp)
        self._threshold = self._nodes["threshold"]
        self._missing_right = ~self._nodes["missing_left"]
        self._value = self._nodes["value"]
        self._root_nodes = self._roots.astype(np.intp)
        depths = self._tree_depths()
        self.depth = int(depths.max())
        # trees of one depth descend together, that many steps: a shallow tree is not walked as deep as the
        # deepest (the mean depth is about 60 % of the deepest in the Z_e model)
        self._by_depth = [(int(d), np.flatnonzero(depths == d)) for d in np.unique(depths)]

    def _check(self) -> None:
        nodes, roots = self._nodes, self._roots
        n = len(nodes["value"])
        if any(a.ndim != 1 or len(a) != n for a in nodes.values()) or roots.ndim != 1:
            raise ValueError("node arrays must be one-dimensional and of one length, roots one-dimensional")
        if n == 0 or len(roots) == 0 or self.n_features < 1:
            raise ValueError("no trees, no nodes or no features")
        if not (roots[0] == 0 and np.all(np.diff(roots) > 0) and roots[-1] < n):
            raise ValueError("roots must start at node 0 and increase")
        if not (np.isfinite(self.baseline) and np.all(np.isfinite(nodes["value"]))):
            raise ValueError("baseline and leaf values must be finite")
        if np.any(np.isnan(nodes["threshold"])):
            raise ValueError("a threshold is NaN")
        if np.any((nodes["feature"] < 0) | (nodes["feature"] >= self.n_features)):
            raise ValueError(f"a split reads a feature outside 0-{self.n_features - 1}")
        split = ~nodes["is_leaf"]
        own = np.arange(n)
        # each tree's nodes lie between its root and the next root: a child stays in its tree
        end = np.append(roots[1:], n)[np.searchsorted(roots, own, side="right") - 1]
        for side in ("left", "right"):
            child = nodes[side]
            if np.any(child[~split] != -1):
                raise ValueError(f"a leaf has a {side} child")
            if np.any((child[split] <= own[split]) | (child[split] >= end[split])):
                raise ValueError(f"a {side} child is not a later node of the same tree")

    def _tree_depths(self) -> npt.NDArray[np.intp]:
        """Splits on the longest path from each tree's root to a leaf; children come after their parent (and
        stay in its tree), so it ends."""
        tree_of = np.searchsorted(self._roots, np.arange(len(self._value)), side="right") - 1
        depths = np.zeros(self.n_trees, dtype=np.intp)
        depth, level = 0, self._root_nodes
        while True:
            level = level[~self._nodes["is_leaf"][level]]
            if len(level) == 0:
                return depths
            # unique: a file could name one node the child of many, and the level must not grow past the nodes
            level = np.unique(np.concatenate([self._nodes["left"][level], self._nodes["right"][level]]))
            depth += 1
            depths[tree_of[level]] = depth  # the levels come deeper and deeper: the last one is the deepest

    @property
    def n_trees(self) -> int:
        return len(self._roots)

    def arrays(self) -> dict[str, np.ndarray]:
        """``roots`` and the node arrays (dtypes of :data:`NODE_ARRAYS`), to store; ``baseline`` is apart."""
        return {"roots": self._roots.copy(), **{name: a.copy() for name, a in self._nodes.items()}}

    def predict(self, X: npt.ArrayLike) -> FloatArray:
        """The prediction of each row of ``X`` (rows × ``n_features``), as the regressor's ``predict``."""
        X = np.ascontiguousarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"X must have {self.n_features} columns, got shape {X.shape}")
        out = np.empty(len(X), dtype=np.float64)
        for start in range(0, len(X), BLOCK_ROWS):
            out[start : start + BLOCK_ROWS] = self._predict_block(X[start : start + BLOCK_ROWS])
        return out

    def _predict_block(self, X: FloatArray) -> FloatArray:
        rows, trees = len(X), self.n_trees
        flat = X.ravel()
        row_start = (np.arange(rows, dtype=np.intp) * self.n_features)[:, None]
        leaf = np.empty((rows, trees), dtype=np.intp)
        for depth, members in self._by_depth:
            node = np.broadcast_to(self._root_nodes[members], (rows, len(members))).copy()
            for _ in range(depth):
                x = flat[row_start + self._feature[node]]
                go_right = x > self._threshold[node]  # not (x <= threshold); False for NaN, set below
                missing = np.isnan(x)
                if missing.any():
                    go_right[missing] = self._missing_right[node[missing]]
                node = self._children[2 * node + go_right]
            leaf[:, members] = node
        # baseline, then each tree in boosting order: scikit-learn's sum, rounding included
        terms = np.empty((rows, trees + 1), dtype=np.float64)
        terms[:, 0] = self.baseline
        terms[:, 1:] = self._value[leaf]
        return np.cumsum(terms, axis=1)[:, -1]


def compile_hgb(estimator: Any) -> CompiledTrees:
    """The :class:`CompiledTrees` of a fitted ``HistGradientBoostingRegressor`` with an identity link.

    Raises :class:`ValueError` for a model with categorical splits or a
    non-identity link (Poisson, gamma), which :class:`CompiledTrees` does not
    reproduce, and :class:`TypeError` for another estimator.
    """
    from sklearn._loss.link import IdentityLink
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.utils.validation import check_is_fitted

    if not isinstance(estimator, HistGradientBoostingRegressor):
        raise TypeError(f"expected a HistGradientBoostingRegressor, got {type(estimator).__name__}")
    check_is_fitted(estimator)
    if not isinstance(estimator._loss.link, IdentityLink):
        raise ValueError(f"only identity links can be compiled, not {type(estimator._loss.link).__name__}")
    parts: dict[str, list[np.ndarray]] = {name: [] for name in NODE_ARRAYS}
    roots, offset = [], 0
    for (predictor,) in estimator._predictors:  # one tree per iteration: a regressor
        nodes = predictor.nodes
        if np.any(nodes["is_categorical"]):
            raise ValueError("categorical splits cannot be compiled")
        leaf = nodes["is_leaf"].astype(bool)
        roots.append(offset)
        parts["value"].append(nodes["value"])
        parts["feature"].append(nodes["feature_idx"])
        parts["threshold"].append(nodes["num_threshold"])
        parts["missing_left"].append(nodes["missing_go_to_left"].astype(bool))
        parts["left"].append(np.where(leaf, -1, nodes["left"].astype(np.int64) + offset))
        parts["right"].append(np.where(leaf, -1, nodes["right"].astype(np.int64) + offset))
        parts["is_leaf"].append(leaf)
        offset += len(nodes)
    baseline = np.asarray(estimator._baseline_prediction, dtype=np.float64)
    if baseline.size != 1:
        raise ValueError(f"expected one baseline, got {baseline.size}")
    return CompiledTrees(
        baseline=float(baseline.item()),
        roots=np.asarray(roots, dtype=np.int32),
        n_features=int(estimator.n_features_in_),
        **{name: np.concatenate(parts[name]).astype(dtype) for name, dtype in NODE_ARRAYS.items()},
    )
