"""Every exception of chutes-wrappers, and the CLI edge that prints them.

The family (the WrapperErrors say what is wrong and, in `hint`, how to fix it)::

    WrapperError            something the user can fix; caught once by `run_cli`, printed as one line
    ├── ManifestError       a route manifest, static routes or route overrides are malformed
    ├── ServiceError        the wrapped service did not start, exited, or did not answer in time
    ├── SpecError           a service's OpenAPI document cannot be used
    ├── EngineError         the container engine is missing, not running, or refused a request
    ├── APIError            the Chutes API refused or failed a request (`status`: its HTTP status)
    └── ImageConfigError    an argument of build_wrapper_image cannot go into a Dockerfile
    NotGradio               what a URL serves is not a Gradio app this toolkit can call (discovery
                            then treats it as any other service)
    CallFailed              a Gradio call that ends in an error answer (its HTTP status and detail)
    BadRequest              a caller's JSON cannot become the upstream request (a cord answers 400)
    UpstreamBroke           the service broke off an answer the caller was already receiving
    Interrupted             SIGINT/SIGTERM arrived during work that finishes its cleanup first
    InstanceFailure, InstanceRateLimit, MinerBadRequest
                            how the local gateway (tools/platform/gateway.py) judges an instance's answer, as
                            the Chutes API does (chutes-api api/chute/util.py `_invoke_one`)

`BadRequest` is not a WrapperError: it is the caller's mistake, answered over HTTP, never printed.
`Interrupted` ends a CLI like Ctrl-C does (exit 130).
"""

from __future__ import annotations

import signal
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
    """A route manifest (file, env var, static routes or overrides) is malformed."""


class ServiceError(WrapperError):
    """A wrapped service did not start, exited, or did not answer in time."""


class SpecError(WrapperError):
    """A service's OpenAPI document cannot be used (invalid JSON/YAML, no paths, unknown version)."""


class EngineError(WrapperError):
    """The container engine is missing, not running, or refused what we asked."""


class APIError(WrapperError):
    """The Chutes API refused or failed a request."""

    def __init__(self, message: str, hint: str | None = None, status: int | None = None):
        super().__init__(message, hint)
        self.status = status


class ImageConfigError(WrapperError, ValueError):
    """An argument of build_wrapper_image cannot go into a Dockerfile (bad env key/value, package...)."""


class NotGradio(Exception):
    """What a URL serves is not a Gradio app (or not one this toolkit can call)."""


class CallFailed(Exception):
    """A call of a Gradio function that ends in an error answer: its status and detail."""

    def __init__(self, status: int, detail: str, **extra: object):
        super().__init__(detail)
        self.status, self.detail, self.extra = status, detail, extra


class BadRequest(Exception):
    """The caller's JSON cannot be turned into the upstream request: the cord answers 400."""


class UpstreamBroke(Exception):
    """The service's answer ended abnormally after the caller's answer had started: raised inside the
    answer's body, so the server ends the response abnormally and a cut stream never looks complete.
    `status` is what a caller gets when the answer had not started yet (502, or 504 for a timeout)."""

    def __init__(self, detail: str, status: int = 502):
        super().__init__(detail)
        self.status = status


class Interrupted(Exception):
    """A signal arrived while work that must finish its cleanup was running."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class InstanceFailure(Exception):
    """Anything `invoke` catches that is not RATE_LIMIT or BAD_REQUEST: counts toward disabling the instance."""


class InstanceRateLimit(Exception):
    """`_invoke_one`: miner status 429 -> InstanceRateLimit (error "RATE_LIMIT", not a failure)."""


class MinerBadRequest(Exception):
    """`_invoke_one`: miner status 400 -> BadRequest("Invalid request: " + text) (not a failure)."""


def run_cli(main: Callable[[], int | None], debug: bool = False, prog: str = "chutes-wrappers") -> NoReturn:
    """Run a CLI `main`, turning WrapperError into one line on stderr and exit 1.

    Tracebacks are shown only with debug=True (the CLIs pass their --debug flag).
    KeyboardInterrupt and Interrupted exit 130 without a traceback.
    """
    try:
        code = main()
    except WrapperError as exc:
        if debug:
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except (KeyboardInterrupt, Interrupted):
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
