"""Exception handlers for the `handler=` arguments of pipeline stages.

A handler is called with the exception a stage hit on one sample and decides what happens next:

- it raises (the exception propagates and the iteration ends with it),
- it returns True (the sample is skipped and the stage goes on with the next one),
- it returns False (the stage stops quietly, as if its input had ended).

The names and return values are those of `webdataset.handlers`.
"""

from __future__ import annotations

import warnings
from typing import NoReturn

__all__ = [
    "reraise_exception",
    "ignore_and_continue",
    "warn_and_continue",
    "ignore_and_stop",
    "warn_and_stop",
]


def reraise_exception(exn: BaseException) -> NoReturn:
    """Raise `exn` again: the default, errors are never hidden."""
    raise exn


def ignore_and_continue(exn: BaseException) -> bool:
    """Skip the failing sample silently and continue."""
    return True


def warn_and_continue(exn: BaseException) -> bool:
    """Issue a `UserWarning` with `repr(exn)`, skip the failing sample and continue.

    Unlike webdataset, this does not sleep half a second after each warning.
    """
    warnings.warn(repr(exn), stacklevel=2)
    return True


def ignore_and_stop(exn: BaseException) -> bool:
    """Stop the stage silently, as if its input had ended."""
    return False


def warn_and_stop(exn: BaseException) -> bool:
    """Issue a `UserWarning` with `repr(exn)` and stop the stage, as if its input had ended.

    Unlike webdataset, this does not sleep half a second after the warning.
    """
    warnings.warn(repr(exn), stacklevel=2)
    return False
