"""Cross-validation folds of a store's training rows, as a view: fold i's rows play dev, the other folds train.

Cross-validated selection (spin_cache.loop.selection, strategy ``cv``) fits the probes and every head of the sweep
once per fold without the fold's rows and scores them on those rows, so the choice of a configuration never sees
the dev or test rows. Every stage reads a store's splits from its examples table, so a fold is applied there, in
one place (`ActivationStore.open(url, fold=...)`): the probe and the sweep run unchanged on the relabelled rows.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import polars as pl
from sklearn.model_selection import StratifiedKFold

from ..errors import InputError

#: What a fold view calls the store's own dev and test rows: set aside, read by no stage.
SET_ASIDE = "set-aside"
DEFAULT_FOLDS = 5


@dataclass(frozen=True)
class Fold:
    """Fold `index` (0-based) of the training rows split into `n` folds, stratified by label and shuffled with
    `seed` (scikit-learn's StratifiedKFold): in the view, its rows are "dev", the other training rows "train", and
    the store's dev and test rows `SET_ASIDE`. The same (n, seed) always splits the same rows the same way."""

    index: int
    n: int = DEFAULT_FOLDS
    seed: int = 0

    def check(self) -> None:
        """InputError unless 2 <= n and 0 <= index < n."""
        for name, value in (("index", self.index), ("n", self.n), ("seed", self.seed)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InputError(f"fold {name} {value!r}: expected a whole number >= 0")
        if self.n < 2:
            raise InputError(f"--folds {self.n}: cross-validation needs 2 folds or more")
        if self.index >= self.n:
            raise InputError(f"fold {self.index}: out of range for {self.n} folds (0..{self.n - 1})")

    def relabel(self, examples: pl.DataFrame) -> pl.DataFrame:
        """`examples` (the store's table) with its split column as this fold's view sees it."""
        split = examples["split"].to_numpy()
        held = np.zeros(len(split), dtype=bool)
        held[fold_rows(examples["label"].to_numpy(), split == "train", self.n, self.seed)[self.index]] = True
        view = np.where(split == "train", np.where(held, "dev", "train"), SET_ASIDE)
        return examples.with_columns(pl.Series("split", view, dtype=pl.String))


def fold_rows(labels: np.ndarray, train: np.ndarray, n: int, seed: int) -> list[np.ndarray]:
    """The table positions of each of `n` folds of the rows where `train` is true (stratified by label, shuffled
    with `seed`). InputError when there are fewer training rows than folds."""
    rows = np.flatnonzero(train)
    if len(rows) < n:
        raise InputError(f"--folds {n}: the store has {len(rows)} training rows; give at most that many folds")
    y = labels[rows]
    # StratifiedKFold needs every class in every fold; with fewer members than folds a class is spread as far as it
    # goes (scikit-learn warns, and the folds stay a partition), which the warning filter keeps off the terminal.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splitter = StratifiedKFold(n_splits=n, shuffle=True, random_state=seed)
        return [rows[held] for _, held in splitter.split(np.zeros(len(rows)), y)]
