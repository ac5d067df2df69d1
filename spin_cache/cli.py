"""The `spin-cache` command: a thin layer over the Python API. Each verb is one function below."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence

from . import __version__
from .errors import SpinCacheError

EXIT_CODES = """exit codes:
  0  success (for verify: no damage found)
  1  failure (for verify: damage found; the lines above name each array and chunk)
  2  bad input or usage: a file, row, column or option that cannot be used as given
  3  an existing store or run was made from other inputs (see --overwrite)
  4  a store, run or head is damaged or incomplete
"""


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _say(args: argparse.Namespace, text: str) -> None:
    if not getattr(args, "quiet", False):
        print(text, file=sys.stderr)


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
            "  spin-cache extract --model ./my-gpt2 --train tr.jsonl --dev dev.jsonl --test te.jsonl\n\n" + EXIT_CODES
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
    p.add_argument("--out", help="store path or URL (default: ./stores/<fingerprint>)")
    p.add_argument("--kinds", type=_csv, default=["hidden", "ffn"], help="hidden,ffn (default: both)")
    p.add_argument(
        "--poolings",
        type=_csv,
        default=None,
        help="any of first,last,mean,max (default: first,mean,max for encoders; last,mean,max for decoders)",
    )
    p.add_argument("--max-length", type=int, default=None, help="truncate longer examples (default: 512 or less)")
    p.add_argument("--batch-size", type=int, default=32, help="examples per forward pass (default: 32)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument(
        "--dtype",
        default="float16",
        choices=["float16", "bfloat16", "float32"],
        help="stored dtype (default: float16; out-of-range values are counted and reported)",
    )
    p.add_argument("--compute-dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="model dtype")
    p.add_argument("--block-rows", type=int, default=None, help="rows per committed block / shard (default: auto)")
    p.add_argument("--chunk-cols", type=int, default=64, help="neurons per inner chunk (default: 64)")
    p.add_argument("--overwrite", action="store_true", help="replace a store made from other inputs")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    p.set_defaults(func=_cmd_extract)


def _cmd_extract(args: argparse.Namespace) -> int:
    from .extract import run_extraction

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
    p.add_argument("store", help="store path or URL")
    p.add_argument("--json", action="store_true", help="print everything as one JSON object")
    p.set_defaults(func=_cmd_info)


def _cmd_info(args: argparse.Namespace) -> int:
    from .store import ActivationStore

    info = ActivationStore.open(args.store).info()
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
    p.add_argument("store", help="store path or URL")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_verify)


def _cmd_verify(args: argparse.Namespace) -> int:
    from .store import ActivationStore

    store = ActivationStore.open(args.store)
    problems = store.verify(progress=not args.quiet)
    for line in problems:
        print(f"damaged: {line}")
    if problems:
        print(f"spin-cache: {len(problems)} problem(s) in {store.url}", file=sys.stderr)
        return 1
    status = "" if store.is_complete else f" (incomplete: {store.count_committed()}/{store.layout.n_blocks} blocks)"
    print(f"ok: {store.url}{status}")
    return 0


# ---- entry point ---------------------------------------------------------------------------------------------

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_extract, _add_info, _add_verify]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spin-cache",
        description=(
            "Turn a frozen transformer into a text classifier by reading its internal neurons (SPIN, Jiao et al. "
            "2024). `extract` runs the model once into a store; everything after it works on the store alone."
        ),
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"spin-cache {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SpinCacheError as exc:
        print(f"spin-cache: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("spin-cache: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
