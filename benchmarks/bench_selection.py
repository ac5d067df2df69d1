"""Selection strategies under repeated re-splits of dev and test (issue 23): which choice generalises, and how
honest is the estimate shown next to it.

    # 0. a probe run per store (the default ProbeSettings; ~15 min each on the 2-core VM)
    python -c "from spin_cache.loop.probe import run_probes, ProbeSettings; \
               run_probes('stores/sst5', '/tmp/sel/probes_sst5', ProbeSettings(), scheduler='threads', workers=1)"
    # 1. every head's predictions on every dev and test row, cached (SST-2 ~9 min, SST-5 ~40 min on the shared
    #    2-core VM, one thread; resumable per (kind, pooling) group; --kinds/--poolings for a subset)
    python benchmarks/bench_selection.py predict --store stores/sst5 --probes /tmp/sel/probes_sst5 --cache /tmp/sel/sst5
    python benchmarks/bench_selection.py predict --synthetic /tmp/sel/synthA --cache /tmp/sel/synthA   # store+probes
    python benchmarks/bench_selection.py predict --synthetic /tmp/sel/synthB --cache /tmp/sel/synthB --classes 5 \
        --signal 0.35
    python benchmarks/bench_selection.py predict --synthetic /tmp/sel/synthC --cache /tmp/sel/synthC --classes 3 \
        --signal 0.3 --informative 2:4,4:4,6:4 --width 384 --seed 1
    #    with --folds 5: also each of 5 cross-validation folds of train into CACHE/fold<i> (its probes at the main
    #    run's C per layer and every head, without the fold's rows; predictions on the fold's rows), as
    #    `sweep --select cv` fits them (SST-5 ~8 min a fold here, SST-2 ~3, a synthetic set seconds)
    python benchmarks/bench_selection.py predict --store stores/sst5 --probes /tmp/sel/probes_sst5 \
        --cache /tmp/sel/sst5 --folds 5
    # 2. 20 re-splits, every strategy and estimate (about a minute per set)
    python benchmarks/bench_selection.py evaluate --cache /tmp/sel/sst5 --name SST-5 --json /tmp/sel/sst5.json
    # 3. the tables of several sets as markdown
    python benchmarks/bench_selection.py table /tmp/sel/*.json

`predict` mirrors `spin_cache.loop.sweep.sweep_group`: for every (kind, pooling) group, every rule value of the
default grid (DEFAULT_ETAS) and every K, the selected neurons of the first K layers (spin_cache.loop.select.select on
the probe run's saliency), standardised with train statistics, one L2 head per C of HEAD_C_GRID fitted on train only
with the library's solver (spin_cache.fit.solver.fit_logistic, warm-started along the sorted C grid with one
Lipschitz bound, as fit_c_path does), and its predicted label on every dev and test row. Base (the last hidden
layer, all neurons) is fitted the same way for every pooling. Identical selections are fitted once. Each group's
predictions land in CACHE/<kind>_<pooling>.npz as it finishes (a rerun skips them).

`evaluate` pools the dev and test rows and draws `--splits` random dev'/test' splits of the original sizes (seeds
0..splits-1). On each, every strategy chooses from the dev' columns only (ConfigScores never sees a test' row), the
chosen head is scored once on test', and every estimate method is computed on dev'. Base: the best (pooling, C) of
the Base heads on dev' (ties to smaller C), scored on test'. Reported per strategy: mean and standard deviation of
test' accuracy; the mean paired difference to the arg-max (its standard error over splits, which share rows, so it
is understated; splits won/lost); mean optimism (chosen dev' - test'); mean gain over Base on test'; the chosen
head's neurons and K (medians); per estimate method the mean estimate, mean |estimate - test'| (floored by test''s
own sampling error, ~1 point here) and mean (estimate - test'). The original split is reported too (what today's
sweep prints). `smoothed` smooths over the rule-value grid (selection.sweep_neighbourhoods).

Cross-validated selection (when CACHE/fold<i> exist; `--use-folds N` takes the first N only): `cv` is the head
with the best out-of-fold accuracy over the training rows (fold i's heads predict fold i's rows; ties as the
arg-max breaks them), and `cv-vote-M[-cfg]` the committee of the M best by that score. The choice never sees a dev'
or test' row, so one choice serves every split and its dev' score is an unbiased estimate (`dev` column: mean of
that estimate, |error| and bias; `cv`: its cross-validated score, the best of many on the training rows). This is
`sweep --select cv` (spin_cache.loop.selection.cross_validated_choice) over cached predictions.

Voting ensembles (`--votes`, measured here only; not strategies of the product): `vote-M` takes the M best heads by
dev' accuracy (ties ranked as the arg-max breaks them: fewer neurons, then fewer layers, then smaller C, then the
lower index, so the first member is the arg-max's choice) and predicts each row's majority label; a tie between
classes goes to the label of the best-ranked member that voted for one of the tied classes (for M = 1 this is the
arg-max). `vote-M-cfg` does the same with one head per configuration (kind, pooling, rule value, K): each
configuration's best C on dev' (ties to smaller C), then the M best configurations, so neighbouring C values of one
configuration do not fill the committee. The cache holds every head's label on every row, so no head is refitted.
A vote's "chosen dev'" is the committee's own accuracy on dev', which is selection-biased (its members were ranked
on the same rows), and its optimism is that minus test'. Its `bbc` estimate re-runs the whole committee choice on
each bootstrap resample of dev' (the resamples of selection.bootstrap_counts, seed 0) and scores the resample's
committee on the out-of-bag rows; the `optimism` and `tt` estimates are not computed for votes ("-"). Neurons and K
of a vote are the medians of its members' (a committee reads up to M times as many neurons).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

from spin_cache.loop.selection import (
    DEFAULT_N_BOOT,
    ESTIMATE_METHODS,
    STRATEGIES,
    ConfigScores,
    bootstrap_counts,
    choose,
    expected_score,
    sweep_neighbourhoods,
)

META = ("kind", "pooling", "value", "k", "n_neurons", "C", "base")
#: The voting ensembles `evaluate` measures by default (module docstring): M best heads, or M best configurations.
VOTES = ("vote-5", "vote-10", "vote-25", "vote-5-cfg", "vote-10-cfg", "vote-25-cfg")


# ---- predict ------------------------------------------------------------------------------------------------------


def _c_path_predictions(x: dict[str, np.ndarray], y_train: np.ndarray, n_classes: int, c_grid, settings) -> list:
    """Predicted labels on the pooled dev+test rows for every C (ascending), fitted as SpinClassifier.fit does."""
    from spin_cache.fit import solver

    scaler = solver.Standardizer.fit(x["train"])
    train = solver.Design.of(scaler.transform(x["train"]), y_train)
    pooled = scaler.transform(x["pool"])
    # One Lipschitz bound for the whole path, as fit_c_path computes it (named lipschitz or _lipschitz by version;
    # without it fit_logistic computes the same bound itself, per C).
    bound = getattr(solver, "lipschitz", None) or getattr(solver, "_lipschitz", None)
    lip = bound(train, 1 if n_classes == 2 else n_classes) if bound else None
    out, warm = [], None
    for c in sorted(c_grid):
        fit = solver.fit_logistic(
            train,
            n_classes,
            c,
            penalty=settings.penalty,
            max_iter=settings.max_iter,
            tol=settings.tol,
            warm=warm,
            lipschitz=lip,
        )
        warm = fit
        out.append((c, solver.predict_labels(solver.decision(pooled, fit.coef, fit.intercept)).astype(np.int8)))
    return out


def predict_group(store, run, kind: str, pooling: str, settings, path: Path) -> None:
    """Every configuration of one (kind, pooling) group, every C: predictions on dev+test rows, saved to `path`."""
    from spin_cache.loop.select import select

    t0 = time.perf_counter()
    layers = store.layers(kind)
    split = store.examples["split"].to_numpy()
    labels = store.examples["label"].to_numpy().astype(np.int64)
    train, pool = split == "train", (split == "dev") | (split == "test")
    pool_rows = np.concatenate([np.flatnonzero(split == "dev"), np.flatnonzero(split == "test")])
    n_classes = len(store.label_names)
    saliency = {layer: run.saliency(kind, pooling, layer) for layer in layers}
    selections = {v: {layer: select(saliency[layer], settings.rule, v) for layer in layers} for v in settings.values}
    need = {layer: set() for layer in layers}
    for sel in selections.values():
        for layer, idx in sel.items():
            need[layer].update(int(i) for i in idx)
    cols = {layer: np.array(sorted(need[layer]), dtype=np.int64) for layer in layers}
    data = {layer: store.read(kind, pooling, layer, columns=cols[layer]) for layer in layers}
    assert not np.any(pool[train])

    def features(parts: list[np.ndarray]) -> dict[str, np.ndarray]:
        full = np.concatenate(parts, axis=1)
        return {"train": full[train], "pool": full[pool_rows]}

    meta: dict[str, list] = {k: [] for k in META}
    preds: list[np.ndarray] = []
    done: dict[bytes, list] = {}
    for value, sel in selections.items():
        for k in range(1, len(layers) + 1):
            upto = layers[:k]
            key = b"|".join(np.asarray(sel[layer], dtype=np.int64).tobytes() for layer in upto)
            if key not in done:
                parts = [data[layer][:, np.searchsorted(cols[layer], sel[layer])] for layer in upto]
                done[key] = _c_path_predictions(features(parts), labels[train], n_classes, settings.c_grid, settings)
            n = sum(len(sel[layer]) for layer in upto)
            for c, p in done[key]:
                for name, v in zip(META, (kind, pooling, float(value), k, n, c, False), strict=True):
                    meta[name].append(v)
                preds.append(p)
    if kind == "hidden":
        last = layers[-1]
        full = store.read(kind, pooling, last)
        for c, p in _c_path_predictions(features([full]), labels[train], n_classes, settings.c_grid, settings):
            for name, v in zip(META, (kind, pooling, np.nan, 1, store.width(kind), c, True), strict=True):
                meta[name].append(v)
            preds.append(p)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(
        tmp,
        predictions=np.stack(preds),
        labels=labels[pool_rows],
        n_dev=int((split == "dev").sum()),
        n_classes=n_classes,
        **{k: np.asarray(v) for k, v in meta.items()},
    )
    tmp.replace(path)
    print(
        f"  {kind}/{pooling}: {len(preds)} heads ({len(done)} distinct selections x {len(settings.c_grid)} C) "
        f"in {time.perf_counter() - t0:.0f} s",
        flush=True,
    )


def make_synthetic(folder: Path, args) -> tuple[str, str]:
    """A synthetic store (planted signal in two layers, every other neuron noise) and its probe run."""
    from spin_cache.loop.probe import ProbeSettings, run_probes
    from spin_cache.synth import make_synthetic_store

    store = folder / "store"
    informative = {int(a): int(b) for a, b in (p.split(":") for p in args.informative.split(","))}
    make_synthetic_store(
        store,
        n_rows=args.rows,
        n_layers=args.layers,
        width=args.width,
        poolings=("mean",),
        informative=informative,
        n_classes=args.classes,
        signal=args.signal,
        seed=args.seed,
    )
    probes = folder / "probes"
    if not (probes / "probes.parquet").exists():
        run_probes(str(store), probes, ProbeSettings(), scheduler="threads", workers=args.workers, progress=False)
    return str(store), str(probes)


def cmd_predict(args) -> None:
    import torch

    from spin_cache.loop.probe import ProbeRun
    from spin_cache.loop.sweep import SweepSettings
    from spin_cache.store.activation_store import ActivationStore

    torch.set_num_threads(args.threads)
    if args.synthetic:
        store_url, probes = make_synthetic(Path(args.synthetic), args)
    else:
        store_url, probes = args.store, args.probes
        if not (Path(probes) / "probes.parquet").exists():
            from spin_cache.loop.probe import ProbeSettings, run_probes

            run_probes(store_url, probes, ProbeSettings(), scheduler="threads", workers=args.workers, progress=False)
    store = ActivationStore.open(store_url)
    run = ProbeRun(probes)
    run.check_store(store)
    settings = SweepSettings(metric=run.settings.metric)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "source.json").write_text(
        json.dumps(
            {
                "store": store_url,
                "probes": probes,
                "folds": args.folds,
                "settings": {
                    "values": list(settings.values),
                    "c_grid": list(settings.c_grid),
                    "penalty": settings.penalty,
                    "max_iter": settings.max_iter,
                    "tol": settings.tol,
                },
            },
            indent=2,
        )
    )
    predict_groups(store, run, settings, cache, args)
    for i in range(args.folds or 0):
        # Fold i's view: probes and heads fitted without the fold's training rows, predictions on those rows only.
        from spin_cache.loop.probe import ProbeSettings, run_probes
        from spin_cache.store.folds import Fold

        fold_cache = cache / f"fold{i}"
        fold = Fold(i, args.folds)
        t0 = time.perf_counter()
        # As `probe --folds` does: each layer at the C the main run chose on dev (--fold-probe-c fold: chosen again
        # on the fold's rows, the design BENCHMARKS.md measured first).
        table = run.probes.select("kind", "pooling", "layer", "C").iter_rows()
        fixed = None if args.fold_probe_c == "fold" else {(k, p, int(layer)): float(c) for k, p, layer, c in table}
        fold_run = run_probes(store_url, fold_cache / "probes", ProbeSettings(), scheduler="threads",
                              workers=args.workers, progress=False, fold=fold, fixed_c=fixed)  # fmt: skip
        print(f"  fold {i}: probes in {time.perf_counter() - t0:.0f} s", flush=True)
        predict_groups(ActivationStore.open(store_url, fold=fold), fold_run, settings, fold_cache, args)


def predict_groups(store, run, settings, cache: Path, args) -> None:
    """Every (kind, pooling) group the probe run covers (and --kinds/--poolings allow), cached in `cache`."""
    cache.mkdir(parents=True, exist_ok=True)
    probed = set(run.probes.select("kind", "pooling").unique().iter_rows())
    for kind in store.kinds:
        for pooling in store.poolings:
            if (kind, pooling) not in probed or (args.kinds and kind not in args.kinds):
                continue
            if args.poolings and pooling not in args.poolings:
                continue
            path = cache / f"{kind}_{pooling}.npz"
            if path.exists():
                print(f"  {cache.name}/{kind}/{pooling}: cached", flush=True)
                continue
            predict_group(store, run, kind, pooling, settings, path)


def load_cache(cache: str | Path) -> dict:
    """The groups' predictions stacked in group order (kinds, then poolings, as the sweep orders them)."""
    files = sorted(Path(cache).glob("*.npz"), key=lambda p: (not p.name.startswith("hidden"), p.name))
    files = [f for f in files if not f.name.endswith(".tmp.npz")]
    if not files:
        sys.exit(f"{cache}: no predictions; run `predict` first")
    parts = [dict(np.load(f, allow_pickle=False)) for f in files]
    out = {k: np.concatenate([p[k] for p in parts]) for k in ("predictions", *META)}
    out |= {k: parts[0][k] for k in ("labels", "n_dev", "n_classes")}
    out["groups"] = [f.stem for f in files]
    return out


def load_folds(cache: str | Path, main: dict, use: int | None = None) -> dict | None:
    """The out-of-fold predictions of every head on every training row (folds in order; None without folds):
    `predictions` (heads, train rows) and `labels`, heads in the main cache's order (checked key by key). `use`:
    only the first that many folds (their rows only: a cheaper, noisier cross-validation)."""
    dirs = sorted(Path(cache).glob("fold*"), key=lambda p: int(p.name[4:]))[:use]
    if not dirs:
        return None
    parts = [load_cache(d) for d in dirs]
    for d, part in zip(dirs, parts, strict=True):
        for key in ("kind", "pooling", "k", "C", "base"):
            if not np.array_equal(part[key], main[key]):
                sys.exit(f"{d}: its heads differ from the main cache's ({key}); predict again")
        if not np.array_equal(part["value"], main["value"], equal_nan=True):
            sys.exit(f"{d}: its heads differ from the main cache's (value); predict again")
    return {
        "predictions": np.concatenate([p["predictions"] for p in parts], axis=1),
        "labels": np.concatenate([p["labels"] for p in parts]),
        "n_folds": len(parts),
    }


# ---- evaluate -----------------------------------------------------------------------------------------------------


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(pred == y))


def neighbourhoods(data: dict, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The grid the `smoothed` strategy averages over: neighbours share kind, pooling, K and C and sit one step
    apart in the rule-value grid (nested neuron sets; selection.sweep_neighbourhoods documents why not K or C)."""
    return sweep_neighbourhoods(
        data["kind"][rows], data["pooling"][rows], data["value"][rows], data["k"][rows], data["C"][rows]
    )


def parse_vote(name: str) -> tuple[int, bool]:
    """`vote-M` or `vote-M-cfg`: (M, one head per configuration)."""
    parts = name.split("-")
    if parts[0] != "vote" or len(parts) not in (2, 3) or not parts[1].isdigit() or int(parts[1]) < 1:
        raise SystemExit(f"vote {name!r}: give vote-M or vote-M-cfg (M a whole number, 1 or more)")
    if len(parts) == 3 and parts[2] != "cfg":
        raise SystemExit(f"vote {name!r}: the only suffix is -cfg")
    return int(parts[1]), len(parts) == 3


def configuration_ids(data: dict, rows: np.ndarray) -> np.ndarray:
    """One integer per head: its configuration (kind, pooling, rule value, K); the heads of one share every key
    but C."""
    fields = (data["kind"][rows], data["pooling"][rows], data["value"][rows], data["k"][rows])
    keys = [f"{a}|{b}|{v!r}|{k}" for a, b, v, k in zip(*fields, strict=True)]
    return np.unique(np.asarray(keys), return_inverse=True)[1].reshape(-1)


def ranked_heads(correct: np.ndarray, complexity: np.ndarray) -> np.ndarray:
    """Head indices, best first: more correct (weighted) rows, then the lower complexity rank, then the lower index
    (the arg-max's tie-break; `correct` holds whole-number sums, so equal scores compare equal)."""
    return np.lexsort((np.arange(len(correct)), complexity, -correct))


def committee(ranked: np.ndarray, config: np.ndarray, m: int, per_config: bool) -> np.ndarray:
    """The first M heads of `ranked`, or with `per_config` the first head of each of the first M configurations
    (a configuration's first head in the ranking is its best C, ties to smaller C)."""
    if not per_config:
        return ranked[:m]
    _, first = np.unique(config[ranked], return_index=True)
    return ranked[np.sort(first)[:m]]


def majority(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Per column of (members best first, rows) labels: the most frequent label; a tie between classes goes to
    the label of the best-ranked member that voted for one of the tied classes."""
    cols = np.arange(labels.shape[1])
    counts = np.stack([(labels == c).sum(axis=0) for c in range(n_classes)])
    tied = counts == counts.max(axis=0, keepdims=True)
    first = tied[labels, cols[None, :]].argmax(axis=0)
    out: np.ndarray = labels[first, cols]
    return out


def evaluate_votes(
    cs: ConfigScores, spin_test: np.ndarray, y_test: np.ndarray, config: np.ndarray, votes, n_boot: int
) -> dict:
    """Every vote's committee chosen on dev' (cs), its dev' and test' accuracy, members' medians, and its bbc
    estimate (the committee re-chosen on each bootstrap resample of dev', scored on the out-of-bag rows)."""
    n_classes = int(cs.n_classes or int(max(cs.predictions.max(), cs.labels.max())) + 1)
    complexity = cs.complexity_rank
    ranked = ranked_heads(cs._correct.sum(axis=1), complexity)
    argmax_index = choose(cs, "argmax").index
    assert ranked[0] == argmax_index, "the vote ranking must start at the arg-max's choice"
    spec = {name: parse_vote(name) for name in votes}
    out: dict = {}
    for name, (m, per_config) in spec.items():
        members = committee(ranked, config, m, per_config)
        dev_vote = majority(cs.predictions[members], n_classes)
        test_vote = majority(spin_test[members], n_classes)
        out[name] = {
            "dev": accuracy(dev_vote, cs.labels),
            "test": accuracy(test_vote, y_test),
            "n_neurons": float(np.median(cs.n_neurons[members])),
            "k": float(np.median(cs.n_layers[members])),
            "C": float(np.median(cs.C[members])),
            "candidates": len(members),
            "distinct_members": len(np.unique(cs.predictions[members], axis=0)),
        }
    counts = bootstrap_counts(cs.n_rows, int(n_boot), 0)
    in_bag = cs._correct @ counts  # whole numbers: weighted correct rows per head and resample
    oob: dict[str, list[float]] = {name: [] for name in spec}
    for b in range(counts.shape[1]):
        rows = np.flatnonzero(counts[:, b] == 0)
        if not len(rows):
            continue
        rb = ranked_heads(in_bag[:, b], complexity)
        for name, (m, per_config) in spec.items():
            members = committee(rb, config, m, per_config)
            oob[name].append(accuracy(majority(cs.predictions[members][:, rows], n_classes), cs.labels[rows]))
    for name in spec:
        out[name]["est_bbc"] = float(np.mean(oob[name]))
    return out


def evaluate_cv(data: dict, folds: dict, dev: np.ndarray, test: np.ndarray, votes) -> dict:
    """Cross-validated selection: the configuration (`cv`) or committee (`cv-vote-M[-cfg]`) chosen on the
    out-of-fold predictions of the training rows, ranked as the arg-max ranks dev (same tie-break); it never sees a
    dev' or test' row, so one choice serves every split. Its dev' score is then an unbiased estimate (`est_dev`);
    `est_cv` is its cross-validated score (the best of many, so biased upwards, and on the training rows)."""
    pred, y, spin = data["predictions"], data["labels"], ~data["base"]
    cs = ConfigScores(
        folds["predictions"][spin],
        folds["labels"],
        data["n_neurons"][spin],
        data["k"][spin],
        data["C"][spin],
        n_classes=int(data["n_classes"]),
    )
    n_classes = int(data["n_classes"])
    ranked = ranked_heads(cs._correct.sum(axis=1), cs.complexity_rank)
    config = configuration_ids(data, spin)
    cv_scores = cs.scores()
    spin_pred = pred[spin]
    out: dict = {}
    for name, (m, per_config) in [("cv", (1, False)), *((f"cv-{v}", parse_vote(v)) for v in votes)]:
        members = committee(ranked, config, m, per_config)
        dev_vote = majority(spin_pred[members][:, dev], n_classes)
        out[name] = {
            "dev": accuracy(dev_vote, y[dev]),
            "test": accuracy(majority(spin_pred[members][:, test], n_classes), y[test]),
            "n_neurons": float(np.median(cs.n_neurons[members])),
            "k": float(np.median(cs.n_layers[members])),
            "C": float(np.median(cs.C[members])),
            "candidates": len(members),
            "est_dev": accuracy(dev_vote, y[dev]),
            "est_cv": accuracy(majority(cs.predictions[members], n_classes), cs.labels),
        }
        if m > 1:
            out[name]["distinct_members"] = len(np.unique(spin_pred[members][:, dev], axis=0))
    assert ranked[0] == choose(cs, "argmax").index, "cv must rank as the arg-max does"
    out["cv"]["cv_best"] = float(cv_scores.max())
    return out


def evaluate_split(data: dict, dev: np.ndarray, test: np.ndarray, strategies, methods, n_boot: int, votes=(),
                   folds: dict | None = None) -> dict:  # fmt: skip
    """One dev'/test' split: each strategy chooses on dev' (a ConfigScores of dev' columns only), its choice is
    scored once on test'; estimates are computed from dev' alone."""
    pred, y, base = data["predictions"], data["labels"], data["base"]
    spin = ~base
    group, grid = neighbourhoods(data, spin)
    cs = ConfigScores(
        pred[spin][:, dev],
        y[dev],
        data["n_neurons"][spin],
        data["k"][spin],
        data["C"][spin],
        n_classes=int(data["n_classes"]),
        group=group,
        grid=grid,
    )
    spin_test = pred[spin][:, test]
    out: dict = {}
    if base.any():
        bs = ConfigScores(
            pred[base][:, dev],
            y[dev],
            data["n_neurons"][base],
            data["k"][base],
            data["C"][base],
            n_classes=int(data["n_classes"]),
        )
        out["base"] = accuracy(pred[base][choose(bs, "argmax").index, test], y[test])
    test_scores = (spin_test == y[test][None, :]).mean(axis=1)
    out["oracle"] = float(test_scores.max())
    dev_scores = cs.scores()
    top10 = np.argsort(-dev_scores, kind="stable")[:10]
    out["top10_test"] = float(test_scores[top10].mean())
    for name in strategies:
        ch = choose(cs, name)
        row = {
            "dev": ch.dev_score,
            "test": float(test_scores[ch.index]),
            "n_neurons": int(cs.n_neurons[ch.index]),
            "k": int(cs.n_layers[ch.index]),
            "C": float(cs.C[ch.index]),
            "candidates": ch.n_candidates,
        }
        for m in methods:
            row[f"est_{m}"] = expected_score(cs, name, method=m, n_boot=n_boot).estimate
        out[name] = row
    if votes:
        out |= evaluate_votes(cs, spin_test, y[test], configuration_ids(data, spin), votes, n_boot)
    if folds is not None:
        out |= evaluate_cv(data, folds, dev, test, votes)
    out["n_configurations"] = cs.n_configurations
    out["n_distinct"] = cs.n_distinct
    return out


def cmd_evaluate(args) -> None:
    data = load_cache(args.cache)
    y, n_dev = data["labels"], int(data["n_dev"])
    n = len(y)
    strategies = args.strategies or list(STRATEGIES)
    methods = args.methods or list(ESTIMATE_METHODS)
    t0 = time.perf_counter()
    votes = list(VOTES) if args.votes is None else args.votes
    for name in votes:
        parse_vote(name)
    folds = load_folds(args.cache, data, args.use_folds)
    cv = [] if folds is None else ["cv", *(f"cv-{v}" for v in votes)]
    original = evaluate_split(data, np.arange(n_dev), np.arange(n_dev, n), strategies, methods, args.n_boot, votes,
                              folds)  # fmt: skip
    splits = []
    for seed in range(args.splits):
        perm = np.random.default_rng(seed).permutation(n)
        splits.append(evaluate_split(data, perm[:n_dev], perm[n_dev:], strategies, methods, args.n_boot, votes, folds))
        shown = [*strategies, *votes, *cv]
        print(f"  split {seed}: " + ", ".join(f"{s} {splits[-1][s]['test']:.4f}" for s in shown), flush=True)
    summary = summarise(splits, [*strategies, *votes, *cv], [*methods, "dev", "cv"])
    result = {
        "name": args.name or str(args.cache),
        "cache": str(args.cache),
        "groups": data["groups"],
        "n_dev": n_dev,
        "n_test": n - n_dev,
        "n_configurations": original["n_configurations"],
        "n_distinct": original["n_distinct"],
        "splits": args.splits,
        "n_folds": 0 if folds is None else folds["n_folds"],
        "n_boot": args.n_boot,
        "original": original,
        "per_split": splits,
        "summary": summary,
        "seconds": time.perf_counter() - t0,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    print(markdown([result]))


def summarise(splits: list[dict], strategies, methods) -> dict:
    base = np.array([s.get("base", np.nan) for s in splits])
    out = {
        "base_test_mean": float(np.mean(base)),
        "oracle_test_mean": float(np.mean([s["oracle"] for s in splits])),
        "top10_test_mean": float(np.mean([s["top10_test"] for s in splits])),
    }
    for name in strategies:
        test = np.array([s[name]["test"] for s in splits])
        dev = np.array([s[name]["dev"] for s in splits])
        row = {
            "test_mean": float(test.mean()),
            "test_sd": float(test.std(ddof=1)) if len(test) > 1 else 0.0,
            "dev_mean": float(dev.mean()),
            "optimism": float(np.mean(dev - test)),
            "gain_over_base": float(np.mean(test - base)),
            "gain_sd": float(np.std(test - base, ddof=1)) if len(test) > 1 else 0.0,
            "neurons_median": float(np.median([s[name]["n_neurons"] for s in splits])),
            "k_median": float(np.median([s[name]["k"] for s in splits])),
        }
        if "argmax" in strategies:
            diff = test - np.array([s["argmax"]["test"] for s in splits])
            row["vs_argmax"] = float(diff.mean())
            row["vs_argmax_se"] = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
            row["vs_argmax_wins"] = int(np.sum(diff > 0))
            row["vs_argmax_losses"] = int(np.sum(diff < 0))
        if "distinct_members" in splits[0][name]:
            row["distinct_members_median"] = float(np.median([s[name]["distinct_members"] for s in splits]))
        for m in methods:
            if f"est_{m}" not in splits[0][name]:
                continue  # votes: bbc only
            est = np.array([s[name][f"est_{m}"] for s in splits])
            row[f"est_{m}_abs_err"] = float(np.mean(np.abs(est - test)))
            row[f"est_{m}_bias"] = float(np.mean(est - test))
            row[f"est_{m}_mean"] = float(est.mean())
        out[name] = row
    return out


# ---- table --------------------------------------------------------------------------------------------------------


def _versus(x: dict) -> str:
    if "vs_argmax" not in x:
        return "-"
    return f"{100 * x['vs_argmax']:+.2f} ± {100 * x['vs_argmax_se']:.2f}; {x['vs_argmax_wins']}/{x['vs_argmax_losses']}"


def markdown(results: list[dict]) -> str:
    lines = []
    for r in results:
        s = r["summary"]
        strategies = [k for k in s if isinstance(s[k], dict)]
        methods = sorted(
            {k.split("_")[1] for name in strategies for k in s[name] if k.startswith("est_") and k.endswith("_bias")}
        )
        lines += [
            f"### {r['name']}: {r['n_configurations']} heads compared ({r['n_distinct']} distinct on dev), "
            f"dev {r['n_dev']} / test {r['n_test']} rows, {r['splits']} re-splits",
            "",
            f"Base on test': {100 * s['base_test_mean']:.2f}; mean test' of the 10 best on dev': "
            f"{100 * s['top10_test_mean']:.2f}; best on test' (oracle): {100 * s['oracle_test_mean']:.2f}",
            "",
            "| strategy | test' mean ± sd | vs argmax (± se; wins/losses) | chosen dev' | optimism "
            "| gain over Base ± sd | neurons (median) | K |"
            + "".join(f" {m}: mean est. / mean abs err / bias |" for m in methods),
            "|---|---|---|---|---|---|---|---|" + "---|" * len(methods),
        ]
        for name in strategies:
            x = s[name]
            lines.append(
                f"| {name} | {100 * x['test_mean']:.2f} ± {100 * x['test_sd']:.2f} | {_versus(x)} "
                f"| {100 * x['dev_mean']:.2f} "
                f"| {100 * x['optimism']:+.2f} | {100 * x['gain_over_base']:+.2f} ± {100 * x['gain_sd']:.2f} "
                f"| {x['neurons_median']:.0f} | {x['k_median']:.0f} |"
                + "".join(
                    f" {100 * x[f'est_{m}_mean']:.2f} / {100 * x[f'est_{m}_abs_err']:.2f} / "
                    f"{100 * x[f'est_{m}_bias']:+.2f} |"
                    if f"est_{m}_mean" in x
                    else " - |"
                    for m in methods
                )
            )
        distinct = [
            f"{name} {s[name]['distinct_members_median']:.0f}"
            for name in strategies
            if "distinct_members_median" in s[name]
        ]
        if distinct:
            lines += ["", "Votes: members with distinct dev' predictions (median over splits): " + ", ".join(distinct)]
        o = r["original"]
        base = f"{100 * o['base']:.2f}" if "base" in o else "-"
        lines += ["", f"Original split (what today's sweep reports): Base test {base}", ""]
        for name in strategies:
            c = o[name]
            estimates = ", ".join(f"{m} {100 * c[f'est_{m}']:.2f}" for m in methods if f"est_{m}" in c)
            what = "members' median: " if "distinct_members" in c else ""
            lines.append(
                f"- {name}: dev {100 * c['dev']:.2f} / test {100 * c['test']:.2f}; {what}{c['n_neurons']:g} neurons, "
                f"K {c['k']:g}, C {c['C']:g}; estimates {estimates}"
            )
        lines.append("")
    return "\n".join(lines)


def cmd_table(args) -> None:
    print(markdown([json.loads(Path(p).read_text()) for p in args.results]))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("predict", help="cache every configuration's dev and test predictions")
    p.add_argument("--store")
    p.add_argument("--probes", help="a probe run of --store (made with the default ProbeSettings when missing)")
    p.add_argument("--synthetic", help="folder: make a synthetic store and its probe run there instead")
    p.add_argument("--cache", required=True, help="folder for the predictions (one .npz per kind/pooling)")
    p.add_argument("--kinds", nargs="*")
    p.add_argument("--poolings", nargs="*")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--workers", type=int, default=1, help="probe tasks at once when probing (default 1)")
    p.add_argument("--rows", type=int, default=6000, help="synthetic: rows (70/15/15 train/dev/test)")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--classes", type=int, default=2)
    p.add_argument("--signal", type=float, default=0.25)
    p.add_argument("--informative", default="3:6,5:6", help="synthetic: layer:neurons,...")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--folds", type=int, default=0, help="also each of this many cross-validation folds of train "
                   "(probes and heads without the fold's rows, predictions on them) into CACHE/fold<i>")  # fmt: skip
    p.add_argument("--fold-probe-c", choices=("main", "fold"), default="main",
                   help="folds' probes: at the C the main run chose per layer (as `probe --folds`; default) or at a "
                   "C chosen on the fold's rows")  # fmt: skip
    p.set_defaults(func=cmd_predict)
    e = sub.add_parser("evaluate", help="repeated dev'/test' re-splits of the cached predictions")
    e.add_argument("--cache", required=True)
    e.add_argument("--name")
    e.add_argument("--splits", type=int, default=20)
    e.add_argument("--n-boot", type=int, default=DEFAULT_N_BOOT)
    e.add_argument("--strategies", nargs="*")
    e.add_argument("--methods", nargs="*")
    e.add_argument(
        "--votes", nargs="*", help=f"voting ensembles, vote-M or vote-M-cfg (default: {' '.join(VOTES)}; none: --votes)"
    )
    e.add_argument("--use-folds", type=int, help="cross-validate on the first N folds only (default: all)")
    e.add_argument("--json")
    e.set_defaults(func=cmd_evaluate)
    t = sub.add_parser("table", help="markdown tables of evaluate's JSON results")
    t.add_argument("results", nargs="+")
    t.set_defaults(func=cmd_table)
    args = ap.parse_args(argv)
    if args.cmd == "predict" and not (args.synthetic or (args.store and args.probes)):
        ap.error("predict: give --store and --probes, or --synthetic FOLDER")
    args.func(args)


if __name__ == "__main__":
    main()
