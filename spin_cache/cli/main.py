"""The `spin-cache` command: a thin layer over the Python API.

Each verb is a pair of functions in one of the ``*_commands`` modules: ``add_<verb>`` declares its options,
``cmd_<verb>`` calls the library and prints. This module builds the parser and turns every failure into one line and
an exit code (:data:`spin_cache.errors.EXIT_CODES`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .. import __version__
from ..errors import EXIT_CODES_HELP, SpinCacheError
from . import loop_commands, serve_commands, store_commands
from .options import Parser, Subcommands, command_line, log_level

COMMANDS: list[Callable[[Subcommands], None]] = [
    store_commands.add_extract,
    store_commands.add_info,
    store_commands.add_verify,
    store_commands.add_push,
    store_commands.add_ls,
    loop_commands.add_probe,
    loop_commands.add_sweep,
    serve_commands.add_predict,
    loop_commands.add_run,
    loop_commands.add_report,
    serve_commands.add_explain,
    store_commands.add_synth,
]


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: every verb with its options, examples and exit codes."""
    parser = Parser(
        prog="spin-cache",
        description=(
            "Turn a frozen transformer into a text classifier by reading its internal neurons (SPIN, Jiao et al. "
            "2024). `extract` runs the model once into a store; everything after it works on the store alone."
        ),
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"spin-cache {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for add in COMMANDS:
        add(sub)
    return parser


def setup_logging(level: int) -> None:
    """spin-cache's messages on stderr as `spin-cache: ...` lines; warnings say so. Progress bars are separate."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Format())
    root = logging.getLogger("spin_cache")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:  # docstring inherited
        tag = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        return (
            f"spin-cache: {tag}{record.getMessage()}" if tag or record.name != "spin_cache.cli" else record.getMessage()
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code. No traceback reaches the user."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # usage errors (one line, exit 2), --help and --version: a code, as for every verb
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    args.argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging(log_level(args))
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
    from ..errors import InputError
    from ..store.remote import remote_error

    known = remote_error(exc, getattr(args, "store", None) or getattr(args, "url", None))
    if known is not None:  # storage failures, and local permission/space errors with their advice
        return known
    filename = exc.filename if isinstance(exc, OSError) else None
    if isinstance(exc, OSError) and filename is not None and "://" not in str(filename):  # any other local file
        what = (exc.strerror or type(exc).__name__).lower()
        return InputError(f"{filename}: {what}; check the path")
    return None


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
        f"spin-cache {__version__}\ncommand: {command_line(args)}\n\n{traceback.format_exc()}", encoding="utf-8"
    )
    return path


if __name__ == "__main__":
    sys.exit(main())
