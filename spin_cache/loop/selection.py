"""Choosing one configuration among many on a dev split, and an honest estimate of what it will score on new data.

The sweep fits a head for every (kind, pooling, rule value, K) configuration and every C of the head grid, and must
then pick one. Picking the best dev score among thousands of near-ties rewards luck: the winner's dev score is biased
upwards (the "winner's curse", or selection bias; Cawley & Talbot 2010, *On over-fitting in model selection and
subsequent selection bias in performance evaluation*, JMLR 11). This module holds the choice and the estimate as
pure functions of one matrix:

    ConfigScores.predictions[i, r]  the label head i (one (kind, pooling, value, K, C)) predicts for dev row r
    ConfigScores.labels[r]          dev row r's label
    n_neurons[i], n_layers[i], C[i] head i's complexity keys (fewer / fewer / smaller = simpler)
    group[i], grid[i]               optional: head i's neighbourhood, for the `smoothed` strategy

Nothing here sees a test row: the test score is computed once, by the caller, for the configuration chosen.

Strategies (`STRATEGIES`; `choose` returns a `Choice`). Each names a candidate set and takes its simplest member:
fewest neurons, then fewest layers, then smallest C, then the higher dev score, then the lower index.

- ``argmax`` (`choose`'s default): the best dev score; ties to fewer neurons, then fewer layers, then smaller C.
- ``one_se``: the one-standard-error rule (Breiman et al. 1984, *Classification and Regression Trees*; Hastie,
  Tibshirani & Friedman, *The Elements of Statistical Learning*, 7.10): the simplest configuration whose dev score
  is within one binomial standard error ``sqrt(s (1 - s) / n)`` of the best dev score ``s``.
- ``one_se_paired``: the same, with the standard error of the *paired* difference to the arg-max on the same dev
  rows (the error bar of a paired comparison, as in McNemar's test): a configuration that errs on the same rows as
  the best gets a narrow window, an unrelated one a wider window.
- ``smoothed``: the best *smoothed* dev score, each configuration's score averaged with its grid neighbours' (needs
  `group` and `grid`; `sweep_neighbourhoods` builds them: neighbours in the rule-value grid). Under noisy
  evaluations the arg-max of a smoothed surface, not of the raw scores, is the usual recommendation (Picheny,
  Wagner & Ginsbourger 2013, *A benchmark of kriging-based infill criteria for noisy optimization*, Struct.
  Multidiscip. Optim. 48); it fails next to a cliff in the surface.

- ``cv`` (the sweep's default, `DEFAULT_SELECT`): cross-validated selection (Stone 1974, *Cross-validatory choice
  and assessment of statistical predictions*, JRSS B 36; Varma & Simon 2006, *Bias in error estimation when using
  cross-validation for model selection*, BMC Bioinformatics 7). The training rows are split into folds; in each,
  the probes and every head are fitted without the fold's rows and predict them (spin_cache.store.folds,
  spin_cache.loop.probe.probe_folds), and the head with the best out-of-fold score over all training rows is
  chosen (`cross_validated_choice`, ties as ``argmax`` breaks them). The choice is made on several times as many
  rows as dev holds, and the choice among heads never looks at dev, so the chosen head's dev score is itself an
  honest estimate. (Dev enters once, before: the probe run's C per layer, chosen on dev among the probe grid's
  values, which the folds' probes reuse; measured, the dev score then overstated test by at most 0.73 points.)

The strategies over dev scores do not beat the arg-max on every set measured (BENCHMARKS.md, "Selection
strategies": random re-splits of the pooled dev and test rows, choosing on the dev part only): the
one-standard-error rules lose where accuracy keeps rising with neurons, and smoothing loses next to a cliff.
Cross-validated selection does, and its dev score needs no correction, so it is the sweep's default; ``argmax``
stays for a sweep at a fifth of the cost, with the estimate below beside it.

Estimates (`expected_score` returns an `Estimate`; the whole selection procedure is re-run, so the estimate
accounts for the search):

- ``bbc`` (the default): the bootstrap bias-corrected estimate (Tsamardinos, Greasidou & Borboudakis 2018,
  *Bootstrapping the out-of-sample predictions for efficient and accurate cross-validation*, Machine Learning 107):
  resample the dev rows with replacement, run the strategy on the resample, score the configuration it chooses on
  the rows the resample left out (out-of-bag), and average. The least biased of the three over the sets measured
  (BENCHMARKS.md).
- ``optimism``: Efron's optimism bootstrap (Efron & Tibshirani 1993, ch. 17; Harrell 2015, 5.3): the chosen dev
  score minus the mean, over resamples, of (resample score of the resample's choice - its score on all dev rows).
  Optimistic on every set measured.
- ``tt``: Tibshirani & Tibshirani 2009 (*A bias correction for the minimum error rate in cross-validation*, Ann.
  Appl. Stat. 3): the dev rows in K folds; bias = mean over folds of (the fold's own choice's fold score - the
  overall choice's fold score); estimate = chosen dev score - bias. Too pessimistic on every set measured: each
  fold's choice is made on a tenth of the rows.

Scores are ``accuracy`` or ``macro_f1`` (spin_cache.fit.metrics). For ``macro_f1`` the one-standard-error rules use
the binomial formula and per-row correctness as approximations of the score's standard error.

The sweep calls, after fitting every configuration and every C (one row per fitted head)::

    scores = ConfigScores(dev_predictions, dev_labels, n_neurons, n_layers, C, metric=settings.metric)
    choice = choose(scores, strategy)             # choice.index: the head to export; choice.dev_score its dev score
    honest = expected_score(scores, strategy)     # honest.estimate (show next to the dev score), honest.se,
                                                  # honest.n_configurations (how many heads were compared)

and records the strategy, the choice and the estimate in its summary and the head's metadata (as
`spin_cache.loop.results.ChosenBy`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from ..errors import InputError
from ..fit.metrics import METRICS

# Scores of configurations that agree on every weighted row are computed by the same sums of small integers, so they
# are equal to the last bit; the tolerance only guards against a future change of summation order.
_TIE = 1e-9

#: How `expected_score` re-runs the selection: see the module docstring.
ESTIMATE_METHODS = ("bbc", "optimism", "tt")
DEFAULT_ESTIMATE_METHOD = "bbc"
DEFAULT_N_BOOT = 500
DEFAULT_FOLDS = 10


@dataclass(frozen=True, eq=False)
class ConfigScores:
    """Every configuration's predicted labels on the dev rows, the dev labels, and each configuration's complexity.

    predictions: (n_configurations, n_dev) integer labels; row i is configuration i (one head: kind, pooling,
        rule value, K and C), column r is dev row r.
    labels: (n_dev,) integer dev labels.
    n_neurons, n_layers, C: (n_configurations,) the complexity keys: neurons the head reads, layers it integrates
        (K), and its inverse regularisation strength (scikit-learn's C: smaller = stronger).
    metric: "accuracy" or "macro_f1" (the sweep's --metric).
    n_classes: the number of classes (labels and predictions lie in 0..n_classes-1); default: the largest label or
        prediction + 1.
    group, grid: optional, for the `smoothed` strategy: (n_configurations,) group labels and (n_configurations, d)
        integer grid positions; configurations are neighbours when they share a group and their positions differ by
        one step along exactly one axis (`sweep_neighbourhoods` builds them from the sweep's keys).

    Bad input raises a one-line InputError naming the field.
    """

    predictions: np.ndarray
    labels: np.ndarray
    n_neurons: np.ndarray
    n_layers: np.ndarray
    C: np.ndarray
    metric: str = "accuracy"
    n_classes: int | None = None
    group: np.ndarray | None = None
    grid: np.ndarray | None = None

    def __post_init__(self) -> None:
        pred = _int_array("predictions", self.predictions, 2)
        labels = _int_array("labels", self.labels, 1)
        m, n = pred.shape
        if m == 0 or n == 0:
            raise InputError(f"predictions: shape {pred.shape}; need at least one configuration and one dev row")
        if len(labels) != n:
            raise InputError(f"labels: {len(labels)} dev labels for predictions over {n} dev rows")
        neurons = _int_array("n_neurons", self.n_neurons, 1)
        layers = _int_array("n_layers", self.n_layers, 1)
        c = np.asarray(self.C, dtype=np.float64) if _is_numeric(self.C) else None
        if c is None or c.ndim != 1:
            raise InputError("C: give a 1-D array of positive numbers, one per configuration")
        for name, arr in (("n_neurons", neurons), ("n_layers", layers), ("C", c)):
            if len(arr) != m:
                raise InputError(f"{name}: {len(arr)} values for {m} configurations")
        if neurons.min() < 1 or layers.min() < 1:
            raise InputError("n_neurons and n_layers: every configuration reads at least one neuron of one layer")
        if not np.all(np.isfinite(c)) or c.min() <= 0:
            raise InputError("C: every value must be a finite number above 0")
        if self.metric not in METRICS:
            raise InputError(f"metric {self.metric!r}: choose from {', '.join(METRICS)}")
        low = min(int(pred.min()), int(labels.min()))
        high = max(int(pred.max()), int(labels.max()))
        if low < 0:
            raise InputError("predictions and labels: class indices must be 0 or more")
        k = high + 1 if self.n_classes is None else self.n_classes
        if not isinstance(k, (int, np.integer)) or k < 1 or high >= k:
            raise InputError(f"n_classes {self.n_classes!r}: labels and predictions go up to {high}")
        group, grid = self.group, self.grid
        if (group is None) != (grid is None):
            raise InputError("group and grid: give both (configurations' neighbourhoods) or neither")
        if grid is not None:
            grid = _int_array("grid", grid, 2)
            group = np.asarray(group)
            if group.ndim != 1 or len(group) != m or len(grid) != m:
                raise InputError(f"group and grid: need one group and one grid row for each of the {m} configurations")
            if len({(g, *row) for g, row in zip(group.tolist(), grid.tolist(), strict=True)}) != m:
                raise InputError("group and grid: two configurations share a group and a grid position")
        for name, value in (
            ("predictions", pred),
            ("labels", labels),
            ("n_neurons", neurons),
            ("n_layers", layers),
            ("C", c),
            ("n_classes", int(k)),
            ("group", group),
            ("grid", grid),
        ):
            object.__setattr__(self, name, value)

    @property
    def n_configurations(self) -> int:
        """How many configurations (heads) are compared: the rows of `predictions`."""
        return int(self.predictions.shape[0])

    @property
    def n_rows(self) -> int:
        """How many dev rows the configurations are scored on: the columns of `predictions`."""
        return int(self.predictions.shape[1])

    @cached_property
    def n_distinct(self) -> int:
        """Configurations with distinct dev predictions (heads that agree on every dev row count once)."""
        return len(np.unique(self.predictions, axis=0))

    @cached_property
    def complexity_rank(self) -> np.ndarray:
        """Dense rank of (n_neurons, n_layers, C): 0 = the simplest; equal keys share a rank."""
        keys = np.stack([self.n_neurons.astype(np.float64), self.n_layers.astype(np.float64), self.C])
        _, inverse = np.unique(keys.T, axis=0, return_inverse=True)
        return inverse.reshape(-1).astype(np.int64)

    @cached_property
    def neighbourhood(self) -> object:
        """(n_configurations, n_configurations) row-stochastic averaging operator: row i averages configuration i
        and its grid neighbours (same group; grid positions one step apart along exactly one axis)."""
        if self.grid is None or self.group is None:
            raise InputError("the smoothed strategy needs the configurations' group and grid (see ConfigScores)")
        position = {
            (g, *row): i for i, (g, row) in enumerate(zip(self.group.tolist(), self.grid.tolist(), strict=True))
        }
        rows, cols = [], []
        for (g, *row), i in position.items():
            rows.append(i)
            cols.append(i)
            for axis in range(len(row)):
                for step in (-1, 1):
                    near = list(row)
                    near[axis] += step
                    j = position.get((g, *near))
                    if j is not None:
                        rows.append(i)
                        cols.append(j)
        from scipy import sparse

        m = self.n_configurations
        adjacency = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(m, m))
        return sparse.diags(1.0 / np.asarray(adjacency.sum(axis=1)).ravel()) @ adjacency

    def scores(self, weights: np.ndarray | None = None) -> np.ndarray:
        """Every configuration's metric under row weights.

        weights: (n_dev,) or (n_dev, B) non-negative row weights (bootstrap counts, fold indicators); default all
        ones. Returns (n_configurations,) or (n_configurations, B)."""
        if weights is None:
            return self._scores(np.ones((self.n_rows, 1)))[:, 0]
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim not in (1, 2) or w.shape[0] != self.n_rows or not np.all(w >= 0):
            raise InputError(f"weights: need non-negative weights for the {self.n_rows} dev rows, got {w.shape}")
        return self._scores(w[:, None])[:, 0] if w.ndim == 1 else self._scores(w)

    def _scores(self, w: np.ndarray) -> np.ndarray:
        total = w.sum(axis=0)
        if np.any(total <= 0):
            raise InputError("weights: every column needs at least one row with a positive weight")
        if self.metric == "accuracy":
            arr: np.ndarray = (self._correct @ w) / total
            return arr
        f1_sum = np.zeros((self.n_configurations, w.shape[1]))
        present = np.zeros_like(f1_sum)
        for c in range(self.n_classes or 0):
            is_pred = (self.predictions == c).astype(np.float64)
            is_true = (self.labels == c).astype(np.float64)
            tp = (is_pred * is_true) @ w
            denom = is_pred @ w + (is_true @ w)[None, :]
            here = denom > 0
            f1_sum += np.where(here, 2 * tp / np.where(here, denom, 1.0), 0.0)
            present += here
        return f1_sum / np.maximum(present, 1)

    @cached_property
    def _correct(self) -> np.ndarray:
        arr: np.ndarray = (self.predictions == self.labels[None, :]).astype(np.float64)
        return arr

    def restrict(self, rows: np.ndarray) -> ConfigScores:
        """The same configurations on a subset of the dev rows (indices or a boolean mask)."""
        rows = np.asarray(rows)
        return ConfigScores(
            self.predictions[:, rows],
            self.labels[rows],
            self.n_neurons,
            self.n_layers,
            self.C,
            self.metric,
            self.n_classes,
            self.group,
            self.grid,
        )


@dataclass(frozen=True)
class Choice:
    """What a strategy chose: `index` is the row of ConfigScores.predictions to export."""

    strategy: str
    index: int
    dev_score: float  # the chosen configuration's dev score (the one the sweep's table shows)
    best_dev_score: float  # the best dev score of any configuration
    threshold: float  # the lowest dev score among the strategy's candidates (argmax: the best score itself)
    n_candidates: int  # the strategy's candidate set (argmax: the ties; one_se: the window; smoothed: the best)
    n_configurations: int

    def to_json(self) -> dict[str, Any]:
        """Every field by name, as JSON-ready values."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class Estimate:
    """The score to expect on new data from `strategy`'s choice, with the search accounted for.

    estimate: the honest number to show next to `apparent` (the chosen configuration's dev score).
    optimism: apparent - estimate (how much the dev score overstates, by this estimate).
    se: the binomial standard error of a score measured on the n_rows dev rows, at the estimate: no estimate made
        from these rows is more precise than this (show it as "83.6 ± 1.3").
    n_configurations / n_distinct: how many configurations were compared (distinct: by dev predictions)."""

    strategy: str
    method: str
    estimate: float
    apparent: float
    optimism: float
    se: float
    n_configurations: int
    n_distinct: int
    n_rows: int
    n_resamples: int  # bootstrap resamples (bbc, optimism) or folds (tt)
    seed: int
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Every field by name, as JSON-ready values (`details` is the estimate's own dict, not a copy)."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


# ---- strategies: vectorised over columns of a score matrix --------------------------------------------------------

#: A strategy's candidate set: (configurations, their scores (n_configurations, B), the row weights behind each
#: column (n_dev, B)) -> (n_configurations, B) mask. Every strategy then takes the simplest candidate (`_simplest`).
Candidates = Callable[[ConfigScores, np.ndarray, np.ndarray], np.ndarray]


def _simplest(candidates: np.ndarray, scores: np.ndarray, cs: ConfigScores) -> np.ndarray:
    """Per column, among the candidates: the lowest complexity rank, then the higher score, then the lower index."""
    rank = cs.complexity_rank[:, None]
    ranked = np.where(candidates, rank, np.iinfo(np.int64).max)
    simplest = candidates & (rank == ranked.min(axis=0, keepdims=True))
    best = np.where(simplest, scores, -np.inf).max(axis=0, keepdims=True)
    arr: np.ndarray = (simplest & (scores >= best - _TIE)).argmax(axis=0)
    return arr


def binomial_se(score: np.ndarray | float, n_rows: float) -> np.ndarray:
    """The binomial standard error sqrt(s (1 - s) / n) of a score s measured on n rows."""
    s = np.clip(np.asarray(score, dtype=np.float64), 0.0, 1.0)
    arr: np.ndarray = np.sqrt(s * (1.0 - s) / np.maximum(n_rows, 1.0))
    return arr


def _best_candidates(cs: ConfigScores, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    arr: np.ndarray = scores >= scores.max(axis=0, keepdims=True) - _TIE
    return arr


def _one_se_candidates(cs: ConfigScores, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    best = scores.max(axis=0, keepdims=True)
    arr: np.ndarray = scores >= best - binomial_se(best, weights.sum(axis=0)[None, :]) - _TIE
    return arr


def _one_se_paired_candidates(cs: ConfigScores, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    leader = _simplest(_best_candidates(cs, scores, weights), scores, cs)
    lead_score = scores[leader, np.arange(scores.shape[1])][None, :]
    arr: np.ndarray = scores >= lead_score - paired_se(cs, leader, weights) - _TIE
    return arr


def paired_se(cs: ConfigScores, leader: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(n_configurations, B): the standard error of the mean paired difference in per-row correctness between each
    configuration and column b's `leader[b]`, under column b's row weights: sqrt(weighted variance / weight).
    Configurations that err on the same rows as the leader get a small one, unrelated ones a larger one. For
    macro_f1 the per-row correctness stands in for the score (an approximation)."""
    total = weights.sum(axis=0)
    c = cs._correct
    lead = c[leader].T  # (n_dev, B)
    s_i = (c @ weights) / total
    s_l = (lead * weights).sum(axis=0) / total
    both = (c @ (lead * weights)) / total
    mean_d = s_i - s_l
    mean_d2 = s_i + s_l - 2 * both  # (c_i - c_l)^2 = c_i + c_l - 2 c_i c_l for 0/1 values
    arr: np.ndarray = np.sqrt(np.maximum(mean_d2 - mean_d**2, 0.0) / total)
    return arr


def _smoothed_candidates(cs: ConfigScores, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    smoothed = cs.neighbourhood @ scores
    arr: np.ndarray = smoothed >= smoothed.max(axis=0, keepdims=True) - _TIE
    return arr


#: Every strategy's candidate set, by the name the sweep records (`--select NAME`); the choice is the simplest
#: candidate: fewest neurons, then fewest layers, then smallest C, then the higher score, then the lower index.
STRATEGIES: dict[str, Candidates] = {
    "argmax": _best_candidates,
    "one_se": _one_se_candidates,
    "one_se_paired": _one_se_paired_candidates,
    "smoothed": _smoothed_candidates,
}
#: The strategy the sweep uses unless told otherwise: no other beat it on every measured set (module docstring).
DEFAULT_STRATEGY = "argmax"


def _strategy(strategy: str) -> Candidates:
    if strategy not in STRATEGIES:
        raise InputError(f"selection strategy {strategy!r}: choose from {', '.join(STRATEGIES)}")
    return STRATEGIES[strategy]


def _pick(cs: ConfigScores, candidates: Candidates, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The chosen configuration per column of `scores` (computed under the same columns of `weights`)."""
    return _simplest(candidates(cs, scores, weights), scores, cs)


def _check_scores(scores: object) -> ConfigScores:
    if not isinstance(scores, ConfigScores):
        raise InputError(f"scores: expected a ConfigScores, got {type(scores).__name__}")
    return scores


def choose(scores: ConfigScores, strategy: str = DEFAULT_STRATEGY) -> Choice:
    """The configuration `strategy` chooses from the dev predictions alone."""
    cs = _check_scores(scores)
    candidates = _strategy(strategy)
    ones = np.ones((cs.n_rows, 1))
    s = cs.scores()[:, None]
    mask = candidates(cs, s, ones)
    index = int(_simplest(mask, s, cs)[0])
    admitted = s[mask[:, 0], 0]
    return Choice(
        strategy, index, float(s[index, 0]), float(s.max()), float(admitted.min()), int(mask.sum()), cs.n_configurations
    )


def argmax(scores: ConfigScores) -> Choice:
    """The best dev score; ties to fewer neurons, then fewer layers, then smaller C, then the lower index."""
    return choose(scores, "argmax")


def one_se(scores: ConfigScores) -> Choice:
    """The simplest configuration (fewest neurons, then fewest layers, then smallest C) within one binomial standard
    error of the best dev score; among equally simple ones the higher dev score, then the lower index."""
    return choose(scores, "one_se")


# ---- the honest estimate ------------------------------------------------------------------------------------------


#: `--select cv`: the head chosen on out-of-fold predictions of the training rows (`cross_validated_choice`).
CV = "cv"
#: Every name `--select` accepts: the strategies over dev predictions, and cross-validated selection.
SELECTIONS = (*STRATEGIES, CV)
#: The sweep's default: cross-validated selection (BENCHMARKS.md, "Selection strategies").
DEFAULT_SELECT = CV
CV_METHOD = "holdout"  # cv's estimate: the chosen head's dev score; the choice among heads never saw dev


#: What each strategy and estimate method does, in words for the report and the command line's table.
STRATEGY_WORDS = {
    "argmax": "the best dev score; ties to fewer neurons, then fewer layers, then smaller C",
    "one_se": "the simplest head within one standard error of the best dev score",
    "one_se_paired": "the simplest head within one paired standard error of the best dev score",
    "smoothed": "the best dev score averaged with the neighbouring rule values'",
    CV: "the best out-of-fold score on the training rows, probes and heads refitted without each fold, not on dev",
}
METHOD_WORDS = {
    "bbc": "bootstrap bias-corrected estimate, Tsamardinos et al. 2018: the choice re-run on resamples of the dev "
    "rows, each scored on the rows its resample left out",
    "optimism": "Efron's optimism bootstrap",
    "tt": "Tibshirani & Tibshirani 2009 bias correction",
    CV_METHOD: "the chosen head's own dev score: the choice among heads never saw the dev rows",
}


def cross_validated_choice(
    dev: ConfigScores, oof: ConfigScores, heads: np.ndarray, n_folds: int
) -> tuple[Choice, Estimate]:
    """The ``cv`` choice and its estimate.

    `oof` holds every compared head's out-of-fold predictions on the training rows (fold i's heads fitted without
    fold i's rows, probes included, and scored on them); `heads[j]` is the row of `dev` (the heads fitted on all
    training rows, scored on dev) that oof's row j describes. The choice is the arg-max on the out-of-fold score
    (ties as ``argmax`` breaks them); the dev rows take no part in it, so the chosen head's dev score is itself an
    estimate of its score on new rows like them, unbiased but for the probe run's C per layer, chosen on dev
    (`Estimate.method` "holdout", optimism 0). `Estimate.n_configurations` counts the heads compared (fitted in
    every fold); its `details` hold the chosen head's cross-validated score and the best one."""
    oof = _check_scores(oof)
    dev = _check_scores(dev)
    heads = np.asarray(heads, dtype=np.int64)
    if (
        heads.shape != (oof.n_configurations,)
        or heads.min(initial=0) < 0
        or heads.max(initial=0) >= dev.n_configurations
    ):
        raise InputError(f"heads: {heads.shape} rows of dev for {oof.n_configurations} out-of-fold heads")
    picked = choose(oof, "argmax")
    index = int(heads[picked.index])
    scores = dev.scores()
    dev_score = float(scores[index])
    choice = Choice(CV, index, dev_score, float(scores.max()), dev_score, picked.n_candidates, dev.n_configurations)
    estimate = Estimate(
        strategy=CV,
        method=CV_METHOD,
        estimate=dev_score,
        apparent=dev_score,
        optimism=0.0,
        se=float(binomial_se(dev_score, dev.n_rows)),
        n_configurations=oof.n_configurations,  # the heads compared: fitted in every fold (and on all rows)
        n_distinct=dev.n_distinct,
        n_rows=dev.n_rows,
        n_resamples=int(n_folds),
        seed=0,
        details={"cv_score": picked.dev_score, "cv_best": picked.best_dev_score, "cv_rows": oof.n_rows},
    )
    return choice, estimate


def bootstrap_counts(n_rows: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_rows, n_boot) multinomial counts: column b says how often each row is drawn in resample b."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_rows, size=(n_boot, n_rows))
    flat = (draws + n_rows * np.arange(n_boot)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n_rows).reshape(n_boot, n_rows).T.astype(np.float64)


def expected_score(
    scores: ConfigScores,
    strategy: str = DEFAULT_STRATEGY,
    *,
    method: str = DEFAULT_ESTIMATE_METHOD,
    n_boot: int = DEFAULT_N_BOOT,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
) -> Estimate:
    """What `strategy`'s choice should score on new rows like the dev rows, accounting for the search.

    method: "bbc" (bootstrap, out-of-bag score of each resample's choice; default), "optimism" (Efron's optimism
    bootstrap) or "tt" (Tibshirani & Tibshirani 2009 over `folds` folds of the dev rows); see the module docstring.
    n_boot: resamples for the bootstrap methods (500 by default: the estimate's Monte-Carlo error is then a few
    hundredths of a point). seed: the resamples' and folds' seed (the same inputs give the same estimate)."""
    cs = _check_scores(scores)
    candidates = _strategy(strategy)
    if method not in ESTIMATE_METHODS:
        raise InputError(f"estimate method {method!r}: choose from {', '.join(ESTIMATE_METHODS)}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed {seed!r}: give an integer of 0 or more")
    full = cs.scores()
    chosen = int(_pick(cs, candidates, full[:, None], np.ones((cs.n_rows, 1)))[0])
    apparent = float(full[chosen])
    n = cs.n_rows
    details: dict[str, Any] = {}
    if method in ("bbc", "optimism"):
        if not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
            raise InputError(f"n_boot {n_boot!r}: give a whole number of resamples, 1 or more")
        if n < 2:
            raise InputError(f"the bootstrap needs at least 2 dev rows, got {n}")
        counts = bootstrap_counts(n, int(n_boot), int(seed))
        picks = _pick(cs, candidates, cs._scores(counts), counts)
        if method == "bbc":
            out_of_bag = (counts == 0).astype(np.float64)
            keep = out_of_bag.sum(axis=0) > 0  # a resample that drew every row has no out-of-bag row
            oob = _chosen_scores(cs, picks[keep], out_of_bag[:, keep])
            value = float(np.mean(oob))
            details = {"oob_sd": float(np.std(oob)), "resamples_used": int(keep.sum())}
        else:
            in_bag = _chosen_scores(cs, picks, counts)
            value = apparent - float(np.mean(in_bag - full[picks]))
        resamples = int(n_boot)
        details["chosen_share"] = float(np.mean(picks == chosen))  # how stable the choice is under resampling
    else:
        if not isinstance(folds, (int, np.integer)) or not 2 <= folds <= n:
            raise InputError(f"folds {folds!r}: give a whole number from 2 to the {n} dev rows")
        rng = np.random.default_rng(seed)
        fold_of = rng.permutation(np.arange(n) % int(folds))
        member = (fold_of[:, None] == np.arange(int(folds))[None, :]).astype(np.float64)
        per_fold = cs._scores(member)
        own = _pick(cs, candidates, per_fold, member)
        cols = np.arange(int(folds))
        bias = float(np.mean(per_fold[own, cols] - per_fold[chosen, cols]))
        value = apparent - bias
        resamples = int(folds)
    return Estimate(
        strategy,
        method,
        value,
        apparent,
        apparent - value,
        float(binomial_se(value, n)),
        cs.n_configurations,
        cs.n_distinct,
        n,
        resamples,
        int(seed),
        details,
    )


def _chosen_scores(cs: ConfigScores, picks: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Score of configuration picks[b] under weights[:, b], for every b (one configuration per column)."""
    if cs.metric == "accuracy":
        arr: np.ndarray = np.einsum("bn,nb->b", cs._correct[picks], weights) / weights.sum(axis=0)
        return arr
    out = np.empty(len(picks))
    for b, (i, w) in enumerate(zip(picks, weights.T, strict=True)):
        sub = ConfigScores(
            cs.predictions[i : i + 1],
            cs.labels,
            cs.n_neurons[i : i + 1],
            cs.n_layers[i : i + 1],
            cs.C[i : i + 1],
            cs.metric,
            cs.n_classes,
        )
        out[b] = sub._scores(w[:, None])[0, 0]
    return out


# ---- input checks -------------------------------------------------------------------------------------------------


def _is_numeric(value: object) -> bool:
    try:
        arr = np.asarray(value)
    except Exception:
        return False
    return arr.dtype.kind in "biuf"


def _int_array(name: str, value: object, ndim: int) -> np.ndarray:
    """`value` as an int64 array of `ndim` dimensions; InputError naming `name` otherwise."""
    if isinstance(value, (str, bytes)) or not _is_numeric(value):
        raise InputError(f"{name}: give a {ndim}-D array of whole numbers")
    arr = np.asarray(value)
    if arr.ndim != ndim:
        raise InputError(f"{name}: need a {ndim}-D array, got {arr.ndim}-D with shape {arr.shape}")
    if arr.dtype.kind == "f" and arr.size and not (np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))):
        raise InputError(f"{name}: every value must be a whole number")
    return arr.astype(np.int64)


def sweep_neighbourhoods(
    kinds: Sequence[str],
    poolings: Sequence[str],
    values: Sequence[float],
    ks: Sequence[int],
    cs: Sequence[float],
) -> tuple[np.ndarray, np.ndarray]:
    """(group, grid) for ConfigScores from the sweep's per-configuration keys: the `smoothed` strategy then averages
    each configuration with its neighbours in the rule-value grid (the next smaller and larger eta, top-k or
    top-percent value) that share its kind, pooling, K and C.

    Only the rule value is smoothed: its neighbours select nested neuron sets (the smaller value's neurons are a
    prefix of the larger's in saliency order), so their true accuracy changes gradually. Adding a layer (K) can add
    or miss a whole layer's signal at once, and smoothing across such a cliff moves the choice off the optimum (as
    on a synthetic store with signal in layers 3 and 5); smoothing over C did not help on any set measured
    (benchmarks/bench_selection.py)."""
    value_array = np.asarray(values, dtype=np.float64)
    position = np.searchsorted(np.unique(value_array), value_array)
    keys = zip(kinds, poolings, np.asarray(ks).tolist(), np.asarray(cs, dtype=np.float64).tolist(), strict=True)
    group = np.array([f"{kind}/{pooling}/K={k}/C={c!r}" for kind, pooling, k, c in keys])
    return group, position[:, None]


def stack_configs(
    predictions: Sequence[np.ndarray],
    labels: np.ndarray,
    n_neurons: Sequence[int],
    n_layers: Sequence[int],
    C: Sequence[float],
    metric: str = "accuracy",
    n_classes: int | None = None,
) -> ConfigScores:
    """ConfigScores from one dev-prediction vector per configuration (the sweep's rows, in its order)."""
    if len(predictions) == 0:
        raise InputError("predictions: no configuration to choose from")
    lengths = {len(np.asarray(p)) for p in predictions}
    if len(lengths) != 1:
        raise InputError(f"predictions: configurations predict different numbers of dev rows ({sorted(lengths)})")
    return ConfigScores(
        np.stack([np.asarray(p) for p in predictions]),
        labels,
        np.asarray(n_neurons),
        np.asarray(n_layers),
        np.asarray(C, dtype=np.float64),
        metric,
        n_classes,
    )


__all__ = [
    "DEFAULT_ESTIMATE_METHOD",
    "DEFAULT_STRATEGY",
    "ESTIMATE_METHODS",
    "STRATEGIES",
    "Choice",
    "ConfigScores",
    "Estimate",
    "argmax",
    "binomial_se",
    "bootstrap_counts",
    "choose",
    "expected_score",
    "one_se",
    "paired_se",
    "stack_configs",
    "sweep_neighbourhoods",
]
