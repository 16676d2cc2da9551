"""Run a deploy module's chute the way `chutes run` runs it on a GPU node (chutes 0.6.9), on loopback.

On a node, `chutes run` (chutes/entrypoint/run.py `run_chute` -> `_run_chute`) imports the module,
runs `Chute.initialize` (startup hooks, then every cord mounted at its internal `cord.path` with
method POST: chutes/chute/base.py), installs `GraValMiddleware` (signature check, path and body
decryption into `request.state.decrypted`, `request.state._encrypt` for the answer, a concurrency
limit; calls from 127.0.0.1 bypass all of it), adds the validator's `/_...` endpoints and serves
the app with hypercorn. Here the SDK's own `run_chute` does all of that. Only what needs the
validator, a GPU or the aegis native library is replaced, at the five patch points of
`install_stand_ins` (each says which SDK function it replaces and why):

  1. `run.aegis_encrypt` / `run.aegis_decrypt`: AES-256-GCM with a key both sides know
     (`PlatformKey`), instead of aegis's session key negotiated with the validator.
  2. `_shared.miner`: the SDK's own plain `TeeMiner` holder carrying a local validator identity,
     instead of graval's GPU-bound `Miner()`; the real `authenticate_request` then checks real
     sr25519 signatures made by the local gateway (tools/platform/gateway.py).
  3. `run.DevMiddleware`: `run_chute(dev=True)` is the one switch that skips the node's
     attestation prelude; the middleware it would install is replaced by the real `GraValMiddleware`.
  4. `run.load_chute`: undoes the `CHUTES_DEV_MODE=true` that dev=True sets (it would mount cords
     at their public paths), and records the chute for point 3.
  5. `chute.initialize`: a startup failure exits at once (one line, status 1) instead of
     `_logged_run`'s 60 s sleep before exiting; and a normal stop is not logged as a crash.

TLS is absent: the node's mTLS certificate comes from aegis, which is not loaded, so `run_chute`
serves plain HTTP. Callers must connect from a loopback address other than 127.0.0.1 (the gateway
binds 127.0.0.2), or GraValMiddleware lets them through unchecked.

  python -m tools.runtime.sdk.node deploy_example:chute --host 127.0.0.1 --port 8000   # key in $CHUTES_LOCAL_PLATFORM_KEY

Importing this module does not import the SDK: the gateway uses `PlatformKey` from here.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tools.runtime.constants import DEFAULT_CHUTE_PORT, EXECUTION_CONTEXT_ENV, REMOTE, chute_ports
from tools.runtime.ports import ensure_free
from tools.runtime.sdk import keys
from tools.runtime.sdk.chute import unwrap


# The stand-in secret: 64 hex digits, in the environment of both the node and the gateway (never on
# a command line). `start_platform` generates one per run.
KEY_ENV = "CHUTES_LOCAL_PLATFORM_KEY"
# The address the gateway calls from: anything in 127.0.0.0/8 but 127.0.0.1 (GraValMiddleware.dispatch
# lets 127.0.0.1 bypass authentication and decryption: "Localhost bypasses encryption").
GATEWAY_SOURCE_ADDRESS = "127.0.0.2"
_NONCE = 12  # AES-GCM nonce, sent in front of the ciphertext (aegis: "AES-256-GCM", +12 nonce +16 tag)
# The API pads the encrypted path to 24 characters with "?" (chutes-api api/chute/util.py
# `_invoke_one`: `path.ljust(24, "?")`); GraValMiddleware.dispatch strips them (`.rstrip("?")`).
PATH_PAD = 24


@dataclass(frozen=True)
class PlatformKey:
    """The secret shared by the local node and gateway: the session key, and the validator's seed."""

    secret: bytes

    @classmethod
    def generate(cls) -> "PlatformKey":
        return cls(secrets.token_bytes(32))

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "PlatformKey":
        value = (environ if environ is not None else os.environ).get(KEY_ENV, "")
        try:
            secret = bytes.fromhex(value)
        except ValueError:
            secret = b""
        if len(secret) != 32:
            from tools.runtime.errors import WrapperError

            raise WrapperError(f"{KEY_ENV} must hold 64 hex digits", "the local platform's shared key: start_platform sets it")
        return cls(secret)

    @property
    def hex(self) -> str:
        return self.secret.hex()

    def __repr__(self) -> str:  # never print the secret
        return "PlatformKey(<secret>)"

    # -- crypto: what aegis_encrypt / aegis_decrypt do with the session key --------------------------

    @cached_property
    def _aead(self) -> AESGCM:
        return AESGCM(hashlib.sha256(b"session:" + self.secret).digest())

    def encrypt(self, plaintext: bytes) -> bytes:
        nonce = secrets.token_bytes(_NONCE)
        return nonce + self._aead.encrypt(nonce, plaintext, None)

    def decrypt(self, ciphertext: bytes) -> bytes | None:
        """The plaintext, or None when the ciphertext is not ours (as aegis_decrypt answers)."""
        if len(ciphertext) < _NONCE + 16:
            return None
        try:
            return self._aead.decrypt(ciphertext[:_NONCE], ciphertext[_NONCE:], None)
        except InvalidTag:
            return None

    # -- identities: the validator signs, the node verifies (authenticate_request) -----------------

    @cached_property
    def validator(self) -> Any:
        return keys.from_seed(hashlib.sha256(b"validator:" + self.secret).hexdigest())

    @cached_property
    def miner_ss58(self) -> str:
        return keys.from_seed(hashlib.sha256(b"miner:" + self.secret).hexdigest()).ss58_address

    # -- the wire forms the gateway produces and reads --------------------------------------------

    def encrypt_path(self, path: str) -> str:
        """`/<hex>`: what GraValMiddleware.dispatch decrypts with `bytes.fromhex(path[1:])`."""
        return "/" + self.encrypt(("/" + path.lstrip("/")).ljust(PATH_PAD, "?").encode()).hex()

    def encrypt_body(self, payload: Any) -> str:
        """Base64 of the encrypted gzip of the JSON: GraValMiddleware._dispatch's request body."""
        import orjson

        return base64.b64encode(self.encrypt(gzip.compress(orjson.dumps(payload)))).decode()

    def decrypt_answer(self, text: str | bytes) -> bytes:
        """Undo `request.state._encrypt` (gzip, encrypt, base64); raises ValueError when it is not ours."""
        try:
            raw = base64.b64decode(text)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"not base64: {exc}") from None
        plain = self.decrypt(raw)
        if plain is None:
            raise ValueError("decryption failed")
        try:
            return gzip.decompress(plain)
        except (OSError, EOFError) as exc:
            raise ValueError(f"not gzip: {exc}") from None

    def sign(self, payload: str | None) -> dict[str, str]:
        """The validator's headers (chutes-api api/miner_client.py `sign_request`)."""
        nonce = str(int(time.time()))
        digest = hashlib.sha256(payload.encode()).hexdigest() if payload else "chutes"
        message = f"{self.miner_ss58}:{self.validator.ss58_address}:{nonce}:{digest}"
        return {
            "X-Chutes-Validator": self.validator.ss58_address,
            "X-Chutes-Miner": self.miner_ss58,
            "X-Chutes-Nonce": nonce,
            "X-Chutes-Signature": self.validator.sign(message.encode()).hex(),
        }


# --------------------------------------------------------------------------------------------------
# The patch points

_ORIGINALS: dict[str, Any] = {}


def install_stand_ins(key: PlatformKey) -> None:
    """Patch the SDK so that `run_chute(dev=True)` serves the node's production app with `key`."""
    from chutes.entrypoint import _shared, run

    # 1. run.aegis_encrypt / run.aegis_decrypt: aegis is a native library (LD_PRELOAD) whose session
    # key is derived with the validator at activation. GraValMiddleware and its `_encrypt` closure
    # look both names up in run.py's globals, so replacing them there changes nothing else.
    run.aegis_encrypt = key.encrypt
    run.aegis_decrypt = key.decrypt

    # 2. _shared.miner: graval's Miner() needs a GPU. `_logged_run` (not dev) sets the miner and
    # validator ss58 and a verify-only validator keypair on it; the SDK's own TeeMiner is the same
    # holder without the GPU. authenticate_request looks `miner` up in _shared's globals.
    holder = _shared.TeeMiner()
    holder._miner_ss58 = key.miner_ss58
    holder._validator_ss58 = key.validator.ss58_address
    holder._keypair = keys.verifier(key.validator.ss58_address)
    _shared.miner = lambda: holder

    # 3. run.DevMiddleware: with dev=False, `_run_chute` demands LD_PRELOAD=chutes-aegis.so, a
    # NetNanny challenge, PID 1, bytecode cleanup and a validator launch token (GPU verification);
    # dev=True skips them and then installs DevMiddleware where production installs
    # `GraValMiddleware(concurrency=chute.concurrency)`. Starlette calls the middleware class with
    # the app, so a factory puts the real GraValMiddleware there.
    loaded: dict[str, Any] = {}

    def graval_middleware(app: Any) -> Any:
        return run.GraValMiddleware(app, concurrency=loaded["chute"].concurrency)

    run.DevMiddleware = graval_middleware

    # 4. run.load_chute: dev=True sets CHUTES_DEV_MODE=true just before loading the module, and
    # Chute.initialize then mounts each cord at its public path and method. Production mounts
    # `cord.path` with POST, so the flag is removed before initialize runs.
    real_load_chute = _ORIGINALS.setdefault("load_chute", run.load_chute)  # installing twice wraps once

    def load_chute(*args: Any, **kwargs: Any) -> Any:
        module, chute = real_load_chute(*args, **kwargs)
        os.environ.pop("CHUTES_DEV_MODE", None)
        target = unwrap(chute)
        loaded["chute"] = target
        _exit_on_startup_failure(target)
        _quiet_stop_logs()  # load_chute has just replaced loguru's sinks with its own
        return module, chute

    run.load_chute = load_chute


def _exit_on_startup_failure(chute: Any) -> None:
    """5. chute.initialize: `_logged_run` sleeps 60 s after any exception before exiting (so a node's
    log can be collected); locally a failed startup ends at once with its reason on one line."""
    real_initialize = chute.initialize

    async def initialize() -> None:
        try:
            await real_initialize()
        except Exception as exc:  # noqa: BLE001 - any startup failure ends the node
            print(f"node: error: chute startup failed: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(1) from None

    chute.initialize = initialize


async def build_app(module_ref: str, key: PlatformKey) -> Any:
    """The node's ASGI app in this process, for tests (await it in the loop that will serve it).

    The part of `_run_chute` that serves cords, with the SDK's own pieces: `load_chute`,
    `Chute.initialize` (startup hooks, cords at `cord.path` with POST) and `GraValMiddleware`. The
    validator's `/_...` endpoints and hypercorn are left out; `serve` has them. The stand-ins are
    installed process-wide. The module must be importable from the current directory.
    """
    os.environ[EXECUTION_CONTEXT_ENV] = REMOTE
    os.environ.pop("CHUTES_DEV_MODE", None)
    install_stand_ins(key)
    from chutes.entrypoint import run

    _, chute = run.load_chute(chute_ref_str=module_ref, config_path=None, debug=False)
    chute = unwrap(chute)
    await chute.initialize()
    chute.add_middleware(run.DevMiddleware)  # patch point 3: the real GraValMiddleware
    return chute


# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeConfig:
    """What `python -m tools.runtime.sdk.node` runs: a chute ref in the current directory, where it listens."""

    module_ref: str
    host: str = "127.0.0.1"
    port: int = DEFAULT_CHUTE_PORT
    logging_port: int | None = None  # default: constants.chute_ports


def serve(config: NodeConfig, key: PlatformKey) -> None:
    """Run the chute in this process until it is stopped (blocks; SIGTERM/SIGINT end it)."""
    os.environ[EXECUTION_CONTEXT_ENV] = REMOTE  # is_remote(): cords are served, not called
    port, logging_port = chute_ports(config.port, config.logging_port)
    # `_run_chute` retries a taken port for 6 s and then sleeps 60 s: say it at once instead.
    ensure_free({port: "--port", logging_port: "--logging-port"}, config.host, "pick a free port")
    install_stand_ins(key)
    # The wrapped service's startup hook turns SIGTERM into SIGINT (tools/runtime/launcher.py); a parent
    # shell that started us in the background may have left SIGINT ignored, so restore it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from chutes.entrypoint.run import run_chute

    run_chute(
        config.module_ref,
        miner_ss58=None,
        validator_ss58=None,
        host=config.host,
        port=port,
        logging_port=logging_port,
        debug=False,
        dev=True,  # see patch point 3
        dev_job_data_path=None,
        dev_job_method=None,
        generate_inspecto_hash=False,
    )


def _quiet_stop_logs() -> None:
    """A stop (Ctrl-C, SIGTERM) cancels `_run_chute`, which `_logged_run` logs as an "unexpected base
    exception" with a traceback, and so is the exit after a failed startup: a normal stop must not look
    like a crash, and a failed startup says why in one line, so those records are dropped."""
    import sys

    from loguru import logger

    def keep(record: Any) -> bool:
        # a stop cancels it; a failed startup exits after printing its reason on one line (point 5)
        message = record["message"]
        return not (record["function"] == "_logged_run" and ("CancelledError" in message or "SystemExit" in message))

    logger.remove()
    logger.add(sys.stdout, level="INFO", filter=keep)  # as chutes' load_chute configures it


def main(argv: list[str] | None = None) -> None:
    from tools.runtime.constants import port_argument
    from tools.runtime.errors import run_cli

    parser = argparse.ArgumentParser(prog="python -m tools.runtime.sdk.node", description=__doc__.splitlines()[0])
    parser.add_argument("module_ref", help="MODULE:CHUTE, e.g. deploy_example:chute (run from the module's directory)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=port_argument, default=DEFAULT_CHUTE_PORT)
    parser.add_argument("--logging-port", type=port_argument, default=None, help="the SDK's logging server (default port+1)")
    args = parser.parse_args(argv)
    config = NodeConfig(args.module_ref, args.host, args.port, args.logging_port)
    run_cli(lambda: serve(config, PlatformKey.from_env()), prog="node")


if __name__ == "__main__":
    main()
