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
