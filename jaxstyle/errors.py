"""The one exception type for expected failures.

Anything a user can cause (a missing file, a bad option, a corrupt weights
file) raises `JaxstyleError` with a one-line message that says what is wrong
and how to fix it. The command line prints it as ``jaxstyle: error: ...``
without a traceback; anything else is a bug and keeps its traceback.
"""


class JaxstyleError(Exception):
    """An expected failure; the message is one line for the user.

    Attributes:
      exit_code: 2 for a usage error (bad option or input), 1 for a runtime failure.
    """

    exit_code = 1


class UsageError(JaxstyleError):
    """A bad option or input, found before any compute (exit code 2)."""

    exit_code = 2


class Stopped(JaxstyleError):
    """The run was ended by a signal after saving it; the message says what was saved.

    The command line prints it without "error:", and exits with ``exit_code``
    (128 plus the signal's number: 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP).
    """

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
