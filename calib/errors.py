"""Errors. Two kinds, told apart by class, never by message:

- `CalibError`: caused by the user's input or environment (a missing file, a bad option, a cache
  that does not match). The CLI prints it as one line and exits with its `exit_code`.
- `InternalError`: a broken invariant inside calib (a bug). It is NOT a CalibError: the CLI lets
  it through with its traceback, because a one-liner would hide what needs fixing.

`Note` is not an error: a warning category for what calib chose on the user's behalf (where
`--device auto` runs), printed by the CLI as one "note: ..." line.
"""


class CalibError(Exception):
    """An error caused by the user's input or environment, shown without a traceback."""

    exit_code = 2


class MissingDependency(CalibError):
    """An optional dependency is not installed."""

    def __init__(self, package: str, purpose: str, install: str | None = None):
        hint = install or f"pip install {package}"
        super().__init__(f"{purpose} needs the '{package}' package: {hint}")


class InternalError(RuntimeError):
    """A broken invariant inside calib: a bug to report, shown with its traceback."""


class Note(UserWarning):
    """A choice calib made for the user, said in one line (the CLI prints "note: ..."): a warning
    category, so a library caller can filter it like any warning."""
