"""The one exception family for problems a user can fix, and the CLI edge that prints them."""

from __future__ import annotations

import sys
from typing import Callable, NoReturn


class WrapperError(Exception):
    """Something the user can fix: the message says what is wrong, `hint` how to fix it."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ManifestError(WrapperError):
    """A route manifest (file, env var or static routes) is malformed."""


class ServiceError(WrapperError):
    """A wrapped service did not start, exited, or did not answer in time."""


def fail(message: str, hint: str | None = None) -> NoReturn:
    raise WrapperError(message, hint)


def run_cli(main: Callable[[], int | None], debug: bool = False, prog: str = "chutes-wrappers") -> NoReturn:
    """Run a CLI `main`, turning WrapperError into one line on stderr and exit 1.

    Tracebacks are shown only with debug=True (the CLIs pass their --debug flag).
    KeyboardInterrupt exits 130 without a traceback.
    """
    try:
        code = main()
    except WrapperError as exc:
        if debug:
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
