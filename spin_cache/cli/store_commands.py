"""The commands that make and share stores: extract, info, verify, push, ls, synth."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields

from ..extract.settings import COMPUTE_DTYPES, ExtractSettings
from ..representations import KINDS
from ..store.layout import STORE_DTYPES
from ..validation import (
    NON_NEGATIVE_INT,
    POSITIVE_FLOAT,
    Constraint,
    arg_type,
)
from .options import (
    Subcommands,
    add_storage_options,
    command,
    informative,
    kinds_type,
    log,
    poolings_type,
    positive_int,
    say,
    shard,
    store_options,
)

DEFAULTS = ExtractSettings()
#: The ExtractSettings fields that are command-line options (the others come from -q and the storage flags).
CLI_SETTINGS = tuple(f.name for f in fields(ExtractSettings) if f.name not in ("progress", "storage_options"))


def add_extract(sub: Subcommands) -> None:
    """Add the `extract` verb (model activations into a store) to the subcommands `sub`."""
    p = command(
        sub,
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
            "SPIN_CACHE_FUSED_POOLING=0 turns the kernel off."
        ),
    )
    p.add_argument(
        "--model",
        help="model directory, Hugging Face hub id (downloaded when online; the cache when HF_HUB_OFFLINE=1), or "
        "'minilm' (default, bundled)",
    )
    p.add_argument(
        "--data",
        help="'sst2' (built in, default), a .csv/.tsv/.jsonl/.parquet/.txt file with a split column, a Hugging "
        "Face dataset NAME[:CONFIG] (from the local cache when HF_HUB_OFFLINE=1) or a datasets.save_to_disk folder",
    )
    p.add_argument("--train", help="training split file (instead of --data)")
    p.add_argument("--dev", help="validation split file, used to choose C and the configuration")
    p.add_argument("--test", help="test split file (optional)")
    p.add_argument(
        "--dev-split",
        type=arg_type(Constraint("float", low=0, high=1, low_open=True, high_open=True)),
        metavar="FRACTION",
        help="a Hugging Face dataset without a validation split: carve this share of train as dev (stratified)",
    )
    p.add_argument("--data-seed", type=arg_type(NON_NEGATIVE_INT), help="seed of --dev-split (default: 0)")
    p.add_argument("--data-revision", help="Hugging Face dataset revision: a branch, tag or commit")
    p.add_argument(
        "--revision",
        dest="model_revision",
        help="Hugging Face model revision for a hub id: a branch, tag or commit (the manifest records the commit)",
    )
    p.add_argument("--text-column", help="column holding the text (default: text)")
    p.add_argument("--label-column", help="column holding the label (default: label)")
    p.add_argument("--out", help="store path or URL, e.g. s3://bucket/prefix (default: ./stores/<fingerprint>)")
    add_storage_options(p)
    p.add_argument("--kinds", type=kinds_type, help="hidden,ffn (default: both)")
    p.add_argument(
        "--poolings",
        type=poolings_type,
        help="any of first,last,mean,max (default: first,mean,max for encoders; last,mean,max for decoders)",
    )
    p.add_argument("--max-length", type=positive_int, help="truncate longer examples (default: 512 or less)")
    p.add_argument("--batch-size", type=positive_int, help="examples per forward pass (default: %(default)s)")
    p.add_argument("--device", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument(
        "--dtype",
        choices=list(STORE_DTYPES),
        help="stored dtype (default: float16; out-of-range values are counted and reported)",
    )
    p.add_argument(
        "--compute-dtype",
        choices=list(COMPUTE_DTYPES),
        help="model dtype (default auto: bfloat16 on CUDA where supported, else float32)",
    )
    p.add_argument("--block-rows", type=positive_int, help="rows per committed block / shard (default: auto)")
    p.add_argument("--chunk-cols", type=positive_int, help="neurons per inner chunk (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace a store made from other inputs")
    p.add_argument(
        "--workers",
        type=positive_int,
        help="local worker processes, one model each (one GPU each if several)",
    )
    p.add_argument(
        "--shard",
        type=shard,
        metavar="I/N",
        help="be worker I of N (launch by hand on several machines or GPUs; shard 0 creates the store)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    # Every default comes from ExtractSettings: the CLI, the TOML pipeline and the Python API share them.
    p.set_defaults(func=cmd_extract, **{name: getattr(DEFAULTS, name) for name in CLI_SETTINGS})


def cmd_extract(args: argparse.Namespace) -> int:
    """Run `spin-cache extract`; returns the exit code: 0 for a complete store, 4 while it is incomplete."""
    from ..extract.run import run_extraction

    settings = ExtractSettings(
        **{name: getattr(args, name) for name in CLI_SETTINGS},
        progress=not args.quiet,
        storage_options=store_options(args, args.out) if args.out else None,
    )
    report = run_extraction(settings)
    store = report.store
    for message in report.messages:
        log.warning(message)
    if report.cache_hit:
        say(args, f"cache hit: {store.url} already holds this extraction (fingerprint {store.fingerprint[:16]})")
    else:
        what = "resumed" if report.resumed_blocks else "extracted"
        say(
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


def add_info(sub: Subcommands) -> None:
    """Add the `info` verb (a store's manifest, status and sizes) to the subcommands `sub`."""
    p = command(
        sub,
        "info",
        help="print a store's manifest and sizes",
        description="Print what produced a store (model, hashes, dataset, settings), its status and its sizes.",
    )
    p.add_argument("store", help="store path or URL (local, file://, s3://bucket/prefix)")
    add_storage_options(p)
    p.add_argument("--json", action="store_true", help="print everything as one JSON object")
    p.set_defaults(func=cmd_info)


def cmd_info(args: argparse.Namespace) -> int:
    """Run `spin-cache info`: print the store's manifest and sizes, as text or JSON; returns 0."""
    from ..store.remote import open_store

    info = open_store(args.store, store_options(args)).info()
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


def add_verify(sub: Subcommands) -> None:
    """Add the `verify` verb (re-read and check every chunk) to the subcommands `sub`."""
    p = command(
        sub,
        "verify",
        help="re-read every chunk and check checksums, row counts and the manifest",
        description=(
            "Re-read every chunk of every array (each carries a crc32c checksum), check that no chunk is "
            "missing, that the examples table matches the manifest, and that the manifest matches its fingerprint."
        ),
    )
    p.add_argument("store", help="store path or URL (local, file://, s3://bucket/prefix)")
    add_storage_options(p)
    p.add_argument("--json", action="store_true", help='print {"ok": ..., "problems": [...]} as JSON')
    p.set_defaults(func=cmd_verify)


def cmd_verify(args: argparse.Namespace) -> int:
    """Run `spin-cache verify`: one `damaged:` line per problem; returns 0 when there is none, else 1."""
    from ..store.remote import open_store

    store = open_store(args.store, store_options(args))
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


def add_push(sub: Subcommands) -> None:
    """Add the `push` verb (copy a finished store and verify the copy) to the subcommands `sub`."""
    p = command(
        sub,
        "push",
        help="copy a finished store to S3 (or another path) and verify it on arrival",
        description=(
            "Copy a complete store file by file to a path or URL, re-read every chunk that arrived (crc32c) and "
            "compare the examples table and side files byte for byte, and only then write the destination's "
            "zarr.json: a half-pushed store is never seen as a store. Pushing again to the same place is a no-op."
        ),
        epilog="example:\n  spin-cache push stores/minilm-sst2 s3://my-bucket/stores/minilm-sst2 "
        "--storage-option endpoint_url=http://127.0.0.1:9000\n\n",
    )
    p.add_argument("store", help="the finished store to copy (path or URL)")
    p.add_argument("url", help="destination path or URL, e.g. s3://bucket/prefix")
    add_storage_options(p)
    p.add_argument("--json", action="store_true", help="print the pushed store's URL and fingerprint as JSON")
    p.set_defaults(func=cmd_push)


def cmd_push(args: argparse.Namespace) -> int:
    """Run `spin-cache push`: copy the store to its destination and verify it there; returns 0."""
    from ..store.remote import is_remote, push

    store = push(
        args.store,
        args.url,
        storage_options=store_options(args) if is_remote(args.store) else None,
        dest_options=store_options(args, args.url),
        progress=not args.quiet,
    )
    if args.json:
        print(json.dumps({"store": store.url, "fingerprint": store.fingerprint, "status": store.status}))
    else:
        say(args, f"pushed and verified: {store.url} (fingerprint {store.fingerprint[:16]})")
    return 0


def add_ls(sub: Subcommands) -> None:
    """Add the `ls` verb (the stores under a directory or prefix) to the subcommands `sub`."""
    p = command(
        sub,
        "ls",
        help="list the stores under a directory or prefix",
        description=(
            "List the stores at a directory or URL prefix and one or two levels below it, with model, dataset, "
            "rows, size, status and fingerprint (read from each zarr.json; no arrays are read)."
        ),
    )
    p.add_argument("url", help="directory or URL prefix, e.g. stores or s3://bucket/stores")
    p.add_argument("--json", action="store_true", help="print the stores as a JSON list")
    add_storage_options(p)
    p.set_defaults(func=cmd_ls)


def cmd_ls(args: argparse.Namespace) -> int:
    """Run `spin-cache ls`: print the stores found, as text or JSON; returns 0."""
    from ..store.remote import format_listing, list_stores

    entries = list_stores(args.url, store_options(args, args.url))
    print(json.dumps(entries, indent=2) if args.json else format_listing(entries))
    return 0


def add_synth(sub: Subcommands) -> None:
    """Add the `synth` verb (a synthetic store with planted neurons) to the subcommands `sub`."""
    p = command(
        sub,
        "synth",
        help="write a synthetic store with planted informative neurons (for scale tests)",
        description=(
            "Write a complete store of Gaussian noise in which a few neurons of chosen layers carry the class "
            "signal. Probing must find exactly those neurons; use it to test scale without a model."
        ),
        epilog="example: spin-cache synth --out stores/synth-1m --rows 1000000 --width 1024\n\n",
    )
    p.add_argument("--out", required=True, help="store path or URL")
    p.add_argument("--rows", type=positive_int, default=10000, help="examples (default: 10000)")
    p.add_argument("--layers", type=positive_int, default=6, help="layers (default: 6)")
    p.add_argument("--width", type=positive_int, default=512, help="neurons per layer (default: 512)")
    p.add_argument(
        "--ffn-width", type=positive_int, default=None, help="FFN layers' width where it differs (default: --width)"
    )
    p.add_argument("--kinds", type=kinds_type, default=list(KINDS), help="default: hidden,ffn")
    p.add_argument("--poolings", type=poolings_type, default=["mean"], help="default: mean")
    p.add_argument("--informative", type=informative, default=None, help="LAYER:COUNT pairs (default: 3:4,5:4)")
    p.add_argument(
        "--classes", type=arg_type(Constraint("int", low=2)), default=2, help="number of classes (default: 2)"
    )
    p.add_argument(
        "--signal", type=arg_type(POSITIVE_FLOAT), default=1.0, help="signal strength in noise units (default: 1.0)"
    )
    p.add_argument("--seed", type=arg_type(NON_NEGATIVE_INT), default=0, help="default: 0")
    p.add_argument("--overwrite", action="store_true", help="replace a store made from other arguments")
    p.add_argument("--json", action="store_true", help="print the store's path, fingerprint and planted neurons")
    p.set_defaults(func=cmd_synth)


def cmd_synth(args: argparse.Namespace) -> int:
    """Run `spin-cache synth`: write the synthetic store and, with --json, its planted neurons; returns 0."""
    from ..synth import make_synthetic_store, planted_neurons

    store = make_synthetic_store(
        args.out,
        n_rows=args.rows,
        n_layers=args.layers,
        width=args.width,
        ffn_width=args.ffn_width,
        kinds=args.kinds,
        poolings=args.poolings,
        informative=args.informative,
        n_classes=args.classes,
        signal=args.signal,
        seed=args.seed,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    say(args, f"synthetic store: {store.url} ({store.layout.n_rows} rows, fingerprint {store.fingerprint[:16]})")
    if args.json:
        planted = {k: {str(layer): v for layer, v in d.items()} for k, d in planted_neurons(store).items()}
        print(json.dumps({"store": store.url, "fingerprint": store.fingerprint, "planted": planted}))
    return 0
