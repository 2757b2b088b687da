"""Errors the CLI turns into one-line messages with the right exit code."""


class PosetuneError(Exception):
    """Base class: the message is shown to the user as it is, one line, naming the fix."""

    exit_code = 1


class UsageError(PosetuneError):
    """Bad usage or bad input (a missing file, an unknown option value): exit code 2."""

    exit_code = 2


class InvalidOption(UsageError, ValueError):
    """An option value outside what the command accepts (exit code 2). Also a ValueError, as scikit-learn's
    InvalidParameterError is, so Python callers may catch either."""


class CheckFailed(PosetuneError):
    """The job ran and found a problem (e.g. ``data check``): exit code 1."""

    exit_code = 1
