"""The `spin-cache` command: a thin layer over the Python API. Each verb is one function below."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from . import __version__
from .errors import EXIT_CODES_HELP as EXIT_CODES
from .errors import SpinCacheError
from .fit.solver import HEAD_C_GRID, PROBE_C_GRID
from .representations import KINDS, POOLINGS
from .validation import (
    FRACTIONS,
    NON_NEGATIVE_INT,
    PERCENTS,
    POSITIVE_FLOAT,
    POSITIVE_FLOATS,
    POSITIVE_INT,
    POSITIVE_INTS,
    Constraint,
    arg_type,
    choices_type,
)

_positive_int = arg_type(POSITIVE_INT)
_kinds = choices_type(KINDS)
_poolings = choices_type(POOLINGS)


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _memory_budget(text: str) -> int:
    from .loop.parallel import parse_bytes

    try:
        return parse_bytes(text)
    except SpinCacheError as exc:
        raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[-1]) from None


def _say(args: argparse.Namespace, text: str) -> None:
    if not getattr(args, "quiet", False):
        print(text, file=sys.stderr)


def _add_storage_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--storage-option",
        dest="storage_options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fsspec option for a remote store, repeatable; dots nest, e.g. endpoint_url=http://127.0.0.1:9000 or "
        "client_kwargs.region_name=eu-west-1 (S3 credentials and endpoint also come from $AWS_ACCESS_KEY_ID, "
        "$AWS_SECRET_ACCESS_KEY, $AWS_ENDPOINT_URL)",
    )


def _store_options(args: argparse.Namespace, url: str | None = None) -> dict | None:
    """The storage options for `url` (default: the command's store): the flags plus $AWS_ENDPOINT_URL for s3."""
    from .store.remote import parse_storage_options, resolve_storage_options

    return resolve_storage_options(url or args.store, parse_storage_options(args.storage_options))


# ---- extract -------------------------------------------------------------------------------------------------


def _add_extract(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "extract",
        help="run the model once and store every layer's pooled activations",
        description=(
            "Run a transformer once over a labelled dataset and store, for every layer, pooled hidden states "
            "(embedding output and each block's output) and FFN activations (the input of the FFN down "
            "projection) in a compressed Zarr v3 store. Rerunning the same command resumes an interrupted run or "
            "is a cache hit."
        ),
        epilog=(
            "examples:\n"
            "  spin-cache extract                                  # bundled MiniLM on bundled SST-2\n"
            "  spin-cache extract --data reviews.csv --text-column body --label-column stars\n"
            "  spin-cache extract --model ./my-gpt2 --train tr.jsonl --dev dev.jsonl --test te.jsonl\n\n"
            "On the CPU, pooling runs in a C++ kernel compiled for this machine on first use (~30 s, cached in\n"
            "~/.cache/spin-cache/kernels; needs a C++ compiler). Without one, torch pools, a little slower.\n"
            "SPIN_CACHE_FUSED_POOLING=0 turns the kernel off.\n\n" + EXIT_CODES
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="minilm", help="model directory, cached hub id, or 'minilm' (default)")
    p.add_argument(
        "--data",
        default="sst2",
        help="'sst2' (built in, default) or a .csv/.tsv/.jsonl/.parquet/.txt file with a split column",
    )
    p.add_argument("--train", help="training split file (instead of --data)")
    p.add_argument("--dev", help="validation split file, used to choose C and the configuration")
    p.add_argument("--test", help="test split file (optional)")
    p.add_argument("--text-column", default="text", help="column holding the text (default: text)")
    p.add_argument("--label-column", default="label", help="column holding the label (default: label)")
    p.add_argument("--out", help="store path or URL, e.g. s3://bucket/prefix (default: ./stores/<fingerprint>)")
    _add_storage_options(p)
    p.add_argument("--kinds", type=_kinds, default=list(KINDS), help="hidden,ffn (default: both)")
    p.add_argument(
        "--poolings",
        type=_poolings,
        default=None,
        help="any of first,last,mean,max (default: first,mean,max for encoders; last,mean,max for decoders)",
    )
    p.add_argument(
        "--max-length", type=_positive_int, default=None, help="truncate longer examples (default: 512 or less)"
    )
    p.add_argument("--batch-size", type=_positive_int, default=32, help="examples per forward pass (default: 32)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument(
        "--dtype",
        default="float16",
        choices=["float16", "bfloat16", "float32"],
        help="stored dtype (default: float16; out-of-range values are counted and reported)",
    )
    p.add_argument(
        "--compute-dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="model dtype (default auto: bfloat16 on CUDA where supported, else float32)",
    )
    p.add_argument(
        "--block-rows", type=_positive_int, default=None, help="rows per committed block / shard (default: auto)"
    )
    p.add_argument("--chunk-cols", type=_positive_int, default=64, help="neurons per inner chunk (default: 64)")
    p.add_argument("--overwrite", action="store_true", help="replace a store made from other inputs")
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="local worker processes, one model each (one GPU each if several)",
    )
    p.add_argument(
        "--shard",
        type=_shard,
        default=None,
        metavar="I/N",
        help="be worker I of N (launch by hand on several machines or GPUs; shard 0 creates the store)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    p.set_defaults(func=_cmd_extract)


def _shard(value: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in value.split("/"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected I/N like 0/4, got {value!r}") from exc
    if n < 1 or not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N, got {value!r}")
    return i, n


def _cmd_extract(args: argparse.Namespace) -> int:
    from .extract.run import run_extraction

    report = run_extraction(
        model=args.model,
        data=args.data,
        out=args.out,
        train=args.train,
        dev=args.dev,
        test=args.test,
        text_column=args.text_column,
        label_column=args.label_column,
        kinds=args.kinds,
        poolings=args.poolings,
        max_length=args.max_length,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        compute_dtype=args.compute_dtype,
        block_rows=args.block_rows,
        chunk_cols=args.chunk_cols,
        overwrite=args.overwrite,
        progress=not args.quiet,
        workers=args.workers,
        shard=args.shard,
        storage_options=_store_options(args, args.out) if args.out else None,
    )
    store = report.store
    for message in report.messages:
        _say(args, f"spin-cache: warning: {message}")
    if report.cache_hit:
        _say(args, f"cache hit: {store.url} already holds this extraction (fingerprint {store.fingerprint[:16]})")
    else:
        what = "resumed" if report.resumed_blocks else "extracted"
        _say(
            args,
            f"{what} {report.written_blocks} block(s) into {store.url} in {report.seconds:.1f}s "
            f"({store.status}; {report.n_truncated} example(s) truncated)",
        )
    if args.json:
        print(
            json.dumps(
                {
                    "store": store.url,
                    "fingerprint": store.fingerprint,
                    "status": store.status,
                    "cache_hit": report.cache_hit,
                    "resumed_blocks": report.resumed_blocks,
                    "written_blocks": report.written_blocks,
                    "n_truncated": report.n_truncated,
                    "overflow": report.overflow,
                    "seconds": round(report.seconds, 3),
                }
            )
        )
    return 0 if store.is_complete else 4


# ---- info / verify -------------------------------------------------------------------------------------------


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="print a store's manifest and sizes",
        description="Print what produced a store (model, hashes, dataset, settings), its status and its sizes.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("store", help="store path or URL (local, file://, s3://bucket/prefix)")
    _add_storage_options(p)
    p.add_argument("--json", action="store_true", help="print everything as one JSON object")
    p.set_defaults(func=_cmd_info)


def _cmd_info(args: argparse.Namespace) -> int:
    from .store.remote import open_store

    info = open_store(args.store, _store_options(args)).info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    m = info["manifest"]
    lay = m["layout"]
    stored = sum(v for k, v in info["bytes_stored"].items())
    lines = [
        f"store        {info['url']}",
        f"status       {info['status']} ({info['committed_blocks']}/{info['n_blocks']} blocks committed)",
        f"fingerprint  {info['fingerprint']}",
        f"model        {m['model']['name']} ({m['model'].get('model_type', '?')}, "
        f"{m['model'].get('num_layers', '?')} layers) weights sha256 {m['model']['weights_sha256'][:16]}",
        f"dataset      {m['dataset']['name']} {m['dataset']['rows_per_split']} labels {m['dataset']['label_names']}",
        "kinds        " + ", ".join(f"{k} ({lay['widths'][k]} x {len(lay['layers'][k])} layers)" for k in lay["kinds"]),
        f"poolings     {', '.join(lay['poolings'])}",
        f"dtype        {lay['dtype']}, blocks of {lay['block_rows']} rows, inner chunks of {lay['chunk_cols']} cols",
        f"size         {stored / 2**20:.1f} MiB stored, {info['bytes_float32'] / 2**20:.1f} MiB as float32 "
        f"({stored / max(info['bytes_float32'], 1):.3f}x)",
        f"spin-cache   {m['spin_cache_version']}, created {m['created']}",
    ]
    print("\n".join(lines))
    return 0


def _add_verify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify",
        help="re-read every chunk and check checksums, row counts and the manifest",
        description=(
            "Re-read every chunk of every array (each carries a crc32c checksum), check that no chunk is "
            "missing, that the examples table matches the manifest, and that the manifest matches its fingerprint."
        ),
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("store", help="store path or URL (local, file://, s3://bucket/prefix)")
    _add_storage_options(p)
    p.add_argument("--json", action="store_true", help='print {"ok": ..., "problems": [...]} as JSON')
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_verify)


def _cmd_verify(args: argparse.Namespace) -> int:
    from .store.remote import open_store

    store = open_store(args.store, _store_options(args))
    problems = store.verify(progress=not (args.quiet or args.json))
    if args.json:
        print(json.dumps({"store": store.url, "ok": not problems, "status": store.status, "problems": problems}))
        return 1 if problems else 0
    for line in problems:
        print(f"damaged: {line}")
    if problems:
        print(f"spin-cache: {len(problems)} problem(s) in {store.url}", file=sys.stderr)
        return 1
    status = "" if store.is_complete else f" (incomplete: {store.count_committed()}/{store.layout.n_blocks} blocks)"
    print(f"ok: {store.url}{status}")
    return 0


# ---- push / ls ---------------------------------------------------------------------------------------------------


def _add_push(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "push",
        help="copy a finished store to S3 (or another path) and verify it on arrival",
        description=(
            "Copy a complete store file by file to a path or URL, re-read every chunk that arrived (crc32c) and "
            "compare the examples table and side files byte for byte, and only then write the destination's "
            "zarr.json: a half-pushed store is never seen as a store. Pushing again to the same place is a no-op."
        ),
        epilog="example:\n  spin-cache push stores/minilm-sst2 s3://my-bucket/stores/minilm-sst2 "
        "--storage-option endpoint_url=http://127.0.0.1:9000\n\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("store", help="the finished store to copy (path or URL)")
    p.add_argument("url", help="destination path or URL, e.g. s3://bucket/prefix")
    _add_storage_options(p)
    p.add_argument("--json", action="store_true", help="print the pushed store's URL and fingerprint as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    p.set_defaults(func=_cmd_push)


def _cmd_push(args: argparse.Namespace) -> int:
    from .store.remote import is_remote, push

    store = push(
        args.store,
        args.url,
        storage_options=_store_options(args) if is_remote(args.store) else None,
        dest_options=_store_options(args, args.url),
        progress=not args.quiet,
    )
    if args.json:
        print(json.dumps({"store": store.url, "fingerprint": store.fingerprint, "status": store.status}))
    else:
        _say(args, f"pushed and verified: {store.url} (fingerprint {store.fingerprint[:16]})")
    return 0


def _add_ls(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ls",
        help="list the stores under a directory or prefix",
        description=(
            "List the stores at a directory or URL prefix and one or two levels below it, with model, dataset, "
            "rows, size, status and fingerprint (read from each zarr.json; no arrays are read)."
        ),
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("url", help="directory or URL prefix, e.g. stores or s3://bucket/stores")
    p.add_argument("--json", action="store_true", help="print the stores as a JSON list")
    _add_storage_options(p)
    p.set_defaults(func=_cmd_ls)


def _cmd_ls(args: argparse.Namespace) -> int:
    from .store.remote import format_listing, list_stores

    entries = list_stores(args.url, _store_options(args, args.url))
    print(json.dumps(entries, indent=2) if args.json else format_listing(entries))
    return 0


# ---- probe / sweep / predict ---------------------------------------------------------------------------------


def _add_scheduler(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--scheduler",
        default=None,
        help="sync, threads (default), processes or a dask.distributed address tcp://HOST:PORT "
        "(also $SPIN_CACHE_SCHEDULER)",
    )
    p.add_argument("--workers", type=_positive_int, default=None, help="local workers (default: one per core)")
    p.add_argument(
        "--dashboard",
        nargs="?",
        const="127.0.0.1:8787",
        default=None,
        metavar="ADDR",
        help="serve the Dask dashboard of a local cluster at ADDR (default when given: 127.0.0.1:8787; ':PORT' "
        "listens on every interface; needs bokeh). Without it nothing listens beyond loopback",
    )


def _add_probe(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "probe",
        help="fit one L1 logistic-regression probe per layer and score every neuron",
        description=(
            "Fit one L1 logistic regression per (kind, pooling, layer) of a store on standardised features, "
            "choosing C on the dev split, and score each neuron by its squared weight (summed over classes). "
            "Finished probes are kept: rerunning after a crash continues where it stopped."
        ),
        epilog="outputs: RUN/probes.parquet, RUN/neuron_scores.parquet, RUN/run.json\n\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("store", help="store path or URL (local, file://, s3://bucket/prefix)")
    _add_storage_options(p)
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
        type=_memory_budget,
        default=None,
        help="memory for all probes running at once, e.g. 8G (default: half the machine); a layer that does not "
        "fit its task's share is streamed in row blocks; at least one row block per running task",
    )
    p.add_argument("--kinds", type=_kinds, default=None, help="only these kinds (default: all in the store)")
    p.add_argument("--poolings", type=_poolings, default=None, help="only these poolings (default: all in the store)")
    _add_scheduler(p)
    p.add_argument("--json", action="store_true", help="print the probes table as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    p.set_defaults(func=_cmd_probe)


def _cmd_probe(args: argparse.Namespace) -> int:
    from .loop.probe import ProbeSettings, run_probes
    from .store.remote import open_store

    options = _store_options(args)
    open_store(args.store, options)  # a missing bucket, endpoint or credentials: one line, before work
    run = run_probes(
        args.store,
        args.out,
        ProbeSettings(c_grid=args.c_grid, metric=args.metric),
        kinds=args.kinds,
        poolings=args.poolings,
        scheduler=args.scheduler,
        workers=args.workers,
        memory_budget=args.memory_budget,
        storage_options=options,
        progress=not args.quiet,
        dashboard=args.dashboard,
    )
    _record_command(args, args.out)
    streamed = run.probes.filter(run.probes["mode"] == "streamed").height
    if streamed:
        _say(args, f"note: {streamed} layer(s) did not fit the memory budget and were streamed in row blocks")
    best = run.probes.sort("dev_metric", descending=True).row(0, named=True)
    _say(
        args,
        f"{run.probes.height} probes in {run.path}; best on dev: {best['kind']}/{best['pooling']}/"
        f"layer {best['layer']} dev {best['dev_metric']:.4f} test {best['test_metric']:.4f}",
    )
    if args.json:
        print(run.probes.write_json())
    return 0


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="select salient neurons, integrate layers, pick the best on dev, export the head",
        description=(
            "For every kind, pooling, rule value and K, keep each layer's salient neurons (by the probes' "
            "saliency), concatenate the first K layers, fit a logistic-regression head with C chosen on dev, and "
            "report Base, the best single-layer probe, SPIN (best on dev) and a random control with SPIN's "
            "neuron counts. Reads only the selected columns of the store."
        ),
        epilog="outputs: SWEEP/sweep.json (written first), SWEEP/sweep.parquet, SWEEP/summary.json, SWEEP/head/\n\n"
        + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("store", help="store path or URL (local, file://, s3://bucket/prefix)")
    _add_storage_options(p)
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
        help="head C grid, chosen on dev (default: " + ",".join(f"{c:g}" for c in HEAD_C_GRID) + ")",
    )
    p.add_argument("--head-penalty", default="l2", choices=["l1", "l2"], help="head regularisation (default: l2)")
    p.add_argument("--seed", type=arg_type(NON_NEGATIVE_INT), default=0, help="seed of the random control (default: 0)")
    p.add_argument(
        "--memory-budget",
        type=_memory_budget,
        default=None,
        help="memory for all sweep groups running at once, e.g. 8G (default: half the machine); a group whose "
        "selected columns do not fit its share is fitted on row blocks read on demand; at least one row block per "
        "running task",
    )
    p.add_argument("--kinds", type=_kinds, default=None, help="only these kinds")
    p.add_argument("--poolings", type=_poolings, default=None, help="only these poolings")
    _add_scheduler(p)
    p.add_argument("--json", action="store_true", help="print the result table as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    p.set_defaults(func=_cmd_sweep)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .loop.probe import ProbeRun
    from .loop.sweep import DEFAULT_ETAS, SweepSettings, run_sweep
    from .outputs import finite_or_null
    from .store.remote import open_store

    if args.top_k:
        rule, values = "top-k", args.top_k
    elif args.top_percent:
        rule, values = "top-percent", args.top_percent
    else:
        rule, values = "eta", args.eta or DEFAULT_ETAS
    metric = ProbeRun(args.probes).settings.metric
    settings = SweepSettings(
        rule=rule, values=tuple(values), c_grid=args.c_grid, penalty=args.head_penalty, metric=metric, seed=args.seed
    )
    options = _store_options(args)
    open_store(args.store, options)  # a missing bucket, endpoint or credentials: one line, before work
    result = run_sweep(
        args.store,
        args.probes,
        args.out,
        settings,
        kinds=args.kinds,
        poolings=args.poolings,
        scheduler=args.scheduler,
        workers=args.workers,
        memory_budget=args.memory_budget,
        storage_options=options,
        progress=not args.quiet,
        dashboard=args.dashboard,
    )
    _record_command(args, args.out)
    if args.json:
        print(json.dumps(finite_or_null(result.table), allow_nan=False))
    elif not args.quiet:
        print(format_table(result.table, metric))
    return 0


def _percent(value: float | None) -> str:
    """A metric as a percentage; "-" where there is none (no test split: null in summary.json, NaN in memory)."""
    return "-" if value is None or value != value else f"{100 * value:.2f}"


def format_table(table: dict, metric: str = "accuracy") -> str:
    """The Base / best single layer / SPIN / random control table, for people."""
    rows = [
        ("Base (last layer, all neurons)", table.get("base")),
        ("Best single-layer probe", table.get("best_single_layer")),
        ("SPIN (best on dev)", table.get("spin")),
        ("Random control (SPIN's counts)", table.get("random_control")),
    ]
    lines = [f"{'':32s} {'dev ' + metric:>16s} {'test ' + metric:>16s} {'neurons':>9s} {'share':>8s}"]
    for name, r in rows:
        if r is None:
            continue
        lines.append(
            f"{name:32s} {_percent(r['dev']):>16s} {_percent(r['test']):>16s} {r['n_neurons']:9d} "
            f"{100 * r['share']:7.2f}%"
        )
    s = table["spin"]
    lines.append(
        f"SPIN: {s['kind']}/{s['pooling']}, {s['rule']} {s['value']:g}, layers {s['layers'][0]}-"
        f"{s['layers'][-1]}, C {s['C']:g}; head exported to {table.get('head')}"
    )
    return "\n".join(lines)


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="classify text with an exported head (early exit at its deepest layer)",
        description=(
            "Load a head exported by `spin-cache sweep` and its model (checked against the head's hashes), run "
            "the model only up to the deepest selected layer and print labels and class probabilities."
        ),
        epilog="examples:\n  spin-cache predict runs/sweep/head --text 'a gripping, funny film'\n"
        "  spin-cache predict runs/sweep/head --data new.csv --out preds.csv\n\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("head", help="head directory")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", action="append", help="a text to classify (repeatable)")
    src.add_argument("--data", help=".txt (one text per line), .csv, .tsv, .jsonl or .parquet file")
    p.add_argument("--text-column", default="text", help="column holding the text (default: text)")
    p.add_argument("--model", default=None, help="model directory (default: the one recorded in the head)")
    p.add_argument(
        "--out",
        default=None,
        help="output file (.jsonl or .csv; its folder must exist; written as it goes, renamed into place at the "
        "end; default: JSON Lines on stdout)",
    )
    p.add_argument(
        "--format",
        choices=["jsonl", "csv", "json"],
        default=None,
        help="output format (default: csv when --out ends in .csv, else jsonl); every prediction carries n_tokens "
        "and truncated, and a warning on stderr counts truncated texts",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="texts per forward pass (default: 32)")
    p.add_argument("--json", action="store_true", help="print one JSON object with every prediction")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(args: argparse.Namespace) -> int:
    from .serve.predict import run_predict

    run_predict(
        args.head,
        texts=args.text,
        data=args.data,
        text_column=args.text_column,
        model=args.model,
        out=args.out,
        fmt=args.format,
        as_json=args.json,
        device=args.device,
        batch_size=args.batch_size,
        progress=not args.quiet and sys.stderr.isatty(),
    )
    return 0


# ---- report / explain / synth -------------------------------------------------------------------------------


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="an HTML report with plots of a sweep (self-contained, opens offline)",
        description=(
            "Write one self-contained HTML page (images embedded) and its PNG figures: probe metric per layer, "
            "metric against neurons kept (SPIN, random control, Base), the chosen head's neurons per layer and "
            "saliency distribution, early exit, and the manifest and command lines that produced the run."
        ),
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sweep", help="sweep directory (from `spin-cache sweep` or `spin-cache run`)")
    p.add_argument(
        "--out", required=True, help="directory for report.html and the PNGs: new, empty, or an earlier report's"
    )
    p.add_argument("--json", action="store_true", help="print the report's path as JSON")
    p.add_argument("--quiet", action="store_true", help="no messages")
    p.set_defaults(func=_cmd_report)


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    path = write_report(args.sweep, args.out, commands=[_command_line(args)])
    if args.json:
        print(json.dumps({"report": str(path)}))
    else:
        _say(args, f"report: {path}")
    return 0


def _add_explain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain",
        help="which tokens (and layers) a prediction rests on",
        description=(
            "Split the head's logit for a text into per-token and per-layer contributions. For mean pooling the "
            "split is exact (the contributions and the constant add up to the logit); for max pooling each "
            "neuron is credited to the token that gave its maximum; for first/last pooling one token carries all."
        ),
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("head", help="head directory")
    p.add_argument("--text", required=True, help="the text to explain")
    p.add_argument("--model", default=None, help="model directory (default: the one recorded in the head)")
    p.add_argument("--label", default=None, help="explain this class's logit (default: the predicted class)")
    p.add_argument("--html", default=None, help="also write a small HTML page to this file")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default: cpu)")
    p.add_argument("--json", action="store_true", help="print the explanation as JSON")
    p.add_argument("--no-color", action="store_true", help="no ANSI colours (also when $NO_COLOR is set)")
    p.set_defaults(func=_cmd_explain)


def _cmd_explain(args: argparse.Namespace) -> int:
    from .serve.explain import explain

    result = explain(args.head, args.text, model=args.model, device=args.device, label=args.label)
    if args.html:
        Path(args.html).write_text(result.to_html(), encoding="utf-8")
    if args.json:
        print(result.to_json())
    else:
        color = not args.no_color and sys.stdout.isatty() and "NO_COLOR" not in os.environ
        print(result.to_terminal(color=color))
    return 0


def _informative(value: str) -> dict[int, int]:
    try:
        pairs = [item.split(":") for item in _csv(value)]
        planted = {int(layer): int(n) for layer, n in pairs}
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected LAYER:COUNT pairs like 3:4,5:4, got {value!r}") from exc
    if not planted or any(layer < 0 or n < 1 for layer, n in planted.items()):
        raise argparse.ArgumentTypeError(f"expected LAYER:COUNT pairs with LAYER >= 0 and COUNT >= 1, got {value!r}")
    return planted


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="write a synthetic store with planted informative neurons (for scale tests)",
        description=(
            "Write a complete store of Gaussian noise in which a few neurons of chosen layers carry the class "
            "signal. Probing must find exactly those neurons; use it to test scale without a model."
        ),
        epilog="example: spin-cache synth --out stores/synth-1m --rows 1000000 --width 1024\n\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, help="store path or URL")
    p.add_argument("--rows", type=_positive_int, default=10000, help="examples (default: 10000)")
    p.add_argument("--layers", type=_positive_int, default=6, help="layers (default: 6)")
    p.add_argument("--width", type=_positive_int, default=512, help="neurons per layer (default: 512)")
    p.add_argument("--kinds", type=_kinds, default=list(KINDS), help="default: hidden,ffn")
    p.add_argument("--poolings", type=_poolings, default=["mean"], help="default: mean")
    p.add_argument("--informative", type=_informative, default=None, help="LAYER:COUNT pairs (default: 3:4,5:4)")
    p.add_argument(
        "--classes", type=arg_type(Constraint("int", low=2)), default=2, help="number of classes (default: 2)"
    )
    p.add_argument(
        "--signal", type=arg_type(POSITIVE_FLOAT), default=1.0, help="signal strength in noise units (default: 1.0)"
    )
    p.add_argument("--seed", type=arg_type(NON_NEGATIVE_INT), default=0, help="default: 0")
    p.add_argument("--overwrite", action="store_true", help="replace a store made from other arguments")
    p.add_argument("--json", action="store_true", help="print the store's path, fingerprint and planted neurons")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_synth)


def _cmd_synth(args: argparse.Namespace) -> int:
    from .synth import make_synthetic_store, planted_neurons

    store = make_synthetic_store(
        args.out,
        n_rows=args.rows,
        n_layers=args.layers,
        width=args.width,
        kinds=args.kinds,
        poolings=args.poolings,
        informative=args.informative,
        n_classes=args.classes,
        signal=args.signal,
        seed=args.seed,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    _say(args, f"synthetic store: {store.url} ({store.layout.n_rows} rows, fingerprint {store.fingerprint[:16]})")
    if args.json:
        planted = {k: {str(layer): v for layer, v in d.items()} for k, d in planted_neurons(store).items()}
        print(json.dumps({"store": store.url, "fingerprint": store.fingerprint, "planted": planted}))
    return 0


def _command_line(args: argparse.Namespace) -> str:
    return shlex.join(["spin-cache", *getattr(args, "argv", [])])


def _record_command(args: argparse.Namespace, out: str | Path) -> None:
    """Each stage's output directory keeps the command line that made it (the report shows them)."""
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    (path / "command.txt").write_text(_command_line(args) + "\n")


# ---- run ---------------------------------------------------------------------------------------------------


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="the whole pipeline (extract, probe, sweep, report) from one TOML file",
        description=(
            "Run extract, probe, sweep and report from one config file, skipping stages whose outputs already "
            "match their inputs, and print Base vs SPIN and the report's path. Without CONFIG: the bundled default "
            "(MiniLM + SST-2)."
        ),
        epilog="example config: pipelines/minilm-sst2.toml\n\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", nargs="?", default=None, help="TOML config (default: the bundled default run)")
    p.add_argument("--json", action="store_true", help="print the result table as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    p.set_defaults(func=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    from .outputs import finite_or_null
    from .pipeline import PipelineConfig, load_config, run_pipeline

    cfg = load_config(args.config) if args.config else PipelineConfig()
    result = run_pipeline(cfg, progress=not args.quiet, say=lambda text: _say(args, text), command=_command_line(args))
    if args.json:
        print(json.dumps(finite_or_null(result), allow_nan=False))
    elif not args.quiet:
        print(format_table(result["table"]))
        print(f"report: {result['report']}")
    return 0


# ---- entry point ---------------------------------------------------------------------------------------------

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_extract,
    _add_info,
    _add_verify,
    _add_push,
    _add_ls,
    _add_probe,
    _add_sweep,
    _add_predict,
    _add_run,
    _add_report,
    _add_explain,
    _add_synth,
]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: the option, what is wrong, and where to read more (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="spin-cache",
        description=(
            "Turn a frozen transformer into a text classifier by reading its internal neurons (SPIN, Jiao et al. "
            "2024). `extract` runs the model once into a store; everything after it works on the store alone."
        ),
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"spin-cache {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # usage errors (one line, exit 2), --help and --version: a code, as for every verb
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.func(args))
    except SpinCacheError as exc:
        print(f"spin-cache: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("spin-cache: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        err = _known_failure(exc, args)
        if err is not None:
            print(f"spin-cache: error: {err}", file=sys.stderr)
            return err.exit_code
        log = write_crash_log(args)
        print(
            f"spin-cache: internal error: {type(exc).__name__}: {_one_line(exc)} (traceback in {log}; "
            "please report it with that file)",
            file=sys.stderr,
        )
        return 1


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _known_failure(exc: Exception, args: argparse.Namespace) -> SpinCacheError | None:
    """A storage failure (endpoint down, access denied) or a local file error, as one line naming the place."""
    from .errors import InputError
    from .store.remote import remote_error

    filename = getattr(exc, "filename", None) if isinstance(exc, OSError) else None
    if filename is not None and "://" not in str(filename):  # a local file: name it, never blame S3
        what = (exc.strerror or type(exc).__name__).lower()  # type: ignore[union-attr]
        return InputError(f"{filename}: {what}; check the path and its permissions")
    return remote_error(exc, getattr(args, "store", None) or getattr(args, "url", None))


def write_crash_log(args: argparse.Namespace) -> Path:
    """Write the current exception's traceback and the command line to a log file; return its path."""
    import tempfile
    import time
    import traceback

    folder = Path(os.environ.get("SPIN_CACHE_LOG_DIR") or Path.home() / ".cache" / "spin-cache" / "logs")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        folder = Path(tempfile.gettempdir())
    path = folder / f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    path.write_text(
        f"spin-cache {__version__}\ncommand: {_command_line(args)}\n\n{traceback.format_exc()}", encoding="utf-8"
    )
    return path


if __name__ == "__main__":
    sys.exit(main())
