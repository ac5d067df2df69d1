"""The commands that use an exported head: predict and explain."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..extract.settings import COMPUTE_DTYPES
from .options import (
    Subcommands,
    command,
    positive_int,
)


def add_predict(sub: Subcommands) -> None:
    """Add the `predict` verb (a head's predictions on new texts) to the subcommands `sub`."""
    p = command(
        sub,
        "predict",
        help="classify text with an exported head (early exit at its deepest layer)",
        description=(
            "Load a head exported by `spin-cache sweep` and its model (checked against the head's hashes), run "
            "the model only up to the deepest selected layer and print labels and class probabilities."
        ),
        epilog="examples:\n  spin-cache predict runs/sweep/head --text 'a gripping, funny film'\n"
        "  spin-cache predict runs/sweep/head --data new.csv --out preds.csv\n\n",
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
    p.add_argument("--batch-size", type=positive_int, default=32, help="texts per forward pass (default: 32)")
    p.add_argument(
        "--max-tokens",
        type=positive_int,
        default=None,
        help="batch by a budget of padded tokens (rows x longest row) instead of --batch-size; input order kept",
    )
    p.add_argument(
        "--compute-dtype",
        choices=list(COMPUTE_DTYPES),
        default="auto",
        help="dtype the model runs in (default auto: the store's on CUDA, float32 on the CPU)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object with every prediction")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    """Run `spin-cache predict`: write one prediction per text where --out and --format say; returns 0."""
    from ..serve.predict import run_predict

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
        max_tokens=args.max_tokens,
        compute_dtype=args.compute_dtype,
        progress=not args.quiet and sys.stderr.isatty(),
    )
    return 0


def add_explain(sub: Subcommands) -> None:
    """Add the `explain` verb (the tokens and layers one prediction rests on) to the subcommands `sub`."""
    p = command(
        sub,
        "explain",
        help="which tokens (and layers) a prediction rests on",
        description=(
            "Split the head's logit for a text into per-token and per-layer contributions. For mean pooling the "
            "split is exact (the contributions and the constant add up to the logit); for max pooling each "
            "neuron is credited to the token that gave its maximum; for first/last pooling one token carries all."
        ),
    )
    p.add_argument("head", help="head directory")
    p.add_argument("--text", required=True, help="the text to explain")
    p.add_argument("--model", default=None, help="model directory (default: the one recorded in the head)")
    p.add_argument("--label", default=None, help="explain this class's logit (default: the predicted class)")
    p.add_argument("--html", default=None, help="also write a small HTML page to this file")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default: cpu)")
    p.add_argument("--json", action="store_true", help="print the explanation as JSON")
    p.add_argument("--no-color", action="store_true", help="no ANSI colours (also when $NO_COLOR is set)")
    p.set_defaults(func=cmd_explain)


def cmd_explain(args: argparse.Namespace) -> int:
    """Run `spin-cache explain`: print the explanation (terminal or JSON), with --html also a page; returns 0."""
    from ..serve.explain import explain

    result = explain(args.head, args.text, model=args.model, device=args.device, label=args.label)
    if args.html:
        Path(args.html).write_text(result.to_html(), encoding="utf-8")
    if args.json:
        print(result.to_json())
    else:
        color = not args.no_color and sys.stdout.isatty() and "NO_COLOR" not in os.environ
        print(result.to_terminal(color=color))
    return 0
