"""What every command shares: the option types, the common flags, the parser boilerplate, and small output helpers."""

from __future__ import annotations

import argparse
import logging
import shlex
from pathlib import Path
from typing import Any, NoReturn, TypeAlias

from ..errors import EXIT_CODES_HELP, InputError, SpinCacheError
from ..loop.selection import CV
from ..representations import KINDS, POOLINGS
from ..validation import POSITIVE_INT, arg_type, choices_type

log = logging.getLogger("spin_cache.cli")

positive_int = arg_type(POSITIVE_INT)
kinds_type = choices_type(KINDS)
poolings_type = choices_type(POOLINGS)
LOG_LEVELS = ("debug", "info", "warning", "error")


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: the option, what is wrong, and where to read more (exit 2)."""

    def error(self, message: str) -> NoReturn:
        """Exit with status 2 after one line on stderr (no usage block): the message and a pointer to --help."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


#: The verbs' parsers (`spin-cache COMMAND`): each command module's ``add_*`` functions add their verbs to them.
Subcommands: TypeAlias = "argparse._SubParsersAction[Parser]"


def common_flags() -> Parser:
    """The flags every command takes: how much it says (-q, -v, --log-level) and whether it prints JSON."""
    common = Parser(add_help=False)
    group = common.add_argument_group("output")
    group.add_argument("-q", "--quiet", action="store_true", help="no progress bars, only warnings and errors")
    group.add_argument("-v", "--verbose", action="store_true", help="also debug messages")
    group.add_argument("--log-level", choices=LOG_LEVELS, default=None, help="message level (default: info)")
    return common


COMMON = common_flags()


def command(sub: Subcommands, name: str, *, help: str, description: str, epilog: str = "") -> argparse.ArgumentParser:
    """Add one verb: its help, its description, its examples, the exit codes, and the common flags."""
    return sub.add_parser(
        name,
        help=help,
        description=description,
        epilog=(epilog + "\n\n" if epilog else "") + EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[COMMON],
    )


def log_level(args: argparse.Namespace) -> int:
    """The logging level the flags ask for: --log-level wins, then -v, then -q; info by default."""
    if getattr(args, "log_level", None):
        level: int = getattr(logging, args.log_level.upper())
        return level
    if getattr(args, "verbose", False):
        return logging.DEBUG
    return logging.WARNING if getattr(args, "quiet", False) else logging.INFO


def say(args: argparse.Namespace, text: str) -> None:
    """A message for people on stderr (through logging, so -q, -v and --log-level govern it)."""
    del args  # the level was set from the flags once, in main
    log.info(text)


def memory_budget(text: str) -> int:
    """argparse type: a size like 8G, 512MiB or 2000000000, in bytes."""
    from ..loop.parallel import parse_bytes

    try:
        return parse_bytes(text)
    except SpinCacheError as exc:
        raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[-1]) from None


def add_storage_options(p: argparse.ArgumentParser) -> None:
    """Add --storage-option KEY=VALUE (fsspec options for a remote store, repeatable) to the parser `p`."""
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


def store_options(args: argparse.Namespace, url: str | None = None) -> dict[str, Any] | None:
    """The storage options for `url` (default: the command's store): the flags plus $AWS_ENDPOINT_URL for s3."""
    from ..store.remote import parse_storage_options, resolve_storage_options

    return resolve_storage_options(url or args.store, parse_storage_options(args.storage_options))


def solver_device_name(text: str) -> str:
    """--device of probe and sweep: a device name this machine has (checked here, so the command stops before any
    work with argparse's one-line error)."""
    from ..fit.solver import solver_device

    try:
        solver_device(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_scheduler(p: argparse.ArgumentParser) -> None:
    """Add the loop's options of where to run to the parser `p`: --scheduler, --workers, --dashboard and --device."""
    p.add_argument(
        "--scheduler",
        default=None,
        help="sync, threads (default), processes or a dask.distributed address tcp://HOST:PORT "
        "(also $SPIN_CACHE_SCHEDULER)",
    )
    p.add_argument("--workers", type=positive_int, default=None, help="local workers (default: one per core)")
    p.add_argument(
        "--dashboard",
        nargs="?",
        const="127.0.0.1:8787",
        default=None,
        metavar="ADDR",
        help="serve the Dask dashboard of a local cluster at ADDR (default when given: 127.0.0.1:8787; ':PORT' "
        "listens on every interface; needs bokeh). Without it nothing listens beyond loopback",
    )
    p.add_argument(
        "--device",
        type=solver_device_name,
        default=None,
        help="where the solver fits: cpu (default), cuda, cuda:N or auto (CUDA when present); the columns are read "
        "on the CPU and copied there",
    )


def shard(value: str) -> tuple[int, int]:
    """argparse type: ``I/N`` (worker I of N, 0 <= I < N) as the pair (I, N)."""
    try:
        i, n = (int(v) for v in value.split("/"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected I/N like 0/4, got {value!r}") from exc
    if n < 1 or not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N, got {value!r}")
    return i, n


def informative(value: str) -> dict[int, int]:
    """argparse type: ``LAYER:COUNT`` pairs like ``3:4,5:4`` as {layer: planted neurons}."""
    try:
        pairs = [item.split(":") for item in value.split(",") if item.strip()]
        planted = {int(layer): int(n) for layer, n in pairs}
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected LAYER:COUNT pairs like 3:4,5:4, got {value!r}") from exc
    if not planted or any(layer < 0 or n < 1 for layer, n in planted.items()):
        raise argparse.ArgumentTypeError(f"expected LAYER:COUNT pairs with LAYER >= 0 and COUNT >= 1, got {value!r}")
    return planted


def percent(value: float | None) -> str:
    """A metric as a percentage; "-" where there is none (no test split: null in summary.json, NaN in memory)."""
    return "-" if value is None or value != value else f"{100 * value:.2f}"


def format_table(table: dict[str, Any], metric: str = "accuracy") -> str:
    """The Base / best single layer / SPIN / random control table, for people; under it, how SPIN was chosen: its
    dev score, the score to expect on new data and how many heads were compared (a sweep's "chosen_by")."""
    chosen = table.get("chosen_by") or {}
    strategy = chosen.get("strategy", "argmax")
    rows = [
        ("Base (last layer, all neurons)", table.get("base")),
        ("Best single-layer probe", table.get("best_single_layer")),
        (_spin_row_name(strategy), table.get("spin")),
        ("Random control (SPIN's counts)", table.get("random_control")),
    ]
    lines = [f"{'':32s} {'dev ' + metric:>16s} {'test ' + metric:>16s} {'neurons':>9s} {'share':>8s}"]
    for name, r in rows:
        if r is None:
            continue
        lines.append(
            f"{name:32s} {percent(r['dev']):>16s} {percent(r['test']):>16s} {r['n_neurons']:9d} "
            f"{100 * r['share']:7.2f}%"
        )
    s = table["spin"]
    lines.append(
        f"SPIN: {s['kind']}/{s['pooling']}, {s['rule']} {s['value']:g}, layers {s['layers'][0]}-"
        f"{s['layers'][-1]}, C {s['C']:g}; head exported to {table.get('head')}"
    )
    if chosen:
        se = chosen.get("expected_se")
        plus = f" ± {100 * se:.2f}" if isinstance(se, float) and se == se else ""
        if strategy == CV:
            how = (f"{chosen.get('n_compared')} heads compared on {chosen.get('n_resamples')} folds of the training "
                   f"rows, cross-validated {percent(chosen.get('cv_score'))}; dev was not used to choose, so its "
                   "dev score is the estimate")  # fmt: skip
            by = f"cv ({chosen.get('n_resamples')} folds)"
        else:
            how = (f"{chosen.get('n_compared')} heads compared; {chosen.get('expected_method')} estimate, the choice "
                   "re-run on resampled dev rows")  # fmt: skip
            by = str(strategy)
        lines.append(
            f"SPIN chosen by {by}: dev {percent(chosen.get('chosen_dev'))} | expected "
            f"{percent(chosen.get('expected'))}{plus} on new data ({how})"
        )
    return "\n".join(lines)


def _spin_row_name(strategy: str) -> str:
    if strategy == "argmax":
        return "SPIN (best on dev)"
    return "SPIN (cross-validated)" if strategy == CV else f"SPIN ({strategy} on dev)"


def command_line(args: argparse.Namespace) -> str:
    """The command line that was run, quoted for a shell (``spin-cache`` and its arguments)."""
    return shlex.join(["spin-cache", *getattr(args, "argv", [])])


def record_command(args: argparse.Namespace, out: str | Path) -> None:
    """Each stage's output directory keeps the command line that made it (the report shows them)."""
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    (path / "command.txt").write_text(command_line(args) + "\n")
