"""Errors that the command line turns into one line and a non-zero exit code."""


class SpinCacheError(Exception):
    """Base class: the message is complete, one line, and says what to do."""

    exit_code = 1


class InputError(SpinCacheError):
    """Bad user input: a file, row, column or option that cannot be used as given."""

    exit_code = 2


class StoreMismatchError(SpinCacheError):
    """An existing store or run was made from other inputs than the ones given."""

    exit_code = 3


class IntegrityError(SpinCacheError):
    """A store, run or head is damaged or incomplete."""

    exit_code = 4


class StoreBusyError(SpinCacheError):
    """The store is being written by another process; the message names the lock and its holder."""

    exit_code = 5


#: Every exit code of the command line and what it means: the one source for `--help`, the README and the code.
EXIT_CODES: dict[int, str] = {
    0: "success (for verify: no damage found)",
    1: "failure (for verify: damage found; the lines above name each array and chunk); an unexpected error "
    "prints one line and the path of a log file holding the traceback",
    InputError.exit_code: "bad input or usage: a file, row, column or option that cannot be used as given",
    StoreMismatchError.exit_code: "an existing store or run was made from other inputs (see --overwrite)",
    IntegrityError.exit_code: "a store, run or head is damaged or incomplete",
    StoreBusyError.exit_code: "the store is being written by another process (the message names it)",
    130: "interrupted (Ctrl-C); rerun the same command to resume",
}

EXIT_CODES_HELP = "exit codes:\n" + "".join(f"  {code:<3d} {text}\n" for code, text in EXIT_CODES.items())
