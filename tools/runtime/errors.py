"""Every exception of chutes-wrappers, one rooted tree, and the CLI edge that prints them.

    ChutesWrappersError         the root: `except ChutesWrappersError` catches everything of ours
    ├── WrapperError            something the user can fix; `hint` says how; `run_cli` prints it as one line
    │   ├── UsageError          a command-line argument that cannot be what it names (exit 2, as bad flags)
    │   ├── ManifestError       a route manifest, static routes or route overrides are malformed
    │   ├── ServiceError        the wrapped service did not start, exited, or did not answer in time
    │   ├── SpecError           a service's OpenAPI document cannot be used
    │   ├── EngineError         the container engine is missing, not running, or refused a request
    │   ├── APIError            the Chutes API refused or failed a request (`status`: its HTTP status)
    │   └── ImageConfigError    an argument of build_wrapper_image cannot go into a Dockerfile (a ValueError too)
    ├── BadRequest              a caller's JSON cannot become the upstream request: the cord answers 400
    ├── CallFailed              a Gradio call that ends in an error answer (its HTTP status and detail)
    ├── UpstreamBroke           the service broke off an answer the caller was already receiving
    ├── UndecodableBody         a compressed answer of the service that does not decode (a malformed answer)
    ├── NotGradio               what a URL serves is not a Gradio app this toolkit can call (discovery
    │                           then treats it as any other service)
    ├── Interrupted             SIGINT/SIGTERM arrived during work that finishes its cleanup first
    └── InstanceOutcome         how the local gateway (tools/platform/gateway.py) judges an instance's
        │                       answer, as the Chutes API does (chutes-api api/chute/util.py `_invoke_one`)
        ├── InstanceFailure     counts toward disabling the instance
        ├── InstanceRateLimit   429: not a failure
        └── MinerBadRequest     400: the caller's, not a failure

Only WrapperErrors are printed (one line, exit 1; a UsageError exits 2); the caller's and the service's errors are answered
over HTTP, never printed. `Interrupted` ends a CLI like Ctrl-C does (exit 130).
"""

from __future__ import annotations

import signal
import sys
from typing import Callable, NoReturn


class ChutesWrappersError(Exception):
    """The root of every exception of chutes-wrappers."""


class WrapperError(ChutesWrappersError):
    """Something the user can fix: the message says what is wrong, `hint` how to fix it."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(WrapperError):
    """An argument that cannot be what it names (a deploy module name no file can have): exit 2,
    as deploy.sh exits for a bad flag."""

    exit_code = 2


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


class NotGradio(ChutesWrappersError):
    """What a URL serves is not a Gradio app (or not one this toolkit can call)."""


class CallFailed(ChutesWrappersError):
    """A call of a Gradio function that ends in an error answer: its status and detail."""

    def __init__(self, status: int, detail: str, **extra: object):
        super().__init__(detail)
        self.status, self.detail, self.extra = status, detail, extra


class BadRequest(ChutesWrappersError):
    """The caller's JSON cannot be turned into the upstream request: the cord answers 400."""


class UpstreamBroke(ChutesWrappersError):
    """The service's answer ended abnormally after the caller's answer had started: raised inside the
    answer's body, so the server ends the response abnormally and a cut stream never looks complete.
    `status` is what a caller gets when the answer had not started yet (502, or 504 for a timeout)."""

    def __init__(self, detail: str, status: int = 502):
        super().__init__(detail)
        self.status = status


class UndecodableBody(ChutesWrappersError, ValueError):
    """A service's answer whose content coding (gzip, deflate, br, zstd) does not decode: the
    service's fault, answered as a malformed answer (tools/runtime/cords/answer.py)."""


class Interrupted(ChutesWrappersError):
    """A signal arrived while work that must finish its cleanup was running."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class InstanceOutcome(ChutesWrappersError):
    """How one call to an instance ended, when it did not end well (the local gateway's judgement)."""


class InstanceFailure(InstanceOutcome):
    """Anything `invoke` catches that is not RATE_LIMIT or BAD_REQUEST: counts toward disabling the instance."""


class InstanceRateLimit(InstanceOutcome):
    """`_invoke_one`: miner status 429 -> InstanceRateLimit (error "RATE_LIMIT", not a failure)."""


class MinerBadRequest(InstanceOutcome):
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
        sys.exit(getattr(exc, "exit_code", 1))
    except (KeyboardInterrupt, Interrupted):
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
