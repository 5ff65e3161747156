"""User-facing errors: the CLI prints them as one line and exits non-zero."""


class CalibError(Exception):
    """An error caused by the user's input or environment, shown without a traceback."""

    exit_code = 2


class MissingDependency(CalibError):
    """An optional dependency is not installed."""

    def __init__(self, package: str, purpose: str, install: str | None = None):
        hint = install or f"pip install {package}"
        super().__init__(f"{purpose} needs the '{package}' package: {hint}")
