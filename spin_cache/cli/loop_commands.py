"""The model-free loop's commands: probe, sweep, report, and run (the whole pipeline from one TOML file)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..fit.solver import HEAD_C_GRID, PROBE_C_GRID
from ..loop.selection import DEFAULT_SELECT, SELECTIONS
from ..store.folds import DEFAULT_FOLDS
from ..validation import (
    FOLD_COUNT,
    FRACTIONS,
    NON_NEGATIVE_INT,
    PERCENTS,
    POSITIVE_FLOATS,
    POSITIVE_INT,
    POSITIVE_INTS,
    arg_type,
)
from .options import (
    Subcommands,
    add_scheduler,
    add_storage_options,
    command,
    command_line,
    format_table,
    kinds_type,
    memory_budget,
    poolings_type,
    record_command,
    say,
    store_options,
)


def loop_options(args: argparse.Namespace, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """The keyword arguments probe and sweep share: what to read, where to run, how much memory, what to show."""
    return {
        "kinds": args.kinds,
        "poolings": args.poolings,
        "scheduler": args.scheduler,
        "workers": args.workers,
        "memory_budget": args.memory_budget,
        "storage_options": storage_options,
        "progress": not args.quiet,
        "dashboard": args.dashboard,
        "device": args.device,
    }


def add_probe(sub: Subcommands) -> None:
    """Add the `probe` verb (one L1 probe per layer, a saliency per neuron) to the subcommands `sub`."""
    p = command(
        sub,
        "probe",
        help="fit one L1 logistic-regression probe per layer and score every neuron",
        description=(
            "Fit one L1 logistic regression per (kind, pooling, layer) of a store on standardised features, "
            "choosing C on the dev split, and score each neuron by its squared weight (summed over classes). "
            "Finished probes are kept: rerunning after a crash continues where it stopped."
        ),
        epilog="outputs: RUN/probes.parquet, RUN/neuron_scores.parquet, RUN/run.json\n\n",
    )
    p.add_argument("store", help="store path or URL (local, file://, s3://bucket/prefix)")
    add_storage_options(p)
    p.add_argument(
        "--out", required=True, help="directory for the probe run: new, empty, or this command's earlier output"
    )
    p.add_argument(
        "--C",
        dest="c_grid",
        type=arg_type(POSITIVE_FLOATS),
        default=PROBE_C_GRID,
        help="C grid, chosen on dev (default: the paper's 0.1,0.2,1,10,100 plus 0.01,0.02,0.05; see BENCHMARKS.md)",
    )
    p.add_argument("--metric", default="accuracy", choices=["accuracy", "macro_f1"], help="default: accuracy")
    p.add_argument(
        "--memory-budget",
        type=memory_budget,
        default=None,
        help="memory for all probes running at once, e.g. 8G (default: half the machine); a layer that does not "
        "fit its task's share is streamed in row blocks; at least one row block per running task",
    )
    p.add_argument("--kinds", type=kinds_type, default=None, help="only these kinds (default: all in the store)")
    p.add_argument(
        "--poolings", type=poolings_type, default=None, help="only these poolings (default: all in the store)"
    )
    add_scheduler(p)
    p.add_argument("--json", action="store_true", help="print the probes table as JSON")
    p.set_defaults(func=cmd_probe)


def cmd_probe(args: argparse.Namespace) -> int:
    """Run `spin-cache probe`: fit the probes (resuming an earlier run), print the best on dev; returns 0."""
    from ..loop.probe import ProbeSettings, run_probes
    from ..store.remote import open_store

    options = store_options(args)
    open_store(args.store, options)  # a missing bucket, endpoint or credentials: one line, before work
    run = run_probes(
        args.store,
        args.out,
        ProbeSettings(c_grid=args.c_grid, metric=args.metric),
        **loop_options(args, options),
    )
    record_command(args, args.out)
    streamed = run.probes.filter(run.probes["mode"] == "streamed").height
    if streamed:
        say(args, f"note: {streamed} layer(s) did not fit the memory budget and were streamed in row blocks")
    best = run.probes.sort("dev_metric", descending=True).row(0, named=True)
    say(
        args,
        f"{run.probes.height} probes in {run.path}; best on dev: {best['kind']}/{best['pooling']}/"
        f"layer {best['layer']} dev {best['dev_metric']:.4f} test {best['test_metric']:.4f}",
    )
    if args.json:
        print(run.probes.write_json())
    return 0


def add_sweep(sub: Subcommands) -> None:
    """Add the `sweep` verb (select neurons, integrate layers, choose and export a head) to the subcommands `sub`."""
    p = command(
        sub,
        "sweep",
        help="select salient neurons, integrate layers, choose a head (cross-validated by default), export it",
        description=(
            "For every kind, pooling, rule value and K, keep each layer's salient neurons (by the probes' "
            "saliency), concatenate the first K layers and fit a logistic-regression head at every C of the grid; "
            "choose one head (--select: by default cross-validated on folds of the training rows, not on dev), "
            "score it once on test, and report Base, the best single-layer probe, SPIN (the chosen head, with "
            "the score to expect on new data) and a random control with SPIN's neuron counts. Reads only the "
            "selected columns of the store."
        ),
        epilog="outputs: SWEEP/sweep.json (written first), SWEEP/sweep.parquet, SWEEP/summary.json, SWEEP/head/, "
        "SWEEP/folds/<i> (cv: fold i's probes)\n\n",
    )
    p.add_argument("store", help="store path or URL (local, file://, s3://bucket/prefix)")
    add_storage_options(p)
    p.add_argument("--probes", required=True, help="probe run directory (from `spin-cache probe`)")
    p.add_argument(
        "--out", required=True, help="directory for the sweep and its head: new, empty, or an earlier sweep's"
    )
    rule = p.add_mutually_exclusive_group()
    rule.add_argument(
        "--eta",
        type=arg_type(FRACTIONS),
        default=None,
        help="cumulative saliency shares (default: 0.001,0.01,0.05,0.1,0.2,0.3,0.5,0.8,0.9,0.95)",
    )
    rule.add_argument("--top-k", type=arg_type(POSITIVE_INTS), default=None, help="neurons per layer, e.g. 1,8,64")
    rule.add_argument("--top-percent", type=arg_type(PERCENTS), default=None, help="percent of each layer, e.g. 1,5,10")
    p.add_argument(
        "--C",
        dest="c_grid",
        type=arg_type(POSITIVE_FLOATS),
        default=HEAD_C_GRID,
        help="head C grid, every C a candidate head for --select (default: "
        + ",".join(f"{c:g}" for c in HEAD_C_GRID)
        + ")",
    )
    p.add_argument("--head-penalty", default="l2", choices=["l1", "l2"], help="head regularisation (default: l2)")
    add_select(p, default=DEFAULT_SELECT)
    add_search(p, defaults=True)
    p.add_argument(
        "--seed",
        type=arg_type(NON_NEGATIVE_INT),
        default=0,
        help="seed of the random control and of the expected-score bootstrap (default: 0)",
    )
    p.add_argument(
        "--memory-budget",
        type=memory_budget,
        default=None,
        help="memory for all sweep groups running at once, e.g. 8G (default: half the machine); a group whose "
        "selected columns do not fit its share is fitted on row blocks read on demand; at least one row block per "
        "running task",
    )
    p.add_argument("--kinds", type=kinds_type, default=None, help="only these kinds")
    p.add_argument("--poolings", type=poolings_type, default=None, help="only these poolings")
    add_scheduler(p)
    p.add_argument("--json", action="store_true", help="print the result table as one JSON object")
    p.set_defaults(func=cmd_sweep)


SELECT_HELP = (
    "how the exported head is chosen among every head fitted (each configuration at each C): cv (cross-validated "
    "selection: every configuration is also fitted in each of --folds folds of the training rows, probes "
    "included, without the fold's rows, and the best out-of-fold head is chosen, not looking at dev, so its "
    "dev score is an honest estimate; about 1 + 0.8 x folds times the sweep's work), or from the dev predictions: "
    "argmax (the best dev score; ties to fewer neurons, then fewer layers, then smaller C), one_se (the simplest "
    "head within one binomial standard error of the best), one_se_paired (the same with the standard error of the "
    "paired difference on the same dev rows) or smoothed (the best dev score averaged with the neighbouring rule "
    'values\'). Default {default}: in BENCHMARKS.md ("Selection strategies", 20 re-splits of dev and test on SST-2, '
    "SST-5 and synthetic stores) cv had a higher mean test accuracy than argmax on every set and a dev score that "
    "did not overstate test. The strategies on dev are shown with a bootstrap bias-corrected estimate that re-runs "
    "the choice on resampled dev rows; test is read once, for the chosen head."
)


def add_select(p: argparse.ArgumentParser, default: str | None) -> None:
    """--select and --folds: the strategy choosing the exported head, and cv's folds (`run` has no defaults: the
    config's [sweep] select and folds)."""
    shown = default or "the config's [sweep] select, else " + DEFAULT_SELECT
    p.add_argument("--select", choices=list(SELECTIONS), default=default, help=SELECT_HELP.format(default=shown))
    folds = str(DEFAULT_FOLDS) if default else f"the config's [sweep] folds, else {DEFAULT_FOLDS}"
    p.add_argument("--folds", type=arg_type(FOLD_COUNT), default=DEFAULT_FOLDS if default else None,
                   help=f"with --select cv: folds of the training rows, stratified by label (2 or more; default "
                   f"{folds}); the folds' probes are kept in OUT/folds")  # fmt: skip


SEARCH_HELP = (
    "how much of the head C grid each configuration fits: grid (the exact reference: every configuration at every "
    "C) or patience (each configuration's C path, strong to weak regularisation, stops once its dev score has not "
    "improved for --patience C values in a row: the weak-regularisation end of the path, the slowest fits, is "
    "skipped, and heads never fitted are not compared, so the choice can differ from the grid's). Default {default}"
)
PATIENCE_HELP = (
    "with --search patience: C values in a row without a better dev score before a configuration's path stops "
    "(an integer >= 1; default {default})"
)


def add_search(p: argparse.ArgumentParser, defaults: bool) -> None:
    """--search and --patience (`run` has no defaults: the config's [sweep] search and patience)."""
    from ..loop.sweep import DEFAULT_PATIENCE, SEARCHES

    search = "grid, the exact grid" if defaults else "the config's [sweep] search, else grid (the exact grid)"
    patience = str(DEFAULT_PATIENCE) if defaults else f"the config's [sweep] patience, else {DEFAULT_PATIENCE}"
    p.add_argument("--search", choices=list(SEARCHES), default="grid" if defaults else None,
                   help=SEARCH_HELP.format(default=search))  # fmt: skip
    p.add_argument("--patience", type=arg_type(POSITIVE_INT), default=DEFAULT_PATIENCE if defaults else None,
                   help=PATIENCE_HELP.format(default=patience))  # fmt: skip


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run `spin-cache sweep` with the probe run's metric: print the result table (text or JSON); returns 0."""
    from ..loop.probe import ProbeRun
    from ..loop.sweep import DEFAULT_ETAS, SweepSettings, run_sweep
    from ..outputs import finite_or_null
    from ..store.remote import open_store

    if args.top_k:
        rule, values = "top-k", args.top_k
    elif args.top_percent:
        rule, values = "top-percent", args.top_percent
    else:
        rule, values = "eta", args.eta or DEFAULT_ETAS
    metric = ProbeRun(args.probes).settings.metric
    settings = SweepSettings(
        rule=rule,
        values=tuple(values),
        c_grid=args.c_grid,
        penalty=args.head_penalty,
        metric=metric,
        seed=args.seed,
        select=args.select,
        search=args.search,
        patience=args.patience,
        folds=args.folds,
    )
    options = store_options(args)
    open_store(args.store, options)  # a missing bucket, endpoint or credentials: one line, before work
    result = run_sweep(
        args.store,
        args.probes,
        args.out,
        settings,
        **loop_options(args, options),
    )
    record_command(args, args.out)
    if args.json:
        print(json.dumps(finite_or_null(result.table), allow_nan=False))
    elif not args.quiet:
        print(format_table(result.table, metric))
    return 0


def add_report(sub: Subcommands) -> None:
    """Add the `report` verb (an offline HTML page with a sweep's plots) to the subcommands `sub`."""
    p = command(
        sub,
        "report",
        help="an HTML report with plots of a sweep (self-contained, opens offline)",
        description=(
            "Write one self-contained HTML page (images embedded) and its PNG figures: probe metric per layer, "
            "metric against neurons kept (SPIN, random control, Base), the chosen head's neurons per layer and "
            "saliency distribution, early exit, and the manifest and command lines that produced the run."
        ),
    )
    p.add_argument("sweep", help="sweep directory (from `spin-cache sweep` or `spin-cache run`)")
    p.add_argument(
        "--out", required=True, help="directory for report.html and the PNGs: new, empty, or an earlier report's"
    )
    p.add_argument("--json", action="store_true", help="print the report's path as JSON")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    """Run `spin-cache report`: write the page and its figures, print its path; returns 0."""
    from ..report import write_report

    path = write_report(args.sweep, args.out, commands=[command_line(args)])
    if args.json:
        print(json.dumps({"report": str(path)}))
    else:
        say(args, f"report: {path}")
    return 0


def add_run(sub: Subcommands) -> None:
    """Add the `run` verb (extract, probe, sweep and report from one TOML file) to the subcommands `sub`."""
    p = command(
        sub,
        "run",
        help="the whole pipeline (extract, probe, sweep, report) from one TOML file",
        description=(
            "Run extract, probe, sweep and report from one config file, skipping stages whose outputs already "
            "match their inputs, and print Base vs SPIN and the report's path. Without CONFIG: the bundled default "
            "(MiniLM + SST-2)."
        ),
        epilog="example config: pipelines/minilm-sst2.toml\n\n",
    )
    p.add_argument("config", nargs="?", default=None, help="TOML config (default: the bundled default run)")
    add_select(p, default=None)
    add_search(p, defaults=False)
    p.add_argument("--json", action="store_true", help="print the result table as one JSON object")
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    """Run `spin-cache run`: the pipeline from the config (--select, --search and --patience overriding its [sweep]
    keys), print Base vs SPIN and the report's path; returns 0."""
    from ..outputs import finite_or_null
    from ..pipeline import PipelineConfig, load_config, run_pipeline

    cfg = load_config(args.config) if args.config else PipelineConfig()
    if args.select is not None:  # the command line wins over the config's [sweep] select
        cfg.sweep = {**cfg.sweep, "select": args.select}
    for key in ("search", "patience", "folds"):  # likewise over [sweep] search, patience and folds
        if getattr(args, key) is not None:
            cfg.sweep = {**cfg.sweep, key: getattr(args, key)}
    result = run_pipeline(cfg, progress=not args.quiet, say=lambda text: say(args, text), command=command_line(args))
    if args.json:
        print(json.dumps(finite_or_null(result), allow_nan=False))
    elif not args.quiet:
        print(format_table(result["table"]))
        print(f"report: {result['report']}")
    return 0
