"""The typed data the sweep's stages pass to each other, and what of it reaches disk.

Each (kind, pooling) group (a Dask task, `sweep.sweep_group`) sends back a `GroupResult`: its configurations'
`SweepRow`s, the dev predictions of every head it fitted (`DevPredictions`, the selection's input), its best
configuration (`BestConfig`, with the classifier as `HeadParts`) and, for hidden states, Base (`BaseResult`). After
the choice, the random control comes back as a `ControlResult`. On disk: the rows become sweep.parquet (typed by
`SWEEP_SCHEMA`); the result table (`SweepTable` of `TableRow`s, with how the head was chosen, `ChosenBy`) becomes
summary.json's "table", and its metrics and "chosen_by" go into the exported head's head.json.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import polars as pl

from ..fit.estimator import SpinClassifier
from .selection import Estimate


@dataclass
class SweepRow:
    """One (kind, pooling, rule value, K) configuration: one row of sweep.parquet.

    `C` and `dev_metric` are the configuration's best C on dev and its dev score there (ties to the smaller C).
    `test_metric` is None (null on disk) for every configuration but the chosen one: test is read once. The chosen
    configuration's row describes the exported head (its C, dev and test)."""

    kind: str
    pooling: str
    rule: str
    value: float
    k: int  # number of layers integrated, from the kind's first layer
    layers: list[int]
    n_neurons: int
    share: float  # n_neurons over every neuron of the kind's layers
    C: float
    dev_metric: float
    test_metric: float | None
    group_bytes_read: int  # bytes the whole group read (every row of a group shares it)
    mode: str  # "in-memory" or "streamed"
    seconds: float


#: sweep.parquet's column types (a column of nulls keeps its type: test_metric is null but for the chosen row).
SWEEP_SCHEMA = pl.Schema(
    {
        "kind": pl.String(),
        "pooling": pl.String(),
        "rule": pl.String(),
        "value": pl.Float64(),
        "k": pl.Int64(),
        "layers": pl.List(pl.Int64),
        "n_neurons": pl.Int64(),
        "share": pl.Float64(),
        "C": pl.Float64(),
        "dev_metric": pl.Float64(),
        "test_metric": pl.Float64(),
        "group_bytes_read": pl.Int64(),
        "mode": pl.String(),
        "seconds": pl.Float64(),
    }
)


@dataclass
class DevPredictions:
    """Every head one group fitted (each configuration at each C of the grid, C ascending within a configuration)
    as predicted labels on the dev rows: the input of the selection (ConfigScores). Labels are kept in the smallest
    integer type that holds the classes (3,120 heads x 1,000 dev rows of int8: 3 MB)."""

    labels: np.ndarray  # (n_heads, n_dev)
    row: np.ndarray  # (n_heads,) the head's configuration: an index into GroupResult.rows
    C: np.ndarray  # (n_heads,)


@dataclass
class HeadParts:
    """A fitted classifier as JSON and arrays (SpinClassifier.to_json / to_arrays): what a task sends back."""

    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]

    @classmethod
    def of(cls, clf: SpinClassifier) -> HeadParts:
        """The parts of a fitted classifier (NotFittedError for an unfitted one)."""
        return cls(clf.to_json(), clf.to_arrays())

    def classifier(self) -> SpinClassifier:
        """The fitted classifier rebuilt from the parts (SpinClassifier.from_parts), without refitting."""
        return SpinClassifier.from_parts(self.meta, self.arrays)


@dataclass
class BestConfig:
    """A group's best configuration on dev (ties to fewer neurons, then fewer layers, then the first in the
    group's order) at its best C, with its classifier: the arg-max's choice needs no refit."""

    row: SweepRow
    head: HeadParts
    selection: dict[int, np.ndarray]  # layer -> neuron ids in rank order


@dataclass
class BaseResult:
    """Base for one pooling: the last hidden layer, every neuron (scored on dev and test)."""

    kind: str
    pooling: str
    layer: int
    dev: float
    test: float
    n_neurons: int
    share: float
    C: float


@dataclass
class GroupResult:
    """Everything one (kind, pooling) group sends back: its rows, its heads' dev predictions, its best
    configuration, Base (hidden states only) and what it read."""

    rows: list[SweepRow]
    heads: DevPredictions
    best: BestConfig | None
    base: BaseResult | None
    bytes_read: int
    bytes_of_columns: float
    seconds: float


@dataclass
class ControlResult:
    """The random control: SPIN's per-layer neuron counts drawn at random, fitted and scored the same way."""

    dev: float
    test: float
    n_neurons: int
    share: float
    C: float
    bytes_read: int


@dataclass
class TableRow:
    """One line of the result table (Base, best single layer, SPIN, random control). Fields a line does not have
    are None and left out of the JSON."""

    dev: float
    test: float
    n_neurons: int
    share: float
    C: float
    kind: str | None = None
    pooling: str | None = None
    layer: int | None = None
    rule: str | None = None
    value: float | None = None
    layers: list[int] | None = None
    bytes_read: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The fields as a dict, without those that are None; `dev` and `test` are always there (None is null)."""
        return {k: v for k, v in asdict(self).items() if v is not None or k in ("dev", "test")}


@dataclass
class ChosenBy:
    """How the exported head was chosen, and what to expect from it on new data (summary.json's and head.json's
    "chosen_by").

    strategy: SweepSettings.select. chosen_dev: the chosen head's dev score (what the table shows); best_dev: the best
    dev score of any head. expected: `expected_method`'s estimate of the chosen head's score on new data, with the
    search accounted for ("bbc": the selection re-run on bootstrap resamples of the dev rows, each choice scored on
    the rows its resample left out; Tsamardinos et al. 2018); expected_se: its binomial standard error on the dev
    rows; optimism: chosen_dev - expected. n_compared: heads compared (every head fitted: each configuration at
    every C, or, with `--search patience`, at the C values its path reached);
    n_distinct: of them, with distinct dev predictions; n_configurations: (kind, pooling, value, K) configurations;
    n_candidates: the strategy's candidate set; chosen_share: how often the resamples chose the same head.
    cv_score: with strategy "cv", the chosen head's out-of-fold score on the training rows (n_resamples: the folds;
    the estimate is then its dev score, which the choice never saw)."""

    strategy: str
    chosen_dev: float
    best_dev: float
    expected: float
    expected_se: float
    expected_method: str
    optimism: float
    n_compared: int
    n_distinct: int
    n_configurations: int
    n_candidates: int
    n_dev_rows: int
    n_resamples: int
    seed: int
    chosen_share: float | None
    cv_score: float | None = None

    @classmethod
    def of(cls, choice_dev: float, best_dev: float, n_candidates: int, n_configs: int, est: Estimate) -> ChosenBy:
        """The record from the chosen head's dev score, the best dev score of any head, the strategy's candidate
        count, the number of configurations and the estimate (`est`: strategy, expected score, its standard error,
        sizes, seed); `optimism` is taken against `choice_dev`, not the estimate's own apparent score."""
        return cls(
            strategy=est.strategy,
            chosen_dev=choice_dev,
            best_dev=best_dev,
            expected=est.estimate,
            expected_se=est.se,
            expected_method=est.method,
            optimism=choice_dev - est.estimate,
            n_compared=est.n_configurations,
            n_distinct=est.n_distinct,
            n_configurations=n_configs,
            n_candidates=n_candidates,
            n_dev_rows=est.n_rows,
            n_resamples=est.n_resamples,
            seed=est.seed,
            chosen_share=est.details.get("chosen_share"),
            cv_score=est.details.get("cv_score"),
        )

    def to_json(self) -> dict[str, Any]:
        """Every field by name: the "chosen_by" of summary.json and head.json."""
        return asdict(self)


@dataclass
class SweepTable:
    """The result table (summary.json's "table"): Base, the best single-layer probe, SPIN (the chosen head) and the
    random control, how SPIN was chosen, where its head went and what the sweep read (`bytes_read`: the groups'
    reads, against `bytes_of_columns`, the stored bytes of the columns they use; `bytes_read_folds`: what cv's
    folds read on top)."""

    base: TableRow | None
    best_single_layer: TableRow
    spin: TableRow
    random_control: TableRow
    chosen_by: ChosenBy
    head: str | None = None
    bytes_read: int = 0
    bytes_of_columns: int = 0
    bytes_read_folds: int = 0

    def metrics(self) -> dict[str, Any]:
        """The four lines as head.json's "metrics" records them."""
        control = self.random_control.to_json()
        control.pop("bytes_read", None)
        return {
            "base": None if self.base is None else self.base.to_json(),
            "best_single_layer": self.best_single_layer.to_json(),
            "spin": self.spin.to_json(),
            "random_control": control,
        }

    def to_json(self) -> dict[str, Any]:
        """summary.json's "table": the four lines (the random control with its `bytes_read`), "chosen_by", the
        head's folder and the bytes the sweep read and its columns occupy."""
        out = self.metrics()
        out["random_control"] = self.random_control.to_json()
        return out | {
            "chosen_by": self.chosen_by.to_json(),
            "head": self.head,
            "bytes_read": self.bytes_read,
            "bytes_of_columns": self.bytes_of_columns,
            "bytes_read_folds": self.bytes_read_folds,
        }
